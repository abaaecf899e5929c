//! Turns a bearer credential into a [`Principal`]: API keys are recognised by
//! their `hk_` shape and checked against the store; anything else is a JWT.

use super::{apikey, AuthError, JwtVerifier, Principal};
use crate::store::{ApiKeyRecord, DynStore};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct Authenticator {
    pub jwt: JwtVerifier,
    store: DynStore,
    /// Keys seen before, so a worker's every request does not query the store.
    keys: Arc<Mutex<HashMap<String, ApiKeyRecord>>>,
}

impl Authenticator {
    pub fn new(jwt: JwtVerifier, store: DynStore) -> Self {
        Authenticator { jwt, store, keys: Arc::default() }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let Some((id, secret)) = apikey::parse(token) else {
            return self.jwt.verify(token);
        };
        let cached = self.keys.lock().get(id).cloned();
        let record = match cached {
            Some(r) => r,
            None => {
                let r = self
                    .store
                    .api_key(id)
                    .await
                    .map_err(|e| AuthError::Invalid(format!("cannot check API key: {e}")))?
                    .ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
                self.keys.lock().insert(id.to_string(), r.clone());
                r
            }
        };
        if !apikey::matches(secret, &record.hash) {
            return Err(AuthError::Invalid("unknown API key".into()));
        }
        Ok(Principal {
            sub: Arc::from(format!("key:{}", record.id)),
            tenant: Arc::from(record.tenant.as_str()),
            role: record.role,
            exp: None,
        })
    }
}
