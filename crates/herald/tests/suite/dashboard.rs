//! The built-in dashboard: embedded assets, and demo sign-in only under `--demo`.

use crate::harness::{token, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_client_are_served_from_the_binary() {
    let s = Server::start("dashboard", &[]).await;
    for (path, kind, needle) in [
        ("/", "text/html", "/assets/app.js"),
        ("/assets/app.js", "text/javascript", "./herald-client.js"),
        ("/assets/app.css", "text/css", ".job"),
        ("/assets/herald-client.js", "text/javascript", "export function createClient"),
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(r.headers().contains_key("content-security-policy"), "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path} lacks {needle}");
    }
    let r = s.http.get(s.url("/assets/../Cargo.toml")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.get(s.url("/assets/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Without --demo nobody hands out tokens.
    let (st, body) = s.get("", "/v1/demo/tokens").await;
    assert_eq!((st, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_hands_out_short_lived_demo_tokens_that_work() {
    let s = Server::start("demo-tokens", &["--demo"]).await;
    let (st, body) = s.get("", "/v1/demo/tokens").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["tenant"], "demo");
    let tokens = body["tokens"].as_array().expect("tokens");
    let subs: Vec<(&str, &str)> =
        tokens.iter().map(|t| (t["sub"].as_str().unwrap(), t["role"].as_str().unwrap())).collect();
    assert_eq!(subs, [("sam", "staff"), ("ada", "admin"), ("alice", "customer"), ("bob", "customer")]);
    assert!(body["expires_in"].as_u64().unwrap() <= 3600);
    // Each one works, and a customer's sees only their own jobs.
    let alice = tokens[2]["token"].as_str().unwrap();
    let worker = token("w", "demo", "worker");
    let (st, _) = s.post(&worker, "/v1/jobs", serde_json::json!({"id": "mine", "owner": "alice"})).await;
    assert_eq!(st, 201);
    let (st, _) = s.post(&worker, "/v1/jobs", serde_json::json!({"id": "theirs", "owner": "bob"})).await;
    assert_eq!(st, 201);
    let (st, list) = s.get(alice, "/v1/jobs?limit=500").await;
    assert_eq!(st, 200);
    let jobs = list["jobs"].as_array().unwrap();
    assert!(jobs.iter().any(|j| j["id"] == "mine"));
    assert!(jobs.iter().all(|j| j["owner"] == "alice"), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_survives_restarts_without_leftovers_and_never_touches_other_jobs() {
    let mut s = Server::start("demo-restart", &["--demo"]).await;
    let staff = token("sam", "demo", "staff");
    let worker = token("worker-1", "demo", "worker");
    // The README's tour job, in the demo tenant, left running.
    let (st, _) =
        s.post(&worker, "/v1/jobs", serde_json::json!({"id": "crawl-42", "owner": "alice", "status": "running"})).await;
    assert_eq!(st, 201);
    let demo_jobs = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["jobs"].as_array().unwrap().iter().filter(|j| j["metadata"]["demo"] == true).cloned().collect()
    };
    // Wait for simulated jobs to be under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let before = loop {
        let (_, list) = s.get(&staff, "/v1/jobs?limit=500").await;
        let active: Vec<_> = demo_jobs(&list).into_iter().filter(|j| j["status"] == "running").collect();
        if active.len() >= 2 {
            break demo_jobs(&list);
        }
        assert!(std::time::Instant::now() < deadline, "no simulated jobs running: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let max_n = before.iter().filter_map(|j| j["metadata"]["demo_n"].as_u64()).max().unwrap();
    s.kill9();
    s.restart().await;

    // Every simulated job the dead process left unfinished is cancelled, with why.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, list) = s.get(&staff, "/v1/jobs?limit=500").await;
        let old: Vec<_> =
            demo_jobs(&list).into_iter().filter(|j| j["metadata"]["demo_n"].as_u64().unwrap() <= max_n).collect();
        let unfinished: Vec<_> =
            old.iter().filter(|j| ["queued", "running", "stalled"].contains(&j["status"].as_str().unwrap())).collect();
        if unfinished.is_empty() {
            let cancelled: Vec<_> = old.iter().filter(|j| j["status"] == "cancelled").collect();
            assert!(!cancelled.is_empty(), "{old:?}");
            assert!(cancelled.iter().all(|j| j["errors"].to_string().contains("demo restarted")), "{cancelled:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left unfinished: {unfinished:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, tour) = s.get(&staff, "/v1/jobs/crawl-42").await;
    assert_eq!(tour["status"], "running", "the tour's job is not the demo's: {tour}");
    // Numbering goes on from the last run: no title repeats.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, list) = s.get(&staff, "/v1/jobs?limit=500").await;
        let jobs = demo_jobs(&list);
        if jobs.iter().any(|j| j["metadata"]["demo_n"].as_u64().unwrap() > max_n) {
            let mut titles: Vec<&str> = jobs.iter().map(|j| j["title"].as_str().unwrap()).collect();
            let n = titles.len();
            titles.sort();
            titles.dedup();
            assert_eq!(titles.len(), n, "demo titles repeat after a restart");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no new demo job after the restart");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
