//! `postgres_changes` over Herald's rows: the four tables exposed as
//! `public.jobs`, `public.tasks`, `public.artifacts`, `public.notifications`;
//! bindings with PostgREST-style filters; and the change payload built once per
//! event. Nothing here queries the database per subscriber: filters run in
//! memory on the row each event carries.

use crate::hub::{Delivery, Payload};
use crate::model::{Event, EventType};
use serde_json::{json, Map, Value};

/// A table clients can listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Jobs,
    Tasks,
    Artifacts,
    Notifications,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Jobs, Table::Tasks, Table::Artifacts, Table::Notifications];

    pub fn parse(s: &str) -> Option<Table> {
        Some(match s {
            "jobs" => Table::Jobs,
            "tasks" => Table::Tasks,
            "artifacts" => Table::Artifacts,
            "notifications" => Table::Notifications,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::Tasks => "tasks",
            Table::Artifacts => "artifacts",
            Table::Notifications => "notifications",
        }
    }

    fn of(kind: EventType) -> Table {
        match kind.table() {
            "jobs" => Table::Jobs,
            "tasks" => Table::Tasks,
            "artifacts" => Table::Artifacts,
            _ => Table::Notifications,
        }
    }

    /// Column types as Postgres would name them, so realtime-js converts values.
    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Table::Jobs => &[
                ("id", "text"),
                ("tenant", "text"),
                ("owner", "text"),
                ("kind", "text"),
                ("title", "text"),
                ("status", "text"),
                ("total", "int8"),
                ("succeeded", "int8"),
                ("failed", "int8"),
                ("progress", "float8"),
                ("stage", "text"),
                ("current_item", "text"),
                ("metadata", "jsonb"),
                ("errors", "jsonb"),
                ("created_at", "timestamptz"),
                ("started_at", "timestamptz"),
                ("updated_at", "timestamptz"),
                ("finished_at", "timestamptz"),
                ("version", "int8"),
                ("counts_reported", "bool"),
                ("progress_reported", "bool"),
            ],
            Table::Tasks => &[
                ("id", "text"),
                ("job_id", "text"),
                ("name", "text"),
                ("status", "text"),
                ("attempts", "int4"),
                ("error", "text"),
                ("created_at", "timestamptz"),
                ("started_at", "timestamptz"),
                ("updated_at", "timestamptz"),
                ("finished_at", "timestamptz"),
            ],
            Table::Artifacts => &[
                ("id", "text"),
                ("job_id", "text"),
                ("kind", "text"),
                ("payload", "jsonb"),
                ("created_at", "timestamptz"),
            ],
            Table::Notifications => &[
                ("id", "text"),
                ("recipient", "text"),
                ("level", "text"),
                ("title", "text"),
                ("body", "text"),
                ("link", "text"),
                ("job_id", "text"),
                ("read", "bool"),
                ("created_at", "timestamptz"),
                ("read_at", "timestamptz"),
            ],
        }
    }
}

/// Which changes a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    All,
    Insert,
    Update,
    Delete,
}

/// A comparison of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    /// One value, or the list of `in.(a,b)`.
    pub values: Vec<String>,
}

/// A `postgres_changes` binding as the client asked for it.
#[derive(Debug, Clone)]
pub struct BindingSpec {
    /// What the join reply repeats: the client's own `event`, `schema`, `table`
    /// and `filter` values, compared by realtime-js with `===`.
    pub echo: Map<String, Value>,
    pub kind: ChangeKind,
    /// Empty means every table.
    pub tables: Vec<Table>,
    pub conditions: Vec<Condition>,
    /// Herald extension: resume after this log position.
    pub since: Option<u64>,
}

impl BindingSpec {
    /// Values of `column = eq.x` / `column = in.(...)` conditions, if any.
    pub fn equals(&self, column: &str) -> Option<Vec<String>> {
        self.conditions.iter().find(|c| c.column == column && matches!(c.op, Op::Eq | Op::In)).map(|c| c.values.clone())
    }

    pub fn wants_table(&self, t: Table) -> bool {
        self.tables.is_empty() || self.tables.contains(&t)
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("postgres_changes.{k}: must be a string")),
    }
}

