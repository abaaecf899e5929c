//! API key lifecycle: create, revoke, rotate (with an optional grace period for
//! the old key) and the batched record of last use. No event is logged: keys
//! are no subscriber's business; every node learns of a change by polling
//! `changed_at` (see `auth::keywatch`).

use super::{to_raw, Reply, WriteError};
use crate::model::key::{status_of, ApiKey, KeyStatus};
use crate::model::Role;
use crate::store::{ApiKeyRecord, WriteTx};

/// The longest grace period a rotation may give the old key.
pub const MAX_GRACE_MS: i64 = 30 * 24 * 3600 * 1000;

pub fn create(
    tx: &mut dyn WriteTx,
    tenant: &str,
    id: String,
    name: String,
    role: Role,
    hash: Vec<u8>,
) -> Result<Reply, WriteError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(WriteError::invalid("name", "must be 1 to 200 characters"));
    }
    let key = ApiKeyRecord::new(id, tenant.to_string(), name, role, hash);
    tx.insert_api_key(&key)?;
    answer(tx, tenant, &key.id, true)
}

/// Revokes a key now. Revoking a revoked key changes nothing and answers as the first time did.
pub fn revoke(tx: &mut dyn WriteTx, tenant: &str, id: &str) -> Result<Reply, WriteError> {
    let key = existing(tx, tenant, id)?;
    if key.revoked_at.is_none() {
        let now = tx.now();
        tx.change_api_key(tenant, id, Some(now), None)?;
    }
    answer(tx, tenant, id, false)
}

/// A new key with the old one's name and role; the old one is revoked now, or
/// expires after `grace_ms` (never later than it already would).
pub fn rotate(
    tx: &mut dyn WriteTx,
    tenant: &str,
    id: &str,
    new_id: String,
    new_hash: Vec<u8>,
    grace_ms: i64,
) -> Result<Reply, WriteError> {
    if !(0..=MAX_GRACE_MS).contains(&grace_ms) {
        return Err(WriteError::invalid("grace_seconds", "must be 0 to 2592000 (30 days)"));
    }
    let old = existing(tx, tenant, id)?;
    let now = tx.now();
    match status_of(&old, now) {
        KeyStatus::Revoked | KeyStatus::Expired => {
            return Err(WriteError::Conflict(format!("API key {id} is no longer valid; create a new key instead")));
        }
        KeyStatus::Active | KeyStatus::Expiring => {}
    }
    let new = ApiKeyRecord::new(new_id, tenant.to_string(), old.name.clone(), old.role, new_hash);
    tx.insert_api_key(&new)?;
    if grace_ms == 0 {
        tx.change_api_key(tenant, id, Some(now), None)?;
    } else {
        let until = old.expires_at.map_or(now + grace_ms, |at| at.min(now + grace_ms));
        tx.change_api_key(tenant, id, None, Some(until))?;
    }
    answer(tx, tenant, &new.id, true)
}

fn existing(tx: &mut dyn WriteTx, tenant: &str, id: &str) -> Result<ApiKeyRecord, WriteError> {
    tx.api_key(tenant, id)?.ok_or_else(|| WriteError::NotFound(format!("API key {id}")))
}

/// The key as it now stands, as the reply.
fn answer(tx: &mut dyn WriteTx, tenant: &str, id: &str, created: bool) -> Result<Reply, WriteError> {
    let key = existing(tx, tenant, id)?;
    Ok(Reply { created, body: to_raw(&ApiKey::from_record(&key))? })
}
