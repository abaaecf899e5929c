//! Who may subscribe to what: one authorization path for every transport,
//! and the snapshot a client reloads when it fell behind retention.

use super::error::SessionError;
use crate::app::AppState;
use crate::auth::{can_read_topic, Principal};
use crate::model::Topic;

/// Parses `raw` and checks that `p` may read it. A topic the caller may not see
/// is refused as `forbidden`; for a job of another customer it is `not_found`,
/// so existence does not leak. A room named after a job (`room:job:<id>`, where
/// the dashboard keeps a job's viewers) follows that job's read rules.
pub async fn authorize(s: &AppState, p: &Principal, raw: &str) -> Result<Topic, SessionError> {
    let topic = check(s, p, raw, false).await?;
    refuse_streams(topic)
}

/// As [`authorize`], for the transports that read job output streams
/// (`stream:<job>:<name>`, with offsets of their own rather than positions):
/// the native WebSocket and the streams' HTTP endpoints.
pub async fn authorize_with_streams(s: &AppState, p: &Principal, raw: &str) -> Result<Topic, SessionError> {
    check(s, p, raw, false).await
}

/// Streams are read where offsets are understood; elsewhere their topic is refused.
fn refuse_streams(topic: Topic) -> Result<Topic, SessionError> {
    if let Topic::Stream { job, name } = &topic {
        return Err(SessionError::invalid(
            "invalid_topic",
            format!("read job output streams over /v1/ws or at /v1/jobs/{job}/streams/{name}"),
        ));
    }
    Ok(topic)
}

/// As [`authorize`], and a job topic (not a job's room) must name a job that
/// exists: for protocols whose clients expect to hear about unknown ids
/// (Socket.IO's `job:subscribe`), where [`authorize`] lets staff watch a job
/// before its worker creates it.
pub async fn authorize_existing(s: &AppState, p: &Principal, raw: &str) -> Result<Topic, SessionError> {
    refuse_streams(check(s, p, raw, true).await?)
}

/// A job output stream (`stream:<job>:<name>`) of a job that exists and `p`
/// may read, for Socket.IO's `stream:subscribe`.
pub async fn authorize_existing_stream(s: &AppState, p: &Principal, raw: &str) -> Result<Topic, SessionError> {
    match check(s, p, raw, true).await? {
        topic @ Topic::Stream { .. } => Ok(topic),
        _ => Err(SessionError::invalid("invalid_topic", format!("{raw} is not a job output stream"))),
    }
}

async fn check(s: &AppState, p: &Principal, raw: &str, job_must_exist: bool) -> Result<Topic, SessionError> {
    let topic = Topic::parse(raw).map_err(|m| SessionError::invalid("invalid_topic", m))?;
    if let Topic::Table { schema, name, owner } = &topic {
        let Some(table) = s.catalog.get(schema, name) else {
            return Err(SessionError::not_found(raw));
        };
        match (&table.owner_column, owner) {
            (None, Some(_)) => {
                return Err(SessionError::invalid(
                    "invalid_topic",
                    format!("{schema}.{name} has no owner column; subscribe to table:{schema}.{name}"),
                ))
            }
            // Customers of a table with owners read their own rows only.
            (Some(_), None) if p.role == crate::model::Role::Customer => {
                return Err(SessionError::forbidden(format!(
                    "customers read table:{schema}.{name}:owner:<their sub>, not the whole table"
                )))
            }
            _ => {}
        }
    }
    let job = match &topic {
        Topic::Job(id) => Some(id.as_str()),
        Topic::Room(name) => name.strip_prefix("job:"),
        Topic::Stream { job, .. } => Some(job.as_str()),
        _ => None,
    };
    if let Some(id) = job {
        // The owner column only: deciding access never loads (or times) the whole document.
        let owner = s.store.job_owner(&p.tenant, id).await?;
        if owner.is_none() && job_must_exist && matches!(topic, Topic::Job(_) | Topic::Stream { .. }) {
            return Err(SessionError::not_found(raw));
        }
        let owner_ref = owner.as_ref().map(|o| o.as_deref());
        if can_read_topic(p, &Topic::Job(id.to_string()), owner_ref) {
            return Ok(topic);
        }
        return Err(SessionError::not_found(raw));
    }
    if can_read_topic(p, &topic, None) {
        return Ok(topic);
    }
    Err(SessionError::forbidden(format!("role {} may not read {raw}", p.role.as_str())))
}

/// Most rows of a captured table a snapshot carries.
const SNAPSHOT_ROWS: usize = 1000;

/// What a client that fell behind retention reloads instead of the events it missed.
pub async fn snapshot(s: &AppState, p: &Principal, topic: &Topic) -> Result<serde_json::Value, SessionError> {
    use crate::store::JobFilter;
    Ok(match topic {
        Topic::Job(id) => {
            let job = s.store.job(&p.tenant, id).await?;
            let tasks = s.store.tasks(&p.tenant, id).await?;
            serde_json::json!({ "job": job, "tasks": tasks })
        }
        Topic::Jobs | Topic::JobsOwner(_) => {
            let owner = match topic {
                Topic::JobsOwner(o) => Some(o.clone()),
                _ => None,
            };
            let filter = JobFilter { owner, limit: 100, ..Default::default() };
            let page = s.store.jobs(&p.tenant, &p.job_visibility(), filter).await?;
            serde_json::json!({ "jobs": page.items })
        }
        Topic::User(sub) => {
            let (items, unread) = s.store.notifications(&p.tenant, sub, false, 50).await?;
            serde_json::json!({ "notifications": items, "unread_count": unread })
        }
        Topic::Room(_) | Topic::Stream { .. } => serde_json::json!({}),
        Topic::Table { schema, name, owner } => {
            let rows = match s.catalog.get(schema, name) {
                Some(table) => s.store.table_rows(table, &p.tenant, owner.as_deref(), SNAPSHOT_ROWS).await?,
                None => Vec::new(),
            };
            serde_json::json!({ "rows": rows })
        }
    })
}
