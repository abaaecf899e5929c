//! `GET /v1/events`: read the log by topic, or long-poll for what comes next.

use super::error::{ApiError, ErrorBody};
use super::extract::{Auth, Query};
use crate::app::AppState;
use crate::model::Position;
use crate::session::{authorize, revocation, KeyChanges, Membership};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::Duration;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PollEvents {
    /// One topic, or up to 20 separated by commas: `job:<id>`, `jobs`,
    /// `jobs:owner:<sub>`, `user:<sub>`, `table:<schema>.<table>[:owner:<sub>]` (rooms have no log).
    #[param(
        pattern = r"^(jobs|(job|jobs:owner|user|table):[A-Za-z0-9_.:-]{1,200})(,(jobs|(job|jobs:owner|user|table):[A-Za-z0-9_.:-]{1,200})){0,19}$"
    )]
    pub topic: String,
    /// Return events after this position (default 0).
    pub since: Option<u64>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Seconds to wait for an event when there is none yet (default 0; at most 60).
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<f64>,
}

/// Response of `GET /v1/events`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    /// Events, oldest first: `{topic, position, type, data, time}`, as stored
    /// (never re-parsed to be served).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Box<RawValue>>,
    /// Pass as `since` next time.
    pub next: u64,
    /// True when `since` is older than retention: reload a snapshot, then continue from `next`.
    pub resync: bool,
}

#[utoipa::path(get, path = "/v1/events",
    summary = "Read the event log, or long-poll it",
    description = "Events of up to 20 topics after `since`, oldest first, at most `limit` (and 4 MiB); `next` is the `since` of the next call. With `wait` (seconds) an empty answer waits for the next event: the polling fallback of clients that cannot keep a socket. `resync: true` means `since` is older than retention: reload, then go on from `next`.", tag = "events", params(PollEvents),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "`job:<id>` of a job a customer does not own", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn poll_events(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<PollEvents>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit: must be 1 to 1000"));
    }
    let wait = q.wait.unwrap_or(0.0);
    if !(0.0..=s.limits.max_poll_wait.as_secs_f64()).contains(&wait) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait: must be 0 to {} seconds", s.limits.max_poll_wait.as_secs()),
        ));
    }
    let raw_topics: Vec<&str> = q.topic.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    // Counted before any is authorized: each check may be a database read.
    if raw_topics.is_empty() || raw_topics.len() > 20 {
        return Err(ApiError::bad_request("invalid_query", "topic: give 1 to 20 topics"));
    }
    let mut topics = Vec::new();
    for raw in raw_topics {
        let t = authorize(&s, &p, raw).await?;
        if t.is_room() {
            return Err(ApiError::bad_request("invalid_topic", format!("{raw} is ephemeral and has no log")));
        }
        topics.push(t.to_string());
    }
    let since = Position::from_u64(q.since.unwrap_or(0));

    // Listen before reading, so an event committed between the read and the
    // wait still wakes us. The membership lets go of the hub when dropped.
    let (mut member, mut inbox) = Membership::new(&s, 16);
    if wait > 0.0 {
        member.describe("longpoll", &p);
        for t in &topics {
            member.join(&p.tenant, t);
        }
    }
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut keys = KeyChanges::default();
    if wait > 0.0 {
        keys.follow(&s, &p);
    }
    let mut shutdown = s.shutdown.clone();
    let mut first_read = true;
    let page = loop {
        let page = s.store.events(&p.tenant, &topics, since, limit).await?;
        // A read that names where it stopped is a resume (a first read without `since` is not).
        if q.since.is_some() && first_read {
            crate::session::replay::count_resume(&s, &p.tenant, since < page.floor);
        }
        first_read = false;
        if since < page.floor {
            break EventsPage { events: vec![], next: page.head.get(), resync: true };
        }
        if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
            let next = page.events.last().map(|e| e.position).unwrap_or(since).get();
            let events = page
                .events
                .iter()
                .map(|e| {
                    let topic = e.topics.first().map(String::as_str).unwrap_or("");
                    RawValue::from_string(e.wire_json(None, topic))
                        .map_err(|e| ApiError::from(crate::store::StoreError::corrupt(e)))
                })
                .collect::<Result<_, _>>()?;
            break EventsPage { events, next, resync: false };
        }
        wait_once(&s, &p, &mut keys, &mut inbox, &mut deadline, &mut shutdown).await?;
    };
    drop(member);
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(page)).into_response())
}

/// One wait of a long-poll: until a delivery arrives, the deadline passes or
/// the server begins shutting down (which moves the deadline to now). A key
/// revoked while the poll waits ends it with the error at once.
pub(crate) async fn wait_once(
    s: &AppState,
    p: &crate::auth::Principal,
    keys: &mut KeyChanges,
    inbox: &mut crate::hub::Inbox,
    deadline: &mut tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), ApiError> {
    let mut buf = Vec::new();
    tokio::select! {
        changed = keys.next(), if keys.is_armed() => {
            if changed.concerns(p) {
                revocation::recheck(s, &mut p.clone()).await?;
            }
        }
        _ = inbox.recv_many(&mut buf, 16) => {}
        _ = tokio::time::sleep_until(*deadline) => {}
        _ = crate::app::shutting_down(shutdown) => { *deadline = tokio::time::Instant::now(); }
    }
    Ok(())
}
