//! Live filtered job lists (`list` on the native protocol, `/v1/sse/jobs`):
//! a snapshot taken atomically with the live feed, then enter / update /
//! leave. The property test moves random jobs through random statuses while
//! lists are opened, dropped and resumed, and checks every list against the
//! query run over the store's jobs — with a matcher written here, not the
//! server's.

use super::sse::Sse;
use crate::harness::{create_job, settle, token, Server, Ws};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// A tiny deterministic generator: a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The test's own reading of a query (docs/PROTOCOL.md, `list`).
#[derive(Clone, Debug)]
struct Query {
    status: Vec<&'static str>,
    kind: Option<&'static str>,
    owner: Option<&'static str>,
    env: Option<&'static str>,
}

impl Query {
    fn wire(&self) -> Value {
        let mut q = json!({});
        if !self.status.is_empty() {
            q["status"] = json!(self.status);
        }
        if let Some(k) = self.kind {
            q["kind"] = json!(k);
        }
        if let Some(o) = self.owner {
            q["owner"] = json!(o);
        }
        if let Some(e) = self.env {
            q["tag"] = json!({ "env": e });
        }
        q
    }

    fn matches(&self, job: &Value) -> bool {
        (self.status.is_empty() || self.status.iter().any(|s| job["status"] == *s))
            && self.kind.is_none_or(|k| job["kind"] == k)
            && self.owner.is_none_or(|o| job["owner"] == o)
            && self.env.is_none_or(|e| job["metadata"]["env"] == e)
    }
}

/// What one client holds of one list, checked frame by frame.
#[derive(Default)]
struct Held {
    jobs: HashMap<String, Value>,
    changes: usize,
}

impl Held {
    fn version(job: &Value) -> u64 {
        job["version"].as_u64().expect("a job has a version")
    }

    fn snapshot(&mut self, jobs: &Value) {
        self.jobs =
            jobs.as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap().to_string(), j.clone())).collect();
    }

    /// Applies a change, asserting the protocol's promises: enter only for a
    /// job not held, update and leave only for one held, versions rising.
    fn change(&mut self, who: &str, c: &Value) {
        self.changes += 1;
        let id = c["id"].as_str().expect("a change names its job").to_string();
        let held = self.jobs.get(&id).map(Self::version);
        match c["change"].as_str().unwrap() {
            "enter" => {
                assert!(held.is_none(), "{who}: enter of {id}, already held: {c}");
                self.jobs.insert(id, c["job"].clone());
            }
            "update" => {
                let v = held.unwrap_or_else(|| panic!("{who}: update of {id}, not held: {c}"));
                assert!(Self::version(&c["job"]) > v, "{who}: {id} went from version {v} back to {c}");
                self.jobs.insert(id, c["job"].clone());
            }
            "leave" => {
                let v = held.unwrap_or_else(|| panic!("{who}: leave of {id}, not held: {c}"));
                if c["job"].is_object() {
                    assert!(Self::version(&c["job"]) > v, "{who}: {id} left with an older version: {c}");
                }
                self.jobs.remove(&id);
            }
            other => panic!("{who}: unknown change {other}: {c}"),
        }
    }

    fn have(&self) -> Value {
        json!(self.jobs.iter().map(|(id, j)| (id.clone(), Self::version(j))).collect::<HashMap<_, _>>())
    }
}

/// A native client with one list.
struct Lister {
    name: &'static str,
    ws: Ws,
    query: Query,
    held: Held,
}

impl Lister {
    async fn open(s: &Server, name: &'static str, tok: &str, query: Query) -> Lister {
        let mut ws = Ws::connect(&s.ws_url(), tok).await;
        let ack = ws.request(json!({ "op": "list", "list": "l", "query": query.wire() })).await;
        assert_eq!(ack["op"], "ack", "{name}: {ack}");
        let snap = ws.expect_op("list_snapshot").await;
        assert_eq!(snap["position"], ack["position"], "{name}");
        let mut held = Held::default();
        held.snapshot(&snap["jobs"]);
        assert_eq!(ack["count"], held.jobs.len(), "{name}");
        Lister { name, ws, query, held }
    }

    /// Reconnects, resuming with what it holds.
    async fn resume(&mut self, s: &Server, tok: &str) {
        self.ws = Ws::connect(&s.ws_url(), tok).await;
        let frame = json!({ "op": "list", "list": "l", "query": self.query.wire(), "have": self.held.have() });
        let ack = self.ws.request(frame).await;
        assert_eq!(ack["op"], "ack", "{}: {ack}", self.name);
    }

