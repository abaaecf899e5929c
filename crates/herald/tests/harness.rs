//! Starts the real `herald` binary on a free port with its own database, and
//! talks to it over HTTP and WebSocket.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-please-change";

/// A running server process; killed when dropped.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// The PostgreSQL database of this server, when the suite runs on PostgreSQL.
    pg_db: Option<String>,
    /// Whether dropping this server drops its database (the first of the servers sharing it).
    owns_db: bool,
}

/// Whether the suite runs against PostgreSQL (`HERALD_TEST_STORE=postgres`,
/// see scripts/test.sh) rather than SQLite.
pub fn on_postgres() -> bool {
    std::env::var("HERALD_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The local PostgreSQL of the test machine.
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs SQL as the local superuser with psql; panics with psql's message on failure.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", &format!("{PG_BASE}/{db}"), "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh, empty database for one server.
pub fn create_pg_database(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let db: String = format!("herald_test_{}_{n}_{clean}", std::process::id()).chars().take(60).collect();
    psql("postgres", &format!("CREATE DATABASE {db}"));
    db
}

/// Drops a test database and its replication slot (once its sequencer is gone).
pub fn drop_pg_database(db: &str) {
    for _ in 0..50 {
        let left = psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE database = '{db}' AND NOT active) d;
                 SELECT count(*) FROM pg_replication_slots WHERE database = '{db}'"
            ),
        );
        if left.lines().last() == Some("0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("psql")
        .args([
            "-XAtq",
            "-d",
            &format!("{PG_BASE}/postgres"),
            "-c",
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        ])
        .output();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh temporary directory for one test's database.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("herald-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts a server with extra `herald serve` flags.
    pub async fn start(name: &str, extra: &[&str]) -> Server {
        let dir = temp_dir(name);
        Self::start_in(dir, extra.iter().map(|s| s.to_string()).collect(), free_port()).await
    }

    pub async fn start_in(dir: PathBuf, args: Vec<String>, port: u16) -> Server {
        let pg_db = on_postgres().then(|| {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let prefix = format!("herald-test-{}-", std::process::id());
            create_pg_database(name.strip_prefix(&prefix).unwrap_or(&name))
        });
        let mut s = Server {
            port,
            dir,
            args,
            child: None,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            owns_db: pg_db.is_some(),
            pg_db,
        };
        s.spawn().await;
        s
    }

    /// A server on a fresh PostgreSQL database prepared with `setup_sql` (the
    /// application's tables), started with `config` as its `herald.toml`.
    pub async fn start_pg_app(name: &str, setup_sql: &str, config: &str, extra: &[&str]) -> Server {
        let dir = temp_dir(name);
        let db = create_pg_database(name);
        psql(&db, setup_sql);
        std::fs::write(dir.join("herald.toml"), config).unwrap();
        let mut args = vec!["--config".to_string(), dir.join("herald.toml").display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            port: free_port(),
            dir,
            args,
            child: None,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            pg_db: Some(db),
            owns_db: true,
        };
        s.spawn().await;
        s
    }

    /// A second process on the same PostgreSQL database as `other` (a cluster of two).
    pub async fn start_sharing(other: &Server, name: &str, extra: &[&str]) -> Server {
        let mut s = Server {
            port: free_port(),
            dir: temp_dir(name),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            pg_db: other.pg_db.clone(),
            owns_db: false,
        };
        s.spawn().await;
        s
    }

    /// The name of this server's PostgreSQL database.
    pub fn pg_db(&self) -> &str {
        self.pg_db.as_deref().expect("a server on PostgreSQL")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(self.db())
            .args(&self.args)
            .env("HERALD_JWT_SECRET", SECRET)
            .env_remove("HERALD_CONFIG")
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn herald");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// The `--db` of this server: its SQLite file, or its PostgreSQL URL.
    pub fn db(&self) -> String {
        match &self.pg_db {
            Some(db) => format!("{PG_BASE}/{db}"),
            None => self.dir.join("herald.db").display().to_string(),
        }
    }

    /// The SQLite file of this server (tests of SQLite's own behaviour).
    pub fn db_file(&self) -> PathBuf {
        self.dir.join("herald.db")
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }

    /// Starts again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Waits until `/healthz` stops answering (the process is gone).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, token, path, Some(body), None).await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, token, path, Some(body), None).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, token, path, None, None).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Opens a native-protocol connection authenticated with `token`.
    pub async fn ws(&self, token: &str) -> Ws {
        Ws::connect(&self.ws_url(), token).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if let (Some(db), true) = (&self.pg_db, self.owns_db) {
            drop_pg_database(db);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Mints a token with the test secret (the same code path as `herald token`).
pub fn token(sub: &str, tenant: &str, role: &str) -> String {
    token_ttl(sub, tenant, role, 3600)
}

pub fn token_ttl(sub: &str, tenant: &str, role: &str, ttl: u64) -> String {
    let jwt = herald::auth::JwtVerifier::new(&herald::auth::JwtConfig {
        secret: Some(SECRET.into()),
        jwks_file: None,
        tenant_claim: "tenant".into(),
        role_claim: "role".into(),
        leeway_secs: 0,
    })
    .unwrap();
    jwt.mint(sub, tenant, role, ttl).unwrap()
}

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A native-protocol WebSocket client.
pub struct Ws {
    pub inner: Stream,
    /// Frames read while waiting for something else.
    pub pending: std::collections::VecDeque<Value>,
    pub close: Option<(u16, String)>,
}

impl Ws {
    pub async fn connect(url: &str, token: &str) -> Ws {
        let (inner, _) = tokio_tungstenite::connect_async(url).await.expect("ws connect");
        let mut ws = Ws { inner, pending: Default::default(), close: None };
        if !token.is_empty() {
            ws.send(json!({ "op": "auth", "token": token, "id": "auth" })).await;
            let w = ws.expect_op("welcome").await;
            assert_eq!(w["id"], "auth");
        }
        ws
    }

    /// A client whose socket has a small receive buffer, so that one that
    /// stops reading is seen behind by the server quickly (not after
    /// megabytes of kernel buffers).
    pub async fn connect_small_buffer(url: &str, token: &str) -> Ws {
        let addr = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.expect("tcp connect");
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
        let (inner, _) = tokio_tungstenite::client_async(url, stream).await.expect("ws connect");
        let mut ws = Ws { inner, pending: Default::default(), close: None };
        ws.send(json!({ "op": "auth", "token": token, "id": "auth" })).await;
        let w = ws.expect_op("welcome").await;
        assert_eq!(w["id"], "auth");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.inner.send(Message::text(v.to_string())).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.inner.send(m).await.expect("ws send");
    }

    /// The next frame, or None on close/timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        self.read(timeout).await
    }

    async fn read(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inner.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("server sends JSON")),
                Ok(Message::Close(frame)) => {
                    self.close =
                        Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Reads until a frame with `op`, keeping the others for later.
    pub async fn expect_op(&mut self, op: &str) -> Value {
        let mut skipped = Vec::new();
        let found = loop {
            match self.next(Duration::from_secs(10)).await {
                Some(v) if v["op"] == op => break v,
                Some(v) => skipped.push(v),
                None => panic!("no {op} frame; got {skipped:?}, close {:?}", self.close),
            }
        };
        for v in skipped.into_iter().rev() {
            self.pending.push_front(v);
        }
        found
    }

    /// Sends a request with `id` and returns its ack or error.
    pub async fn request(&mut self, mut v: Value) -> Value {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = format!("r{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        v["id"] = json!(id);
        self.send(v).await;
        let mut skipped = Vec::new();
        let found = loop {
            match self.next(Duration::from_secs(10)).await {
                Some(f) if f["id"] == json!(id) && (f["op"] == "ack" || f["op"] == "error") => break f,
                Some(f) => skipped.push(f),
                None => panic!("no reply to {id}; close {:?}", self.close),
            }
        };
        for f in skipped.into_iter().rev() {
            self.pending.push_front(f);
        }
        found
    }

    /// Subscribes for every event, even when behind (`conflate: false`):
    /// for tests that compare deliveries with the log tick by tick.
    pub async fn sub_every(&mut self, topic: &str) -> Value {
        let r = self.request(json!({ "op": "sub", "topic": topic, "conflate": false })).await;
        assert_eq!(r["op"], "ack", "sub {topic}: {r}");
        r
    }

    /// Subscribes and asserts the ack.
    pub async fn sub(&mut self, topic: &str, since: Option<u64>) -> Value {
        let mut v = json!({ "op": "sub", "topic": topic });
        if let Some(s) = since {
            v["since"] = json!(s);
        }
        let r = self.request(v).await;
        assert_eq!(r["op"], "ack", "sub {topic}: {r}");
        r
    }

    /// Collects `event` frames until `n` arrived or `timeout` passes.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) if v["op"] == "event" => out.push(v),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.close.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.read(left).await.is_none() && self.close.is_none() {
                return None;
            }
        }
        self.close.as_ref().map(|c| c.0)
    }
}

/// Waits until every write acknowledged so far is in the log. SQLite appends
/// events in the writing transaction: nothing to wait for. PostgreSQL's
/// sequencer appends them just after the commit, in commit order: a fence
/// (a logical message, `herald.fence`) committed now is recorded only after
/// everything committed before it is in the log.
pub async fn settle(s: &Server) {
    let Some(db) = s.pg_db.clone() else { return };
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!("{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let log = s.log();
    tokio::task::spawn_blocking(move || {
        psql(&db, &format!("SELECT pg_logical_emit_message(true, 'herald.fence', '{id}')"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while psql(&db, &format!("SELECT count(*) FROM herald.meta WHERE key = 'fence:{id}'")) != "1" {
            assert!(Instant::now() < deadline, "the log did not catch up with the writes; log:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
        psql(&db, &format!("DELETE FROM herald.meta WHERE key = 'fence:{id}'"));
    })
    .await
    .unwrap();
}

/// Runs `herald serve` in `dir` with `args` (give `--db`) and expects it to
/// refuse to start; returns its exit code and the last line it printed.
pub async fn refused_at_startup(dir: &Path, args: &[String]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("HERALD_JWT_SECRET", SECRET)
        .env_remove("HERALD_CONFIG")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(30), out).await {
        Ok(out) => out.expect("run herald"),
        Err(_) => panic!("herald started with {args:?} instead of refusing"),
    };
    assert!(!out.status.success(), "{args:?}: {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code(), err)
}

/// Creates a job as `worker` and returns its id.
pub async fn create_job(s: &Server, worker: &str, body: Value) -> String {
    let (st, v) = s.post(worker, "/v1/jobs", body).await;
    assert!(st == 201 || st == 200, "create job: {st} {v}");
    // A subscription made next starts after this job's creation, on any store.
    settle(s).await;
    v["id"].as_str().unwrap().to_string()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Keys of a presence map (`{key: {metas: [...]}}`), sorted.
pub fn presence_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}
