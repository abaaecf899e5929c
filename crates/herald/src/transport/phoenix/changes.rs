//! `postgres_changes` over Herald's rows: the four tables exposed as
//! `public.jobs`, `public.tasks`, `public.artifacts`, `public.notifications`;
//! bindings with PostgREST-style filters; and the change payload built once per
//! event. Nothing here queries the database per subscriber: filters run in
//! memory on the row each event carries.

use crate::hub::{Delivery, Payload};
use crate::model::{CapturedTable, Catalog, Event, EventType};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One of Herald's own tables, exposed under `public` (and always under `herald`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnTable {
    Jobs,
    Tasks,
    Artifacts,
    Notifications,
}

impl OwnTable {
    pub const ALL: [OwnTable; 4] = [OwnTable::Jobs, OwnTable::Tasks, OwnTable::Artifacts, OwnTable::Notifications];

    pub fn parse(s: &str) -> Option<OwnTable> {
        Some(match s {
            "jobs" => OwnTable::Jobs,
            "tasks" => OwnTable::Tasks,
            "artifacts" => OwnTable::Artifacts,
            "notifications" => OwnTable::Notifications,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            OwnTable::Jobs => "jobs",
            OwnTable::Tasks => "tasks",
            OwnTable::Artifacts => "artifacts",
            OwnTable::Notifications => "notifications",
        }
    }

    fn of(kind: EventType) -> OwnTable {
        match kind.table() {
            "jobs" => OwnTable::Jobs,
            "tasks" => OwnTable::Tasks,
            "artifacts" => OwnTable::Artifacts,
            _ => OwnTable::Notifications,
        }
    }

    /// Where the table lives for good: `herald.<name>`.
    fn key(self) -> &'static str {
        match self {
            OwnTable::Jobs => "herald.jobs",
            OwnTable::Tasks => "herald.tasks",
            OwnTable::Artifacts => "herald.artifacts",
            OwnTable::Notifications => "herald.notifications",
        }
    }

