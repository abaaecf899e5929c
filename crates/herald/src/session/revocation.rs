//! A connection that authenticated with an API key ends when the key is
//! revoked, and follows an expiry given to it later (a rotation's grace), on
//! every transport. Only connections holding a key listen, and only for key
//! ids; what a change means is read back from the authenticator.

use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// Which key changed, as far as one connection knows.
pub enum Changed {
    Key(Arc<str>),
    /// Changes were missed (the connection fell behind): re-check every key held.
    Unknown,
}

/// How often a connection holding a key re-checks it anyway: the backstop for
/// a change this node missed (a failed poll, a clock far off).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Key changes, for a connection that holds at least one key.
#[derive(Default)]
pub struct KeyChanges {
    rx: Option<broadcast::Receiver<Arc<str>>>,
    /// A change may have come between the authentication and the listening.
    recheck_now: bool,
    every: Option<tokio::time::Interval>,
}

impl KeyChanges {
    /// Starts listening if `p` authenticated with a key (and not already).
    pub fn follow(&mut self, s: &AppState, p: &Principal) {
        if p.key.is_some() && self.rx.is_none() {
            self.rx = Some(s.auth.key_changes());
            self.recheck_now = true;
            let start = tokio::time::Instant::now() + RECHECK_EVERY;
            self.every = Some(tokio::time::interval_at(start, RECHECK_EVERY));
        }
    }

    pub fn is_armed(&self) -> bool {
        self.rx.is_some()
    }

    /// The next change; never resolves when not listening. Cancel-safe.
    pub async fn next(&mut self) -> Changed {
        if std::mem::take(&mut self.recheck_now) {
            return Changed::Unknown;
        }
        let (Some(rx), Some(every)) = (self.rx.as_mut(), self.every.as_mut()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            r = rx.recv() => match r {
                Ok(id) => Changed::Key(id),
                Err(RecvError::Lagged(_)) => Changed::Unknown,
                Err(RecvError::Closed) => std::future::pending().await,
            },
            _ = every.tick() => Changed::Unknown,
        }
    }
}

impl Changed {
    /// Whether this change may concern `p`.
    pub fn concerns(&self, p: &Principal) -> bool {
        match (self, &p.key) {
            (_, None) => false,
            (Changed::Unknown, Some(_)) => true,
            (Changed::Key(id), Some(k)) => id == k,
        }
    }
}

/// Re-checks `p`'s key after a change: its new expiry goes into `p.exp`, or
/// the error says why the key no longer works. A store that cannot answer
/// keeps the connection as it is (it is checked again on the next change or
/// minute), rather than telling a client with a good key not to come back.
pub async fn recheck(s: &AppState, p: &mut Principal) -> Result<(), AuthError> {
    let Some(key) = p.key.clone() else { return Ok(()) };
    match s.auth.key_status(&key).await {
        Ok(exp) => {
            p.exp = exp;
            Ok(())
        }
        Err(AuthError::Unavailable(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
