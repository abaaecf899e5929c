//! Read queries, on a pool of async connections.

use super::rows::{parse_row, ArtifactRow, JobRow, NotificationRow, TaskRow};
use crate::model::{Artifact, CapturedTable, Event, EventType, Job, JobVisibility, Notification, Position, Role, Task};
use crate::store::query::{ColumnKind, HeraldTable, Op, Refused, RowQuery, RowSource};
use crate::store::{ApiKeyRecord, EventPage, JobFilter, Page, StoreError, API_KEY_COLUMNS, MAX_PAGE_BYTES};
use deadpool_postgres::{Object, Pool};
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// A connection from the pool; a database that cannot be reached is `Unavailable`.
pub async fn conn(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| {
        StoreError::caused_by(crate::store::StoreErrorKind::Unavailable, format!("connecting to PostgreSQL: {e}"), e)
    })
}

async fn texts(c: &Object, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<String>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?.into_iter().map(|r| r.get(0)).collect())
}

pub async fn job(pool: &Pool, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
    let c = conn(pool).await?;
    texts(&c, "SELECT to_jsonb(j)::text FROM herald.jobs j WHERE tenant = $1 AND id = $2", &[&tenant, &id])
        .await?
        .first()
        .map(|j| parse_row::<JobRow>("jobs", j).map(Job::from))
        .transpose()
}

