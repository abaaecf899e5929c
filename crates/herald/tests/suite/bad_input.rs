//! Guarantee 6 over HTTP: every class of bad input gets its 4xx and stable
//! code, in the one error shape, names what is wrong, writes nothing — and
//! never a 500. Plus API keys made with `herald key create`.

use super::core_flow::{all_events, code};
use crate::harness::{create_job, token, token_ttl, Server, SECRET};
use reqwest::header::{HeaderMap, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// A request with full control over the body bytes and headers.
async fn raw(
    s: &Server,
    method: Method,
    path: &str,
    tok: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, HeaderMap, Value) {
    let mut req = s.http.request(method, s.url(path));
    if !tok.is_empty() {
        req = req.bearer_auth(tok);
    }
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let resp = req.body(body).send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A POST with `Transfer-Encoding: chunked` (no length up front), over a raw socket.
async fn chunked_post(s: &Server, path: &str, tok: &str, chunks: &[&[u8]]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for c in chunks {
        // The server may answer and close before reading everything.
        let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
        frame.extend_from_slice(c);
        frame.extend_from_slice(b"\r\n");
        if sock.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 =
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The body may itself be chunked; take the JSON object inside.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Asserts the error shape: status, code, and that the message mentions `names`.
fn expect_error(what: &str, got: (u16, &Value), status: u16, want_code: &str, names: &str) {
    let (st, v) = got;
    assert_eq!(st, status, "{what}: {v}");
    let obj = v.as_object().unwrap_or_else(|| panic!("{what}: not the error shape: {v}"));
    assert_eq!(obj.len(), 1, "{what}: only `error` at the top: {v}");
    assert_eq!(v["error"].as_object().map(|e| e.len()), Some(2), "{what}: code and message: {v}");
    assert_eq!(code(v), want_code, "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(names), "{what}: message {message:?} should name {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_garbage_and_wrong_credentials_are_401_with_distinct_codes() {
    let s = Server::start("bad-auth", &[]).await;
    let expired = token_ttl("w", "acme", "worker", 1);

    for (method, path) in [
        (Method::GET, "/v1/jobs"),
        (Method::POST, "/v1/jobs"),
        (Method::GET, "/v1/events?topic=jobs"),
        (Method::GET, "/v1/notifications"),
    ] {
        let body = if method == Method::POST { b"{}".to_vec() } else { vec![] };
        let (st, h, v) = raw(&s, method.clone(), path, "", Some("application/json"), body.clone()).await;
        expect_error(&format!("no token {method} {path}"), (st, &v), 401, "unauthorized", "Bearer");
        assert_eq!(h.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()), Some("Bearer"), "{path}");

        for garbage in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.xxxx", "hk_000000000000_"] {
            let (st, h, v) = raw(&s, method.clone(), path, garbage, Some("application/json"), body.clone()).await;
            expect_error(&format!("garbage token {garbage}"), (st, &v), 401, "invalid_token", "");
            assert!(h.get(WWW_AUTHENTICATE).is_some());
        }
    }
    // Signed with another secret, or naming an unknown role, or without a tenant.
    let foreign = herald::auth::JwtVerifier::new(&herald::auth::JwtConfig {
        secret: Some("some-other-secret".into()),
        jwks_file: None,
        tenant_claim: "tenant".into(),
        role_claim: "role".into(),
        leeway_secs: 0,
    })
    .unwrap()
    .mint("w", "acme", "worker", 3600)
    .unwrap();
    let (st, v) = s.get(&foreign, "/v1/jobs").await;
    expect_error("foreign signature", (st, &v), 401, "invalid_token", "");
    let (st, v) = s.get(&token("w", "acme", "overlord"), "/v1/jobs").await;
    expect_error("unknown role", (st, &v), 401, "invalid_token", "overlord");
    let other_claims = herald::auth::JwtVerifier::new(&herald::auth::JwtConfig {
        secret: Some(SECRET.into()),
        jwks_file: None,
        tenant_claim: "org_id".into(),
        role_claim: "role".into(),
        leeway_secs: 0,
    })
    .unwrap()
    .mint("w", "acme", "worker", 3600)
    .unwrap();
    let (st, v) = s.get(&other_claims, "/v1/jobs").await;
    expect_error("no tenant claim", (st, &v), 401, "invalid_token", "tenant");
    let (st, _, v) = {
        let resp = s.http.get(s.url("/v1/jobs")).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
        let st = resp.status().as_u16();
        let h = resp.headers().clone();
        (st, h, resp.json::<Value>().await.unwrap())
    };
    expect_error("basic auth", (st, &v), 401, "unauthorized", "");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (st, h, v) = raw(&s, Method::GET, "/v1/jobs", &expired, None, vec![]).await;
    expect_error("expired token", (st, &v), 401, "token_expired", "expired");
    assert!(h.get(WWW_AUTHENTICATE).is_some());
    let (st, v) = s.post(&expired, "/v1/jobs", json!({})).await;
    expect_error("expired token writing", (st, &v), 401, "token_expired", "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_herald_key_create_authenticate_writes_and_wrong_keys_are_401() {
    let s = Server::start("api-keys", &[]).await;
    let out = tokio::task::spawn_blocking({
        let db = s.db();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["key", "create", "--tenant", "acme", "--name", "w"])
                .arg("--db")
                .arg(db)
                .env("HERALD_JWT_SECRET", SECRET)
                .env_remove("HERALD_CONFIG")
                .output()
                .expect("run herald key create")
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "key create: {}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("hk_"), "{key}");

    let (st, job) = s.post(&key, "/v1/jobs", json!({"id": "by-key", "owner": "alice"})).await;
    assert_eq!(st, 201, "{job}");
    assert_eq!(job["tenant"], "acme", "the key's tenant");
    let (st, _) = s.post(&key, "/v1/jobs/by-key/progress", json!({"status": "running"})).await;
    assert_eq!(st, 200);
    let (st, j) = s.get(&token("sam", "acme", "staff"), "/v1/jobs/by-key").await;
    assert_eq!((st, j["status"].as_str()), (200, Some("running")));

    // A wrong secret for a real key id, an unknown id, and a mangled key.
    let (id, secret) = key["hk_".len()..].split_once('_').unwrap();
    let flipped: String = secret.chars().map(|c| if c == '0' { '1' } else { '0' }).collect();
    for bad in [format!("hk_{id}_{flipped}"), format!("hk_{}_{secret}", "f".repeat(12)), format!("{key}x")] {
        let (st, v) = s.post(&bad, "/v1/jobs/by-key/progress", json!({"stage": "x"})).await;
        expect_error(&format!("wrong key {bad}"), (st, &v), 401, "invalid_token", "");
    }
    let (_, j2) = s.get(&token("sam", "acme", "staff"), "/v1/jobs/by-key").await;
    assert_eq!(j2["version"], j["version"], "wrong keys wrote nothing");

    // A key only works in its tenant.
    let (st, _) = s.get(&key, "/v1/jobs/by-key").await;
    assert_eq!(st, 200);
    create_job(&s, &token("w", "other", "worker"), json!({"id": "elsewhere"})).await;
    let (st, _) = s.get(&key, "/v1/jobs/elsewhere").await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_with_a_code_naming_the_field_and_write_nothing() {
    let s = Server::start("bad-bodies", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({"id": "j1", "status": "running"})).await;
    let before = all_events(&s, &staff, "jobs").await;

    let writes: [(Method, &str); 5] = [
        (Method::POST, "/v1/jobs"),
        (Method::POST, "/v1/jobs/j1/progress"),
        (Method::PUT, "/v1/jobs/j1/tasks/t1"),
        (Method::POST, "/v1/jobs/j1/artifacts"),
        (Method::POST, "/v1/notifications"),
    ];
    for (m, path) in &writes {
        let what = format!("{m} {path}");
        // Wrong or missing content type.
        for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
            let (st, _, v) = raw(&s, m.clone(), path, &worker, ct, b"{}".to_vec()).await;
            expect_error(&format!("{what} as {ct:?}"), (st, &v), 415, "unsupported_media_type", "application/json");
        }
        // Malformed JSON.
        for body in [&b"{"[..], b"{,}", b"{\"", b"not json", b"", b"{}}", b"{} {}", &[0xff, 0xfe, 0x00][..]] {
            let (st, _, v) = raw(&s, m.clone(), path, &worker, Some("application/json"), body.to_vec()).await;
            expect_error(&format!("{what} {:?}", String::from_utf8_lossy(body)), (st, &v), 400, "invalid_json", "JSON");
        }
        // Unknown field.
        let (st, v) = s.send(m.clone(), &worker, path, Some(json!({"titel": "typo"})), None).await;
        expect_error(&format!("{what} unknown field"), (st, &v), 422, "invalid_field", "titel");
        // Well-formed JSON that is not an object (serde would read a struct from an array).
        for body in [json!([1, 2]), json!(["j-array", "scan"]), json!([null, 5]), json!(5), json!("x"), json!(null)] {
            let (st, v) = s.send(m.clone(), &worker, path, Some(body.clone()), None).await;
            expect_error(&format!("{what} {body}"), (st, &v), 422, "invalid_field", "body");
        }
        // A number where a status goes is a wrong type, not malformed JSON.
        let (st, v) = s.send(m.clone(), &worker, path, Some(json!({"status": 1})), None).await;
        assert_eq!((st, code(&v)), (422, "invalid_field"), "{what}: {v}");
    }
    // Wrong types name the field, nested ones by their path.
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (Method::POST, "/v1/jobs", json!({"total": "twenty"}), "total"),
        (Method::POST, "/v1/jobs", json!({"total": -1}), "total"),
        (Method::POST, "/v1/jobs", json!({"status": "sleeping"}), "status"),
        (Method::POST, "/v1/jobs", json!({"status": "completed"}), "status"),
        (Method::POST, "/v1/jobs", json!({"metadata": [1]}), "metadata"),
        (Method::POST, "/v1/jobs", json!({"tasks": [{"id": "a"}, {"id": "b", "status": "done"}]}), "tasks[1].status"),
        (Method::POST, "/v1/jobs", json!({"tasks": [{"id": "a"}, {"id": "a"}]}), "tasks[1].id"),
        (Method::POST, "/v1/jobs", json!({"tasks": [{"id": "a b"}]}), "tasks[0].id"),
        (Method::POST, "/v1/jobs", json!({"id": "has space"}), "id"),
        (Method::POST, "/v1/jobs", json!({"id": "x".repeat(129)}), "id"),
        (Method::POST, "/v1/jobs", json!({"owner": "a/b"}), "owner"),
        (Method::POST, "/v1/jobs", json!({"title": "t".repeat(5000)}), "title"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"succeeded": "5"}), "succeeded"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"succeeded": 1.5}), "succeeded"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"progress": 150}), "progress"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"progress": -1}), "progress"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"metadata": "x"}), "metadata"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"status": 3}), "status"),
        (Method::POST, "/v1/jobs/j1/progress", json!({"stage": "s".repeat(5000)}), "stage"),
        (Method::PUT, "/v1/jobs/j1/tasks/t1", json!({"status": "exploded"}), "status"),
        (Method::PUT, "/v1/jobs/j1/tasks/t1", json!({"id": "t2"}), "id"),
        (Method::PUT, "/v1/jobs/j1/tasks/t1", json!({"name": 7}), "name"),
        (Method::POST, "/v1/jobs/j1/artifacts", json!({"payload": {}}), "kind"),
        (Method::POST, "/v1/jobs/j1/artifacts", json!({"kind": "", "payload": 1}), "kind"),
        (Method::POST, "/v1/notifications", json!({"title": "no recipient"}), "recipient"),
        (Method::POST, "/v1/notifications", json!({"recipient": "bob", "title": ""}), "title"),
        (Method::POST, "/v1/notifications", json!({"recipient": "bob", "title": "t", "level": "loud"}), "level"),
    ];
    for (m, path, body, field) in cases {
        let (st, v) = s.send(m.clone(), &worker, path, Some(body.clone()), None).await;
        expect_error(&format!("{m} {path} {body}"), (st, &v), 422, "invalid_field", field);
    }
    // Bad idempotency keys.
    let (st, v) = s.send(Method::POST, &worker, "/v1/jobs", Some(json!({})), Some(&"k".repeat(300))).await;
    expect_error("long Idempotency-Key", (st, &v), 400, "invalid_header", "Idempotency-Key");

    assert_eq!(all_events(&s, &staff, "jobs").await, before, "no refused request wrote anything");
    let (_, j) = s.get(&staff, "/v1/jobs/j1/tasks").await;
    assert_eq!(j["tasks"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413() {
    let s = Server::start("body-limit", &["--body-limit", "1KiB"]).await;
    let worker = token("w", "acme", "worker");
    let (st, _) = s.post(&worker, "/v1/jobs", json!({"id": "small", "title": "t".repeat(900)})).await;
    assert_eq!(st, 201, "just under the limit is fine");
    let big = json!({"id": "big", "title": "t".repeat(2000)});
    let (st, v) = s.post(&worker, "/v1/jobs", big.clone()).await;
    expect_error("content-length over the limit", (st, &v), 413, "payload_too_large", "1024");
    let (st, v) = s.post(&worker, "/v1/jobs/small/progress", json!({"stage": "s".repeat(2000)})).await;
    expect_error("progress over the limit", (st, &v), 413, "payload_too_large", "1024");
    // Streamed without a length (chunked): cut off all the same.
    let (st, v) =
        chunked_post(&s, "/v1/jobs", &worker, &[br#"{"id": "streamed", "title": ""#, &[b't'; 4000], br#""}"#]).await;
    expect_error("chunked over the limit", (st, &v), 413, "payload_too_large", "1024");
    for id in ["big", "streamed"] {
        let (st, _) = s.get(&worker, &format!("/v1/jobs/{id}")).await;
        assert_eq!(st, 404, "{id} was not written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_bad_queries_forbidden_roles_and_unknown_routes_get_their_codes() {
    let s = Server::start("bad-misc", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let customer = token("alice", "acme", "customer");
    create_job(&s, &worker, json!({"id": "j1", "owner": "alice"})).await;

    // Bad ids in the path name which id is wrong.
    let long = "x".repeat(129);
    let bad_paths: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/v1/jobs/a%20b".into(), "job id"),
        (Method::GET, format!("/v1/jobs/{long}"), "job id"),
        (Method::GET, "/v1/jobs/a%2Fb/tasks".into(), "job id"),
        (Method::GET, "/v1/jobs/%C3%A9t%C3%A9/artifacts".into(), "job id"),
        (Method::POST, "/v1/jobs/a%20b/progress".into(), "job id"),
        (Method::PUT, "/v1/jobs/j1/tasks/bad%20task".into(), "task id"),
        (Method::PUT, format!("/v1/jobs/j1/tasks/{long}"), "task id"),
        (Method::POST, "/v1/jobs/bad%3Bid/artifacts".into(), "job id"),
        (Method::POST, "/v1/notifications/no%20pe/read".into(), "notification id"),
    ];
    for (m, path, names) in &bad_paths {
        let body = match *m {
            Method::GET => None,
            _ if path.ends_with("/read") => None,
            _ if path.ends_with("/artifacts") => Some(json!({"kind": "k", "payload": {}})),
            _ => Some(json!({})),
        };
        let tok = if path.ends_with("/read") { &customer } else { &worker };
        let (st, v) = s.send(m.clone(), tok, path, body, None).await;
        expect_error(&format!("{m} {path}"), (st, &v), 400, "invalid_id", names);
    }
    // Bytes that are not UTF-8 after decoding are a bad id too, in the same shape.
    let (st, _, v) = raw(&s, Method::GET, "/v1/jobs/%FF", &worker, None, vec![]).await;
    expect_error("non-UTF-8 id", (st, &v), 400, "invalid_id", "id");
    let (st, _, v) =
        raw(&s, Method::PUT, "/v1/jobs/j1/tasks/%FF%FE", &worker, Some("application/json"), b"{}".to_vec()).await;
    expect_error("non-UTF-8 task id", (st, &v), 400, "invalid_id", "task_id");

    // Bad queries name the parameter.
    let queries = [
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?limit=501", "limit"),
        ("/v1/jobs?limit=ten", "limit"),
        ("/v1/jobs?status=sleeping", "status"),
        ("/v1/jobs?updated_after=yesterday", "updated_after"),
        ("/v1/jobs?cursor=abc", "cursor"),
        ("/v1/jobs?colour=blue", "colour"),
        ("/v1/events", "topic"),
        ("/v1/events?topic=", "topic"),
        ("/v1/events?topic=jobs&since=-1", "since"),
        ("/v1/events?topic=jobs&since=abc", "since"),
        ("/v1/events?topic=jobs&limit=0", "limit"),
        ("/v1/events?topic=jobs&limit=1001", "limit"),
        ("/v1/events?topic=jobs&wait=-1", "wait"),
        ("/v1/events?topic=jobs&wait=9999", "wait"),
        ("/v1/events?topic=jobs&wait=NaN", "wait"),
        ("/v1/events?topic=jobs&extra=1", "extra"),
        ("/v1/notifications?unread=maybe", "unread"),
        ("/v1/notifications?limit=0", "limit"),
    ];
    for (path, names) in queries {
        let (st, v) = s.get(&staff, path).await;
        expect_error(path, (st, &v), 400, "invalid_query", names);
    }
    for (path, names) in [
        ("/v1/events?topic=bogus", "bogus"),
        ("/v1/events?topic=job:a%20b", "job id"),
        ("/v1/events?topic=room:lobby", "room:lobby"),
    ] {
        let (st, v) = s.get(&staff, path).await;
        expect_error(path, (st, &v), 400, "invalid_topic", names);
    }

    // Roles that may not write.
    for (who, tok) in [("customer", &customer), ("staff", &staff)] {
        let writes: [(Method, &str, Value); 4] = [
            (Method::POST, "/v1/jobs", json!({"id": "nope"})),
            (Method::POST, "/v1/jobs/j1/progress", json!({"status": "running"})),
            (Method::PUT, "/v1/jobs/j1/tasks/t", json!({})),
            (Method::POST, "/v1/jobs/j1/artifacts", json!({"kind": "k", "payload": 1})),
        ];
        for (m, path, body) in writes {
            let (st, v) = s.send(m.clone(), tok, path, Some(body), None).await;
            expect_error(&format!("{who} {m} {path}"), (st, &v), 403, "forbidden", who);
        }
    }
    let (st, v) = s.post(&customer, "/v1/notifications", json!({"recipient": "bob", "title": "x"})).await;
    expect_error("customer notifies", (st, &v), 403, "forbidden", "customer");
    let (_, j) = s.get(&staff, "/v1/jobs/j1").await;
    assert_eq!(j["version"], 1, "nothing written by refused roles");

    // Unknown routes and methods.
    for path in ["/v2/jobs", "/v1/job", "/v1/jobs/j1/nope", "/v1", "/v1/jobs/j1/tasks/t1/extra"] {
        let (st, v) = s.get(&staff, path).await;
        expect_error(path, (st, &v), 404, "not_found", "route");
    }
    let (st, v) = s.send(Method::DELETE, &staff, "/v1/jobs/j1", None, None).await;
    expect_error("DELETE job", (st, &v), 405, "method_not_allowed", "method");
    let (st, v) = s.send(Method::PATCH, &worker, "/v1/jobs", Some(json!({})), None).await;
    expect_error("PATCH jobs", (st, &v), 405, "method_not_allowed", "method");
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_is_never_a_500_and_leaves_the_server_healthy() {
    let s = Server::start("garbage", &[]).await;
    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({"id": "j1", "status": "running"})).await;
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let paths =
        ["/v1/jobs", "/v1/jobs/j1/progress", "/v1/jobs/j1/tasks/t1", "/v1/jobs/j1/artifacts", "/v1/notifications"];
    let fragments: [&[u8]; 16] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"true",
        b"1e999",
        b"-0",
        b"\"status\"",
        b"\"running\"",
        b"\"metadata\"",
        b"\\u0000",
        b"{\"tasks\":[",
    ];
    for i in 0..300 {
        let path = paths[(rng.next() % paths.len() as u64) as usize];
        let mut body = Vec::new();
        for _ in 0..(rng.next() % 12) {
            if rng.next().is_multiple_of(5) {
                body.push((rng.next() & 0xff) as u8);
            } else {
                body.extend_from_slice(fragments[(rng.next() % fragments.len() as u64) as usize]);
            }
        }
        let m = if path.contains("/tasks/") { Method::PUT } else { Method::POST };
        let (st, _, v) = raw(&s, m, path, &worker, Some("application/json"), body.clone()).await;
        assert!(st < 500, "#{i} {path} {:?}: {st} {v}", String::from_utf8_lossy(&body));
        if st >= 400 {
            assert!(v["error"]["code"].is_string(), "#{i}: error shape: {v}");
        }
    }
    // Deep nesting and huge numbers in otherwise valid bodies.
    let deep = format!("{{\"metadata\": {}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let (st, _, v) =
        raw(&s, Method::POST, "/v1/jobs/j1/progress", &worker, Some("application/json"), deep.into_bytes()).await;
    assert!((400..500).contains(&st), "deep nesting: {st} {v}");
    let (st, _, v) = raw(
        &s,
        Method::POST,
        "/v1/jobs/j1/progress",
        &worker,
        Some("application/json"),
        br#"{"succeeded": 18446744073709551616}"#.to_vec(),
    )
    .await;
    assert_eq!((st, code(&v)), (422, "invalid_field"), "{v}");
    let (st, _, v) = raw(
        &s,
        Method::POST,
        "/v1/jobs/j1/progress",
        &worker,
        Some("application/json"),
        br#"{"succeeded": 18446744073709551615, "total": 18446744073709551615}"#.to_vec(),
    )
    .await;
    assert!(st < 500, "u64::MAX counts: {st} {v}");
    // Counts whose sum overflows must not take the writer down.
    let (st, v) =
        s.post(&worker, "/v1/jobs/j1/progress", json!({"succeeded": u64::MAX, "failed": u64::MAX, "total": 5})).await;
    assert!(st < 500, "overflowing counts: {st} {v}");
    let (st, v) = s.post(&worker, "/v1/jobs/j1/progress", json!({"succeeded": 1, "failed": 1, "total": 4})).await;
    assert_eq!((st, v["progress"].as_f64()), (200, Some(50.0)), "the writer still works: {v}");
    let (st, _, v) = raw(
        &s,
        Method::POST,
        "/v1/jobs/j1/progress",
        &worker,
        Some("application/json"),
        br#"{"progress": 1e999}"#.to_vec(),
    )
    .await;
    assert!((400..500).contains(&st), "infinite percent: {st} {v}");
    let (st, v) = s.get(&worker, "/v1/jobs/j1").await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.get("", "/readyz").await;
    assert_eq!(st, 200);
    assert!(!s.log().contains("panicked"), "no panic in the log:\n{}", s.log());
}
