//! The unit of the log: one change, with its position and the topics it belongs to.

use super::Position;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};

/// Event types Herald writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    JobCreated,
    JobUpdated,
    JobCompleted,
    JobFailed,
    JobCancelled,
    JobStalled,
    TaskCreated,
    TaskUpdated,
    ArtifactCreated,
    NotificationCreated,
    NotificationRead,
    /// Changes of captured application tables (PostgreSQL).
    RowInserted,
    RowUpdated,
    RowDeleted,
    TableTruncated,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobCreated => "job.created",
            EventType::JobUpdated => "job.updated",
            EventType::JobCompleted => "job.completed",
            EventType::JobFailed => "job.failed",
            EventType::JobCancelled => "job.cancelled",
            EventType::JobStalled => "job.stalled",
            EventType::TaskCreated => "task.created",
            EventType::TaskUpdated => "task.updated",
            EventType::ArtifactCreated => "artifact.created",
            EventType::NotificationCreated => "notification.created",
            EventType::NotificationRead => "notification.read",
            EventType::RowInserted => "row.inserted",
            EventType::RowUpdated => "row.updated",
            EventType::RowDeleted => "row.deleted",
            EventType::TableTruncated => "table.truncated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use EventType::*;
        [
            JobCreated,
            JobUpdated,
            JobCompleted,
            JobFailed,
            JobCancelled,
            JobStalled,
            TaskCreated,
            TaskUpdated,
            ArtifactCreated,
            NotificationCreated,
            NotificationRead,
            RowInserted,
            RowUpdated,
            RowDeleted,
            TableTruncated,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// The Supabase-style table an event's row belongs to.
    pub fn table(self) -> &'static str {
        match self {
            EventType::JobCreated
            | EventType::JobUpdated
            | EventType::JobCompleted
            | EventType::JobFailed
            | EventType::JobCancelled
            | EventType::JobStalled => "jobs",
            EventType::TaskCreated | EventType::TaskUpdated => "tasks",
            EventType::ArtifactCreated => "artifacts",
            EventType::NotificationCreated | EventType::NotificationRead => "notifications",
            // A captured table's name is the event's `table`.
            EventType::RowInserted | EventType::RowUpdated | EventType::RowDeleted | EventType::TableTruncated => "",
        }
    }

    /// Whether the row is new (INSERT) rather than changed (UPDATE).
    pub fn is_insert(self) -> bool {
        matches!(
            self,
            EventType::JobCreated
                | EventType::TaskCreated
                | EventType::ArtifactCreated
                | EventType::NotificationCreated
                | EventType::RowInserted
        )
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A committed change. `data` is the new row as JSON, serialized once when the
/// change was written and shared from then on.
#[derive(Debug, Clone)]
pub struct Event {
    /// Strictly increasing in commit order.
    pub position: Position,
    pub tenant: Arc<str>,
    pub kind: EventType,
    /// Topics this event is routed to (`job:<id>`, `jobs`, `jobs:owner:<sub>`, `user:<sub>`).
    pub topics: Vec<String>,
    /// The job the row belongs to, if any.
    pub job_id: Option<String>,
    /// Owner of that job, which decides who may see the event.
    pub owner: Option<String>,
    pub data: Arc<RawValue>,
    /// The old row of a captured UPDATE or DELETE (replica identity full).
    pub old: Option<Arc<RawValue>>,
    /// The captured table (`schema.name`) the row belongs to; `None` for Herald's own.
    pub table: Option<Arc<str>>,
    /// Commit time, epoch milliseconds.
    pub time: i64,
    /// `data` parsed, on first use: row filters (Supabase bindings) read fields,
    /// and parsing once per event beats once per subscriber.
    pub row: OnceLock<serde_json::Map<String, serde_json::Value>>,
}

impl Event {
    /// The JSON of an event as every transport shows it:
    /// `{op?, topic, position, type, data, time}`.
    pub fn wire_json(&self, op: Option<&str>, topic: &str) -> String {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            op: Option<&'a str>,
            topic: &'a str,
            position: Position,
            #[serde(rename = "type")]
            kind: &'static str,
            data: &'a serde_json::value::RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            old: Option<&'a serde_json::value::RawValue>,
            time: String,
        }
        serde_json::to_string(&Wire {
            op,
            topic,
            position: self.position,
            kind: self.kind.as_str(),
            data: &self.data,
            old: self.old.as_deref(),
            time: crate::model::time::format_ms(self.time),
        })
        .unwrap_or_default()
    }

    /// The row as a JSON object (empty if `data` is not one).
    pub fn row(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.row.get_or_init(|| serde_json::from_str(self.data.get()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server writes is what the SDKs (`herald_model::WireEvent`) read.
    #[test]
    fn the_wire_json_parses_as_the_sdk_event() {
        let e = Event {
            position: Position::from_u64(42),
            tenant: Arc::from("acme"),
            kind: EventType::JobUpdated,
            topics: vec!["job:j1".into()],
            job_id: Some("j1".into()),
            owner: None,
            data: Arc::from(RawValue::from_string(r#"{"id":"j1","status":"running"}"#.into()).unwrap()),
            old: Some(Arc::from(RawValue::from_string(r#"{"id":"j1"}"#.into()).unwrap())),
            table: None,
            time: 1_700_000_000_123,
            row: OnceLock::new(),
        };
        let parsed: herald_model::WireEvent = serde_json::from_str(&e.wire_json(Some("event"), "job:j1")).unwrap();
        assert_eq!(parsed.topic, "job:j1");
        assert_eq!(parsed.position, Position::from_u64(42));
        assert_eq!(parsed.kind, "job.updated");
        assert_eq!(parsed.data["status"], "running");
        assert_eq!(parsed.old, Some(serde_json::json!({ "id": "j1" })));
        assert_eq!(parsed.time, "2023-11-14T22:13:20.123Z");
    }
}
