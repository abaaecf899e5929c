//! `POST /v1/broadcast`: REST callers reach WebSocket clients — one room, one
//! user, or the whole tenant. Ephemeral: nothing is stored.

use super::error::{ApiError, ErrorBody};
use super::extract::{Auth, JsonBody};
use crate::app::AppState;
use crate::auth::Role;
use crate::model::topic::{inbox_topic, Topic, TENANT_TOPIC};
use crate::session::rooms::{self, check_event_name, Broadcast};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"topic": "room:job:crawl-42", "event": "cursor", "payload": {"x": 120, "y": 48}}))]
pub struct BroadcastRequest {
    /// `room:<name>` to reach one room.
    #[schema(pattern = r"^room:[A-Za-z0-9_.:-]{1,128}$")]
    pub topic: Option<String>,
    /// A `sub`, to reach every connection of that user.
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    pub user: Option<String>,
    /// True to reach every connection of the tenant.
    #[serde(default)]
    pub tenant: bool,
    /// Event name the receivers see.
    #[schema(min_length = 1, max_length = 256)]
    pub event: String,
    #[schema(value_type = Object)]
    pub payload: Box<serde_json::value::RawValue>,
}

#[derive(Serialize, ToSchema)]
pub struct BroadcastAccepted {
    /// Connections on this node that received it.
    pub delivered: usize,
}

#[utoipa::path(post, path = "/v1/broadcast",
    summary = "Broadcast to a room, a user or the tenant",
    description = "Sends an ephemeral message (nothing is stored) to the connections in one room (`topic: room:<name>`), to every connection of one user (`user`), or to the whole tenant (`tenant: true`); in a cluster, on every node. Answers how many connections of this node received it. Customers broadcast over the WebSocket instead (403 here).", request_body = BroadcastRequest, tag = "realtime",
    responses((status = 202, body = BroadcastAccepted), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn broadcast(
    State(s): State<AppState>,
    Auth(p): Auth,
    body: JsonBody<BroadcastRequest>,
) -> Result<(StatusCode, Json<BroadcastAccepted>), ApiError> {
    if p.role == Role::Customer {
        return Err(ApiError::forbidden("customers broadcast over the WebSocket, to rooms"));
    }
    let b = body.value;
    check_event_name(&b.event).map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", m))?;
    let topic = match (&b.topic, &b.user, b.tenant) {
        (Some(t), None, false) => match Topic::parse(t) {
            Ok(Topic::Room(_)) => t.clone(),
            _ => return Err(ApiError::invalid_field("topic", "must be room:<name>")),
        },
        (None, Some(u), false) => {
            crate::model::ids::validate_id(u).map_err(|m| ApiError::invalid_field("user", m))?;
            inbox_topic(u)
        }
        (None, None, true) => TENANT_TOPIC.to_string(),
        _ => return Err(ApiError::invalid_field("topic", "give exactly one of topic, user or tenant: true")),
    };
    let delivered = rooms::publish(
        &s,
        Broadcast { tenant: p.tenant, topic, event: b.event, data: b.payload, sender: None, from: p.sub },
    )?;
    Ok((StatusCode::ACCEPTED, Json(BroadcastAccepted { delivered })))
}
