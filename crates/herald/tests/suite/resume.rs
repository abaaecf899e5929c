//! Resume with `since`: a client that drops, or whose server is killed, gets
//! every event it missed exactly once, in order, then live ones.

use super::live::{log_positions, next_json, produce, raw_sub, raw_ws, running_job, RawWs};
use crate::harness::{token, Server};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// What one connection of a resuming client saw.
struct Seen {
    /// (position, current_item) of every event, in arrival order.
    events: Vec<(u64, String)>,
    /// Whether the `done` marker arrived.
    done: bool,
}

/// Reads events until `done` is seen, the connection ends, or `limit` events arrived.
async fn read_until(ws: &mut RawWs, seen: &mut Seen, limit: usize) {
    while seen.events.len() < limit {
        let Some(v) = next_json(ws, Duration::from_secs(60)).await else { return };
        if v["op"] != "event" {
            assert!(matches!(v["op"].as_str(), Some("ack") | Some("goodbye")), "unexpected {v}");
            continue;
        }
        let pos = v["position"].as_u64().unwrap();
        let item = v["data"]["current_item"].as_str().unwrap_or("").to_string();
        if let Some((last, _)) = seen.events.last() {
            assert!(pos > *last, "position {pos} after {last}: duplicate or out of order");
        }
        let done = item == "done";
        seen.events.push((pos, item));
        if done {
            seen.done = true;
            return;
        }
    }
}

