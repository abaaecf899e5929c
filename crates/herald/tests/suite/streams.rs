//! Job output streams: chunks appended durably and cheaply, read from any
//! offset then live over the native WebSocket, SSE and long-poll, resumed at
//! an offset with nothing missing or twice — across a `kill -9`.

use super::sse::Sse;
use crate::harness::{create_job, token, Server, Ws};
use serde_json::json;
use std::time::Duration;

const CHUNKS: usize = 100_000;
const PER_APPEND: usize = 500;

/// Appends chunks `from..to` (each the JSON string `c<i>`) in appends of `PER_APPEND`.
async fn append_range(s: &Server, worker: &str, job: &str, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + PER_APPEND).min(to);
        let chunks: Vec<String> = (i..end).map(|n| format!("c{n}")).collect();
        let (st, v) = s.post(worker, &format!("/v1/jobs/{job}/streams/log"), json!({ "chunks": chunks })).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["first_offset"], i, "offsets count chunks: {v}");
        assert_eq!(v["next_offset"], end);
        i = end;
    }
}

/// Reads `chunks` frames of a stream subscription into `got` until `want`
/// chunks are held (or `quiet` passes without a frame).
async fn read_ws(ws: &mut Ws, got: &mut Vec<String>, want: usize, quiet: Duration) {
    while got.len() < want {
        let Some(f) = ws.next(quiet).await else { return };
        if f["op"] != "chunks" {
            assert_ne!(f["op"], "error", "{f}");
            continue;
        }
        assert_eq!(f["offset"], got.len(), "a frame starts where the last ended");
        for c in f["chunks"].as_array().unwrap() {
            got.push(c.as_str().unwrap().to_string());
        }
    }
}

