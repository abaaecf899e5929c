//! What a committed row change means: the log event that announces a change
//! of one of Herald's own tables, routed exactly as the rules route it when a
//! worker reports through the API (`crate::rules`), so a job moved by hand in
//! psql reaches the same subscribers with the same JSON.

use super::pgoutput::{Message, Relation, Tuple};
use super::rows::{from_row, tuple_json, ArtifactRow, JobRow, NotificationRow, TaskRow};
use crate::model::topic::{job_topics, user_topic};
use crate::model::{Artifact, CapturedTable, EventType, Job, JobStatus, Notification, Task};
use crate::rules::job_event_type;
use crate::store::StoreError;
use serde_json::{Map, Value};

/// An event before the sequencer gives it its position.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub tenant: String,
    pub kind: EventType,
    pub job_id: Option<String>,
    pub owner: Option<String>,
    pub topics: Vec<String>,
    /// The row as the API shows it, serialized once.
    pub data: String,
    /// A captured table's old row (UPDATE, DELETE).
    pub old: Option<String>,
    /// The captured table, `schema.name`.
    pub table: Option<String>,
    /// Commit time, epoch milliseconds.
    pub time: i64,
}

/// A row change as JSON objects: the new row (none for a DELETE) and the old
/// one where the table's replica identity sends it.
struct RowChange {
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
}

fn row_change(relation: &Relation, message: &Message) -> Option<RowChange> {
    let json = |t: &Tuple| tuple_json(relation, t);
    match message {
        Message::Insert { new, .. } => Some(RowChange { new: Some(json(new)), old: None }),
        Message::Update { old, new, .. } => {
            // Unchanged TOASTed values are not resent: the old row has them.
            let new = match old {
                Some(old) => new.merged_with(old),
                None => new.clone(),
            };
            Some(RowChange { new: Some(json(&new)), old: old.as_ref().map(json) })
        }
        Message::Delete { old, .. } => Some(RowChange { new: None, old: Some(json(old)) }),
        _ => None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::corrupt)
}