    /// Reads what is waiting (until `quiet` passes without a frame).
    async fn drain(&mut self, quiet: Duration) {
        while let Some(f) = self.ws.next(quiet).await {
            match f["op"].as_str() {
                Some("list_change") => self.held.change(self.name, &f),
                Some("list_snapshot") => panic!("{}: a second snapshot on one list: {f}", self.name),
                Some("error") => panic!("{}: {f}", self.name),
                _ => {}
            }
        }
    }
}

/// Every job of the tenant, as the store has it.
async fn all_jobs(s: &Server, tok: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, page) = s.get(tok, &format!("/v1/jobs?limit=500{cursor}")).await;
        assert_eq!(st, 200, "{page}");
        out.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

fn assert_equal(who: &str, held: &HashMap<String, Value>, q: &Query, truth: &[Value]) {
    let want: HashMap<&str, u64> =
        truth.iter().filter(|j| q.matches(j)).map(|j| (j["id"].as_str().unwrap(), Held::version(j))).collect();
    let got: HashMap<&str, u64> = held.iter().map(|(id, j)| (id.as_str(), Held::version(j))).collect();
    assert_eq!(got, want, "{who}: the list differs from {q:?} run on the store");
}

const STATUSES_ACTIVE: &[&str] = &["running", "stalled"];

