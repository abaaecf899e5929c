//! The write vocabulary: every change a caller can ask for, and the answer.

use crate::model::{job::ProgressReport, notification::Level, task::TaskUpsert, JobStatus, Role};
use serde::{Deserialize, Serialize};

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
    /// Appends chunks to a job's output stream (no event: chunks have offsets
    /// of their own, and one event per token would drown the log).
    AppendChunks {
        job_id: String,
        stream: String,
        /// The chunks as one JSON array, serialized once by the caller.
        chunks: String,
        count: u64,
        /// The stream's size bound: older segments go past it.
        max_bytes: u64,
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
    /// Revokes a key of the tenant now.
    RevokeApiKey {
        id: String,
    },
    /// Replaces a key: a new one with the same name and role, and the old one
    /// revoked now or, with a grace period, expiring at its end.
    RotateApiKey {
        id: String,
        new_id: String,
        new_hash: Vec<u8>,
        grace_ms: i64,
    },
    /// Records when keys were last used (any tenant).
    TouchApiKeys {
        used: Vec<(String, i64)>,
    },
    /// Stores what a recoverable realtime session holds (no event: it is no
    /// one's change). A session id another `sub` holds is left alone.
    SaveSession {
        id: String,
        sub: String,
        doc: String,
        /// When the state was taken (epoch ms), if not now: an older save never
        /// replaces a newer one (saves of one session may come from several nodes).
        at: Option<i64>,
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
