//! Why a store call failed: a kind the callers can act on, what was being
//! done, and the driver's own error as the source.

use std::sync::Arc;

/// What kind of failure, independent of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The row does not exist.
    NotFound,
    /// The write conflicts with what is stored (a duplicate key).
    Conflict,
    /// The database refused the value.
    Invalid,
    /// A transient failure (busy, a serialization conflict): the same call may succeed again.
    Retryable,
    /// The database cannot be reached, or the writer has stopped.
    Unavailable,
    /// A bug or a corrupt row.
    Internal,
}

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{context}", prefix(*.kind))]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub context: String,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

fn prefix(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Unavailable => "store unavailable: ",
        StoreErrorKind::Internal => "store error: ",
        StoreErrorKind::Retryable => "store busy: ",
        _ => "",
    }
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, context: impl Into<String>) -> Self {
        StoreError { kind, context: context.into(), source: None }
    }

    /// Wraps a driver error.
    pub fn caused_by(
        kind: StoreErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError { kind, context: context.into(), source: Some(Arc::new(source)) }
    }

    pub fn internal(context: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Internal, context)
    }

    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, context)
    }

    /// A stored JSON document that does not parse.
    pub fn corrupt(e: serde_json::Error) -> Self {
        Self::caused_by(StoreErrorKind::Internal, format!("corrupt row: {e}"), e)
    }
}