    /// Column types as Postgres would name them, so realtime-js converts values.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            OwnTable::Jobs => &[
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
            OwnTable::Tasks => &[
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
            OwnTable::Artifacts => &[
                ("id", "text"),
                ("job_id", "text"),
                ("kind", "text"),
                ("payload", "jsonb"),
                ("created_at", "timestamptz"),
            ],
            OwnTable::Notifications => &[
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

/// A table a binding listens to: one of Herald's, or a captured one.
#[derive(Debug, Clone)]
pub enum Table {
    Own(OwnTable),
    Captured(Arc<CapturedTable>),
}

impl Table {
    /// `schema.name` where the table really is: how a change names its table.
    pub fn key(&self) -> String {
        match self {
            Table::Own(t) => t.key().to_string(),
            Table::Captured(t) => t.qualified(),
        }
    }

    fn has_column(&self, column: &str) -> bool {
        match self {
            Table::Own(t) => t.columns().iter().any(|(c, _)| *c == column),
            Table::Captured(t) => t.has_column(column),
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
    /// The schema and table asked for (`None`: every table of the schema).
    pub schema: String,
    pub table: Option<String>,
    /// What they name, once [`BindingSpec::resolve`] looked them up.
    pub tables: Vec<Table>,
    /// `tables`' keys, compared with each change's.
    table_keys: Vec<String>,
    pub conditions: Vec<Condition>,
    /// Herald extension: resume after this log position.
    pub since: Option<u64>,
}

impl BindingSpec {
    /// Values of `column = eq.x` / `column = in.(...)` conditions, if any.
    pub fn equals(&self, column: &str) -> Option<Vec<String>> {
        self.conditions.iter().find(|c| c.column == column && matches!(c.op, Op::Eq | Op::In)).map(|c| c.values.clone())
    }

    /// Finds the tables the binding names: a captured table first (an
    /// application's `public.notifications` wins over Herald's, which stays
    /// reachable under `herald`), then Herald's own; and checks that every
    /// filter column is a column of each of them.
    pub fn resolve(&mut self, catalog: &Catalog) -> Result<(), String> {
        let schema = self.schema.as_str();
        let own_schema = matches!(schema, "public" | "herald" | "*");
        // An own table under `public` is hidden by a captured one of the same name.
        let own_visible = |t: OwnTable| schema != "public" || catalog.get("public", t.name()).is_none();
        let mut tables = Vec::new();
        match &self.table {
            Some(name) => {
                tables.extend(
                    catalog
                        .tables()
                        .filter(|c| c.name == *name && (schema == "*" || c.schema == schema))
                        .cloned()
                        .map(Table::Captured),
                );
                if own_schema && tables.is_empty() {
                    tables.extend(OwnTable::parse(name).filter(|t| own_visible(*t)).map(Table::Own));
                }
                if tables.is_empty() {
                    let mut known: Vec<String> = catalog.tables().map(|c| c.qualified()).collect();
                    known.extend(OwnTable::ALL.iter().map(|t| format!("public.{}", t.name())));
                    known.sort();
                    return Err(format!("table {schema}.{name} does not exist; Herald streams {}", known.join(", ")));
                }
            }
            None => {
                tables.extend(
                    catalog.tables().filter(|c| schema == "*" || c.schema == schema).cloned().map(Table::Captured),
                );
                if own_schema {
                    tables.extend(OwnTable::ALL.into_iter().filter(|t| own_visible(*t)).map(Table::Own));
                }
                if tables.is_empty() {
                    return Err(format!("schema {schema:?} has no table Herald streams"));
                }
            }
        }
        for c in &self.conditions {
            if let Some(t) = tables.iter().find(|t| !t.has_column(&c.column)) {
                return Err(format!("filter: column {:?} does not exist in {}", c.column, t.key()));
            }
        }
        self.table_keys = tables.iter().map(Table::key).collect();
        self.tables = tables;
        Ok(())
    }

    fn wants_table(&self, key: &str) -> bool {
        self.table_keys.iter().any(|k| k == key)
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
    let schema = opt_str(m, "schema")?.unwrap_or("public").to_string();
    let table = opt_str(m, "table")?.filter(|t| *t != "*").map(str::to_string);
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
    Ok(BindingSpec { echo, kind, schema, table, tables: Vec::new(), table_keys: Vec::new(), conditions, since })
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
    /// `schema.name` of the table.
    key: &'a str,
    kind: Option<ChangeKind>,
    event: &'a Event,
}

impl<'a> Change<'a> {
    pub fn of(event: &'a Event) -> Change<'a> {
        let (key, kind) = match (&event.table, event.kind) {
            (Some(table), EventType::RowInserted) => (&**table, Some(ChangeKind::Insert)),
            (Some(table), EventType::RowUpdated) => (&**table, Some(ChangeKind::Update)),
            (Some(table), EventType::RowDeleted) => (&**table, Some(ChangeKind::Delete)),
            // Supabase has no TRUNCATE change; native subscribers get it.
            (Some(table), _) => (&**table, None),
            (None, kind) => {
                let change = if kind.is_insert() { ChangeKind::Insert } else { ChangeKind::Update };
                (OwnTable::of(kind).key(), Some(change))
            }
        };
        Change { key, kind, event }
    }

    /// Whether `spec` wants this change.
    pub fn matches(&self, spec: &BindingSpec) -> bool {
        let Some(kind) = self.kind else { return false };
        if !(spec.kind == ChangeKind::All || spec.kind == kind) || !spec.wants_table(self.key) {
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
pub fn change_data(d: &Delivery, catalog: &Catalog) -> Option<axum::extract::ws::Utf8Bytes> {
    let Payload::Event(e) = &d.payload else { return None };
    Some(d.frame(*super::codec::V1_FRAMES, |_| axum::extract::ws::Utf8Bytes::from(change_json(e, catalog))))
}

/// The change of an event in Supabase's shape. Herald's own rows keep no old
/// row, so an UPDATE's `old_record` holds the primary key only (Supabase's
/// default replica identity does the same); a captured table's change carries
/// the old row its replica identity sent.
pub fn change_json(e: &Event, catalog: &Catalog) -> String {
    let empty = || Value::Object(Map::new());
    let (schema, table, columns, kind, record, old): (String, String, Vec<Value>, &str, Option<&RawValue>, Value) =
        match &e.table {
            Some(key) => {
                let (schema, name) = key.split_once('.').unwrap_or(("public", key));
                let columns = catalog
                    .get(schema, name)
                    .map(|t| t.columns.iter().map(|c| json!({ "name": c.name, "type": c.type_name })).collect())
                    .unwrap_or_default();
                let old = |raw: Option<&Arc<RawValue>>| {
                    raw.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_else(empty)
                };
                match e.kind {
                    EventType::RowDeleted => (schema.into(), name.into(), columns, "DELETE", None, old(Some(&e.data))),
                    EventType::RowUpdated => {
                        (schema.into(), name.into(), columns, "UPDATE", Some(&*e.data), old(e.old.as_ref()))
                    }
                    _ => (schema.into(), name.into(), columns, "INSERT", Some(&*e.data), empty()),
                }
            }
            None => {
                let own = OwnTable::of(e.kind);
                // Shown under `herald` where an application's table took its public name.
                let schema = if catalog.get("public", own.name()).is_some() { "herald" } else { "public" };
                let columns = own.columns().iter().map(|(n, t)| json!({ "name": n, "type": t })).collect();
                if e.kind.is_insert() {
                    (schema.into(), own.name().into(), columns, "INSERT", Some(&*e.data), empty())
                } else {
                    let id = e.row().get("id").cloned().unwrap_or(Value::Null);
                    (schema.into(), own.name().into(), columns, "UPDATE", Some(&*e.data), json!({ "id": id }))
                }
            }
        };
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        schema: &'a str,
        table: &'a str,
        commit_timestamp: String,
        #[serde(rename = "type")]
        kind: &'a str,
        columns: Vec<Value>,
        record: Value,
        old_record: Value,
        errors: Option<()>,
    }
    let record = record.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_else(empty);
    serde_json::to_string(&Wire {
        schema: &schema,
        table: &table,
        commit_timestamp: crate::model::time::format_ms(e.time),
        kind,
        columns,
        record,
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
        assert!(b.table.is_none() && b.kind == ChangeKind::Insert);
        let resolved = |v: Value, catalog: &Catalog| {
            let mut b = parse_binding(&v)?;
            b.resolve(catalog).map(|_| b.table_keys)
        };
        let none = Catalog::default();
        assert!(resolved(json!({"event": "*", "schema": "private", "table": "jobs"}), &none).is_err());
        assert!(resolved(json!({"event": "*", "schema": "public", "table": "users"}), &none).is_err());
        // A filter on a column the table does not have is refused, naming it.
        let e = resolved(json!({"event": "*", "table": "notifications", "filter": "user_id=eq.u"}), &none).unwrap_err();
        assert!(e.contains("user_id") && e.contains("herald.notifications"), "{e}");
        assert_eq!(
            resolved(json!({"event": "*", "schema": "public", "table": "jobs"}), &none).unwrap(),
            ["herald.jobs"]
        );
        // An application's public.notifications wins; Herald's stays under herald.
        let app = Catalog::new(vec![CapturedTable {
            schema: "public".into(),
            name: "notifications".into(),
            columns: vec![crate::model::table::TableColumn { name: "user_id".into(), type_name: "text".into() }],
            tenant_column: None,
            default_tenant: Some("t".into()),
            owner_column: None,
        }]);
        let public = json!({"event": "*", "schema": "public", "table": "notifications", "filter": "user_id=eq.u"});
        assert_eq!(resolved(public, &app).unwrap(), ["public.notifications"]);
        let herald = json!({"event": "*", "schema": "herald", "table": "notifications", "filter": "recipient=eq.u"});
        assert_eq!(resolved(herald, &app).unwrap(), ["herald.notifications"]);
        let all_public = resolved(json!({"event": "*", "schema": "public"}), &app).unwrap();
        assert!(all_public.contains(&"public.notifications".to_string()), "{all_public:?}");
        assert!(!all_public.contains(&"herald.notifications".to_string()), "{all_public:?}");
        assert!(parse_binding(&json!({"event": "TRUNCATE", "schema": "public"})).is_err());
        assert!(parse_binding(&json!({"schema": "public"})).is_err());
        assert_eq!(parse_binding(&json!({"event": "*", "since": 5})).unwrap().since, Some(5));
    }
}
