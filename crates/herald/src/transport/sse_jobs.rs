//! Live job lists over server-sent events, `/v1/sse/jobs?status=…`: the
//! native protocol's `list`, read-only. A `snapshot` message, then a `change`
//! per job entering, changing within or leaving the list. No ids: a reconnect
//! gets a fresh snapshot, which replaces the list.

use super::http::error::ApiError;
use super::http::extract::{bearer, parse_query};
use super::sse::{finish, frame, live, Ended, Feed};
use crate::app::AppState;
use crate::hub::{Delivery, Payload};
use crate::model::JobQuery;
use crate::session::job_list::{Change, JobList, TooLarge};
use crate::session::{Membership, SessionError};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Statuses separated by commas.
    status: Option<String>,
    kind: Option<String>,
    owner: Option<String>,
    /// `key:value` pairs separated by commas.
    tag: Option<String>,
    updated_within: Option<u64>,
    /// For `EventSource`, which cannot set headers.
    token: Option<String>,
}

fn change_message(c: &Change) -> Bytes {
    Bytes::from(frame(None, "change", &format!("{{{}}}", c.json_fields())))
}

/// A list's stream: job events of its topic become its changes.
struct ListFeed {
    list: JobList,
}

impl Feed for ListFeed {
    fn messages(&mut self, d: &Arc<Delivery>, out: &mut Vec<Bytes>) -> Result<(), Ended> {
        let Payload::Event(e) = &d.payload else { return Ok(()) };
        match self.list.apply(e, crate::model::time::now_ms()) {
            Ok(Some(change)) => out.push(change_message(&change)),
            Ok(None) => {}
            Err(TooLarge) => return Err(Ended("list_too_large")),
        }
        Ok(())
    }

    fn next_tick(&self) -> Option<i64> {
        self.list.next_expiry()
    }

    fn tick(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.list.expire(crate::model::time::now_ms()).iter().map(change_message));
    }
}

pub async fn stream(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let q: ListParams = parse_query(parts.uri.query().unwrap_or(""))?;
    let token = bearer(&parts).or(q.token).ok_or(crate::auth::AuthError::Missing)?;
    let p = s.auth.authenticate(&token).await?;
    let query = JobQuery::from_params(
        q.status.as_deref(),
        q.kind.as_deref(),
        q.owner.as_deref(),
        q.tag.as_deref(),
        q.updated_within,
    )
    .map_err(|m| ApiError::from(SessionError::invalid("invalid_query", m)))?;
    let guard = s
        .hub
        .connect(&p.tenant)
        .map_err(|e| ApiError::from(SessionError::limit("too_many_connections", e.to_string())))?;
    // Opened before the response, so a refusal is an HTTP error, not a broken stream.
    let (mut member, mut inbox) = Membership::new(&s, s.limits.outbox_capacity);
    member.adopt(Some(guard));
    member.describe("sse", &p);
    let opened = JobList::open(&s, &p, &mut member, query).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let snapshot = serde_json::json!({ "position": opened.position, "jobs": opened.jobs });
        let first = format!("retry: 2000\n\n{}", frame(None, "snapshot", &snapshot.to_string()));
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut feed = ListFeed { list: opened.list };
        let end = live(&s, &p, &tx, &mut inbox, &mut feed).await;
        finish(&mut member, &tx, end).await;
    });
    Ok(super::sse::response(rx))
}
