//! Notifications: create (services), list and mark read (their recipient).

use super::error::{ApiError, ErrorBody};
use super::extract::{check_id, idempotency_key, Auth, JsonBody, Path, Query};
use super::jobs::reply_response;
use crate::app::AppState;
use crate::auth::Role;
use crate::model::requests::CreateNotification;
use crate::model::Notification;
use crate::rules::{Command, NewNotification};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListNotifications {
    /// Only unread ones.
    pub unread: Option<bool>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationList {
    pub notifications: Vec<Notification>,
    pub unread_count: u64,
}

#[utoipa::path(post, path = "/v1/notifications",
    summary = "Send a notification",
    description = "Stores a notification for one user of the caller's tenant and pushes it live to that user's connections (`user:<sub>`). Services, workers and admins; customers get 403. Safe to retry with `Idempotency-Key`.", request_body = CreateNotification, tag = "notifications",
    responses((status = 201, body = Notification), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: JsonBody<CreateNotification>,
) -> Result<Response, ApiError> {
    if p.role == Role::Customer {
        return Err(ApiError::forbidden("customers may not send notifications"));
    }
    let b = body.value;
    crate::model::ids::validate_id(&b.recipient).map_err(|m| ApiError::invalid_field("recipient", m))?;
    if b.title.is_empty() || b.title.len() > 1024 {
        return Err(ApiError::invalid_field("title", "must be 1 to 1024 bytes"));
    }
    if b.body.as_ref().is_some_and(|v| v.len() > 16 * 1024) {
        return Err(ApiError::invalid_field("body", "must be at most 16384 bytes"));
    }
    if b.link.as_ref().is_some_and(|v| v.len() > 2048) {
        return Err(ApiError::invalid_field("link", "must be at most 2048 bytes"));
    }
    let idem = idempotency_key(&headers, &p, "POST", "/v1/notifications", &body.digest)?;
    let cmd = Command::CreateNotification(NewNotification {
        recipient: b.recipient,
        level: b.level,
        title: b.title,
        body: b.body,
        link: b.link,
    });
    Ok(reply_response(s.write(&p.tenant, cmd, idem).await?))
}

#[utoipa::path(get, path = "/v1/notifications",
    summary = "List my notifications",
    description = "The caller's own notifications, newest first, with the unread count. `unread=true` lists only the unread ones.", tag = "notifications", params(ListNotifications),
    responses((status = 200, body = NotificationList)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ListNotifications>,
) -> Result<Json<NotificationList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit: must be 1 to 500"));
    }
    let (notifications, unread_count) =
        s.store.notifications(&p.tenant, &p.sub, q.unread.unwrap_or(false), limit).await?;
    Ok(Json(NotificationList { notifications, unread_count }))
}

#[utoipa::path(post, path = "/v1/notifications/{id}/read",
    summary = "Mark one notification read",
    description = "Marks one of the caller's notifications read; the change is pushed to the caller's other connections. Another user's notification is 404.", tag = "notifications", params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = Notification), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn read_one(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id("notification id", &id)?;
    let idem = idempotency_key(&headers, &p, "POST", &format!("/v1/notifications/{id}/read"), "")?;
    let cmd = Command::MarkRead { recipient: p.sub.to_string(), id };
    Ok(reply_response(s.write(&p.tenant, cmd, idem).await?))
}

#[utoipa::path(post, path = "/v1/notifications/read-all",
    summary = "Mark all my notifications read",
    description = "Marks every unread notification of the caller read and answers how many were.", tag = "notifications",
    responses((status = 200, description = "`{\"marked_read\": n}`")), security(("bearer" = [])))]
pub async fn read_all(State(s): State<AppState>, Auth(p): Auth, headers: HeaderMap) -> Result<Response, ApiError> {
    let idem = idempotency_key(&headers, &p, "POST", "/v1/notifications/read-all", "")?;
    let cmd = Command::MarkAllRead { recipient: p.sub.to_string() };
    Ok(reply_response(s.write(&p.tenant, cmd, idem).await?))
}
