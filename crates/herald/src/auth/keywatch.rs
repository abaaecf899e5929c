//! Every node's view of key changes. A key revoked through any node's admin
//! API or with `herald key revoke` (which writes the database directly) is
//! seen by every node within [`POLL_EVERY`]: each polls the keys whose
//! `changed_at` falls in a recent window and hands the new ones to its
//! [`Authenticator`](super::Authenticator), which tells the connections that
//! hold them. The same task writes `last_used_at` in batches.

use crate::app::AppState;
use crate::rules::Command;
use std::collections::HashMap;
use std::time::Duration;

/// How often each node looks for revoked or expiring keys.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How far back each poll looks: changes written by a node whose clock is
/// behind, or by a transaction that committed late, are still seen.
const WINDOW_MS: i64 = 120_000;
/// How often the keys' last use is written.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// Starts the watch; abort the handle to stop it (after [`flush_usage`]).
pub fn spawn(s: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut touch = tokio::time::interval(TOUCH_EVERY);
        touch.tick().await;
        // The change each key was last applied at, within the window.
        let mut applied: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let since = crate::model::time::now_ms() - WINDOW_MS;
                    match s.store.api_key_changes(since).await {
                        Ok(changes) => {
                            for record in changes {
                                if applied.get(&record.id) != Some(&record.changed_at) {
                                    applied.insert(record.id.clone(), record.changed_at);
                                    tracing::info!(key = %record.id, tenant = %record.tenant, revoked = record.revoked_at.is_some(), "API key changed");
                                    s.auth.key_changed(record);
                                }
                            }
                            applied.retain(|_, at| *at >= since);
                        }
                        Err(e) => tracing::warn!(error = %e, "polling API key changes failed"),
                    }
                }
                _ = touch.tick() => flush_usage(&s).await,
            }
        }
    })
}

/// Writes when keys were last used, in one write.
pub async fn flush_usage(s: &AppState) {
    let used = s.auth.take_used();
    if used.is_empty() {
        return;
    }
    if let Err(e) = s.write("", Command::TouchApiKeys { used }, None).await {
        tracing::warn!(error = %e, "recording API key use failed");
    }
}
