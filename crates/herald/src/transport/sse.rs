//! Server-sent events at `/v1/sse?topic=a,b`: the same log and hub as the
//! WebSocket, one ordered stream for several topics, resumed by `Last-Event-ID`.

use super::http::error::ApiError;
use super::http::extract::{bearer, parse_query};
use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::hub::{ConnectionGuard, Delivery, Payload, WireFormat};
use crate::model::{Event, Position, Topic};
use crate::session::stream::{chunks_array, Admit, StreamCursor, StreamRef};
use crate::session::{
    authorize, expiry_instant, head, revocation, snapshot, CloseReason, Cursor, Deadline, KeyChanges, Membership,
    Replay, ReplayPage, SessionError,
};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    /// Topics separated by commas.
    topic: String,
    /// Resume after this position (`Last-Event-ID` wins when both are sent).
    since: Option<u64>,
    /// For `EventSource`, which cannot set headers.
    token: Option<String>,
    /// `false`: every progress tick, even when the stream is behind (default:
    /// ticks of one job may supersede each other while it is behind).
    conflate: Option<bool>,
}

/// Time the goodbye message has to get into a stream that is ending.
pub(crate) const GOODBYE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn frame(id: Option<u64>, event: &str, data: &str) -> String {
    match id {
        Some(id) => format!("id: {id}\nevent: {event}\ndata: {data}\n\n"),
        None => format!("event: {event}\ndata: {data}\n\n"),
    }
}

fn event_frame(topic: &str, e: &Event) -> String {
    frame(Some(e.position.get()), e.kind.as_str(), &e.wire_json(None, topic))
}

/// SSE's cache slot in a delivery.
static SSE: std::sync::LazyLock<WireFormat> = std::sync::LazyLock::new(WireFormat::register);

/// The SSE bytes of a delivery, built once and shared.
fn delivery_frame(d: &Delivery) -> Bytes {
    d.frame(*SSE, |d| -> Bytes {
        Bytes::from(match &d.payload {
            Payload::Event(e) => event_frame(&d.topic, e),
            Payload::Broadcast { event, data, from, .. } => {
                let body =
                    serde_json::json!({ "topic": &*d.topic, "event": event, "data": data, "from": from.as_deref() });
                frame(None, "broadcast", &body.to_string())
            }
            Payload::PresenceDiff { joins, leaves } => {
                let body = serde_json::json!({ "topic": &*d.topic, "joins": joins, "leaves": leaves });
                frame(None, "presence_diff", &body.to_string())
            }
            // Topic streams cannot carry job output streams (`authorize` refuses
            // them); theirs is /v1/jobs/{id}/streams/{name}/sse.
            Payload::Chunks { .. } => String::new(),
        })
    })
}

/// The `Last-Event-ID` an `EventSource` sends when it reconnects (`what` it holds: a position, an offset).
pub(crate) fn last_event_id(headers: &axum::http::HeaderMap, what: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("invalid_header", format!("Last-Event-ID: expected {what}")))
        })
        .transpose()
}

pub async fn stream(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let q: SseQuery = parse_query(parts.uri.query().unwrap_or(""))?;
    let token = bearer(&parts).or(q.token).ok_or(crate::auth::AuthError::Missing)?;
    let p = s.auth.authenticate(&token).await?;
    let last_event_id = last_event_id(&parts.headers, "a position")?;
    let since = last_event_id.or(q.since);
    let mut topics = Vec::new();
    for raw in q.topic.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        topics.push((authorize(&s, &p, raw).await?, raw.to_string()));
    }
    if topics.is_empty() || topics.len() > s.limits.max_subscriptions {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("topic: give 1 to {} topics", s.limits.max_subscriptions),
        ));
    }
    let guard = s
        .hub
        .connect(&p.tenant)
        .map_err(|e| ApiError::from(SessionError::limit("too_many_connections", e.to_string())))?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run(s, p, topics, since, q.conflate.unwrap_or(true), tx, guard));
    Ok(response(rx))
}

