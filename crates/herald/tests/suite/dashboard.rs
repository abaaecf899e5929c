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
