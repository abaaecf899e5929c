//! Regressions of the security review (issue 10), each against the real
//! binary over real sockets: JWT time claims read one way on every transport
//! and `nbf` enforced (#4, #10), settings that cannot work refused at startup
//! and `/readyz` honest about a database it cannot write (#10), floods closed
//! with 4029 and `--messages-per-second 0` meaning no limit (#5), slow request
//! heads cut off and a connection cap (#2), over-deep JSON refused at ingest
//! (#6), and a job document bounded (#3).

use crate::harness::{create_job, on_postgres, temp_dir, token, Server, Ws, SECRET};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn sign(claims: &Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// A token that passes the signature check and reads its time claims in a way
/// some code path did not: each must be refused, the same way, everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_time_claims_and_a_future_nbf_are_refused_alike_on_every_transport() {
    let s = Server::start("h-jwt", &[]).await;
    let now = now_s();
    let claims = |pairs: &[(&str, Value)]| {
        let mut c = json!({ "sub": "alice", "tenant": "acme", "role": "customer", "exp": now + 600 });
        for (k, v) in pairs {
            c[*k] = v.clone();
        }
        sign(&c)
    };
    let cases = [
        ("a float exp with a fraction", claims(&[("exp", json!(now as f64 + 600.5))]), "exp"),
        ("a float exp without one", claims(&[("exp", json!(1.9e9))]), "exp"),
        ("an exp of 1e19", claims(&[("exp", json!(10_000_000_000_000_000_000u64))]), "exp"),
        ("a negative exp", claims(&[("exp", json!(-1))]), "exp"),
        ("a string exp", claims(&[("exp", json!((now + 600).to_string()))]), "exp"),
        ("a float iat", claims(&[("iat", json!(now as f64 - 0.5))]), "iat"),
        ("an nbf five minutes ahead", claims(&[("nbf", json!(now + 300))]), "nbf"),
    ];
    let staff = token("sam", "acme", "staff");
    for (what, tok, claim) in &cases {
        // HTTP
        let (st, v) = s.get(tok, "/v1/jobs").await;
        assert_eq!((st, code(&v)), (401, "invalid_token"), "HTTP, {what}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(claim), "HTTP, {what}: {v}");
        // SSE
        let (st, v) = s.get("", &format!("/v1/sse?topic=jobs:owner:alice&token={tok}")).await;
        assert_eq!((st, code(&v)), (401, "invalid_token"), "SSE, {what}: {v}");
        // Native WebSocket: refused like any bad token, and nothing left behind.
        let mut ws = Ws::connect(&s.ws_url(), "").await;
        ws.send(json!({ "op": "auth", "token": tok, "id": "a" })).await;
        ws.send(json!({ "op": "sub", "topic": "jobs:owner:alice", "id": "s" })).await;
        let bye = ws.expect_op("goodbye").await;
        assert_eq!(
            (bye["code"].as_u64(), bye["reason"].as_str()),
            (Some(4001), Some("auth_failed")),
            "WS, {what}: {bye}"
        );
        assert_eq!(ws.closed(Duration::from_secs(10)).await, Some(4001), "WS, {what}");
        // Phoenix: the upgrade itself is refused.
        let url = format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={tok}&vsn=1.0.0", s.port);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "Phoenix, {what}")
            }
            other => panic!("Phoenix, {what}: upgrade not refused: {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // No connection task died holding subscriptions.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = s.get(&staff, "/v1/stats").await;
        assert_eq!(st, 200, "{v}");
        if v["tenant"]["connections"] == 0 && v["tenant"]["subscriptions"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A well-formed token with a past nbf and integer iat still works everywhere.
    let good = claims(&[("nbf", json!(now - 5)), ("iat", json!(now - 5))]);
    assert_eq!(s.get(&good, "/v1/jobs").await.0, 200);
    let mut ws = Ws::connect(&s.ws_url(), &good).await;
    ws.sub("jobs:owner:alice", None).await;
}

/// Runs `herald serve` with `extra` flags on a fresh SQLite file and expects
/// it to refuse to start; returns what it printed.
async fn refused_at_startup(extra: &[&str]) -> String {
    let dir = temp_dir("h-refused");
    let mut args = vec!["--db".to_string(), dir.join("herald.db").display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (_, err) = crate::harness::refused_at_startup(&dir, &args).await;
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_heartbeat_and_other_settings_that_cannot_work_are_refused_at_startup() {
    for (flags, names) in [
        (&["--heartbeat-interval", "0s"][..], "--heartbeat-interval"),
        (&["--heartbeat-timeout", "0s"][..], "--heartbeat-timeout"),
        (&["--outbox-capacity", "0"][..], "--outbox-capacity"),
        (&["--max-subscriptions", "0"][..], "--max-subscriptions"),
        (&["--header-timeout", "0s"][..], "--header-timeout"),
    ] {
        let err = refused_at_startup(flags).await;
        assert!(err.contains(names) && err.contains("must"), "{flags:?}: {err}");
    }
}

/// Makes files unwritable, even for root (an immutable flag), and undoes it when dropped.
struct ReadOnly(Vec<std::path::PathBuf>);

impl ReadOnly {
    fn apply(files: Vec<std::path::PathBuf>) -> ReadOnly {
        use std::os::unix::fs::PermissionsExt;
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).unwrap();
            if std::fs::OpenOptions::new().write(true).open(f).is_ok() {
                // Root ignores permissions; not an immutable file.
                let _ = std::process::Command::new("chattr").arg("+i").arg(f).stderr(Stdio::null()).status();
            }
        }
        ReadOnly(files)
    }

    fn holds(&self) -> bool {
        self.0.iter().all(|f| std::fs::OpenOptions::new().write(true).open(f).is_err())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for f in &self.0 {
            let _ = std::process::Command::new("chattr").arg("-i").arg(f).stderr(Stdio::null()).status();
            let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644));
        }
    }
}

/// A database file the server can open but not write: reads work, every write
/// fails, and `/readyz` says so instead of "ready".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_database_cannot_be_written() {
    if on_postgres() {
        // A read-only SQLite file; PostgreSQL's outage test is in suite::postgres.
        return;
    }
    let mut s = Server::start("h-readonly", &[]).await;
    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({ "id": "before" })).await;
    assert!(s.terminate().success());
    let db = s.db_file();
    let guard = ReadOnly::apply(vec![db.clone()]);
    if !guard.holds() {
        eprintln!("skipped: cannot make {} read-only here (no chattr as root?)", db.display());
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(&db)
        .env("HERALD_JWT_SECRET", SECRET)
        .env_remove("HERALD_CONFIG")
        .current_dir(&s.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.http.get(url("/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "no /healthz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The scenario: reads work, writes fail.
    let r = s.http.get(url("/v1/jobs/before")).bearer_auth(&worker).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.http.post(url("/v1/jobs")).bearer_auth(&worker).json(&json!({ "id": "after" })).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    // Not ready, and why.
    let r = s.http.get(url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!((status, v["reason"].as_str()), (503, Some("database_not_writable")), "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("herald.db") && e.contains("not writable")), "{v}");
    let _ = child.kill().await;
    drop(guard);
}

/// Pings at `rate` a second for at most `secs`, reading concurrently; returns
/// the pongs, the `rate_limited` errors, the close code and when it came.
async fn ping_flood(ws: Ws, rate: u32, secs: u64) -> (usize, usize, Option<u16>, Duration) {
    let (mut tx, mut rx) = ws.inner.split();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let (mut pongs, mut limited) = (0, 0);
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(secs + 5), rx.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["op"].as_str() {
                        Some("pong") => pongs += 1,
                        Some("error") if v["code"] == "rate_limited" => limited += 1,
                        _ => {}
                    }
                }
                Ok(Message::Close(f)) => return (pongs, limited, f.map(|f| u16::from(f.code)), started.elapsed()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (pongs, limited, None, started.elapsed())
    });
    let every = Duration::from_secs(1) / rate;
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) && !reader.is_finished() {
        n += 1;
        if tx.send(Message::text(json!({ "op": "ping", "id": n }).to_string())).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let _ = tx.close().await;
    reader.await.unwrap()
}

/// At 5 messages a second, a client sending 100 a second gets a few through
/// on every refill; it is still flooding, and is closed with 4029 once it has
/// been over the limit for the 10 s the native protocol tolerates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_flood_is_closed_with_4029_although_refills_let_messages_through() {
    let s = Server::start("h-flood", &["--messages-per-second", "5"]).await;
    let ws = s.ws(&token("alice", "acme", "customer")).await;
    let (pongs, limited, close, at) = ping_flood(ws, 100, 25).await;
    assert_eq!(close, Some(4029), "not closed: {pongs} pongs, {limited} warnings in {at:?}");
    assert!(at > Duration::from_secs(9) && at < Duration::from_secs(15), "closed after {at:?}");
    assert!(pongs > 30, "refills let messages through all along: {pongs}");
    assert!(limited >= 5, "{limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_messages_per_second_means_no_limit() {
    let s = Server::start("h-unlimited", &["--messages-per-second", "0"]).await;
    let mut ws = s.ws(&token("alice", "acme", "customer")).await;
    for i in 0..500 {
        ws.send(json!({ "op": "ping", "id": i })).await;
    }
    let mut pongs = 0;
    while pongs < 500 {
        let v = ws.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("{pongs} pongs, then nothing"));
        assert_eq!(v["op"], "pong", "{v}");
        pongs += 1;
    }
}

/// Sends a request on `tcp` and reads one response; its status and body.
async fn request(tcp: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())?;
            if body.len() >= len {
                return Some((head.split_whitespace().nth(1)?.parse().ok()?, body[..len].to_string()));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Slowloris: clients that send a header line now and then, never finishing
/// the request head, are cut off after the header timeout, while everyone else
/// is served; past the connection cap, a new connection gets 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_and_connections_are_capped() {
    let s = Server::start("h-slowloris", &["--header-timeout", "1s", "--max-connections", "60"]).await;
    let mut loris = Vec::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        loris.push(tokio::spawn(async move {
            let opened = Instant::now();
            tcp.write_all(b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\n").await.unwrap();
            let (mut rd, mut wr) = tcp.split();
            let drip = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if wr.write_all(b"x-slow: 1\r\n").await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let mut buf = [0u8; 256];
            tokio::select! {
                _ = drip => unreachable!(),
                _ = async { while rd.read(&mut buf).await.is_ok_and(|n| n > 0) {} } => opened.elapsed(),
                _ = tokio::time::sleep(Duration::from_secs(15)) => opened.elapsed(),
            }
        }));
    }
    // Meanwhile others are served promptly.
    for _ in 0..5 {
        let t = Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        let (st, _) = request(&mut tcp, "/healthz").await.expect("served");
        assert_eq!(st, 200);
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for l in loris {
        let held = l.await.unwrap();
        assert!(held < Duration::from_secs(3), "a slow head held its connection for {held:?}");
    }

    // The cap: keep-alive connections up to it are served; the next gets 503 and is closed.
    let mut held = Vec::new();
    let refused = loop {
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        match request(&mut tcp, "/healthz").await {
            Some((200, _)) => held.push(tcp),
            Some((503, body)) => break body,
            other => panic!("{other:?} after {} connections", held.len()),
        }
        assert!(held.len() <= 60, "no cap");
    };
    assert!(held.len() >= 55, "refused too early, at {}", held.len());
    let v: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(code(&v), "too_many_connections", "{v}");
    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        if let Some((200, _)) = request(&mut tcp, "/healthz").await {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `levels` objects nested in one another.
fn nested(levels: usize) -> Value {
    (1..levels).fold(json!({}), |inner, _| json!({ "n": inner }))
}

/// JSON too deep to read back is refused at ingest, names the limit, and
/// writes nothing; the long-poll page never holds `null` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_deep_json_is_refused_at_ingest() {
    let s = Server::start("h-deep", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    for levels in [33, 126, 1000] {
        let (st, v) = s.post(&worker, "/v1/jobs", json!({ "id": "deep", "metadata": nested(levels - 1) })).await;
        assert_eq!((st, code(&v)), (422, "json_too_deep"), "{levels} levels: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("32"), "{v}");
    }
    assert_eq!(s.get(&staff, "/v1/jobs/deep").await.0, 404, "nothing written");
    // 32 levels, counting the body itself, are fine.
    let job = create_job(&s, &worker, json!({ "id": "ok", "metadata": nested(31) })).await;
    let path = format!("/v1/jobs/{job}/progress");
    let (st, v) = s.post(&worker, &path, json!({ "status": "running", "metadata": { "deeper": nested(40) } })).await;
    assert_eq!((st, code(&v)), (422, "json_too_deep"), "{v}");
    let (st, v) =
        s.post(&worker, "/v1/broadcast", json!({ "topic": "room:r", "event": "e", "payload": nested(40) })).await;
    assert_eq!((st, code(&v)), (422, "json_too_deep"), "{v}");
    let (st, page) = s.get(&staff, "/v1/events?topic=jobs&since=0").await;
    assert_eq!(st, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert!(events.iter().all(|e| e.is_object()), "{page}");
    // A room broadcast over the native WebSocket is held to the same limit.
    let mut ws = s.ws(&staff).await;
    ws.sub("room:r", None).await;
    let r = ws.request(json!({ "op": "pub", "topic": "room:r", "event": "e", "data": nested(40) })).await;
    assert_eq!(r["code"], "json_too_deep", "{r}");
    let r = ws.request(json!({ "op": "pub", "topic": "room:r", "event": "e", "data": nested(20) })).await;
    assert_ne!(r["op"], "error", "a shallower payload is fine: {r}");
}

/// Merge patches cannot grow a job past 64 KiB of metadata, and the error log
/// stays bounded in bytes: one small report never turns into a huge write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_document_stays_bounded() {
    let s = Server::start("h-bounded", &[]).await;
    let worker = token("w", "acme", "worker");
    let job = create_job(&s, &worker, json!({ "id": "big", "status": "running" })).await;
    let path = format!("/v1/jobs/{job}/progress");
    let chunk = "x".repeat(20 * 1024);
    for k in ["a", "b", "c"] {
        let (st, v) = s.post(&worker, &path, json!({ "metadata": { k: chunk } })).await;
        assert_eq!(st, 200, "{v}");
    }
    let (_, before) = s.get(&worker, &format!("/v1/jobs/{job}")).await;
    let (st, v) = s.post(&worker, &path, json!({ "metadata": { "d": chunk } })).await;
    assert_eq!((st, code(&v)), (413, "job_too_large"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("65536"), "{v}");
    let (_, after) = s.get(&worker, &format!("/v1/jobs/{job}")).await;
    assert_eq!(before, after, "a refused patch changes nothing");
    // Removing keys, and reports without metadata, still work.
    let (st, _) = s.post(&worker, &path, json!({ "metadata": { "a": null, "d": "small" }, "stage": "s" })).await;
    assert_eq!(st, 200);
    // The error log: at most 64 KiB of messages, the newest kept.
    for i in 0..12 {
        let (st, v) = s.post(&worker, &path, json!({ "error": format!("{i:02}{}", "e".repeat(16 * 1024 - 2)) })).await;
        assert_eq!(st, 200, "{v}");
    }
    let (_, doc) = s.get(&worker, &format!("/v1/jobs/{job}")).await;
    let errors = doc["errors"].as_array().unwrap();
    let bytes: usize = errors.iter().map(|e| e["message"].as_str().unwrap().len()).sum();
    assert!(bytes <= 64 * 1024, "{bytes} bytes of errors");
    assert!(errors.last().unwrap()["message"].as_str().unwrap().starts_with("11"));
    assert!(doc.to_string().len() < 160 * 1024, "{} bytes", doc.to_string().len());
}
