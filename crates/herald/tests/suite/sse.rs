//! Server-sent events at `/v1/sse`: positions as ids, resume by
//! `Last-Event-ID`, several topics in one stream without duplicates.

use super::live::{log_positions, produce, running_job};
use crate::harness::{token, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// One SSE message.
#[derive(Debug)]
pub(super) struct Msg {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// A streaming SSE response, read chunk by chunk.
pub(super) struct Sse {
    resp: reqwest::Response,
    buf: String,
    /// Comments seen (keep-alives).
    comments: usize,
}

impl Sse {
    pub(super) async fn open(s: &Server, query: &str, last_event_id: Option<u64>) -> Sse {
        Self::open_path(s, &format!("/v1/sse?{query}"), last_event_id).await
    }

    /// A stream at any SSE path (`/v1/sse/jobs?…`).
    pub(super) async fn open_path(s: &Server, path: &str, last_event_id: Option<u64>) -> Sse {
        let query = path;
        let mut req = s.http.get(s.url(path)).timeout(Duration::from_secs(600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse { resp, buf: String::new(), comments: 0 }
    }

    /// The next message (not a comment), or None on end of stream or timeout.
    pub(super) async fn next(&mut self, timeout: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                let mut comment = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if comment {
                    self.comments += 1;
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Msg { id, event, data: serde_json::from_str(&data).expect("data is JSON") });
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?.ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until one whose `current_item` is `done`.
    async fn until_done(&mut self, out: &mut Vec<Msg>) {
        loop {
            let m = self.next(Duration::from_secs(60)).await.expect("stream goes on until done");
            let done = m.data["data"]["current_item"] == "done";
            out.push(m);
            if done {
                return;
            }
        }
    }
}

fn check_ids(msgs: &[Msg]) -> Vec<u64> {
    let ids: Vec<u64> = msgs.iter().map(|m| m.id.expect("events carry their position as id")).collect();
    for m in msgs {
        assert_eq!(m.id, m.data["position"].as_u64(), "{m:?}");
        assert!(m.event.starts_with("job."), "{m:?}");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_positions_and_resumes_by_last_event_id() {
    let s = Server::start("sse", &["--durability", "normal"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let topic = format!("job:{job}");
    let start = log_positions(&s, &worker, &topic, 0).await.last().copied().unwrap();

    // Every tick (`conflate=false`): this compares the stream with the log one by one.
    let mut sse = Sse::open(&s, &format!("topic={topic}&token={alice}&conflate=false"), None).await;
    // The stream is live once the first event of a trickle arrives.
    let mut first = Vec::new();
    for i in 0.. {
        let (st, _) =
            s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": format!("warm-{i}") })).await;
        assert_eq!(st, 200);
        if let Some(m) = sse.next(Duration::from_millis(300)).await {
            first.push(m);
            break;
        }
        assert!(i < 50, "the SSE stream never delivered");
    }
    let producer = tokio::spawn(produce(s.url(""), worker.clone(), job.clone(), 1500, 4, "sse"));
    while first.len() < 100 {
        first.push(sse.next(Duration::from_secs(60)).await.expect("live events"));
    }
    drop(sse);
    let last = first.last().unwrap().id.unwrap();

    let mut sse = Sse::open(&s, &format!("topic={topic}&token={alice}&conflate=false"), Some(last)).await;
    let acked = producer.await.unwrap();
    assert_eq!(acked.len(), 1500);
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": "done" })).await;
    assert_eq!(st, 200);
    let mut rest = Vec::new();
    sse.until_done(&mut rest).await;

    let got: Vec<u64> = check_ids(&first).into_iter().chain(check_ids(&rest)).collect();
    let log = log_positions(&s, &worker, &topic, start).await;
    // Events before the stream was live are not expected; from the first one on, all of them, once.
    let from = log.iter().position(|&p| p == got[0]).expect("first id is in the log");
    assert_eq!(got, log[from..], "no gap and no duplicate across the reconnect");
    assert!(rest.iter().all(|m| m.data["topic"] == topic.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_of_several_topics_delivers_an_event_once_and_refuses_foreign_topics() {
    let s = Server::start("sse-multi", &[]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let since = log_positions(&s, &worker, "jobs", 0).await.last().copied().unwrap();
    // Created before the streams open: staff get it by replay from `since`.
    let other = running_job(&s, &worker, "alice").await;

    // Customers: their own job and owner topic, with the token in the query.
    let q = format!("topic=job:{job},jobs:owner:alice&token={alice}");
    let mut sse = Sse::open(&s, &q, None).await;
    // Staff by bearer header with resume from `since`: `jobs` and the job together.
    let resp = s
        .http
        .get(s.url(&format!("/v1/sse?topic=jobs,job:{job}&since={since}")))
        .bearer_auth(token("sam", "acme", "staff"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut staff = Sse { resp, buf: String::new(), comments: 0 };

    // Give the live stream time to subscribe: trickle until it delivers.
    let mut got = Vec::new();
    for i in 0.. {
        let (st, _) =
            s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": format!("w{i}") })).await;
        assert_eq!(st, 200);
        if let Some(m) = sse.next(Duration::from_millis(300)).await {
            got.push(m);
            break;
        }
        assert!(i < 50, "the SSE stream never delivered");
    }
    for j in [&job, &other, &job] {
        let (st, _) = s.post(&worker, &format!("/v1/jobs/{j}/progress"), json!({ "stage": "multi" })).await;
        assert_eq!(st, 200);
    }
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": "done" })).await;
    assert_eq!(st, 200);
    sse.until_done(&mut got).await;
    let ids = check_ids(&got);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "each event once, in order: {ids:?}");
    // The other job is on jobs:owner:alice only; both jobs' events arrive, each once.
    let on_other = got.iter().filter(|m| m.data["data"]["id"] == other.as_str()).count();
    assert_eq!(on_other, 1);
    assert_eq!(got.len(), 1 + 3 + 1);
    let log = log_positions(&s, &worker, &format!("job:{job},jobs:owner:alice"), ids[0] - 1).await;
    assert_eq!(ids, log);

    let mut all = Vec::new();
    staff.until_done(&mut all).await;
    let ids = check_ids(&all);
    assert_eq!(ids, log_positions(&s, &worker, "jobs", since).await, "staff replayed from since, then live, once each");
    assert_eq!(all[0].data["data"]["id"], other.as_str(), "the replayed creation of the other job");
    for m in &all {
        // Replayed or live, an event is shown under a topic of this stream.
        assert!(m.data["topic"] == "jobs" || m.data["topic"] == format!("job:{job}").as_str(), "{m:?}");
    }

    // Refusals are plain HTTP errors.
    for (q, status) in [
        (format!("topic=jobs&token={alice}"), 403),
        (format!("topic=jobs:owner:bob&token={alice}"), 403),
        ("topic=jobs".to_string(), 401),
        (format!("topic=job:{job}&token=garbage"), 401),
        (format!("topic=&token={alice}"), 400),
        (format!("topic=bogus&token={alice}"), 400),
    ] {
        let r = s.http.get(s.url(&format!("/v1/sse?{q}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{q}");
    }
    let r = s
        .http
        .get(s.url(&format!("/v1/sse?topic=job:{job}&token={alice}")))
        .header("Last-Event-ID", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Keep-alive comments flow while nothing happens (every 15 s by default).
    assert!(sse.next(Duration::from_secs(20)).await.is_none());
    assert!(sse.comments >= 1, "a keep-alive comment arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_let_go() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start("sse-slow", &["--outbox-capacity", "8"]).await;
    let staff = token("sam", "acme", "staff");
    let count = |v: &Value| v["tenant"]["connections"].as_u64().unwrap();
    // A raw HTTP client with a small receive buffer that never reads the body.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    let mut tcp = sock.connect(format!("127.0.0.1:{}", s.port).parse().unwrap()).await.unwrap();
    let req = format!("GET /v1/sse?topic=room:big&token={staff} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = s.get(&staff, "/v1/stats").await;
        if count(&v) == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stream never opened: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pad = "x".repeat(100 * 1024);
    for i in 0..200 {
        let (st, v) = s
            .post(
                &staff,
                "/v1/broadcast",
                json!({ "topic": "room:big", "event": format!("b{i}"), "payload": { "pad": pad } }),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        if v["delivered"] == 0 {
            break;
        }
    }
    // The stream ends (its goodbye cannot get through), freeing its place and subscriptions.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.get(&staff, "/v1/stats").await;
        if count(&v) == 0 {
            assert_eq!(v["tenant"]["subscriptions"], 0, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a stuck SSE client is held forever: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tcp);
}
