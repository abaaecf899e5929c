//! CORS (`--cors-origins`): a page on another origin can call every HTTP route
//! family — the worker API, long-poll, SSE, the PostgREST and Realtime REST
//! bridges, Socket.IO's polling, the OpenAPI document — preflights included;
//! an origin not on the list gets no CORS headers; without the flag nothing
//! changes.

use crate::harness::{temp_dir, token, Server};
use reqwest::{Method, StatusCode};

const APP: &str = "https://app.example.com";

async fn preflight(s: &Server, path: &str, origin: &str, method: &str, headers: &str) -> reqwest::Response {
    s.http
        .request(Method::OPTIONS, s.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header("Access-Control-Request-Headers", headers)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_family_answers_preflights_and_carries_cors_headers_for_listed_origins() {
    let s = Server::start("cors", &["--cors-origins", "https://app.example.com,http://localhost:3000"]).await;
    let worker = token("w", "acme", "worker");

    // Preflights of the writes and reads a page makes, with the headers the clients send.
    for (path, method, headers) in [
        ("/v1/jobs", "POST", "authorization,content-type,idempotency-key"),
        ("/v1/jobs/j1/progress", "POST", "authorization,content-type"),
        ("/v1/jobs/j1/tasks/t1", "PUT", "authorization,content-type"),
        ("/v1/events?topic=jobs", "GET", "authorization"),
        ("/v1/sse?topic=jobs", "GET", "authorization,last-event-id"),
        ("/v1/notifications/read-all", "POST", "authorization"),
        ("/rest/v1/jobs?select=*", "GET", "apikey,authorization,x-client-info,accept-profile"),
        ("/realtime/v1/api/broadcast", "POST", "apikey,authorization,content-type"),
        ("/socket.io/?EIO=4&transport=polling", "POST", "content-type"),
    ] {
        let r = preflight(&s, path, APP, method, headers).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(header(&r, "access-control-allow-origin"), APP, "{path}");
        assert!(header(&r, "access-control-allow-methods").contains(method), "{path}: {:?}", r.headers());
        for h in headers.split(',') {
            assert!(header(&r, "access-control-allow-headers").to_ascii_lowercase().contains(h), "{path}: {h}");
        }
        assert_eq!(header(&r, "access-control-max-age"), "3600");
    }

    // Real answers carry the header too — errors included, so the page can read them.
    let r = s
        .http
        .post(s.url("/v1/jobs"))
        .header("Origin", APP)
        .bearer_auth(&worker)
        .json(&serde_json::json!({ "id": "j1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    let r = s.http.get(s.url("/v1/jobs")).header("Origin", "http://localhost:3000").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "access-control-allow-origin"), "http://localhost:3000");
    assert!(header(&r, "access-control-expose-headers").to_ascii_lowercase().contains("www-authenticate"));
    let r =
        s.http.get(s.url(&format!("/v1/sse?topic=job:j1&token={worker}"))).header("Origin", APP).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), APP, "SSE (EventSource) from another origin");
    drop(r);
    let r = s.http.get(s.url("/v1/openapi.json")).header("Origin", APP).send().await.unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), APP);

    // An origin not on the list: no CORS headers, so the browser blocks the page.
    let r = preflight(&s, "/v1/jobs", "https://evil.example.net", "POST", "authorization").await;
    assert_eq!(header(&r, "access-control-allow-origin"), "");
    let r = s.http.get(s.url("/v1/openapi.json")).header("Origin", "https://evil.example.net").send().await.unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_cors_and_a_malformed_origin_is_refused_at_startup() {
    let s = Server::start("cors-off", &[]).await;
    let r = preflight(&s, "/v1/jobs", APP, "POST", "authorization").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "access-control-allow-origin"), "");

    let any = Server::start("cors-any", &["--cors-origins", "*"]).await;
    let r = preflight(&any, "/v1/events?topic=jobs", "https://anywhere.example", "GET", "authorization").await;
    assert_eq!(header(&r, "access-control-allow-origin"), "*");

    for bad in ["app.example.com", "https://app.example.com/path", "*,https://a.example"] {
        let dir = temp_dir("cors-bad");
        let (_, stderr) =
            crate::harness::refused_at_startup(&dir, &["--cors-origins".to_string(), bad.to_string()]).await;
        assert!(stderr.contains("--cors-origins"), "{bad}: {stderr}");
    }
}
