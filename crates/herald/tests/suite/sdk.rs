//! The Rust SDK (`herald-client`) and the `herald job` / `herald notify`
//! commands built on it, against the real server: seed 000's worker flow, a
//! server restart in the middle of a run (nothing lost, nothing counted
//! twice), Herald's error codes as typed errors and exit codes, a watcher
//! that resumes after a cut, and job output streams written through the
//! reporter's batching writer (across a `kill -9`) and read back with
//! `read_stream`.

use super::live::log_positions;
use crate::harness::{settle, token, Server};
use herald_client::{
    Client, CreateJob, JobStart, JobStatus, Position, ProgressReport, Reporter, ReporterOptions, Retry, Update,
};
use serde_json::{json, Value};
use std::time::Duration;
use std::time::Instant;

fn client(s: &Server, tok: &str) -> Client {
    Client::new(s.url(""), tok).unwrap()
}

/// The event types of `job:<id>` in the log, in order (once the log holds
/// every write so far: PostgreSQL's sequencer appends just after commit).
async fn log_types(s: &Server, tok: &str, job: &str) -> Vec<(String, Value)> {
    settle(s).await;
    let (st, v) = s.get(tok, &format!("/v1/events?topic=job:{job}&limit=1000")).await;
    assert_eq!(st, 200, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_worker_flow_through_the_sdk_and_a_watcher_that_resumes_after_a_cut() {
    let mut s = Server::start("sdk-flow", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let reporter = Reporter::new(client(&s, &worker));
    let start = JobStart { title: Some("Submit to 3 directories".into()), total: Some(3), ..JobStart::default() };
    let created = reporter.job_started("seed-000", start).await.unwrap();
    assert_eq!(created["status"], "running");

    // A staff watcher from the job's first event on.
    settle(&s).await;
    let first = log_positions(&s, &staff, "job:seed-000", 0).await[0];
    let mut watch = client(&s, &staff).watch_job("seed-000", Some(Position::from_u64(first)));

    for (i, outcome) in ["ok", "ok", "captcha"].iter().enumerate() {
        let task = format!("dir-{i}");
        let _ = reporter.task_started("seed-000", &task, Some(&format!("directory {i}")));
        if *outcome == "ok" {
            let _ = reporter.artifact("seed-000", "screenshot", json!({ "url": format!("https://s/{i}.png") }));
            let _ = reporter.task_succeeded("seed-000", &task);
        } else {
            let _ = reporter.task_failed("seed-000", &task, "captcha required");
        }
        let _ =
            reporter.progress("seed-000", ProgressReport { stage: Some(format!("step {i}")), ..Default::default() });
    }
    let done = reporter.job_completed("seed-000").await.unwrap();
    assert_eq!(
        (done["status"].as_str(), done["succeeded"].as_u64(), done["failed"].as_u64()),
        (Some("completed"), Some(2), Some(1))
    );

    // The watcher reads half, the server restarts under it, it reads the rest.
    let log = log_types(&s, &staff, "seed-000").await;
    let expected: Vec<String> = log.iter().skip(1).map(|(t, _)| t.clone()).collect();
    let mut seen = Vec::new();
    while seen.len() < expected.len() / 2 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap() {
            Update::Event(e) => seen.push(e.kind),
            other => panic!("{other:?}"),
        }
    }
    s.restart().await;
    while seen.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await.unwrap().unwrap() {
            Update::Event(e) => seen.push(e.kind),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, expected, "every event once, in order, across the restart");
    assert!(expected.contains(&"artifact.created".to_string()), "{expected:?}");
    assert_eq!(expected.last().map(String::as_str), Some("job.completed"), "{expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_loses_no_report_and_counts_none_twice() {
    let mut s = Server::start("sdk-restart", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    // No coalescing: every report is its own request, so each must land once.
    let opts = ReporterOptions { coalesce: Duration::ZERO, ..ReporterOptions::default() };
    let reporter = Reporter::with_options(client(&s, &worker), opts);
    let start = JobStart { total: Some(40), ..JobStart::default() };
    reporter.job_started("r1", start).await.unwrap();
    let mut receipts = Vec::new();
    for i in 0..40u64 {
        let task = format!("t{i}");
        receipts.push(reporter.task_started("r1", &task, None));
        receipts.push(reporter.task_succeeded("r1", &task));
        receipts.push(reporter.progress("r1", ProgressReport { current_item: Some(task), ..Default::default() }));
        if i == 15 {
            // The server dies with requests in flight and comes back a moment later.
            s.kill9();
            tokio::time::sleep(Duration::from_millis(700)).await;
            s.restart().await;
        }
    }
    for r in receipts {
        r.await.expect("every report reaches Herald in the end");
    }
    let done = reporter.job_completed("r1").await.unwrap();
    assert_eq!(done["succeeded"], 40, "{done}");
    let staff = token("sam", "acme", "staff");
    let log = log_types(&s, &staff, "r1").await;
    for i in 0..40 {
        let task = format!("t{i}");
        let finished = log
            .iter()
            .filter(|(t, d)| t == "task.updated" && d["id"] == task.as_str() && d["status"] == "succeeded")
            .count();
        assert_eq!(finished, 1, "task {task} succeeded once in the log");
    }
    let (_, tasks) = s.get(&staff, "/v1/jobs/r1/tasks").await;
    assert!(tasks["tasks"].as_array().unwrap().iter().all(|t| t["attempts"] == 1), "no task started twice: {tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_errors_are_typed_in_the_sdk_and_exit_codes_in_the_cli() {
    let s = Server::start("sdk-errors", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let no_retry = |tok: &str| Client::builder(s.url(""), tok).retry(Retry::none()).build().unwrap();

    // Bad tokens: 401 with Herald's code.
    let garbage = no_retry("not-a-token").job("x").await.unwrap_err();
    assert_eq!((garbage.status(), garbage.code()), (Some(401), "invalid_token"), "{garbage}");
    let expired = crate::harness::token_ttl("agent-1", "acme", "worker", 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = no_retry(&expired).job("x").await.unwrap_err();
    assert_eq!(e.code(), "token_expired", "{e}");
    assert!(e.is_unauthorized() && !e.is_retryable());

    // An illegal transition.
    let c = no_retry(&worker);
    c.create_job(&CreateJob { id: Some("e1".into()), status: Some(JobStatus::Running), ..Default::default() })
        .await
        .unwrap();
    c.report("e1", &ProgressReport { status: Some(JobStatus::Completed), ..Default::default() }).await.unwrap();
    let e =
        c.report("e1", &ProgressReport { status: Some(JobStatus::Running), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), "illegal_transition"), "{e}");
    // Unknown job.
    let e = c.report("nope", &ProgressReport::default()).await.unwrap_err();
    assert_eq!(e.code(), "not_found");

    // The same through the CLI: exit codes a script can branch on, --json answers.
    let cli = |args: &[&str], tok: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_URL", s.url(""))
            .env("HERALD_TOKEN", tok)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = cli(&["job", "create", "--id", "c1", "--title", "Nightly", "--total", "2", "--json"], &worker);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["title"], "Nightly");
    let (code, out, _) = cli(&["job", "task", "c1", "a", "--status", "running"], &worker);
    assert_eq!((code, out.trim()), (Some(0), "task c1/a running"));
    let (code, _, _) = cli(&["job", "task", "c1", "a", "--status", "succeeded"], &worker);
    assert_eq!(code, Some(0));
    let (code, out, _) = cli(&["job", "progress", "c1", "--succeeded", "1", "--stage", "half", "--item", "a"], &worker);
    assert_eq!((code, out.trim()), (Some(0), "job c1 running 1/2 (50%)"));
    let (code, _, _) = cli(&["job", "artifact", "c1", "--kind", "label", "--payload", r#"{"text":"ok"}"#], &worker);
    assert_eq!(code, Some(0));
    let (code, out, _) = cli(&["job", "complete", "c1"], &worker);
    assert_eq!((code, out.trim()), (Some(0), "job c1 completed 1/2 (100%)"));
    let (code, out, err) = cli(&["job", "progress", "c1", "--status", "running", "--json"], &worker);
    assert_eq!(code, Some(5), "an illegal transition exits 5: {err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["error"]["code"], "illegal_transition");
    let (code, _, _) = cli(&["job", "fail", "missing", "--error", "boom"], &worker);
    assert_eq!(code, Some(4), "not found exits 4");
    let (code, _, _) = cli(&["job", "show", "c1"], "bad-token");
    assert_eq!(code, Some(3), "a refused token exits 3");
    let (code, _, err) = cli(&["job", "artifact", "c1", "--kind", "x", "--payload", "{oops"], &worker);
    assert_eq!(code, Some(2), "a malformed command line exits 2: {err}");
    let (code, _, _) = cli(&["job", "create", "--id", "bad id!"], &worker);
    assert_eq!(code, Some(6), "input Herald refuses exits 6");
    let (code, out, _) = cli(&["notify", "--to", "alice", "--title", "Crawl done", "--level", "success"], &worker);
    assert_eq!(code, Some(0), "{out}");
    let (_, mine) = s.get(&token("alice", "acme", "customer"), "/v1/notifications").await;
    assert_eq!(mine["notifications"][0]["title"], "Crawl done", "{mine}");

    // Nobody listening: exits 7 once --retry-for is spent.
    let dead = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "job",
            "show",
            "c1",
            "--retry-for",
            "1s",
            "--url",
            &format!("http://127.0.0.1:{}", crate::harness::free_port()),
        ])
        .env("HERALD_TOKEN", &worker)
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(7), "{}", String::from_utf8_lossy(&dead.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_merges_a_burst_and_never_a_status_change() {
    let s = Server::start("sdk-coalesce", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let reporter = Reporter::new(client(&s, &worker));
    reporter.job_started("b1", JobStart { total: Some(1000), ..JobStart::default() }).await.unwrap();
    let mut last = None;
    for i in 1..=1000u64 {
        last = Some(reporter.progress("b1", ProgressReport { succeeded: Some(i), ..Default::default() }));
    }
    let done = reporter.job_completed("b1");
    let job = last.unwrap().await.unwrap();
    assert_eq!(job["succeeded"], 1000, "the newest values were sent");
    assert_eq!(done.await.unwrap()["status"], "completed");
    let staff = token("sam", "acme", "staff");
    let log = log_types(&s, &staff, "b1").await;
    let updates = log.iter().filter(|(t, _)| t == "job.updated").count();
    assert!(updates < 20, "1,000 reports in a burst became {updates} updates");
    assert_eq!(log.last().unwrap().1["status"], "completed", "the status change came last");
}

/// Every chunk of a stream from offset 0, page by page.
async fn read_all(c: &Client, job: &str, stream: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let page = c.read_stream(job, stream, got.len() as u64, 700, Duration::ZERO).await.unwrap();
        assert_eq!(page.offset, got.len() as u64, "pages follow each other: {page:?}");
        assert!(!page.truncated);
        if page.chunks.is_empty() {
            assert_eq!(page.next, page.end);
            return got;
        }
        got.extend(page.chunks);
    }
}

fn assert_tokens(got: &[Value], n: usize) {
    assert_eq!(got.len(), n, "every chunk, once");
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c, &json!({ "i": i, "t": format!("tok{i}") }), "chunk {i} in order");
    }
}

/// POSTs to the append route that the server counted (in /metrics, since it started).
async fn appends_counted(s: &Server) -> u64 {
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("herald_http_requests_total{")
                && l.contains(r#"route="/v1/jobs/{id}/streams/{name}""#)
                && l.contains(r#"method="POST""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_writer_sends_5000_chunks_across_a_kill_9_and_they_read_back_once_in_order() {
    const N: usize = 5_000;
    let mut s = Server::start("sdk-stream-restart", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let c = client(&s, &worker);
    let reporter = Reporter::new(c.clone());
    reporter.job_started("gen", JobStart { title: Some("Generate".into()), ..JobStart::default() }).await.unwrap();
    let out = reporter.stream("gen", "tokens");
    for i in 0..N {
        out.write(json!({ "i": i, "t": format!("tok{i}") })).unwrap();
        // Tokens come at a pace (a few thousand a second), not all at once.
        if i % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i == 2_000 {
            // Herald dies with an append in flight or queued, and comes back while tokens keep coming.
            s.kill9();
        }
        if i == 2_500 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if i == 3_000 {
            assert!(reporter.pending() > 0, "appends wait (and are retried) while Herald is down");
            s.restart().await;
        }
        // Progress and other streams of the job go along without splitting the batches.
        if i % 500 == 0 {
            let _ =
                reporter.progress("gen", ProgressReport { stage: Some(format!("token {i}")), ..Default::default() });
            reporter.stream("gen", "log").write(format!("at {i}")).unwrap();
        }
    }
    out.close().await.expect("every append reached Herald");
    reporter.job_completed("gen").await.unwrap();

    let reader = client(&s, &token("sam", "acme", "staff"));
    assert_tokens(&read_all(&reader, "gen", "tokens").await, N);
    let log = read_all(&reader, "gen", "log").await;
    assert_eq!(log, (0..N).step_by(500).map(|i| json!(format!("at {i}"))).collect::<Vec<_>>());
    let mut streams = reader.streams("gen").await.unwrap();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    let ends: Vec<_> = streams.iter().map(|i| (i.name.as_str(), i.floor, i.next_offset)).collect();
    assert_eq!(ends, [("log", 0, 10), ("tokens", 0, N as u64)], "{streams:?}");
    assert!(streams.iter().all(|i| i.bytes > 0 && i.updated_at > 0), "{streams:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_writer_batches_chunks_and_a_long_poll_reader_follows_them_live() {
    const N: usize = 3_000;
    let s = Server::start("sdk-stream-batches", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let alice = token("alice", "acme", "customer");
    let c = client(&s, &worker);
    c.create_job(&CreateJob { id: Some("llm".into()), owner: Some("alice".into()), ..Default::default() })
        .await
        .unwrap();

    // The owner follows the stream by long-polling from offset 0, before anything is written.
    let follower = {
        let alice = client(&s, &alice);
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut first_at = None;
            while got.len() < N + 1 {
                let page = alice.read_stream("llm", "tokens", got.len() as u64, 10_000, Duration::from_secs(10)).await;
                let page = page.unwrap();
                assert!(!page.chunks.is_empty(), "a long-poll answers when chunks come");
                first_at.get_or_insert_with(Instant::now);
                got.extend(page.chunks);
            }
            (got, first_at.unwrap())
        })
    };

    let reporter = Reporter::new(c.clone());
    let out = reporter.stream("llm", "tokens");
    let before = appends_counted(&s).await;
    // One chunk, no flush: the batch goes out after its linger (100 ms).
    let wrote = Instant::now();
    out.write(json!({ "i": 0, "t": "tok0" })).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 1..N {
        out.write(json!({ "i": i, "t": format!("tok{i}") })).unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    out.write("the end").unwrap();
    out.flush().await.unwrap();
    let appends = appends_counted(&s).await - before;
    assert!((2..=60).contains(&appends), "{N} chunks went in {appends} appends");

    let (got, first_at) = tokio::time::timeout(Duration::from_secs(20), follower).await.unwrap().unwrap();
    let lag = first_at.duration_since(wrote);
    assert!(lag < Duration::from_millis(390), "a lone chunk was sent after its linger, not at the next write: {lag:?}");
    assert_eq!(got.last(), Some(&json!("the end")));
    assert_tokens(&got[..N], N);
    // The writer's stream reads the same for the worker, page by page.
    assert_eq!(read_all(&c, "llm", "tokens").await, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refusals_are_typed_errors_with_heralds_codes() {
    let s = Server::start("sdk-stream-errors", &[]).await;
    let worker = token("agent-1", "acme", "worker");
    let c = Client::builder(s.url(""), &worker).retry(Retry::none()).build().unwrap();
    c.create_job(&CreateJob { id: Some("j".into()), ..Default::default() }).await.unwrap();

    let e = c.append_chunks("j", "bad:name", &[json!("a")]).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(422), "invalid_field"), "{e}");
    assert!(!e.is_retryable());
    let e = c.read_stream("j", "bad name", 0, 10, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.code(), "invalid_field", "{e}");
    let e = c.append_chunks("nope", "log", &[json!("a")]).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(404), "not_found"), "{e}");
    let e = c.append_chunks("j", "log", &[]).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(422), "invalid_field"), "{e}");
    let staff = client(&s, &token("sam", "acme", "staff"));
    let e = staff.append_chunks("j", "log", &[json!("a")]).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), "forbidden"), "{e}");
    let e = c.read_stream("j", "log", 0, 0, Duration::ZERO).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), "invalid_query"), "{e}");
    let e = c.read_stream("j", "log", 0, 10, Duration::from_secs(61)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), "invalid_query"), "{e}");

    // Through the reporter: the refusal comes back from flush and close, and
    // the writer takes nothing more (a later chunk would follow a hole).
    let reporter = Reporter::new(c.clone());
    let bad = reporter.stream("j", "bad:name");
    bad.write("a").unwrap();
    let e = bad.flush().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(422), "invalid_field"), "{e}");
    assert_eq!(bad.write("b").unwrap_err().code(), "invalid_field");
    assert_eq!(bad.close().await.unwrap_err().code(), "invalid_field");
    // A chunk over 64 KiB is refused at the call; the stream goes on.
    let log = reporter.stream("j", "log");
    assert_eq!(log.write("x".repeat(64 * 1024)).unwrap_err().code(), "invalid");
    log.write_all(["one", "two"]).unwrap();
    log.close().await.unwrap();

    let appended = c.append_chunks("j", "log", &[json!(3), json!({ "k": [1] })]).await.unwrap();
    assert_eq!((appended.stream.as_str(), appended.first_offset, appended.next_offset), ("log", 2, 4));
    let page = c.read_stream("j", "log", 1, 2, Duration::ZERO).await.unwrap();
    assert_eq!((page.offset, page.next, page.end, page.truncated), (1, 3, 4, false));
    assert_eq!(page.chunks, [json!("two"), json!(3)]);
    // Nothing of the refused appends was written; a stream never written reads empty.
    assert_eq!(c.streams("j").await.unwrap().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["log"]);
    let never = c.read_stream("j", "never", 0, 10, Duration::ZERO).await.unwrap();
    assert_eq!((never.end, never.chunks.len()), (0, 0));
}
