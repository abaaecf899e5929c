//! Limits and bad input: slow consumers are cut off without hurting others;
//! malformed, unknown, binary, oversized and flooding frames each get their
//! documented error and leave the connection and the server working.

use super::live::{next_json, raw_sub, raw_ws, running_job};
use crate::harness::{token, token_ttl, Server, Ws};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The event name of a broadcast frame, found without parsing its (large) data.
fn broadcast_name(t: &str) -> Option<&str> {
    let head = &t[..t.len().min(256)];
    let tail = &t[t.len().saturating_sub(256)..];
    for part in [head, tail] {
        if let Some(at) = part.find(r#""event":""#) {
            let rest = &part[at + 9..];
            return rest.find('"').map(|end| &rest[..end]);
        }
    }
    None
}

/// The number of a `b<n>` broadcast.
fn broadcast_event(t: &str) -> Option<u64> {
    broadcast_name(t)?.strip_prefix('b')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_off_while_fast_ones_get_everything() {
    const FAST: usize = 100;
    const WINDOW: usize = 8;
    let s = Server::start("slow", &["--outbox-capacity", "64"]).await;
    let customer = token("c", "acme", "customer");
    let staff = token("sam", "acme", "staff");

    // The slow client: a small receive buffer, and after subscribing it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = sock.connect(format!("127.0.0.1:{}", s.port).parse().unwrap()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        format!("{}?token={customer}", s.ws_url()),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("slow connects");
    assert_eq!(next_json(&mut slow, Duration::from_secs(10)).await.unwrap()["op"], "welcome");
    raw_sub(&mut slow, "room:x", None).await;
    assert_eq!(next_json(&mut slow, Duration::from_secs(10)).await.unwrap()["op"], "presence_state");

    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..FAST).map(|_| AtomicUsize::new(0)).collect());
    let mut readers = Vec::new();
    for i in 0..FAST {
        let mut ws = raw_ws(&s, &customer, false).await;
        raw_sub(&mut ws, "room:x", None).await;
        assert_eq!(next_json(&mut ws, Duration::from_secs(10)).await.unwrap()["op"], "presence_state");
        let counts = Arc::clone(&counts);
        readers.push(tokio::spawn(async move {
            loop {
                let msg = match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
                    Ok(Some(Ok(m))) => m,
                    other => return Err(format!("fast {i}: stream ended: {other:?}")),
                };
                let Message::Text(t) = msg else { continue };
                if broadcast_name(&t) == Some("bend") {
                    return Ok(());
                }
                let Some(n) = broadcast_event(&t) else {
                    return Err(format!("fast {i}: unexpected frame {}", &t[..t.len().min(300)]));
                };
                let expected = counts[i].load(Ordering::Relaxed) as u64;
                if n != expected {
                    return Err(format!("fast {i}: got b{n}, expected b{expected}"));
                }
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The burst: 100 KB broadcasts, paced only by the fast subscribers; it goes
    // on until the slow one has overflowed, and a little beyond.
    let pad = "x".repeat(100 * 1024);
    let mut sent = 0usize;
    let mut overflowed_at = None;
    loop {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while counts.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap() + WINDOW < sent {
            assert!(std::time::Instant::now() < deadline, "fast subscribers stalled at {sent}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (st, v) = s
            .post(
                &staff,
                "/v1/broadcast",
                json!({ "topic": "room:x", "event": format!("b{sent}"), "payload": { "pad": pad } }),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        let delivered = v["delivered"].as_u64().unwrap() as usize;
        sent += 1;
        if delivered == FAST && overflowed_at.is_none() {
            overflowed_at = Some(sent);
        }
        assert!(delivered >= FAST, "a fast subscriber lost a broadcast at b{}", sent - 1);
        if overflowed_at.is_some_and(|at| sent >= at + 5) {
            break;
        }
        assert!(sent < 5000, "the slow subscriber never overflowed");
    }

    // The slow client now reads: what was in flight, then goodbye and close 4008.
    let mut got = 0u64;
    let goodbye = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await.expect("slow gets its goodbye") {
            Some(Ok(Message::Text(t))) => match broadcast_event(&t) {
                Some(n) => {
                    assert_eq!(n, got, "the slow client's frames are whole and in order");
                    got += 1;
                }
                None => break serde_json::from_str::<Value>(&t).unwrap(),
            },
            Some(Ok(_)) => continue,
            other => panic!("no goodbye: {other:?}"),
        }
    };
    assert!(got < sent as u64, "the slow client was cut off before the end");
    assert_eq!(goodbye["op"], "goodbye", "{goodbye}");
    assert_eq!((goodbye["code"].as_u64(), goodbye["reason"].as_str()), (Some(4008), Some("slow_consumer")));
    assert_eq!(goodbye["reconnect"], true);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await.expect("close frame") {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, 4008);

    // The fast ones got everything, in order, and were never cut off.
    let (st, v) = s.post(&staff, "/v1/broadcast", json!({ "topic": "room:x", "event": "bend", "payload": {} })).await;
    assert_eq!((st, v["delivered"].as_u64()), (202, Some(FAST as u64)), "{v}");
    for r in readers {
        r.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == sent));
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let overflows = metrics
        .lines()
        .find(|l| l.starts_with("herald_queue_overflows_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(overflows, Some(1.0), "{metrics}");
    // The tenant's inspector counts the cut-off too (once the connection's task has ended).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = s.get(&staff, "/v1/admin/inspect").await;
        assert_eq!(st, 200, "{v}");
        if v["totals"]["delivery"]["slow_consumers"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", v["totals"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pong_after(ws: &mut Ws, what: &str) {
    let r = super::live::ping(ws).await;
    assert_eq!(r["op"], "pong", "the connection still works after {what}");
}

async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = ws.expect_op("error").await;
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_their_error_and_leave_connection_and_server_unharmed() {
    let s = Server::start("bad-frames", &["--ws-max-message", "1KiB", "--messages-per-second", "20"]).await;
    let worker = token("w1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let job = running_job(&s, &worker, "alice").await;
    let mut bystander = s.ws(&alice).await;
    bystander.sub(&format!("job:{job}"), None).await;

    let mut ws = s.ws(&alice).await;
    ws.send_raw(Message::text("{not json")).await;
    expect_error(&mut ws, "invalid_json").await;
    pong_after(&mut ws, "malformed JSON").await;

    ws.send(json!({ "op": "dance", "id": 7 })).await;
    let v = expect_error(&mut ws, "unknown_op").await;
    assert_eq!(v["id"], 7);
    pong_after(&mut ws, "an unknown op").await;

    ws.send(json!({ "op": "sub", "id": "s1" })).await;
    let v = expect_error(&mut ws, "invalid_frame").await;
    assert_eq!(v["id"], "s1");
    assert!(v["message"].as_str().unwrap().contains("topic"), "{v}");
    ws.send(json!({ "op": 5 })).await;
    expect_error(&mut ws, "invalid_frame").await;

    ws.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    expect_error(&mut ws, "binary_not_supported").await;
    pong_after(&mut ws, "a binary frame").await;

    let big = json!({ "op": "pub", "topic": "room:r", "event": "e", "data": "y".repeat(2048) });
    ws.send(big).await;
    let v = expect_error(&mut ws, "frame_too_large").await;
    assert!(v["message"].as_str().unwrap().contains("1024"), "{v}");
    pong_after(&mut ws, "an oversized frame").await;

    let r = ws.request(json!({ "op": "auth", "token": alice })).await;
    assert_eq!(r["code"], "already_authenticated", "{r}");
    let r = ws.request(json!({ "op": "unsub", "topic": "jobs" })).await;
    assert_eq!(r["code"], "not_subscribed", "{r}");

    // A flood of pings: some are answered, the rest dropped with a rate_limited error.
    tokio::time::sleep(Duration::from_secs(3)).await; // a full bucket
    for i in 0..200 {
        ws.send(json!({ "op": "ping", "id": format!("f{i}") })).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while let Some(v) = ws.next(Duration::from_secs(2)).await {
        match v["op"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(limited >= 1, "the flood got a rate_limited error");
    assert!((1..200).contains(&pongs), "some pings answered, not all: {pongs}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pong_after(&mut ws, "a flood").await;

    // The server is unharmed: the bystander still gets events.
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{job}/progress"), json!({ "stage": "still" })).await;
    assert_eq!(st, 200);
    let e = bystander.events(1, Duration::from_secs(10)).await;
    assert_eq!(e[0]["data"]["stage"], "still");
    let _ = ws.events(1, Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_before_anything_else_and_failures_close_with_their_code() {
    let s = Server::start("auth-ws", &[]).await;
    let alice = token("alice", "acme", "customer");
    // Frames before auth are refused, then auth works on the same connection.
    let mut ws = Ws::connect(&s.ws_url(), "").await;
    ws.send(json!({ "op": "sub", "topic": "jobs:owner:alice", "id": 1 })).await;
    let v = expect_error(&mut ws, "unauthorized").await;
    assert_eq!(v["id"], 1);
    ws.send(json!({ "op": "ping", "id": 2 })).await;
    expect_error(&mut ws, "unauthorized").await;
    ws.send(json!({ "op": "auth", "token": alice, "id": "a" })).await;
    let w = ws.expect_op("welcome").await;
    assert_eq!((w["id"].as_str(), w["sub"].as_str(), w["tenant"].as_str()), (Some("a"), Some("alice"), Some("acme")));
    pong_after(&mut ws, "a late auth").await;

    // A bad token: goodbye auth_failed (do not reconnect as is), close 4001.
    for how in ["frame", "query"] {
        let mut ws = match how {
            "frame" => {
                let mut ws = Ws::connect(&s.ws_url(), "").await;
                ws.send(json!({ "op": "auth", "token": "garbage" })).await;
                ws
            }
            _ => Ws::connect(&format!("{}?token=garbage", s.ws_url()), "").await,
        };
        let bye = ws.expect_op("goodbye").await;
        assert_eq!((bye["code"].as_u64(), bye["reason"].as_str()), (Some(4001), Some("auth_failed")), "{bye}");
        assert_eq!(bye["reconnect"], false);
        assert_eq!(ws.closed(Duration::from_secs(10)).await, Some(4001));
    }
    // An already expired token: token_expired, close 4002.
    let mut ws = Ws::connect(&s.ws_url(), "").await;
    ws.send(json!({ "op": "auth", "token": token_ttl("alice", "acme", "customer", 0) })).await;
    let bye = ws.expect_op("goodbye").await;
    assert_eq!(bye["reason"], "token_expired", "{bye}");
    assert_eq!(ws.closed(Duration::from_secs(10)).await, Some(4002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_tenant_and_subscriptions_per_connection_are_limited() {
    let s = Server::start("conn-limit", &["--max-connections-per-tenant", "2", "--max-subscriptions", "2"]).await;
    let alice = token("alice", "acme", "customer");
    let mut a = s.ws(&alice).await;
    let b = s.ws(&alice).await;
    let mut third = Ws::connect(&s.ws_url(), "").await;
    third.send(json!({ "op": "auth", "token": alice })).await;
    let bye = third.expect_op("goodbye").await;
    assert_eq!((bye["code"].as_u64(), bye["reason"].as_str()), (Some(4009), Some("too_many_connections")), "{bye}");
    assert_eq!(bye["reconnect"], true);
    assert_eq!(third.closed(Duration::from_secs(10)).await, Some(4009));
    // Another tenant is not affected.
    let _other = s.ws(&token("x", "globex", "customer")).await;
    // A closed connection frees its place.
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = Ws::connect(&s.ws_url(), "").await;
        ws.send(json!({ "op": "auth", "token": alice, "id": "auth" })).await;
        match ws.next(Duration::from_secs(10)).await {
            Some(v) if v["op"] == "welcome" => break,
            other => assert!(std::time::Instant::now() < deadline, "place never freed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.sub("jobs:owner:alice", None).await;
    a.sub("room:one", None).await;
    let r = a.request(json!({ "op": "sub", "topic": "user:alice" })).await;
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    let r = a.request(json!({ "op": "unsub", "topic": "room:one" })).await;
    assert_eq!(r["op"], "ack", "{r}");
    a.sub("user:alice", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_with_1001() {
    let mut s = Server::start("shutdown", &[]).await;
    let mut ws = s.ws(&token("alice", "acme", "customer")).await;
    ws.sub("jobs:owner:alice", None).await;
    let status = tokio::task::spawn_blocking(move || {
        let st = s.terminate();
        (s, st)
    });
    let bye = ws.expect_op("goodbye").await;
    assert_eq!((bye["code"].as_u64(), bye["reason"].as_str()), (Some(1001), Some("shutting_down")), "{bye}");
    assert_eq!(bye["reconnect"], true);
    assert_eq!(ws.closed(Duration::from_secs(10)).await, Some(1001));
    let (_s, st) = status.await.unwrap();
    assert!(st.success(), "{st:?}");
}