pub async fn job_owner(pool: &Pool, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError> {
    let c = conn(pool).await?;
    let statement = c.prepare_cached("SELECT owner FROM herald.jobs WHERE tenant = $1 AND id = $2").await?;
    Ok(c.query_opt(&statement, &[&tenant, &id]).await?.map(|r| r.get(0)))
}

/// A recoverable session's owner and document.
pub async fn session(pool: &Pool, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
    let c = conn(pool).await?;
    let statement = c.prepare_cached("SELECT sub, doc FROM herald.sessions WHERE tenant = $1 AND id = $2").await?;
    Ok(c.query_opt(&statement, &[&tenant, &id]).await?.map(|r| (r.get(0), r.get(1))))
}

/// The newest position in the log and the pruned floor below which nothing is left.
/// A read-only transaction that sees one snapshot of the database throughout.
async fn read_snapshot(c: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

pub async fn head_and_floor(c: &Object) -> Result<(Position, Position), StoreError> {
    let statement = c
        .prepare_cached(
            "SELECT coalesce((SELECT max(position) FROM herald.events), 0),
                    coalesce((SELECT value::bigint FROM herald.meta WHERE key = 'floor'), 0)",
        )
        .await?;
    let row = c.query_one(&statement, &[]).await?;
    let (head, floor): (i64, i64) = (row.get(0), row.get(1));
    // A log pruned to nothing still has its head where the floor is.
    Ok((Position::from_u64(head.max(floor).max(0) as u64), Position::from_u64(floor.max(0) as u64)))
}

pub async fn jobs(pool: &Pool, tenant: &str, vis: &JobVisibility, f: &JobFilter) -> Result<Page<Job>, StoreError> {
    let owned_by = match vis {
        JobVisibility::OwnedBy(sub) => Some(sub.as_str()),
        JobVisibility::All => None,
    };
    let status = f.status.map(|s| s.as_str());
    let limit = (f.limit + 1) as i64;
    let c = conn(pool).await?;
    // NULL parameters switch their condition off: one statement for every filter.
    let statement = c
        .prepare_cached(
            "SELECT j.seq, to_jsonb(j)::text FROM herald.jobs j
             WHERE tenant = $1 AND ($2::text IS NULL OR owner = $2) AND ($3::text IS NULL OR status = $3)
               AND ($4::text IS NULL OR kind = $4) AND ($5::text IS NULL OR owner = $5)
               AND ($6::bigint IS NULL OR updated_at > $6) AND ($7::bigint IS NULL OR seq < $7)
             ORDER BY seq DESC LIMIT $8",
        )
        .await?;
    let rows = c
        .query(&statement, &[&tenant, &owned_by, &status, &f.kind, &f.owner, &f.updated_after, &f.before, &limit])
        .await?;
    let more = rows.len() > f.limit;
    let mut items = Vec::with_capacity(rows.len().min(f.limit));
    let mut last = None;
    for row in rows.iter().take(f.limit) {
        items.push(Job::from(parse_row::<JobRow>("jobs", row.get(1))?));
        last = Some(row.get::<_, i64>(0));
    }
    Ok(Page { items, next_cursor: if more { last } else { None } })
}

/// How far back a list's snapshot reads the versions of jobs it does not
/// hold: longer than the sequencer ever lags behind commits.
const RECENT_MS: i64 = 60_000;

/// The jobs a live list starts from, with the head and the versions of jobs
/// changed lately, all in one repeatable-read snapshot. The sequencer appends
/// events after their commits, so changes the snapshot already shows may still
/// reach the log after its head: `recent` lets the list tell them apart.
pub async fn job_list(
    pool: &Pool,
    tenant: &str,
    vis: &JobVisibility,
    q: &crate::model::JobQuery,
    now_ms: i64,
    max_rows: usize,
) -> Result<crate::store::JobListSnapshot, StoreError> {
    let mut c = conn(pool).await?;
    let tx = read_snapshot(&mut c).await?;
    let row = tx.query_one("SELECT coalesce((SELECT max(position) FROM herald.events), 0)", &[]).await?;
    let head = Position::from_u64(row.get::<_, i64>(0).max(0) as u64);
    let statuses: Vec<&str> = q.status.iter().map(|s| s.as_str()).collect();
    let limit = (max_rows + 1) as i64;
    let rows = tx
        .query(
            "SELECT to_jsonb(j)::text FROM herald.jobs j
             WHERE tenant = $1 AND ($2::text IS NULL OR owner = $2) AND ($3::text IS NULL OR owner = $3)
               AND (cardinality($4::text[]) = 0 OR status = ANY($4)) AND ($5::text IS NULL OR kind = $5)
               AND ($6::bigint IS NULL OR updated_at >= $6)
             LIMIT $7",
            &[&tenant, &vis.owner(), &q.owner, &statuses, &q.kind, &q.updated_after(now_ms), &limit],
        )
        .await?;
    let recent = tx
        .query(
            "SELECT id, version FROM herald.jobs
             WHERE tenant = $1 AND ($2::text IS NULL OR owner = $2) AND updated_at >= $3",
            &[&tenant, &vis.owner(), &(now_ms - RECENT_MS)],
        )
        .await?;
    tx.commit().await?;
    let truncated = rows.len() > max_rows;
    let mut jobs = Vec::with_capacity(rows.len().min(max_rows));
    for row in rows.iter().take(max_rows) {
        jobs.push(Job::from(parse_row::<JobRow>("jobs", row.get(0))?));
    }
    let recent = recent.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64)).collect();
    Ok(crate::store::JobListSnapshot { head, jobs, truncated, recent })
}