/// The event a change of one of Herald's own tables (`herald.<table>`) is
/// announced as; `None` for changes that announce nothing (a DELETE: Herald
/// never deletes these rows, and a subscriber has no event for it).
pub fn own_table_event(relation: &Relation, message: &Message, time: i64) -> Result<Option<LogEvent>, StoreError> {
    let Some(RowChange { new: Some(new), old }) = row_change(relation, message) else { return Ok(None) };
    let inserted = matches!(message, Message::Insert { .. });
    let event = match relation.name.as_str() {
        "jobs" => {
            let before = match (inserted, &old) {
                (true, _) => None,
                (false, Some(old)) => old.get("status").and_then(Value::as_str).and_then(JobStatus::parse),
                // No old row: the status may have changed; "updated" is the safe name.
                (false, None) => None,
            };
            let row: JobRow = from_row("jobs", new)?;
            let job = Job::from(row);
            let kind = match (inserted, before) {
                (true, _) => EventType::JobCreated,
                (false, None) => EventType::JobUpdated,
                (false, Some(before)) => job_event_type(Some(before), job.status),
            };
            LogEvent {
                tenant: job.tenant.clone(),
                kind,
                job_id: Some(job.id.clone()),
                owner: job.owner.clone(),
                topics: job_topics(&job.id, job.owner.as_deref(), true),
                data: to_json(&job)?,
                old: None,
                table: None,
                time,
            }
        }
        "tasks" => {
            let row: TaskRow = from_row("tasks", new)?;
            let (tenant, owner) = (row.tenant.clone(), row.job_owner.clone());
            let task = Task::from(row);
            LogEvent {
                tenant,
                kind: if inserted { EventType::TaskCreated } else { EventType::TaskUpdated },
                job_id: Some(task.job_id.clone()),
                topics: job_topics(&task.job_id, owner.as_deref(), false),
                owner,
                data: to_json(&task)?,
                old: None,
                table: None,
                time,
            }
        }
        "artifacts" => {
            if !inserted {
                return Ok(None);
            }
            let row: ArtifactRow = from_row("artifacts", new)?;
            let (tenant, owner) = (row.tenant.clone(), row.job_owner.clone());
            let artifact = Artifact::from(row);
            LogEvent {
                tenant,
                kind: EventType::ArtifactCreated,
                job_id: Some(artifact.job_id.clone()),
                topics: job_topics(&artifact.job_id, owner.as_deref(), false),
                owner,
                data: to_json(&artifact)?,
                old: None,
                table: None,
                time,
            }
        }
        "notifications" => {
            let was_read = old.as_ref().and_then(|o| o.get("read")).and_then(Value::as_bool).unwrap_or(false);
            let row: NotificationRow = from_row("notifications", new)?;
            let tenant = row.tenant.clone();
            let n = Notification::from(row);
            let kind = if inserted {
                EventType::NotificationCreated
            } else if n.read && !was_read {
                EventType::NotificationRead
            } else {
                // Notifications have no event for other edits.
                return Ok(None);
            };
            LogEvent {
                tenant,
                kind,
                job_id: None,
                owner: None,
                topics: vec![user_topic(&n.recipient)],
                data: to_json(&n)?,
                old: None,
                table: None,
                time,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

fn key_text(row: &Map<String, Value>, column: &str) -> Option<String> {
    crate::model::table::key_text(row.get(column)?)
}

/// The event a change of a captured application table is announced as:
/// `row.inserted`, `row.updated` (with the old row) or `row.deleted` (the old
/// row), in the row's tenant, routed to `table:<schema>.<name>` and, with an
/// owner column, to the owner's topic. A row without a tenant announces nothing.
pub fn captured_event(
    table: &CapturedTable,
    relation: &Relation,
    message: &Message,
    time: i64,
) -> Result<Option<LogEvent>, StoreError> {
    let Some(change) = row_change(relation, message) else { return Ok(None) };
    let kind = match message {
        Message::Insert { .. } => EventType::RowInserted,
        Message::Update { .. } => EventType::RowUpdated,
        _ => EventType::RowDeleted,
    };
    let Some(row) = change.new.as_ref().or(change.old.as_ref()) else { return Ok(None) };
    let tenant = match &table.tenant_column {
        Some(column) => key_text(row, column),
        None => table.default_tenant.clone(),
    };
    let Some(tenant) = tenant else {
        metrics::counter!("herald_capture_rows_without_tenant_total").increment(1);
        return Ok(None);
    };
    let owner = table.owner_column.as_deref().and_then(|c| key_text(row, c));
    let mut topics = vec![table.topic()];
    if let Some(owner) = &owner {
        topics.push(table.owner_topic(owner));
    }
    let json = |m: &Map<String, Value>| to_json(m);
    Ok(Some(LogEvent {
        tenant,
        kind,
        job_id: None,
        owner,
        topics,
        data: json(row)?,
        // A DELETE's row is the old one already.
        old: if kind == EventType::RowDeleted { None } else { change.old.as_ref().map(json).transpose()? },
        table: Some(table.qualified()),
        time,
    }))
}

/// A TRUNCATE of a captured table. Its tenant is the table's default one, or
/// empty: then the sequencer announces it to every tenant the table has had
/// events in (the rows are gone; the log knows whose they were).
pub fn truncated_event(table: &CapturedTable, time: i64) -> LogEvent {
    LogEvent {
        tenant: if table.tenant_column.is_none() {
            table.default_tenant.clone().unwrap_or_default()
        } else {
            String::new()
        },
        kind: EventType::TableTruncated,
        job_id: None,
        owner: None,
        topics: vec![table.topic()],
        data: "{}".to_string(),
        old: None,
        table: Some(table.qualified()),
        time,
    }
}
