//! The domain: jobs, tasks, artifacts, notifications and the events that record
//! every change to them. Pure data and rules; no I/O.

pub mod event;
pub mod ids;
pub mod job;
pub mod notification;
pub mod position;
pub mod role;
pub mod table;
pub mod task;
pub mod time;
pub mod topic;

pub use event::{Event, EventType};
pub use job::{Job, JobStatus};
pub use notification::Notification;
pub use position::Position;
pub use role::{JobVisibility, Role};
pub use table::{CapturedTable, Catalog};
pub use task::{Task, TaskStatus};
pub use topic::Topic;

/// An artifact a job produced along the way (a screenshot URL, an OCR result, a label).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    pub id: String,
    pub job_id: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "crate::model::time::rfc3339")]
    pub created_at: i64,
}
