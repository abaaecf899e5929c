//! Guarantee 5 as a property, over every transport at once. A seeded random
//! world — tenants whose job ids and user names overlap on purpose, roles,
//! owners, jobs — is watched by readers over the native WebSocket, Phoenix
//! (`postgres_changes` with random filters, broadcast, presence), SSE and
//! long-poll, with rooms and presence; then random writes (jobs, progress,
//! tasks, artifacts, notifications, broadcasts over HTTP and WebSocket,
//! presence) go in. Every delivery a reader got must be one it may see: the
//! same tenant; for customers only their own jobs and notifications; rooms of
//! its own tenant, and a job's room only if it may read the job; and it must
//! belong to the topic it came on. Every subscription the server granted or
//! refused must match the rules too. Each transport must have delivered
//! something, so the property cannot hold vacuously.
//!
//! Rows carry markers written into them (task names, artifact payloads,
//! notification titles, broadcast payloads, presence metas) that say which
//! tenant and owner they were written for, since not every row names its tenant.
//!
//! `ISOLATION_SEED=<n>` replays a run; the seed is printed when it fails.

use crate::harness::{token, Server, Ws};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const ROLES: [&str; 4] = ["admin", "staff", "customer", "worker"];
/// User names and job ids are drawn from small pools shared by every tenant,
/// so that a delivery crossing tenants would find a plausible twin.
const SUBS: [&str; 6] = ["cust-0", "cust-1", "cust-2", "cust-3", "sam", "root"];
const JOB_IDS: usize = 10;
const ROOMS: [&str; 3] = ["lobby", "ops", "floor"];
const TRANSPORTS: [&str; 4] = ["native", "phoenix", "sse", "longpoll"];
const READERS: usize = 32;
const WRITES: usize = 240;
/// Rounds per run, each a fresh world in fresh tenants on the same server.
const ROUNDS: u64 = 4;

/// Who a reader is.
#[derive(Debug, Clone)]
struct Who {
    tenant: String,
    sub: String,
    role: &'static str,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}@{}", self.role, self.sub, self.tenant)
    }
}

/// The world as written: per tenant, job id → owner.
#[derive(Default)]
struct World {
    tenants: Vec<String>,
    jobs: HashMap<String, BTreeMap<String, Option<String>>>,
}

impl World {
    /// `Some(owner)` if the job exists in the tenant.
    fn owner(&self, tenant: &str, job: &str) -> Option<Option<&str>> {
        self.jobs.get(tenant)?.get(job).map(|o| o.as_deref())
    }

    fn may_read_job(&self, r: &Who, job: &str) -> bool {
        r.role != "customer" || self.owner(&r.tenant, job) == Some(Some(&r.sub))
    }

    /// Whether `r` may subscribe to `topic` (the rules of docs/PROTOCOL.md).
    fn may_read_topic(&self, r: &Who, topic: &str) -> bool {
        let customer = r.role == "customer";
        if topic == "jobs" {
            !customer
        } else if let Some(o) = topic.strip_prefix("jobs:owner:") {
            !customer || o == r.sub
        } else if let Some(j) = topic.strip_prefix("job:") {
            self.may_read_job(r, j)
        } else if let Some(u) = topic.strip_prefix("user:") {
            u == r.sub || r.role == "admin"
        } else if let Some(room) = topic.strip_prefix("room:") {
            room.strip_prefix("job:").is_none_or(|j| self.may_read_job(r, j))
        } else {
            false
        }
    }
}

/// Marker fields: `kind|tenant|...`.
fn marker(v: &Value) -> Vec<String> {
    v.as_str().unwrap_or("").split('|').map(str::to_string).collect()
}

/// What a logged row tells about itself: (tenant, kind, job id, owner or recipient).
#[derive(Debug)]
struct Facts {
    tenant: String,
    /// `job` for job, task and artifact rows; `note` for notifications.
    kind: &'static str,
    job: Option<String>,
    owner: Option<String>,
}

