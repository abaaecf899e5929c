//! Operations: liveness, readiness, Prometheus metrics and hub statistics.

use super::error::ApiError;
use super::extract::Auth;
use crate::app::AppState;
use crate::auth::Role;
use crate::hub::TenantCounts;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The store answers"), (status = 503, description = "The store does not answer or the server is stopping")))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if *s.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "shutting_down" })));
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "error": e.to_string() })),
        ),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Connections and subscriptions of the caller's tenant.
    pub tenant: TenantCounts,
    /// Topics with at least one subscriber, on this node, all tenants.
    pub topics: usize,
}

#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    responses((status = 200, body = Stats), (status = 403, description = "Only admin, staff and service")), security(("bearer" = [])))]
pub async fn stats(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<Stats>, ApiError> {
    if !matches!(p.role, Role::Admin | Role::Staff | Role::Service) {
        return Err(ApiError::forbidden("stats are for admin, staff and service roles"));
    }
    let (tenants, topics) = s.hub.stats();
    Ok(Json(Stats { tenant: tenants.get(&*p.tenant).copied().unwrap_or_default(), topics }))
}
