//! `capture`: SQL commit → subscriber. Herald on PostgreSQL captures an
//! application table (`[[capture]]`); N subscribers listen on
//! `table:<schema>.<name>` while writers commit one INSERT per row at a fixed
//! rate, each row carrying `sent_us`, the wall clock (µs since the epoch) read
//! just before its statement — which, in autocommit mode, is its own
//! transaction and commit. Every subscriber measures receipt − `sent_us`.
//!
//! The table is the caller's (bench/pg.sh creates it): at least
//! `sent_us bigint` and `payload text`; the tool refuses to run without it.

use crate::fanout::{self, hist_json, new_hist, run_id};
use crate::target::{self, field_u64, now_us, op_is, Kind};
use crate::Common;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_postgres::NoTls;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The PostgreSQL database Herald captures the table in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/herald_bench")]
    pub pg_url: String,
    /// The captured table, `schema.name`; subscribers listen on `table:<schema>.<name>`.
    #[arg(long, default_value = "public.bench_rows")]
    pub table: String,
    /// Subscribers on the table's topic.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Rows committed per second, one INSERT (and one transaction) each.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds the writers commit for.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// PostgreSQL connections the rows are spread over, so a commit that waits
    /// for its fsync does not hold back the rows due behind it.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Seconds without a delivery, once writing ended, before giving up on the rest.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
}

