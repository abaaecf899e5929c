//! Why the session core refused something, independent of the wire: each
//! transport words it in its own frames (an error frame, a `phx_reply`, an
//! HTTP status) but the kind and code are decided once, here.

use crate::auth::AuthError;
use crate::store::{StoreError, StoreErrorKind};

/// What kind of refusal; transports map it to their status or close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is malformed (a bad topic name, an empty event name).
    Invalid,
    /// No valid credentials.
    Unauthorized,
    /// The caller may not do this.
    Forbidden,
    /// The thing does not exist, or the caller may not know that it does.
    NotFound,
    /// A per-connection limit was reached.
    Limit,
    /// The store does not answer; try again.
    Unavailable,
    /// A bug or a corrupt row.
    Internal,
}

/// A refusal with a stable code (the same codes as the HTTP API) and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    pub kind: Refusal,
    pub code: &'static str,
    pub message: String,
}

impl SessionError {
    pub fn new(kind: Refusal, code: &'static str, message: impl Into<String>) -> Self {
        SessionError { kind, code, message: message.into() }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Refusal::Invalid, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Refusal::Forbidden, "forbidden", message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(Refusal::NotFound, "not_found", format!("{what} not found"))
    }

    pub fn limit(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Refusal::Limit, code, message)
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        let (kind, code) = match e.kind {
            StoreErrorKind::NotFound => (Refusal::NotFound, "not_found"),
            StoreErrorKind::Unavailable | StoreErrorKind::Retryable => (Refusal::Unavailable, "unavailable"),
            _ => (Refusal::Internal, "internal"),
        };
        if kind == Refusal::Internal {
            tracing::error!(error = %e, "store error in a session");
        }
        SessionError::new(kind, code, e.to_string())
    }
}

impl From<AuthError> for SessionError {
    fn from(e: AuthError) -> Self {
        SessionError::new(Refusal::Unauthorized, e.code(), e.to_string())
    }
}
