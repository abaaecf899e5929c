//! The envelope every transport and the event log show an event in.

use crate::position::Position;
use serde::{Deserialize, Serialize};

/// `{topic, position, type, data, old?, time}`: one committed change as a
/// subscriber receives it (`GET /v1/events`, SSE `data:`, the native
/// protocol's `event` frames without their `op`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub topic: String,
    /// Strictly increasing in commit order; resume from it.
    pub position: Position,
    /// `job.created`, `job.updated`, `task.updated`, `artifact.created`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The row after the change (a job, a task, an artifact, a notification).
    pub data: serde_json::Value,
    /// The row before, for captured UPDATEs and DELETEs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    /// Commit time, RFC 3339.
    pub time: String,
}