pub async fn tasks(pool: &Pool, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError> {
    let c = conn(pool).await?;
    texts(
        &c,
        "SELECT to_jsonb(t)::text FROM herald.tasks t WHERE tenant = $1 AND job_id = $2 ORDER BY created_at, id",
        &[&tenant, &job_id],
    )
    .await?
    .iter()
    .map(|t| parse_row::<TaskRow>("tasks", t).map(Task::from))
    .collect()
}

pub async fn artifacts(pool: &Pool, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
    let c = conn(pool).await?;
    texts(
        &c,
        "SELECT to_jsonb(a)::text FROM herald.artifacts a WHERE tenant = $1 AND job_id = $2 ORDER BY seq",
        &[&tenant, &job_id],
    )
    .await?
    .iter()
    .map(|a| parse_row::<ArtifactRow>("artifacts", a).map(Artifact::from))
    .collect()
}

pub async fn notifications(
    pool: &Pool,
    tenant: &str,
    recipient: &str,
    unread_only: bool,
    limit: usize,
) -> Result<(Vec<Notification>, u64), StoreError> {
    let c = conn(pool).await?;
    let rows = texts(
        &c,
        "SELECT to_jsonb(n)::text FROM herald.notifications n
         WHERE tenant = $1 AND recipient = $2 AND (NOT $3 OR NOT read) ORDER BY seq DESC LIMIT $4",
        &[&tenant, &recipient, &unread_only, &(limit as i64)],
    )
    .await?;
    let statement = c
        .prepare_cached("SELECT count(*) FROM herald.notifications WHERE tenant = $1 AND recipient = $2 AND NOT read")
        .await?;
    let unread: i64 = c.query_one(&statement, &[&tenant, &recipient]).await?.get(0);
    let items = rows
        .iter()
        .map(|n| parse_row::<NotificationRow>("notifications", n).map(Notification::from))
        .collect::<Result<_, _>>()?;
    Ok((items, unread.max(0) as u64))
}

pub async fn events(
    pool: &Pool,
    tenant: &str,
    topics: &[String],
    since: Position,
    limit: usize,
) -> Result<EventPage, StoreError> {
    let c = conn(pool).await?;
    // Head and floor first: an event committed after this read is still ahead of `head`.
    let (head, floor) = head_and_floor(&c).await?;
    if topics.is_empty() || limit == 0 {
        return Ok(EventPage { events: Vec::new(), head, floor, truncated: false });
    }
    let since = since.get().min(i64::MAX as u64) as i64;
    let statement = c
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS}, t.topics
             FROM (SELECT DISTINCT position FROM herald.event_topics
                   WHERE tenant = $1 AND topic = ANY($2) AND position > $3 AND position <= $4
                   ORDER BY position LIMIT $5) p
             JOIN herald.events e ON e.position = p.position
             CROSS JOIN LATERAL (SELECT array_agg(topic) AS topics FROM herald.event_topics t
                   WHERE t.tenant = $1 AND t.position = p.position AND t.topic = ANY($2)) t
             ORDER BY p.position"
        ))
        .await?;
    let head_i = head.get().min(i64::MAX as u64) as i64;
    let rows = c.query(&statement, &[&tenant, &topics, &since, &head_i, &(limit as i64)]).await?;
    let tenant: Arc<str> = Arc::from(tenant);
    let mut events = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    let mut truncated = false;
    for r in &rows {
        // A page is bounded in bytes as well as in count (always one event at least).
        if bytes >= MAX_PAGE_BYTES {
            truncated = true;
            break;
        }
        let event = event_of(r, Arc::clone(&tenant))?;
        bytes += event.data.get().len();
        events.push(event);
    }
    Ok(EventPage { events, head, floor, truncated })
}

/// Rows of a captured table in one tenant (and of one owner). Values compare as
/// text, as routing does: a tenant column of any type matches its text form.
pub async fn table_rows(
    pool: &Pool,
    table: &CapturedTable,
    tenant: &str,
    owner: Option<&str>,
    limit: usize,
) -> Result<Vec<serde_json::Value>, StoreError> {
    use super::capture::quote_ident;
    let mut sql =
        format!("SELECT to_jsonb(t) FROM {}.{} t WHERE true", quote_ident(&table.schema), quote_ident(&table.name));
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(column) = &table.tenant_column {
        params.push(&tenant);
        sql.push_str(&format!(" AND t.{}::text = ${}", quote_ident(column), params.len()));
    } else if table.default_tenant.as_deref() != Some(tenant) {
        return Ok(Vec::new());
    }
    if let (Some(column), Some(owner)) = (&table.owner_column, &owner) {
        params.push(owner);
        sql.push_str(&format!(" AND t.{}::text = ${}", quote_ident(column), params.len()));
    }
    let limit = limit as i64;
    params.push(&limit);
    let first = table.columns.first().map(|c| quote_ident(&c.name)).unwrap_or_else(|| "1".into());
    sql.push_str(&format!(" ORDER BY t.{first} DESC LIMIT ${}", params.len()));
    let c = conn(pool).await?;
    let statement = c.prepare_cached(&sql).await?;
    Ok(c.query(&statement, &params).await?.into_iter().map(|r| r.get(0)).collect())
}

