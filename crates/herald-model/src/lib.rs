//! Herald's wire model: jobs, tasks, artifacts, notifications, log positions,
//! the bodies of the worker API and the event envelope — shared by the server
//! (`herald`) and the Rust SDK (`herald-client`), so the two cannot drift.
//! Pure data and the rules that go with it (legal status moves); no I/O.
//!
//! The `openapi` feature derives the OpenAPI schemas the server serves.

pub mod event;
pub mod ids;
pub mod job;
pub mod notification;
pub mod position;
pub mod requests;
pub mod stream;
pub mod task;
pub mod time;

pub use event::WireEvent;
pub use job::{Job, JobStatus, ProgressReport};
pub use notification::{Level, Notification};
pub use position::Position;
pub use requests::{CreateJob, CreateNotification, NewArtifact};
pub use task::{Task, TaskStatus, TaskUpsert};

/// An artifact a job produced along the way (a screenshot URL, an OCR result, a label).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Artifact {
    pub id: String,
    pub job_id: String,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
}
