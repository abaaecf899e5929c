//! `fanout` (N subscribers, one topic) and `topics` (N subscribers, a job each):
//! publish numbered events, count what every subscriber receives, and measure
//! publish-to-receipt latency from the timestamp inside each payload.

use crate::target::{self, field_u64, now_us, Kind};
use crate::Common;
use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// `POST /v1/jobs/{id}/progress`: durable, through the log (Herald only).
    Http,
    /// A broadcast to a room over WebSocket: memory only (every target).
    Ws,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Subscribers on the one topic.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Events per second over all publishers; 0 = as fast as they go.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, value_enum, default_value = "http")]
    pub publish: Publish,
    /// Seconds without a delivery, once publishing ended, before giving up on the rest.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
}

#[derive(clap::Args, Debug)]
pub struct TopicsArgs {
    /// Subscribers, each on its own job.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Workers reporting progress over HTTP, round-robin over the jobs.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Reports in all.
    #[arg(long, default_value_t = 20000)]
    pub reports: u64,
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
}

/// What all subscriber tasks add to.
#[derive(Default)]
pub(crate) struct Tally {
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub last_receipt_us: AtomicU64,
    pub ready: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

/// Reads one received frame: `(sequence number, send time in µs since the
/// epoch)` of the event it carries, or `None` for a frame that is no event of the run.
pub(crate) type Parse = Arc<dyn Fn(&str) -> Option<(u64, u64)> + Send + Sync>;

/// The events `fanout` and `topics` publish: `bench_seq` and `bench_t` in the payload.
fn bench_event(frame: &str) -> Option<(u64, u64)> {
    let seq = field_u64(frame, "\"bench_seq\":")?;
    Some((seq, field_u64(frame, "\"bench_t\":").unwrap_or(0)))
}

impl Tally {
    fn merge(&self, batch: &mut Vec<u64>) {
        if let Ok(mut h) = self.latency_us.lock() {
            let h = h.get_or_insert_with(new_hist);
            for v in batch.drain(..) {
                h.saturating_record(v.max(1));
            }
        }
    }