/// The `text/event-stream` response carrying what the stream's task sends.
pub(crate) fn response(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(futures_util::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<Bytes, std::convert::Infallible>,
    ));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Feeds one SSE stream until the client goes away, the token expires, the
/// queue overflows or the server shuts down.
async fn run(
    s: AppState,
    p: Principal,
    topics: Vec<(Topic, String)>,
    since: Option<u64>,
    conflate: bool,
    tx: mpsc::Sender<Bytes>,
    guard: ConnectionGuard,
) {
    // Dropped at the end of this task, whatever ends it: the hub lets go then.
    let (mut member, mut inbox) = Membership::new(&s, s.limits.outbox_capacity);
    member.adopt(Some(guard));
    member.describe("sse", &p);
    for (_, raw) in &topics {
        member.join_with(&p.tenant, raw, conflate);
    }
    let end = feed(&s, &p, &topics, since, &tx, &mut inbox).await;
    finish(&mut member, &tx, end).await;
}

async fn feed(
    s: &AppState,
    p: &Principal,
    topics: &[(Topic, String)],
    since: Option<u64>,
    tx: &mpsc::Sender<Bytes>,
    inbox: &mut crate::hub::Inbox,
) -> Option<StreamEnd> {
    // One stream, one cursor: positions are global, so the highest sent is the resume point.
    let mut cursor = Cursor::default();
    if tx.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
        return None;
    }
    let Some(since) = since else {
        // A live stream starts after the head, and says so in an id-only
        // message: a client (EventSource too) that drops before its first event
        // resumes from there. Subscribed already, so nothing after it is missed.
        let Ok(h) = head(s).await else { return Some(StreamEnd::Closed(CloseReason::Unavailable)) };
        if tx.send(Bytes::from(format!("id: {}\n\n", h.get()))).await.is_err() {
            return None;
        }
        cursor.advance(h);
        return live(s, p, tx, inbox, &mut Topics { cursor }).await;
    };
    // The client has everything up to `since`: a live copy of an older event
    // (another node may deliver it late) is not sent again. A `since` past the
    // head (a database reset) must not hold back what comes next.
    let Ok(h) = head(s).await else { return Some(StreamEnd::Closed(CloseReason::Unavailable)) };
    cursor.advance(Position::from_u64(since).min(h));
    {
        let names = topics.iter().map(|(_, raw)| raw.clone()).collect();
        let mut replay = Replay::new(Arc::clone(&p.tenant), names, Position::from_u64(since));
        loop {
            match replay.next_page(s).await {
                Err(e) => {
                    tracing::warn!(error = %e, "SSE replay failed");
                    return Some(StreamEnd::Closed(CloseReason::Unavailable));
                }
                Ok(None) => break,
                Ok(Some(ReplayPage::Behind { head })) => {
                    let mut snaps = serde_json::Map::new();
                    for (t, raw) in topics {
                        snaps.insert(raw.clone(), snapshot(s, p, t).await.unwrap_or_default());
                    }
                    let body = serde_json::json!({ "position": head, "snapshot": snaps });
                    if tx.send(Bytes::from(frame(Some(head.get()), "resync", &body.to_string()))).await.is_err() {
                        return None;
                    }
                    cursor.advance(head);
                    break;
                }
                Ok(Some(ReplayPage::Events(events))) => {
                    for e in &events {
                        let topic = e.topics.first().map(String::as_str).unwrap_or("");
                        if tx.send(Bytes::from(event_frame(topic, e))).await.is_err() {
                            return None;
                        }
                        cursor.advance(e.position);
                    }
                }
            }
        }
    }
    live(s, p, tx, inbox, &mut Topics { cursor }).await
}

