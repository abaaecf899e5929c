//! Worker API keys as admins see them: never the secret, never its hash.

use crate::model::time::{format_ms, now_ms};
use crate::store::ApiKeyRecord;
use serde::{Deserialize, Serialize};

/// Where a key stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Works, with no end set.
    Active,
    /// Works until `expires_at` (a rotation's grace period).
    Expiring,
    /// Its `expires_at` has passed.
    Expired,
    /// Revoked: refused everywhere, its open connections were closed.
    Revoked,
}

/// An API key as listed to its tenant's admins.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    #[schema(example = "3f9a2c41d0e7")]
    pub id: String,
    pub tenant: String,
    #[schema(example = "crawler-fleet")]
    pub name: String,
    /// `worker` or `service`.
    #[schema(example = "worker")]
    pub role: String,
    pub status: KeyStatus,
    /// RFC 3339.
    pub created_at: String,
    /// Last authenticated use, recorded in batches: up to a minute behind.
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The key itself (`hk_<id>_<secret>`): only in the answer that created it,
    /// never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ApiKey {
    pub fn from_record(r: &ApiKeyRecord) -> ApiKey {
        ApiKey {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            name: r.name.clone(),
            role: r.role.as_str().to_string(),
            status: status_of(r, now_ms()),
            created_at: format_ms(r.created_at),
            last_used_at: r.last_used_at.map(format_ms),
            expires_at: r.expires_at.map(format_ms),
            revoked_at: r.revoked_at.map(format_ms),
            token: None,
        }
    }
}

/// A key's status at `now` (epoch ms).
pub fn status_of(r: &ApiKeyRecord, now: i64) -> KeyStatus {
    match (r.revoked_at, r.expires_at) {
        (Some(_), _) => KeyStatus::Revoked,
        (None, Some(at)) if at <= now => KeyStatus::Expired,
        (None, Some(_)) => KeyStatus::Expiring,
        (None, None) => KeyStatus::Active,
    }
}