/// The columns every log read selects first, in this order; the ninth is the
/// event's topics (all of them, or those the reader asked for).
pub const EVENT_COLUMNS: &str = "e.position, e.type, e.job_id, e.owner, e.data, e.time, e.old, e.source";

/// An event from a row that starts with [`EVENT_COLUMNS`] and its topics.
pub fn event_of(r: &tokio_postgres::Row, tenant: Arc<str>) -> Result<Event, StoreError> {
    let kind: &str = r.get(1);
    let raw = |s: String| RawValue::from_string(s).map(Arc::from).map_err(StoreError::corrupt);
    Ok(Event {
        position: Position::from_u64(r.get::<_, i64>(0) as u64),
        tenant,
        kind: EventType::parse(kind).ok_or_else(|| StoreError::internal(format!("unknown event type {kind}")))?,
        job_id: r.get(2),
        owner: r.get(3),
        data: raw(r.get(4))?,
        time: r.get(5),
        old: r.get::<_, Option<String>>(6).map(raw).transpose()?,
        table: r.get::<_, Option<&str>>(7).map(Arc::from),
        topics: r.get(8),
        row: Default::default(),
    })
}

pub async fn api_key(pool: &Pool, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let c = conn(pool).await?;
    let statement = c.prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM herald.api_keys WHERE id = $1")).await?;
    Ok(c.query_opt(&statement, &[&id]).await?.as_ref().map(api_key_row))
}

pub async fn api_keys(pool: &Pool, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let c = conn(pool).await?;
    let statement = c
        .prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM herald.api_keys WHERE tenant = $1 ORDER BY created_at DESC, id"
        ))
        .await?;
    Ok(c.query(&statement, &[&tenant]).await?.iter().map(api_key_row).collect())
}

pub async fn api_key_changes(pool: &Pool, since_ms: i64) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let c = conn(pool).await?;
    let statement = c
        .prepare_cached(&format!(
            "SELECT {API_KEY_COLUMNS} FROM herald.api_keys WHERE changed_at >= $1 ORDER BY changed_at"
        ))
        .await?;
    Ok(c.query(&statement, &[&since_ms]).await?.iter().map(api_key_row).collect())
}

/// One `api_keys` row, selected as [`API_KEY_COLUMNS`].
pub fn api_key_row(r: &tokio_postgres::Row) -> ApiKeyRecord {
    ApiKeyRecord {
        id: r.get(0),
        tenant: r.get(1),
        name: r.get(2),
        role: Role::parse(r.get(3)).unwrap_or(Role::Worker),
        hash: r.get(4),
        created_at: r.get(5),
        last_used_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        changed_at: r.get(9),
    }
}

/// Parameters of a query built at run time, numbered as they are pushed.
#[derive(Default)]
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    /// Adds a value; returns its placeholder (`$n`).
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// `GET /rest/v1/<table>`: ONE parameterized query with the scope (tenant,
/// owner) in its WHERE clause beside the caller's conditions. Identifiers are
/// checked against the table's columns and quoted; every value is a parameter.
/// Herald's tables are read from `herald.<table>` and shown through their row
/// types, as the API shows them (times as RFC 3339); time conditions compare
/// epoch milliseconds. A captured table compares `eq`/`neq`/`in` as text and
/// orders (`gt`...) in the column's own type, the parameter cast to it.
pub async fn query_rows(pool: &Pool, q: &RowQuery) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut params = Params::default();
    let Some(sql) = (match &q.source {
        RowSource::Herald(t) => Some(herald_rows_sql(*t, q, &mut params)?),
        RowSource::Captured(t) => captured_rows_sql(t, q, &mut params)?,
    }) else {
        return Ok(Vec::new());
    };
    let c = conn(pool).await?;
    // Not a cached statement: the text varies with every combination of
    // conditions, and a cache per connection would only grow.
    let rows = c.query(sql.as_str(), &params.refs()).await.map_err(refused_by_postgres)?;
    match &q.source {
        RowSource::Captured(_) => Ok(rows.into_iter().map(|r| r.get(0)).collect()),
        RowSource::Herald(t) => rows.iter().map(|r| herald_row_json(*t, r.get(0))).collect(),
    }
}