    /// The latency histogram of every delivery so far (µs), leaving an empty one.
    pub fn take_latency(&self) -> anyhow::Result<Histogram<u64>> {
        Ok(self.latency_us.lock().map_err(|_| anyhow!("poisoned"))?.take().unwrap_or_else(new_hist))
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 sigfig histogram"))
}

pub fn hist_json(h: &Histogram<u64>, unit_div: f64) -> Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / unit_div;
    json!({"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": h.max() as f64 / unit_div, "count": h.len()})
}

/// What [`open_subscribers`] hands back: the tally, the stop signal and the receiving tasks.
pub(crate) type Subscribers = (Arc<Tally>, watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>);

/// Connects one subscriber per topic (concurrency-limited), then receives until `stop`.
pub(crate) async fn open_subscribers(
    c: &Common,
    topics: Vec<String>,
    token: &str,
    seq_space: u64,
) -> anyhow::Result<Subscribers> {
    open_subscribers_with(c, topics, token, seq_space, Arc::new(bench_event)).await
}

/// [`open_subscribers`], reading each frame's sequence number and send time with `parse`.
pub(crate) async fn open_subscribers_with(
    c: &Common,
    topics: Vec<String>,
    token: &str,
    seq_space: u64,
    parse: Parse,
) -> anyhow::Result<Subscribers> {
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(c.connect_concurrency));
    let n = topics.len();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (i, topic) in topics.into_iter().enumerate() {
        let (c, tally, gate, token, mut stop, parse) =
            (c.clone(), Arc::clone(&tally), Arc::clone(&gate), token.to_string(), stop_rx.clone(), Arc::clone(&parse));
        handles.push(tokio::spawn(async move {
            let ws = {
                let _permit = gate.acquire().await;
                target::subscribe(&c, i, &topic, &token).await
            };
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut slot) = tally.first_error.lock() {
                        slot.get_or_insert(format!("{e:#}"));
                    }
                    return;
                }
            };
            tally.ready.fetch_add(1, Ordering::Relaxed);
            let mut seen = vec![0u64; (seq_space / 64 + 1) as usize];
            let mut batch = Vec::with_capacity(1024);
            let mut last_position = 0;
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.changed() => break,
                };
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                if matches!(c.target, Kind::Socketio | Kind::HeraldSocketio) && text.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                    continue;
                }
                let Some((seq, sent)) = parse(text.as_str()) else { continue };
                let now = now_us();
                if let Some(p) = field_u64(&text, "\"position\":") {
                    if p <= last_position {
                        tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last_position = p;
                }
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                if word >= seen.len() || seen[word] & (1 << bit) != 0 {
                    tally.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                seen[word] |= 1 << bit;
                tally.delivered.fetch_add(1, Ordering::Relaxed);
                tally.last_receipt_us.fetch_max(now, Ordering::Relaxed);
                batch.push(now.saturating_sub(sent));
                if batch.len() >= 1024 {
                    tally.merge(&mut batch);
                }
            }
            tally.merge(&mut batch);
        }));
    }
    loop {
        let (ready, failed) = (tally.ready.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
        if ready + failed == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    eprintln!("{n} subscribers connected in {:.1}s ({failed} failed)", started.elapsed().as_secs_f64());
    if failed > 0 {
        let first = tally.first_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
        bail!("{failed} of {n} subscribers failed to connect; first error: {first}");
    }
    Ok((tally, stop_tx, handles))
}

/// Waits until `expected` deliveries arrived, or nothing arrived for `settle` seconds.
pub(crate) async fn await_deliveries(tally: &Tally, expected: u64, settle: u64) {
    let mut last = 0;
    let mut quiet_since = Instant::now();
    loop {
        let now = tally.delivered.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(settle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims the next event number (None once `events` are claimed) and sleeps
/// until it is due at `rate` per second (0: as fast as possible).
pub(crate) async fn next_due(next: &AtomicU64, events: u64, start: Instant, rate: u64) -> Option<u64> {
    let seq = next.fetch_add(1, Ordering::Relaxed);
    if seq >= events {
        return None;
    }
    if rate > 0 {
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    Some(seq)
}

pub(crate) struct Published {
    pub started_us: u64,
    /// Publisher connections stay open until this drops: closing one with
    /// unread acks would reset it and lose frames the server has not read yet.
    pub keep_open: Option<watch::Sender<bool>>,
    pub ack_latency_us: Histogram<u64>,
    pub errors: u64,
}

/// HTTP publishers: progress reports carrying the bench payload in `metadata`.
pub(crate) async fn publish_http(
    c: &Common,
    jobs: Arc<Vec<String>>,
    events: u64,
    publishers: usize,
    rate: u64,
) -> anyhow::Result<Published> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(publishers).build()?;
    let token = target::token(c, "bench-worker", "worker")?;
    let next = Arc::new(AtomicU64::new(0));
    let started_us = now_us();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (http, token, next, jobs, url) =
            (http.clone(), token.clone(), Arc::clone(&next), Arc::clone(&jobs), c.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let mut errors = 0u64;
            while let Some(seq) = next_due(&next, events, start, rate).await {
                let job = &jobs[(seq % jobs.len() as u64) as usize];
                let t0 = Instant::now();
                let body = json!({"metadata": target::bench_payload(seq)});
                let ok = http
                    .post(format!("{url}/v1/jobs/{job}/progress"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            (h, errors)
        }));
    }
    let mut ack_latency_us = new_hist();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        ack_latency_us.add(&h).map_err(|e| anyhow!("{e:?}"))?;
        errors += e;
    }
    Ok(Published { started_us, keep_open: None, ack_latency_us, errors })
}

/// WebSocket publishers: room broadcasts.
async fn publish_ws(c: &Common, topic: &str, events: u64, publishers: usize, rate: u64) -> anyhow::Result<Published> {
    let token = target::token(c, "bench-publisher", "service")?;
    let next = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for i in 0..publishers {
        conns.push(target::publisher(c, 1_000_000 + i, &token).await?);
    }
    let started_us = now_us();
    let start = Instant::now();
    let (keep_open, mut open) = watch::channel(false);
    let mut tasks = Vec::new();
    for ws in conns {
        let (next, topic, kind) = (Arc::clone(&next), topic.to_string(), c.target);
        let mut open = open.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            // Acks and pings come back; read them so the server never sees us as slow.
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let mut errors = 0u64;
            while let Some(seq) = next_due(&next, events, start, rate).await {
                if tx.send(Message::text(target::publish_frame(kind, &topic, seq))).await.is_err() {
                    errors += 1;
                }
            }
            tokio::spawn(async move {
                let _ = open.changed().await;
                drain.abort();
                drop(tx);
            });
            errors
        }));
    }
    open.mark_unchanged();
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    Ok(Published { started_us, keep_open: Some(keep_open), ack_latency_us: new_hist(), errors })
}

