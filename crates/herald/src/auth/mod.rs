//! Who is calling: JWTs (HS256 secret, or RS/ES keys from a JWKS file) and
//! worker API keys, turned into a [`Principal`]; and what a principal may read.

pub mod access;
pub mod apikey;
pub mod authenticator;
pub mod jwt;
pub mod keys;
pub mod keywatch;

pub use crate::model::role::{JobVisibility, Role};
pub use access::{can_cancel_jobs, can_publish_room, can_read_topic, can_write_jobs};
pub use authenticator::Authenticator;
pub use jwt::{JwtConfig, JwtVerifier};

use std::sync::Arc;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: Arc<str>,
    pub tenant: Arc<str>,
    pub role: Role,
    /// Expiry, seconds since the epoch; `None` for an API key without one.
    pub exp: Option<u64>,
    /// The API key this caller authenticated with, if it did: revoking it ends
    /// the caller's open connections.
    pub key: Option<Arc<str>>,
}

impl Principal {
    /// How much of the tenant's jobs this caller sees.
    pub fn job_visibility(&self) -> JobVisibility {
        JobVisibility::of_role(self.role, &self.sub)
    }
}

/// Why a credential was refused; each maps to a stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("API key revoked")]
    Revoked,
    /// The credential could not be checked (the store did not answer): try again.
    #[error("cannot check the credential now: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthorized",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Revoked => "key_revoked",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}
