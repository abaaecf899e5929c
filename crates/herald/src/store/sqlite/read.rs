//! Read queries, run on reader connections.

use crate::model::{Artifact, Event, EventType, Job, Notification, Position, Task};
use crate::model::{JobVisibility, Role};
use crate::store::query::{ColumnKind, HeraldTable, Op, Refused, RowQuery, RowSource};
use crate::store::{ApiKeyRecord, EventPage, JobFilter, Page, StoreError, API_KEY_COLUMNS, MAX_PAGE_BYTES};
use rusqlite::{params, types::Value as SqlValue, Connection, OptionalExtension};
use serde_json::value::RawValue;
use std::sync::Arc;

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(StoreError::corrupt)
}

pub fn job(c: &Connection, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
    let doc: Option<String> = c
        .prepare_cached("SELECT doc FROM jobs WHERE tenant = ?1 AND id = ?2")?
        .query_row(params![tenant, id], |r| r.get(0))
        .optional()?;
    doc.map(|d| from_json(&d)).transpose()
}

pub fn job_owner(c: &Connection, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError> {
    Ok(c.prepare_cached("SELECT owner FROM jobs WHERE tenant = ?1 AND id = ?2")?
        .query_row(params![tenant, id], |r| r.get::<_, Option<String>>(0))
        .optional()?)
}

/// A recoverable session's owner and document.
pub fn session(c: &Connection, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
    Ok(c.prepare_cached("SELECT sub, doc FROM sessions WHERE tenant = ?1 AND id = ?2")?
        .query_row(params![tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The newest position in the log and the pruned floor below which nothing is left.
pub fn head_and_floor(c: &Connection) -> Result<(Position, Position), StoreError> {
    let head: i64 = c.prepare_cached("SELECT coalesce(max(position), 0) FROM events")?.query_row([], |r| r.get(0))?;
    let floor: i64 = c
        .prepare_cached("SELECT value FROM meta WHERE key = 'floor'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A log pruned to nothing still has its head where the floor is.
    Ok((Position::from_u64(head.max(floor) as u64), Position::from_u64(floor as u64)))
}

pub fn jobs(c: &Connection, tenant: &str, vis: &JobVisibility, f: &JobFilter) -> Result<Page<Job>, StoreError> {
    let mut sql = String::from("SELECT rowid, doc FROM jobs WHERE tenant = ?");
    let mut args: Vec<SqlValue> = vec![tenant.to_string().into()];
    if let JobVisibility::OwnedBy(sub) = vis {
        sql.push_str(" AND owner = ?");
        args.push(sub.clone().into());
    }
    if let Some(s) = f.status {
        sql.push_str(" AND status = ?");
        args.push(s.as_str().to_string().into());
    }
    if let Some(k) = &f.kind {
        sql.push_str(" AND kind = ?");
        args.push(k.clone().into());
    }
    if let Some(o) = &f.owner {
        sql.push_str(" AND owner = ?");
        args.push(o.clone().into());
    }
    if let Some(u) = f.updated_after {
        sql.push_str(" AND updated_at > ?");
        args.push(u.into());
    }
    if let Some(b) = f.before {
        sql.push_str(" AND rowid < ?");
        args.push(b.into());
    }
    sql.push_str(" ORDER BY rowid DESC LIMIT ?");
    args.push(((f.limit + 1) as i64).into());
    let mut stmt = c.prepare_cached(&sql)?;
    let rows: Vec<(i64, String)> =
        stmt.query_map(rusqlite::params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    let more = rows.len() > f.limit;
    let mut items = Vec::with_capacity(rows.len().min(f.limit));
    let mut last = None;
    for (rowid, doc) in rows.into_iter().take(f.limit) {
        items.push(from_json(&doc)?);
        last = Some(rowid);
    }
    Ok(Page { items, next_cursor: if more { last } else { None } })
}

pub fn tasks(c: &Connection, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT doc FROM tasks WHERE tenant = ?1 AND job_id = ?2 ORDER BY rowid")?;
    let docs: Vec<String> = stmt.query_map(params![tenant, job_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    docs.iter().map(|d| from_json(d)).collect()
}

pub fn artifacts(c: &Connection, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT doc FROM artifacts WHERE tenant = ?1 AND job_id = ?2 ORDER BY seq")?;
    let docs: Vec<String> = stmt.query_map(params![tenant, job_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    docs.iter().map(|d| from_json(d)).collect()
}

pub fn notifications(
    c: &Connection,
    tenant: &str,
    recipient: &str,
    unread_only: bool,
    limit: usize,
) -> Result<(Vec<Notification>, u64), StoreError> {
    let sql = if unread_only {
        "SELECT doc FROM notifications WHERE tenant = ?1 AND recipient = ?2 AND read = 0 ORDER BY seq DESC LIMIT ?3"
    } else {
        "SELECT doc FROM notifications WHERE tenant = ?1 AND recipient = ?2 ORDER BY seq DESC LIMIT ?3"
    };
    let docs: Vec<String> = c
        .prepare_cached(sql)?
        .query_map(params![tenant, recipient, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let unread: i64 = c
        .prepare_cached("SELECT count(*) FROM notifications WHERE tenant = ?1 AND recipient = ?2 AND read = 0")?
        .query_row(params![tenant, recipient], |r| r.get(0))?;
    let items = docs.iter().map(|d| from_json(d)).collect::<Result<_, _>>()?;
    Ok((items, unread as u64))
}

pub fn events(
    c: &Connection,
    tenant: &str,
    topics: &[String],
    since: Position,
    limit: usize,
) -> Result<EventPage, StoreError> {
    // Head and floor first: an event committed after this read is still ahead of `head`.
    let (head, floor) = head_and_floor(c)?;
    if topics.is_empty() || limit == 0 {
        return Ok(EventPage { events: Vec::new(), head, floor, truncated: false });
    }
    let since = since.get().min(i64::MAX as u64);
    let placeholders = vec!["?"; topics.len()].join(", ");
    // The limit counts events, not (event, topic) rows: an event in two of the
    // asked topics is one event. (Counting rows made pages short, and a reader
    // that takes a short page for "caught up" stopped early.)
    // One topic has one row per event and streams in index order.
    let distinct = if topics.len() > 1 { "DISTINCT" } else { "" };
    let sql = format!(
        "SELECT e.position, e.type, e.job_id, e.owner, e.data, e.time, t.topic
         FROM (SELECT {distinct} position FROM event_topics
               WHERE tenant = ? AND topic IN ({placeholders}) AND position > ? AND position <= ?
               ORDER BY position LIMIT ?) p
         JOIN events e ON e.position = p.position
         JOIN event_topics t ON t.tenant = ? AND t.position = p.position AND t.topic IN ({placeholders})
         ORDER BY p.position"
    );
    let mut args: Vec<SqlValue> = Vec::with_capacity(2 * topics.len() + 5);
    args.push(tenant.to_string().into());
    args.extend(topics.iter().map(|t| SqlValue::from(t.clone())));
    args.push((since as i64).into());
    args.push((head.get() as i64).into());
    args.push((limit as i64).into());
    args.push(tenant.to_string().into());
    args.extend(topics.iter().map(|t| SqlValue::from(t.clone())));
    let tenant: Arc<str> = Arc::from(tenant);
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut events: Vec<Event> = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = false;
    while let Some(r) = rows.next()? {
        let position = Position::from_u64(r.get::<_, i64>(0)? as u64);
        let topic: String = r.get(6)?;
        if let Some(last) = events.last_mut() {
            if last.position == position {
                last.topics.push(topic);
                continue;
            }
        }
        // A page is bounded in bytes as well as in count (always one event at least).
        if bytes >= MAX_PAGE_BYTES {
            truncated = true;
            break;
        }
        let kind: String = r.get(1)?;
        let data: String = r.get(4)?;
        bytes += data.len();
        events.push(Event {
            position,
            tenant: Arc::clone(&tenant),
            kind: EventType::parse(&kind).ok_or_else(|| StoreError::internal(format!("unknown event type {kind}")))?,
            topics: vec![topic],
            job_id: r.get(2)?,
            owner: r.get(3)?,
            data: Arc::from(RawValue::from_string(data).map_err(StoreError::corrupt)?),
            time: r.get(5)?,
            old: None,
            table: None,
            row: Default::default(),
        });
    }
    Ok(EventPage { events, head, floor, truncated })
}

pub fn api_key(c: &Connection, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    Ok(c.prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
        .query_row(params![id], api_key_row)
        .optional()?)
}

pub fn api_keys(c: &Connection, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY created_at DESC, id"
    ))?;
    let rows = statement.query_map(params![tenant], api_key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn api_key_changes(c: &Connection, since_ms: i64) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE changed_at >= ?1 ORDER BY changed_at"
    ))?;
    let rows = statement.query_map(params![since_ms], api_key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One `api_keys` row, selected as [`API_KEY_COLUMNS`].
pub fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        role: Role::parse(&r.get::<_, String>(3)?).unwrap_or(Role::Worker),
        hash: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
        changed_at: r.get(9)?,
    })
}

/// `GET /rest/v1/<table>` (Herald's tables; SQLite captures none): ONE query
/// that filters, orders and pages in SQL — on the columns stored beside the
/// document where they exist, on `json_extract` of the document otherwise
/// (times as epoch milliseconds via `unixepoch(.., 'subsec')`, since the
/// document's RFC 3339 strings do not sort as text) — with the scope (tenant,
/// owner) in the same WHERE clause. So it returns exactly the rows the query
/// asks for, at most [`MAX_ROWS`](crate::store::query::MAX_ROWS), and costs
/// what its query costs; nothing is filtered in memory.
pub fn query_rows(c: &Connection, q: &RowQuery) -> Result<Vec<serde_json::Value>, StoreError> {
    let RowSource::Herald(t) = &q.source else {
        return Err(Refused::new("42P01", "SQLite stores no captured tables").into_store_error());
    };
    let t = *t;
    let table = t.name();
    let no_column =
        |column: &str| Refused::new("42703", format!("column {table}.{column} does not exist")).into_store_error();
    let mut sql = format!("SELECT t.doc FROM {table} t WHERE t.tenant = ?");
    let mut args: Vec<SqlValue> = vec![q.tenant.clone().into()];
    if let Some(owner) = &q.owner {
        sql.push_str(match t {
            HeraldTable::Jobs => " AND t.owner = ?",
            // The job's owner decides, as for the API's reads of a job's tasks.
            HeraldTable::Tasks | HeraldTable::Artifacts => {
                " AND EXISTS (SELECT 1 FROM jobs j WHERE j.tenant = t.tenant AND j.id = t.job_id AND j.owner = ?)"
            }
            HeraldTable::Notifications => " AND t.recipient = ?",
        });
        args.push(owner.clone().into());
    }
    for cond in &q.conditions {
        let kind = t.column(&cond.column).ok_or_else(|| no_column(&cond.column))?;
        let expr = column_sql(t, &cond.column, kind);
        let clause = match cond.op {
            Op::Is(v) => format!("{expr} {}", Op::is_sql(v)),
            _ if kind == ColumnKind::Json => {
                return Err(Refused::new("42883", format!("operator does not exist: jsonb {} unknown", cond.op.sql()))
                    .into_store_error())
            }
            // `IN ()` is false, as PostgreSQL's `= ANY('{}')`.
            Op::In if cond.values.is_empty() => "0".to_string(),
            Op::In => {
                for v in &cond.values {
                    args.push(sql_value(kind, v)?);
                }
                format!("{expr} IN ({})", vec!["?"; cond.values.len()].join(", "))
            }
            op => {
                args.push(sql_value(kind, cond.values.first().map(String::as_str).unwrap_or_default())?);
                format!("{expr} {} ?", op.sql())
            }
        };
        sql.push_str(" AND ");
        sql.push_str(&clause);
    }
    let mut order = Vec::with_capacity(q.order.len() + 1);
    for o in &q.order {
        let kind = t.column(&o.column).ok_or_else(|| no_column(&o.column))?;
        if kind == ColumnKind::Json {
            return Err(Refused::new(
                "42883",
                format!("could not identify an ordering operator for {table}.{}", o.column),
            )
            .into_store_error());
        }
        // NULLs placed as PostgreSQL places them (SQLite's own default is the opposite).
        order.push(format!("{} {}", column_sql(t, &o.column, kind), o.sql_suffix()));
    }
    // Insertion order breaks ties, so pages by offset are stable.
    order.push("t.rowid".to_string());
    sql.push_str(&format!(" ORDER BY {} LIMIT ? OFFSET ?", order.join(", ")));
    args.push((q.limit.min(crate::store::query::MAX_ROWS) as i64).into());
    args.push((q.offset.min(i64::MAX as usize) as i64).into());
    // Not a cached statement: the text varies with every combination of conditions.
    let mut stmt = c.prepare(&sql)?;
    let docs: Vec<String> =
        stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?.collect::<Result<_, _>>()?;
    // The documents are the rows as the API shows them.
    docs.iter().map(|d| from_json(d)).collect()
}

/// The SQL of a column: the column stored beside the document (same value),
/// else the document's field. Names come from [`HeraldTable::columns`] only.
fn column_sql(t: HeraldTable, name: &str, kind: ColumnKind) -> String {
    let stored = matches!(
        (t, name),
        (HeraldTable::Jobs, "id" | "owner" | "kind" | "status" | "updated_at")
            | (HeraldTable::Tasks, "id" | "job_id" | "status")
            | (HeraldTable::Artifacts, "id" | "job_id")
            | (HeraldTable::Notifications, "id" | "recipient")
    );
    if stored {
        return format!("t.{name}");
    }
    let field = format!("json_extract(t.doc, '$.{name}')");
    match kind {
        ColumnKind::Time => format!("CAST(round(unixepoch({field}, 'subsec') * 1000) AS INTEGER)"),
        _ => field,
    }
}

/// A condition's value as SQLite compares it with the column (booleans as 1/0,
/// as `json_extract` gives them).
fn sql_value(kind: ColumnKind, v: &str) -> Result<SqlValue, StoreError> {
    let bad = || {
        Refused::new("22P02", format!("invalid input syntax for type {}: \"{v}\"", kind.pg_name())).into_store_error()
    };
    Ok(match kind {
        ColumnKind::Text | ColumnKind::Json => SqlValue::Text(v.to_string()),
        ColumnKind::Integer | ColumnKind::Time => SqlValue::Integer(v.parse().map_err(|_| bad())?),
        ColumnKind::Float => SqlValue::Real(v.parse().map_err(|_| bad())?),
        ColumnKind::Bool => SqlValue::Integer(i64::from(v == "true")),
    })
}

/// The jobs a live list starts from and the head they reflect, read in one
/// transaction: SQLite commits a job and its events together, so the jobs
/// are exactly the state after every event up to the head.
pub fn job_list(
    c: &Connection,
    tenant: &str,
    vis: &JobVisibility,
    q: &crate::model::JobQuery,
    now_ms: i64,
    max_rows: usize,
) -> Result<crate::store::JobListSnapshot, StoreError> {
    let tx = c.unchecked_transaction()?;
    let (head, _) = head_and_floor(&tx)?;
    let mut sql = String::from("SELECT doc FROM jobs WHERE tenant = ?");
    let mut args: Vec<SqlValue> = vec![tenant.to_string().into()];
    for owner in [vis.owner(), q.owner.as_deref()].into_iter().flatten() {
        sql.push_str(" AND owner = ?");
        args.push(owner.to_string().into());
    }
    if !q.status.is_empty() {
        sql.push_str(&format!(" AND status IN ({})", vec!["?"; q.status.len()].join(",")));
        args.extend(q.status.iter().map(|s| SqlValue::from(s.as_str().to_string())));
    }
    if let Some(k) = &q.kind {
        sql.push_str(" AND kind = ?");
        args.push(k.clone().into());
    }
    if let Some(after) = q.updated_after(now_ms) {
        sql.push_str(" AND updated_at >= ?");
        args.push(after.into());
    }
    sql.push_str(" LIMIT ?");
    args.push(((max_rows + 1) as i64).into());
    let docs: Vec<String> = {
        let mut stmt = tx.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    tx.commit()?;
    let truncated = docs.len() > max_rows;
    let jobs = docs.iter().take(max_rows).map(|d| from_json(d)).collect::<Result<_, _>>()?;
    // Nothing newer than the head can have reached the jobs read: no versions needed.
    Ok(crate::store::JobListSnapshot { head, jobs, truncated, recent: Vec::new() })
}

pub fn stream_chunks(
    c: &Connection,
    tenant: &str,
    job_id: &str,
    stream: &str,
    from: u64,
    max_chunks: usize,
    max_bytes: usize,
) -> Result<crate::store::ChunkPage, StoreError> {
    let tx = c.unchecked_transaction()?;
    let next: Option<i64> = tx
        .prepare_cached("SELECT next_offset FROM streams WHERE tenant = ?1 AND job_id = ?2 AND name = ?3")?
        .query_row(params![tenant, job_id, stream], |r| r.get(0))
        .optional()?;
    let Some(next) = next else { return Ok(crate::store::ChunkPage::default()) };
    let floor: i64 = tx
        .prepare_cached("SELECT min(first) FROM stream_segments WHERE tenant = ?1 AND job_id = ?2 AND name = ?3")?
        .query_row(params![tenant, job_id, stream], |r| r.get::<_, Option<i64>>(0))?
        .unwrap_or(next);
    let mut stmt = tx.prepare_cached(
        "SELECT first, chunks FROM stream_segments WHERE tenant = ?1 AND job_id = ?2 AND name = ?3
         AND first + count > ?4 ORDER BY first LIMIT ?5",
    )?;
    let from_i = from.max(floor as u64) as i64;
    let rows = stmt.query_map(params![tenant, job_id, stream, from_i, max_chunks as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })?;
    let page = crate::store::chunk_page(
        next as u64,
        floor as u64,
        from,
        rows.map(|r| r.map_err(StoreError::from)),
        max_chunks,
        max_bytes,
    );
    drop(stmt);
    tx.commit()?;
    page
}

pub fn streams(c: &Connection, tenant: &str, job_id: &str) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT s.name, s.next_offset, s.bytes, s.updated_at,
                (SELECT min(g.first) FROM stream_segments g WHERE g.tenant = s.tenant AND g.job_id = s.job_id AND g.name = s.name)
         FROM streams s WHERE s.tenant = ?1 AND s.job_id = ?2 ORDER BY s.name",
    )?;
    let rows = stmt.query_map(params![tenant, job_id], |r| {
        let next = r.get::<_, i64>(1)? as u64;
        Ok(crate::store::StreamInfo {
            name: r.get(0)?,
            next_offset: next,
            bytes: r.get::<_, i64>(2)? as u64,
            updated_at: r.get(3)?,
            floor: r.get::<_, Option<i64>>(4)?.map_or(next, |f| f as u64),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
