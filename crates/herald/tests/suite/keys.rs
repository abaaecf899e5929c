//! API key lifecycle: the admin API (`/v1/admin/keys`) and the `herald key`
//! commands list, create, rotate and revoke; a revoked key stops working at
//! once, on open connections of every transport too; a rotated key's grace
//! period ends its connections when it runs out; last use is recorded.

use super::phoenix::{join_with, Phx};
use super::sse::Sse;
use crate::harness::{token, Server, Ws, SECRET};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Creates a key through the admin API; returns (id, token).
async fn new_key(s: &Server, admin: &str, name: &str, role: &str) -> (String, String) {
    let (st, k) = s.post(admin, "/v1/admin/keys", json!({"name": name, "role": role})).await;
    assert_eq!(st, 201, "{k}");
    let token = k["token"].as_str().expect("the key is in the answer that created it").to_string();
    assert_eq!(token, format!("hk_{}_{}", k["id"].as_str().unwrap(), &token[16..]), "{k}");
    (k["id"].as_str().unwrap().to_string(), token)
}

async fn keys_of(s: &Server, admin: &str) -> Vec<Value> {
    let (st, v) = s.get(admin, "/v1/admin/keys").await;
    assert_eq!(st, 200, "{v}");
    v["keys"].as_array().unwrap().clone()
}

fn key_in<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|k| k["id"] == id).unwrap_or_else(|| panic!("{id} not in {list:?}"))
}

