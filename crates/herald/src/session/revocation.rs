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

/// Key changes, for a connection that holds at least one key.
#[derive(Default)]
pub struct KeyChanges {
    rx: Option<broadcast::Receiver<Arc<str>>>,
}

impl KeyChanges {
    /// Starts listening if `p` authenticated with a key (and not already).
    pub fn follow(&mut self, s: &AppState, p: &Principal) {
        if p.key.is_some() && self.rx.is_none() {
            self.rx = Some(s.auth.key_changes());
        }
    }

    pub fn is_armed(&self) -> bool {
        self.rx.is_some()
    }

    /// The next change; never resolves when not listening. Cancel-safe.
    pub async fn next(&mut self) -> Changed {
        let Some(rx) = self.rx.as_mut() else { return std::future::pending().await };
        match rx.recv().await {
            Ok(id) => Changed::Key(id),
            Err(RecvError::Lagged(_)) => Changed::Unknown,
            Err(RecvError::Closed) => std::future::pending().await,
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
/// the error says why the key no longer works.
pub async fn recheck(s: &AppState, p: &mut Principal) -> Result<(), AuthError> {
    let Some(key) = p.key.clone() else { return Ok(()) };
    p.exp = s.auth.key_status(&key).await?;
    Ok(())
}
