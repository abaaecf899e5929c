//! Presence: joins and leaves reach the room; a connection that goes silent
//! disappears within the heartbeat bound.

use crate::harness::{presence_keys, token, Server, Ws};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn diff(ws: &mut Ws) -> Value {
    let d = ws.expect_op("presence_diff").await;
    assert_eq!(d["topic"], "room:lobby", "{d}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_reach_the_room_and_a_silent_client_vanishes_within_the_heartbeat_bound() {
    let s = Server::start("presence", &["--heartbeat-interval", "500ms", "--heartbeat-timeout", "2s"]).await;
    let mut alice = s.ws(&token("alice", "acme", "customer")).await;
    let r = alice.request(json!({ "op": "presence", "topic": "room:lobby", "meta": { "status": "online" } })).await;
    assert_eq!(r["op"], "ack", "{r}");
    let st = alice.expect_op("presence_state").await;
    assert_eq!(presence_keys(&st["state"]), Vec::<String>::new(), "alice joined an empty room: {st}");
    let d = diff(&mut alice).await;
    assert_eq!(presence_keys(&d["joins"]), ["alice"], "{d}");

    // Bob subscribes: he gets the state with alice; his own join reaches alice.
    let mut bob = s.ws(&token("bob", "acme", "customer")).await;
    bob.sub("room:lobby", None).await;
    let st = bob.expect_op("presence_state").await;
    assert_eq!(presence_keys(&st["state"]), ["alice"], "{st}");
    assert_eq!(st["state"]["alice"]["metas"][0]["status"], "online");
    let r = bob
        .request(
            json!({ "op": "presence", "topic": "room:lobby", "meta": { "status": "away", "activity": "reading" } }),
        )
        .await;
    assert_eq!(r["op"], "ack", "{r}");
    let d = diff(&mut alice).await;
    assert_eq!((presence_keys(&d["joins"]), presence_keys(&d["leaves"])), (vec!["bob".to_string()], vec![]), "{d}");
    assert_eq!(d["joins"]["bob"]["metas"][0]["activity"], "reading");

    // A meta change is a leave of the old meta and a join of the new one.
    let r = bob.request(json!({ "op": "presence", "topic": "room:lobby", "meta": { "status": "online" } })).await;
    assert_eq!(r["op"], "ack");
    let d = diff(&mut alice).await;
    assert_eq!(d["leaves"]["bob"]["metas"][0]["status"], "away", "{d}");
    assert_eq!(d["joins"]["bob"]["metas"][0]["status"], "online", "{d}");

    // Leaving by unsub.
    let r = bob.request(json!({ "op": "unsub", "topic": "room:lobby" })).await;
    assert_eq!(r["op"], "ack");
    let d = diff(&mut alice).await;
    assert_eq!((presence_keys(&d["joins"]), presence_keys(&d["leaves"])), (vec![], vec!["bob".to_string()]), "{d}");

    // Leaving by closing the connection.
    let r = bob.request(json!({ "op": "presence", "topic": "room:lobby", "meta": {} })).await;
    assert_eq!(r["op"], "ack");
    assert_eq!(presence_keys(&diff(&mut alice).await["joins"]), ["bob"]);
    bob.inner.close(None).await.unwrap();
    let d = diff(&mut alice).await;
    assert_eq!(presence_keys(&d["leaves"]), ["bob"], "{d}");

    // Presence is per tenant: globex's lobby is another room.
    let mut other = s.ws(&token("eve", "globex", "customer")).await;
    other.sub("room:lobby", None).await;
    let st = other.expect_op("presence_state").await;
    assert_eq!(presence_keys(&st["state"]), Vec::<String>::new(), "{st}");

    // Carol joins, then her process hangs: the socket stays open but she never
    // reads again, so she answers no ping.
    let mut carol = s.ws(&token("carol", "acme", "customer")).await;
    let r = carol.request(json!({ "op": "presence", "topic": "room:lobby", "meta": { "status": "online" } })).await;
    assert_eq!(r["op"], "ack");
    let joined = Instant::now();
    assert_eq!(presence_keys(&diff(&mut alice).await["joins"]), ["carol"]);
    let d = diff(&mut alice).await;
    let gone = joined.elapsed();
    assert_eq!(presence_keys(&d["leaves"]), ["carol"], "{d}");
    // Not before the timeout (2 s), and within timeout + interval, with slack for a loaded machine.
    assert!(gone >= Duration::from_millis(1900), "carol was dropped before the heartbeat timeout: {gone:?}");
    assert!(gone <= Duration::from_secs(8), "carol lingered past the heartbeat bound: {gone:?}");
    // Alice, who kept reading (and so answering pings), is still there.
    let mut dave = s.ws(&token("dave", "acme", "customer")).await;
    dave.sub("room:lobby", None).await;
    assert_eq!(presence_keys(&dave.expect_op("presence_state").await["state"]), ["alice"]);
    // Carol's connection was closed with heartbeat_timeout.
    let bye = carol.expect_op("goodbye").await;
    assert_eq!((bye["code"].as_u64(), bye["reason"].as_str()), (Some(4003), Some("heartbeat_timeout")), "{bye}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_pub_need_a_room_and_an_object_meta() {
    let s = Server::start("presence-bad", &[]).await;
    let mut ws = s.ws(&token("alice", "acme", "customer")).await;
    let r = ws.request(json!({ "op": "presence", "topic": "jobs", "meta": {} })).await;
    assert_eq!(r["code"], "invalid_topic", "{r}");
    let r = ws.request(json!({ "op": "presence", "topic": "room:a", "meta": [1] })).await;
    assert_eq!(r["code"], "invalid_frame", "{r}");
    let r = ws.request(json!({ "op": "pub", "topic": "room:a", "event": "" })).await;
    assert_eq!(r["code"], "invalid_frame", "{r}");
    super::live::ping(&mut ws).await;
}