fn job_facts(data: &Value, table: &str, w: &World, r: &Who) -> Result<Facts, String> {
    match table {
        "jobs" => {
            let m = marker(&data["title"]);
            let f = Facts {
                tenant: data["tenant"].as_str().unwrap_or("?").to_string(),
                kind: "job",
                job: data["id"].as_str().map(str::to_string),
                owner: data["owner"].as_str().map(str::to_string),
            };
            // The row's own columns and the marker written into it agree.
            if m.len() == 3 && (m[1] != f.tenant || m[2] != f.owner.as_deref().unwrap_or("-")) {
                return Err(format!("job row and its marker disagree: {data}"));
            }
            Ok(f)
        }
        "tasks" | "artifacts" => {
            let m = if table == "tasks" { marker(&data["name"]) } else { marker(&data["payload"]["m"]) };
            if m.len() != 4 {
                return Err(format!("{table} row without a marker: {data}"));
            }
            if data["job_id"].as_str() != Some(&m[2]) {
                return Err(format!("{table} row of job {} has the marker of {}: {data}", data["job_id"], m[2]));
            }
            Ok(Facts {
                tenant: m[1].clone(),
                kind: "job",
                job: Some(m[2].clone()),
                owner: (m[3] != "-").then(|| m[3].clone()),
            })
        }
        "notifications" => {
            let recipient = data["recipient"].as_str().unwrap_or("?").to_string();
            let m = marker(&data["title"]);
            let tenant = if m.len() == 3 && m[0] == "N" {
                if m[2] != recipient {
                    return Err(format!("notification for {recipient} has the marker of {}: {data}", m[2]));
                }
                m[1].clone()
            } else {
                // Herald's own notification to a job's owner: it belongs to the
                // reader's tenant only if that tenant has the job with that owner.
                let job = data["job_id"].as_str().unwrap_or("");
                if w.owner(&r.tenant, job) == Some(Some(&recipient)) {
                    r.tenant.clone()
                } else {
                    format!("not {} (job {job} of {recipient} is not there)", r.tenant)
                }
            };
            Ok(Facts { tenant, kind: "note", job: data["job_id"].as_str().map(str::to_string), owner: Some(recipient) })
        }
        other => Err(format!("unknown table {other}")),
    }
}

fn table_of(event_type: &str) -> &'static str {
    match event_type.split('.').next() {
        Some("job") => "jobs",
        Some("task") => "tasks",
        Some("artifact") => "artifacts",
        Some("notification") => "notifications",
        _ => "?",
    }
}

/// A logged event delivered to `r` on `topic` (None: Phoenix, checked against its bindings).
fn check_event(w: &World, r: &Who, topic: Option<&str>, table: &str, data: &Value) -> Result<(), String> {
    let f = job_facts(data, table, w, r)?;
    if f.tenant != r.tenant {
        return Err(format!("crossed tenants: a row of {} reached {r}: {data}", f.tenant));
    }
    match f.kind {
        "job" if r.role == "customer" && f.owner.as_deref() != Some(&r.sub) => {
            return Err(format!("customer {} got a job row owned by {:?}: {data}", r.sub, f.owner));
        }
        "note" if f.owner.as_deref() != Some(&r.sub) && r.role != "admin" => {
            return Err(format!("{r} got a notification for {:?}: {data}", f.owner));
        }
        _ => {}
    }
    let Some(topic) = topic else { return Ok(()) };
    let fits = if topic == "jobs" {
        f.kind == "job"
    } else if let Some(o) = topic.strip_prefix("jobs:owner:") {
        f.kind == "job" && f.owner.as_deref() == Some(o)
    } else if let Some(j) = topic.strip_prefix("job:") {
        f.kind == "job" && f.job.as_deref() == Some(j)
    } else if let Some(u) = topic.strip_prefix("user:") {
        f.kind == "note" && f.owner.as_deref() == Some(u)
    } else {
        false
    };
    if !fits {
        return Err(format!("{r} got on {topic} a row that does not belong to it: {data}"));
    }
    Ok(())
}

/// A broadcast payload (`{"m": "B|tenant|scope|name"}`) that reached `r` in `room`
/// (or on `tenant` / `inbox:<sub>` for native connections).
fn check_broadcast(w: &World, r: &Who, at: &str, payload: &Value) -> Result<(), String> {
    let m = marker(&payload["m"]);
    if m.len() != 4 || m[0] != "B" {
        return Err(format!("{r} got an unmarked broadcast on {at}: {payload}"));
    }
    if m[1] != r.tenant {
        return Err(format!("crossed tenants: a broadcast of {} reached {r} on {at}: {payload}", m[1]));
    }
    let fits = match m[2].as_str() {
        "room" => at == format!("room:{}", m[3]) && w.may_read_topic(r, at),
        "user" => at == format!("inbox:{}", m[3]) && m[3] == r.sub,
        "tenant" => at == "tenant",
        _ => false,
    };
    if !fits {
        return Err(format!("{r} got on {at} a broadcast meant for {} {}: {payload}", m[2], m[3]));
    }
    Ok(())
}