/// What a stream makes of its deliveries: the topic streams here, the live
/// job lists of `/v1/sse/jobs` ([`super::sse_jobs`]).
pub(crate) trait Feed {
    /// The messages a delivery becomes (none, for a duplicate); `Err` ends the stream.
    fn messages(&mut self, d: &Arc<Delivery>, out: &mut Vec<Bytes>) -> Result<(), Ended>;
    /// When [`tick`](Self::tick) is due, epoch ms.
    fn next_tick(&self) -> Option<i64> {
        None
    }
    fn tick(&mut self, _out: &mut Vec<Bytes>) {}
}

/// Why a feed ends a stream: the goodbye's reason.
pub(crate) struct Ended(pub &'static str);

/// Topic streams: one cursor, so an event on two topics is sent once.
struct Topics {
    cursor: Cursor,
}

impl Feed for Topics {
    fn messages(&mut self, d: &Arc<Delivery>, out: &mut Vec<Bytes>) -> Result<(), Ended> {
        if d.position().is_none_or(|pos| self.cursor.admit(pos)) {
            out.push(delivery_frame(d));
        }
        Ok(())
    }
}

/// How a stream ended, for its goodbye.
pub(crate) enum StreamEnd {
    Closed(CloseReason),
    Feed(Ended),
}

/// Sends the goodbye of a stream that the server ends.
pub(crate) async fn goodbye(tx: &mpsc::Sender<Bytes>, reason: &str, reconnect: bool) {
    let body = serde_json::json!({ "reason": reason, "reconnect": reconnect });
    // Bounded: a client that stopped reading must not hold the stream open.
    let goodbye = tx.send(Bytes::from(frame(None, "goodbye", &body.to_string())));
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
}

/// The live part of a stream, after any replay: what `feed` makes of the
/// deliveries, until the client leaves or the server ends the stream.
pub(crate) async fn live(
    s: &AppState,
    p: &Principal,
    tx: &mpsc::Sender<Bytes>,
    inbox: &mut crate::hub::Inbox,
    feed: &mut impl Feed,
) -> Option<StreamEnd> {
    let closed = |r| Some(StreamEnd::Closed(r));
    let mut keepalive = tokio::time::interval(s.limits.sse_keepalive);
    keepalive.tick().await;
    let mut shutdown = s.shutdown.clone();
    let mut expiry = Deadline::default();
    expiry.set(p.exp, expiry_instant);
    let mut p = p.clone();
    let mut keys = KeyChanges::default();
    keys.follow(s, &p);
    let mut buf: Vec<Arc<Delivery>> = Vec::with_capacity(256);
    let mut out: Vec<Bytes> = Vec::new();
    let overflow = inbox.overflow_signal();
    loop {
        let tick = feed.next_tick();
        tokio::select! {
            biased;
            _ = crate::app::shutting_down(&mut shutdown) => return closed(CloseReason::ShuttingDown),
            _ = overflow.overflowed() => return closed(CloseReason::SlowConsumer),
            _ = expiry.passed(), if expiry.is_armed() => return closed(CloseReason::TokenExpired),
            changed = keys.next(), if keys.is_armed() => {
                if changed.concerns(&p) {
                    match revocation::recheck(s, &mut p).await {
                        Ok(()) => expiry.set(p.exp, expiry_instant),
                        Err(AuthError::Expired) => return closed(CloseReason::TokenExpired),
                        Err(_) => return closed(CloseReason::AuthFailed),
                    }
                }
            }
            _ = tx.closed() => return None,
            _ = super::conn::sleep_until_ms(tick.unwrap_or(0)), if tick.is_some() => feed.tick(&mut out),
            n = inbox.recv_many(&mut buf, 256) => {
                if n == 0 {
                    return None;
                }
                for d in buf.drain(..) {
                    if let Err(ended) = feed.messages(&d, &mut out) {
                        return Some(StreamEnd::Feed(ended));
                    }
                }
            }
            _ = keepalive.tick() => {
                // Skipped when the stream already has frames waiting to go out.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Bytes::from_static(b": keep-alive\n\n")) {
                    return None;
                }
            }
        }
        for message in out.drain(..) {
            // A client that stops reading blocks this send; its queue
            // overflowing must still end the stream.
            tokio::select! {
                r = tx.send(message) => if r.is_err() { return None },
                _ = overflow.overflowed() => return closed(CloseReason::SlowConsumer),
            }
        }
    }
}

