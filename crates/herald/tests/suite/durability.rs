//! Guarantees 1 and 2: an acknowledged write is on disk (it survives `kill -9`),
//! concurrent writers lose nothing, and the log comes out strictly ordered.

use super::core_flow::{all_events, code, strictly_increasing, types};
use crate::harness::{create_job, token, Server};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_restart() {
    let s = Server::start("kill9", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");

    create_job(&s, &worker, json!({"id": "durable", "owner": "alice", "total": 150, "status": "running"})).await;
    // Eight more jobs written concurrently, so acknowledged writes share commits.
    let mut handles = Vec::new();
    let s = Arc::new(s);
    for j in 0..8 {
        let (s, worker) = (Arc::clone(&s), worker.clone());
        handles.push(tokio::spawn(async move {
            let id = format!("side-{j}");
            create_job(&s, &worker, json!({"id": id, "total": 40})).await;
            for i in 1..=40u64 {
                let (st, v) = s.post(&worker, &format!("/v1/jobs/{id}/progress"), json!({"succeeded": i})).await;
                assert_eq!(st, 200, "{v}");
            }
        }));
    }
    for i in 1..=150u64 {
        let body = json!({"succeeded": i, "current_item": format!("item {i}"), "metadata": {"last": i}});
        let (st, v) = s.post(&worker, "/v1/jobs/durable/progress", body).await;
        assert_eq!(st, 200, "{v}");
    }
    for h in handles {
        h.await.unwrap();
    }
    let (st, t) = s.put(&worker, "/v1/jobs/durable/tasks/last", json!({"status": "failed", "error": "gone"})).await;
    assert_eq!(st, 201, "{t}");
    // The last acknowledged write; kill -9 right after it.
    let (st, done) = s.post(&worker, "/v1/jobs/durable/progress", json!({"status": "completed"})).await;
    assert_eq!(st, 200, "{done}");
    let mut s = Arc::try_unwrap(s).ok().expect("one owner");
    s.kill9();
    s.restart().await;

    let (st, job) = s.get(&staff, "/v1/jobs/durable").await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job, done, "the job is exactly as last acknowledged");
    assert_eq!(job["succeeded"], 150);
    assert_eq!(job["metadata"], json!({"last": 150}));
    assert_eq!(job["version"], 152, "created + 150 reports + completed (reported counts ignore the task)");
    for j in 0..8 {
        let (_, side) = s.get(&staff, &format!("/v1/jobs/side-{j}")).await;
        assert_eq!((side["succeeded"].as_u64(), side["version"].as_u64()), (Some(40), Some(41)), "{side}");
    }
    let (_, tasks) = s.get(&staff, "/v1/jobs/durable/tasks").await;
    assert_eq!(tasks["tasks"][0]["error"], "gone");
    let (_, n) = s.get(&token("alice", "acme", "customer"), "/v1/notifications").await;
    assert_eq!(n["unread_count"], 1, "the completion notification committed with the completion");

    let events = all_events(&s, &staff, "job:durable").await;
    strictly_increasing(&events);
    let ts = types(&events);
    assert_eq!(ts.len(), 153, "{ts:?}");
    assert_eq!((ts[0], ts[151], ts[152]), ("job.created", "task.created", "job.completed"));
    let whole = all_events(&s, &staff, "jobs").await;
    let last = strictly_increasing(&whole).last().copied().unwrap();
    assert_eq!(whole.len(), 152 + 8 * 41);

    // Positions keep increasing after the restart: nothing is reused.
    let (st, _) = s.post(&worker, "/v1/jobs", json!({"id": "after"})).await;
    assert_eq!(st, 201);
    let after = all_events(&s, &staff, "job:after").await;
    assert!(after[0]["position"].as_u64().unwrap() > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_workers_lose_nothing_and_the_log_is_strictly_ordered_without_gaps() {
    const WORKERS: usize = 50;
    const UPDATES: u64 = 100;
    let s = Arc::new(Server::start("concurrent", &[]).await);
    let staff = token("sam", "acme", "staff");

    // A reader long-polls the tenant-wide topic while the writers run, as a
    // dashboard would; what it sees must equal the log read afterwards.
    let reader = {
        let (s, staff) = (Arc::clone(&s), staff.clone());
        tokio::spawn(async move {
            let mut since = 0u64;
            let mut seen = Vec::new();
            let want = WORKERS * (UPDATES as usize + 1);
            while seen.len() < want {
                let (st, page) =
                    s.get(&staff, &format!("/v1/events?topic=jobs&since={since}&limit=1000&wait=10")).await;
                assert_eq!(st, 200, "{page}");
                let events = page["events"].as_array().unwrap();
                since = page["next"].as_u64().unwrap();
                seen.extend(events.iter().cloned());
            }
            seen
        })
    };

    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            let worker = token(&format!("worker-{w}"), "acme", "worker");
            let id = format!("c-{w:02}");
            create_job(&s, &worker, json!({"id": id, "total": UPDATES, "status": "running"})).await;
            for i in 1..=UPDATES {
                let (st, v) = s.post(&worker, &format!("/v1/jobs/{id}/progress"), json!({"succeeded": i})).await;
                assert_eq!(st, 200, "{v}");
                assert_eq!(v["version"].as_u64(), Some(i + 1), "each acknowledged report is one version");
            }
        }));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(240), h).await.expect("writers finish").unwrap();
    }
    let live = tokio::time::timeout(Duration::from_secs(180), reader).await.expect("reader finishes").unwrap();

    let all = all_events(&s, &staff, "jobs").await;
    let positions = strictly_increasing(&all);
    assert_eq!(all.len(), WORKERS * (UPDATES as usize + 1));
    assert_eq!(positions.iter().collect::<HashSet<_>>().len(), positions.len(), "no duplicates");
    assert_eq!(live, all, "the live long-poller saw exactly the log, in order");

    let mut per_job: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &all {
        per_job
            .entry(e["data"]["id"].as_str().unwrap().to_string())
            .or_default()
            .push(e["data"]["succeeded"].as_u64().unwrap());
    }
    assert_eq!(per_job.len(), WORKERS);
    for (id, counts) in &per_job {
        assert_eq!(counts.len(), UPDATES as usize + 1, "{id}");
        assert_eq!(*counts, (0..=UPDATES).collect::<Vec<_>>(), "{id}: every report, in the order it was made");
    }
    let updated = all.iter().filter(|e| e["type"] == "job.updated").count();
    assert_eq!(updated, WORKERS * UPDATES as usize, "100 job.updated per job");

    for w in 0..WORKERS {
        let (_, job) = s.get(&staff, &format!("/v1/jobs/c-{w:02}")).await;
        assert_eq!(
            (job["succeeded"].as_u64(), job["version"].as_u64(), job["progress"].as_f64()),
            (Some(100), Some(101), Some(100.0))
        );
    }

    // Positions are global: the log holds nothing but these events, so within
    // the tenant they are contiguous.
    assert_eq!(positions.last().unwrap() - positions[0] + 1, positions.len() as u64, "no gaps");

    let (_, metrics) = s.get("", "/metrics").await;
    let metrics = metrics.as_str().unwrap();
    let batches = metrics
        .lines()
        .find(|l| l.starts_with("herald_commit_batch_size_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("commit batch count");
    assert!(batches > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_requests_and_exits_cleanly() {
    let mut s = Server::start("sigterm", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({"id": "before-term"})).await;

    // A long-poll in flight when the signal arrives gets its answer.
    let http = s.http.clone();
    let url = s.url("/v1/events?topic=jobs&since=1000000&wait=30");
    let poll = {
        let staff = staff.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(staff).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let st = s.terminate();
        (s, st)
    })
    .await
    .unwrap();
    let (mut s, exit) = status;
    assert!(exit.success(), "exit status {exit:?}; log:\n{}", s.log());
    assert_eq!(poll.await.unwrap().expect("the long-poll was answered"), 200);
    assert!(s.log().contains("stopped"), "the writer was flushed and the server said so:\n{}", s.log());

    s.restart().await;
    let (st, job) = s.get(&staff, "/v1/jobs/before-term").await;
    assert_eq!((st, job["id"].as_str()), (200, Some("before-term")));
    let (st, e) = s.get(&staff, "/v1/jobs/nope").await;
    assert_eq!((st, code(&e)), (404, "not_found"));
}