/// A data exception (class 22: a value the column's type cannot read) or a
/// comparison PostgreSQL cannot make (class 42) is the caller's mistake.
fn refused_by_postgres(e: tokio_postgres::Error) -> StoreError {
    match (e.code().map(|c| c.code()), e.as_db_error()) {
        (Some(code), Some(db)) if code.starts_with("22") || code.starts_with("42") => {
            Refused::new(code, db.message()).into_store_error()
        }
        _ => StoreError::from(e),
    }
}

fn herald_row_json(t: HeraldTable, text: &str) -> Result<serde_json::Value, StoreError> {
    let value = match t {
        HeraldTable::Jobs => serde_json::to_value(Job::from(parse_row::<JobRow>("jobs", text)?)),
        HeraldTable::Tasks => serde_json::to_value(Task::from(parse_row::<TaskRow>("tasks", text)?)),
        HeraldTable::Artifacts => serde_json::to_value(Artifact::from(parse_row::<ArtifactRow>("artifacts", text)?)),
        HeraldTable::Notifications => {
            serde_json::to_value(Notification::from(parse_row::<NotificationRow>("notifications", text)?))
        }
    };
    value.map_err(StoreError::corrupt)
}

fn no_column(table: &str, column: &str) -> StoreError {
    Refused::new("42703", format!("column {table}.{column} does not exist")).into_store_error()
}

fn not_a_number(kind: ColumnKind, v: &str) -> StoreError {
    Refused::new("22P02", format!("invalid input syntax for type {}: \"{v}\"", kind.pg_name())).into_store_error()
}

/// One value of a Herald column as a typed parameter, cast as the column is.
fn bind_typed(p: &mut Params, kind: ColumnKind, v: &str) -> Result<String, StoreError> {
    Ok(match kind {
        ColumnKind::Text | ColumnKind::Json => format!("{}::text", p.push(v.to_string())),
        ColumnKind::Integer | ColumnKind::Time => {
            format!("{}::int8", p.push(v.parse::<i64>().map_err(|_| not_a_number(kind, v))?))
        }
        ColumnKind::Float => format!("{}::float8", p.push(v.parse::<f64>().map_err(|_| not_a_number(kind, v))?)),
        ColumnKind::Bool => format!("{}::bool", p.push(v == "true")),
    })
}

/// The list of `in.(...)` as one typed array parameter.
fn bind_typed_list(p: &mut Params, kind: ColumnKind, vs: &[String]) -> Result<String, StoreError> {
    Ok(match kind {
        ColumnKind::Text | ColumnKind::Json => format!("{}::text[]", p.push(vs.to_vec())),
        ColumnKind::Integer | ColumnKind::Time => {
            let ns = vs
                .iter()
                .map(|v| v.parse::<i64>().map_err(|_| not_a_number(kind, v)))
                .collect::<Result<Vec<_>, _>>()?;
            format!("{}::int8[]", p.push(ns))
        }
        ColumnKind::Float => {
            let fs = vs
                .iter()
                .map(|v| v.parse::<f64>().map_err(|_| not_a_number(kind, v)))
                .collect::<Result<Vec<_>, _>>()?;
            format!("{}::float8[]", p.push(fs))
        }
        ColumnKind::Bool => format!("{}::bool[]", p.push(vs.iter().map(|v| v == "true").collect::<Vec<_>>())),
    })
}