async fn delete(s: &Server, bearer: &str, path: &str) -> (u16, Value) {
    let r = s.http.delete(s.url(path)).bearer_auth(bearer).send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// Runs `herald key ...` against the server's database.
async fn herald_key(s: &Server, args: &[&str]) -> std::process::Output {
    let db = s.db();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("key")
            .args(&args)
            .arg("--db")
            .arg(db)
            .env("HERALD_JWT_SECRET", SECRET)
            .env_remove("HERALD_CONFIG")
            .output()
            .expect("run herald key")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_create_rotate_and_revoke_keys_and_nobody_else_may() {
    let s = Server::start("keys-api", &[]).await;
    let admin = token("ada", "acme", "admin");
    let (id, key) = new_key(&s, &admin, "crawler-fleet", "worker").await;
    let (svc_id, _) = new_key(&s, &admin, "billing", "service").await;

    let list = keys_of(&s, &admin).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], svc_id, "newest first");
    let k = key_in(&list, &id);
    assert_eq!(
        (k["name"].as_str(), k["role"].as_str(), k["status"].as_str()),
        (Some("crawler-fleet"), Some("worker"), Some("active"))
    );
    assert!(k["token"].is_null() && k.get("hash").is_none(), "never the secret again: {k}");
    assert!(k["last_used_at"].is_null() && k["revoked_at"].is_null() && k["expires_at"].is_null(), "{k}");

    // Only the tenant's admins; another tenant sees none of these and cannot touch them.
    for role in ["staff", "worker", "service", "customer"] {
        let (st, v) = s.get(&token("x", "acme", role), "/v1/admin/keys").await;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{role}: {v}");
        let (st, _) = delete(&s, &token("x", "acme", role), &format!("/v1/admin/keys/{id}")).await;
        assert_eq!(st, 403, "{role}");
    }
    let (st, _) = s.get(&key, "/v1/admin/keys").await;
    assert_eq!(st, 403, "a key cannot manage keys");
    let other = token("olga", "other", "admin");
    assert!(keys_of(&s, &other).await.is_empty());
    let (st, v) = delete(&s, &other, &format!("/v1/admin/keys/{id}")).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (st, _) = s.post(&other, &format!("/v1/admin/keys/{id}/rotate"), json!({})).await;
    assert_eq!(st, 404);

    // Bad input: a precise code, nothing created.
    for (body, code) in [
        (json!({"name": "x", "role": "admin"}), "invalid_field"),
        (json!({"name": "", "role": "worker"}), "invalid_field"),
        (json!({"name": "x".repeat(201)}), "invalid_field"),
        (json!({"name": "x", "scope": "all"}), "invalid_field"),
        (json!({}), "invalid_field"),
    ] {
        let (st, v) = s.post(&admin, "/v1/admin/keys", body.clone()).await;
        assert_eq!((st, v["error"]["code"].as_str()), (422, Some(code)), "{body}: {v}");
    }
    let (st, v) = s.post(&admin, &format!("/v1/admin/keys/{id}/rotate"), json!({"grace_seconds": 40 * 86400})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (422, Some("invalid_field")), "{v}");
    let (st, v) = delete(&s, &admin, "/v1/admin/keys/bad%20id").await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_id")), "{v}");
    assert_eq!(keys_of(&s, &admin).await.len(), 2, "nothing created by refused requests");

    // The key works; rotating it with a grace period: both work until the grace ends.
    let (st, _) = s.post(&key, "/v1/jobs", json!({"id": "k1"})).await;
    assert_eq!(st, 201);
    // Opened before the rotation: it learns of the grace period's end as it is set.
    let mut old_ws = Ws::connect(&s.ws_url(), &key).await;
    old_ws.sub("jobs", None).await;
    let (st, rotated) = s.post(&admin, &format!("/v1/admin/keys/{id}/rotate"), json!({"grace_seconds": 3})).await;
    assert_eq!(st, 201, "{rotated}");
    let new_key = rotated["token"].as_str().unwrap().to_string();
    assert_eq!((rotated["name"].as_str(), rotated["role"].as_str()), (Some("crawler-fleet"), Some("worker")));
    let list = keys_of(&s, &admin).await;
    assert_eq!(key_in(&list, &id)["status"], "expiring");
    assert!(key_in(&list, &id)["expires_at"].is_string());
    let (st, _) = s.post(&key, "/v1/jobs/k1/progress", json!({"stage": "old key, in grace"})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&new_key, "/v1/jobs/k1/progress", json!({"stage": "new key"})).await;
    assert_eq!(st, 200);
    // The old key's connection ends with its grace, as an expired token's would.
    assert_eq!(old_ws.closed(Duration::from_secs(8)).await, Some(4002), "closed when the grace ended");
    let (st, v) = s.post(&key, "/v1/jobs/k1/progress", json!({"stage": "late"})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("token_expired")), "{v}");
    assert_eq!(key_in(&keys_of(&s, &admin).await, &id)["status"], "expired");
    let (st, v) = s.post(&admin, &format!("/v1/admin/keys/{id}/rotate"), json!({})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("conflict")), "an expired key is not rotated: {v}");

    // Revoke: at once; revoking again answers the same.
    let new_id = rotated["id"].as_str().unwrap();
    let (st, first) = delete(&s, &admin, &format!("/v1/admin/keys/{new_id}")).await;
    assert_eq!((st, first["status"].as_str()), (200, Some("revoked")), "{first}");
    let (st, v) = s.post(&new_key, "/v1/jobs/k1/progress", json!({"stage": "revoked"})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("key_revoked")), "{v}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (st, again) = delete(&s, &admin, &format!("/v1/admin/keys/{new_id}")).await;
    assert_eq!((st, &again["revoked_at"]), (200, &first["revoked_at"]), "revoking twice changes nothing");

    // Last use is recorded (in batches; a graceful stop writes what is pending).
    let mut s = s;
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    s.restart().await;
    let list = keys_of(&s, &admin).await;
    assert!(key_in(&list, &id)["last_used_at"].is_string(), "{list:?}");
    assert!(key_in(&list, new_id)["last_used_at"].is_string(), "{list:?}");
    assert!(key_in(&list, &svc_id)["last_used_at"].is_null(), "never used: {list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_closes_its_connections_on_every_transport_and_no_one_elses() {
    let s = Server::start("keys-revoke", &[]).await;
    let admin = token("ada", "acme", "admin");
    let (id, key) = new_key(&s, &admin, "fleet", "service").await;
    let (st, _) = s.post(&key, "/v1/jobs", json!({"id": "r1", "status": "running"})).await;
    assert_eq!(st, 201);

    // The key on a native WebSocket, an SSE stream, a waiting long-poll, a
    // Phoenix channel and a Socket.IO connection; a staff JWT on a WebSocket beside.
    let mut ws = Ws::connect(&s.ws_url(), &key).await;
    ws.sub("jobs", None).await;
    let mut staff = Ws::connect(&s.ws_url(), &token("sam", "acme", "staff")).await;
    staff.sub("jobs", None).await;
    let mut sse = Sse::open(&s, &format!("topic=jobs&token={key}"), None).await;
    let poll = {
        let (http, url, key) = (s.http.clone(), s.url("/v1/events?topic=job:r1&since=999999&wait=30"), key.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    let mut phx = Phx::connect(&s, &super::phoenix::anon_key(), true).await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    let (_, rep) = phx.join("realtime:work", join_with(bindings, &key)).await;
    assert_eq!(rep.payload()["status"], "ok", "{rep:?}");
    let mut sio = SocketIo::connect(&s, &key).await;
    // A supabase-js guest channel (anon key) that is given the key afterwards.
    let mut guest = Phx::connect(&s, &super::phoenix::anon_key(), true).await;
    let (jr, rep) = guest
        .join(
            "realtime:later",
            json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "jobs"}]}}),
        )
        .await;
    assert_eq!(rep.payload()["status"], "ok", "{rep:?}");
    let r = guest.push_event(&jr, "realtime:later", "access_token", json!({"access_token": key})).await;
    assert_eq!(r.payload()["status"], "ok", "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (st, _) = delete(&s, &admin, &format!("/v1/admin/keys/{id}")).await;
    assert_eq!(st, 200);

    assert_eq!(ws.closed(Duration::from_secs(5)).await, Some(4001), "native WebSocket closed: auth_failed");
    let goodbye = loop {
        let m = sse.next(Duration::from_secs(5)).await.expect("SSE goodbye");
        if m.event == "goodbye" {
            break m;
        }
    };
    assert_eq!(goodbye.data, json!({"reason": "auth_failed", "reconnect": false}));
    assert!(sse.next(Duration::from_secs(2)).await.is_none(), "SSE stream ended");
    let (st, body, took) = poll.await.unwrap();
    assert_eq!((st, body["error"]["code"].as_str()), (401, Some("key_revoked")), "{body}");
    assert!(took < Duration::from_secs(10), "the waiting poll ended at the revoke, not at its wait: {took:?}");
    let sys = phx.until("system error", |f| f.event() == "system" && f.payload()["status"] == "error").await;
    assert!(sys.payload()["message"].as_str().unwrap().contains("revoked"), "{sys:?}");
    phx.until("phx_close", |f| f.event() == "phx_close").await;
    let sys = guest.until("guest's system error", |f| f.event() == "system" && f.payload()["status"] == "error").await;
    assert!(sys.payload()["message"].as_str().unwrap().contains("revoked"), "{sys:?}");
    let bye = sio.until_event("herald:disconnect").await;
    assert_eq!((bye["reason"].as_str(), bye["reconnect"].as_bool()), (Some("auth_failed"), Some(false)), "{bye}");

    // Nobody else was harmed: the staff socket still gets events.
    let (st, _) = s.post(&token("w", "acme", "worker"), "/v1/jobs/r1/progress", json!({"stage": "after"})).await;
    assert_eq!(st, 200);
    let ev = staff.events(1, Duration::from_secs(5)).await;
    assert_eq!(ev.len(), 1, "staff still live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_key_cli_lists_rotates_and_revokes_and_a_running_server_follows() {
    let s = Server::start("keys-cli", &[]).await;
    let out = herald_key(&s, &["create", "--tenant", "acme", "--name", "nightly"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let id = key["hk_".len()..key.len() - 65].to_string();

    let out = herald_key(&s, &["list", "--tenant", "acme", "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["id"].as_str(), listed[0]["status"].as_str()), (Some(id.as_str()), Some("active")));
    let table = herald_key(&s, &["list", "--tenant", "acme"]).await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains(&id) && table.contains("nightly"), "{table}");

    // Rotated by the CLI (no grace): the old key's open connection is closed by
    // the running server, which learns of the change from the database.
    let mut ws = Ws::connect(&s.ws_url(), &key).await;
    ws.sub("jobs", None).await;
    let out = herald_key(&s, &["rotate", &id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(new_key.starts_with("hk_") && new_key != key);
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Some(4001), "closed within the server's poll");
    let (st, v) = s.post(&key, "/v1/jobs", json!({})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("key_revoked")), "{v}");

    let mut ws = Ws::connect(&s.ws_url(), &new_key).await;
    ws.sub("jobs", None).await;
    let new_id = &new_key["hk_".len()..new_key.len() - 65];
    let out = herald_key(&s, &["revoke", new_id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Some(4001));

    // Bad input: unknown ids, a key of a role keys cannot have.
    let out = herald_key(&s, &["revoke", "000000000000"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = herald_key(&s, &["create", "--tenant", "acme", "--name", "x", "--role", "admin"]).await;
    assert!(!out.status.success());
}

/// A bare Socket.IO v4 client over an Engine.IO WebSocket: enough to connect
/// with a token and read events.
struct SocketIo {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl SocketIo {
    async fn connect(s: &Server, token: &str) -> SocketIo {
        let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket", s.port);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("socket.io connect");
        let mut c = SocketIo { ws };
        let open = c.packet().await;
        assert!(open.starts_with('0'), "engine.io open: {open}");
        c.ws.send(Message::text(format!("40{}", json!({ "token": token })))).await.unwrap();
        let connected = c.packet().await;
        assert!(connected.starts_with("40{"), "socket.io connect: {connected}");
        c
    }

    /// The next Engine.IO packet that is not a ping (pings are answered).
    async fn packet(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a packet in time")
                .expect("socket open")
                .expect("read");
            let Message::Text(t) = m else { continue };
            if t.as_str() == "2" {
                self.ws.send(Message::text("3")).await.unwrap();
                continue;
            }
            return t.to_string();
        }
    }

    /// The payload of the next event named `name`.
    async fn until_event(&mut self, name: &str) -> Value {
        loop {
            let p = self.packet().await;
            let Some(body) = p.strip_prefix("42") else { continue };
            let v: Value = serde_json::from_str(body).unwrap();
            if v[0] == name {
                let data = &v[1];
                return data.as_str().map(|s| serde_json::from_str(s).unwrap()).unwrap_or_else(|| data.clone());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_closes_its_connections_on_another() {
    if !crate::harness::on_postgres() {
        return; // Nodes share a database only on PostgreSQL.
    }
    let a = Server::start("keys_node_a", &[]).await;
    let b = Server::start_sharing(&a, "keys_node_b", &[]).await;
    let admin = token("ada", "acme", "admin");
    let (id, key) = new_key(&a, &admin, "fleet", "worker").await;
    let mut on_b = Ws::connect(&b.ws_url(), &key).await;
    on_b.sub("jobs", None).await;
    let (st, _) = delete(&a, &admin, &format!("/v1/admin/keys/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(on_b.closed(Duration::from_secs(5)).await, Some(4001), "node B follows node A's revoke");
    let (st, v) = b.post(&key, "/v1/jobs", json!({})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("key_revoked")), "{v}");
}