pub(crate) async fn create_jobs(c: &Common, ids: &[String], total: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let token = target::token(c, "bench-worker", "worker")?;
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for id in ids {
        let (http, token, gate, url, id) = (http.clone(), token.clone(), Arc::clone(&gate), c.url.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            let body = json!({"id": id, "kind": "bench", "title": "bench job", "status": "running", "total": total});
            let r = http.post(format!("{url}/v1/jobs")).bearer_auth(&token).json(&body).send().await?;
            if !r.status().is_success() {
                bail!("create job {id}: {} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub(crate) fn run_id() -> String {
    format!("{:x}", now_us())
}

fn summary(workload: &str, tally: &Tally, published: &Published, expected: u64, extra: Value) -> anyhow::Result<Value> {
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let last = tally.last_receipt_us.load(Ordering::Relaxed);
    let secs = (last.saturating_sub(published.started_us)) as f64 / 1e6;
    let hist = tally.take_latency()?;
    let mut v = json!({
        "workload": workload,
        "delivered": delivered,
        "expected": expected,
        "missing": expected.saturating_sub(delivered),
        "duplicates": tally.duplicates.load(Ordering::Relaxed),
        "out_of_order": tally.out_of_order.load(Ordering::Relaxed),
        "closed_by_server": tally.closed_by_server.load(Ordering::Relaxed),
        "publish_errors": published.errors,
        "seconds": secs,
        "deliveries_per_sec": if secs > 0.0 { delivered as f64 / secs } else { 0.0 },
        "latency_ms": hist_json(&hist, 1000.0),
    });
    if !published.ack_latency_us.is_empty() {
        v["publish_ack_ms"] = hist_json(&published.ack_latency_us, 1000.0);
    }
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    Ok(v)
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    if a.publish == Publish::Http && !matches!(c.target, Kind::Herald | Kind::Supabase) {
        bail!("--publish http needs --target herald or supabase; peers publish over ws");
    }
    let id = format!("bench-{}", run_id());
    let topic = match (c.target, a.publish) {
        (Kind::Herald, Publish::Http) => {
            create_jobs(c, std::slice::from_ref(&id), a.events).await?;
            format!("job:{id}")
        }
        (Kind::Supabase, _) => {
            create_jobs(c, std::slice::from_ref(&id), a.events).await?;
            id.clone()
        }
        (Kind::Herald, Publish::Ws) => format!("room:{id}"),
        _ => id.clone(),
    };
    let token = target::token(c, "bench-staff", "staff")?;
    let (tally, stop, handles) = open_subscribers(c, vec![topic.clone(); a.subscribers], &token, a.events).await?;
    let mut published = match a.publish {
        Publish::Http => publish_http(c, Arc::new(vec![id]), a.events, a.publishers, a.rate).await?,
        Publish::Ws => publish_ws(c, &topic, a.events, a.publishers, a.rate).await?,
    };
    let expected = a.events * a.subscribers as u64;
    await_deliveries(&tally, expected, a.settle).await;
    drop(published.keep_open.take());
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }
    let extra = json!({"target": c.target, "subscribers": a.subscribers, "events": a.events,
        "publishers": a.publishers, "rate": a.rate, "publish": format!("{:?}", a.publish).to_lowercase()});
    summary("fanout", &tally, &published, expected, extra)
}

pub async fn run_topics(c: &Common, a: TopicsArgs) -> anyhow::Result<Value> {
    if c.target != Kind::Herald {
        bail!("topics drives Herald's job topics; use --target herald");
    }
    let rid = run_id();
    let ids: Vec<String> = (0..a.subscribers).map(|i| format!("bench-{rid}-{i}")).collect();
    create_jobs(c, &ids, a.reports).await?;
    let topics = ids.iter().map(|id| format!("job:{id}")).collect();
    let token = target::token(c, "bench-staff", "staff")?;
    let (tally, stop, handles) = open_subscribers(c, topics, &token, a.reports).await?;
    let published = publish_http(c, Arc::new(ids), a.reports, a.workers, 0).await?;
    await_deliveries(&tally, a.reports, a.settle).await;
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }
    let extra = json!({"target": c.target, "subscribers": a.subscribers, "workers": a.workers, "reports": a.reports});
    summary("topics", &tally, &published, a.reports, extra)
}
