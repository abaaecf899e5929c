//! The built-in dashboard: static files compiled into the binary, so `cargo
//! run` serves it with no separate build step, and the demo sign-in endpoint.
//!
//! The dashboard imports the JS client from `/assets/herald-client.js`. The
//! client is the npm package's own ES modules (`clients/js/src/**/*.js`),
//! embedded here and served at `/assets/herald-client/<path>`, where their
//! relative imports resolve to each other as in the package: one source of
//! truth for the npm package and the dashboard.

use super::http::error::ApiError;
use crate::app::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const INSPECTOR_JS: &str = include_str!("../../assets/inspector.js");
const DOCS_HTML: &str = include_str!("../../assets/docs.html");
const DOCS_JS: &str = include_str!("../../assets/docs.js");
const FAVICON_SVG: &str = include_str!("../../assets/favicon.svg");

/// Embeds the JS client's modules, by path relative to `clients/js/src`.
macro_rules! client_modules {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../../clients/js/src/", $path)))),*]
    };
}

/// Every module of the JS client: the only files `/assets/herald-client/`
/// serves. A module added to `clients/js/src` must be listed here (the test
/// below checks that none is missing).
const CLIENT_MODULES: &[(&str, &str)] = client_modules![
    "index.js",
    "client.js",
    "connection.js",
    "emitter.js",
    "errors.js",
    "reporter.js",
    "util.js",
    "transports/index.js",
    "transports/stream.js",
    "transports/websocket.js",
    "views/job.js",
    "views/joblist.js",
    "views/jobs.js",
    "views/notifications.js",
    "views/presence.js",
    "views/stream.js",
    "views/view.js",
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// How long a demo sign-in token lives. Short on purpose: the dashboard
/// fetches a new one before it expires, which exercises token refresh.
const DEMO_TOKEN_TTL_SECS: u64 = 15 * 60;

/// Security headers for the dashboard's pages: nothing but our own scripts
/// runs, and images may come from anywhere a worker's screenshot points to
/// (including `data:` URLs). Inline styles are allowed for the progress bars'
/// widths; every value the page renders is escaped, so no markup gets in.
const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https: http:; \
                   connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_asset_headers(resp)
}

fn with_asset_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    // Assets change only with the binary; revalidating is cheap and avoids a
    // stale dashboard after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /`: the single-page dashboard.
pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /docs`: the HTTP API reference, rendered in the browser from `/v1/openapi.json`.
pub async fn docs() -> Response {
    asset(DOCS_HTML, "text/html; charset=utf-8")
}

/// `GET /assets/{file}`: the dashboard's scripts, styles and the JS client.
pub async fn asset_file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset(APP_JS, JAVASCRIPT),
        "app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "inspector.js" => asset(INSPECTOR_JS, JAVASCRIPT),
        "docs.js" => asset(DOCS_JS, JAVASCRIPT),
        "docs.html" => asset(DOCS_HTML, "text/html; charset=utf-8"),
        "favicon.svg" => asset(FAVICON_SVG, "image/svg+xml"),
        // The client's entry point, where its relative imports resolve: a
        // module's base URL is the one it was redirected to.
        "herald-client.js" => with_asset_headers(
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "herald-client/index.js")]).into_response(),
        ),
        _ => ApiError::not_found(format_args!("asset {file:?}")).into_response(),
    }
}

/// `GET /assets/herald-client/{*path}`: one module of the JS client, only
/// from the embedded table (no file system, so no path traversal).
pub async fn client_module(Path(path): Path<String>) -> Response {
    match CLIENT_MODULES.iter().find(|(p, _)| path.ends_with(".js") && *p == path) {
        Some((_, body)) => asset(body, JAVASCRIPT),
        None => ApiError::not_found(format_args!("asset {:?}", format!("herald-client/{path}"))).into_response(),
    }
}

/// One demo identity the dashboard offers as a one-click sign-in.
#[derive(Serialize, ToSchema)]
pub struct DemoToken {
    /// Shown on the sign-in button.
    pub label: String,
    pub sub: String,
    pub role: String,
    /// A JWT for the demo tenant.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct DemoTokens {
    pub tenant: String,
    /// Lifetime of each token, seconds.
    pub expires_in: u64,
    pub tokens: Vec<DemoToken>,
}

/// `GET /v1/demo/tokens`: short-lived tokens for the demo's staff member and
/// customers. Exists only under `serve --demo`; otherwise 404, so a
/// production server never hands out credentials.
#[utoipa::path(get, path = "/v1/demo/tokens", tag = "demo",
    description = "Only with `serve --demo`: short-lived JWTs for the demo tenant's staff and customers, \
        for the dashboard's one-click sign-in. 404 otherwise.",
    responses((status = 200, body = DemoTokens), (status = 404, body = super::http::error::ErrorBody),
        (status = 503, body = super::http::error::ErrorBody)))]
pub async fn demo_tokens(State(s): State<AppState>) -> Result<Response, ApiError> {
    if !s.demo {
        return Err(ApiError::not_found("route"));
    }
    let identities = [("Staff (sam)", "sam", "staff"), ("Admin (ada)", "ada", "admin")]
        .into_iter()
        .chain(crate::demo::CUSTOMERS.iter().map(|c| (*c, *c, "customer")));
    let mut tokens = Vec::new();
    for (label, sub, role) in identities {
        let token = s.auth.jwt.mint(sub, crate::demo::TENANT, role, DEMO_TOKEN_TTL_SECS).ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "demo sign-in needs an HS256 secret")
        })?;
        let label = if role == "customer" { format!("Customer ({label})") } else { label.to_string() };
        tokens.push(DemoToken { label, sub: sub.into(), role: role.into(), token });
    }
    let body = DemoTokens { tenant: crate::demo::TENANT.into(), expires_in: DEMO_TOKEN_TTL_SECS, tokens };
    let mut resp = Json(body).into_response();
    // Credentials: never cached by the browser or a proxy.
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::CLIENT_MODULES;
    use std::path::{Path, PathBuf};

    fn js_files(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if entry.file_type().unwrap().is_dir() {
                js_files(&entry.path(), &rel, out);
            } else if name.ends_with(".js") {
                out.push(rel);
            }
        }
    }

    /// `spec` (`./x.js`, `../y/z.js`) relative to the module at `from`.
    fn resolve(from: &str, spec: &str) -> Option<String> {
        let mut parts: Vec<&str> = from.split('/').collect();
        parts.pop();
        for seg in spec.split('/') {
            match seg {
                "." => {}
                ".." => {
                    parts.pop()?;
                }
                s => parts.push(s),
            }
        }
        Some(parts.join("/"))
    }

    #[tokio::test]
    async fn every_dashboard_asset_is_served() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name == "index.html" {
                continue;
            }
            let resp = super::asset_file(axum::extract::Path(name.clone())).await;
            assert_eq!(resp.status(), axum::http::StatusCode::OK, "assets/{name} is not served: add it to asset_file");
        }
    }

    #[test]
    fn every_client_module_is_embedded() {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/js/src");
        let mut on_disk = Vec::new();
        js_files(&src, "", &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = CLIENT_MODULES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "CLIENT_MODULES must list every .js file of clients/js/src");
    }

    #[test]
    fn client_modules_import_only_embedded_modules() {
        for (path, body) in CLIENT_MODULES {
            assert!(path.ends_with(".js"), "{path}");
            for (i, _) in body.match_indices(" from '").chain(body.match_indices("import '")) {
                let rest = &body[i..];
                let start = rest.find('\'').unwrap() + 1;
                let spec = &rest[start..start + rest[start..].find('\'').unwrap()];
                assert!(spec.starts_with("./") || spec.starts_with("../"), "{path} imports {spec:?}: not relative");
                let target =
                    resolve(path, spec).unwrap_or_else(|| panic!("{path} imports {spec:?}: outside the client"));
                assert!(
                    CLIENT_MODULES.iter().any(|(p, _)| *p == target),
                    "{path} imports {spec:?}: {target} is not embedded"
                );
            }
        }
    }
}
