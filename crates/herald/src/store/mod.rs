//! Durable storage of rows and the ordered event log, behind the [`Store`] trait
//! so the API layer does not know which database it talks to.

pub mod sqlite;

use crate::model::{job::ProgressReport, Artifact};
use crate::model::{notification::Level, task::TaskUpsert, Event, Job, JobStatus, Notification, Task};
use crate::model::{JobVisibility, Role};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A change to apply in one transaction.
#[derive(Debug, Clone)]
pub enum Command {
    CreateJob(NewJob),
    ReportProgress {
        job_id: String,
        report: ProgressReport,
    },
    UpsertTask {
        job_id: String,
        task_id: String,
        upsert: TaskUpsert,
    },
    AddArtifact {
        job_id: String,
        kind: String,
        payload: serde_json::Value,
    },
    CreateNotification(NewNotification),
    MarkRead {
        recipient: String,
        id: String,
    },
    MarkAllRead {
        recipient: String,
    },
    /// Marks running jobs silent for longer than `timeout_ms` as stalled (all tenants).
    DetectStalls {
        timeout_ms: i64,
    },
    /// Deletes events older than `before_ms` (all tenants).
    Prune {
        before_ms: i64,
    },
    CreateApiKey {
        id: String,
        name: String,
        role: Role,
        hash: Vec<u8>,
    },
}

/// A job to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: Option<String>,
    pub owner: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub total: Option<u64>,
    pub status: Option<JobStatus>,
    pub metadata: Option<serde_json::Value>,
    pub tasks: Vec<TaskUpsert>,
}

/// A notification to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNotification {
    pub recipient: String,
    pub level: Level,
    pub title: String,
    pub body: Option<String>,
    pub link: Option<String>,
}

/// The answer to a write: what an HTTP handler returns, and what an idempotent
/// replay returns again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// True when a new resource was made (HTTP 201), false otherwise (200).
    pub created: bool,
    /// The response body, serialized once by the writer.
    pub body: Box<serde_json::value::RawValue>,
}

/// An `Idempotency-Key` and a fingerprint of the request that carried it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller it belongs to (keys are scoped per tenant and caller).
    pub sub: String,
    pub key: String,
    pub fingerprint: String,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub owner: Option<String>,
    pub updated_after: Option<i64>,
    /// Return jobs older than this cursor (newest first).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A page of results and the cursor of the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<i64>,
}

/// Events read from the log.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Position of the newest event in the whole log.
    pub head: u64,
    /// Events at or below this position were pruned; a reader behind it must resync.
    pub floor: u64,
}

/// A stored worker API key.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: Role,
    pub hash: Vec<u8>,
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored (same id, different body).
    #[error("{0}")]
    Conflict(String),
    #[error("job is {from}; it cannot become {to}")]
    IllegalTransition { from: JobStatus, to: JobStatus },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The job is finished; nothing about it may change any more.
    #[error("job is {0}; its tasks can no longer change")]
    JobFinished(JobStatus),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

impl From<crate::model::job::JobRuleError> for StoreError {
    fn from(e: crate::model::job::JobRuleError) -> Self {
        match e {
            crate::model::job::JobRuleError::IllegalTransition { from, to } => {
                StoreError::IllegalTransition { from, to }
            }
            crate::model::job::JobRuleError::Invalid { field, message } => {
                StoreError::Invalid { field: field.to_string(), message }
            }
        }
    }
}

/// Durable rows and the event log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies a command in a transaction and returns once it is durable.
    async fn write(&self, tenant: &str, cmd: Command, idem: Option<IdempotencyKey>) -> Result<Reply, StoreError>;
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError>;
    /// Whether a job exists, and its owner: an indexed read, for access checks
    /// that must not load (or be timed by) the whole document.
    async fn job_owner(&self, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError>;
    async fn jobs(&self, tenant: &str, vis: &JobVisibility, filter: JobFilter) -> Result<Page<Job>, StoreError>;
    async fn tasks(&self, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError>;
    async fn artifacts(&self, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError>;
    /// A recipient's notifications (newest first) and their unread count.
    async fn notifications(
        &self,
        tenant: &str,
        recipient: &str,
        unread_only: bool,
        limit: usize,
    ) -> Result<(Vec<Notification>, u64), StoreError>;
    /// Events of any of `topics` after `since`, oldest first.
    async fn events(&self, tenant: &str, topics: &[String], since: u64, limit: usize) -> Result<EventPage, StoreError>;
    /// The newest position in the log.
    async fn head(&self) -> Result<u64, StoreError>;
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Flushes pending writes and stops the writer.
    async fn close(&self);
}

pub type DynStore = Arc<dyn Store>;
