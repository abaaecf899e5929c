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

    /// The deadline of a connection: before it authenticates, `authenticate_by`;
    /// after, its token's expiry, if any. (Key 0 stands for the first: no
    /// unexpired token has `exp` 0.)
    pub fn set_for(&mut self, principal: Option<&Principal>, authenticate_by: tokio::time::Instant) {
        let key = match principal {
            None => Some(0),
            Some(p) => p.exp,
        };
        self.set(key, |exp| if exp == 0 { authenticate_by } else { expiry_instant(exp) });
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

/// When a token with `exp` (seconds since the epoch) expires, on tokio's clock.
/// Never panics: a past `exp` is now, and anything further away than about a
/// century is a century away (as good as never, and no timer overflows).
pub fn expiry_instant(exp: u64) -> tokio::time::Instant {
    const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now_ms = u64::try_from(crate::model::time::now_ms()).unwrap_or(0);
    let left = Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms)).min(CAP);
    let now = tokio::time::Instant::now();
    now.checked_add(left).or_else(|| now.checked_add(Duration::from_secs(86_400))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expiry_instants_never_overflow() {
        let now = tokio::time::Instant::now();
        let past = expiry_instant(0);
        assert!(past <= tokio::time::Instant::now() && past >= now);
        for exp in [u64::MAX, 10_000_000_000_000_000_000, 253_402_300_799] {
            let at = expiry_instant(exp);
            let ahead = at - now;
            assert!(ahead > Duration::from_secs(99 * 365 * 24 * 3600), "{exp}: {ahead:?}");
            assert!(ahead <= Duration::from_secs(101 * 365 * 24 * 3600), "{exp}: {ahead:?}");
        }
        let soon = crate::model::time::now_ms() as u64 / 1000 + 60;
        let ahead = expiry_instant(soon) - now;
        assert!(ahead > Duration::from_secs(58) && ahead <= Duration::from_secs(60), "{ahead:?}");
    }
}
