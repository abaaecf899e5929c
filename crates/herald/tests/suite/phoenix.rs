//! Supabase Realtime (Phoenix channels) at the wire: both serializers, refs,
//! heartbeats, binary broadcasts, bad frames, filters, isolation, token expiry
//! and resume. The unmodified JS clients are exercised in clients/supabase-compat.

use crate::harness::{token, token_ttl, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent: a decoded message, or a raw binary frame.
#[derive(Debug, Clone)]
pub(super) enum Frame {
    Msg { join_ref: Value, reference: Value, topic: String, event: String, payload: Value },
    Binary(Vec<u8>),
}

impl Frame {
    pub(super) fn event(&self) -> &str {
        match self {
            Frame::Msg { event, .. } => event,
            Frame::Binary(_) => "<binary>",
        }
    }
    pub(super) fn payload(&self) -> &Value {
        match self {
            Frame::Msg { payload, .. } => payload,
            Frame::Binary(_) => &Value::Null,
        }
    }
}

/// A bare Phoenix client.
pub(super) struct Phx {
    inner: Stream,
    v2: bool,
    next_ref: u64,
    seen: Vec<Frame>,
}

impl Phx {
    pub(super) async fn connect(s: &Server, apikey: &str, v2: bool) -> Phx {
        let vsn = if v2 { "2.0.0" } else { "1.0.0" };
        let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}", s.port);
        let (inner, _) = tokio_tungstenite::connect_async(url).await.expect("phoenix connect");
        Phx { inner, v2, next_ref: 0, seen: Vec::new() }
    }

    async fn raw(&mut self, m: Message) {
        self.inner.send(m).await.expect("send");
    }

    /// Sends a message and returns its ref.
    async fn push(&mut self, join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload}).to_string()
        };
        self.raw(Message::text(text)).await;
        r
    }

    async fn read(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inner.next()).await.ok()??.ok()?;
            let f = match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if self.v2 {
                        let a = v.as_array().expect("v2 messages are arrays");
                        assert_eq!(a.len(), 5, "{v}");
                        Frame::Msg {
                            join_ref: a[0].clone(),
                            reference: a[1].clone(),
                            topic: a[2].as_str().unwrap().into(),
                            event: a[3].as_str().unwrap().into(),
                            payload: a[4].clone(),
                        }
                    } else {
                        assert!(v.is_object(), "v1 messages are objects: {v}");
                        Frame::Msg {
                            join_ref: v["join_ref"].clone(),
                            reference: v["ref"].clone(),
                            topic: v["topic"].as_str().unwrap().into(),
                            event: v["event"].as_str().unwrap().into(),
                            payload: v["payload"].clone(),
                        }
                    }
                }
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Close(_) => return None,
                _ => continue,
            };
            return Some(f);
        }
    }

    /// Reads until `pred` holds (frames before it stay in `seen`).
    pub(super) async fn until(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) -> Frame {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        loop {
            match self.read(Duration::from_secs(8)).await {
                Some(f) if pred(&f) => return f,
                Some(f) => self.seen.push(f),
                None => panic!("no {what}; saw {:#?}", self.seen),
            }
        }
    }

    /// Pushes an event on a joined channel and returns its reply.
    pub(super) async fn push_event(&mut self, join_ref: &str, topic: &str, event: &str, payload: Value) -> Frame {
        let r = self.push(Some(join_ref), topic, event, payload).await;
        self.reply_to(&r).await
    }

    async fn reply_to(&mut self, r: &str) -> Frame {
        let r = r.to_string();
        self.until(
            &format!("reply to {r}"),
            move |f| matches!(f, Frame::Msg { event, reference, .. } if event == "phx_reply" && reference == &json!(r)),
        )
        .await
    }

    pub(super) async fn join(&mut self, topic: &str, payload: Value) -> (String, Frame) {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([r, r, topic, "phx_join", payload]).to_string()
        } else {
            json!({"join_ref": r, "ref": r, "topic": topic, "event": "phx_join", "payload": payload}).to_string()
        };
        self.raw(Message::text(text)).await;
        let reply = self.reply_to(&r).await;
        (r, reply)
    }

    /// Collects frames for `d`.
    pub(super) async fn drain(&mut self, d: Duration) -> Vec<Frame> {
        let mut out = std::mem::take(&mut self.seen);
        while let Some(f) = self.read(d).await {
            out.push(f);
        }
        out
    }
}

