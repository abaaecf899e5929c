//! `soak`: a long, steady mix for leak hunting. Churn clients connect,
//! subscribe, hold for a moment and disconnect — over the native WebSocket,
//! Phoenix (`postgres_changes` and presence), SSE and long-poll, half of them
//! closing cleanly and half just dropping the socket — while workers drive jobs
//! through their whole life at a fixed rate (create, progress, tasks, complete)
//! with room broadcasts and notifications. `bench/soak.sh` runs it and samples
//! the server's memory, descriptors and hub before and after.
//!
//! Names are drawn from bounded pools (customers, rooms, channel names), as real
//! clients reuse them, so state the server legitimately keeps per name (resume
//! positions of dropped Phoenix channels) is bounded too.

use crate::conn;
use crate::target::{self, op_is};
use crate::Common;
use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Churn clients cycling at once (connect, subscribe, hold, disconnect).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Longest a churn client holds its connection, in ms (each draws 0..this).
    #[arg(long, default_value_t = 400)]
    pub hold_ms: u64,
    /// Progress reports per second, over all workers.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Workers, each driving one job at a time from creation to completion.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Progress reports a job gets before it completes and its worker starts the next.
    #[arg(long, default_value_t = 40)]
    pub reports_per_job: u64,
    /// Distinct customers (job owners, notification recipients).
    #[arg(long, default_value_t = 20)]
    pub customers: usize,
    /// Distinct rooms (and Phoenix channel names).
    #[arg(long, default_value_t = 8)]
    pub rooms: usize,
}

const TRANSPORTS: [&str; 4] = ["native", "phoenix", "sse", "longpoll"];

/// What every task adds to.
#[derive(Default)]
struct Tally {
    cycles: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    frames: AtomicU64,
    reports: AtomicU64,
    jobs_completed: AtomicU64,
    broadcasts: AtomicU64,
    notifications: AtomicU64,
    write_errors: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 10 {
                e.push(what);
            }
        }
    }
}

/// Jobs being worked on now, with their owners; the head of the log as last seen.
#[derive(Default)]
struct Shared {
    active: Mutex<Vec<(String, String)>>,
    head: AtomicU64,
}

/// xorshift64*: enough randomness for a load mix, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One churn client's identity for one cycle.
struct Who {
    sub: String,
    staff: bool,
    token: String,
}

fn who(c: &Common, a: &Args, rng: &mut Rng) -> anyhow::Result<Who> {
    if rng.chance(35) {
        let sub = format!("soak-staff-{}", rng.below(4));
        let token = target::token(c, &sub, "staff")?;
        Ok(Who { sub, staff: true, token })
    } else {
        let sub = format!("cust-{}", rng.below(a.customers.max(1) as u64));
        let token = target::token(c, &sub, "customer")?;
        Ok(Who { sub, staff: false, token })
    }
}

/// An active job `w` may read, if any.
fn readable_job(shared: &Shared, w: &Who, rng: &mut Rng) -> Option<String> {
    let active = shared.active.lock().ok()?;
    let mine: Vec<&(String, String)> = active.iter().filter(|(_, owner)| w.staff || *owner == w.sub).collect();
    if mine.is_empty() {
        return None;
    }
    Some(mine[rng.below(mine.len() as u64) as usize].0.clone())
}

async fn next_text(ws: &mut conn::Ws, deadline: tokio::time::Instant) -> anyhow::Result<Option<String>> {
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("connection closed"),
            Ok(Some(m)) => m?,
        };
        match msg {
            Message::Text(t) => return Ok(Some(t.to_string())),
            Message::Close(f) => bail!("closed by server: {f:?}"),
            _ => {}
        }
    }
}

