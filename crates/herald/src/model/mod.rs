//! The domain: jobs, tasks, artifacts, notifications and the events that record
//! every change to them. Pure data and rules; no I/O.

pub mod event;
pub mod job_query;
pub mod key;
pub mod role;
pub mod table;
pub mod topic;

// The wire model (rows, statuses and their rules, request bodies) is its own
// crate, shared with the Rust SDK.
pub use herald_model::{ids, job, notification, position, requests, stream, task, time, Artifact};

pub use event::{Event, EventType};
pub use job::{Job, JobStatus};
pub use job_query::{JobFacts, JobQuery};
pub use notification::Notification;
pub use position::Position;
pub use role::{JobVisibility, Role};
pub use table::{CapturedTable, Catalog};
pub use task::{Task, TaskStatus};
pub use topic::Topic;
