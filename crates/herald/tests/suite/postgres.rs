//! PostgreSQL only (`HERALD_TEST_STORE=postgres`): what SQLite cannot do —
//! SQL written by anyone streamed live, several Herald processes on one
//! database, and one gapless log in commit order whoever writes. On SQLite
//! these tests return at once; the PostgreSQL run of the suite runs them.

use crate::harness::{create_job, on_postgres, psql, temp_dir, token, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Reads `topic` from `since` with long-poll until `want` events arrived or
/// `timeout` passes; asserts the positions are consecutive, with no gap and no
/// repeat (every event of the test is in `topic`).
async fn read_all(s: &Server, token: &str, topic: &str, since: u64, want: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out: Vec<Value> = Vec::new();
    let mut next = since;
    while out.len() < want && tokio::time::Instant::now() < deadline {
        let (st, page) = s.get(token, &format!("/v1/events?topic={topic}&since={next}&limit=500&wait=1")).await;
        assert_eq!(st, 200, "{page}");
        assert_ne!(page["resync"], true, "{page}");
        for e in page["events"].as_array().unwrap() {
            let position = e["position"].as_u64().unwrap();
            let expected = out.last().map_or(since + 1, |l| l["position"].as_u64().unwrap() + 1);
            assert_eq!(position, expected, "a gap or a repeat in the log after {:?}", out.last());
            out.push(e.clone());
        }
        next = page["next"].as_u64().unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_on_herald_tables_is_an_event_exactly_as_a_report_would_be() {
    if !on_postgres() {
        return;
    }
    let s = Server::start("pg-sql", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("st", "acme", "staff");
    create_job(&s, &worker, json!({ "id": "j1", "owner": "alice", "total": 10 })).await;
    // The log is written just after the acknowledgement: resume after the creation.
    assert_eq!(read_all(&s, &staff, "job:j1", 0, 1, Duration::from_secs(10)).await.len(), 1);
    let mut ws = s.ws(&staff).await;
    ws.sub("job:j1", Some(1)).await;
    psql(
        s.pg_db(),
        "UPDATE herald.jobs SET succeeded = succeeded + 1, stage = 'by hand' WHERE tenant = 'acme' AND id = 'j1'",
    );
    let got = ws.events(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "no event for an UPDATE in psql");
    let e = &got[0];
    assert_eq!(e["type"], "job.updated", "{e}");
    assert_eq!(e["data"]["succeeded"], 1, "{e}");
    assert_eq!(e["data"]["stage"], "by hand", "{e}");
    // The trigger moves the job on as a report does.
    assert_eq!(e["data"]["version"], 2, "{e}");
    // A status change by hand is announced as what it is.
    psql(s.pg_db(), "UPDATE herald.jobs SET status = 'running' WHERE id = 'j1'");
    psql(s.pg_db(), "UPDATE herald.jobs SET status = 'completed' WHERE id = 'j1'");
    let got = ws.events(2, Duration::from_secs(10)).await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job.updated", "job.completed"]);
    assert!(got[1]["data"]["finished_at"].is_string(), "{}", got[1]);
    // The API reads what psql wrote.
    let (_, job) = s.get(&staff, "/v1/jobs/j1").await;
    assert_eq!(job["status"], "completed");
    // A value the columns refuse is refused to psql too, and announces nothing.
    let bad = std::process::Command::new("psql")
        .args(["-XAtq", "-d", &s.db(), "-c", "UPDATE herald.jobs SET status = 'exploded' WHERE id = 'j1'"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(ws.events(1, Duration::from_millis(500)).await.is_empty());
    // The leading process reports its slot: how far behind, and its WAL status.
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in
        ["herald_sequencer_leader 1", "herald_replication_slot_lag_bytes ", "herald_replication_slot_wal_status 0"]
    {
        assert!(metrics.lines().any(|l| l.starts_with(line)), "/metrics lacks {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_herald_processes_and_psql_write_one_gapless_log_in_commit_order() {
    if !on_postgres() {
        return;
    }
    let a = Server::start("pg-gapless-a", &[]).await;
    let b = Server::start_sharing(&a, "pg-gapless-b", &[]).await;
    let staff = token("st", "acme", "staff");
    let worker = token("w", "acme", "worker");
    const WRITERS: usize = 6;
    const REPORTS: usize = 40;
    const SQL_UPDATES: usize = 150;
    create_job(&a, &worker, json!({ "id": "by-sql" })).await;
    let mut live_a = a.ws(&staff).await;
    live_a.sub("jobs", Some(0)).await;
    let mut live_b = b.ws(&staff).await;
    live_b.sub("jobs", Some(0)).await;

    // Writers through both processes, each on a job of its own, and psql
    // committing one UPDATE per transaction beside them.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let server_url = if w % 2 == 0 { a.url("") } else { b.url("") };
        let worker = worker.clone();
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let id = format!("job-{w}");
            let post = |path: String, body: Value| {
                http.post(format!("{server_url}{path}")).bearer_auth(&worker).json(&body).send()
            };
            assert!(post("/v1/jobs".into(), json!({ "id": id, "total": REPORTS }))
                .await
                .unwrap()
                .status()
                .is_success());
            for i in 1..=REPORTS {
                let r = post(format!("/v1/jobs/{id}/progress"), json!({ "succeeded": i })).await.unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
        }));
    }
    let db = a.db();
    let sql = tokio::task::spawn_blocking(move || {
        let script = format!(
            "DO $$ BEGIN FOR i IN 1..{SQL_UPDATES} LOOP
               UPDATE herald.jobs SET succeeded = succeeded + 1 WHERE tenant = 'acme' AND id = 'by-sql';
               COMMIT;
             END LOOP; END $$"
        );
        std::process::Command::new("psql").args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", &db, "-c", &script]).status()
    });
    // A reader pages the log while the writes are in flight: any position it
    // skipped (a row committed later with an earlier position) fails it.
    let total = 1 + WRITERS * (1 + REPORTS) + SQL_UPDATES;
    let reader = {
        let (url_a, staff) = (a.url(""), staff.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut next = 0u64;
            let mut seen = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while seen < total && tokio::time::Instant::now() < deadline {
                let page: Value = http
                    .get(format!("{url_a}/v1/events?topic=jobs&since={next}&limit=37"))
                    .bearer_auth(&staff)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for e in page["events"].as_array().unwrap() {
                    assert_eq!(e["position"].as_u64().unwrap(), next + 1, "the reader saw a gap");
                    next += 1;
                    seen += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    assert!(sql.await.unwrap().unwrap().success());
    assert_eq!(reader.await.unwrap(), total, "the paging reader did not see every event");

    // Both processes serve the same log, whole and in order.
    let log_a = read_all(&a, &staff, "jobs", 0, total, Duration::from_secs(30)).await;
    let log_b = read_all(&b, &staff, "jobs", 0, total, Duration::from_secs(30)).await;
    assert_eq!(log_a.len(), total);
    assert_eq!(log_a, log_b);
    // Each job's versions rise one by one: commit order is the log's order.
    let mut versions: HashMap<String, u64> = HashMap::new();
    for e in &log_a {
        let id = e["data"]["id"].as_str().unwrap().to_string();
        let v = e["data"]["version"].as_u64().unwrap();
        let before = versions.insert(id.clone(), v).unwrap_or(0);
        assert_eq!(v, before + 1, "job {id} jumped from version {before} to {v}");
    }
    assert_eq!(versions["by-sql"], 1 + SQL_UPDATES as u64);
    // And live subscribers of both processes got it all, in the same order.
    for live in [&mut live_a, &mut live_b] {
        let got = live.events(total, Duration::from_secs(30)).await;
        let positions: Vec<u64> = got.iter().map(|e| e["position"].as_u64().unwrap()).collect();
        assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_psql_writes_then_restart_misses_nothing_and_repeats_nothing() {
    if !on_postgres() {
        return;
    }
    let mut s = Server::start("pg-kill9", &[]).await;
    let staff = token("st", "acme", "staff");
    let worker = token("w", "acme", "worker");
    create_job(&s, &worker, json!({ "id": "k" })).await;
    const UPDATES: usize = 300;
    let db = s.db();
    let sql = tokio::task::spawn_blocking(move || {
        let script = format!(
            "DO $$ BEGIN FOR i IN 1..{UPDATES} LOOP
               UPDATE herald.jobs SET succeeded = succeeded + 1 WHERE tenant = 'acme' AND id = 'k';
               COMMIT; PERFORM pg_sleep(0.005);
             END LOOP; END $$"
        );
        std::process::Command::new("psql").args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", &db, "-c", &script]).status()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.restart().await;
    assert!(sql.await.unwrap().unwrap().success());
    let log = read_all(&s, &staff, "job:k", 0, 1 + UPDATES, Duration::from_secs(30)).await;
    assert_eq!(log.len(), 1 + UPDATES, "events missing after kill -9");
    let succeeded: Vec<u64> = log.iter().skip(1).map(|e| e["data"]["succeeded"].as_u64().unwrap()).collect();
    assert_eq!(succeeded, (1..=UPDATES as u64).collect::<Vec<_>>(), "an update missing or twice");
    // Nothing more trickles in later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, page) = s.get(&staff, &format!("/v1/events?topic=job:k&since={}", 1 + UPDATES)).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_one_line_naming_the_url_without_password_and_exit_2() {
    // Runs on both stores: it needs no database.
    let dir = temp_dir("pg-unreachable");
    // Port 1 (tcpmux): nothing listens there. A port freed by a listener could
    // be taken at once by another suite's server, and herald would wait on it.
    let port = 1;
    let args = ["--db".to_string(), format!("postgres://herald:s3cret@127.0.0.1:{port}/nowhere")];
    let (code, stderr) = crate::harness::refused_at_startup(&dir, &args).await;
    assert_eq!(code, Some(2));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("postgres://herald@127.0.0.1:{port}/nowhere")), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password was printed: {stderr}");
}

/// Drops the database's replication slot, ending whichever walsender streams
/// it (the new leader may have taken the slot over already: on a loaded
/// machine the old one's exit and the new one's start are close together).
fn drop_slot_when_free(db: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        psql(
            db,
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE database = current_database() AND active",
        );
        let dropped = psql(
            db,
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
             WHERE database = current_database() AND NOT active",
        );
        if dropped == "1" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the slot stayed active");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_cuts_live_subscribers_off_and_every_resume_gets_resync_never_a_silent_gap() {
    if !on_postgres() {
        return;
    }
    let mut a = Server::start("pg-lost-a", &[]).await;
    let b = Server::start_sharing(&a, "pg-lost-b", &[]).await;
    let staff = token("st", "acme", "staff");
    let worker = token("w", "acme", "worker");
    create_job(&a, &worker, json!({ "id": "l", "status": "running" })).await;
    let mut live = b.ws(&staff).await;
    live.sub("job:l", Some(0)).await;
    assert_eq!(live.events(1, Duration::from_secs(10)).await.len(), 1);
    // The leader goes away and the slot with it; writes go on through b.
    a.kill9();
    let db = b.pg_db().to_string();
    tokio::task::spawn_blocking(move || drop_slot_when_free(&db)).await.unwrap();
    let (st, _) = b.post(&worker, "/v1/jobs/l/progress", json!({ "stage": "in the gap" })).await;
    assert_eq!(st, 200);
    // b's sequencer takes over, finds the slot gone, and tells everyone.
    assert_eq!(live.closed(Duration::from_secs(20)).await, Some(4008), "the live subscriber is cut off");
    let mut again = b.ws(&staff).await;
    let r = again.request(json!({ "op": "sub", "topic": "job:l", "since": 1 })).await;
    let r = if r["op"] == "ack" { again.expect_op("resync").await } else { r };
    assert_eq!(r["op"], "resync", "{r}");
    assert_eq!(r["snapshot"]["job"]["stage"], "in the gap", "the snapshot has what the log missed: {r}");
    let (_, page) = b.get(&staff, "/v1/events?topic=job:l&since=1").await;
    assert_eq!(page["resync"], true, "{page}");
    // And the log goes on.
    let (st, _) = b.post(&worker, "/v1/jobs/l/progress", json!({ "stage": "after" })).await;
    assert_eq!(st, 200);
    let got = again.events(1, Duration::from_secs(10)).await;
    assert_eq!(got.first().map(|e| e["data"]["stage"].clone()), Some(json!("after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_drops_every_connection_gets_503_never_a_false_ack_and_recovers() {
    if !on_postgres() {
        return;
    }
    let s = Server::start("pg-outage", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("st", "acme", "staff");
    create_job(&s, &worker, json!({ "id": "o", "status": "running" })).await;
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for round in 0..3 {
        // Every connection Herald holds to its database goes, as in a failover.
        psql(
            s.pg_db(),
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        );
        for i in 0..15 {
            let stage = format!("r{round}-{i}");
            let (st, v) = s.post(&worker, "/v1/jobs/o/progress", json!({ "stage": stage })).await;
            match st {
                200 => acked.push(stage),
                503 => {
                    assert_eq!(v["error"]["code"], "unavailable", "{v}");
                    refused.push(stage);
                }
                _ => panic!("{st} {v}"),
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    // It recovers by itself: writes succeed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _) = s.post(&worker, "/v1/jobs/o/progress", json!({ "stage": "after" })).await;
        if st == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "writes never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(acked.len() >= 30, "most writes went through: acked {acked:?}, refused {refused:?}");
    // Every acknowledged write is in the log, once; no refused one is.
    let log = read_all(&s, &staff, "job:o", 0, 2 + acked.len(), Duration::from_secs(30)).await;
    let stages: Vec<String> = log.iter().filter_map(|e| e["data"]["stage"].as_str().map(str::to_string)).collect();
    let mut expected = acked.clone();
    expected.push("after".into());
    assert_eq!(stages, expected, "refused: {refused:?}");
}