fn changes_config(bindings: Value) -> Value {
    json!({ "config": { "broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
        "postgres_changes": bindings, "private": false } })
}

pub(super) fn join_with(bindings: Value, access_token: &str) -> Value {
    let mut p = changes_config(bindings);
    p["access_token"] = json!(access_token);
    p
}

fn sign(claims: Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(&Header::default(), &claims, &EncodingKey::from_secret(crate::harness::SECRET.as_bytes())).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Supabase's anon key: no sub, role anon.
pub(super) fn anon_key() -> String {
    sign(json!({"role": "anon", "tenant": "acme", "exp": now_s() + 3600}))
}

async fn worker_job(s: &Server, id: &str, owner: &str) {
    let w = token("w", "acme", "worker");
    let (st, _) = s.post(&w, "/v1/jobs", json!({"id": id, "owner": owner})).await;
    assert_eq!(st, 201);
    crate::harness::settle(s).await;
}

async fn progress(s: &Server, id: &str, body: Value) {
    let w = token("w", "acme", "worker");
    let (st, b) = s.post(&w, &format!("/v1/jobs/{id}/progress"), body).await;
    assert_eq!(st, 200, "{b}");
    // Joins that follow start after this change, on any store.
    crate::harness::settle(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_framing_heartbeat_join_changes_and_binary_broadcast() {
    let s = Server::start("phx-v2", &[]).await;
    let alice = token("alice", "acme", "authenticated");
    let mut c = Phx::connect(&s, &anon_key(), true).await;

    // Heartbeat on `phoenix`: the reply repeats the ref, join_ref is null.
    let r = c.push(None, "phoenix", "heartbeat", json!({})).await;
    let Frame::Msg { join_ref, reference, topic, payload, .. } = c.reply_to(&r).await else { panic!() };
    assert_eq!((join_ref, reference, topic.as_str()), (Value::Null, json!(r), "phoenix"));
    assert_eq!(payload, json!({"status": "ok", "response": {}}));

    worker_job(&s, "j1", "alice").await;
    let bindings = json!([{"event": "UPDATE", "schema": "public", "table": "jobs", "filter": "id=eq.j1"},
                          {"event": "*", "schema": "public", "table": "notifications"}]);
    let (jr, reply) = c.join("realtime:job-j1", join_with(bindings, &alice)).await;
    let Frame::Msg { join_ref, payload, .. } = &reply else { panic!() };
    assert_eq!(join_ref, &json!(jr), "the reply carries the join_ref");
    assert_eq!(payload["status"], "ok", "{payload}");
    let echoed = payload["response"]["postgres_changes"].as_array().unwrap().clone();
    assert_eq!(echoed.len(), 2);
    assert_eq!(echoed[0]["event"], "UPDATE");
    assert_eq!(echoed[0]["filter"], "id=eq.j1");
    assert_eq!(echoed[1].get("filter"), None, "absent keys stay absent");
    let id0 = echoed[0]["id"].as_u64().expect("numeric id");
    let sys = c.until("system", |f| f.event() == "system").await;
    assert_eq!(sys.payload()["message"], "Subscribed to PostgreSQL");
    assert_eq!(sys.payload()["extension"], "postgres_changes");

    progress(&s, "j1", json!({"status": "running", "stage": "fetch"})).await;
    let ch = c.until("postgres_changes", |f| f.event() == "postgres_changes").await;
    let Frame::Msg { join_ref, reference, payload, .. } = &ch else { panic!() };
    assert_eq!((join_ref, reference), (&json!(jr), &Value::Null));
    assert_eq!(payload["ids"], json!([id0]));
    let data = &payload["data"];
    assert_eq!(
        (data["schema"].as_str(), data["table"].as_str(), data["type"].as_str()),
        (Some("public"), Some("jobs"), Some("UPDATE"))
    );
    assert_eq!(data["record"]["stage"], "fetch");
    assert_eq!(data["record"]["owner"], "alice");
    assert_eq!(data["old_record"], json!({"id": "j1"}));
    assert!(data["columns"].as_array().unwrap().iter().any(|c| c == &json!({"name": "progress", "type": "float8"})));
    assert!(data["commit_timestamp"].as_str().is_some() && data["errors"].is_null());

    // Binary broadcast: kind 3 in, kind 4 out; ack when asked for.
    let bob = token("bob", "acme", "authenticated");
    let mut other = Phx::connect(&s, &anon_key(), true).await;
    let (_, rep) = other.join("realtime:room1", json!({"config": {}, "access_token": bob})).await;
    assert_eq!(rep.payload()["status"], "ok");
    let (rjr, _) =
        c.join("realtime:room1", json!({"config": {"broadcast": {"ack": true}}, "access_token": alice})).await;
    let (topic, event, body) = ("realtime:room1", "cursor", br#"{"x":1}"#);
    let mut frame = vec![3, rjr.len() as u8, 2, topic.len() as u8, event.len() as u8, 0, 1];
    frame.extend_from_slice(rjr.as_bytes());
    frame.extend_from_slice(b"99");
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(event.as_bytes());
    frame.extend_from_slice(body);
    c.raw(Message::binary(frame)).await;
    let ack = c.reply_to("99").await;
    assert_eq!(ack.payload()["status"], "ok");
    let Frame::Binary(b) = other.until("binary broadcast", |f| matches!(f, Frame::Binary(_))).await else { panic!() };
    assert_eq!(&b[..5], &[4, topic.len() as u8, event.len() as u8, 0, 1]);
    assert_eq!(&b[5..5 + topic.len()], topic.as_bytes());
    assert_eq!(&b[5 + topic.len()..5 + topic.len() + event.len()], event.as_bytes());
    assert_eq!(&b[5 + topic.len() + event.len()..], body);
    // Without self, the sender does not get its own broadcast.
    assert!(c.drain(Duration::from_millis(300)).await.iter().all(|f| !matches!(f, Frame::Binary(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_framing_presence_leave_and_close() {
    let s = Server::start("phx-v1", &[]).await;
    let alice = token("alice", "acme", "authenticated");
    let bob = token("bob", "acme", "staff");
    let mut a = Phx::connect(&s, &alice, false).await;
    let mut b = Phx::connect(&s, &bob, false).await;
    let presence = json!({"config": {"presence": {"key": "", "enabled": true}}});
    let (ajr, rep) = a.join("realtime:lobby", presence.clone()).await;
    assert_eq!(rep.payload(), &json!({"status": "ok", "response": {"postgres_changes": []}}));
    let st = a.until("presence_state", |f| f.event() == "presence_state").await;
    assert_eq!(st.payload(), &json!({}));
    let r = a
        .push(
            Some(&ajr),
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"status": "online"}}),
        )
        .await;
    assert_eq!(a.reply_to(&r).await.payload()["status"], "ok");
    let (bjr, _) = b.join("realtime:lobby", presence).await;
    let st = b.until("presence_state", |f| f.event() == "presence_state").await;
    assert_eq!(st.payload()["alice"]["metas"][0]["status"], "online", "{:?}", st);
    assert!(st.payload()["alice"]["metas"][0]["phx_ref"].is_string());
    let r = b
        .push(
            Some(&bjr),
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"status": "away"}}),
        )
        .await;
    b.reply_to(&r).await;
    let d = a.until("bob's join", |f| f.event() == "presence_diff" && f.payload()["joins"]["bob"].is_object()).await;
    assert_eq!(d.payload()["joins"]["bob"]["metas"][0]["status"], "away");

    // JSON broadcast (v1) reaches the other client as a v1 message.
    let r = b
        .push(
            Some(&bjr),
            "realtime:lobby",
            "broadcast",
            json!({"type": "broadcast", "event": "typing", "payload": {"field": "title"}}),
        )
        .await;
    let m = a.until("broadcast", |f| f.event() == "broadcast").await;
    assert_eq!(m.payload(), &json!({"type": "broadcast", "event": "typing", "payload": {"field": "title"}}));
    let _ = r;

    // Leave: ok reply, phx_close for the channel, and bob's presence leaves.
    let r = b.push(Some(&bjr), "realtime:lobby", "phx_leave", json!({})).await;
    let rep = b.reply_to(&r).await;
    assert_eq!(rep.payload()["status"], "ok");
    let close = b.until("phx_close", |f| f.event() == "phx_close").await;
    let Frame::Msg { join_ref, .. } = close else { panic!() };
    assert_eq!(join_ref, json!(bjr));
    let d = a.until("bob's leave", |f| f.event() == "presence_diff" && f.payload()["leaves"]["bob"].is_object()).await;
    assert_eq!(d.payload()["leaves"]["bob"]["metas"][0]["status"], "away");
    // After leaving, the topic is unknown again.
    let r = b
        .push(Some(&bjr), "realtime:lobby", "broadcast", json!({"type": "broadcast", "event": "x", "payload": {}}))
        .await;
    assert_eq!(b.reply_to(&r).await.payload(), &json!({"status": "error", "response": {"reason": "unmatched topic"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_socket_survives() {
    let s = Server::start("phx-bad", &[]).await;
    let alice = token("alice", "acme", "authenticated");
    let mut c = Phx::connect(&s, &alice, true).await;
    let phx_error = |f: &Frame| f.event() == "phx_error";
    for bad in ["{", r#"{"topic":"phoenix"}"#, "[1,2,3]", r#"[null,"1",5,"heartbeat",{}]"#] {
        c.raw(Message::text(bad)).await;
        let e = c.until("phx_error", phx_error).await;
        assert!(e.payload()["reason"].as_str().unwrap().starts_with("invalid frame"), "{bad}: {e:?}");
    }
    c.raw(Message::binary(vec![9u8, 1, 2])).await;
    let e = c.until("phx_error", phx_error).await;
    assert!(e.payload()["reason"].as_str().unwrap().contains("kind 9"), "{e:?}");
    c.raw(Message::binary(vec![3u8, 1])).await;
    c.until("phx_error", phx_error).await;
    // A broadcast payload nested deeper than the HTTP API accepts is refused the same way.
    let deep = (1..40).fold(json!({}), |inner, _| json!({ "n": inner }));
    let frame = json!([null, "9", "realtime:x", "broadcast", {"type": "broadcast", "event": "e", "payload": deep}]);
    c.raw(Message::text(frame.to_string())).await;
    let e = c.until("phx_error", phx_error).await;
    assert!(e.payload()["reason"].as_str().unwrap().contains("json_too_deep"), "{e:?}");

    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("realtime:x", "broadcast", json!({}), "unmatched topic"),
        ("realtime:x", "phx_join", json!({"config": {"postgres_changes": {}}}), "invalid_join"),
        ("realtime:x", "phx_join", json!({"config": {"postgres_changes": [{"event": "NOPE"}]}}), "invalid_join"),
        (
            "realtime:x",
            "phx_join",
            json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "users"}]}}),
            "does not exist",
        ),
        (
            "realtime:x",
            "phx_join",
            json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "jobs", "filter": "id=like.x"}]}}),
            "invalid_join",
        ),
        (
            "realtime:x",
            "phx_join",
            json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "tasks"}]}}),
            "job_id",
        ),
        ("realtime:x", "phx_join", json!({"access_token": "garbage"}), "invalid_token"),
        ("not-realtime", "phx_join", json!({}), "invalid_topic"),
        ("phoenix", "dance", json!({}), "unknown event"),
    ];
    for (topic, event, payload, want) in cases {
        let r = c.push(None, topic, event, payload).await;
        let rep = c.reply_to(&r).await;
        assert_eq!(rep.payload()["status"], "error", "{event} {topic}: {rep:?}");
        let reason = rep.payload()["response"]["reason"].as_str().unwrap_or_default().to_string();
        assert!(reason.contains(want), "{event} {topic}: wanted {want:?}, got {reason:?}");
    }
    // A joined channel rejects unknown events and malformed broadcasts.
    let (jr, _) = c.join("realtime:ok", json!({})).await;
    let r = c.push(Some(&jr), "realtime:ok", "shout", json!({})).await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "error");
    let r = c.push(Some(&jr), "realtime:ok", "broadcast", json!({"type": "broadcast"})).await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "error");
    let r = c
        .push(Some(&jr), "realtime:ok", "presence", json!({"type": "presence", "event": "track", "payload": [1]}))
        .await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "error");
    // Still alive.
    let r = c.push(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "ok");

    // Binary frames need vsn 2.0.0.
    let mut v1 = Phx::connect(&s, &alice, false).await;
    v1.raw(Message::binary(vec![3u8])).await;
    let e = v1.until("phx_error", phx_error).await;
    assert!(e.payload()["reason"].as_str().unwrap().contains("2.0.0"));

    // Refused upgrades: no apikey, a bad apikey, an unknown vsn.
    for q in ["vsn=2.0.0", "apikey=nope&vsn=2.0.0", &format!("apikey={alice}&vsn=3.0.0")] {
        let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?{q}", s.port);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(matches!(resp.status().as_u16(), 400 | 401), "{q}: {}", resp.status())
            }
            other => panic!("{q}: expected an HTTP refusal, got {:?}", other.map(|_| ())),
        }
    }
    // The other path serves the same endpoint.
    let url = format!("ws://127.0.0.1:{}/socket/websocket?apikey={alice}&vsn=1.0.0", s.port);
    assert!(tokio_tungstenite::connect_async(url).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_authorized_and_filtered_per_principal() {
    let s = Server::start("phx-iso", &[]).await;
    worker_job(&s, "a1", "alice").await;
    worker_job(&s, "b1", "bob").await;
    let all_jobs = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    let mut alice = Phx::connect(&s, &anon_key(), true).await;
    alice.join("realtime:mine", join_with(all_jobs.clone(), &token("alice", "acme", "authenticated"))).await;
    let spy = json!([{"event": "*", "schema": "public", "table": "jobs", "filter": "id=eq.b1"}]);
    alice.join("realtime:spy", join_with(spy, &token("alice", "acme", "authenticated"))).await;
    let (_, rep) = alice
        .join(
            "realtime:bobtasks",
            join_with(
                json!([{"event": "*", "schema": "public", "table": "tasks", "filter": "job_id=eq.b1"}]),
                &token("alice", "acme", "authenticated"),
            ),
        )
        .await;
    assert!(rep.payload()["response"]["reason"].as_str().unwrap().contains("not_found"), "{rep:?}");
    let mut staff = Phx::connect(&s, &anon_key(), true).await;
    let in_filter =
        json!([{"event": "UPDATE", "schema": "public", "table": "jobs", "filter": "id=in.(a1,b1),status=eq.running"}]);
    staff.join("realtime:ops", join_with(in_filter, &token("sam", "acme", "staff"))).await;
    let mut other_tenant = Phx::connect(&s, &token("zed", "globex", "staff"), true).await;
    other_tenant.join("realtime:all", changes_config(all_jobs)).await;

    progress(&s, "b1", json!({"status": "running"})).await;
    progress(&s, "a1", json!({"status": "running"})).await;
    progress(&s, "a1", json!({"status": "completed"})).await;
    let records = |frames: Vec<Frame>| -> Vec<(String, String)> {
        frames
            .iter()
            .filter(|f| f.event() == "postgres_changes")
            .map(|f| {
                let Frame::Msg { topic, payload, .. } = f else { unreachable!() };
                (
                    topic.clone(),
                    format!(
                        "{}:{}",
                        payload["data"]["record"]["id"].as_str().unwrap(),
                        payload["data"]["record"]["status"].as_str().unwrap()
                    ),
                )
            })
            .collect()
    };
    let got = records(alice.drain(Duration::from_millis(700)).await);
    assert_eq!(
        got,
        vec![
            ("realtime:mine".to_string(), "a1:running".to_string()),
            ("realtime:mine".to_string(), "a1:completed".to_string())
        ],
        "alice sees only her own job, and the spy channel nothing"
    );
    let got = records(staff.drain(Duration::from_millis(300)).await);
    assert_eq!(got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), vec!["b1:running", "a1:running"]);
    assert!(records(other_tenant.drain(Duration::from_millis(200)).await).is_empty(), "nothing crosses tenants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_channel_and_access_token_extends_it() {
    let s = Server::start("phx-exp", &[]).await;
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    let (jr, rep) =
        c.join("realtime:short", join_with(bindings.clone(), &token_ttl("alice", "acme", "authenticated", 2))).await;
    assert_eq!(rep.payload()["status"], "ok");
    let (jr2, _) = c.join("realtime:long", join_with(bindings, &token_ttl("alice", "acme", "authenticated", 2))).await;
    let r = c
        .push(
            Some(&jr2),
            "realtime:long",
            "access_token",
            json!({"access_token": token("alice", "acme", "authenticated")}),
        )
        .await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "ok");
    // A token of someone else is refused, the channel stays.
    let r = c
        .push(
            Some(&jr2),
            "realtime:long",
            "access_token",
            json!({"access_token": token("bob", "acme", "authenticated")}),
        )
        .await;
    assert_eq!(c.reply_to(&r).await.payload()["status"], "error");

    let sys = c.until("system expiry", |f| f.event() == "system" && f.payload()["status"] == "error").await;
    let Frame::Msg { topic, join_ref, payload, .. } = &sys else { panic!() };
    assert_eq!((topic.as_str(), join_ref), ("realtime:short", &json!(jr)));
    assert!(payload["message"].as_str().unwrap().contains("expired"), "{payload}");
    let close = c.until("phx_close", |f| f.event() == "phx_close").await;
    let Frame::Msg { topic, .. } = close else { panic!() };
    assert_eq!(topic, "realtime:short");
    // The refreshed channel still gets rows.
    worker_job(&s, "late", "alice").await;
    let f = c.until("change on long", |f| f.event() == "postgres_changes").await;
    let Frame::Msg { topic, .. } = f else { panic!() };
    assert_eq!(topic, "realtime:long");
    // An already expired access_token is refused at join.
    let (_, rep) = c
        .join(
            "realtime:dead",
            join_with(
                json!([]),
                &sign(json!({"sub": "alice", "role": "authenticated", "tenant": "acme", "exp": now_s() - 3600})),
            ),
        )
        .await;
    assert!(rep.payload()["response"]["reason"].as_str().unwrap().contains("expired"), "{rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_on_rejoin_and_since_replays_on_request() {
    let s = Server::start("phx-resume", &[]).await;
    worker_job(&s, "r1", "alice").await;
    let alice = token("alice", "acme", "authenticated");
    let bindings = json!([{"event": "UPDATE", "schema": "public", "table": "jobs", "filter": "id=eq.r1"}]);
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    c.join("realtime:watch", join_with(bindings.clone(), &alice)).await;
    progress(&s, "r1", json!({"status": "running", "succeeded": 1})).await;
    c.until("first change", |f| f.event() == "postgres_changes").await;
    // The connection drops without a close frame.
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 2..=4 {
        progress(&s, "r1", json!({"succeeded": n})).await;
    }
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    c.join("realtime:watch", join_with(bindings.clone(), &alice)).await;
    progress(&s, "r1", json!({"succeeded": 5})).await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let f = c.until("changes", |f| f.event() == "postgres_changes").await;
        seen.push(f.payload()["data"]["record"]["succeeded"].as_u64().unwrap());
    }
    assert_eq!(seen, vec![2, 3, 4, 5], "missed changes first, then live, once each");

    // A client that closes on purpose leaves nothing to resume.
    c.inner.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    progress(&s, "r1", json!({"succeeded": 6})).await;
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    c.join("realtime:watch", join_with(bindings.clone(), &alice)).await;
    assert!(c.drain(Duration::from_millis(400)).await.iter().all(|f| f.event() != "postgres_changes"));

    // An explicit `since` in a binding replays from that position.
    let (_, page) = s.get(&alice, "/v1/events?topic=job:r1&since=0&limit=1000").await;
    let positions: Vec<u64> =
        page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect();
    let since = positions[positions.len() - 3];
    let hinted =
        json!([{"event": "UPDATE", "schema": "public", "table": "jobs", "filter": "id=eq.r1", "since": since}]);
    c.join("realtime:again", join_with(hinted, &alice)).await;
    let mut seen = Vec::new();
    for f in c.drain(Duration::from_millis(500)).await {
        if f.event() == "postgres_changes" {
            seen.push(f.payload()["data"]["record"]["succeeded"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, vec![5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_dropped_before_any_change_resumes_from_its_join_not_from_history() {
    let s = Server::start("phx-quiet", &[]).await;
    worker_job(&s, "q1", "alice").await;
    // History from before the channel existed: never the channel's to replay.
    progress(&s, "q1", json!({"status": "running", "succeeded": 1})).await;
    progress(&s, "q1", json!({"succeeded": 2})).await;
    let alice = token("alice", "acme", "authenticated");
    let bindings = json!([{"event": "UPDATE", "schema": "public", "table": "jobs", "filter": "id=eq.q1"}]);
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    c.join("realtime:quiet", join_with(bindings.clone(), &alice)).await;
    assert!(
        c.drain(Duration::from_millis(300)).await.iter().all(|f| f.event() != "postgres_changes"),
        "a fresh join starts live"
    );
    // Dropped without a close frame, before any change reached it.
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    progress(&s, "q1", json!({"succeeded": 9})).await;
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    c.join("realtime:quiet", join_with(bindings, &alice)).await;
    let seen: Vec<u64> = c
        .drain(Duration::from_millis(500))
        .await
        .iter()
        .filter(|f| f.event() == "postgres_changes")
        .map(|f| f.payload()["data"]["record"]["succeeded"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, vec![9], "only what happened while it was away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_list_longer_than_the_subscription_limit_is_refused() {
    let s = Server::start("phx-idlist", &["--max-subscriptions", "3"]).await;
    let staff = token("sam", "acme", "staff");
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    let within = json!([{"event": "*", "schema": "public", "table": "jobs", "filter": "id=in.(a,b,c)"}]);
    let (_, ok) = c.join("realtime:three", join_with(within, &staff)).await;
    assert_eq!(ok.payload()["status"], "ok", "{ok:?}");
    let over = json!([{"event": "*", "schema": "public", "table": "jobs", "filter": "id=in.(a,b,c,d)"}]);
    let (_, refused) = c.join("realtime:four", join_with(over, &staff)).await;
    assert_eq!(refused.payload()["status"], "error", "{refused:?}");
    let reason = refused.payload()["response"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.starts_with("too_many_subscriptions"), "{reason}");
}
