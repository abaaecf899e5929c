//! Background upkeep: stall detection and log retention, run by one process
//! per database (on PostgreSQL, whichever holds the maintenance lock).

use crate::app::AppState;
use crate::config::Config;
use crate::rules::Command;
use std::time::Duration;

/// Starts the maintenance loop; abort the handle to stop it.
pub fn spawn(s: AppState, config: &Config) -> tokio::task::JoinHandle<()> {
    let stall = config.stall_timeout;
    let retention = config.retention;
    // Check often enough that a stall is seen within a quarter of its timeout.
    let every = (stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if !s.store.leads_maintenance().await {
                continue;
            }
            let cmd = Command::DetectStalls { timeout_ms: stall.as_millis() as i64 };
            match s.write("", cmd, None).await {
                Ok(r) => {
                    let body: serde_json::Value = serde_json::from_str(r.body.get()).unwrap_or_default();
                    if body["stalled"].as_u64().unwrap_or(0) > 0 {
                        tracing::info!(stalled = %body["stalled"], "jobs stalled");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stall detection failed"),
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                let before_ms = crate::model::time::now_ms() - retention.as_millis() as i64;
                if let Err(e) = s.write("", Command::Prune { before_ms }, None).await {
                    tracing::warn!(error = %e, "pruning the event log failed");
                }
            }
        }
    })
}
