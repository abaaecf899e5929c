//! What one connection may take and claim, on every WebSocket protocol: a
//! bound on the hub topics (and Phoenix bindings) one socket holds, all of it
//! given back when the socket closes; presence under the verified identity
//! only; rooms of a job under that job's read rules; and the message limit
//! applied by the codec before anything is buffered; a page of the log bounded
//! in bytes (issue 10: #1, #3, #7, #8).

use crate::harness::{create_job, token, Server, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Phoenix socket speaking serializer 1.0.0 (JSON objects).
struct Phx {
    inner: Stream,
    next_ref: u64,
}

impl Phx {
    async fn connect(s: &Server, apikey: &str) -> Phx {
        let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={apikey}&vsn=1.0.0", s.port);
        let (inner, _) = tokio_tungstenite::connect_async(url).await.expect("phoenix connect");
        Phx { inner, next_ref: 0 }
    }

    /// Sends a message and waits for its `phx_reply`.
    async fn call(&mut self, topic: &str, event: &str, payload: Value) -> Value {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let msg = json!({ "join_ref": r, "ref": r, "topic": topic, "event": event, "payload": payload });
        self.inner.send(Message::text(msg.to_string())).await.expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, self.inner.next())
                .await
                .expect("a reply in time")
                .expect("socket open")
                .expect("frame");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if v["event"] == "phx_reply" && v["ref"] == r.as_str() {
                return v["payload"].clone();
            }
        }
    }
}

fn in_list(prefix: &str, n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    format!("id=in.({})", ids.join(","))
}

async fn tenant_subscriptions(s: &Server, tenant: &str) -> u64 {
    let (st, v) = s.get(&token("ops", tenant, "admin"), "/v1/stats").await;
    assert_eq!(st, 200, "{v}");
    v["tenant"]["subscriptions"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_phoenix_socket_is_bounded_in_bindings_and_topics_and_gives_everything_back() {
    let s = Server::start("phx-bounds", &["--max-bindings", "5", "--max-topics-per-connection", "120"]).await;
    let staff = token("sam", "bounds", "staff");
    let mut phx = Phx::connect(&s, &staff).await;

    // More bindings than a channel may declare: refused, nothing subscribed.
    let binding = |filter: String| json!({ "event": "*", "schema": "public", "table": "jobs", "filter": filter });
    let six: Vec<Value> = (0..6).map(|i| binding(format!("id=eq.j{i}"))).collect();
    let r = phx.call("realtime:many", "phx_join", json!({ "config": { "postgres_changes": six } })).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["response"]["reason"].as_str().unwrap_or("").starts_with("too_many_bindings"), "{r}");

    // 50 ids per channel (plus its room): two channels fit in 120 topics, the third does not.
    for name in ["a", "b"] {
        let config = json!({ "config": { "postgres_changes": [binding(in_list(name, 50))] } });
        let r = phx.call(&format!("realtime:{name}"), "phx_join", config).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let config = json!({ "config": { "postgres_changes": [binding(in_list("c", 50))] } });
    let r = phx.call("realtime:c", "phx_join", config).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["response"]["reason"].as_str().unwrap_or("").starts_with("too_many_subscriptions"), "{r}");
    assert_eq!(tenant_subscriptions(&s, "bounds").await, 102, "two channels of 50 ids and their rooms");

    // The socket goes away without a word: everything it held is given back.
    drop(phx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tenant_subscriptions(&s, "bounds").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "subscriptions left behind by a closed socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presence_is_keyed_by_the_verified_identity_and_job_rooms_follow_the_job() {
    let s = Server::start("presence-identity", &[]).await;
    let worker = token("w", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let bobs_job = create_job(&s, &worker, json!({ "owner": "bob", "title": "bob's" })).await;

    // A native watcher of the lobby.
    let mut staff = s.ws(&token("sam", "acme", "staff")).await;
    let r = staff.sub("room:lobby", None).await;
    assert_eq!(r["op"], "ack", "{r}");

    // Alice asks Phoenix to show her as bob: she still appears as alice.
    let mut phx = Phx::connect(&s, &alice).await;
    let join = json!({ "config": { "presence": { "key": "bob", "enabled": true } } });
    assert_eq!(phx.call("realtime:lobby", "phx_join", join).await["status"], "ok");
    let track = json!({ "type": "presence", "event": "track", "payload": { "status": "online" } });
    assert_eq!(phx.call("realtime:lobby", "presence", track).await["status"], "ok");
    let diff = staff.expect_op("presence_diff").await;
    let joins = diff["joins"].as_object().expect("joins");
    assert!(joins.contains_key("alice") && !joins.contains_key("bob"), "{diff}");

    // A room named after bob's job is bob's job's business: not found for alice, on both protocols.
    let room = format!("room:job:{bobs_job}");
    let r = s.ws(&alice).await.request(json!({ "op": "presence", "topic": room, "meta": {} })).await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = s.ws(&alice).await.request(json!({ "op": "sub", "topic": room })).await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = phx.call(&format!("realtime:job:{bobs_job}"), "phx_join", json!({})).await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["response"]["reason"].as_str().unwrap_or("").starts_with("not_found"), "{r}");
    // Bob, who owns it, may be there.
    let r = s.ws(&token("bob", "acme", "customer")).await.sub(&room, None).await;
    assert_eq!(r["op"], "ack", "{r}");
}

#[tokio::test]
async fn an_oversized_frame_is_cut_off_by_the_codec_before_authentication() {
    let s = Server::start("codec-limit", &["--ws-max-message", "1KiB"]).await;
    // No token: the frame arrives before any authentication.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.expect("connect");
    let big = json!({ "op": "auth", "token": "x".repeat(64 * 1024) }).to_string();
    let _ = ws.send(Message::text(big)).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a frame 64 times the limit must end the connection at once");

    // A frame a little over the limit is still answered with an error, and the connection lives on.
    let mut ok = Ws::connect(&s.ws_url(), &token("sam", "acme", "staff")).await;
    ok.send(json!({ "op": "ping", "id": "p", "pad": "y".repeat(2048) })).await;
    let v = ok.expect_op("error").await;
    assert_eq!(v["code"], "frame_too_large", "{v}");
}

#[tokio::test]
async fn one_page_of_the_log_is_bounded_in_bytes_and_paging_on_loses_nothing() {
    let s = Server::start("page-bytes", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    // A job near the metadata bound: every change writes ~60 KB into the log.
    let big = "x".repeat(60 * 1024);
    let job = create_job(&s, &worker, json!({ "metadata": { "blob": big } })).await;
    for i in 0..100 {
        let (st, v) =
            s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "current_item": format!("i{i}") })).await;
        assert_eq!(st, 200, "{v}");
    }
    let mut since = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (st, v) = s.get(&staff, &format!("/v1/events?topic=job:{job}&since={since}&limit=1000")).await;
        assert_eq!(st, 200, "{v}");
        let events = v["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        pages += 1;
        let bytes: usize = events.iter().map(|e| e.to_string().len()).sum();
        assert!(bytes < 6 * 1024 * 1024, "a page of {bytes} bytes");
        seen.extend(events.iter().map(|e| e["position"].as_u64().unwrap_or(0)));
        since = v["next"].as_u64().expect("next");
    }
    assert!(pages >= 2, "101 events of ~60 KB do not fit one page");
    assert_eq!(seen.len(), 101, "every event once, across pages");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
}