/// Records how the stream ended and says goodbye when the server ended it.
pub(crate) async fn finish(member: &mut Membership, tx: &mpsc::Sender<Bytes>, end: Option<StreamEnd>) {
    match end {
        None => {}
        Some(StreamEnd::Closed(reason)) => {
            member.ending(reason, reason.advice());
            member.finish();
            goodbye(tx, reason.name(), reason.reconnect()).await;
        }
        Some(StreamEnd::Feed(Ended(reason))) => {
            // Not a close reason of the protocol: the inspector lists it among the errors.
            member.record_error(reason, "the stream's list ended");
            member.finish();
            goodbye(tx, reason, false).await;
        }
    }
}

/// A job output stream's SSE message: `id` is the offset after its chunks.
fn chunks_message(first: u64, count: u64, chunks: &str) -> Bytes {
    let data = format!(r#"{{"offset":{first},"chunks":{chunks}}}"#);
    Bytes::from(frame(Some(first + count), "chunks", &data))
}

/// SSE's cache slot for chunk messages (their frame differs from a topic stream's).
static SSE_CHUNKS: std::sync::LazyLock<WireFormat> = std::sync::LazyLock::new(WireFormat::register);

/// Live chunks of one stream, past the reader's offset.
struct ChunkFeed {
    cursor: StreamCursor,
}

impl Feed for ChunkFeed {
    fn messages(&mut self, d: &Arc<Delivery>, out: &mut Vec<Bytes>) -> Result<(), Ended> {
        let Payload::Chunks { first, count, chunks } = &d.payload else { return Ok(()) };
        match self.cursor.admit(*first, *count, chunks) {
            Admit::Skip => {}
            Admit::Whole => out.push(d.frame(*SSE_CHUNKS, |_| chunks_message(*first, *count, chunks.get()))),
            Admit::Part { first, count, chunks } => out.push(chunks_message(first, count, chunks.get())),
            Admit::Gap => return Err(Ended("gap")),
        }
        Ok(())
    }
}

/// Follows a job's output stream from `start`: the stored chunks page by
/// page, then live ones; a gap in the live ones goes back to the store.
pub(crate) async fn follow_stream(
    s: AppState,
    p: Principal,
    stream: StreamRef,
    start: u64,
    mut member: Membership,
    mut inbox: crate::hub::Inbox,
    tx: mpsc::Sender<Bytes>,
) {
    if tx.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_err() {
        return;
    }
    let mut cursor = StreamCursor::at(start);
    let end = 'follow: loop {
        loop {
            let page = match stream.page(&s, cursor).await {
                Ok(page) => page,
                Err(_) => break 'follow Some(StreamEnd::Closed(CloseReason::Unavailable)),
            };
            if page.first > cursor.next {
                let body = serde_json::json!({ "from": cursor.next, "to": page.first });
                if tx.send(Bytes::from(frame(Some(page.first), "truncated", &body.to_string()))).await.is_err() {
                    break 'follow None;
                }
                cursor = StreamCursor::at(page.first);
            }
            if page.chunks.is_empty() {
                break;
            }
            let message = chunks_message(page.first, page.chunks.len() as u64, &chunks_array(&page));
            if tx.send(message).await.is_err() {
                break 'follow None;
            }
            cursor.read(&page);
        }
        let mut feed = ChunkFeed { cursor };
        match live(&s, &p, &tx, &mut inbox, &mut feed).await {
            Some(StreamEnd::Feed(Ended("gap"))) => cursor = feed.cursor,
            other => break other,
        }
    };
    finish(&mut member, &tx, end).await;
}