/// A random legal move of one job (or a tick, or a metadata change).
fn random_move(rng: &mut Rng, status: &str) -> Value {
    let roll = rng.below(10);
    let next = match (status, roll) {
        ("queued", 0..=5) => Some("running"),
        ("queued", 6) => Some("cancelled"),
        ("running", 0..=1) => Some("stalled"),
        ("running", 2) => Some("completed"),
        ("running", 3) => Some("failed"),
        ("stalled", 0..=4) => Some("running"),
        ("stalled", 5) => Some("cancelled"),
        _ => None,
    };
    let mut body = json!({ "stage": format!("step {}", rng.next() % 1000) });
    if let Some(n) = next {
        body["status"] = json!(n);
    }
    if rng.below(5) == 0 {
        body["metadata"] = json!({ "env": if rng.below(2) == 0 { "prod" } else { "dev" } });
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_equals_its_query_on_the_store_while_jobs_move_and_clients_resume() {
    let s = Server::start("job-lists-property", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let alice = token("alice", "acme", "customer");
    let seed: u64 =
        std::env::var("HERALD_LIST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed);
    let kinds = ["crawl", "mail"];
    let owners = ["alice", "bob"];
    let mut status: HashMap<String, String> = HashMap::new();
    let mut next_id = 0;
    let mut create = |rng: &mut Rng| {
        next_id += 1;
        let id = format!("j{next_id}");
        let body = json!({
            "id": id,
            "kind": kinds[rng.below(2)],
            "owner": owners[rng.below(2)],
            "metadata": { "env": if rng.below(2) == 0 { "prod" } else { "dev" } },
        });
        (id, body)
    };
    for _ in 0..24 {
        let (id, body) = create(&mut rng);
        create_job(&s, &worker, body).await;
        status.insert(id, "queued".into());
    }
    // Another tenant's jobs never show.
    create_job(&s, &token("w", "other", "worker"), json!({ "id": "j1", "kind": "crawl", "owner": "alice" })).await;

    let q = |status: &[&'static str], kind, owner, env| Query { status: status.to_vec(), kind, owner, env };
    let mut listers = vec![
        Lister::open(&s, "active", &staff, q(STATUSES_ACTIVE, None, None, None)).await,
        Lister::open(&s, "prod-crawls", &staff, q(&[], Some("crawl"), None, Some("prod"))).await,
        Lister::open(&s, "alice", &alice, q(&[], None, Some("alice"), None)).await,
    ];
    let mut sse =
        Sse::open_path(&s, &format!("/v1/sse/jobs?status=running,stalled&kind=crawl&token={staff}"), None).await;
    let sse_query = q(STATUSES_ACTIVE, Some("crawl"), None, None);
    let mut sse_held = Held::default();

    let ids: Vec<String> = status.keys().cloned().collect();
    let mut ids = ids;
    for round in 0..6 {
        // A burst of moves from two writers at once, while lists open and resume.
        let mut moves = Vec::new();
        for _ in 0..40 {
            let id = ids[rng.below(ids.len())].clone();
            let body = random_move(&mut rng, &status[&id]);
            if let Some(n) = body["status"].as_str() {
                status.insert(id.clone(), n.to_string());
            }
            moves.push((id, body));
        }
        let (a, b): (Vec<_>, Vec<_>) = moves.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let writers: Vec<_> = [a, b]
            .into_iter()
            .map(|half| {
                let (http, base, worker) = (s.http.clone(), s.url("/v1/jobs"), worker.clone());
                tokio::spawn(async move {
                    for (_, (id, body)) in half {
                        let r =
                            http.post(format!("{base}/{id}/progress")).bearer_auth(&worker).json(&body).send().await;
                        // A status the other writer already moved on from is a clean 409; nothing else fails.
                        let st = r.unwrap().status().as_u16();
                        assert!(st == 200 || st == 409, "{id}: {st}");
                    }
                })
            })
            .collect();
        match round {
            1 => {
                // Opened while the writers run: the snapshot must not race them.
                listers.push(
                    Lister::open(
                        &s,
                        "bob-done",
                        &staff,
                        q(&["completed", "failed", "cancelled"], None, Some("bob"), None),
                    )
                    .await,
                );
            }
            2 => {
                let (id, body) = create(&mut rng);
                create_job(&s, &worker, body).await;
                status.insert(id.clone(), "queued".into());
                ids.push(id);
            }
            3 => {
                // Drops, misses a burst, resumes with what it holds.
                listers[0].ws = Ws::connect(&s.ws_url(), &staff).await;
            }
            _ => {}
        }
        for w in writers {
            w.await.unwrap();
        }
        if round == 4 {
            listers[0].resume(&s, &staff).await;
        }
        // Statuses may have raced between the two writers: read them back.
        for j in all_jobs(&s, &staff).await {
            status.insert(j["id"].as_str().unwrap().to_string(), j["status"].as_str().unwrap().to_string());
        }
        for l in &mut listers {
            if !(l.name == "active" && round == 3) {
                l.drain(Duration::from_millis(50)).await;
            }
        }
    }
    settle(&s).await;
    let truth = all_jobs(&s, &staff).await;
    for l in &mut listers {
        l.drain(Duration::from_millis(1500)).await;
        assert_equal(l.name, &l.held.jobs, &l.query, &truth);
        assert!(l.held.changes > 0, "{}: no change at all", l.name);
    }
    // The SSE list: the same promises.
    while let Some(m) = sse.next(Duration::from_millis(1500)).await {
        match m.event.as_str() {
            "snapshot" => sse_held.snapshot(&m.data["jobs"]),
            "change" => sse_held.change("sse", &m.data),
            other => panic!("sse: unexpected {other}: {:?}", m.data),
        }
    }
    assert_equal("sse", &sse_held.jobs, &sse_query, &truth);
    let alice_truth: Vec<Value> = truth.iter().filter(|j| j["owner"] == "alice").cloned().collect();
    assert!(!alice_truth.is_empty());
    println!(
        "seed {seed:#x}: {} jobs, changes {:?}",
        truth.len(),
        listers.iter().map(|l| (l.name, l.held.changes)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_sends_only_the_difference_even_across_a_restart() {
    let mut s = Server::start("job-lists-resume", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    for id in ["still", "ticks", "ends"] {
        create_job(&s, &worker, json!({ "id": id, "status": "running" })).await;
    }
    let query = Query { status: STATUSES_ACTIVE.to_vec(), kind: None, owner: None, env: None };
    let l = Lister::open(&s, "resume", &staff, query).await;
    assert_eq!(l.held.jobs.len(), 3);
    let have = l.held.have();
    drop(l.ws);

    // Away: one ticks, one completes, one is new, one is untouched.
    assert_eq!(s.post(&worker, "/v1/jobs/ticks/progress", json!({ "stage": "2" })).await.0, 200);
    assert_eq!(s.post(&worker, "/v1/jobs/ends/progress", json!({ "status": "completed" })).await.0, 200);
    create_job(&s, &worker, json!({ "id": "fresh", "status": "running" })).await;
    settle(&s).await;
    s.kill9();
    s.restart().await;

    let mut ws = Ws::connect(&s.ws_url(), &staff).await;
    let ack = ws
        .request(json!({ "op": "list", "list": "l", "query": { "status": ["running", "stalled"] }, "have": have }))
        .await;
    assert_eq!((ack["op"].as_str(), ack["count"].as_u64()), (Some("ack"), Some(3)), "{ack}");
    let mut changes = Vec::new();
    while let Some(f) = ws.next(Duration::from_millis(700)).await {
        assert_ne!(f["op"], "list_snapshot", "a resume sends no snapshot");
        if f["change"] == "leave" {
            assert_eq!(f["job"]["status"], "completed", "a resume's leave says where the job went: {f}");
        }
        if f["op"] == "list_change" {
            changes.push((f["change"].as_str().unwrap().to_string(), f["id"].as_str().unwrap().to_string()));
        }
    }
    changes.sort();
    let want = [("enter", "fresh"), ("leave", "ends"), ("update", "ticks")];
    assert_eq!(changes, want.map(|(a, b)| (a.to_string(), b.to_string())), "nothing for the untouched job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_refuse_bad_queries_and_keep_customers_to_their_own_jobs() {
    let s = Server::start("job-lists-refusals", &[]).await;
    let worker = token("w", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    create_job(&s, &worker, json!({ "id": "a1", "owner": "alice", "status": "running" })).await;
    create_job(&s, &worker, json!({ "id": "b1", "owner": "bob", "status": "running" })).await;

    let mut ws = Ws::connect(&s.ws_url(), &alice).await;
    for (frame, code, says) in [
        (json!({ "op": "list", "list": "x", "query": { "status": "done" } }), "invalid_query", "query.status"),
        (json!({ "op": "list", "list": "x", "query": { "colour": "red" } }), "invalid_query", "query.colour"),
        (json!({ "op": "list", "list": "x", "query": { "updated_within": 0 } }), "invalid_query", "updated_within"),
        (json!({ "op": "list", "list": "bad name!", "query": {} }), "invalid_frame", "list"),
        (json!({ "op": "list", "list": "x", "query": { "owner": "bob" } }), "forbidden", "own jobs"),
        (json!({ "op": "list", "query": {} }), "invalid_frame", "list"),
        (json!({ "op": "unlist", "list": "never" }), "not_subscribed", "never"),
    ] {
        let r = ws.request(frame.clone()).await;
        assert_eq!(r["code"], code, "{frame}: {r}");
        assert!(r["message"].as_str().unwrap().contains(says), "{frame}: {r}");
    }
    // Without an owner, a customer's list is their own jobs.
    let ack = ws.request(json!({ "op": "list", "list": "mine", "query": { "status": "running" } })).await;
    assert_eq!(ack["count"], 1, "{ack}");
    let snap = ws.expect_op("list_snapshot").await;
    assert_eq!(snap["jobs"][0]["id"], "a1");
    // Bob's job moving sends alice nothing; hers does.
    assert_eq!(s.post(&worker, "/v1/jobs/b1/progress", json!({ "stage": "x" })).await.0, 200);
    assert_eq!(s.post(&worker, "/v1/jobs/a1/progress", json!({ "status": "completed" })).await.0, 200);
    let c = ws.expect_op("list_change").await;
    assert_eq!((c["change"].as_str(), c["id"].as_str()), (Some("leave"), Some("a1")), "{c}");
    assert_eq!(c["job"]["status"], "completed", "a leave says where the job went");
    // Unlisted: nothing more.
    let r = ws.request(json!({ "op": "unlist", "list": "mine" })).await;
    assert_eq!(r["op"], "ack", "{r}");
    create_job(&s, &worker, json!({ "id": "a2", "owner": "alice", "status": "running" })).await;
    assert!(ws.next(Duration::from_millis(500)).await.is_none(), "no changes after unlist");

    // SSE: refusals are HTTP errors before the stream.
    for (path, st, code) in [
        ("/v1/sse/jobs?status=done", 400, "invalid_query"),
        ("/v1/sse/jobs?tag=nocolon", 400, "invalid_query"),
        ("/v1/sse/jobs?owner=bob", 403, "forbidden"),
        ("/v1/sse/jobs?colour=red", 400, "invalid_query"),
    ] {
        let (got, body) = s.get(&alice, path).await;
        assert_eq!((got, body["error"]["code"].as_str()), (st, Some(code)), "{path}: {body}");
    }
    let (got, _) = s.get("nope", "/v1/sse/jobs").await;
    assert_eq!(got, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ages_out_of_updated_within_leaves_with_its_id() {
    let s = Server::start("job-lists-window", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({ "id": "old", "status": "running" })).await;
    let mut ws = Ws::connect(&s.ws_url(), &staff).await;
    let ack = ws.request(json!({ "op": "list", "list": "recent", "query": { "updated_within": 2 } })).await;
    assert_eq!(ack["count"], 1, "{ack}");
    ws.expect_op("list_snapshot").await;
    let left =
        tokio::time::timeout(Duration::from_secs(5), ws.expect_op("list_change")).await.expect("a leave in time");
    assert_eq!((left["change"].as_str(), left["id"].as_str()), (Some("leave"), Some("old")), "{left}");
    assert!(left.get("job").is_none(), "aged out: id only: {left}");
    // A change brings it back.
    assert_eq!(s.post(&worker, "/v1/jobs/old/progress", json!({ "stage": "again" })).await.0, 200);
    let back = ws.expect_op("list_change").await;
    assert_eq!((back["change"].as_str(), back["id"].as_str()), (Some("enter"), Some("old")), "{back}");
}
