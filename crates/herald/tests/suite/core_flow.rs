//! Issue 2, end to end over HTTP: the seed 000 worker flow read back through
//! jobs, tasks, artifacts, events and notifications; idempotency; the job
//! lifecycle rules; stall detection; and the operational endpoints.

use crate::harness::{create_job, token, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Epoch milliseconds of an RFC 3339 field.
pub fn ms(v: &Value) -> i64 {
    herald::model::time::parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
        .unwrap_or_else(|| panic!("not RFC 3339: {v}"))
}

/// Every event of `topic` readable by `tok`, paged through `/v1/events` with `since`.
pub async fn all_events(s: &Server, tok: &str, topic: &str) -> Vec<Value> {
    events_after(s, tok, topic, 0).await
}

/// Every event of `topic` after `since`.
pub async fn events_after(s: &Server, tok: &str, topic: &str, mut since: u64) -> Vec<Value> {
    crate::harness::settle(s).await;
    let mut out = Vec::new();
    loop {
        let (st, page) = s.get(tok, &format!("/v1/events?topic={topic}&since={since}&limit=1000")).await;
        assert_eq!(st, 200, "events {topic}: {page}");
        assert_eq!(page["resync"], false, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            assert_eq!(page["next"].as_u64().unwrap(), since, "an empty page keeps the cursor");
            return out;
        }
        let next = page["next"].as_u64().unwrap();
        assert_eq!(next, events.last().unwrap()["position"].as_u64().unwrap(), "next is the last position");
        since = next;
        out.extend(events);
    }
}

/// Positions of events, asserting they strictly increase.
pub fn strictly_increasing(events: &[Value]) -> Vec<u64> {
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().expect("position")).collect();
    for w in positions.windows(2) {
        assert!(w[0] < w[1], "positions must strictly increase: {} then {}", w[0], w[1]);
    }
    positions
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The error code of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

/// The newest position the log holds for `topic` (0 when empty).
pub async fn head_of(s: &Server, tok: &str, topic: &str) -> u64 {
    all_events(s, tok, topic).await.last().map(|e| e["position"].as_u64().unwrap()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_worker_flow_reads_back_through_jobs_tasks_artifacts_events_and_notifications() {
    let s = Server::start("seed-flow", &[]).await;
    let worker = token("worker-1", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let owner = token("cust-1", "acme", "customer");

    // The job is created for its owner; nothing has started yet.
    let (st, job) = s
        .post(
            &worker,
            "/v1/jobs",
            json!({"id": "dirbolt-1", "kind": "directory_submission", "title": "Submit to 20 directories",
               "owner": "cust-1", "total": 20, "metadata": {"package": "growth"}}),
        )
        .await;
    assert_eq!(st, 201, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["version"], 1);
    assert_eq!(job["progress"], 0.0);
    assert_eq!(job["owner"], "cust-1");
    assert_eq!(job["tenant"], "acme");
    assert!(job["started_at"].is_null() && job["finished_at"].is_null(), "{job}");
    let created_at = ms(&job["created_at"]);

    // reportJobStarted
    let (st, job) =
        s.post(&worker, "/v1/jobs/dirbolt-1/progress", json!({"status": "running", "stage": "submitting"})).await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["status"], "running");
    assert_eq!(job["version"], 2);
    let started_at = ms(&job["started_at"]);
    assert!(started_at >= created_at);

    // Twenty directories, one task each; every fourth one fails.
    let mut last_version = 2;
    for i in 1..=20 {
        let name = format!("Directory {i}");
        let path = format!("/v1/jobs/dirbolt-1/tasks/dir-{i}");
        let (st, task) = s.put(&worker, &path, json!({"name": name, "status": "running"})).await;
        assert_eq!(st, 201, "first upsert creates: {task}");
        assert_eq!((task["status"].as_str(), task["attempts"].as_u64()), (Some("running"), Some(1)));
        let (st, p) = s.post(&worker, "/v1/jobs/dirbolt-1/progress", json!({"current_item": name})).await;
        assert_eq!(st, 200, "{p}");
        let failing = i % 4 == 0;
        let body = if failing {
            json!({"status": "failed", "error": "captcha required"})
        } else {
            json!({"status": "succeeded"})
        };
        let (st, task) = s.put(&worker, &path, body).await;
        assert_eq!(st, 200, "second upsert updates: {task}");
        assert!(!task["finished_at"].is_null(), "{task}");
        if failing {
            let (st, p) = s
                .post(&worker, "/v1/jobs/dirbolt-1/progress", json!({"error": format!("{name}: captcha required")}))
                .await;
            assert_eq!(st, 200, "{p}");
        }
        let (st, job) = s.get(&worker, "/v1/jobs/dirbolt-1").await;
        assert_eq!(st, 200);
        let v = job["version"].as_u64().unwrap();
        assert!(v > last_version, "version increases with every change: {v} after {last_version}");
        last_version = v;
        // Counts follow the tasks; percent follows the counts.
        let done = i as u64;
        assert_eq!(job["succeeded"].as_u64().unwrap() + job["failed"].as_u64().unwrap(), done, "{job}");
        assert_eq!(job["failed"].as_u64().unwrap(), done / 4, "{job}");
        assert_eq!(job["progress"].as_f64().unwrap(), done as f64 * 5.0, "{job}");
        assert_eq!(job["current_item"], name);
        assert_eq!(job["total"], 20);
    }

    for (kind, payload) in
        [("screenshot", json!({"url": "https://cdn.example/shot-1.png"})), ("label", json!({"text": "listed"}))]
    {
        let (st, a) = s.post(&worker, "/v1/jobs/dirbolt-1/artifacts", json!({"kind": kind, "payload": payload})).await;
        assert_eq!(st, 201, "{a}");
        assert_eq!(a["payload"], payload);
    }

    // reportJobCompleted
    let (st, job) =
        s.post(&worker, "/v1/jobs/dirbolt-1/progress", json!({"status": "completed", "stage": "done"})).await;
    assert_eq!(st, 200, "{job}");

    // Read back as staff and as the owner: the same job.
    let (st, job) = s.get(&staff, "/v1/jobs/dirbolt-1").await;
    assert_eq!(st, 200);
    let (st, as_owner) = s.get(&owner, "/v1/jobs/dirbolt-1").await;
    assert_eq!(st, 200);
    assert_eq!(job, as_owner);
    assert_eq!(job["status"], "completed");
    assert_eq!(
        (job["total"].as_u64(), job["succeeded"].as_u64(), job["failed"].as_u64()),
        (Some(20), Some(15), Some(5))
    );
    assert_eq!(job["progress"], 100.0);
    assert_eq!(job["stage"], "done");
    assert_eq!(job["current_item"], "Directory 20");
    assert_eq!(job["metadata"], json!({"package": "growth"}));
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 5, "{job}");
    assert_eq!(errors[0]["message"], "Directory 4: captcha required");
    assert_eq!(ms(&job["started_at"]), started_at, "started_at is set once");
    let finished_at = ms(&job["finished_at"]);
    assert!(finished_at >= started_at && ms(&job["updated_at"]) >= finished_at, "{job}");
    let final_version = job["version"].as_u64().unwrap();
    assert!(final_version > last_version);

    let (st, tasks) = s.get(&owner, "/v1/jobs/dirbolt-1/tasks").await;
    assert_eq!(st, 200);
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 20);
    for (i, t) in tasks.iter().enumerate() {
        let n = i + 1;
        assert_eq!(t["id"], format!("dir-{n}"), "tasks come back in creation order");
        assert_eq!(t["job_id"], "dirbolt-1");
        assert_eq!(t["name"], format!("Directory {n}"));
        assert_eq!(t["attempts"], 1);
        if n % 4 == 0 {
            assert_eq!((t["status"].as_str(), t["error"].as_str()), (Some("failed"), Some("captcha required")));
        } else {
            assert_eq!(t["status"], "succeeded");
            assert!(t["error"].is_null());
        }
        assert!(ms(&t["finished_at"]) >= ms(&t["started_at"]));
    }

    let (st, arts) = s.get(&owner, "/v1/jobs/dirbolt-1/artifacts").await;
    assert_eq!(st, 200);
    let kinds: Vec<&str> = arts["artifacts"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["screenshot", "label"]);

    // The job's topic replays the whole story, in order.
    let events = all_events(&s, &owner, "job:dirbolt-1").await;
    strictly_increasing(&events);
    let ts = types(&events);
    assert_eq!(ts.first(), Some(&"job.created"));
    assert_eq!(ts.last(), Some(&"job.completed"));
    let count = |t: &str| ts.iter().filter(|x| **x == t).count();
    assert_eq!(count("task.created"), 20);
    assert_eq!(count("task.updated"), 20);
    assert_eq!(count("artifact.created"), 2);
    assert_eq!(count("job.completed"), 1);
    // Each job event carries the job as it became: versions 1, 2, 3, ... with no change unannounced.
    let versions: Vec<u64> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("job."))
        .map(|e| e["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=final_version).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(e["topic"], "job:dirbolt-1");
        assert!(e["time"].is_string());
    }
    // A task's running→succeeded is announced before the job's counts move.
    let first_done = ts.iter().position(|t| *t == "task.updated").unwrap();
    assert_eq!(events[first_done]["data"]["status"], "succeeded");
    assert_eq!(events[first_done + 1]["type"], "job.updated");
    assert_eq!(events[first_done + 1]["data"]["succeeded"], 1);

    // The tenant-wide and per-owner topics carry the job's changes (not its tasks).
    let tenant_wide = all_events(&s, &staff, "jobs").await;
    strictly_increasing(&tenant_wide);
    assert!(tenant_wide.iter().all(|e| e["type"].as_str().unwrap().starts_with("job.")));
    assert_eq!(tenant_wide.len(), versions.len());
    let mine = all_events(&s, &owner, "jobs:owner:cust-1").await;
    assert_eq!(mine.len(), versions.len());

    // The owner was told the job completed.
    let (st, list) = s.get(&owner, "/v1/notifications").await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["unread_count"], 1, "{list}");
    let n = &list["notifications"][0];
    assert_eq!(
        (n["level"].as_str(), n["job_id"].as_str(), n["read"].as_bool()),
        (Some("success"), Some("dirbolt-1"), Some(false))
    );
    assert_eq!(n["recipient"], "cust-1");
    assert!(n["title"].as_str().unwrap().contains("completed"), "{n}");
    assert!(n["body"].as_str().unwrap().contains("15 succeeded, 5 failed"), "{n}");
    let nid = n["id"].as_str().unwrap().to_string();
    // Nobody else was.
    let (_, staff_list) = s.get(&staff, "/v1/notifications").await;
    assert_eq!(staff_list["unread_count"], 0);

    let (st, read) = s.post(&owner, &format!("/v1/notifications/{nid}/read"), json!({})).await;
    assert_eq!(st, 200, "{read}");
    assert_eq!(read["read"], true);
    assert!(read["read_at"].is_string());
    let (_, list) = s.get(&owner, "/v1/notifications?unread=true").await;
    assert_eq!((list["unread_count"].as_u64(), list["notifications"].as_array().unwrap().len()), (Some(0), 0));

    // Two more, sent by a service; read-all clears them.
    let service = token("backend", "acme", "service");
    for title in ["Invoice ready", "Directory listing verified"] {
        let (st, n) = s
            .post(
                &service,
                "/v1/notifications",
                json!({"recipient": "cust-1", "title": title, "level": "info", "link": "/billing"}),
            )
            .await;
        assert_eq!(st, 201, "{n}");
    }
    let (_, list) = s.get(&owner, "/v1/notifications").await;
    assert_eq!(list["unread_count"], 2);
    assert_eq!(list["notifications"].as_array().unwrap().len(), 3);
    assert_eq!(list["notifications"][0]["title"], "Directory listing verified", "newest first");
    let (st, r) = s.post(&owner, "/v1/notifications/read-all", json!({})).await;
    assert_eq!((st, r["marked_read"].as_u64()), (200, Some(2)), "{r}");
    let (_, list) = s.get(&owner, "/v1/notifications").await;
    assert_eq!(list["unread_count"], 0);
    assert!(list["notifications"].as_array().unwrap().iter().all(|n| n["read"] == true));
    let (st, r) = s.post(&owner, "/v1/notifications/read-all", json!({})).await;
    assert_eq!((st, r["marked_read"].as_u64()), (200, Some(0)));

    let user_events = all_events(&s, &owner, "user:cust-1").await;
    strictly_increasing(&user_events);
    assert_eq!(
        types(&user_events),
        [
            "notification.created",
            "notification.read",
            "notification.created",
            "notification.created",
            "notification.read",
            "notification.read"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_filters_and_pages_with_a_cursor() {
    let s = Server::start("job-list", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    for i in 0..12 {
        let owner = if i % 3 == 0 { "alice" } else { "bob" };
        let kind = if i % 2 == 0 { "scan" } else { "submit" };
        create_job(&s, &worker, json!({"id": format!("j{i:02}"), "owner": owner, "kind": kind})).await;
    }
    let (st, _) = s.post(&worker, "/v1/jobs/j05/progress", json!({"status": "running"})).await;
    assert_eq!(st, 200);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=5&cursor={c}"),
            None => "/v1/jobs?limit=5".to_string(),
        };
        let (st, page) = s.get(&staff, &path).await;
        assert_eq!(st, 200, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 5);
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("j{i:02}")).collect();
    assert_eq!(seen, expected, "newest first, every job exactly once");

    let ids = |v: &Value| -> BTreeSet<String> {
        v["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, v) = s.get(&staff, "/v1/jobs?status=running").await;
    assert_eq!(ids(&v), BTreeSet::from(["j05".to_string()]));
    let (_, v) = s.get(&staff, "/v1/jobs?kind=scan&owner=alice").await;
    assert_eq!(ids(&v), ["j00", "j06"].iter().map(|s| s.to_string()).collect());
    let (_, v) = s.get(&token("alice", "acme", "customer"), "/v1/jobs?limit=500").await;
    assert_eq!(ids(&v), ["j00", "j03", "j06", "j09"].iter().map(|s| s.to_string()).collect());
    let (_, j05) = s.get(&staff, "/v1/jobs/j05").await;
    let (_, v) = s.get(&staff, &format!("/v1/jobs?updated_after={}", j05["created_at"].as_str().unwrap())).await;
    assert!(ids(&v).contains("j05"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_replay_returns_the_first_answer_and_writes_nothing() {
    let s = Server::start("idempotency", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let send = |m: Method, path: &'static str, body: Value, key: &'static str| {
        let s = &s;
        let worker = worker.clone();
        async move { s.send(m, &worker, path, Some(body), Some(key)).await }
    };

    // A create without an id: the replay must not make a second job.
    let body = json!({"kind": "scan", "owner": "alice", "total": 3});
    let first = send(Method::POST, "/v1/jobs", body.clone(), "create-1").await;
    assert_eq!(first.0, 201, "{}", first.1);
    let id = first.1["id"].as_str().unwrap().to_string();
    let head = head_of(&s, &staff, "jobs").await;
    let replay = send(Method::POST, "/v1/jobs", body.clone(), "create-1").await;
    assert_eq!(replay, first, "same status, same body");
    let (_, list) = s.get(&staff, "/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "one job, not two");
    assert_eq!(head_of(&s, &staff, "jobs").await, head, "no new event");

    // A progress report replayed after later changes still answers as it did first.
    let p1 = s
        .send(
            Method::POST,
            &worker,
            &format!("/v1/jobs/{id}/progress"),
            Some(json!({"status": "running", "succeeded": 1})),
            Some("p-1"),
        )
        .await;
    assert_eq!(p1.0, 200, "{}", p1.1);
    let p2 = s.post(&worker, &format!("/v1/jobs/{id}/progress"), json!({"succeeded": 2})).await;
    assert_eq!(p2.0, 200);
    let topic = format!("job:{id}");
    let before = all_events(&s, &staff, &topic).await;
    let replay = s
        .send(
            Method::POST,
            &worker,
            &format!("/v1/jobs/{id}/progress"),
            Some(json!({"status": "running", "succeeded": 1})),
            Some("p-1"),
        )
        .await;
    assert_eq!(replay, p1);
    let (_, job) = s.get(&staff, &format!("/v1/jobs/{id}")).await;
    assert_eq!(job["version"], p2.1["version"], "version unchanged by the replay");
    assert_eq!(job["succeeded"], 2, "the replay did not set the count back");
    assert_eq!(all_events(&s, &staff, &topic).await, before, "no new event");

    // The same key with a different body (or another path) is refused and changes nothing.
    let reused = s
        .send(Method::POST, &worker, &format!("/v1/jobs/{id}/progress"), Some(json!({"succeeded": 3})), Some("p-1"))
        .await;
    assert_eq!(reused.0, 422, "{}", reused.1);
    assert_eq!(code(&reused.1), "idempotency_key_reused");
    let reused = send(Method::POST, "/v1/jobs", json!({"kind": "other"}), "p-1").await;
    assert_eq!((reused.0, code(&reused.1)), (422, "idempotency_key_reused"));
    assert_eq!(all_events(&s, &staff, &topic).await, before);

    // Task upserts, artifacts and notifications replay too.
    let t1 = s
        .send(Method::PUT, &worker, &format!("/v1/jobs/{id}/tasks/t1"), Some(json!({"status": "running"})), Some("t-1"))
        .await;
    assert_eq!(t1.0, 201);
    let a1 = s
        .send(
            Method::POST,
            &worker,
            &format!("/v1/jobs/{id}/artifacts"),
            Some(json!({"kind": "ocr", "payload": {"text": "hi"}})),
            Some("a-1"),
        )
        .await;
    assert_eq!(a1.0, 201);
    let before = all_events(&s, &staff, &topic).await;
    let t1r = s
        .send(Method::PUT, &worker, &format!("/v1/jobs/{id}/tasks/t1"), Some(json!({"status": "running"})), Some("t-1"))
        .await;
    assert_eq!(t1r, t1, "task replay answers 201 again with the same body");
    let a1r = s
        .send(
            Method::POST,
            &worker,
            &format!("/v1/jobs/{id}/artifacts"),
            Some(json!({"kind": "ocr", "payload": {"text": "hi"}})),
            Some("a-1"),
        )
        .await;
    assert_eq!(a1r, a1);
    let (_, arts) = s.get(&staff, &format!("/v1/jobs/{id}/artifacts")).await;
    assert_eq!(arts["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(all_events(&s, &staff, &topic).await, before);

    let n1 = send(Method::POST, "/v1/notifications", json!({"recipient": "alice", "title": "hello"}), "n-1").await;
    assert_eq!(n1.0, 201);
    let n1r = send(Method::POST, "/v1/notifications", json!({"recipient": "alice", "title": "hello"}), "n-1").await;
    assert_eq!(n1r, n1);
    let (_, list) = s.get(&token("alice", "acme", "customer"), "/v1/notifications").await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 1);

    // Keys belong to their caller: another worker using the same key is a different request.
    let other = token("w2", "acme", "worker");
    let (st, _) = s.send(Method::POST, &other, "/v1/jobs", Some(json!({"kind": "x"})), Some("create-1")).await;
    assert_eq!(st, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_job_id_returns_the_existing_job_and_a_different_body_conflicts() {
    let s = Server::start("same-id", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let body = json!({"id": "job-7", "kind": "scan", "owner": "alice", "total": 4, "tasks": [{"id": "a"}, {"id": "b", "status": "running"}]});
    let (st, first) = s.post(&worker, "/v1/jobs", body.clone()).await;
    assert_eq!(st, 201, "{first}");
    assert_eq!(first["status"], "running", "a running task starts a queued job");
    let events = all_events(&s, &staff, "job:job-7").await;
    assert_eq!(types(&events), ["job.created", "task.created", "task.created"]);

    let (st, again) = s.post(&worker, "/v1/jobs", body.clone()).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again, first);
    let mut different = body.clone();
    different["total"] = json!(5);
    let (st, err) = s.post(&worker, "/v1/jobs", different).await;
    assert_eq!((st, code(&err)), (409, "conflict"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("job-7"), "{err}");
    assert_eq!(all_events(&s, &staff, "job:job-7").await, events, "neither wrote anything");
    let (_, job) = s.get(&staff, "/v1/jobs/job-7").await;
    assert_eq!(job, first);

    // The same id in another tenant is another job.
    let (st, _) = s.post(&token("w", "other", "worker"), "/v1/jobs", json!({"id": "job-7"})).await;
    assert_eq!(st, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_refused_naming_the_current_status_and_write_nothing() {
    let s = Server::start("transitions", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");

    #[allow(clippy::too_many_arguments)]
    async fn refused(
        s: &Server,
        tok: &str,
        staff: &str,
        id: &str,
        path: &str,
        body: Value,
        status: u16,
        want: &str,
        current: &str,
    ) {
        let (_, before) = s.get(staff, &format!("/v1/jobs/{id}")).await;
        let events_before = all_events(s, staff, &format!("job:{id}")).await;
        let (st, err) = if path.contains("/tasks/") {
            s.put(tok, path, body.clone()).await
        } else {
            s.post(tok, path, body.clone()).await
        };
        assert_eq!((st, code(&err)), (status, want), "{path} {body}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(current), "message names {current}: {err}");
        let (_, after) = s.get(staff, &format!("/v1/jobs/{id}")).await;
        assert_eq!(after, before, "nothing changed");
        assert_eq!(all_events(s, staff, &format!("job:{id}")).await, events_before, "nothing appended");
    }

    create_job(&s, &worker, json!({"id": "q"})).await;
    let p = "/v1/jobs/q/progress";
    refused(&s, &worker, &staff, "q", p, json!({"status": "completed"}), 409, "illegal_transition", "queued").await;
    refused(&s, &worker, &staff, "q", p, json!({"status": "stalled"}), 409, "illegal_transition", "queued").await;
    // A refused transition takes the rest of the report down with it.
    refused(
        &s,
        &worker,
        &staff,
        "q",
        p,
        json!({"status": "completed", "succeeded": 3, "stage": "x"}),
        409,
        "illegal_transition",
        "queued",
    )
    .await;

    let (st, _) = s.post(&worker, p, json!({"status": "running"})).await;
    assert_eq!(st, 200);
    refused(&s, &worker, &staff, "q", p, json!({"status": "queued"}), 409, "illegal_transition", "running").await;
    let (st, j) = s.post(&worker, p, json!({"status": "running", "stage": "again"})).await;
    assert_eq!((st, j["status"].as_str()), (200, Some("running")), "repeating the status is fine");
    let (st, _) = s.post(&worker, p, json!({"status": "completed"})).await;
    assert_eq!(st, 200);

    // Terminal states are final: no status, no counts, no tasks.
    for to in ["running", "queued", "stalled", "failed", "cancelled", "completed"] {
        refused(&s, &worker, &staff, "q", p, json!({"status": to}), 409, "illegal_transition", "completed").await;
    }
    refused(&s, &worker, &staff, "q", p, json!({"succeeded": 9}), 409, "illegal_transition", "completed").await;
    refused(&s, &worker, &staff, "q", p, json!({"stage": "rewrite history"}), 409, "illegal_transition", "completed")
        .await;
    refused(
        &s,
        &worker,
        &staff,
        "q",
        "/v1/jobs/q/tasks/t1",
        json!({"status": "running"}),
        409,
        "job_finished",
        "completed",
    )
    .await;

    // Failed and cancelled are final too.
    for end in ["failed", "cancelled"] {
        let id = format!("ends-{end}");
        create_job(&s, &worker, json!({"id": id, "status": "running"})).await;
        let path = format!("/v1/jobs/{id}/progress");
        let (st, j) = s.post(&worker, &path, json!({"status": end, "error": "boom"})).await;
        assert_eq!(st, 200, "{j}");
        assert!(!j["finished_at"].is_null());
        refused(&s, &worker, &staff, &id, &path, json!({"status": "running"}), 409, "illegal_transition", end).await;
        refused(&s, &worker, &staff, &id, &format!("/v1/jobs/{id}/tasks/x"), json!({}), 409, "job_finished", end).await;
    }
    let failed = all_events(&s, &staff, "job:ends-failed").await;
    assert_eq!(types(&failed).last(), Some(&"job.failed"));
    let cancelled = all_events(&s, &staff, "job:ends-cancelled").await;
    assert_eq!(types(&cancelled).last(), Some(&"job.cancelled"));

    // Unknown jobs are 404 for every write.
    let (st, e) = s.post(&worker, "/v1/jobs/nope/progress", json!({"status": "running"})).await;
    assert_eq!((st, code(&e)), (404, "not_found"));
    let (st, e) = s.put(&worker, "/v1/jobs/nope/tasks/t", json!({})).await;
    assert_eq!((st, code(&e)), (404, "not_found"));
    let (st, e) = s.post(&worker, "/v1/jobs/nope/artifacts", json!({"kind": "k", "payload": {}})).await;
    assert_eq!((st, code(&e)), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_running_job_stalls_notifies_its_owner_and_recovers_on_the_next_report() {
    let s = Server::start("stall", &["--stall-timeout", "1s"]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let owner = token("alice", "acme", "customer");
    create_job(&s, &worker, json!({"id": "silent", "owner": "alice", "status": "running"})).await;
    create_job(&s, &worker, json!({"id": "waiting", "owner": "alice"})).await;

    // Long-poll the job's topic until the stall arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since = 0;
    let stalled = loop {
        assert!(Instant::now() < deadline, "the job never stalled; log:\n{}", s.log());
        let (st, page) = s.get(&owner, &format!("/v1/events?topic=job:silent&since={since}&wait=5")).await;
        assert_eq!(st, 200, "{page}");
        since = page["next"].as_u64().unwrap();
        if let Some(e) = page["events"].as_array().unwrap().iter().find(|e| e["type"] == "job.stalled") {
            break e.clone();
        }
    };
    assert_eq!(stalled["data"]["status"], "stalled");
    let (_, job) = s.get(&staff, "/v1/jobs/silent").await;
    assert_eq!(job["status"], "stalled");
    assert!(job["finished_at"].is_null(), "stalled is not finished");
    let (_, waiting) = s.get(&staff, "/v1/jobs/waiting").await;
    assert_eq!(waiting["status"], "queued", "only running jobs stall");

    let (_, list) = s.get(&owner, "/v1/notifications").await;
    let n = &list["notifications"][0];
    assert_eq!((n["level"].as_str(), n["job_id"].as_str()), (Some("warning"), Some("silent")), "{list}");
    assert!(n["title"].as_str().unwrap().contains("stalled"));

    // The worker is alive again: its next report makes the job running.
    let (st, job) = s.post(&worker, "/v1/jobs/silent/progress", json!({"current_item": "item 3"})).await;
    assert_eq!((st, job["status"].as_str()), (200, Some("running")), "{job}");
    let after = events_after(&s, &staff, "job:silent", stalled["position"].as_u64().unwrap()).await;
    assert_eq!(after[0]["type"], "job.updated");
    assert_eq!(after[0]["data"]["status"], "running");

    // Silent again, it stalls again; a task upsert revives it like a report.
    let mut since = stalled["position"].as_u64().unwrap();
    loop {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "the job never stalled again");
        let (st, page) = s.get(&owner, &format!("/v1/events?topic=job:silent&since={since}&wait=5")).await;
        assert_eq!(st, 200, "{page}");
        since = page["next"].as_u64().unwrap();
        if page["events"].as_array().unwrap().iter().any(|e| e["type"] == "job.stalled") {
            break;
        }
    }
    let (st, _) = s.put(&worker, "/v1/jobs/silent/tasks/t1", json!({"status": "running"})).await;
    assert_eq!(st, 201);
    let (_, job) = s.get(&staff, "/v1/jobs/silent").await;
    assert_eq!(job["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer_and_openapi_lists_every_route() {
    let s = Server::start("ops", &[]).await;
    let (st, v) = s.get("", "/healthz").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, v) = s.get("", "/readyz").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ready")));

    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({"id": "m1"})).await;
    let (_, _) = s.get(&worker, "/v1/jobs/m1").await;
    let (st, metrics) = s.get("", "/metrics").await;
    assert_eq!(st, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    for name in [
        "herald_http_requests_total",
        "herald_http_request_seconds",
        "herald_commit_batch_size",
        "herald_commit_seconds",
        "herald_events_appended_total",
        "herald_conflated_total",
        "herald_resumes_total",
        "herald_queue_waiting",
        "herald_queue_lag_max",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(metrics.contains("route=\"/v1/jobs/{id}\""), "requests are labelled by route, not by path:\n{metrics}");
    assert!(!metrics.contains("/v1/jobs/m1"), "no per-id series");

    // Every /v1 route the router declares is in the OpenAPI document.
    let (st, doc) = s.get("", "/v1/openapi.json").await;
    assert_eq!(st, 200);
    let documented: BTreeSet<String> = doc["paths"].as_object().expect("paths").keys().cloned().collect();
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/transport/http/mod.rs")).unwrap();
    let mut routed: HashMap<String, ()> = HashMap::new();
    for part in source.split(".route(\"").skip(1) {
        let path = part.split('"').next().unwrap().to_string();
        routed.insert(path, ());
    }
    assert!(routed.len() >= 15, "found the router's routes: {routed:?}");
    for path in routed.keys().filter(|p| p.starts_with("/v1/")) {
        assert!(documented.contains(path), "{path} is routed but missing from /v1/openapi.json ({documented:?})");
    }
    for path in &documented {
        assert!(routed.contains_key(path), "{path} is documented but not routed");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object(), "{}", doc["components"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_several_topics_come_once_each_and_limit_counts_events() {
    let s = Server::start("multi-topic", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({"id": "x", "owner": "alice"})).await;
    create_job(&s, &worker, json!({"id": "y", "owner": "bob"})).await;
    for i in 1..=5 {
        let (st, _) = s.post(&worker, "/v1/jobs/x/progress", json!({"succeeded": i})).await;
        assert_eq!(st, 200);
        let (st, _) = s.put(&worker, &format!("/v1/jobs/x/tasks/t{i}"), json!({})).await;
        assert_eq!(st, 201);
    }
    // x's job events are in all three topics, its task events only in job:x, y's only in jobs.
    let topics = "jobs,job:x,jobs:owner:alice";
    let all = all_events(&s, &staff, topics).await;
    let positions = strictly_increasing(&all);
    let x_job = all_events(&s, &staff, "jobs:owner:alice").await.len();
    let x_all = all_events(&s, &staff, "job:x").await.len();
    assert_eq!(all.len(), x_all + 1, "each event once: all of job:x plus y's creation");
    assert!(x_job >= 6);
    // Pages of `limit` events each, however many of the topics an event is in.
    let mut since = 0;
    let mut paged = Vec::new();
    loop {
        let (st, page) = s.get(&staff, &format!("/v1/events?topic={topics}&since={since}&limit=3")).await;
        assert_eq!(st, 200);
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        if paged.len() + 3 <= all.len() {
            assert_eq!(events.len(), 3, "a full page while more remain: {page}");
        }
        since = page["next"].as_u64().unwrap();
        paged.extend(events.iter().map(|e| e["position"].as_u64().unwrap()));
    }
    assert_eq!(paged, positions);
}
