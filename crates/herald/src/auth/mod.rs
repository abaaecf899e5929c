//! Who is calling: JWTs (HS256 secret, or RS/ES keys from a JWKS file) and
//! worker API keys, turned into a [`Principal`]; and what a principal may read.

pub mod access;
pub mod apikey;
pub mod authenticator;
pub mod jwt;

pub use access::{can_publish_room, can_read_topic, can_write_jobs, JobVisibility};
pub use authenticator::Authenticator;
pub use jwt::{JwtConfig, JwtVerifier};

use std::sync::Arc;

/// What a caller is allowed to do, from its role claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the tenant.
    Admin,
    /// Reads the whole tenant.
    Staff,
    /// Reads only jobs it owns and its own notifications.
    Customer,
    /// Writes jobs in its tenant.
    Worker,
    /// A backend: reads and writes the whole tenant.
    Service,
}

impl Role {
    /// Parses Herald's role names and Supabase's (`service_role` → service,
    /// `authenticated` → customer).
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "staff" => Role::Staff,
            "customer" | "authenticated" => Role::Customer,
            "worker" => Role::Worker,
            "service" | "service_role" => Role::Service,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Staff => "staff",
            Role::Customer => "customer",
            Role::Worker => "worker",
            Role::Service => "service",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: Arc<str>,
    pub tenant: Arc<str>,
    pub role: Role,
    /// Expiry, seconds since the epoch; `None` for API keys.
    pub exp: Option<u64>,
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
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthorized",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}
