//! The HTTP API: routes, shared state, and the middleware around them.

pub mod broadcast;
pub mod error;
pub mod events;
pub mod extract;
pub mod jobs;
pub mod notifications;
pub mod openapi;
pub mod ops;

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::store::DynStore;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits and timings the transports enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Largest WebSocket message, bytes.
    pub ws_max_message: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Messages per second a connection may send (a burst of twice that is allowed).
    pub messages_per_second: u32,
    /// Deliveries a connection may have queued before it is cut off as a slow consumer.
    pub outbox_capacity: usize,
    /// How often an idle connection is pinged.
    pub heartbeat_interval: Duration,
    /// How long a connection may stay silent before it is dropped as dead.
    pub heartbeat_timeout: Duration,
    /// Longest long-poll wait.
    pub max_poll_wait: Duration,
    /// Interval of SSE keep-alive comments.
    pub sse_keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_limit: 1024 * 1024,
            ws_max_message: 64 * 1024,
            max_subscriptions: 100,
            messages_per_second: 100,
            outbox_capacity: 4096,
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(60),
            max_poll_wait: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub limits: Arc<Limits>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Flips to true when the server begins shutting down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Started with `--demo`: enables the dashboard's demo sign-in.
    pub demo: bool,
}

/// The whole HTTP surface, used by the binary and by the tests.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.body_limit;
    Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/progress", post(jobs::report_progress))
        .route("/v1/jobs/{id}/tasks", get(jobs::list_tasks))
        .route("/v1/jobs/{id}/tasks/{task_id}", put(jobs::upsert_task))
        .route("/v1/jobs/{id}/artifacts", post(jobs::add_artifact).get(jobs::list_artifacts))
        .route("/v1/events", get(events::poll_events))
        .route("/v1/notifications", post(notifications::create).get(notifications::list))
        .route("/v1/notifications/read-all", post(notifications::read_all))
        .route("/v1/notifications/{id}/read", post(notifications::read_one))
        .route("/v1/broadcast", post(broadcast::broadcast))
        .route("/v1/stats", get(ops::stats))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/ws", get(super::ws::upgrade))
        .route("/v1/sse", get(super::sse::stream))
        .route("/v1/demo/tokens", get(super::dashboard::demo_tokens))
        .route("/", get(super::dashboard::index))
        .route("/assets/{file}", get(super::dashboard::asset_file))
        .route("/realtime/v1/websocket", get(super::phoenix::upgrade))
        .route("/socket/websocket", get(super::phoenix::upgrade))
        .route("/realtime/v1/api/broadcast", post(super::phoenix::rest::broadcast))
        .route("/api/broadcast", post(super::phoenix::rest::broadcast))
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

/// Resolves once the server starts shutting down.
pub async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
