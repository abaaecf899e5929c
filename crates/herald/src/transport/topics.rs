//! Subscribing, shared by every transport: topic authorization and the
//! gapless hand-over from log replay to live delivery.

use super::http::error::ApiError;
use crate::app::AppState;
use crate::auth::{can_read_topic, Principal};
use crate::model::{Event, Topic};
use axum::http::StatusCode;

/// Parses `raw` and checks that `p` may read it. A topic the caller may not see
/// is refused as `forbidden`; for a job of another customer it is `not_found`,
/// so existence does not leak.
pub async fn authorize(s: &AppState, p: &Principal, raw: &str) -> Result<Topic, ApiError> {
    let topic = Topic::parse(raw).map_err(|m| ApiError::bad_request("invalid_topic", m))?;
    let owner = match &topic {
        Topic::Job(id) => match s.store.job(&p.tenant, id).await? {
            Some(job) => Some(job.owner),
            None => None,
        },
        _ => None,
    };
    let owner_ref = owner.as_ref().map(|o| o.as_deref());
    if can_read_topic(p, &topic, owner_ref) {
        return Ok(topic);
    }
    if matches!(topic, Topic::Job(_)) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{raw} not found")));
    }
    Err(ApiError::forbidden(format!("role {} may not read {raw}", p.role.as_str())))
}

/// The JSON of an event as every transport shows it.
pub fn event_json(op: Option<&str>, topic: &str, e: &Event) -> String {
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        op: Option<&'a str>,
        topic: &'a str,
        position: u64,
        #[serde(rename = "type")]
        kind: &'static str,
        data: &'a serde_json::value::RawValue,
        time: String,
    }
    serde_json::to_string(&Wire {
        op,
        topic,
        position: e.position,
        kind: e.kind.as_str(),
        data: &e.data,
        time: crate::model::time::format_ms(e.time),
    })
    .unwrap_or_default()
}

/// One step of a replay from the log.
pub enum ReplayPage {
    /// Events after the cursor, oldest first; fewer than asked means the replay caught up.
    Events(Vec<Event>),
    /// The cursor is older than retention: the client must resync from a snapshot.
    Behind { head: u64 },
}

/// Events replayed per page.
pub const REPLAY_PAGE: usize = 1000;

/// Reads the next page of a replay of `topics` after `after`.
pub async fn replay_page(s: &AppState, tenant: &str, topics: &[String], after: u64) -> Result<ReplayPage, ApiError> {
    let page = s.store.events(tenant, topics, after, REPLAY_PAGE).await?;
    if after < page.floor {
        return Ok(ReplayPage::Behind { head: page.head });
    }
    Ok(ReplayPage::Events(page.events))
}

/// The newest position in the log.
pub async fn head(s: &AppState, tenant: &str) -> Result<u64, ApiError> {
    Ok(s.store.events(tenant, &[], u64::MAX, 0).await?.head)
}

/// What a client that fell behind retention reloads instead of the events it missed.
pub async fn snapshot(s: &AppState, p: &Principal, topic: &Topic) -> Result<serde_json::Value, ApiError> {
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
        Topic::Room(_) => serde_json::json!({}),
    })
}
