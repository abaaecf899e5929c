//! A read of rows by conditions, as PostgREST's `GET /rest/v1/<table>` asks
//! for them: which table, whose rows (the scope: tenant, owner), which
//! conditions, in which order, which page. The transport parses and checks it
//! against the table's columns; each store turns it into ONE query with the
//! scope in its WHERE clause, so a condition can only narrow what the caller
//! may see.

use crate::model::CapturedTable;
use std::sync::Arc;

/// Most rows one query returns (also the default).
pub const MAX_ROWS: usize = 1000;

/// One of Herald's own tables, as the API shows its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeraldTable {
    Jobs,
    Tasks,
    Artifacts,
    Notifications,
}

/// How a column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Integer,
    Float,
    Bool,
    /// RFC 3339 in the API, epoch milliseconds in the database: values given
    /// to a store are milliseconds ([`ColumnKind::normalize`] converts them).
    Time,
    /// JSON documents: only `is.null` applies, and no ordering.
    Json,
}

impl HeraldTable {
    pub const ALL: [HeraldTable; 4] =
        [HeraldTable::Jobs, HeraldTable::Tasks, HeraldTable::Artifacts, HeraldTable::Notifications];

    pub fn parse(s: &str) -> Option<HeraldTable> {
        HeraldTable::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            HeraldTable::Jobs => "jobs",
            HeraldTable::Tasks => "tasks",
            HeraldTable::Artifacts => "artifacts",
            HeraldTable::Notifications => "notifications",
        }
    }

    /// The columns of a row as the API shows it (the model's fields), in order.
    pub fn columns(self) -> &'static [(&'static str, ColumnKind)] {
        use ColumnKind::*;
        match self {
            HeraldTable::Jobs => &[
                ("id", Text),
                ("tenant", Text),
                ("owner", Text),
                ("kind", Text),
                ("title", Text),
                ("status", Text),
                ("total", Integer),
                ("succeeded", Integer),
                ("failed", Integer),
                ("progress", Float),
                ("stage", Text),
                ("current_item", Text),
                ("metadata", Json),
                ("errors", Json),
                ("created_at", Time),
                ("started_at", Time),
                ("updated_at", Time),
                ("finished_at", Time),
                ("version", Integer),
                ("counts_reported", Bool),
                ("progress_reported", Bool),
            ],
            HeraldTable::Tasks => &[
                ("id", Text),
                ("job_id", Text),
                ("name", Text),
                ("status", Text),
                ("attempts", Integer),
                ("error", Text),
                ("created_at", Time),
                ("started_at", Time),
                ("updated_at", Time),
                ("finished_at", Time),
            ],
            HeraldTable::Artifacts => {
                &[("id", Text), ("job_id", Text), ("kind", Text), ("payload", Json), ("created_at", Time)]
            }
            HeraldTable::Notifications => &[
                ("id", Text),
                ("recipient", Text),
                ("level", Text),
                ("title", Text),
                ("body", Text),
                ("link", Text),
                ("job_id", Text),
                ("read", Bool),
                ("created_at", Time),
                ("read_at", Time),
            ],
        }
    }

    pub fn column(self, name: &str) -> Option<ColumnKind> {
        self.columns().iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }
}

/// A value the database cannot read as its column's type, or a comparison it
/// cannot make: PostgreSQL's SQLSTATE and message. The source of a
/// [`StoreError`](super::StoreError) of kind `Invalid`, so the edge can answer
/// with the code PostgREST would.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: String,
    pub message: String,
}

impl Refused {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Refused {
        Refused { code: code.into(), message: message.into() }
    }

    /// As a store error (kind `Invalid`, with this as its source).
    pub fn into_store_error(self) -> super::StoreError {
        super::StoreError::caused_by(super::StoreErrorKind::Invalid, self.message.clone(), self)
    }

    /// The refusal inside a store error, if it carries one.
    pub fn of(e: &super::StoreError) -> Option<&Refused> {
        let source: &(dyn std::error::Error + 'static) = e.source.as_deref()?;
        source.downcast_ref::<Refused>()
    }
}

impl ColumnKind {
    /// PostgreSQL's name of the type, for messages.
    pub fn pg_name(self) -> &'static str {
        match self {
            ColumnKind::Text => "text",
            ColumnKind::Integer => "bigint",
            ColumnKind::Float => "double precision",
            ColumnKind::Bool => "boolean",
            ColumnKind::Time => "timestamp with time zone",
            ColumnKind::Json => "jsonb",
        }
    }

    /// Checks `value` as this kind and gives it in the form stores compare:
    /// times become epoch milliseconds, booleans `true`/`false`.
    pub fn normalize(self, value: &str) -> Result<String, Refused> {
        let bad =
            |code: &str| Refused::new(code, format!("invalid input syntax for type {}: \"{value}\"", self.pg_name()));
        match self {
            ColumnKind::Text | ColumnKind::Json => Ok(value.to_string()),
            ColumnKind::Integer => value.parse::<i64>().map(|n| n.to_string()).map_err(|_| bad("22P02")),
            ColumnKind::Float => match value.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(value.to_string()),
                _ => Err(bad("22P02")),
            },
            ColumnKind::Bool => match value.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "on" | "1" => Ok("true".into()),
                "false" | "f" | "no" | "off" | "0" => Ok("false".into()),
                _ => Err(bad("22P02")),
            },
            ColumnKind::Time => {
                crate::model::time::parse_rfc3339(value).map(|ms| ms.to_string()).ok_or_else(|| bad("22007"))
            }
        }
    }
}

