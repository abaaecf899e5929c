//! The inspector's data (`GET /v1/admin/inspect`): live connections of every
//! transport with who they are, topics and subscriber counts, queue counters,
//! presence per room, and why recent connections ended — one tenant's only.

use super::phoenix::{anon_key, join_with, Phx};
use super::sse::Sse;
use crate::harness::{create_job, token, token_ttl, Server, Ws};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn inspect(s: &Server, who: &str) -> Value {
    let (st, v) = s.get(who, "/v1/admin/inspect").await;
    assert_eq!(st, 200, "{v}");
    v
}

fn by_transport(v: &Value, t: &str) -> u64 {
    v["totals"]["by_transport"][t].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_shows_every_transport_topics_presence_and_closes_of_its_tenant_only() {
    let s = Server::start("inspect", &[]).await;
    let staff = token("sam", "acme", "staff");
    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({"id": "j1", "owner": "alice", "status": "running"})).await;

    let mut alice = Ws::connect(&s.ws_url(), &token("alice", "acme", "customer")).await;
    alice.sub("job:j1", None).await;
    let r = alice.request(json!({"op": "presence", "topic": "room:job:j1", "meta": {}})).await;
    assert_eq!(r["op"], "ack", "{r}");
    let _sse = Sse::open(&s, &format!("topic=jobs&token={staff}"), None).await;
    let mut phx = Phx::connect(&s, &anon_key(), true).await;
    let (_, rep) =
        phx.join("realtime:ops", join_with(json!([{"event": "*", "schema": "public", "table": "jobs"}]), &staff)).await;
    assert_eq!(rep.payload()["status"], "ok", "{rep:?}");
    let poll = tokio::spawn({
        let (http, url, t) = (s.http.clone(), s.url("/v1/events?topic=jobs&since=999999&wait=20"), staff.clone());
        async move { http.get(url).bearer_auth(t).send().await.map(|r| r.status().as_u16()) }
    });
    // Another tenant's connection must not show.
    let mut other = Ws::connect(&s.ws_url(), &token("olga", "other", "customer")).await;
    other.sub("jobs:owner:olga", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let v = inspect(&s, &staff).await;
    for t in ["websocket", "sse", "phoenix", "longpoll"] {
        assert_eq!(by_transport(&v, t), 1, "{t}: {}", v["totals"]);
    }
    assert_eq!(v["totals"]["connections"], 4, "{}", v["totals"]);
    let conns = v["connections"].as_array().unwrap();
    assert!(conns.iter().all(|c| c["sub"] != "olga"), "another tenant's connection leaked: {conns:?}");
    let a = conns.iter().find(|c| c["transport"] == "websocket").unwrap();
    assert_eq!((a["sub"].as_str(), a["role"].as_str()), (Some("alice"), Some("customer")), "{a}");
    assert!(a["topics"].as_u64().unwrap() >= 2, "job:j1 and the room (and her own topics): {a}");
    let topics = v["topics"].as_array().unwrap();
    let subs_of = |t: &str| topics.iter().find(|x| x["topic"] == t).map(|x| x["subscribers"].as_u64().unwrap());
    assert_eq!(subs_of("job:j1"), Some(1), "{topics:?}");
    assert_eq!(subs_of("jobs"), Some(3), "SSE, the waiting long-poll and the Phoenix binding: {topics:?}");
    assert!(topics.iter().all(|t| !t["topic"].as_str().unwrap().contains("olga")), "{topics:?}");
    let rooms = v["presence"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!((rooms[0]["room"].as_str(), &rooms[0]["members"]), (Some("room:job:j1"), &json!({"alice": 1})));

    // Errors a live connection is sent are listed: alice asks for a topic she may not read.
    let r = alice.request(json!({"op": "sub", "topic": "jobs"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let v = inspect(&s, &staff).await;
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0]["sub"].as_str(), errors[0]["transport"].as_str(), errors[0]["code"].as_str()),
        (Some("alice"), Some("websocket"), Some("forbidden"))
    );
    let r = other.request(json!({"op": "sub", "topic": "jobs"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");

    // Deliveries are counted: three reports reach alice, and she took them.
    for i in 0..3 {
        let (st, _) = s.post(&worker, "/v1/jobs/j1/progress", json!({"stage": format!("s{i}")})).await;
        assert_eq!(st, 200);
    }
    assert_eq!(alice.events(3, Duration::from_secs(5)).await.len(), 3);
    let v = inspect(&s, &staff).await;
    let a = v["connections"].as_array().unwrap().iter().find(|c| c["sub"] == "alice").unwrap().clone();
    assert!(a["queued"].as_u64().unwrap() >= 3 && a["sent"] == a["queued"], "{a}");
    assert_eq!((a["waiting"].as_u64(), a["lag"].as_u64()), (Some(0), Some(0)), "{a}");

    // Ends are recorded with their reason: a client that leaves, a socket the server closes.
    alice.send_raw(Message::Close(None)).await;
    let mut bob = Ws::connect(&s.ws_url(), &token_ttl("bob", "acme", "customer", 2)).await;
    assert_eq!(bob.closed(Duration::from_secs(5)).await, Some(4002));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = inspect(&s, &staff).await;
    let closes = v["closes"].as_array().unwrap();
    let alice_close = closes.iter().find(|c| c["sub"] == "alice").unwrap_or_else(|| panic!("{closes:?}"));
    assert_eq!(
        (alice_close["transport"].as_str(), alice_close["reason"].as_str()),
        (Some("websocket"), Some("client"))
    );
    let bob_close = closes.iter().find(|c| c["sub"] == "bob").unwrap_or_else(|| panic!("{closes:?}"));
    assert_eq!((bob_close["reason"].as_str(), bob_close["code"].as_u64()), (Some("token_expired"), Some(4002)));
    assert_eq!(closes[0]["sub"], "bob", "newest first: {closes:?}");
    assert_eq!(by_transport(&v, "websocket"), 0, "{}", v["totals"]);
    assert_eq!(by_transport(&v, "sse"), 1, "{}", v["totals"]);
    assert!(v["presence"].as_array().unwrap().is_empty(), "alice's presence went with her");

    // Only admin and staff; another tenant's admin sees its own tenant.
    let (st, _) = s.get(&token("alice", "acme", "customer"), "/v1/admin/inspect").await;
    assert_eq!(st, 403);
    let (st, _) = s.get(&worker, "/v1/admin/inspect").await;
    assert_eq!(st, 403);
    let theirs = inspect(&s, &token("root", "other", "admin")).await;
    assert_eq!(theirs["totals"]["connections"], 1, "{}", theirs["totals"]);
    assert_eq!(theirs["connections"][0]["sub"], "olga");
    assert!(theirs["closes"].as_array().unwrap().is_empty(), "{}", theirs["closes"]);
    assert_eq!(theirs["errors"].as_array().unwrap().len(), 1, "only olga's own error: {}", theirs["errors"]);
    assert_eq!(theirs["errors"][0]["sub"], "olga");
    let v = inspect(&s, &staff).await;
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "not olga's: {}", v["errors"]);
    poll.abort();
}