fn herald_rows_sql(t: HeraldTable, q: &RowQuery, p: &mut Params) -> Result<String, StoreError> {
    use super::capture::quote_ident;
    let table = t.name();
    let mut sql =
        format!("SELECT to_jsonb(t)::text FROM herald.{table} t WHERE t.tenant = {}", p.push(q.tenant.clone()));
    if let Some(owner) = &q.owner {
        let o = p.push(owner.clone());
        sql.push_str(&match t {
            HeraldTable::Jobs => format!(" AND t.owner = {o}"),
            // The job's owner decides, as for the API's reads of a job's tasks.
            HeraldTable::Tasks | HeraldTable::Artifacts => format!(
                " AND EXISTS (SELECT 1 FROM herald.jobs j \
                 WHERE j.tenant = t.tenant AND j.id = t.job_id AND j.owner = {o})"
            ),
            HeraldTable::Notifications => format!(" AND t.recipient = {o}"),
        });
    }
    for c in &q.conditions {
        let kind = t.column(&c.column).ok_or_else(|| no_column(table, &c.column))?;
        let col = format!("t.{}", quote_ident(&c.column));
        let cond = match c.op {
            Op::Is(v) => format!("{col} {}", Op::is_sql(v)),
            _ if kind == ColumnKind::Json => {
                return Err(Refused::new("42883", format!("operator does not exist: jsonb {} unknown", c.op.sql()))
                    .into_store_error())
            }
            Op::In => format!("{col} = ANY({})", bind_typed_list(p, kind, &c.values)?),
            op => {
                let v = c.values.first().map(String::as_str).unwrap_or_default();
                format!("{col} {} {}", op.sql(), bind_typed(p, kind, v)?)
            }
        };
        sql.push_str(" AND ");
        sql.push_str(&cond);
    }
    let mut order = Vec::with_capacity(q.order.len() + 1);
    for o in &q.order {
        if t.column(&o.column).ok_or_else(|| no_column(table, &o.column))? == ColumnKind::Json {
            return Err(Refused::new(
                "42883",
                format!("could not identify an ordering operator for {table}.{}", o.column),
            )
            .into_store_error());
        }
        order.push(format!("t.{} {}", quote_ident(&o.column), o.sql_suffix()));
    }
    // Insertion order breaks ties, so pages by offset are stable.
    order.push(match t {
        HeraldTable::Tasks => "t.created_at, t.job_id, t.id".to_string(),
        _ => "t.seq".to_string(),
    });
    let limit = p.push(q.limit.min(crate::store::query::MAX_ROWS) as i64);
    let offset = p.push(q.offset.min(i64::MAX as usize) as i64);
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit} OFFSET {offset}", order.join(", ")));
    Ok(sql)
}

