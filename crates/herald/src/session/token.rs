//! Token lifetime on a long-lived connection: refreshing in place, and the
//! one timer that ends a connection (or a channel) when its token expires.

use super::error::SessionError;
use crate::app::AppState;
use crate::auth::Principal;
use std::time::Duration;

/// Verifies a refreshed token for a connection authenticated as `old`: it must
/// keep the tenant and the subject. The caller then re-authorizes every topic.
pub async fn refresh(s: &AppState, old: &Principal, token: &str) -> Result<Principal, SessionError> {
    let new = s.auth.authenticate(token).await?;
    if new.tenant != old.tenant || new.sub != old.sub {
        return Err(SessionError::invalid("invalid_token", "a refreshed token must keep the tenant and sub"));
    }
    Ok(new)
}

/// A token's expiry (or the deadline to authenticate) as one timer that is
/// re-armed only when the deadline's key changes. A fresh `sleep_until` on
/// every turn of a connection's loop would register and drop a timer for every
/// delivery batch, on every subscriber.
#[derive(Default)]
pub struct Deadline {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    key: Option<u64>,
}

impl Deadline {
    /// Arms the timer for `key` (e.g. a token's `exp`) at `at(key)`; keeps it as
    /// it is when already armed for `key`; disarms it for `None`.
    pub fn set(&mut self, key: Option<u64>, at: impl FnOnce(u64) -> tokio::time::Instant) {
        if key == self.key {
            return;
        }
        self.key = key;
        match (key, self.sleep.as_mut()) {
            (None, _) => self.sleep = None,
            (Some(k), Some(sleep)) => sleep.as_mut().reset(at(k)),
            (Some(k), None) => self.sleep = Some(Box::pin(tokio::time::sleep_until(at(k)))),
        }
    }

    pub fn is_armed(&self) -> bool {
        self.sleep.is_some()
    }

    /// Resolves when the armed deadline passes; never, when disarmed. Once it
    /// has passed, the next `set` re-arms even for the same key, so a deadline
    /// that fired early by the wall clock is recomputed instead of firing again
    /// at once forever.
    pub async fn passed(&mut self) {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
        self.key = None;
    }
}

/// Longest wait a deadline is armed for; later expiries are re-armed when it passes.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a token with `exp` (seconds since the epoch) expires, on tokio's clock.
pub fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now_s = crate::model::time::now_ms() as f64 / 1000.0;
    let left = (exp as f64 - now_s).clamp(0.0, MAX_WAIT.as_secs_f64());
    tokio::time::Instant::now() + Duration::from_secs_f64(left)
}