/// Reads one entry of `config.postgres_changes`.
pub fn parse_binding(v: &Value) -> Result<BindingSpec, String> {
    let m = v.as_object().ok_or("postgres_changes entries must be objects")?;
    let event = opt_str(m, "event")?.ok_or("postgres_changes.event: missing (INSERT, UPDATE, DELETE or *)")?;
    let kind = match event.to_ascii_uppercase().as_str() {
        "*" => ChangeKind::All,
        "INSERT" => ChangeKind::Insert,
        "UPDATE" => ChangeKind::Update,
        "DELETE" => ChangeKind::Delete,
        _ => return Err(format!("postgres_changes.event: {event:?} is not INSERT, UPDATE, DELETE or *")),
    };
    let schema = opt_str(m, "schema")?.unwrap_or("public");
    if schema != "public" && schema != "*" {
        return Err(format!("schema {schema:?} does not exist; Herald's tables are in public"));
    }
    let tables = match opt_str(m, "table")? {
        None | Some("*") => Vec::new(),
        Some(t) => vec![Table::parse(t).ok_or_else(|| {
            format!("table public.{t} does not exist; Herald has public.jobs, public.tasks, public.artifacts, public.notifications")
        })?],
    };
    let conditions = match opt_str(m, "filter")? {
        None | Some("") => Vec::new(),
        Some(f) => parse_filter(f)?,
    };
    let since = match m.get("since") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("postgres_changes.since: must be a log position (an integer)")?),
    };
    let mut echo = Map::new();
    for k in ["event", "schema", "table", "filter"] {
        if let Some(v) = m.get(k) {
            echo.insert(k.to_string(), v.clone());
        }
    }
    Ok(BindingSpec { echo, kind, tables, conditions, since })
}

/// Parses `column=op.value`, several joined by commas (all must hold).
/// `in.(a,b,c)` lists values; a comma inside its parentheses does not split.
pub fn parse_filter(f: &str) -> Result<Vec<Condition>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in f.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&f[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&f[start..]);
    parts.into_iter().map(parse_condition).collect()
}

fn parse_condition(s: &str) -> Result<Condition, String> {
    let bad = || format!("filter {s:?}: expected column=op.value with op one of eq, neq, lt, lte, gt, gte, in");
    let (column, rest) = s.trim().split_once('=').ok_or_else(bad)?;
    let (op, value) = rest.split_once('.').ok_or_else(bad)?;
    let column = column.trim();
    if column.is_empty() {
        return Err(bad());
    }
    let op = match op {
        "eq" => Op::Eq,
        "neq" => Op::Neq,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "in" => Op::In,
        _ => return Err(bad()),
    };
    let values = if op == Op::In {
        let inner = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("filter {s:?}: in takes a list, in.(a,b,c)"))?;
        inner.split(',').map(|v| v.trim().trim_matches('"').to_string()).collect()
    } else {
        vec![value.to_string()]
    };
    Ok(Condition { column: column.to_string(), op, values })
}

