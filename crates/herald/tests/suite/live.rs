//! Live delivery over the native WebSocket protocol: fan-out to many
//! subscribers, isolation between customers and tenants, broadcast, stats,
//! metrics and `herald tail`.

use crate::harness::{create_job, token, token_ttl, Server, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type RawWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a native connection authenticated by `?token=` (or, with `subprotocol`,
/// by `Sec-WebSocket-Protocol: herald.v1, bearer.<token>`) and reads its welcome.
pub async fn raw_ws(s: &Server, token: &str, subprotocol: bool) -> RawWs {
    let (mut ws, resp) = if subprotocol {
        let mut req = s.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", format!("herald.v1, bearer.{token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.expect("ws connect")
    } else {
        tokio_tungstenite::connect_async(format!("{}?token={token}", s.ws_url())).await.expect("ws connect")
    };
    if subprotocol {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "herald.v1");
    }
    let first = next_json(&mut ws, Duration::from_secs(30)).await.expect("welcome");
    assert_eq!(first["op"], "welcome", "{first}");
    ws
}

/// The next text frame as JSON; None on close, error or timeout.
pub async fn next_json(ws: &mut RawWs, timeout: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(timeout, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("server sends JSON")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends `sub` and waits for its ack; returns the ack.
/// Subscribes for every event (`conflate: false`): these tests compare what a
/// subscriber got with the log, tick by tick, under bursts that would
/// otherwise let ticks supersede each other (suite/conflation.rs covers that).
pub async fn raw_sub(ws: &mut RawWs, topic: &str, since: Option<u64>) -> Value {
    let mut v = json!({ "op": "sub", "topic": topic, "id": "sub", "conflate": false });
    if let Some(s) = since {
        v["since"] = json!(s);
    }
    ws.send(Message::text(v.to_string())).await.expect("send sub");
    let ack = next_json(ws, Duration::from_secs(60)).await.expect("sub ack");
    assert_eq!((ack["op"].as_str(), ack["id"].as_str()), (Some("ack"), Some("sub")), "{ack}");
    ack
}

/// The position of an `event` frame, read without parsing the whole row
/// (events put `op`, `topic` and `position` first).
pub fn event_position(text: &str) -> Option<u64> {
    if !text.starts_with(r#"{"op":"event""#) {
        return None;
    }
    let at = text.find(r#""position":"#)? + r#""position":"#.len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Every position of `topic` in the log after `since`, read with the long-poll API.
pub async fn log_positions(s: &Server, tok: &str, topic: &str, since: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = since;
    loop {
        let (st, v) = s.get(tok, &format!("/v1/events?topic={topic}&since={next}&limit=1000")).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["resync"], false);
        let events = v["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        for e in events {
            out.push(e["position"].as_u64().unwrap());
        }
        next = v["next"].as_u64().unwrap();
    }
}

/// Posts `n` progress reports to `job` from `writers` concurrent HTTP clients,
/// each with a unique `current_item` `{prefix}-{writer}-{i}`. Returns the
/// items the server acknowledged.
pub async fn produce(base: String, worker: String, job: String, n: usize, writers: usize, prefix: &str) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, base, worker, job, prefix) =
            (http.clone(), base.clone(), worker.clone(), job.clone(), prefix.to_string());
        let count = n / writers + usize::from(w < n % writers);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..count {
                let item = format!("{prefix}-{w}-{i}");
                let r = http
                    .post(format!("{base}/v1/jobs/{job}/progress"))
                    .bearer_auth(&worker)
                    .json(&json!({ "current_item": item, "succeeded": i }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked.push(item),
                    Ok(r) => panic!("report refused: {} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

/// A running job owned by `owner`.
pub async fn running_job(s: &Server, worker: &str, owner: &str) -> String {
    create_job(s, worker, json!({ "owner": owner, "status": "running", "title": "live test" })).await
}

/// Sends a ping with a fresh id and returns its pong (panics if none comes).
pub async fn ping(ws: &mut Ws) -> Value {
    static N: AtomicUsize = AtomicUsize::new(0);
    let id = format!("ping{}", N.fetch_add(1, Ordering::Relaxed));
    ws.send(json!({ "op": "ping", "id": id })).await;
    loop {
        let v = ws.expect_op("pong").await;
        if v["id"] == id.as_str() {
            return v;
        }
    }
}

/// Waits until `ws` has received a broadcast or event; returns it, or None after `timeout`.
async fn next_delivery(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws.next(left).await?;
        if v["op"] == "broadcast" || v["op"] == "event" {
            return Some(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_of_one_job_receive_ten_thousand_events_in_order() {
    const SUBSCRIBERS: usize = 1000;
    const EVENTS: usize = 10_000;
    let s = Server::start("fanout", &["--durability", "normal"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");

    let received = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut ws = raw_ws(&s, &alice, i % 2 == 1).await;
        raw_sub(&mut ws, &topic, None).await;
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            // Positions must strictly increase; the whole sequence is kept to compare with the log.
            let mut positions = Vec::with_capacity(EVENTS);
            while positions.len() < EVENTS {
                let msg = match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
                    Ok(Some(Ok(m))) => m,
                    other => return Err(format!("subscriber {i}: stream ended after {}: {other:?}", positions.len())),
                };
                let Message::Text(t) = msg else { continue };
                let Some(p) = event_position(&t) else {
                    return Err(format!("subscriber {i}: unexpected frame {t}"));
                };
                if positions.last().is_some_and(|&l| p <= l) {
                    return Err(format!("subscriber {i}: position {p} after {:?}", positions.last()));
                }
                positions.push(p);
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(positions)
        }));
    }
    let (st, stats) = s.get(&token("sam", "acme", "staff"), "/v1/stats").await;
    assert_eq!(st, 200);
    assert_eq!(stats["tenant"]["connections"], SUBSCRIBERS as u64);

    let start = std::time::Instant::now();
    let acked = produce(s.url(""), worker.clone(), job.clone(), EVENTS, 16, "item").await;
    assert_eq!(acked.len(), EVENTS);
    let log = log_positions(&s, &worker, &topic, 0).await;
    assert_eq!(log.len(), EVENTS + 1, "job.created and one event per report");
    let expected = &log[1..];
    for r in readers {
        let positions = r.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(positions, expected, "every subscriber sees the log's sequence");
    }
    eprintln!("fan-out: {} deliveries in {:?}", received.load(Ordering::Relaxed), start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_see_only_their_own_jobs_and_tokens_are_rechecked() {
    let s = Server::start("isolation", &[]).await;
    let worker = token("w1", "acme", "worker");
    let a = token("alice", "acme", "customer");
    let job_a = running_job(&s, &worker, "alice").await;
    let job_b = running_job(&s, &worker, "bob").await;

    let mut wa = s.ws(&a).await;
    wa.sub("jobs:owner:alice", None).await;
    for (topic, code) in [
        ("jobs:owner:bob".to_string(), "forbidden"),
        (format!("job:{job_b}"), "not_found"),
        ("job:does-not-exist".to_string(), "not_found"),
        ("jobs".to_string(), "forbidden"),
        ("user:bob".to_string(), "forbidden"),
        ("nonsense".to_string(), "invalid_topic"),
    ] {
        let r = wa.request(json!({ "op": "sub", "topic": topic })).await;
        assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("error"), Some(code)), "{topic}: {r}");
    }
    // Another tenant's customer with the same sub sees nothing of acme.
    let mut other = s.ws(&token("alice", "globex", "customer")).await;
    other.sub("jobs:owner:alice", None).await;
    let r = other.request(json!({ "op": "sub", "topic": format!("job:{job_a}") })).await;
    assert_eq!(r["code"], "not_found", "{r}");

    // B's events never reach A: after B's report, the first thing A gets is A's own.
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job_b}/progress"), json!({ "stage": "b-secret" })).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job_a}/progress"), json!({ "stage": "a-visible" })).await;
    assert_eq!(st, 200);
    let e = wa.events(1, Duration::from_secs(10)).await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["data"]["id"], job_a.as_str());
    assert_eq!(e[0]["data"]["stage"], "a-visible");
    assert_eq!(e[0]["topic"], "jobs:owner:alice");
    // The other tenant's alice got nothing at all.
    let (st, _) =
        s.post(&token("w9", "globex", "worker"), "/v1/jobs", json!({ "id": "marker", "owner": "alice" })).await;
    assert_eq!(st, 201);
    let e = other.events(1, Duration::from_secs(10)).await;
    assert_eq!(e[0]["data"]["id"], "marker", "nothing of acme reached globex first: {e:?}");

    // A refresh to another subject is refused; the connection stays.
    let r = wa.request(json!({ "op": "refresh", "token": token("bob", "acme", "customer") })).await;
    assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("error"), Some("invalid_token")), "{r}");
    let r = wa.request(json!({ "op": "refresh", "token": "not-a-jwt" })).await;
    assert_eq!(r["op"], "error", "{r}");
    ping(&mut wa).await;

    // A short-lived token ends the connection with token_expired...
    let mut short = s.ws(&token_ttl("alice", "acme", "customer", 2)).await;
    short.sub(&format!("job:{job_a}"), None).await;
    let bye = short.expect_op("goodbye").await;
    assert_eq!((bye["code"].as_u64(), bye["reason"].as_str()), (Some(4002), Some("token_expired")), "{bye}");
    assert_eq!(bye["reconnect"], true);
    assert_eq!(short.closed(Duration::from_secs(10)).await, Some(4002));

    // ...unless it is refreshed in time, which keeps the connection and its subscriptions.
    let mut kept = s.ws(&token_ttl("alice", "acme", "customer", 3)).await;
    kept.sub(&format!("job:{job_a}"), None).await;
    let r = kept.request(json!({ "op": "refresh", "token": token("alice", "acme", "customer") })).await;
    assert_eq!(r["op"], "ack", "{r}");
    assert_eq!(r["dropped"], json!([]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The refreshed connection outlives the first token.
    ping(&mut kept).await;
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job_a}/progress"), json!({ "stage": "after-refresh" })).await;
    assert_eq!(st, 200);
    let e = kept.events(1, Duration::from_secs(10)).await;
    assert_eq!(e[0]["data"]["stage"], "after-refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_to_a_role_that_may_not_read_drops_the_subscription() {
    let s = Server::start("refresh-drop", &[]).await;
    let worker = token("w1", "acme", "worker");
    let job = running_job(&s, &worker, "bob").await;
    let mut ws = s.ws(&token("sam", "acme", "staff")).await;
    ws.sub("jobs", None).await;
    ws.sub(&format!("job:{job}"), None).await;
    // Same subject, now a customer: `jobs` and bob's job are no longer readable.
    let r = ws.request(json!({ "op": "refresh", "token": token("sam", "acme", "customer") })).await;
    assert_eq!(r["op"], "ack", "{r}");
    let mut dropped: Vec<String> =
        r["dropped"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    dropped.sort();
    assert_eq!(dropped, vec![format!("job:{job}"), "jobs".to_string()]);
    // Frames that came before the ack were sent while subscribed (the job's
    // creation may reach the hub just after its HTTP answer): what counts is after.
    ws.pending.clear();
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "stage": "hidden" })).await;
    assert_eq!(st, 200);
    assert!(ws.events(1, Duration::from_secs(2)).await.is_empty(), "no events after the subscriptions ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_the_room_the_user_or_the_tenant_and_no_one_else() {
    let s = Server::start("broadcast", &[]).await;
    let staff = token("sam", "acme", "staff");
    let mut a1 = s.ws(&token("u1", "acme", "customer")).await;
    let mut a2 = s.ws(&token("u2", "acme", "customer")).await;
    let mut a3 = s.ws(&token("u3", "acme", "customer")).await;
    let mut a3b = s.ws(&token("u3", "acme", "customer")).await; // a second tab of u3
    let mut b1 = s.ws(&token("u1", "globex", "customer")).await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        ws.sub("room:r", None).await;
    }
    // A marker every connection gets, to prove nothing else came before it.
    async fn marker(s: &Server, n: u32) {
        for tenant in ["acme", "globex"] {
            let (st, v) = s
                .post(
                    &token("sam", tenant, "staff"),
                    "/v1/broadcast",
                    json!({ "tenant": true, "event": format!("marker{n}"), "payload": {} }),
                )
                .await;
            assert_eq!(st, 202, "{v}");
        }
    }
    async fn expect(ws: &mut Ws, event: &str) -> Value {
        let v = next_delivery(ws, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no {event}"));
        assert_eq!(v["event"], event, "{v}");
        v
    }

    // A client's pub reaches the others in its room, not itself, not another tenant.
    let r = a1.request(json!({ "op": "pub", "topic": "room:r", "event": "hello", "data": { "n": 1 } })).await;
    assert_eq!(r["op"], "ack", "{r}");
    assert_eq!(r["delivered"], 1, "only a2: a1 skips its own, b1 is another tenant");
    let v = expect(&mut a2, "hello").await;
    assert_eq!(
        (v["topic"].as_str(), v["data"]["n"].as_u64(), v["from"].as_str()),
        (Some("room:r"), Some(1), Some("u1"))
    );
    marker(&s, 1).await;
    for ws in [&mut a1, &mut a2, &mut a3, &mut a3b, &mut b1] {
        expect(ws, "marker1").await;
    }

    // REST to a room.
    let (st, v) =
        s.post(&staff, "/v1/broadcast", json!({ "topic": "room:r", "event": "room", "payload": { "x": 1 } })).await;
    assert_eq!((st, v["delivered"].as_u64()), (202, Some(2)), "{v}");
    expect(&mut a1, "room").await;
    expect(&mut a2, "room").await;
    // To one user: both of u3's connections, no one else.
    let (st, v) = s.post(&staff, "/v1/broadcast", json!({ "user": "u3", "event": "personal", "payload": {} })).await;
    assert_eq!((st, v["delivered"].as_u64()), (202, Some(2)), "{v}");
    expect(&mut a3, "personal").await;
    expect(&mut a3b, "personal").await;
    // To the whole tenant.
    let (st, v) = s.post(&staff, "/v1/broadcast", json!({ "tenant": true, "event": "all", "payload": {} })).await;
    assert_eq!((st, v["delivered"].as_u64()), (202, Some(4)), "{v}");
    for ws in [&mut a1, &mut a2, &mut a3, &mut a3b] {
        expect(ws, "all").await;
    }
    marker(&s, 2).await;
    for ws in [&mut a1, &mut a2, &mut a3, &mut a3b, &mut b1] {
        expect(ws, "marker2").await;
    }

    // Bad broadcasts are refused with a reason; customers may not use REST broadcast.
    let (st, v) = s.post(&staff, "/v1/broadcast", json!({ "topic": "jobs", "event": "x", "payload": {} })).await;
    assert_eq!(st, 422, "{v}");
    let (st, _) = s
        .post(&token("u1", "acme", "customer"), "/v1/broadcast", json!({ "tenant": true, "event": "x", "payload": {} }))
        .await;
    assert_eq!(st, 403);
    let r = a1.request(json!({ "op": "pub", "topic": "jobs", "event": "x" })).await;
    assert_eq!(r["code"], "invalid_topic", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_count_connections_subscriptions_and_deliveries() {
    let s = Server::start("stats", &[]).await;
    let worker = token("w1", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let job = running_job(&s, &worker, "alice").await;
    let mut a = s.ws(&token("alice", "acme", "customer")).await;
    a.sub(&format!("job:{job}"), None).await;
    a.sub("jobs:owner:alice", None).await;
    let mut b = s.ws(&staff).await;
    b.sub("jobs", None).await;
    let _other = s.ws(&token("x", "globex", "staff")).await;

    let (st, v) = s.get(&staff, "/v1/stats").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant"]["connections"], 2, "{v}");
    // Three explicit subscriptions, plus the tenant and inbox topics each connection joins.
    assert_eq!(v["tenant"]["subscriptions"], 3 + 2 * 2, "{v}");
    let (st, _) = s.get(&token("alice", "acme", "customer"), "/v1/stats").await;
    assert_eq!(st, 403);

    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "stage": "m" })).await;
    assert_eq!(st, 200);
    assert_eq!(a.events(2, Duration::from_secs(10)).await.len(), 2);
    assert_eq!(b.events(1, Duration::from_secs(10)).await.len(), 1);

    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = s.get(&staff, "/v1/stats").await;
        if v["tenant"]["connections"] == 1 {
            assert_eq!(v["tenant"]["subscriptions"], 1 + 2, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a closed connection stays counted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> Option<f64> {
        text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
    };
    assert_eq!(value("herald_connections"), Some(2.0), "staff b and globex: {text}");
    // Staff b: `jobs` and its two implicit topics; globex: its two implicit topics.
    assert_eq!(value("herald_subscriptions"), Some(3.0 + 2.0), "{text}");
    assert!(value("herald_deliveries_total").unwrap_or(0.0) >= 3.0, "{text}");
    assert!(text.contains("herald_delivery_seconds"), "{text}");
    assert_eq!(value("herald_queue_overflows_total"), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_tail_prints_events_as_they_arrive() {
    let s = Server::start("tail", &[]).await;
    let worker = token("w1", "acme", "worker");
    let job = running_job(&s, &worker, "alice").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["tail", &format!("job:{job}"), "--url", &s.url(""), "--token", &token("sam", "acme", "staff")])
        .env_remove("HERALD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    // Report until tail shows one (it may not have subscribed yet for the first ones).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        assert!(tokio::time::Instant::now() < deadline, "tail printed nothing; saw {seen:?}");
        let (st, _) =
            s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": format!("tail-{i}") })).await;
        assert_eq!(st, 200);
        if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            seen.push(line);
            break;
        }
    }
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": "tail-last" })).await;
    assert_eq!(st, 200);
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("tail prints the next event")
            .unwrap()
            .expect("tail still running");
        let done = line.contains("tail-last");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.iter().all(|l| l.contains("job.updated")), "{seen:?}");
    child.kill().await.unwrap();
}

/// Frames of different clients never mix: a set of items posted concurrently
/// reaches a subscriber exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_deliver_each_acknowledged_report_once() {
    let s = Server::start("concurrent", &[]).await;
    let worker = token("w1", "acme", "worker");
    let job = running_job(&s, &worker, "alice").await;
    let mut ws = s.ws(&token("alice", "acme", "customer")).await;
    ws.sub_every(&format!("job:{job}")).await;
    let acked = produce(s.url(""), worker.clone(), job.clone(), 400, 8, "c").await;
    assert_eq!(acked.len(), 400);
    // The job's creation may still be on its way to the hub when the sub is
    // registered (publishing follows the commit): only the reports count here.
    let mut events = Vec::new();
    while events.len() < 400 {
        let more = ws.events(400 - events.len(), Duration::from_secs(60)).await;
        assert!(!more.is_empty(), "{} of 400 reports delivered", events.len());
        events.extend(more.into_iter().filter(|e| e["type"] != "job.created"));
    }
    let items: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["current_item"].as_str().unwrap_or_else(|| panic!("not a report: {e}")))
        .collect();
    let unique: HashSet<&str> = items.iter().copied().collect();
    assert_eq!(unique.len(), 400);
    assert_eq!(unique, acked.iter().map(String::as_str).collect());
    assert!(ws.events(1, Duration::from_millis(500)).await.is_empty(), "no extra deliveries");
}
