//! The HTTP API: routes, shared state, and the middleware around them.

pub mod broadcast;
pub mod cors;
pub mod error;
pub mod events;
pub mod extract;
pub mod inspect;
pub mod jobs;
pub mod keys;
pub mod notifications;
pub mod openapi;
pub mod ops;
pub mod streams;

use crate::app::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use std::time::Instant;

/// The whole HTTP surface, used by the binary and by the tests.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.body_limit;
    Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/progress", post(jobs::report_progress))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/streams", get(streams::list))
        .route("/v1/jobs/{id}/streams/{name}", post(streams::append).get(streams::read))
        .route("/v1/jobs/{id}/streams/{name}/sse", get(streams::follow))
        .route("/v1/jobs/{id}/tasks", get(jobs::list_tasks))
        .route("/v1/jobs/{id}/tasks/{task_id}", put(jobs::upsert_task))
        .route("/v1/jobs/{id}/artifacts", post(jobs::add_artifact).get(jobs::list_artifacts))
        .route("/v1/events", get(events::poll_events))
        .route("/v1/notifications", post(notifications::create).get(notifications::list))
        .route("/v1/notifications/read-all", post(notifications::read_all))
        .route("/v1/notifications/{id}/read", post(notifications::read_one))
        .route("/v1/broadcast", post(broadcast::broadcast))
        .route("/v1/stats", get(ops::stats))
        .route("/v1/admin/inspect", get(inspect::inspect))
        .route("/v1/admin/keys", get(keys::list).post(keys::create))
        .route("/v1/admin/keys/{id}", delete(keys::revoke))
        .route("/v1/admin/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/ws", get(super::ws::upgrade))
        .route("/v1/sse", get(super::sse::stream))
        .route("/v1/sse/jobs", get(super::sse_jobs::stream))
        .route("/v1/demo/tokens", get(super::dashboard::demo_tokens))
        .route("/", get(super::dashboard::index))
        .route("/docs", get(super::dashboard::docs))
        .route("/assets/{file}", get(super::dashboard::asset_file))
        .route("/assets/herald-client/{*path}", get(super::dashboard::client_module))
        .route("/realtime/v1/websocket", get(super::phoenix::upgrade))
        .route("/socket/websocket", get(super::phoenix::upgrade))
        .route_service(super::socketio::PATH, super::socketio::service(&state))
        .route("/realtime/v1/api/broadcast", post(super::phoenix::rest::broadcast))
        .route("/api/broadcast", post(super::phoenix::rest::broadcast))
        .route("/rest/v1/{table}", get(super::postgrest::read_table))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(error::not_found_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::Extension(super::phoenix::Phoenix::new(&state)))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state)
}

/// Counts requests and their latency per route.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}
