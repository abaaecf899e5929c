//! `idle`: hold N subscribed connections that receive nothing and read the
//! server's resident memory per connection from /proc.

use crate::fanout::open_subscribers;
use crate::target::{self, Kind};
use crate::Common;
use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connections to hold.
    #[arg(long, default_value_t = 10000)]
    pub connections: usize,
    /// Seconds to hold them (across at least one server heartbeat) before measuring again.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let pid = c.server_pid.ok_or_else(|| anyhow!("idle needs --server-pid"))?;
    let topic = match c.target {
        Kind::Herald => "jobs".to_string(),
        _ => "idle".to_string(),
    };
    let token = target::token(c, "bench-staff", "staff")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let (tally, stop, handles) = open_subscribers(c, vec![topic; a.connections], &token, 0).await?;
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let after = rss_kib(pid)?;
    let still_open = a.connections as u64 - tally.closed_by_server.load(Ordering::Relaxed);
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / a.connections as f64;
    Ok(json!({
        "workload": "idle",
        "target": c.target,
        "connections": a.connections,
        "held_after_hold": still_open,
        "server_rss_before_kib": before,
        "server_rss_after_kib": after,
        "bytes_per_connection": per_conn.round(),
    }))
}
