//! `churn`: connect, authenticate, subscribe, close — as fast as it goes.

use crate::target::{self, Kind};
use crate::Common;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Clients cycling at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let token = target::token(c, "bench-staff", "staff")?;
    let topic = if c.target == Kind::Herald { "jobs" } else { "churn" };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let duration = Duration::from_secs(a.duration);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (c, token, ok, failed) = (c.clone(), token.clone(), Arc::clone(&ok), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while start.elapsed() < duration {
                match target::subscribe(&c, i, topic, &token).await {
                    Ok(mut ws) => {
                        let _ = ws.close(None).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += a.concurrency;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    Ok(json!({
        "workload": "churn",
        "target": c.target,
        "concurrency": a.concurrency,
        "cycles": ok,
        "failed": failed.load(Ordering::Relaxed),
        "cycles_per_sec": ok as f64 / secs,
    }))
}
