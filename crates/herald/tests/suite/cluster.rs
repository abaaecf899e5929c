//! Several nodes on one PostgreSQL database with `--cluster` (Redis or
//! NATS, real servers): room broadcasts and presence cross nodes, events
//! written through one node reach subscribers on the others, a killed node's
//! presence leaves within the bound, the tenant's connection limit and the
//! stats count every node, and a broker outage loses no event. Runs in the
//! PostgreSQL pass of the suite (`HERALD_TEST_STORE=postgres`).

use super::live::log_positions;
use super::sse::Sse;
use crate::harness::{create_job, free_port, on_postgres, presence_keys, settle, token, Server, Ws};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379";
const NATS: &str = "nats://127.0.0.1:4222";

/// Three nodes sharing a fresh database, each with `--cluster broker`.
async fn three_nodes(name: &str, broker: &str, extra: &[&str]) -> (Server, Server, Server) {
    let mut args = vec!["--cluster", broker];
    args.extend_from_slice(extra);
    let a = Server::start_pg_app(&format!("{name}_a"), "", "", &args).await;
    let b = Server::start_sharing(&a, &format!("{name}_b"), &args).await;
    let c = Server::start_sharing(&a, &format!("{name}_c"), &args).await;
    (a, b, c)
}

/// Waits until every node counts `nodes` nodes (each has heard the others).
async fn converged(nodes: &[&Server], want: u64) {
    let admin = token("root", "acme", "admin");
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in nodes {
        loop {
            let (st, v) = s.get(&admin, "/v1/stats").await;
            assert_eq!(st, 200, "{v}");
            if v["nodes"] == json!(want) {
                break;
            }
            assert!(Instant::now() < deadline, "the nodes did not see each other: {v}\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The next presence diff on `ws` (skipping other frames).
async fn presence_diff(ws: &mut Ws, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Some(v) if v["op"] == "presence_diff" => return v,
            Some(_) => {}
            None => panic!("no presence_diff within {within:?}; close {:?}", ws.close),
        }
    }
}

async fn broadcasts_presence_and_events_cross_nodes(broker: &str, name: &str) {
    let (a, b, c) = three_nodes(name, broker, &[]).await;
    converged(&[&a, &b, &c], 3).await;

    // Room broadcasts: sent on A, heard on B and C, not echoed to the sender.
    let mut on_b = b.ws(&token("bea", "acme", "staff")).await;
    let mut on_c = c.ws(&token("cid", "acme", "staff")).await;
    let mut elsewhere = c.ws(&token("eve", "globex", "staff")).await;
    for ws in [&mut on_b, &mut on_c, &mut elsewhere] {
        ws.sub("room:ops", None).await;
    }
    let mut on_a = a.ws(&token("ann", "acme", "staff")).await;
    let r = on_a.request(json!({"op": "pub", "topic": "room:ops", "event": "cursor", "data": {"x": 1}})).await;
    assert_eq!(r["op"], "ack", "{r}");
    for ws in [&mut on_b, &mut on_c] {
        let m = ws.expect_op("broadcast").await;
        assert_eq!(
            (m["event"].clone(), m["data"].clone(), m["from"].clone()),
            (json!("cursor"), json!({"x": 1}), json!("ann"))
        );
    }

    // Presence: set on A, a diff on B; a newcomer on C sees it in the state.
    let r = on_a.request(json!({"op": "presence", "topic": "room:ops", "meta": {"at": "a"}})).await;
    assert_eq!(r["op"], "ack", "{r}");
    let d = presence_diff(&mut on_b, Duration::from_secs(5)).await;
    assert_eq!(presence_keys(&d["joins"]), ["ann"], "{d}");
    let mut late = c.ws(&token("lou", "acme", "staff")).await;
    late.sub("room:ops", None).await;
    let st = late.expect_op("presence_state").await;
    assert_eq!(presence_keys(&st["state"]), ["ann"], "{st}");
    assert_eq!(st["state"]["ann"]["metas"][0]["at"], "a");

    // Events: a worker writes through A; subscribers on B and C get all, in order.
    let worker = token("w", "acme", "worker");
    let job = create_job(&a, &worker, json!({"title": "crawl"})).await;
    on_b.sub(&format!("job:{job}"), None).await;
    on_c.sub(&format!("job:{job}"), None).await;
    for i in 1..=20 {
        let (st, v) = a.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({"succeeded": i})).await;
        assert_eq!(st, 200, "{v}");
    }
    settle(&a).await;
    for ws in [&mut on_b, &mut on_c] {
        let got = ws.events(20, Duration::from_secs(10)).await;
        let counts: Vec<u64> = got.iter().map(|e| e["data"]["succeeded"].as_u64().unwrap_or(0)).collect();
        assert_eq!(counts, (1..=20).collect::<Vec<u64>>());
    }

    // Nothing crossed tenants.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut leaked = Vec::new();
    while let Some(f) = elsewhere.next(Duration::from_millis(50)).await {
        if f["op"] != "presence_state" {
            leaked.push(f);
        }
    }
    assert!(leaked.is_empty(), "another tenant heard: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_broadcasts_presence_and_events_cross_three_nodes() {
    if !on_postgres() {
        return;
    }
    broadcasts_presence_and_events_cross_nodes(REDIS, "cluster_redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_broadcasts_presence_and_events_cross_three_nodes() {
    if !on_postgres() {
        return;
    }
    broadcasts_presence_and_events_cross_nodes(NATS, "cluster_nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_presence_with_it_and_limits_and_stats_count_every_node() {
    if !on_postgres() {
        return;
    }
    let (a, b, mut c) = three_nodes("cluster_kill", REDIS, &["--max-connections-per-tenant", "4"]).await;
    converged(&[&a, &b, &c], 3).await;
    let mut watcher = b.ws(&token("bea", "acme", "staff")).await;
    watcher.sub("room:ops", None).await;
    let mut on_c = c.ws(&token("cid", "acme", "staff")).await;
    let r = on_c.request(json!({"op": "presence", "topic": "room:ops", "meta": {"at": "c"}})).await;
    assert_eq!(r["op"], "ack", "{r}");
    let d = presence_diff(&mut watcher, Duration::from_secs(5)).await;
    assert_eq!(presence_keys(&d["joins"]), ["cid"], "{d}");

    // Stats count every node: 2 connections of acme, one each on B and C.
    let admin = token("root", "acme", "admin");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = a.get(&admin, "/v1/stats").await;
        if v["tenant"]["connections"] == json!(2) {
            assert_eq!(v["node"]["connections"], json!(0), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "stats never counted both nodes: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tenant's limit (4) holds across nodes: two more on A, then the fifth is refused.
    let _one = a.ws(&token("x1", "acme", "staff")).await;
    let _two = a.ws(&token("x2", "acme", "staff")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a heartbeat carries A's count to C
    let mut fifth = Ws::connect(&c.ws_url(), "").await;
    fifth.send(json!({"op": "auth", "token": token("x3", "acme", "staff")})).await;
    assert_eq!(fifth.closed(Duration::from_secs(5)).await, Some(4009), "the fifth connection of acme, on C");

    // kill -9 C: its member leaves B's room within the bound (5 s of silence + a beat).
    let killed = Instant::now();
    c.kill9();
    let d = presence_diff(&mut watcher, Duration::from_secs(9)).await;
    assert_eq!(presence_keys(&d["leaves"]), ["cid"], "{d}");
    assert!(killed.elapsed() < Duration::from_secs(8), "left after {:?}", killed.elapsed());
    let mut late = b.ws(&token("lou", "acme", "staff")).await;
    late.sub("room:ops", None).await;
    let st = late.expect_op("presence_state").await;
    assert_eq!(presence_keys(&st["state"]), Vec::<String>::new(), "no ghost: {st}");
    converged(&[&a, &b], 2).await;
}

/// A private Redis server, so a test can stop it without touching anyone else's.
struct PrivateRedis {
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_burst_loses_no_event_and_presence_converges_after() {
    if !on_postgres() {
        return;
    }
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let a = Server::start_pg_app("cluster_outage_a", "", "", &["--cluster", &url]).await;
    let b = Server::start_sharing(&a, "cluster_outage_b", &["--cluster", &url]).await;
    converged(&[&a, &b], 2).await;

    let worker = token("w", "acme", "worker");
    let job = create_job(&a, &worker, json!({"title": "burst"})).await;
    let mut on_b = b.ws(&token("bea", "acme", "staff")).await;
    on_b.sub(&format!("job:{job}"), None).await;
    on_b.sub("room:ops", None).await;
    let mut on_a = a.ws(&token("ann", "acme", "staff")).await;

    // A burst through A; the broker goes away for 5 s in the middle of it.
    let writer = {
        let (url, worker, job) = (a.url(&format!("/v1/jobs/{job}/progress")), worker.clone(), job.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 1..=60u64 {
                let r = http.post(&url).bearer_auth(&worker).json(&json!({"succeeded": i})).send().await.unwrap();
                assert_eq!(r.status(), 200, "report {i} of {job}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut redis = PrivateRedis::start(port);
    writer.await.unwrap();
    settle(&a).await;
    let got = on_b.events(60, Duration::from_secs(15)).await;
    let counts: Vec<u64> = got.iter().map(|e| e["data"]["succeeded"].as_u64().unwrap_or(0)).collect();
    assert_eq!(counts, (1..=60).collect::<Vec<u64>>(), "every event, in order, across the outage");

    // Once the broker is back, broadcasts and presence flow again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = on_a.request(json!({"op": "pub", "topic": "room:ops", "event": "ping", "data": 1})).await;
        assert_eq!(r["op"], "ack");
        if let Some(m) = on_b.next(Duration::from_millis(500)).await {
            if m["op"] == "broadcast" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "broadcasts did not resume after the broker came back");
    }
    let r = on_a.request(json!({"op": "presence", "topic": "room:ops", "meta": {"at": "a"}})).await;
    assert_eq!(r["op"], "ack");
    let d = presence_diff(&mut on_b, Duration::from_secs(5)).await;
    assert_eq!(presence_keys(&d["joins"]), ["ann"], "{d}");
    redis.stop();
}

/// Whether a node says (in /metrics) it runs stall detection and retention.
async fn leads_maintenance(s: &Server) -> bool {
    let text = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().any(|l| l.starts_with("herald_maintenance_leader") && l.trim_end().ends_with(" 1"))
}

/// Counts `job.stalled` events of a job in the log.
async fn stalls(s: &Server, job: &str) -> usize {
    let staff = token("sam", "acme", "staff");
    let (st, v) = s.get(&staff, &format!("/v1/events?topic=job:{job}&since=0")).await;
    assert_eq!(st, 200, "{v}");
    v["events"].as_array().unwrap().iter().filter(|e| e["type"] == "job.stalled").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_detection_runs_on_exactly_one_node_and_moves_when_it_dies() {
    if !on_postgres() {
        return;
    }
    let args = ["--stall-timeout", "1s"];
    let a = Server::start_pg_app("cluster_stall_a", "", "", &args).await;
    let b = Server::start_sharing(&a, "cluster_stall_b", &args).await;
    let mut nodes = [a, b];
    let worker = token("w", "acme", "worker");
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let (la, lb) = (leads_maintenance(&nodes[0]).await, leads_maintenance(&nodes[1]).await);
        assert!(!(la && lb), "two nodes lead maintenance");
        if la || lb {
            break usize::from(lb);
        }
        assert!(Instant::now() < deadline, "no node took up maintenance");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = create_job(&nodes[0], &worker, json!({"status": "running"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalls(&nodes[0], &first).await == 0 {
        assert!(Instant::now() < deadline, "the silent job never stalled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stalls(&nodes[0], &first).await, 1, "stalled once, by one node");

    // The leader dies; the other node takes the duty over.
    nodes[leader].kill9();
    let other = &nodes[1 - leader];
    let second = create_job(other, &worker, json!({"status": "running"})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while stalls(other, &second).await == 0 {
        assert!(Instant::now() < deadline, "no node detected stalls after the leader died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leads_maintenance(other).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_killed_node_resume_on_another_with_nothing_lost_or_twice() {
    if !on_postgres() {
        return;
    }
    let (a, b, mut c) = three_nodes("cluster_loss", NATS, &[]).await;
    let worker = token("w", "acme", "worker");
    let job = create_job(&a, &worker, json!({"title": "burst"})).await;
    let topic = format!("job:{job}");
    let start = log_positions(&a, &worker, &topic, 0).await.last().copied().unwrap();
    let staff = token("sam", "acme", "staff");
    // One subscriber per transport on C: native WebSocket, SSE, long-poll.
    let mut on_c = c.ws(&staff).await;
    on_c.sub(&topic, None).await;
    let mut sse = Sse::open(&c, &format!("topic={topic}&token={staff}"), Some(start)).await;
    let mut poll = LongPoll { since: start, seen: Vec::new() };

    // A burst written through A while C serves the subscriber; C dies in the middle.
    let writer = {
        let (url, worker) = (a.url(&format!("/v1/jobs/{job}/progress")), worker.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 1..=100u64 {
                let r = http.post(&url).bearer_auth(&worker).json(&json!({"succeeded": i})).send().await.unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut seen = on_c.events(30, Duration::from_secs(10)).await;
    poll.poll(&c, &staff, &topic).await.expect("node C answers while it lives");
    c.kill9();
    // Whatever C had sent before it died, then the rest from B, resumed by position.
    while let Some(f) = on_c.next(Duration::from_millis(200)).await {
        if f["op"] == "event" {
            seen.push(f);
        }
    }
    let last = seen.last().map(|e| e["position"].as_u64().unwrap()).unwrap_or(0);
    writer.await.unwrap();
    settle(&a).await;
    let mut on_b = b.ws(&staff).await;
    on_b.sub(&format!("job:{job}"), Some(last)).await;
    let rest = on_b.events(100 - seen.len(), Duration::from_secs(10)).await;
    seen.extend(rest);
    let counts: Vec<u64> = seen.iter().map(|e| e["data"]["succeeded"].as_u64().unwrap_or(0)).collect();
    let every: Vec<u64> = (1..=100).collect();
    assert_eq!(counts, every, "WebSocket: every report once, in order, across the node's death");

    // SSE: what C sent before it died, then B from the last id seen.
    let mut streamed = Vec::new();
    while let Some(m) = sse.next(Duration::from_secs(2)).await {
        streamed.push(m);
    }
    let last_id = streamed.last().and_then(|m| m.id).unwrap_or(start);
    let mut sse = Sse::open(&b, &format!("topic={topic}&token={staff}"), Some(last_id)).await;
    while streamed.len() < 100 {
        streamed.push(sse.next(Duration::from_secs(10)).await.expect("B streams the rest"));
    }
    let counts: Vec<u64> = streamed.iter().map(|m| m.data["data"]["succeeded"].as_u64().unwrap_or(0)).collect();
    assert_eq!(counts, every, "SSE: every report once, in order, across the node's death");

    // Long-poll: C is gone, so the next poll fails and the client polls B from where it was.
    assert!(poll.poll(&c, &staff, &topic).await.is_none(), "node C is dead");
    while poll.seen.len() < 100 {
        poll.poll(&b, &staff, &topic).await.expect("B answers");
    }
    assert_eq!(poll.seen, every, "long-poll: every report once, in order, across the node's death");
}

/// A long-poll client of `GET /v1/events`, moving `since` on with each page.
struct LongPoll {
    since: u64,
    seen: Vec<u64>,
}

impl LongPoll {
    /// One poll of `node`; `None` when the node does not answer.
    async fn poll(&mut self, node: &Server, tok: &str, topic: &str) -> Option<()> {
        let url = node.url(&format!("/v1/events?topic={topic}&since={}&wait=2", self.since));
        let resp = node.http.get(url).bearer_auth(tok).timeout(Duration::from_secs(5)).send().await.ok()?;
        assert_eq!(resp.status(), 200);
        let page: Value = resp.json().await.ok()?;
        for e in page["events"].as_array().expect("events") {
            self.seen.push(e["data"]["succeeded"].as_u64().unwrap_or(0));
        }
        self.since = page["next"].as_u64().expect("next");
        Some(())
    }
}
