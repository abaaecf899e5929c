//! `ingest`: durable progress reports per second at several worker counts,
//! with request latency and the commit batch sizes the server reports.

use crate::fanout::{create_jobs, hist_json, new_hist, run_id};
use crate::target;
use crate::Common;
use anyhow::bail;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Concurrent workers, one run per value, each worker on its own job.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub workers: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

/// `(sum, count)` of the server's commit batch-size summary.
async fn batch_totals(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, f64)> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("herald_commit_batch_size_sum ") {
            sum = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("herald_commit_batch_size_count ") {
            count = v.trim().parse().unwrap_or(0.0);
        }
    }
    Ok((sum, count))
}

async fn one_run(c: &Common, workers: usize, duration: Duration) -> anyhow::Result<Value> {
    let rid = run_id();
    let ids: Vec<String> = (0..workers).map(|i| format!("ingest-{rid}-{i}")).collect();
    create_jobs(c, &ids, 1_000_000_000).await?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(workers).build()?;
    let token = target::token(c, "bench-worker", "worker")?;
    let (sum0, count0) = batch_totals(&http, &c.url).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let (http, token, url) = (http.clone(), token.clone(), Arc::<str>::from(c.url.as_str()));
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let mut errors = 0u64;
            let mut n = 0u64;
            while start.elapsed() < duration {
                n += 1;
                let t0 = Instant::now();
                let body = json!({"succeeded": n, "current_item": format!("item-{n}")});
                let r = http.post(format!("{url}/v1/jobs/{id}/progress")).bearer_auth(&token).json(&body).send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }));
    }
    let mut hist = new_hist();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(&h).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let (sum1, count1) = batch_totals(&http, &c.url).await?;
    let commits = count1 - count0;
    Ok(json!({
        "workers": workers,
        "reports": hist.len(),
        "errors": errors,
        "reports_per_sec": hist.len() as f64 / secs,
        "latency_ms": hist_json(&hist, 1000.0),
        "commits": commits,
        "mean_commit_batch": if commits > 0.0 { (sum1 - sum0) / commits } else { 0.0 },
    }))
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    if a.workers.is_empty() {
        bail!("--workers needs at least one count");
    }
    let mut runs = Vec::new();
    for w in &a.workers {
        let r = one_run(c, *w, Duration::from_secs(a.duration)).await?;
        eprintln!("{r}");
        runs.push(r);
    }
    Ok(json!({"workload": "ingest", "duration_s": a.duration, "runs": runs}))
}