/// Compares a row's value with a filter's text, as Postgres would for the
/// column's type: numbers numerically, booleans and text as text.
fn compare(field: &Value, text: &str) -> Option<std::cmp::Ordering> {
    match field {
        Value::Number(n) => n.as_f64()?.partial_cmp(&text.parse::<f64>().ok()?),
        Value::String(s) => Some(s.as_str().cmp(text)),
        Value::Bool(b) => Some(b.to_string().as_str().cmp(text)),
        Value::Null => (text == "null").then_some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

impl Condition {
    pub fn holds(&self, row: &Map<String, Value>) -> bool {
        use std::cmp::Ordering::*;
        let field = row.get(&self.column).unwrap_or(&Value::Null);
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.op {
            Op::In => self.values.iter().any(|v| compare(field, v) == Some(Equal)),
            Op::Eq => compare(field, first) == Some(Equal),
            // Like SQL, a NULL column matches no comparison, `neq` included.
            Op::Neq => !field.is_null() && compare(field, first).is_some_and(|o| o != Equal),
            Op::Lt => !field.is_null() && compare(field, first) == Some(Less),
            Op::Lte => !field.is_null() && matches!(compare(field, first), Some(Less | Equal)),
            Op::Gt => !field.is_null() && compare(field, first) == Some(Greater),
            Op::Gte => !field.is_null() && matches!(compare(field, first), Some(Greater | Equal)),
        }
    }
}

/// One event as a change of one table; its row is parsed once per event
/// ([`Event::row`]), whichever subscribers' bindings read it.
pub struct Change<'a> {
    pub table: Table,
    pub insert: bool,
    event: &'a Event,
}

impl<'a> Change<'a> {
    pub fn of(event: &'a Event) -> Change<'a> {
        Change { table: Table::of(event.kind), insert: event.kind.is_insert(), event }
    }

    /// Whether `spec` wants this change.
    pub fn matches(&self, spec: &BindingSpec) -> bool {
        let kind_ok = match spec.kind {
            ChangeKind::All => true,
            ChangeKind::Insert => self.insert,
            ChangeKind::Update => !self.insert,
            ChangeKind::Delete => false,
        };
        if !kind_ok || !spec.wants_table(self.table) {
            return false;
        }
        if spec.conditions.is_empty() {
            return true;
        }
        let row = self.event.row();
        spec.conditions.iter().all(|c| c.holds(row))
    }
}

/// The `data` of a `postgres_changes` message, built once per event and shared
/// by every Phoenix connection (both serializers splice it in). Events have no
/// whole-frame Phoenix form — the binding ids differ per subscriber — so the
/// delivery's serializer-1.0.0 cache slot holds this shared part.
pub fn change_data(d: &Delivery) -> Option<axum::extract::ws::Utf8Bytes> {
    let Payload::Event(e) = &d.payload else { return None };
    Some(d.frame(*super::codec::V1_FRAMES, |_| axum::extract::ws::Utf8Bytes::from(change_json(e))))
}

/// The change of an event in Supabase's shape. Herald keeps no old row, so an
/// UPDATE's `old_record` holds the primary key only (Supabase's default replica
/// identity does the same).
pub fn change_json(e: &Event) -> String {
    let table = Table::of(e.kind);
    let columns: Vec<Value> = table.columns().iter().map(|(n, t)| json!({ "name": n, "type": t })).collect();
    let insert = e.kind.is_insert();
    let old = if insert {
        Value::Object(Map::new())
    } else {
        let id = e.row().get("id").cloned().unwrap_or(Value::Null);
        json!({ "id": id })
    };
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        schema: &'static str,
        table: &'static str,
        commit_timestamp: String,
        #[serde(rename = "type")]
        kind: &'static str,
        columns: Vec<Value>,
        record: &'a serde_json::value::RawValue,
        old_record: Value,
        errors: Option<()>,
    }
    serde_json::to_string(&Wire {
        schema: "public",
        table: table.name(),
        commit_timestamp: crate::model::time::format_ms(e.time),
        kind: if insert { "INSERT" } else { "UPDATE" },
        columns,
        record: &e.data,
        old_record: old,
        errors: None,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn filters_parse_and_evaluate() {
        let r = row(json!({"id": "a", "progress": 42.5, "status": "running", "owner": null, "read": false}));
        let holds = |f: &str| parse_filter(f).unwrap().iter().all(|c| c.holds(&r));
        assert!(holds("id=eq.a"));
        assert!(!holds("id=eq.b"));
        assert!(holds("id=neq.b"));
        assert!(holds("progress=gt.40"));
        assert!(holds("progress=gte.42.5"));
        assert!(!holds("progress=lt.42.5"));
        assert!(holds("progress=lte.42.5"));
        assert!(holds("status=in.(queued,running)"));
        assert!(!holds("status=in.(completed)"));
        assert!(holds("id=eq.a,status=in.(queued,running),progress=lt.50"));
        assert!(!holds("id=eq.a,progress=gt.50"));
        assert!(!holds("owner=neq.x"), "NULL matches no comparison");
        assert!(holds("owner=eq.null"));
        assert!(holds("read=eq.false"));
        assert!(!holds("missing=eq.x"));
        for bad in ["id", "id=like.a", "=eq.a", "status=in.a,b"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bindings_echo_what_the_client_sent() {
        let b =
            parse_binding(&json!({"event": "*", "schema": "public", "table": "jobs", "filter": "id=eq.x"})).unwrap();
        assert_eq!(
            Value::Object(b.echo.clone()),
            json!({"event": "*", "schema": "public", "table": "jobs", "filter": "id=eq.x"})
        );
        assert_eq!(b.equals("id"), Some(vec!["x".to_string()]));
        let b = parse_binding(&json!({"event": "INSERT", "schema": "*"})).unwrap();
        assert!(b.tables.is_empty() && b.kind == ChangeKind::Insert);
        assert!(parse_binding(&json!({"event": "*", "schema": "private", "table": "jobs"})).is_err());
        assert!(parse_binding(&json!({"event": "*", "schema": "public", "table": "users"})).is_err());
        assert!(parse_binding(&json!({"event": "TRUNCATE", "schema": "public"})).is_err());
        assert!(parse_binding(&json!({"schema": "public"})).is_err());
        assert_eq!(parse_binding(&json!({"event": "*", "since": 5})).unwrap().since, Some(5));
    }
}
