//! The API reference people read: every operation of `/v1/openapi.json` has a
//! summary, a description and (where it takes a body) an example; Herald's
//! own endpoints come before the Supabase-compatible ones; `/docs` renders the
//! document from embedded assets.

use crate::harness::Server;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_documented_with_an_example_and_the_docs_page_serves_it() {
    let s = Server::start("api-docs", &[]).await;
    let raw = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().text().await.unwrap();
    let doc: Value = serde_json::from_str(&raw).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut order = Vec::new();
    let mut missing = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let name = format!("{} {path}", method.to_uppercase());
            for field in ["summary", "description"] {
                if op[field].as_str().is_none_or(|t| t.trim().len() < 8) {
                    missing.push(format!("{name}: no {field}"));
                }
            }
            if let Some(body) = op.get("requestBody") {
                let content = body["content"].as_object().unwrap();
                let has_example = content.values().any(|c| {
                    c.get("example").is_some()
                        || c.get("examples").is_some()
                        || example_of(&doc, &c["schema"]).is_some()
                });
                if !has_example {
                    missing.push(format!("{name}: request body without an example"));
                }
            }
            // In the order the document lists them (serde_json's map here sorts keys).
            let at = raw.find(&format!("\"{path}\":{{")).unwrap();
            order.push((at, path.clone(), op["tags"][0].as_str().unwrap_or("").to_string()));
        }
    }
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
    order.sort();
    let order: Vec<(String, String)> = order.into_iter().map(|(_, p, t)| (p, t)).collect();
    assert!(order.len() >= 30, "{order:?}");
    assert_eq!(order[0].0, "/v1/jobs", "the core API comes first: {order:?}");
    let first_supabase = order.iter().position(|(_, t)| t == "supabase").unwrap();
    assert!(order[first_supabase..].iter().all(|(_, t)| t == "supabase"), "Supabase endpoints come last: {order:?}");

    // The viewer: an embedded page and script, no CDN.
    let r = s.http.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("/assets/docs.js"), "{html}");
    assert!(!html.contains("https://"), "no third-party assets: {html}");
    let js = s.http.get(s.url("/assets/docs.js")).send().await.unwrap().text().await.unwrap();
    assert!(js.contains("/v1/openapi.json") && !js.contains("https://"), "the viewer reads the server's own document");
}

/// The example of a schema, following a `$ref` into the components.
fn example_of<'a>(doc: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    if let Some(e) = schema.get("example") {
        return Some(e);
    }
    let name = schema["$ref"].as_str()?.rsplit('/').next()?;
    doc["components"]["schemas"][name].get("example")
}