/// Reads (and counts) whatever arrives until `until`.
async fn hold(ws: &mut conn::Ws, until: tokio::time::Instant, tally: &Tally) -> anyhow::Result<()> {
    while next_text(ws, until).await?.is_some() {
        tally.frames.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Closes cleanly (close frame) or just drops the socket, as a vanished client would.
async fn leave(mut ws: conn::Ws, clean: bool) {
    if clean {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

fn secs(s: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(s)
}

async fn native(c: &Common, a: &Args, i: usize, rng: &mut Rng, shared: &Shared, tally: &Tally) -> anyhow::Result<()> {
    let w = who(c, a, rng)?;
    let (addr, base) = conn::server_addr(&c.url)?;
    let mut ws =
        conn::connect(addr, &base, &format!("/v1/ws?token={}", w.token), conn::source_for(i, c.sources)).await?;
    let welcome = next_text(&mut ws, secs(30)).await?.ok_or_else(|| anyhow!("no welcome"))?;
    if !op_is(&welcome, "welcome") {
        bail!("expected welcome, got {welcome}");
    }
    let mut topics = Vec::new();
    if w.staff {
        topics.push("jobs".to_string());
        if rng.chance(50) {
            topics.push(format!("jobs:owner:cust-{}", rng.below(a.customers.max(1) as u64)));
        }
    } else {
        topics.push(format!("jobs:owner:{}", w.sub));
        topics.push(format!("user:{}", w.sub));
    }
    if let Some(id) = readable_job(shared, &w, rng) {
        topics.push(format!("job:{id}"));
    }
    let room = format!("room:soak-{}", rng.below(a.rooms.max(1) as u64));
    let mut pending = 0;
    for (n, t) in topics.iter().enumerate() {
        ws.send(Message::text(json!({"op": "sub", "topic": t, "id": n}).to_string())).await?;
        pending += 1;
    }
    ws.send(Message::text(json!({"op": "presence", "topic": room, "meta": {"soak": true}, "id": "p"}).to_string()))
        .await?;
    pending += 1;
    while pending > 0 {
        let f = next_text(&mut ws, secs(30)).await?.ok_or_else(|| anyhow!("no ack within 30 s"))?;
        if op_is(&f, "ack") {
            pending -= 1;
            if let Some(p) = target::field_u64(&f, "\"position\":") {
                shared.head.fetch_max(p, Ordering::Relaxed);
            }
        } else if op_is(&f, "error") {
            bail!("native subscription refused: {f}");
        } else {
            tally.frames.fetch_add(1, Ordering::Relaxed);
        }
    }
    if rng.chance(20) {
        let pubf = json!({"op": "pub", "topic": room, "event": "soak", "data": {"n": i}, "id": "b"});
        ws.send(Message::text(pubf.to_string())).await?;
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(rng.below(a.hold_ms + 1));
    hold(&mut ws, until, tally).await?;
    leave(ws, rng.chance(50)).await;
    Ok(())
}

async fn phoenix(c: &Common, a: &Args, i: usize, rng: &mut Rng, tally: &Tally) -> anyhow::Result<()> {
    let w = who(c, a, rng)?;
    let (addr, base) = conn::server_addr(&c.url)?;
    let path = format!("/realtime/v1/websocket?apikey={}&vsn=2.0.0", w.token);
    let mut ws = conn::connect(addr, &base, &path, conn::source_for(i, c.sources)).await?;
    let mut bindings = vec![json!({"event": "*", "schema": "public", "table": "jobs"})];
    if w.staff && rng.chance(50) {
        bindings[0]["filter"] = json!("status=eq.completed");
    }
    if !w.staff {
        bindings.push(json!({"event": "INSERT", "schema": "public", "table": "notifications",
            "filter": format!("recipient=eq.{}", w.sub)}));
    }
    let channel = format!("realtime:soak-{}", rng.below(a.rooms.max(1) as u64));
    let config = json!({"broadcast": {"self": false, "ack": false}, "presence": {"key": "", "enabled": true},
        "postgres_changes": bindings, "private": false});
    let join = json!(["1", "1", channel, "phx_join", {"config": config, "access_token": w.token}]);
    ws.send(Message::text(join.to_string())).await?;
    loop {
        let f = next_text(&mut ws, secs(30)).await?.ok_or_else(|| anyhow!("no join reply within 30 s"))?;
        if f.contains("\"phx_reply\"") {
            if f.contains("\"status\":\"ok\"") {
                break;
            }
            bail!("phoenix join refused: {f}");
        }
    }
    let track = json!(["1", "2", channel, "presence", {"type": "presence", "event": "track",
        "payload": {"soak": true}}]);
    ws.send(Message::text(track.to_string())).await?;
    let until = tokio::time::Instant::now() + Duration::from_millis(rng.below(a.hold_ms + 1));
    hold(&mut ws, until, tally).await?;
    leave(ws, rng.chance(50)).await;
    Ok(())
}

async fn sse(c: &Common, a: &Args, http: &reqwest::Client, rng: &mut Rng, tally: &Tally) -> anyhow::Result<()> {
    let w = who(c, a, rng)?;
    let room = format!("room:soak-{}", rng.below(a.rooms.max(1) as u64));
    let topics = if w.staff { format!("jobs,{room}") } else { format!("jobs:owner:{},user:{},{room}", w.sub, w.sub) };
    let url = format!("{}/v1/sse?topic={topics}&token={}", c.url, w.token);
    let mut resp = http.get(url).timeout(Duration::from_secs(60)).send().await?;
    if !resp.status().is_success() {
        bail!("sse: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(rng.below(a.hold_ms + 1));
    while let Ok(chunk) = tokio::time::timeout_at(until, resp.chunk()).await {
        match chunk? {
            Some(b) => {
                let n = b.windows(7).filter(|w| w == b"\ndata: " || w == b"\nevent:").count();
                tally.frames.fetch_add(n as u64, Ordering::Relaxed);
            }
            None => bail!("sse stream ended"),
        }
    }
    Ok(())
}

async fn longpoll(
    c: &Common,
    a: &Args,
    http: &reqwest::Client,
    rng: &mut Rng,
    shared: &Shared,
    tally: &Tally,
) -> anyhow::Result<()> {
    let w = who(c, a, rng)?;
    let topics = if w.staff { "jobs".to_string() } else { format!("jobs:owner:{},user:{}", w.sub, w.sub) };
    let since = shared.head.load(Ordering::Relaxed).saturating_sub(50);
    let wait = rng.below(2);
    let url = format!("{}/v1/events?topic={topics}&since={since}&limit=100&wait={wait}", c.url);
    let resp = http.get(url).bearer_auth(&w.token).timeout(Duration::from_secs(60)).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await.context("long-poll body")?;
    if !status.is_success() {
        bail!("long-poll: {status} {body}");
    }
    let events = body["events"].as_array().map(Vec::len).unwrap_or(0);
    tally.frames.fetch_add(events as u64, Ordering::Relaxed);
    if let Some(next) = body["next"].as_u64() {
        shared.head.fetch_max(next, Ordering::Relaxed);
    }
    Ok(())
}

/// One worker: a job at a time, created, reported on at its share of the rate,
/// given a task, completed; a broadcast and a notification along the way.
async fn worker(
    c: Common,
    a: Arc<Args>,
    w: usize,
    rid: String,
    stop: Instant,
    shared: Arc<Shared>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let token = target::token(&c, &format!("soak-worker-{w}"), "worker")?;
    let period = Duration::from_secs_f64(a.workers as f64 / a.rate.max(1) as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = Rng::new(0x5eed ^ ((w as u64) << 20));
    let mut n = 0u64;
    let post = |path: String, body: Value| {
        let req = http.post(format!("{}{path}", c.url)).bearer_auth(&token).json(&body);
        let tally = Arc::clone(&tally);
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => true,
                Ok(r) => {
                    let st = r.status();
                    tally.write_errors.fetch_add(1, Ordering::Relaxed);
                    tally.error(format!("{path}: {st} {}", r.text().await.unwrap_or_default()));
                    false
                }
                Err(e) => {
                    tally.write_errors.fetch_add(1, Ordering::Relaxed);
                    tally.error(format!("{path}: {e}"));
                    false
                }
            }
        }
    };
    while stop > Instant::now() {
        n += 1;
        let id = format!("soak-{rid}-{w}-{n}");
        let owner = format!("cust-{}", rng.below(a.customers.max(1) as u64));
        let body = json!({"id": id, "owner": owner, "kind": "soak", "title": format!("soak job {n}"),
            "total": a.reports_per_job, "status": "running", "metadata": {"worker": w}});
        if !post("/v1/jobs".into(), body).await {
            tick.tick().await;
            continue;
        }
        if let Ok(mut active) = shared.active.lock() {
            active.push((id.clone(), owner.clone()));
        }
        for k in 1..=a.reports_per_job {
            tick.tick().await;
            if stop <= Instant::now() {
                break;
            }
            let body = json!({"succeeded": k, "stage": "soak", "current_item": format!("item-{k}")});
            if post(format!("/v1/jobs/{id}/progress"), body).await {
                tally.reports.fetch_add(1, Ordering::Relaxed);
            }
            if k % 10 == 0 {
                let room = format!("room:soak-{}", rng.below(a.rooms.max(1) as u64));
                let body = json!({"topic": room, "event": "soak", "payload": {"job": id, "k": k}});
                if post("/v1/broadcast".into(), body).await {
                    tally.broadcasts.fetch_add(1, Ordering::Relaxed);
                }
            }
            if k == a.reports_per_job / 2 {
                let body = json!({"name": "half", "status": "succeeded"});
                let req = http.put(format!("{}/v1/jobs/{id}/tasks/half", c.url)).bearer_auth(&token).json(&body);
                if !matches!(req.send().await, Ok(r) if r.status().is_success()) {
                    tally.write_errors.fetch_add(1, Ordering::Relaxed);
                    tally.error(format!("task of {id} refused"));
                }
            }
        }
        let body = json!({"status": "completed", "succeeded": a.reports_per_job});
        if post(format!("/v1/jobs/{id}/progress"), body).await {
            tally.jobs_completed.fetch_add(1, Ordering::Relaxed);
        }
        let body = json!({"recipient": owner, "level": "info", "title": format!("{id} done")});
        if post("/v1/notifications".into(), body).await {
            tally.notifications.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut active) = shared.active.lock() {
            active.retain(|(j, _)| *j != id);
        }
    }
    Ok(())
}

pub async fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let a = Arc::new(a);
    let start = Instant::now();
    let stop = start + Duration::from_secs(a.duration);
    let (shared, tally) = (Arc::new(Shared::default()), Arc::new(Tally::default()));
    let rid = crate::fanout::run_id();
    let mut tasks = Vec::new();
    for w in 0..a.workers {
        let (c, a, rid, shared, tally) =
            (c.clone(), Arc::clone(&a), rid.clone(), Arc::clone(&shared), Arc::clone(&tally));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = worker(c, a, w, rid, stop, shared, Arc::clone(&tally)).await {
                tally.error(format!("worker {w}: {e:#}"));
            }
        }));
    }
    // Short-lived HTTP streams get their own connection each; long-polls reuse a pool.
    let sse_http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let poll_http = reqwest::Client::builder().build()?;
    for k in 0..a.concurrency {
        let (c, a, shared, tally) = (c.clone(), Arc::clone(&a), Arc::clone(&shared), Arc::clone(&tally));
        let (sse_http, poll_http) = (sse_http.clone(), poll_http.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new((0xc4u64 << 32) | k as u64);
            let mut i = k;
            while stop > Instant::now() {
                let t = (rng.below(100) as usize * TRANSPORTS.len()) / 100;
                let r = match t {
                    0 => native(&c, &a, i, &mut rng, &shared, &tally).await,
                    1 => phoenix(&c, &a, i, &mut rng, &tally).await,
                    2 => sse(&c, &a, &sse_http, &mut rng, &tally).await,
                    _ => longpoll(&c, &a, &poll_http, &mut rng, &shared, &tally).await,
                };
                match r {
                    Ok(()) => tally.cycles[t].fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tally.error(format!("{}: {e:#}", TRANSPORTS[t]));
                        tally.failed[t].fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += a.concurrency;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let per = |xs: &[AtomicU64; 4]| {
        let mut m = serde_json::Map::new();
        for (name, x) in TRANSPORTS.iter().zip(xs) {
            m.insert((*name).into(), json!(x.load(Ordering::Relaxed)));
        }
        Value::Object(m)
    };
    let cycles: u64 = tally.cycles.iter().map(|x| x.load(Ordering::Relaxed)).sum();
    let failed: u64 = tally.failed.iter().map(|x| x.load(Ordering::Relaxed)).sum();
    let reports = tally.reports.load(Ordering::Relaxed);
    let errors = tally.errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(json!({
        "workload": "soak",
        "duration_s": secs,
        "concurrency": a.concurrency,
        "cycles": cycles,
        "cycles_per_sec": cycles as f64 / secs,
        "cycles_by_transport": per(&tally.cycles),
        "failed": failed,
        "failed_by_transport": per(&tally.failed),
        "frames_received": tally.frames.load(Ordering::Relaxed),
        "reports": reports,
        "reports_per_sec": reports as f64 / secs,
        "jobs_completed": tally.jobs_completed.load(Ordering::Relaxed),
        "broadcasts": tally.broadcasts.load(Ordering::Relaxed),
        "notifications": tally.notifications.load(Ordering::Relaxed),
        "write_errors": tally.write_errors.load(Ordering::Relaxed),
        "first_errors": errors,
    }))
}