/// `schema.name` with both parts plain identifiers; returns the quoted SQL name.
fn sql_name(table: &str) -> anyhow::Result<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit()
    };
    match table.split_once('.') {
        Some((schema, name)) if plain(schema) && plain(name) => Ok(format!("\"{schema}\".\"{name}\"")),
        _ => bail!("--table must be schema.name in lower-case identifiers, got {table:?}"),
    }
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("capture: PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Fails, saying what to do, unless `table` exists with the columns the rows need.
async fn check_table(pg: &tokio_postgres::Client, a: &Args) -> anyhow::Result<()> {
    let found: Option<String> = pg.query_one("SELECT to_regclass($1)::text", &[&a.table]).await?.get(0);
    if found.is_none() {
        bail!(
            "table {} does not exist in {}: create it first, e.g. CREATE TABLE {} (id bigserial primary key, \
             sent_us bigint not null, payload text not null) — bench/pg.sh does — and capture it in Herald's \
             config ([[capture]] table = \"{}\")",
            a.table,
            a.pg_url,
            a.table,
            a.table
        );
    }
    let (schema, name) = a.table.split_once('.').unwrap_or_default();
    let columns: Vec<String> = pg
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for needed in ["sent_us", "payload"] {
        if !columns.iter().any(|c| c == needed) {
            bail!("table {} has no column {needed} (it needs sent_us bigint and payload text)", a.table);
        }
    }
    Ok(())
}

/// What the writers add to.
#[derive(Default)]
struct Written {
    rows: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    last_commit_us: AtomicU64,
}

/// Commits `rows` rows over `writers` connections, paced at `rate` per second.
/// Returns the commit round-trip histogram (µs) and the seconds writing took.
async fn write_rows(
    a: &Args,
    insert: &str,
    rid: &str,
    rows: u64,
    written: &Arc<Written>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
    let mut clients = Vec::with_capacity(a.writers);
    for _ in 0..a.writers.max(1) {
        let pg = pg_connect(&a.pg_url).await?;
        let stmt = pg.prepare(insert).await.with_context(|| format!("preparing {insert}"))?;
        clients.push((pg, stmt));
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (pg, stmt) in clients {
        let (next, written, rid, rate) = (Arc::clone(&next), Arc::clone(written), rid.to_string(), a.rate);
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            while let Some(seq) = fanout::next_due(&next, rows, start, rate).await {
                let payload = format!("{rid}:{seq}");
                // Autocommit: this statement is its own transaction, so the
                // clock is read right before the commit it ends with.
                let sent_us = now_us() as i64;
                match pg.execute(&stmt, &[&sent_us, &payload]).await {
                    Ok(_) => {
                        let done = now_us();
                        h.saturating_record(done.saturating_sub(sent_us as u64).max(1));
                        written.rows.fetch_add(1, Ordering::Relaxed);
                        written.last_commit_us.fetch_max(done, Ordering::Relaxed);
                    }
                    Err(e) => {
                        written.errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut slot) = written.first_error.lock() {
                            slot.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
            }
            h
        }));
    }
    let mut commit_us = new_hist();
    for t in tasks {
        commit_us.add(&t.await?).map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok((commit_us, start.elapsed().as_secs_f64()))
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    if c.target != Kind::Herald {
        bail!("capture drives Herald's table topics; use --target herald");
    }
    if a.rate == 0 || a.duration == 0 {
        bail!("--rate and --duration must be above 0");
    }
    let table_sql = sql_name(&a.table)?;
    let pg = pg_connect(&a.pg_url).await?;
    check_table(&pg, &a).await?;
    drop(pg);

    // Rows of this run carry `<rid>:<seq>`; anything else on the topic is ignored.
    let rid = run_id();
    let rows = a.rate * a.duration;
    let marker = format!("\"payload\":\"{rid}:");
    let parse: fanout::Parse = Arc::new(move |frame: &str| {
        if !op_is(frame, "event") {
            return None;
        }
        let seq = field_u64(frame, &marker)?;
        Some((seq, field_u64(frame, "\"sent_us\":")?))
    });
    let topic = format!("table:{}", a.table);
    let token = target::token(c, "bench-staff", "staff")?;
    let (tally, stop, handles) =
        fanout::open_subscribers_with(c, vec![topic.clone(); a.subscribers], &token, rows, parse).await.with_context(
            || {
                format!(
                    "subscribing to {topic}: is Herald running on {} with [[capture]] table = \"{}\"?",
                    a.pg_url, a.table
                )
            },
        )?;

    let insert = format!("INSERT INTO {table_sql} (sent_us, payload) VALUES ($1, $2)");
    let written = Arc::new(Written::default());
    let (commit_us, write_secs) = write_rows(&a, &insert, &rid, rows, &written).await?;
    let committed = written.rows.load(Ordering::Relaxed);
    let expected = committed * a.subscribers as u64;
    fanout::await_deliveries(&tally, expected, a.settle).await;
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }

    let delivered = tally.delivered.load(Ordering::Relaxed);
    let hist = tally.take_latency()?;
    let write_errors = written.errors.load(Ordering::Relaxed);
    if write_errors > 0 {
        let first = written.first_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
        eprintln!("capture: {write_errors} INSERTs failed; first error: {first}");
    }
    let last_receipt = tally.last_receipt_us.load(Ordering::Relaxed);
    let last_commit = written.last_commit_us.load(Ordering::Relaxed);
    Ok(json!({
        "workload": "capture",
        "target": c.target,
        "table": a.table,
        "subscribers": a.subscribers,
        "rate": a.rate,
        "writers": a.writers,
        "duration_s": a.duration,
        "rows": committed,
        "write_errors": write_errors,
        "rows_per_sec": committed as f64 / write_secs,
        "seconds": write_secs,
        "delivered": delivered,
        "expected": expected,
        "missing": expected.saturating_sub(delivered),
        "duplicates": tally.duplicates.load(Ordering::Relaxed),
        "out_of_order": tally.out_of_order.load(Ordering::Relaxed),
        "closed_by_server": tally.closed_by_server.load(Ordering::Relaxed),
        "deliveries_per_sec": delivered as f64 / write_secs,
        // Last delivery after the last commit: how long the tail took to drain.
        "drain_ms": last_receipt.saturating_sub(last_commit) as f64 / 1000.0,
        "latency_ms": hist_json(&hist, 1000.0),
        "commit_ms": hist_json(&commit_us, 1000.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::sql_name;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(sql_name("public.bench_rows").unwrap(), "\"public\".\"bench_rows\"");
        for bad in ["bench_rows", "public.", ".x", "public.Bench", "a.b;drop", "public.1x", "a.b.c"] {
            assert!(sql_name(bad).is_err(), "{bad}");
        }
    }
}
