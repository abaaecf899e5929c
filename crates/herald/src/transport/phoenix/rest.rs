//! `POST /realtime/v1/api/broadcast` (and `/api/broadcast`): Supabase's REST
//! broadcast, `{messages: [{topic, event, payload, private?}]}`, to the rooms
//! Phoenix and native clients share. Ephemeral: nothing is stored.

use super::auth::{identify, Credential};
use crate::app::AppState;
use crate::session::rooms::{self, check_event_name, Broadcast};
use crate::transport::http::error::{ApiError, ErrorBody};
use crate::transport::http::extract::{bearer, JsonBody};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

/// Most messages in one request.
const MAX_MESSAGES: usize = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"messages": [{"topic": "room:lobby", "event": "announcement", "payload": {"text": "deploy at 18:00"}}]}))]
pub struct SupabaseBroadcast {
    #[schema(min_items = 1, max_items = 100)]
    pub messages: Vec<SupabaseMessage>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SupabaseMessage {
    /// Channel name without the `realtime:` prefix; reaches `room:<topic>`.
    #[schema(min_length = 1, max_length = 255)]
    pub topic: String,
    #[schema(min_length = 1, max_length = 256)]
    pub event: String,
    #[schema(value_type = Object)]
    pub payload: Box<serde_json::value::RawValue>,
    /// Accepted for compatibility; Herald's rooms are private to the tenant.
    #[serde(default)]
    pub private: bool,
}

/// The caller: `Authorization: Bearer`, else the `apikey` header.
pub struct Caller(pub crate::auth::Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .or_else(|| parts.headers.get("apikey").and_then(|v| v.to_str().ok()).map(str::to_string))
            .ok_or(crate::auth::AuthError::Missing)?;
        match identify(s, &token).await? {
            Credential::User(p) => Ok(Caller(p)),
            Credential::Anon { .. } => Err(ApiError::forbidden("the anon role may not broadcast; send a user's token")),
        }
    }
}

#[utoipa::path(post, path = "/realtime/v1/api/broadcast",
    summary = "Supabase REST broadcast", request_body = SupabaseBroadcast, tag = "supabase",
    description = "Supabase Realtime's REST broadcast (docs/SUPABASE.md). Also served at `/api/broadcast`.",
    responses((status = 202, description = "Handed to the rooms"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn broadcast(
    State(s): State<AppState>,
    Caller(p): Caller,
    body: JsonBody<SupabaseBroadcast>,
) -> Result<StatusCode, ApiError> {
    let messages = body.value.messages;
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid_field("messages", format!("must hold 1 to {MAX_MESSAGES} messages")));
    }
    for (i, m) in messages.iter().enumerate() {
        if m.topic.is_empty() || m.topic.len() > 255 {
            return Err(ApiError::invalid_field(&format!("messages[{i}].topic"), "must be 1 to 255 bytes"));
        }
        if let Err(m) = check_event_name(&m.event) {
            return Err(ApiError::invalid_field(&format!("messages[{i}]"), m));
        }
    }
    for m in messages {
        let room = format!("room:{}", m.topic.strip_prefix(super::channel::PREFIX).unwrap_or(&m.topic));
        let from = std::sync::Arc::clone(&p.sub);
        let tenant = std::sync::Arc::clone(&p.tenant);
        rooms::publish(&s, Broadcast { tenant, topic: room, event: m.event, data: m.payload, sender: None, from })?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/broadcast`, the same operation at the path of a bare Realtime server.
#[utoipa::path(post, path = "/api/broadcast",
    description = "The same as `POST /realtime/v1/api/broadcast`, at the path self-hosted Supabase Realtime serves it.", request_body = SupabaseBroadcast, tag = "supabase",
    responses((status = 202, description = "Handed to the rooms"), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
#[allow(dead_code)]
fn broadcast_alias() {}
