//! How many progress reports per second one Rust worker sustains against a
//! Herald server, with coalescing on and off (docs/BENCHMARKS.md).
//!
//!   cargo run --release -p herald-client --example reporter_rate -- \
//!       http://127.0.0.1:4000 "$(herald token --sub bench --tenant bench --role worker)" 10
//!
//! Prints, per mode, the calls made per second and the requests Herald stored.

use herald_client::{Client, JobStart, ProgressReport, Reporter, ReporterOptions};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:4000".into());
    let token = args.next().ok_or("usage: reporter_rate URL TOKEN [SECONDS]")?;
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let client = Client::new(url, token)?;
    for (mode, coalesce) in [("coalescing on (250 ms)", Duration::from_millis(250)), ("coalescing off", Duration::ZERO)]
    {
        let reporter =
            Reporter::with_options(client.clone(), ReporterOptions { coalesce, ..ReporterOptions::default() });
        let job = format!("rate-{}", uuid_like());
        reporter.job_started(&job, JobStart { total: Some(u64::MAX / 2), ..JobStart::default() }).await?;
        let before = client.job(&job).await?.version;
        let started = Instant::now();
        let mut calls = 0u64;
        let mut last = None;
        while started.elapsed() < Duration::from_secs(seconds) {
            calls += 1;
            let receipt =
                reporter.progress(&job, ProgressReport { succeeded: Some(calls), ..ProgressReport::default() });
            // Without coalescing every call is a request: keep at most 1,000 in flight.
            if coalesce.is_zero() && calls.is_multiple_of(1000) {
                receipt.await?;
            } else {
                last = Some(receipt);
            }
            if calls.is_multiple_of(4096) {
                tokio::task::yield_now().await;
            }
        }
        if let Some(r) = last {
            r.await?;
        }
        reporter.flush().await;
        let elapsed = started.elapsed().as_secs_f64();
        let stored = client.job(&job).await?;
        assert_eq!(stored.succeeded, calls, "the last report won");
        println!(
            "{mode}: {calls} calls in {elapsed:.1} s = {:.0} reports/s; {} requests stored ({:.0}/s)",
            calls as f64 / elapsed,
            stored.version - before,
            (stored.version - before) as f64 / elapsed
        );
        reporter.close().await;
    }
    Ok(())
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}
