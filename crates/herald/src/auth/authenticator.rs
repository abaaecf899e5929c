//! Turns a bearer credential into a [`Principal`]: API keys are recognised by
//! their `hk_` shape and checked against the store; anything else is a JWT.
//! It also remembers which keys were used (written in batches) and tells open
//! connections when a key they hold was revoked or given an expiry.

use super::{apikey, AuthError, JwtVerifier, Principal};
use crate::model::key::{status_of, KeyStatus};
use crate::model::time::now_ms;
use crate::store::{ApiKeyRecord, DynStore};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How long a key read from the store is trusted before it is read again: the
/// bound on how stale a node's view can be should it miss a change poll.
const KEY_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Authenticator {
    pub jwt: JwtVerifier,
    store: DynStore,
    /// Keys seen before, so a worker's every request does not query the store.
    keys: Arc<Mutex<HashMap<String, (ApiKeyRecord, Instant)>>>,
    /// Keys used since the last flush, and when.
    used: Arc<Mutex<HashMap<String, i64>>>,
    /// Ids of keys just revoked or given an expiry; connections holding one re-check it.
    changes: broadcast::Sender<Arc<str>>,
}

impl Authenticator {
    pub fn new(jwt: JwtVerifier, store: DynStore) -> Self {
        let (changes, _) = broadcast::channel(256);
        Authenticator { jwt, store, keys: Arc::default(), used: Arc::default(), changes }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let Some((id, secret)) = apikey::parse(token) else {
            return self.jwt.verify(token);
        };
        let record = self.key(id).await?.ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
        if !apikey::matches(secret, &record.hash) {
            return Err(AuthError::Invalid("unknown API key".into()));
        }
        let now = now_ms();
        let exp = usable_until(&record, now)?;
        self.used.lock().insert(record.id.clone(), now);
        Ok(Principal {
            sub: Arc::from(format!("key:{}", record.id)),
            tenant: Arc::from(record.tenant.as_str()),
            role: record.role,
            exp,
            key: Some(Arc::from(record.id.as_str())),
        })
    }

    /// Whether the key `id` still works, and until when (seconds since the
    /// epoch): what a connection holding it checks when told it changed.
    pub async fn key_status(&self, id: &str) -> Result<Option<u64>, AuthError> {
        let record = self.key(id).await?.ok_or(AuthError::Revoked)?;
        usable_until(&record, now_ms())
    }

    /// Connections holding a key listen here for the ids of changed keys.
    pub fn key_changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// A key was revoked or given an expiry (here or on another node): forget
    /// what was cached and tell the connections that hold it.
    pub fn key_changed(&self, record: ApiKeyRecord) {
        let id: Arc<str> = Arc::from(record.id.as_str());
        self.keys.lock().insert(record.id.clone(), (record, Instant::now()));
        // No receiver means no connection holds any key: nothing to tell.
        let _ = self.changes.send(id);
    }

    /// Reads key `id` from the store again and applies it as a change.
    pub async fn reload_key(&self, id: &str) {
        self.keys.lock().remove(id);
        if let Ok(Some(record)) = self.key(id).await {
            self.key_changed(record);
        }
    }

    /// The keys used since the last call, with when; for the batched `last_used_at` write.
    pub fn take_used(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.used.lock()).into_iter().collect()
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKeyRecord>, AuthError> {
        let cached = self.keys.lock().get(id).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(r, _)| r.clone());
        if let Some(r) = cached {
            return Ok(Some(r));
        }
        let found = self.store.api_key(id).await.map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if let Some(r) = &found {
            // A read that began before a revoke must not replace the revoked
            // record `key_changed` cached meanwhile.
            let mut keys = self.keys.lock();
            let newer_cached = keys.get(id).is_some_and(|(c, _)| c.changed_at > r.changed_at);
            if newer_cached {
                return Ok(keys.get(id).map(|(c, _)| c.clone()));
            }
            keys.insert(id.to_string(), (r.clone(), Instant::now()));
        }
        Ok(found)
    }
}

/// A key's expiry in seconds since the epoch (`None`: none), or why it no longer works.
fn usable_until(record: &ApiKeyRecord, now: i64) -> Result<Option<u64>, AuthError> {
    match status_of(record, now) {
        KeyStatus::Revoked => Err(AuthError::Revoked),
        KeyStatus::Expired => Err(AuthError::Expired),
        // Rounded up: a connection is closed at the key's end, not a second early.
        KeyStatus::Expiring => Ok(record.expires_at.map(|ms| (ms.max(0) as u64).div_ceil(1000))),
        KeyStatus::Active => Ok(None),
    }
}