fn assert_exact(who: &str, got: &[String], n: usize) {
    assert_eq!(got.len(), n, "{who}: every chunk, once");
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c, &format!("c{i}"), "{who}: chunk {i} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_cut_off_mid_way_resume_at_their_offset_across_a_restart_with_nothing_missing_or_twice() {
    let mut s = Server::start("streams-resume", &[]).await;
    let worker = token("w", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    create_job(&s, &worker, json!({ "id": "gen", "owner": "alice", "status": "running" })).await;

    // A live reader from the start, a long-poll reader, and 40% of the stream.
    let mut ws = Ws::connect(&s.ws_url(), &alice).await;
    let ack = ws.request(json!({ "op": "sub", "topic": "stream:gen:log", "since": 0 })).await;
    assert_eq!((ack["op"].as_str(), ack["offset"].as_u64()), (Some("ack"), Some(0)), "{ack}");
    let first = CHUNKS * 2 / 5;
    let writer = {
        let s2 = (s.http.clone(), s.url(""), worker.clone());
        tokio::spawn(async move {
            let (http, base, worker) = s2;
            let mut i = 0;
            while i < first {
                let chunks: Vec<String> = (i..i + PER_APPEND).map(|n| format!("c{n}")).collect();
                let r = http
                    .post(format!("{base}/v1/jobs/gen/streams/log"))
                    .bearer_auth(&worker)
                    .json(&json!({ "chunks": chunks }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                i += PER_APPEND;
            }
        })
    };
    let mut live = Vec::new();
    // Cut off mid-way: the reader takes about a quarter, then its socket drops.
    read_ws(&mut ws, &mut live, CHUNKS / 4, Duration::from_secs(10)).await;
    drop(ws);
    writer.await.unwrap();
    let mut polled = Vec::new();
    while polled.len() < first / 2 {
        let (st, v) = s.get(&alice, &format!("/v1/jobs/gen/streams/log?offset={}&limit=7000", polled.len())).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["offset"], polled.len());
        polled.extend(v["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()));
    }

    // The server dies without warning; what was acknowledged is kept.
    s.kill9();
    s.restart().await;
    let (st, v) = s.get(&alice, "/v1/jobs/gen/streams").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["streams"][0]["next_offset"], first, "{v}");

    // Both come back at their offsets while the rest is appended.
    let mut ws = Ws::connect(&s.ws_url(), &alice).await;
    let ack = ws.request(json!({ "op": "sub", "topic": "stream:gen:log", "since": live.len() })).await;
    assert_eq!(ack["offset"], first, "{ack}");
    let mut sse = Sse::open_path(&s, &format!("/v1/jobs/gen/streams/log/sse?offset=0&token={alice}"), None).await;
    append_range(&s, &worker, "gen", first, CHUNKS).await;
    read_ws(&mut ws, &mut live, CHUNKS, Duration::from_secs(10)).await;
    assert_exact("websocket", &live, CHUNKS);
    loop {
        let (st, v) =
            s.get(&alice, &format!("/v1/jobs/gen/streams/log?offset={}&limit=10000&wait=1", polled.len())).await;
        assert_eq!(st, 200, "{v}");
        let chunks = v["chunks"].as_array().unwrap();
        if chunks.is_empty() {
            break;
        }
        polled.extend(chunks.iter().map(|c| c.as_str().unwrap().to_string()));
    }
    assert_exact("long-poll", &polled, CHUNKS);
    let mut streamed = Vec::new();
    let mut last_id = 0;
    while streamed.len() < CHUNKS {
        let m = sse.next(Duration::from_secs(10)).await.expect("SSE chunks");
        assert_eq!(m.event, "chunks", "{:?}", m.data);
        assert_eq!(m.data["offset"], streamed.len());
        streamed.extend(m.data["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()));
        last_id = m.id.expect("an id per message");
        assert_eq!(last_id as usize, streamed.len(), "the id is the offset after the message");
    }
    assert_exact("sse", &streamed, CHUNKS);
    // EventSource's resume: Last-Event-ID picks up after the last message.
    let mut again = Sse::open_path(&s, &format!("/v1/jobs/gen/streams/log/sse?token={alice}"), Some(last_id - 3)).await;
    let m = again.next(Duration::from_secs(10)).await.expect("resumed");
    assert_eq!(m.data["offset"], last_id - 3);
    assert_eq!(m.data["chunks"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_appends_and_reads_are_refused_and_write_nothing() {
    let s = Server::start("streams-refusals", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let bob = token("bob", "acme", "customer");
    create_job(&s, &worker, json!({ "id": "j", "owner": "alice" })).await;
    let big = "x".repeat(64 * 1024);
    for (tok, path, body, st, code) in [
        (&bob, "/v1/jobs/j/streams/log", json!({ "chunks": ["a"] }), 403, "forbidden"),
        (&staff, "/v1/jobs/j/streams/log", json!({ "chunks": ["a"] }), 403, "forbidden"),
        (&worker, "/v1/jobs/nope/streams/log", json!({ "chunks": ["a"] }), 404, "not_found"),
        (&worker, "/v1/jobs/j/streams/bad:name", json!({ "chunks": ["a"] }), 422, "invalid_field"),
        (&worker, "/v1/jobs/j/streams/log", json!({ "chunks": [] }), 422, "invalid_field"),
        (&worker, "/v1/jobs/j/streams/log", json!({ "chunks": [big] }), 422, "invalid_field"),
        (&worker, "/v1/jobs/j/streams/log", json!({ "chunk": ["a"] }), 422, "invalid_field"),
        (&worker, "/v1/jobs/j/streams/log", json!({ "chunks": "a" }), 422, "invalid_field"),
    ] {
        let (got, v) = s.post(tok, path, body).await;
        assert_eq!((got, v["error"]["code"].as_str()), (st, Some(code)), "{path}: {v}");
    }
    let many: Vec<u32> = (0..10_001).collect();
    let (got, v) = s.post(&worker, "/v1/jobs/j/streams/log", json!({ "chunks": many })).await;
    assert_eq!((got, v["error"]["code"].as_str()), (422, Some("invalid_field")), "{v}");
    let r = s
        .http
        .post(s.url("/v1/jobs/j/streams/log"))
        .bearer_auth(&worker)
        .body("{\"chunks\":[")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .post(s.url("/v1/jobs/j/streams/log"))
        .bearer_auth(&worker)
        .body("a")
        .header("content-type", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Nothing was written by any of them.
    let (st, v) = s.get(&worker, "/v1/jobs/j/streams").await;
    assert_eq!((st, v["streams"].as_array().map(Vec::len)), (200, Some(0)), "{v}");

    // Lines as text/plain: one chunk each.
    let r = s
        .http
        .post(s.url("/v1/jobs/j/streams/log"))
        .bearer_auth(&worker)
        .body("one\r\ntwo\nthree\n")
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = s.get(&worker, "/v1/jobs/j/streams/log").await;
    assert_eq!(v["chunks"], json!(["one", "two", "three"]), "{v}");
    assert_eq!((v["end"].as_u64(), v["truncated"].as_bool()), (Some(3), Some(false)));

    // Reading: a customer who does not own the job gets 404, as for the job.
    for (tok, path, st) in [
        (&bob, "/v1/jobs/j/streams/log", 404),
        (&bob, "/v1/jobs/j/streams", 404),
        (&worker, "/v1/jobs/j/streams/log?limit=0", 400),
        (&worker, "/v1/jobs/j/streams/log?wait=61", 400),
        (&worker, "/v1/jobs/j/streams/log?colour=red", 400),
        (&worker, "/v1/jobs/j/streams/never", 200),
    ] {
        assert_eq!(s.get(tok, path).await.0, st, "{path}");
    }
    let mut ws = Ws::connect(&s.ws_url(), &bob).await;
    let r = ws.request(json!({ "op": "sub", "topic": "stream:j:log", "since": 0 })).await;
    assert_eq!(r["code"], "not_found", "{r}");
    // Topic streams and long-poll over the log do not carry job output streams.
    let (st, v) = s.get(&worker, "/v1/events?topic=stream:j:log").await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_topic")), "{v}");
    let (st, _) = s.get(&worker, "/v1/sse?topic=stream:j:log").await;
    assert_eq!(st, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_size_bound_drops_its_oldest_chunks_and_says_so() {
    let s = Server::start("streams-bound", &["--stream-max-bytes", "2KiB"]).await;
    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({ "id": "j" })).await;
    for n in 0..20 {
        let chunks: Vec<String> = (0..10).map(|i| format!("{n:02}-{i}-{}", "x".repeat(20))).collect();
        assert_eq!(s.post(&worker, "/v1/jobs/j/streams/log", json!({ "chunks": chunks })).await.0, 200);
    }
    let (_, info) = s.get(&worker, "/v1/jobs/j/streams").await;
    let info = &info["streams"][0];
    assert!(info["bytes"].as_u64().unwrap() <= 2048, "{info}");
    let floor = info["floor"].as_u64().unwrap();
    assert!(floor > 0 && floor % 10 == 0, "whole appends go: {info}");
    assert_eq!(info["next_offset"], 200);
    let (_, v) = s.get(&worker, "/v1/jobs/j/streams/log?offset=0").await;
    assert_eq!((v["offset"].as_u64(), v["truncated"].as_bool()), (Some(floor), Some(true)), "{v}");
    assert_eq!(v["chunks"].as_array().unwrap().len() as u64, 200 - floor);

    let mut ws = Ws::connect(&s.ws_url(), &worker).await;
    ws.request(json!({ "op": "sub", "topic": "stream:j:log", "since": 0 })).await;
    let gone = ws.expect_op("stream_truncated").await;
    assert_eq!((gone["from"].as_u64(), gone["to"].as_u64()), (Some(0), Some(floor)), "{gone}");
    let c = ws.expect_op("chunks").await;
    assert_eq!(c["offset"], floor);
}