async fn report_done(base: &str, worker: &str, job: &str) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .post(format!("{base}/v1/jobs/{job}/progress"))
            .bearer_auth(worker)
            .json(&serde_json::json!({ "current_item": "done" }))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status().is_success()) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "done marker refused: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_burst_resumes_with_since_and_misses_nothing() {
    let s = Server::start("cutoff", &["--durability", "normal"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");

    let mut ws = raw_ws(&s, &alice, false).await;
    let ack = raw_sub(&mut ws, &topic, None).await;
    let start = ack["position"].as_u64().unwrap();
    let producer = tokio::spawn(produce(s.url(""), worker.clone(), job.clone(), 3000, 4, "burst"));

    let mut seen = Seen { events: Vec::new(), done: false };
    read_until(&mut ws, &mut seen, 200).await;
    assert_eq!(seen.events.len(), 200);
    // Cut off: the socket is dropped without a close handshake.
    drop(ws);
    let cut_at = seen.events.last().unwrap().0;
    assert!(!producer.is_finished(), "the burst is still going when the client comes back");

    let mut ws = raw_ws(&s, &alice, true).await;
    let ack = raw_sub(&mut ws, &topic, Some(cut_at)).await;
    assert!(ack["position"].as_u64().unwrap() >= cut_at);
    let acked = producer.await.unwrap();
    assert_eq!(acked.len(), 3000);
    report_done(&s.url(""), &worker, &job).await;
    read_until(&mut ws, &mut seen, usize::MAX).await;
    assert!(seen.done, "the done marker arrived");

    let log = log_positions(&s, &worker, &topic, start).await;
    let got: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
    assert_eq!(got, log, "exactly the log after the first subscription: no gap, no duplicate");
    let items: HashSet<&str> = seen.events.iter().map(|e| e.1.as_str()).collect();
    assert!(acked.iter().all(|i| items.contains(i.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_then_restart_loses_no_acknowledged_event() {
    const CLIENTS: usize = 5;
    let mut s = Server::start("kill9", &[]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");
    let ack_position = {
        let mut ws = raw_ws(&s, &alice, false).await;
        raw_sub(&mut ws, &topic, None).await["position"].as_u64().unwrap()
    };

    // Each client follows the job, reconnecting with `since` whenever its connection ends.
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (url, alice, topic) = (s.ws_url(), alice.clone(), topic.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Seen { events: Vec::new(), done: false };
            let mut connections = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !seen.done {
                assert!(std::time::Instant::now() < deadline, "client {c} never saw done");
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("{url}?token={alice}")).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Some(welcome) = next_json(&mut ws, Duration::from_secs(30)).await else { continue };
                assert_eq!(welcome["op"], "welcome", "{welcome}");
                connections += 1;
                let since = seen.events.last().map(|e| e.0).unwrap_or(ack_position);
                // Every tick: this compares the deliveries with the log one by one.
                let sub =
                    serde_json::json!({ "op": "sub", "topic": topic, "since": since, "id": "sub", "conflate": false });
                use futures_util::SinkExt;
                if ws.send(tokio_tungstenite::tungstenite::Message::text(sub.to_string())).await.is_err() {
                    continue;
                }
                read_until(&mut ws, &mut seen, usize::MAX).await;
            }
            (seen, connections)
        }));
    }

    let producer = tokio::spawn(produce(s.url(""), worker.clone(), job.clone(), 1500, 4, "k"));
    // Kill the server once the clients have seen part of the burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = s.get(&worker, &format!("/v1/jobs/{job}")).await;
        if v["version"].as_u64().unwrap_or(0) > 300 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the burst did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.restart().await;
    let acked = producer.await.unwrap();
    assert!(acked.len() > 300 && acked.len() < 1500, "some reports failed while the server was down: {}", acked.len());
    report_done(&s.url(""), &worker, &job).await;

    let log = log_positions(&s, &worker, &topic, ack_position).await;
    for (c, client) in clients.into_iter().enumerate() {
        let (seen, connections) = client.await.unwrap();
        assert!(connections >= 2, "client {c} reconnected after the kill");
        let got: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
        assert_eq!(got, log, "client {c}: exactly the durable log, in order, once");
        let items: HashSet<&str> = seen.events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(items.len(), seen.events.len(), "client {c}: no report twice");
        let missing: Vec<&String> = acked.iter().filter(|i| !items.contains(i.as_str())).collect();
        assert!(missing.is_empty(), "client {c} missed acknowledged reports {missing:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_without_since_gets_only_live_events_and_since_replays_in_pages() {
    let s = Server::start("replay", &["--durability", "normal"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");
    // More than one replay page (1000 events).
    let acked = produce(s.url(""), worker.clone(), job.clone(), 2500, 8, "p").await;
    assert_eq!(acked.len(), 2500);
    // Live from here: after every acknowledged report is in the log.
    crate::harness::settle(&s).await;

    let mut live = raw_ws(&s, &alice, false).await;
    raw_sub(&mut live, &topic, None).await;
    let mut replay = raw_ws(&s, &alice, false).await;
    raw_sub(&mut replay, &topic, Some(0)).await;
    report_done(&s.url(""), &worker, &job).await;

    let mut seen = Seen { events: Vec::new(), done: false };
    read_until(&mut live, &mut seen, usize::MAX).await;
    assert_eq!(seen.events.len(), 1, "only the live marker: {:?}", &seen.events[..seen.events.len().min(3)]);
    let mut seen = Seen { events: Vec::new(), done: false };
    read_until(&mut replay, &mut seen, usize::MAX).await;
    let got: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
    assert_eq!(got, log_positions(&s, &worker, &topic, 0).await);
    assert_eq!(got.len(), 2502, "created, 2500 reports, done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_older_than_retention_gets_an_explicit_resync_with_a_snapshot() {
    let s = Server::start("resync", &["--retention", "1s"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), serde_json::json!({ "stage": "old" })).await;
    assert_eq!(st, 200);
    // The log is pruned once a minute; wait until position 1 is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let (st, v) = s.get(&worker, &format!("/v1/events?topic={topic}&since=0")).await;
        assert_eq!(st, 200, "{v}");
        if v["resync"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the log was never pruned");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut ws = raw_ws(&s, &alice, false).await;
    raw_sub(&mut ws, &topic, Some(0)).await;
    let r = next_json(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(r["op"], "resync", "{r}");
    assert_eq!(r["topic"], topic.as_str());
    assert_eq!(r["snapshot"]["job"]["id"], job.as_str(), "{r}");
    assert_eq!(r["snapshot"]["job"]["stage"], "old", "{r}");
    let head = r["position"].as_u64().unwrap();
    // Then live events continue after the snapshot's position.
    report_done(&s.url(""), &worker, &job).await;
    let mut seen = Seen { events: Vec::new(), done: false };
    read_until(&mut ws, &mut seen, usize::MAX).await;
    assert_eq!(seen.events.len(), 1);
    assert!(seen.events[0].0 > head);
    // Resumes behind retention are counted as such.
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let resyncs: f64 = metrics
        .lines()
        .find(|l| l.starts_with("herald_resumes_total{result=\"resync\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resync count in /metrics:\n{metrics}"));
    assert!(resyncs >= 2.0, "the long-poll's and the WebSocket's resync: {resyncs}");
    // And in the tenant's inspector, beside the hits: a resume within retention.
    let (st, v) = s.get(&worker, &format!("/v1/events?topic={topic}&since={head}")).await;
    assert_eq!((st, v["resync"].as_bool()), (200, Some(false)), "{v}");
    let (st, v) = s.get(&token("sam", "acme", "staff"), "/v1/admin/inspect").await;
    assert_eq!(st, 200, "{v}");
    let counts = &v["totals"]["delivery"];
    assert!(counts["resumes_resynced"].as_u64().unwrap() >= 2, "{counts}");
    assert!(counts["resumes_replayed"].as_u64().unwrap() >= 1, "{counts}");
    let (_, theirs) = s.get(&token("root", "other", "admin"), "/v1/admin/inspect").await;
    assert_eq!(
        theirs["totals"]["delivery"],
        json!({"resumes_replayed": 0, "resumes_resynced": 0, "slow_consumers": 0})
    );
}
