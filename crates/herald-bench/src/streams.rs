//! `streams`: how many chunks one job output stream sustains, and how long an
//! append takes to reach a reader following the stream over the WebSocket.
//! Writers append batches of chunks (each carries its send time) to one
//! stream as fast as the server acknowledges; one reader subscribed to
//! `stream:<job>:<name>` checks that offsets are contiguous and records
//! append → reader latency per append.

use crate::fanout::{create_jobs, hist_json, new_hist, run_id};
use crate::target::{self, now_us, Kind};
use crate::{conn, Common};
use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Chunks per append, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub batch: Vec<usize>,
    /// Appends in flight at once (one stream: the server orders them).
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Seconds each run appends for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

async fn one_run(c: &Common, batch: usize, in_flight: usize, seconds: u64) -> anyhow::Result<Value> {
    let job = format!("stream-{}", run_id());
    create_jobs(c, std::slice::from_ref(&job), 0).await?;
    let worker = target::token(c, "bench-worker", "worker")?;
    let staff = target::token(c, "bench-staff", "staff")?;

    let (addr, base) = conn::server_addr(&c.url)?;
    let mut ws = conn::connect(addr, &base, &format!("/v1/ws?token={staff}"), conn::source_for(0, c.sources)).await?;
    ws.send(Message::text(json!({"op":"sub","topic":format!("stream:{job}:out"),"since":0,"id":1}).to_string()))
        .await?;
    let appended = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (appended, done) = (Arc::clone(&appended), Arc::clone(&done));
        tokio::spawn(async move {
            let mut hist = new_hist();
            let mut next = 0u64;
            let mut last_frame = Instant::now();
            loop {
                if done.load(Ordering::Relaxed) && next >= appended.load(Ordering::Relaxed) {
                    return Ok::<_, anyhow::Error>((next, hist));
                }
                // Short waits: the writers may finish while the reader, holding every
                // chunk already, waits for a frame that will never come.
                let msg = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                    Ok(Some(m)) => m?,
                    Ok(None) => bail!("closed after {next} chunks"),
                    Err(_) if last_frame.elapsed() < Duration::from_secs(10) => continue,
                    Err(_) => bail!("stalled after {next} of {} chunks", appended.load(Ordering::Relaxed)),
                };
                last_frame = Instant::now();
                let Message::Text(t) = msg else { continue };
                if !target::op_is(&t, "chunks") {
                    if target::op_is(&t, "error")
                        || target::op_is(&t, "goodbye")
                        || target::op_is(&t, "stream_truncated")
                    {
                        bail!("server said {t}");
                    }
                    continue;
                }
                let now = now_us();
                let v: Value = serde_json::from_str(&t)?;
                let offset = v["offset"].as_u64().ok_or_else(|| anyhow!("no offset: {t}"))?;
                if offset != next {
                    bail!("chunks from {offset}, expected {next}: a gap or a repeat");
                }
                let chunks = v["chunks"].as_array().ok_or_else(|| anyhow!("no chunks: {t}"))?;
                next += chunks.len() as u64;
                // One sample per append: chunks of one append share their send time.
                let mut last_sent = None;
                for chunk in chunks {
                    let sent = chunk["t"].as_u64().unwrap_or(now);
                    if last_sent != Some(sent) {
                        hist.saturating_record(now.saturating_sub(sent).max(1));
                        last_sent = Some(sent);
                    }
                }
            }
        })
    };

    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs/{job}/streams/out", c.url);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..in_flight {
        let (http, url, worker, appended) = (http.clone(), url.clone(), worker.clone(), Arc::clone(&appended));
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = now_us();
                let chunks: Vec<Value> =
                    (0..batch).map(|i| json!({"t": t, "i": i, "text": "lorem ipsum dolor"})).collect();
                let r = http.post(&url).bearer_auth(&worker).json(&json!({ "chunks": chunks })).send().await?;
                if !r.status().is_success() {
                    bail!("append: {} {}", r.status(), r.text().await.unwrap_or_default());
                }
                appended.fetch_add(batch as u64, Ordering::Relaxed);
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut appends = 0;
    for w in writers {
        appends += w.await??;
    }
    let write_secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (read, hist) = reader.await??;
    let total = appended.load(Ordering::Relaxed);
    if read != total {
        bail!("read {read} of {total} chunks");
    }
    Ok(json!({
        "batch": batch,
        "appends": appends,
        "chunks": total,
        "appends_per_sec": appends as f64 / write_secs,
        "chunks_per_sec": total as f64 / write_secs,
        "append_to_reader_ms": hist_json(&hist, 1000.0),
    }))
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    if c.target != Kind::Herald {
        bail!("streams measures Herald's job output streams; use --target herald");
    }
    let mut runs = Vec::new();
    for b in &a.batch {
        let r = one_run(c, *b, a.in_flight, a.seconds).await?;
        eprintln!("{r}");
        runs.push(r);
    }
    Ok(json!({"workload": "streams", "in_flight": a.in_flight, "runs": runs}))
}
