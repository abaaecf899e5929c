//! Why a write was refused: a rule said no, or the store failed.

use crate::model::job::JobRuleError;
use crate::model::JobStatus;
use crate::store::{StoreError, StoreErrorKind};

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored (same id, different body).
    #[error("{0}")]
    Conflict(String),
    #[error("job is {from}; it cannot become {to}")]
    IllegalTransition { from: JobStatus, to: JobStatus },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The change would make a stored document larger than its bound.
    #[error("{field}: {message}")]
    TooLarge { field: String, message: String },
    /// The job is finished; nothing about it may change any more.
    #[error("job is {0}; its tasks can no longer change")]
    JobFinished(JobStatus),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        WriteError::Invalid { field: field.into(), message: message.into() }
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WriteError::Store(e) if matches!(e.kind, StoreErrorKind::Retryable | StoreErrorKind::Unavailable))
    }
}

impl From<JobRuleError> for WriteError {
    fn from(e: JobRuleError) -> Self {
        match e {
            JobRuleError::IllegalTransition { from, to } => WriteError::IllegalTransition { from, to },
            JobRuleError::Invalid { field, message } => WriteError::Invalid { field: field.to_string(), message },
            JobRuleError::TooLarge { field, message } => WriteError::TooLarge { field: field.to_string(), message },
        }
    }
}