/// Where the rows come from.
#[derive(Debug, Clone)]
pub enum RowSource {
    Herald(HeraldTable),
    /// A captured application table (PostgreSQL).
    Captured(Arc<CapturedTable>),
}

impl RowSource {
    /// The table's name as PostgreSQL's messages give it (without the schema).
    pub fn name(&self) -> &str {
        match self {
            RowSource::Herald(t) => t.name(),
            RowSource::Captured(t) => &t.name,
        }
    }

    pub fn has_column(&self, name: &str) -> bool {
        match self {
            RowSource::Herald(t) => t.column(name).is_some(),
            RowSource::Captured(t) => t.has_column(name),
        }
    }

    /// The column names, in the table's order.
    pub fn column_names(&self) -> Vec<&str> {
        match self {
            RowSource::Herald(t) => t.columns().iter().map(|(n, _)| *n).collect(),
            RowSource::Captured(t) => t.columns.iter().map(|c| c.name.as_str()).collect(),
        }
    }
}

/// `is.<value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

/// A comparison of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Is(IsValue),
}

impl Op {
    /// The SQL operator of a binary comparison.
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq | Op::In => "=",
            Op::Neq => "<>",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Is(_) => "IS",
        }
    }

    /// The SQL of `IS <value>` (PostgreSQL and SQLite read it alike).
    pub fn is_sql(v: IsValue) -> &'static str {
        match v {
            IsValue::Null | IsValue::Unknown => "IS NULL",
            IsValue::NotNull => "IS NOT NULL",
            IsValue::True => "IS TRUE",
            IsValue::False => "IS FALSE",
        }
    }
}

/// `column op value`; all of a query's conditions must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    /// One value, the list of `in.(...)`, or none for `is`. For Herald's
    /// tables, normalized by [`ColumnKind::normalize`].
    pub values: Vec<String>,
}

/// One term of `order=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTerm {
    pub column: String,
    pub descending: bool,
    /// `None`: PostgreSQL's default (NULLs sort as the largest value).
    pub nulls_first: Option<bool>,
}

impl OrderTerm {
    /// `ASC NULLS LAST` etc., with PostgreSQL's defaults spelled out (SQLite's differ).
    pub fn sql_suffix(&self) -> &'static str {
        match (self.descending, self.nulls_first.unwrap_or(self.descending)) {
            (false, false) => "ASC NULLS LAST",
            (false, true) => "ASC NULLS FIRST",
            (true, false) => "DESC NULLS LAST",
            (true, true) => "DESC NULLS FIRST",
        }
    }
}

/// A read of rows, scope included.
#[derive(Debug, Clone)]
pub struct RowQuery {
    pub source: RowSource,
    /// Only rows of this tenant (a captured table's tenant column as text, or
    /// its default tenant).
    pub tenant: String,
    /// Only rows owned by this `sub`: jobs by `owner`, tasks and artifacts by
    /// their job's owner, notifications by `recipient`, a captured table by its
    /// owner column.
    pub owner: Option<String>,
    pub conditions: Vec<Condition>,
    pub order: Vec<OrderTerm>,
    /// At most [`MAX_ROWS`].
    pub limit: usize,
    pub offset: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_as_their_columns_type() {
        assert_eq!(ColumnKind::Integer.normalize("42").unwrap(), "42");
        assert_eq!(ColumnKind::Integer.normalize("4.2").unwrap_err().code, "22P02");
        assert_eq!(ColumnKind::Float.normalize("42.5").unwrap(), "42.5");
        assert_eq!(ColumnKind::Float.normalize("NaN").unwrap_err().code, "22P02");
        assert_eq!(ColumnKind::Bool.normalize("f").unwrap(), "false");
        assert_eq!(ColumnKind::Time.normalize("1970-01-01T00:00:01.5Z").unwrap(), "1500");
        let e = ColumnKind::Time.normalize("yesterday").unwrap_err();
        assert_eq!(e.code, "22007");
        assert_eq!(e.message, "invalid input syntax for type timestamp with time zone: \"yesterday\"");
    }

    #[test]
    fn nulls_sort_where_postgresql_puts_them_unless_asked() {
        let term = |descending, nulls_first| OrderTerm { column: "c".into(), descending, nulls_first };
        assert_eq!(term(false, None).sql_suffix(), "ASC NULLS LAST");
        assert_eq!(term(true, None).sql_suffix(), "DESC NULLS FIRST");
        assert_eq!(term(true, Some(false)).sql_suffix(), "DESC NULLS LAST");
        assert_eq!(term(false, Some(true)).sql_suffix(), "ASC NULLS FIRST");
    }
}