/// Presence entries (`{key: {metas: [{"m": "P|tenant|sub|room", ...}]}}`) seen by `r` in `room`.
fn check_presence(w: &World, r: &Who, room: &str, entries: &Value) -> Result<usize, String> {
    let mut n = 0;
    for (key, entry) in entries.as_object().into_iter().flatten() {
        for meta in entry["metas"].as_array().into_iter().flatten() {
            let m = marker(&meta["m"]);
            if m.len() != 4 || m[0] != "P" {
                return Err(format!("{r} saw an unmarked presence in {room}: {key} {meta}"));
            }
            if m[1] != r.tenant {
                return Err(format!("crossed tenants: presence of {}@{} reached {r} in {room}", m[2], m[1]));
            }
            if format!("room:{}", m[3]) != room || !w.may_read_topic(r, room) {
                return Err(format!("{r} saw in {room} a presence of room:{}: {meta}", m[3]));
            }
            if key != &m[2] {
                return Err(format!("presence of {} shown under the key {key} in {room}", m[2]));
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Evaluates the PostgREST-style filters this test generates (`col=eq.v`, `col=in.(a,b)`).
fn filter_holds(filter: Option<&str>, record: &Value) -> bool {
    let Some(filter) = filter else { return true };
    // Clauses are separated by commas outside `in.(...)` lists.
    let mut clauses = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                clauses.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    clauses.push(&filter[start..]);
    clauses.into_iter().all(|clause| {
        let Some((col, rest)) = clause.split_once('=') else { return false };
        let actual = match &record[col] {
            Value::String(s) => s.clone(),
            Value::Null => "null".to_string(),
            v => v.to_string(),
        };
        if let Some(v) = rest.strip_prefix("eq.") {
            actual == v
        } else if let Some(list) = rest.strip_prefix("in.(").and_then(|l| l.strip_suffix(')')) {
            list.split(',').any(|v| v == actual)
        } else {
            false
        }
    })
}

/// One delivery, as the reader got it.
enum Got {
    /// A logged row; `topic` is None for Phoenix, whose `channel` is checked against its bindings.
    Event {
        topic: Option<String>,
        channel: Option<String>,
        table: String,
        data: Value,
    },
    Broadcast {
        at: String,
        payload: Value,
    },
    Presence {
        room: String,
        entries: Value,
    },
}

/// What one reader took away.
#[derive(Default)]
struct Log {
    got: Vec<Got>,
    /// Phoenix: the bindings of each channel that joined.
    bindings: HashMap<String, Vec<Value>>,
    /// Protocol trouble, and grants the rules forbid.
    violations: Vec<String>,
    /// Subscriptions refused though the rules allow them.
    wrongly_refused: Vec<String>,
}

impl Log {
    fn event(&mut self, topic: Option<&str>, channel: Option<&str>, table: &str, data: &Value) {
        let (topic, channel) = (topic.map(str::to_string), channel.map(str::to_string));
        self.got.push(Got::Event { topic, channel, table: table.to_string(), data: data.clone() });
    }

    fn broadcast(&mut self, at: &str, payload: &Value) {
        self.got.push(Got::Broadcast { at: at.to_string(), payload: payload.clone() });
    }

    fn presence(&mut self, room: &str, entries: &Value) {
        self.got.push(Got::Presence { room: room.to_string(), entries: entries.clone() });
    }

    /// A subscription decision against the rules.
    fn decided(&mut self, w: &World, r: &Who, transport: &str, topic: &str, granted: bool, answer: &str) {
        let allowed = w.may_read_topic(r, topic);
        if granted && !allowed {
            self.violations.push(format!("{transport}: {r} was granted {topic}, which the rules forbid"));
        } else if !granted && allowed {
            self.wrongly_refused.push(format!("{transport}: {r} was refused {topic}: {answer}"));
        }
    }

    /// Checks every delivery against the world as it stood at the end; counts them by kind.
    fn check(&mut self, w: &World, r: &Who, counts: &mut BTreeMap<&'static str, usize>) {
        for g in std::mem::take(&mut self.got) {
            let (kind, res) = match &g {
                Got::Event { topic, channel, table, data } => {
                    let mut res = check_event(w, r, topic.as_deref(), table, data);
                    if let (Ok(()), Some(ch)) = (&res, channel) {
                        // It answers one of the channel's bindings.
                        let bindings = self.bindings.get(ch).cloned().unwrap_or_default();
                        let matched = bindings.iter().any(|b| {
                            b["table"].as_str() == Some(table.as_str()) && filter_holds(b["filter"].as_str(), data)
                        });
                        if !matched {
                            res = Err(format!(
                                "phoenix {r}: a {table} change on {ch} matches none of {bindings:?}: {data}"
                            ));
                        }
                    }
                    ("event", res.map(|()| 1))
                }
                Got::Broadcast { at, payload } => ("broadcast", check_broadcast(w, r, at, payload).map(|()| 1)),
                Got::Presence { room, entries } => ("presence", check_presence(w, r, room, entries)),
            };
            match res {
                Ok(n) => *counts.entry(kind).or_default() += n,
                Err(e) => self.violations.push(e),
            }
        }
    }
}

/// The topics a reader asks for: the ones its role always has, then random ones.
fn topics_for(rng: &mut StdRng, r: &Who, rooms: bool) -> Vec<String> {
    let mut t = if r.role == "customer" {
        vec![format!("jobs:owner:{}", r.sub), format!("user:{}", r.sub)]
    } else {
        vec!["jobs".to_string(), format!("user:{}", r.sub)]
    };
    if rooms {
        t.push(format!("room:{}", ROOMS[rng.gen_range(0..ROOMS.len())]));
    }
    for _ in 0..rng.gen_range(1..=3) {
        let extra = match rng.gen_range(0..if rooms { 6 } else { 4 }) {
            0 => "jobs".to_string(),
            1 => format!("jobs:owner:{}", SUBS[rng.gen_range(0..SUBS.len())]),
            2 => format!("job:j{}", rng.gen_range(0..JOB_IDS)),
            3 => format!("user:{}", SUBS[rng.gen_range(0..SUBS.len())]),
            4 => format!("room:{}", ROOMS[rng.gen_range(0..ROOMS.len())]),
            _ => format!("room:job:j{}", rng.gen_range(0..JOB_IDS)),
        };
        if !t.contains(&extra) {
            t.push(extra);
        }
    }
    t
}

fn presence_meta(r: &Who, room: &str) -> Value {
    json!({"m": format!("P|{}|{}|{}", r.tenant, r.sub, room.trim_start_matches("room:")), "status": "watching"})
}

async fn native_reader(
    url: String,
    w: Arc<World>,
    r: Who,
    topics: Vec<String>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Log {
    let mut log = Log::default();
    let mut ws = Ws::connect(&url, &token(&r.sub, &r.tenant, r.role)).await;
    let mut rooms = Vec::new();
    for t in &topics {
        let a = ws.request(json!({"op": "sub", "topic": t})).await;
        let granted = a["op"] == "ack";
        log.decided(&w, &r, "native", t, granted, &a.to_string());
        if granted && t.starts_with("room:") {
            rooms.push(t.clone());
        }
    }
    for room in &rooms {
        let a = ws.request(json!({"op": "presence", "topic": room, "meta": presence_meta(&r, room)})).await;
        assert_eq!(a["op"], "ack", "{r} presence in {room}: {a}");
    }
    let _ = ready.send(()).await;
    loop {
        let f = tokio::select! {
            f = ws.next(Duration::from_secs(30)) => f,
            _ = stop.changed() => break,
        };
        let Some(f) = f else { break };
        let topic = f["topic"].as_str().unwrap_or("").to_string();
        match f["op"].as_str().unwrap_or("") {
            "event" => log.event(Some(&topic), None, table_of(f["type"].as_str().unwrap_or("")), &f["data"]),
            "broadcast" => log.broadcast(&topic, &f["data"]),
            "presence_state" => log.presence(&topic, &f["state"]),
            "presence_diff" => {
                log.presence(&topic, &f["joins"]);
                log.presence(&topic, &f["leaves"]);
            }
            "ack" | "error" => {}
            other => log.violations.push(format!("native {r}: unexpected frame {other}: {f}")),
        }
    }
    if let Some(c) = &ws.close {
        log.violations.push(format!("native {r}: closed by the server {c:?}"));
    }
    log
}

/// One random `postgres_changes` binding.
fn random_binding(rng: &mut StdRng, r: &Who) -> Value {
    let job = format!("j{}", rng.gen_range(0..JOB_IDS));
    let (table, filter) = match rng.gen_range(0..7) {
        0 => ("jobs", None),
        1 => ("jobs", Some(format!("id=eq.{job}"))),
        2 => ("jobs", Some(format!("owner=eq.{}", SUBS[rng.gen_range(0..SUBS.len())]))),
        3 => ("jobs", Some("status=in.(running,completed,failed)".to_string())),
        4 => ("tasks", Some(format!("job_id=eq.{job}"))),
        5 => ("artifacts", Some(format!("job_id=in.({job},j{})", rng.gen_range(0..JOB_IDS)))),
        _ => ("notifications", Some(format!("recipient=eq.{}", if rng.gen_bool(0.7) { &r.sub } else { SUBS[0] }))),
    };
    let event = ["*", "INSERT", "UPDATE"][rng.gen_range(0..3)];
    let mut b = json!({"event": event, "schema": "public", "table": table});
    if let Some(f) = filter {
        b["filter"] = json!(f);
    }
    b
}

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn phx_next(ws: &mut Stream, timeout: Duration) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(timeout, ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("phoenix frames are JSON");
                let a = v.as_array().expect("vsn 2.0.0 frames are arrays");
                return Some(json!({"join_ref": a[0], "ref": a[1], "topic": a[2], "event": a[3], "payload": a[4]}));
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

async fn phoenix_reader(
    port: u16,
    w: Arc<World>,
    r: Who,
    seed: u64,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Log {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Log::default();
    let tok = token(&r.sub, &r.tenant, r.role);
    let url = format!("ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={tok}&vsn=2.0.0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("phoenix connect");
    let mut early = Vec::new();
    for n in 0..rng.gen_range(1..=2) {
        let room = if rng.gen_bool(0.2) {
            format!("job:j{}", rng.gen_range(0..JOB_IDS))
        } else {
            ROOMS[rng.gen_range(0..ROOMS.len())].to_string()
        };
        let topic = format!("realtime:{room}");
        if log.bindings.contains_key(&topic) {
            continue;
        }
        let mut bindings: Vec<Value> = (0..rng.gen_range(0..=3)).map(|_| random_binding(&mut rng, &r)).collect();
        if n == 0 {
            // The binding the role always may have, so the reader hears something.
            let own = if r.role == "customer" {
                json!({"event": "*", "schema": "public", "table": "jobs"})
            } else {
                json!({"event": "*", "schema": "public", "table": "notifications", "filter": format!("recipient=eq.{}", r.sub)})
            };
            bindings.insert(0, own);
        }
        let join_ref = format!("{}", 10 * (n + 1));
        let config = json!({"broadcast": {"self": false, "ack": false}, "presence": {"key": "", "enabled": true},
            "postgres_changes": bindings, "private": false});
        let join = json!([join_ref, join_ref, topic, "phx_join", {"config": config, "access_token": tok}]);
        ws.send(Message::text(join.to_string())).await.unwrap();
        let reply = loop {
            let f = phx_next(&mut ws, Duration::from_secs(10)).await.expect("join reply");
            if f["event"] == "phx_reply" && f["ref"] == json!(join_ref) {
                break f;
            }
            early.push(f);
        };
        if reply["payload"]["status"] == "ok" {
            // A granted join: its room must be one the reader may enter.
            log.decided(&w, &r, "phoenix", &format!("room:{room}"), true, "");
            let track = json!([join_ref, format!("{join_ref}1"), topic, "presence",
                {"type": "presence", "event": "track", "payload": presence_meta(&r, &room)}]);
            ws.send(Message::text(track.to_string())).await.unwrap();
            log.bindings.insert(topic, bindings);
        }
    }
    let _ = ready.send(()).await;
    let mut frames = early;
    loop {
        let f = tokio::select! {
            f = phx_next(&mut ws, Duration::from_secs(30)) => f,
            _ = stop.changed() => break,
        };
        match f {
            Some(f) => frames.push(f),
            None => {
                log.violations.push(format!("phoenix {r}: the socket closed"));
                break;
            }
        }
    }
    for f in frames {
        let topic = f["topic"].as_str().unwrap_or("").to_string();
        let room = format!("room:{}", topic.trim_start_matches("realtime:"));
        let p = &f["payload"];
        match f["event"].as_str().unwrap_or("") {
            "postgres_changes" => {
                let data = &p["data"];
                log.event(None, Some(&topic), data["table"].as_str().unwrap_or("?"), &data["record"]);
            }
            "broadcast" => log.broadcast(&room, &p["payload"]),
            "presence_state" => log.presence(&room, p),
            "presence_diff" => {
                log.presence(&room, &p["joins"]);
                log.presence(&room, &p["leaves"]);
            }
            "phx_reply" | "system" => {}
            other => log.violations.push(format!("phoenix {r}: unexpected {other}: {f}")),
        }
    }
    log
}

/// Reads an SSE stream into `(event, data)` messages until stopped.
async fn sse_reader(
    base: String,
    w: Arc<World>,
    r: Who,
    topics: Vec<String>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Log {
    let mut log = Log::default();
    let http = reqwest::Client::new();
    let tok = token(&r.sub, &r.tenant, r.role);
    let open = |topics: &[String]| {
        http.get(format!("{base}/v1/sse?topic={}&token={tok}", topics.join(",")))
            .timeout(Duration::from_secs(120))
            .send()
    };
    let mut resp = open(&topics).await.expect("sse request");
    let all_allowed = topics.iter().all(|t| w.may_read_topic(&r, t));
    if resp.status() == 200 {
        if !all_allowed {
            log.violations.push(format!("sse: {r} was granted {topics:?}, which the rules forbid in part"));
        }
    } else {
        let answer = format!("{} {}", resp.status(), resp.text().await.unwrap_or_default());
        if all_allowed {
            log.wrongly_refused.push(format!("sse: {r} was refused {topics:?}: {answer}"));
        }
        let allowed: Vec<String> = topics.iter().filter(|t| w.may_read_topic(&r, t)).cloned().collect();
        resp = open(&allowed).await.expect("sse request");
        assert_eq!(resp.status(), 200, "sse {r} {allowed:?}");
    }
    let _ = ready.send(()).await;
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c,
            _ = stop.changed() => break,
        };
        let Ok(Some(chunk)) = chunk else {
            log.violations.push(format!("sse {r}: the stream ended"));
            break;
        };
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data.is_empty() {
                continue;
            }
            let d: Value = serde_json::from_str(&data).expect("sse data is JSON");
            let topic = d["topic"].as_str().unwrap_or("").to_string();
            match event.as_str() {
                "broadcast" => log.broadcast(&topic, &d["data"]),
                "presence_diff" => {
                    log.presence(&topic, &d["joins"]);
                    log.presence(&topic, &d["leaves"]);
                }
                e if e.contains('.') => log.event(Some(&topic), None, table_of(e), &d["data"]),
                other => log.violations.push(format!("sse {r}: unexpected event {other}: {d}")),
            }
        }
    }
    log
}

async fn longpoll_reader(
    base: String,
    w: Arc<World>,
    r: Who,
    topics: Vec<String>,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: watch::Receiver<bool>,
) -> Log {
    let mut log = Log::default();
    let http = reqwest::Client::new();
    let tok = token(&r.sub, &r.tenant, r.role);
    let get = |topics: &[String], since: u64, wait: u64| {
        http.get(format!("{base}/v1/events?topic={}&since={since}&limit=1000&wait={wait}", topics.join(",")))
            .bearer_auth(&tok)
            .timeout(Duration::from_secs(30))
            .send()
    };
    // Each topic alone, for the decision; then the allowed ones together.
    let mut allowed = Vec::new();
    for t in &topics {
        let resp = get(std::slice::from_ref(t), 0, 0).await.expect("long-poll");
        let granted = resp.status() == 200;
        let answer = format!("{} {}", resp.status(), resp.text().await.unwrap_or_default());
        log.decided(&w, &r, "longpoll", t, granted, &answer);
        if granted {
            allowed.push(t.clone());
        }
    }
    let _ = ready.send(()).await;
    let mut since = 0;
    loop {
        let last = *stop.borrow();
        let resp = get(&allowed, since, if last { 0 } else { 1 }).await.expect("long-poll");
        assert_eq!(resp.status(), 200, "long-poll {r} {allowed:?}");
        let page: Value = resp.json().await.unwrap();
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            log.event(e["topic"].as_str(), None, table_of(e["type"].as_str().unwrap_or("")), &e["data"]);
        }
        since = page["next"].as_u64().unwrap_or(since);
        // After the stop, read on until the log has nothing more for us.
        if last && events.is_empty() {
            break;
        }
    }
    log
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

/// One round: a fresh random world in fresh tenants, readers, writes, checks.
async fn round(s: &Server, seed: u64) -> (BTreeMap<&'static str, usize>, BTreeMap<&'static str, usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::default();
    for k in 0..3 {
        w.tenants.push(format!("t{seed:x}-{k}"));
    }
    let job_marker = |t: &str, owner: &Option<String>| format!("J|{t}|{}", owner.as_deref().unwrap_or("-"));

    // Jobs: ids from one pool in every tenant, owned at random.
    for t in w.tenants.clone() {
        let writer = token("w", &t, "worker");
        let mut jobs = BTreeMap::new();
        for j in 0..JOB_IDS {
            if rng.gen_bool(0.6) {
                let owner = rng.gen_bool(0.8).then(|| pick(&mut rng, &SUBS[..4]).to_string());
                let id = format!("j{j}");
                let mut body = json!({"id": id, "title": job_marker(&t, &owner), "status": "running",
                    "tasks": [{"id": "t0", "name": format!("T|{t}|{id}|{}", owner.as_deref().unwrap_or("-"))}]});
                if let Some(o) = &owner {
                    body["owner"] = json!(o);
                }
                let (st, v) = s.post(&writer, "/v1/jobs", body).await;
                assert_eq!(st, 201, "seed {seed}: create {t}/{id}: {v}");
                jobs.insert(id, owner);
            }
        }
        w.jobs.insert(t, jobs);
    }
    let w = Arc::new(w);

    // Readers, four transports in turn.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(READERS);
    let mut readers = Vec::new();
    for i in 0..READERS {
        let r = Who {
            tenant: pick(&mut rng, &w.tenants).clone(),
            sub: pick(&mut rng, &SUBS).to_string(),
            role: ROLES[rng.gen_range(0..ROLES.len())],
        };
        let transport = TRANSPORTS[i % TRANSPORTS.len()];
        let (w, ready, stop) = (Arc::clone(&w), ready_tx.clone(), stop_rx.clone());
        let who = r.clone();
        let task = match transport {
            "native" => {
                let topics = topics_for(&mut rng, &r, true);
                tokio::spawn(native_reader(s.ws_url(), w, r, topics, ready, stop))
            }
            "phoenix" => tokio::spawn(phoenix_reader(s.port, w, r, rng.gen(), ready, stop)),
            "sse" => {
                let topics = topics_for(&mut rng, &r, true);
                tokio::spawn(sse_reader(s.url(""), w, r, topics, ready, stop))
            }
            _ => {
                let topics = topics_for(&mut rng, &r, false);
                tokio::spawn(longpoll_reader(s.url(""), w, r, topics, ready, stop))
            }
        };
        readers.push((transport, who, task));
    }
    for _ in 0..READERS {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv()).await.expect("readers ready");
    }

    // A native publisher per tenant, for room broadcasts over the WebSocket.
    let mut publishers = Vec::new();
    for t in &w.tenants {
        publishers.push(s.ws(&token("pub", t, "staff")).await);
    }

    // Random writes.
    let mut next_job = JOB_IDS;
    let mut jobs_now: HashMap<String, Vec<(String, Option<String>)>> =
        w.jobs.iter().map(|(t, js)| (t.clone(), js.iter().map(|(j, o)| (j.clone(), o.clone())).collect())).collect();
    let mut extra_jobs: Vec<(String, String, Option<String>)> = Vec::new();
    for n in 0..WRITES {
        let ti = rng.gen_range(0..w.tenants.len());
        let t = w.tenants[ti].clone();
        let writer = token("w", &t, if rng.gen_bool(0.5) { "worker" } else { "admin" });
        let jobs = &jobs_now[&t];
        let (job, owner) = jobs[rng.gen_range(0..jobs.len())].clone();
        let o = owner.as_deref().unwrap_or("-").to_string();
        let (st, v) = match rng.gen_range(0..10) {
            0..=2 => {
                let body = json!({"succeeded": n, "stage": format!("s{n}"), "current_item": format!("i{n}")});
                s.post(&writer, &format!("/v1/jobs/{job}/progress"), body).await
            }
            3 => {
                let status = ["completed", "failed", "cancelled"][rng.gen_range(0..3)];
                s.post(&writer, &format!("/v1/jobs/{job}/progress"), json!({"status": status})).await
            }
            4 => {
                let status = ["running", "succeeded", "failed"][rng.gen_range(0..3)];
                let body = json!({"name": format!("T|{t}|{job}|{o}"), "status": status});
                s.put(&writer, &format!("/v1/jobs/{job}/tasks/t{}", rng.gen_range(0..3)), body).await
            }
            5 => {
                let body = json!({"kind": "label", "payload": {"m": format!("A|{t}|{job}|{o}")}});
                s.post(&writer, &format!("/v1/jobs/{job}/artifacts"), body).await
            }
            6 => {
                let to = pick(&mut rng, &SUBS).to_string();
                s.post(&writer, "/v1/notifications", json!({"recipient": to, "title": format!("N|{t}|{to}")})).await
            }
            7 => {
                let body = match rng.gen_range(0..4) {
                    0 => {
                        let to = pick(&mut rng, &SUBS);
                        json!({"user": to, "event": "e", "payload": {"m": format!("B|{t}|user|{to}")}})
                    }
                    1 => json!({"tenant": true, "event": "e", "payload": {"m": format!("B|{t}|tenant|-")}}),
                    2 => {
                        let room = format!("job:{job}");
                        json!({"topic": format!("room:{room}"), "event": "e", "payload": {"m": format!("B|{t}|room|{room}")}})
                    }
                    _ => {
                        let room = pick(&mut rng, &ROOMS);
                        json!({"topic": format!("room:{room}"), "event": "e", "payload": {"m": format!("B|{t}|room|{room}")}})
                    }
                };
                s.post(&writer, "/v1/broadcast", body).await
            }
            8 => {
                let room = if rng.gen_bool(0.3) { format!("job:{job}") } else { pick(&mut rng, &ROOMS).to_string() };
                let frame = json!({"op": "pub", "topic": format!("room:{room}"), "event": "e",
                    "data": {"m": format!("B|{t}|room|{room}")}});
                let a = publishers[ti].request(frame).await;
                (if a["op"] == "ack" { 202 } else { 400 }, a)
            }
            _ => {
                // A new job, with an id that other tenants may also have.
                let id = format!("j{}", if rng.gen_bool(0.5) { rng.gen_range(0..JOB_IDS) } else { next_job });
                next_job += 1;
                let owner = rng.gen_bool(0.8).then(|| pick(&mut rng, &SUBS[..4]).to_string());
                let mut body = json!({"id": id, "title": job_marker(&t, &owner)});
                if let Some(o) = &owner {
                    body["owner"] = json!(o);
                }
                let (st, v) = s.post(&writer, "/v1/jobs", body).await;
                if st == 201 {
                    extra_jobs.push((t.clone(), id.clone(), owner.clone()));
                    jobs_now.get_mut(&t).unwrap().push((id, owner));
                }
                (if st == 409 { 201 } else { st }, v)
            }
        };
        // Refusals a random write may meet: a finished job, an illegal move.
        assert!(st < 300 || st == 409, "seed {seed}: write {n} in {t}: {st} {v}");
    }
    drop(publishers);
    // Rows written during the round join the model before deliveries are checked.
    let w = {
        let mut jobs = w.jobs.clone();
        for (t, id, owner) in extra_jobs {
            jobs.get_mut(&t).unwrap().insert(id, owner);
        }
        Arc::new(World { tenants: w.tenants.clone(), jobs })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(true);

    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut per_transport: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut refused = Vec::new();
    for (transport, who, task) in readers {
        let mut log = tokio::time::timeout(Duration::from_secs(30), task).await.expect("reader ends").expect("reader");
        let mut mine = BTreeMap::new();
        log.check(&w, &who, &mut mine);
        for (k, n) in mine {
            *counts.entry(k).or_default() += n;
            *per_transport.entry(transport).or_default() += n;
        }
        violations.extend(log.violations);
        refused.extend(log.wrongly_refused);
    }
    assert!(
        violations.is_empty(),
        "seed {seed} (ISOLATION_SEED={seed} replays it): {} deliveries or grants the reader may not see:\n  {}",
        violations.len(),
        violations.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
    assert!(
        refused.is_empty(),
        "seed {seed}: subscriptions refused that the rules allow:\n  {}",
        refused.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
    );
    (counts, per_transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transport_delivers_what_its_reader_may_not_see() {
    let seed = match std::env::var("ISOLATION_SEED") {
        Ok(v) => v.parse().expect("ISOLATION_SEED is a number"),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 & 0xffff_ffff
        }
    };
    eprintln!("isolation property: seed {seed} (ISOLATION_SEED={seed} replays it)");
    let s = Server::start("isolation-prop", &["--durability", "normal"]).await;
    let started = std::time::Instant::now();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut per_transport: BTreeMap<&'static str, usize> = BTreeMap::new();
    for k in 0..ROUNDS {
        let (c, p) = round(&s, seed.wrapping_add(k)).await;
        for (k, n) in c {
            *counts.entry(k).or_default() += n;
        }
        for (k, n) in p {
            *per_transport.entry(k).or_default() += n;
        }
    }
    eprintln!(
        "isolation property: seed {seed}, {:?} checked, by transport {per_transport:?}, in {:?}",
        counts,
        started.elapsed()
    );
    // Not vacuous: every transport, and rooms and presence, delivered something.
    for t in TRANSPORTS {
        assert!(
            per_transport.get(t).copied().unwrap_or(0) > 0,
            "seed {seed}: {t} delivered nothing: {per_transport:?}"
        );
    }
    for k in ["event", "broadcast", "presence"] {
        assert!(counts.get(k).copied().unwrap_or(0) > 0, "seed {seed}: no {k} was delivered: {counts:?}");
    }
}

/// The case the property first found: a Phoenix channel `realtime:job:<id>` is
/// the room `room:job:<id>`, which follows the job's read rules on every
/// transport — a customer may not join another customer's job room there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phoenix_channel_named_after_a_job_follows_the_jobs_read_rules() {
    let s = Server::start("isolation-phx-job-room", &[]).await;
    let worker = token("w", "acme", "worker");
    for (id, owner) in [("j-alice", "alice"), ("j-bob", "bob")] {
        let (st, v) = s.post(&worker, "/v1/jobs", json!({"id": id, "owner": owner})).await;
        assert_eq!(st, 201, "{v}");
    }
    let join = |ws_ref: &str, channel: &str, tok: &str| {
        let config =
            json!({"broadcast": {"self": false}, "presence": {"key": "", "enabled": true}, "postgres_changes": []});
        json!([ws_ref, ws_ref, channel, "phx_join", {"config": config, "access_token": tok}]).to_string()
    };
    let alice = token("alice", "acme", "customer");
    let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={alice}&vsn=2.0.0", s.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for (r, channel, ok) in [
        ("1", "realtime:job:j-alice", true),
        ("2", "realtime:job:j-bob", false),
        ("3", "realtime:job:no-such-job", false),
        ("4", "realtime:lobby", true),
    ] {
        ws.send(Message::text(join(r, channel, &alice))).await.unwrap();
        let reply = loop {
            let f = phx_next(&mut ws, Duration::from_secs(10)).await.expect("join reply");
            if f["event"] == "phx_reply" && f["ref"] == json!(r) {
                break f;
            }
        };
        let status = reply["payload"]["status"].as_str().unwrap_or("");
        assert_eq!(status == "ok", ok, "alice joining {channel}: {reply}");
        if !ok {
            let reason = reply["payload"]["response"]["reason"].as_str().unwrap_or("");
            assert!(reason.starts_with("not_found"), "{channel}: {reply}");
        }
    }
    // Staff may enter any job's room of their tenant.
    let sam = token("sam", "acme", "staff");
    let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={sam}&vsn=2.0.0", s.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(join("1", "realtime:job:j-bob", &sam))).await.unwrap();
    let reply = loop {
        let f = phx_next(&mut ws, Duration::from_secs(10)).await.expect("join reply");
        if f["event"] == "phx_reply" {
            break f;
        }
    };
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
}
