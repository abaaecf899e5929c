//! Managing API keys, shared by the admin HTTP API and the `herald key` CLI:
//! create, list, revoke, rotate. A key's secret exists only in the answer that
//! created it; a revoke or rotate here is applied to this node's connections
//! at once, and reaches every other node through [`super::keywatch`].

use super::apikey;
use crate::app::AppState;
use crate::model::key::ApiKey;
use crate::model::Role;
use crate::rules::{Command, Reply, WriteError};
use crate::store::StoreError;

pub async fn create(s: &AppState, tenant: &str, name: String, role: Role) -> Result<ApiKey, WriteError> {
    if !matches!(role, Role::Worker | Role::Service) {
        return Err(WriteError::invalid("role", "an API key's role is worker or service"));
    }
    let key = apikey::generate();
    let reply = s.write(tenant, Command::CreateApiKey { id: key.id, name, role, hash: key.hash }, None).await?;
    with_token(reply, key.token)
}

pub async fn list(s: &AppState, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
    Ok(s.store.api_keys(tenant).await?.iter().map(ApiKey::from_record).collect())
}

pub async fn revoke(s: &AppState, tenant: &str, id: &str) -> Result<ApiKey, WriteError> {
    let reply = s.write(tenant, Command::RevokeApiKey { id: id.to_string() }, None).await?;
    s.auth.reload_key(id).await;
    parse(reply)
}

/// A new key replacing `id`; the old one is revoked now, or expires after `grace`.
pub async fn rotate(s: &AppState, tenant: &str, id: &str, grace: std::time::Duration) -> Result<ApiKey, WriteError> {
    let key = apikey::generate();
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let cmd = Command::RotateApiKey { id: id.to_string(), new_id: key.id, new_hash: key.hash, grace_ms };
    let reply = s.write(tenant, cmd, None).await?;
    s.auth.reload_key(id).await;
    with_token(reply, key.token)
}

fn parse(reply: Reply) -> Result<ApiKey, WriteError> {
    serde_json::from_str(reply.body.get()).map_err(|e| StoreError::corrupt(e).into())
}

fn with_token(reply: Reply, token: String) -> Result<ApiKey, WriteError> {
    let mut key = parse(reply)?;
    key.token = Some(token);
    Ok(key)
}
