//! `resume`: write N events while no one listens, then time one client that
//! subscribes with `since` until it holds all of them.

use crate::fanout::{create_jobs, publish_http, run_id};
use crate::target::{self, field_u64, Kind};
use crate::{conn, Common};
use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Missed events to catch up, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub missed: Vec<u64>,
    /// Workers writing the missed events.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
}

/// Position of the job's first event (`job.created`), read over long-poll.
async fn first_position(c: &Common, job: &str, token: &str) -> anyhow::Result<u64> {
    let url = format!("{}/v1/events?topic=job:{job}&since=0&limit=1", c.url);
    let v: Value = reqwest::Client::new().get(url).bearer_auth(token).send().await?.json().await?;
    v["events"][0]["position"].as_u64().ok_or_else(|| anyhow!("no first event: {v}"))
}

async fn one_run(c: &Common, missed: u64, writers: usize) -> anyhow::Result<Value> {
    let job = format!("resume-{}", run_id());
    create_jobs(c, std::slice::from_ref(&job), missed).await?;
    let staff = target::token(c, "bench-staff", "staff")?;
    let since = first_position(c, &job, &staff).await?;
    let write_start = Instant::now();
    let published = publish_http(c, Arc::new(vec![job.clone()]), missed, writers, 0).await?;
    if published.errors > 0 {
        bail!("{} writes failed", published.errors);
    }
    let write_secs = write_start.elapsed().as_secs_f64();

    let (addr, base) = conn::server_addr(&c.url)?;
    let start = Instant::now();
    let mut ws = conn::connect(addr, &base, &format!("/v1/ws?token={staff}"), conn::source_for(0, c.sources)).await?;
    ws.send(Message::text(json!({"op":"sub","topic":format!("job:{job}"),"since":since,"id":1}).to_string())).await?;
    let mut got = 0u64;
    let mut last_position = since;
    let mut first_event = None;
    while got < missed {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| anyhow!("stalled after {got} of {missed} events"))?
            .ok_or_else(|| anyhow!("closed after {got} events"))??;
        let Message::Text(t) = msg else { continue };
        if target::op_is(&t, "event") {
            let p = field_u64(&t, "\"position\":").unwrap_or(0);
            if p <= last_position {
                bail!("position {p} after {last_position}: out of order or duplicate");
            }
            last_position = p;
            first_event.get_or_insert_with(|| start.elapsed());
            if field_u64(&t, "\"bench_seq\":").is_some() {
                got += 1;
            }
        } else if target::op_is(&t, "error") || target::op_is(&t, "goodbye") {
            bail!("server said {t}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "missed": missed,
        "write_seconds": write_secs,
        "catch_up_seconds": secs,
        "first_event_ms": first_event.map(|d| d.as_secs_f64() * 1000.0),
        "events_per_sec": missed as f64 / secs,
    }))
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    if c.target != Kind::Herald {
        bail!("resume measures Herald's log; use --target herald");
    }
    let mut runs = Vec::new();
    for m in &a.missed {
        let r = one_run(c, *m, a.writers).await?;
        eprintln!("{r}");
        runs.push(r);
    }
    Ok(json!({"workload": "resume", "runs": runs}))
}
