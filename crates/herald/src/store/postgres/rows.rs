//! Rows of Herald's tables as JSON objects keyed by column name, and the model
//! types built from them. Both ways a row reaches Herald give the same object:
//! a query's `to_jsonb(row)` and a replicated tuple through [`tuple_json`]; so
//! a job changed by hand in psql becomes exactly the event a report would.

use super::pgoutput::{Relation, Tuple, Value as PgValue};
use crate::model::job::JobError;
use crate::model::notification::Level;
use crate::model::{Artifact, Job, JobStatus, Notification, Task, TaskStatus};
use crate::store::StoreError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// PostgreSQL type OIDs whose text form Herald turns into JSON numbers or booleans.
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// A replicated tuple as a JSON object, typed the way `to_jsonb` types a row:
/// numbers and booleans as such, json/jsonb parsed, everything else as text.
/// `Unchanged` values (TOASTed, not resent) are left out.
pub fn tuple_json(relation: &Relation, tuple: &Tuple) -> Map<String, Value> {
    let mut row = Map::with_capacity(relation.columns.len());
    for (column, value) in relation.columns.iter().zip(&tuple.0) {
        let json = match value {
            PgValue::Null => Value::Null,
            PgValue::Unchanged => continue,
            PgValue::Text(text) => text_json(column.type_oid, text),
        };
        row.insert(column.name.clone(), json);
    }
    row
}

fn text_json(type_oid: u32, text: &str) -> Value {
    let parsed = match type_oid {
        oid::BOOL => Some(Value::Bool(text == "t")),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text.parse::<i64>().ok().map(Value::from),
        // NaN and the infinities have no JSON number: they stay text.
        oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number)
        }
        oid::JSON | oid::JSONB => serde_json::from_str(text).ok(),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// Builds a row type from a row object.
pub fn from_row<T: DeserializeOwned>(table: &str, row: Map<String, Value>) -> Result<T, StoreError> {
    serde_json::from_value(Value::Object(row))
        .map_err(|e| StoreError::internal(format!("a row of herald.{table} does not read as one: {e}")))
}

/// Parses the text of `to_jsonb(row)`.
pub fn parse_row<T: DeserializeOwned>(table: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::internal(format!("a row of herald.{table} does not read as one: {e}")))
}

/// Counts are `bigint` with a CHECK of `>= 0`; a negative one can only come
/// from a row written around that check.
fn count(n: i64) -> u64 {
    n.max(0) as u64
}

/// A row of `herald.jobs`.
#[derive(Debug, Deserialize)]
pub struct JobRow {
    pub tenant: String,
    pub id: String,
    pub owner: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: JobStatus,
    pub total: Option<i64>,
    pub succeeded: i64,
    pub failed: i64,
    pub progress: f64,
    pub stage: Option<String>,
    pub current_item: Option<String>,
    pub metadata: Value,
    pub errors: Vec<JobError>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub version: i64,
    pub counts_reported: bool,
    pub progress_reported: bool,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Job {
        Job {
            id: r.id,
            tenant: r.tenant,
            owner: r.owner,
            kind: r.kind,
            title: r.title,
            status: r.status,
            total: r.total.map(count),
            succeeded: count(r.succeeded),
            failed: count(r.failed),
            progress: r.progress,
            stage: r.stage,
            current_item: r.current_item,
            metadata: r.metadata,
            errors: r.errors,
            created_at: r.created_at,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            version: count(r.version),
            counts_reported: r.counts_reported,
            progress_reported: r.progress_reported,
        }
    }
}

/// A row of `herald.tasks`.
#[derive(Debug, Deserialize)]
pub struct TaskRow {
    pub tenant: String,
    pub job_id: String,
    pub id: String,
    pub name: Option<String>,
    pub status: TaskStatus,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub job_owner: Option<String>,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Task {
        Task {
            id: r.id,
            job_id: r.job_id,
            name: r.name,
            status: r.status,
            attempts: r.attempts.clamp(0, u32::MAX as i64) as u32,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// A row of `herald.artifacts`.
#[derive(Debug, Deserialize)]
pub struct ArtifactRow {
    pub tenant: String,
    pub job_id: String,
    pub id: String,
    pub kind: String,
    pub payload: Value,
    pub created_at: i64,
    pub job_owner: Option<String>,
}

impl From<ArtifactRow> for Artifact {
    fn from(r: ArtifactRow) -> Artifact {
        Artifact { id: r.id, job_id: r.job_id, kind: r.kind, payload: r.payload, created_at: r.created_at }
    }
}

/// A row of `herald.notifications`.
#[derive(Debug, Deserialize)]
pub struct NotificationRow {
    pub tenant: String,
    pub id: String,
    pub recipient: String,
    pub level: Level,
    pub title: String,
    pub body: Option<String>,
    pub link: Option<String>,
    pub job_id: Option<String>,
    pub read: bool,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Notification {
        Notification {
            id: r.id,
            recipient: r.recipient,
            level: r.level,
            title: r.title,
            body: r.body,
            link: r.link,
            job_id: r.job_id,
            read: r.read,
            created_at: r.created_at,
            read_at: r.read_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::pgoutput::Column;

    fn column(name: &str, type_oid: u32) -> Column {
        Column { name: name.into(), type_oid, type_modifier: -1, part_of_key: false }
    }

    #[test]
    fn tuples_type_like_to_jsonb() {
        let relation = Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: vec![
                column("b", oid::BOOL),
                column("n", oid::INT8),
                column("f", oid::FLOAT8),
                column("j", oid::JSONB),
                column("s", 25),
                column("nan", oid::FLOAT8),
                column("gone", 25),
                column("null", 25),
            ],
        };
        let tuple = Tuple(vec![
            PgValue::Text("t".into()),
            PgValue::Text("-42".into()),
            PgValue::Text("12.5".into()),
            PgValue::Text(r#"{"a": [1, 2]}"#.into()),
            PgValue::Text("hello".into()),
            PgValue::Text("NaN".into()),
            PgValue::Unchanged,
            PgValue::Null,
        ]);
        let row = tuple_json(&relation, &tuple);
        assert_eq!(
            Value::Object(row),
            serde_json::json!({"b": true, "n": -42, "f": 12.5, "j": {"a": [1, 2]}, "s": "hello", "nan": "NaN", "null": null})
        );
    }
}
