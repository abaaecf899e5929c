//! `/v1/admin/keys`: a tenant's admins list, create, revoke and rotate its
//! worker API keys. Revoking ends the key's open connections on every node.

use super::error::{ApiError, ErrorBody};
use super::extract::{check_id, optional_json_body, Auth, JsonBody, Path};
use crate::app::AppState;
use crate::auth::{keys, Principal, Role};
use crate::model::key::ApiKey;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Newest first, revoked and expired ones included.
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "crawler-fleet", "role": "worker"}))]
pub struct CreateKey {
    /// What the key is for, e.g. the worker fleet that uses it (1–200 characters).
    #[schema(example = "crawler-fleet")]
    pub name: String,
    /// `worker` (reports on jobs; the default) or `service` (also sends notifications and broadcasts).
    #[schema(example = "worker")]
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"grace_seconds": 3600}))]
pub struct RotateKey {
    /// Seconds the old key keeps working, so workers can move to the new one
    /// (0–2592000; default 0: revoked at once). Its connections close when it ends.
    #[schema(example = 3600)]
    pub grace_seconds: Option<u64>,
}

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("managing API keys is for the tenant's admins"))
    }
}

#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin",
    summary = "List the tenant's API keys",
    description = "Every key of the caller's tenant, newest first, with its status and when it was last used (recorded in batches, up to a minute behind). Never the secret. Admins only.",
    responses((status = 200, body = KeyList), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<KeyList>, ApiError> {
    require_admin(&p)?;
    Ok(Json(KeyList { keys: keys::list(&s, &p.tenant).await? }))
}

#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", request_body = CreateKey,
    summary = "Create an API key",
    description = "Creates a worker or service key for the caller's tenant. The answer holds the key (`token`): it is shown this once and stored only as a hash. Admins only.",
    responses((status = 201, body = ApiKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(State(s): State<AppState>, Auth(p): Auth, body: JsonBody<CreateKey>) -> Result<Response, ApiError> {
    require_admin(&p)?;
    let b = body.value;
    let role = match b.role.as_deref().unwrap_or("worker") {
        "worker" => Role::Worker,
        "service" => Role::Service,
        other => return Err(ApiError::invalid_field("role", format!("{other:?}: an API key is worker or service"))),
    };
    let key = keys::create(&s, &p.tenant, b.name, role).await?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin",
    summary = "Revoke an API key",
    description = "The key stops working at once: requests with it get 401 `key_revoked`, and its open WebSocket, SSE, long-poll, Phoenix and Socket.IO connections are closed, on every node within a second. Revoking a revoked key answers the same. Admins only.",
    params(("id" = String, Path, description = "The key's id (the 12 hex digits after `hk_`)")),
    responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    require_admin(&p)?;
    check_id("key id", &id)?;
    Ok(Json(keys::revoke(&s, &p.tenant, &id).await?))
}

#[utoipa::path(post, path = "/v1/admin/keys/{id}/rotate", tag = "admin", request_body = RotateKey,
    summary = "Rotate an API key",
    description = "Creates a new key with the old one's name and role and answers it with its `token` (shown once). The old key is revoked at once, or keeps working for `grace_seconds` and then expires, closing its connections. A revoked or expired key cannot be rotated (409). Admins only.",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 201, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    require_admin(&p)?;
    check_id("key id", &id)?;
    let (body, _) = optional_json_body::<RotateKey>(&s, req).await?;
    let grace = body.grace_seconds.unwrap_or(0);
    if grace > 30 * 24 * 3600 {
        return Err(ApiError::invalid_field("grace_seconds", "must be 0 to 2592000 (30 days)"));
    }
    let key = keys::rotate(&s, &p.tenant, &id, std::time::Duration::from_secs(grace)).await?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}