/// `None`: the table has no rows the scope allows (its rows all belong to
/// another default tenant, or it has no owner column to check an owner with).
fn captured_rows_sql(t: &CapturedTable, q: &RowQuery, p: &mut Params) -> Result<Option<String>, StoreError> {
    use super::capture::quote_ident;
    let mut sql = format!("SELECT to_jsonb(t) FROM {}.{} t WHERE true", quote_ident(&t.schema), quote_ident(&t.name));
    match &t.tenant_column {
        Some(column) => sql.push_str(&format!(" AND t.{}::text = {}", quote_ident(column), p.push(q.tenant.clone()))),
        None if t.default_tenant.as_deref() == Some(q.tenant.as_str()) => {}
        None => return Ok(None),
    }
    match (&t.owner_column, &q.owner) {
        (Some(column), Some(owner)) => {
            sql.push_str(&format!(" AND t.{}::text = {}", quote_ident(column), p.push(owner.clone())))
        }
        (None, Some(_)) => return Ok(None),
        (_, None) => {}
    }
    let column_type = |name: &str| {
        t.columns.iter().find(|c| c.name == name).map(|c| c.type_name.as_str()).ok_or_else(|| no_column(&t.name, name))
    };
    for c in &q.conditions {
        let type_name = column_type(&c.column)?;
        let col = format!("t.{}", quote_ident(&c.column));
        let cond = match c.op {
            Op::Is(v) => format!("{col} {}", Op::is_sql(v)),
            Op::In => format!("{col}::text = ANY({}::text[])", p.push(c.values.clone())),
            op @ (Op::Eq | Op::Neq) => {
                format!("{col}::text {} {}::text", op.sql(), p.push(c.values.first().cloned().unwrap_or_default()))
            }
            op => format!(
                "{col} {} {}::text::{}",
                op.sql(),
                p.push(c.values.first().cloned().unwrap_or_default()),
                quote_ident(type_name)
            ),
        };
        sql.push_str(" AND ");
        sql.push_str(&cond);
    }
    if !q.order.is_empty() {
        let mut order = Vec::with_capacity(q.order.len());
        for o in &q.order {
            column_type(&o.column)?;
            order.push(format!("t.{} {}", quote_ident(&o.column), o.sql_suffix()));
        }
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    let limit = p.push(q.limit.min(crate::store::query::MAX_ROWS) as i64);
    let offset = p.push(q.offset.min(i64::MAX as usize) as i64);
    sql.push_str(&format!(" LIMIT {limit} OFFSET {offset}"));
    Ok(Some(sql))
}

pub async fn stream_chunks(
    pool: &Pool,
    tenant: &str,
    job_id: &str,
    stream: &str,
    from: u64,
    max_chunks: usize,
    max_bytes: usize,
) -> Result<crate::store::ChunkPage, StoreError> {
    let mut c = conn(pool).await?;
    // One snapshot: the floor, the end and the segments agree.
    let tx = read_snapshot(&mut c).await?;
    let head = tx
        .query_opt(
            "SELECT s.next_offset, (SELECT min(g.first) FROM herald.stream_segments g
               WHERE g.tenant = s.tenant AND g.job_id = s.job_id AND g.name = s.name)
             FROM herald.streams s WHERE s.tenant = $1 AND s.job_id = $2 AND s.name = $3",
            &[&tenant, &job_id, &stream],
        )
        .await?;
    let Some(head) = head else { return Ok(crate::store::ChunkPage::default()) };
    let next = head.get::<_, i64>(0);
    let floor = head.get::<_, Option<i64>>(1).unwrap_or(next);
    let from_i = from.max(floor as u64) as i64;
    let rows = tx
        .query(
            "SELECT first, chunks FROM herald.stream_segments WHERE tenant = $1 AND job_id = $2 AND name = $3
             AND first + count > $4 ORDER BY first LIMIT $5",
            &[&tenant, &job_id, &stream, &from_i, &(max_chunks as i64)],
        )
        .await?;
    tx.commit().await?;
    let segments = rows.iter().map(|r| Ok((r.get::<_, i64>(0) as u64, r.get::<_, String>(1))));
    crate::store::chunk_page(next as u64, floor as u64, from, segments, max_chunks, max_bytes)
}

pub async fn streams(pool: &Pool, tenant: &str, job_id: &str) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
    let c = conn(pool).await?;
    let rows = c
        .query(
            "SELECT s.name, s.next_offset, s.bytes, s.updated_at, (SELECT min(g.first) FROM herald.stream_segments g
               WHERE g.tenant = s.tenant AND g.job_id = s.job_id AND g.name = s.name)
             FROM herald.streams s WHERE s.tenant = $1 AND s.job_id = $2 ORDER BY s.name",
            &[&tenant, &job_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let next = r.get::<_, i64>(1) as u64;
            crate::store::StreamInfo {
                name: r.get(0),
                next_offset: next,
                bytes: r.get::<_, i64>(2) as u64,
                updated_at: r.get(3),
                floor: r.get::<_, Option<i64>>(4).map_or(next, |f| f as u64),
            }
        })
        .collect())
}
