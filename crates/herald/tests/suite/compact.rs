//! Compact frames (`herald.v1c`): the same content as the JSON frames in
//! positional arrays. Two connections hold the same subscriptions, one in
//! each encoding; every high-volume frame of the compact one, read back by
//! its position, must say what the JSON one says — in fewer bytes.

use crate::harness::{create_job, token, Server, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn compact(s: &Server, tok: &str) -> Socket {
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", format!("herald.v1c, bearer.{tok}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("connect");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "herald.v1c", "the server selects compact frames");
    ws
}

/// Text frames until `quiet` passes without one.
async fn drain(ws: &mut Socket, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, ws.next()).await {
        if let Message::Text(t) = m {
            out.push(t.to_string());
        }
    }
    out
}

/// A compact frame spelt out as the JSON frame says it (times as epoch ms).
fn expand(a: &[Value]) -> Value {
    match a[0].as_u64() {
        Some(0) => {
            json!({"op": "event", "topic": a[1], "position": a[2], "type": a[3], "data": a[4], "time": a[5]})
        }
        Some(1) => json!({"op": "broadcast", "topic": a[1], "event": a[2], "data": a[3], "from": a[4]}),
        Some(2) => json!({"op": "presence_diff", "topic": a[1], "joins": a[2], "leaves": a[3]}),
        Some(3) => json!({"op": "chunks", "topic": a[1], "offset": a[2], "chunks": a[3]}),
        Some(4) => {
            let mut v = json!({"op": "list_change", "list": a[1], "change": a[2], "position": a[3], "id": a[4]});
            if let Some(job) = a.get(5) {
                v["job"] = job.clone();
            }
            v
        }
        _ => panic!("unknown compact frame {a:?}"),
    }
}

/// The JSON frame with its time as epoch ms, to compare with an expanded compact one.
fn normalized(mut v: Value) -> Value {
    if let Some(t) = v.get("time").and_then(Value::as_str) {
        v["time"] = json!(herald_model::time::parse_rfc3339(t));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_frames_say_what_json_frames_say_in_fewer_bytes() {
    let s = Server::start("compact", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({ "id": "j", "status": "running" })).await;
    let mut plain = Ws::connect(&s.ws_url(), &staff).await;
    let mut small = compact(&s, &staff).await;
    let welcome: Value = serde_json::from_str(&drain(&mut small, Duration::from_millis(300)).await[0]).unwrap();
    assert_eq!((welcome["op"].as_str(), welcome["encoding"].as_str()), (Some("welcome"), Some("compact")));

    let subs = [
        json!({"op": "sub", "topic": "job:j", "id": 1}),
        json!({"op": "sub", "topic": "stream:j:log", "since": 0, "id": 2}),
        json!({"op": "list", "list": "running", "query": {"status": "running"}, "id": 3}),
        json!({"op": "presence", "topic": "room:r", "meta": {"at": "j"}, "id": 4}),
    ];
    for f in &subs {
        plain.send(f.clone()).await;
        small.send(Message::text(f.to_string())).await.unwrap();
    }
    // Control frames (acks, snapshots, presence state) stay objects in both.
    let replies = drain(&mut small, Duration::from_millis(500)).await;
    for op in ["ack", "list_snapshot", "presence_state"] {
        assert!(
            replies.iter().any(|t| t.starts_with('{') && t.contains(&format!(r#""op":"{op}""#))),
            "{op}: {replies:?}"
        );
    }
    assert_eq!(replies.iter().filter(|t| t.contains(r#""op":"ack""#)).count(), 4, "{replies:?}");
    while plain.next(Duration::from_millis(300)).await.is_some() {}

    // One of each: an event, a broadcast, a presence diff, chunks, a list change.
    let mut other = Ws::connect(&s.ws_url(), &token("ann", "acme", "staff")).await;
    other.send(json!({"op": "pub", "topic": "room:r", "event": "typing", "data": {"field": "title", "n": 1}})).await;
    other.send(json!({"op": "presence", "topic": "room:r", "meta": {"hi": true}})).await;
    assert_eq!(s.post(&worker, "/v1/jobs/j/streams/log", json!({"chunks": ["one", {"token": "two"}]})).await.0, 200);
    assert_eq!(s.post(&worker, "/v1/jobs/j/progress", json!({"status": "completed"})).await.0, 200);

    let got = drain(&mut small, Duration::from_millis(800)).await;
    let mut want = Vec::new();
    while let Some(v) = plain.next(Duration::from_millis(300)).await {
        if ["event", "broadcast", "presence_diff", "chunks", "list_change"].contains(&v["op"].as_str().unwrap_or("")) {
            want.push(v);
        }
    }
    let arrays: Vec<&String> = got.iter().filter(|t| t.starts_with('[')).collect();
    assert_eq!(arrays.len(), want.len(), "compact {got:?}\njson {want:?}");
    let mut ops = Vec::new();
    for (text, json_frame) in arrays.iter().zip(&want) {
        let a: Vec<Value> = serde_json::from_str(text).unwrap();
        assert_eq!(expand(&a), normalized(json_frame.clone()), "{text}");
        ops.push(json_frame["op"].as_str().unwrap().to_string());
        assert!(text.len() < json_frame.to_string().len(), "compact is smaller: {text}");
    }
    ops.sort();
    ops.dedup();
    assert_eq!(ops, ["broadcast", "chunks", "event", "list_change", "presence_diff"]);
    let broadcast = arrays.iter().find(|t| t.starts_with("[1,")).unwrap();
    assert_eq!(broadcast.as_str(), r#"[1,"room:r","typing",{"field":"title","n":1},"ann"]"#);
}
