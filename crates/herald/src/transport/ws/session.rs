//! One native WebSocket connection: the protocol v1 driver over the session
//! core. The core decides what a subscription, a refresh or a room means; this
//! file reads frames, answers in v1's frames and writes the outbox.

use super::frames::{self, ClientFrame, KNOWN_OPS};
use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::hub::{Delivery, Inbox, Payload, TopicKey};
use crate::model::topic::{inbox_topic, TENANT_TOPIC};
use crate::model::{JobQuery, Position, Topic};
use crate::session::job_list::{JobList, TooLarge};
use crate::session::rooms::{self, Broadcast};
use crate::session::stream::{chunks_array, Admit, StreamCursor, StreamRef};
use crate::session::{
    authorize, authorize_with_streams, head, revocation, snapshot, token, CloseReason, Cursor, Deadline, KeyChanges,
    Membership, Replay, ReplayPage, SessionError,
};
use crate::transport::conn::{self, Batch, Frame, Heartbeat, RateLimit, Read, Verdict, Written, WsSink, WsStream};
use crate::transport::http::extract::MAX_JSON_DEPTH;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Time a connection has to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may exceed the message rate without pause before it is closed.
const FLOOD_TOLERANCE: Duration = Duration::from_secs(10);

/// Why the server ends the connection, with a message for the goodbye frame.
type Fatal = (CloseReason, String);

/// A subscription of this connection.
struct Sub {
    key: TopicKey,
    topic: Topic,
    /// The last event position sent; anything at or below it is a duplicate.
    cursor: Cursor,
    /// For a job output stream (`stream:<job>:<name>`): which, and the next offset to send.
    stream: Option<(StreamRef, StreamCursor)>,
}

struct Session {
    s: AppState,
    principal: Option<Principal>,
    /// Hub topics, presence and the connection count; given back on drop.
    member: Membership,
    subs: HashMap<Arc<str>, Sub>,
    /// Live job lists, by the client's name.
    lists: HashMap<String, JobList>,
    /// Streams whose live chunks skipped ahead in the last batch: read from the store next.
    gaps: Vec<Arc<str>>,
    rate: RateLimit,
    /// How events, broadcasts, presence diffs, chunks and list changes are spelt.
    encoding: frames::Encoding,
}

/// Runs a connection to its end. `initial` is the principal from `?token=` or
/// `Sec-WebSocket-Protocol`, if the client sent one.
pub async fn run(
    socket: WebSocket,
    s: AppState,
    initial: Option<Result<Principal, AuthError>>,
    encoding: frames::Encoding,
) {
    let (sink, stream) = socket.split();
    serve(sink, stream, s, initial, encoding).await;
}

/// The session over any pair of frame sink and stream (a socket, or channels in tests).
pub async fn serve(
    mut sink: impl WsSink,
    mut stream: impl WsStream,
    s: AppState,
    initial: Option<Result<Principal, AuthError>>,
    encoding: frames::Encoding,
) {
    let (member, mut inbox) = Membership::new(&s, s.limits.outbox_capacity);
    let mut session = Session {
        s: s.clone(),
        principal: None,
        member,
        subs: HashMap::new(),
        lists: HashMap::new(),
        gaps: Vec::new(),
        rate: RateLimit::new(s.limits.messages_per_second, Some(FLOOD_TOLERANCE)),
        encoding,
    };
    let reason = session.drive(&mut sink, &mut stream, &mut inbox, initial).await;
    // Leave topics and rooms first: presence leaves go out at once, and nothing
    // more is queued for a connection that is going away. (Dropping the
    // session does the same should this task end any other way.)
    session.subs.clear();
    session.lists.clear();
    session.member.clear();
    if let Some((reason, message)) = &reason {
        session.member.ending(*reason, message.clone());
    }
    session.member.finish();
    if let Some((reason, message)) = reason {
        conn::close(&mut sink, &mut stream, Some(frames::goodbye(reason, &message)), reason).await;
    }
}

impl Session {
    /// The main loop; returns why the server closes, or `None` if the client left.
    async fn drive(
        &mut self,
        sink: &mut impl WsSink,
        stream: &mut impl WsStream,
        inbox: &mut Inbox,
        initial: Option<Result<Principal, AuthError>>,
    ) -> Option<Fatal> {
        if let Some(result) = initial {
            match result {
                Ok(p) => {
                    if let Err(r) = Box::pin(self.authenticated(sink, p, &None)).await {
                        return Some(r);
                    }
                }
                Err(e) => return Some(auth_close(&e)),
            }
        }
        let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
        let mut heartbeat = Heartbeat::new(self.s.limits.heartbeat_interval, self.s.limits.heartbeat_timeout);
        let mut shutdown = self.s.shutdown.clone();
        let mut batch = Batch::default();
        let overflow = inbox.overflow_signal();
        let mut deadline = Deadline::default();
        let mut keys = KeyChanges::default();
        loop {
            deadline.set_for(self.principal.as_ref(), auth_deadline);
            let expiry = self.lists.values().filter_map(JobList::next_expiry).min();
            if let Some(p) = &self.principal {
                keys.follow(&self.s, p);
            }
            tokio::select! {
                biased;
                reason = conn::interrupted(&mut shutdown, &overflow) => return Some((reason, reason.advice().into())),
                _ = deadline.passed(), if deadline.is_armed() => {
                    return Some(match self.principal {
                        None => (CloseReason::AuthFailed, "no auth frame within 10 seconds".into()),
                        Some(_) => (CloseReason::TokenExpired, "token expired; reconnect with a fresh token".into()),
                    });
                }
                changed = keys.next(), if keys.is_armed() => {
                    if let Some(p) = self.principal.as_mut().filter(|p| changed.concerns(p)) {
                        if let Err(e) = revocation::recheck(&self.s, p).await {
                            return Some(auth_close(&e));
                        }
                    }
                }
                // Frames are read here, in the connection's one task: no reader task or
                // channel per connection, and a client that floods is simply read no
                // faster than it is served.
                msg = stream.next() => {
                    heartbeat.seen();
                    let frame = match conn::read(msg) {
                        Read::Frame(f) => f,
                        Read::Control => continue,
                        Read::Closed { .. } => return None,
                    };
                    // Boxed: a request's future (replays, store reads) is large and
                    // short-lived; inline it would sit in every idle connection's state.
                    if let Err(r) = Box::pin(self.on_inbound(sink, frame)).await {
                        return Some(r);
                    }
                }
                n = batch.recv(inbox) => {
                    if n == 0 {
                        return None;
                    }
                    let frames = self.frames_for(batch.drain());
                    match conn::write(sink, frames.into_iter().map(Message::Text), &overflow).await {
                        Written::Sent => {}
                        Written::Failed => return None,
                        Written::Overflowed => {
                            return Some((CloseReason::SlowConsumer, "send queue overflowed; reconnect and resume with since".into()));
                        }
                    }
                    for topic in std::mem::take(&mut self.gaps) {
                        if let Err(r) = Box::pin(self.catch_up(sink, &topic)).await {
                            return Some(r);
                        }
                    }
                }
                _ = conn::sleep_until_ms(expiry.unwrap_or(0)), if expiry.is_some() => {
                    let now = crate::model::time::now_ms();
                    let enc = self.encoding;
                    let mut frames = Vec::new();
                    for (name, list) in &mut self.lists {
                        frames.extend(list.expire(now).iter().map(|c| Message::Text(frames::list_change(name, c, enc))));
                    }
                    if let Written::Failed = conn::write(sink, frames.into_iter(), &overflow).await {
                        return None;
                    }
                }
                // A beat that pinged loops on; an `Err` pattern here would disable the arm.
                beat = heartbeat.ping(sink) => {
                    if let Err(dead) = beat {
                        return dead.map(|r| (r, "no frame within the heartbeat timeout".into()));
                    }
                }
            }
        }
    }

    /// Turns queued deliveries into frames, dropping duplicates by position;
    /// job events also move the lists fed by their topic.
    fn frames_for(&mut self, batch: std::vec::Drain<'_, Arc<Delivery>>) -> Vec<Utf8Bytes> {
        let mut out = Vec::with_capacity(batch.len());
        let mut now = None;
        let mut outgrown = Vec::new();
        for d in batch {
            if let Payload::Chunks { first, count, chunks } = &d.payload {
                let Some((_, cursor)) = self.subs.get_mut(&*d.topic).and_then(|s| s.stream.as_mut()) else { continue };
                if self.gaps.contains(&d.topic) {
                    continue;
                }
                match cursor.admit(*first, *count, chunks) {
                    Admit::Skip => {}
                    Admit::Whole => out.push(frames::delivery_in(&d, self.encoding)),
                    Admit::Part { first, chunks, .. } => {
                        out.push(Utf8Bytes::from(frames::chunks_frame(&d.topic, first, chunks.get(), self.encoding)))
                    }
                    Admit::Gap => self.gaps.push(Arc::clone(&d.topic)),
                }
                continue;
            }
            if let Payload::Event(e) = &d.payload {
                for (name, list) in &mut self.lists {
                    if *list.key.topic != *d.topic {
                        continue;
                    }
                    let now = *now.get_or_insert_with(crate::model::time::now_ms);
                    match list.apply(e, now) {
                        Ok(Some(change)) => out.push(frames::list_change(name, &change, self.encoding)),
                        Ok(None) => {}
                        Err(TooLarge) => outgrown.push(name.clone()),
                    }
                }
                let Some(sub) = self.subs.get_mut(&*d.topic) else { continue };
                if !sub.cursor.admit(e.position) {
                    continue;
                }
            }
            out.push(frames::delivery_in(&d, self.encoding));
        }
        for name in outgrown {
            self.unlist(&name);
            let e = TooLarge::error();
            self.member.record_error(e.code, &e.message);
            out.push(frames::text(
                json!({ "op": "error", "id": null, "code": e.code, "list": name, "message": e.message }),
            ));
        }
        out
    }

    async fn on_inbound(&mut self, sink: &mut impl WsSink, frame: Frame) -> Result<(), Fatal> {
        match self.rate.check() {
            Verdict::Allow => {}
            Verdict::Drop => return Ok(()),
            Verdict::Close => {
                return Err((CloseReason::RateLimited, "over the message rate limit for 10 seconds".into()));
            }
            Verdict::Warn => {
                let limit = self.s.limits.messages_per_second;
                let message = format!("over {limit} messages per second; messages are being dropped");
                return self.send(sink, frames::error(&None, "rate_limited", message)).await;
            }
        }
        let text = match frame {
            Frame::Text(t) => t,
            Frame::Binary(_) => {
                return self.send(sink, frames::error(&None, "binary_not_supported", "send JSON text frames")).await;
            }
        };
        if text.len() > self.s.limits.ws_max_message {
            let max = self.s.limits.ws_max_message;
            let message = format!("frame is {} bytes; the limit is {max}", text.len());
            return self.send(sink, frames::error(&None, "frame_too_large", message)).await;
        }
        let frame = match parse_frame(&text) {
            Ok(f) => f,
            Err((code, message, id)) => return self.send(sink, frames::error(&id, code, message)).await,
        };
        self.on_frame(sink, frame).await
    }

    async fn send(&self, sink: &mut impl WsSink, frame: Utf8Bytes) -> Result<(), Fatal> {
        sink.send(Message::Text(frame)).await.map_err(|_| (CloseReason::ProtocolError, String::new()))
    }

    async fn refuse(&self, sink: &mut impl WsSink, id: &Option<Value>, e: SessionError) -> Result<(), Fatal> {
        self.member.record_error(e.code, &e.message);
        self.send(sink, frames::error(id, e.code, e.message)).await
    }

    async fn on_frame(&mut self, sink: &mut impl WsSink, frame: ClientFrame) -> Result<(), Fatal> {
        let Some(p) = self.principal.clone() else {
            return match frame {
                ClientFrame::Auth { token, id } => match self.s.auth.authenticate(&token).await {
                    Ok(p) => self.authenticated(sink, p, &id).await,
                    Err(e) => Err(auth_close(&e)),
                },
                other => {
                    let id = frame_id(&other);
                    self.send(sink, frames::error(&id, "unauthorized", "send an auth frame first")).await
                }
            };
        };
        match frame {
            ClientFrame::Auth { id, .. } => {
                self.send(sink, frames::error(&id, "already_authenticated", "use refresh to change the token")).await
            }
            ClientFrame::Ping { id } => self.send(sink, frames::text(json!({ "op": "pong", "id": id }))).await,
            ClientFrame::Sub { topic, since, conflate, id } => {
                self.subscribe(sink, &p, &topic, since, conflate.unwrap_or(true), &id).await
            }
            ClientFrame::Unsub { topic, id } => {
                let frame = if self.unsubscribe(&topic) {
                    frames::ack(&id, json!({ "topic": topic }))
                } else {
                    frames::error(&id, "not_subscribed", format!("not subscribed to {topic}"))
                };
                self.send(sink, frame).await
            }
            ClientFrame::List { list, query, have, id } => self.list(sink, &p, list, query, have, &id).await,
            ClientFrame::Unlist { list, id } => {
                let frame = if self.unlist(&list) {
                    frames::ack(&id, json!({ "list": list }))
                } else {
                    frames::error(&id, "not_subscribed", format!("no list named {list}"))
                };
                self.send(sink, frame).await
            }
            ClientFrame::Pub { topic, event, data, id } => {
                if let Err(m) = room_of(&topic) {
                    return self.send(sink, frames::error(&id, "invalid_topic", m)).await;
                }
                let data = serde_json::value::to_raw_value(&data.unwrap_or(Value::Null)).unwrap_or_default();
                let b = Broadcast {
                    tenant: Arc::clone(&p.tenant),
                    topic: topic.clone(),
                    event,
                    data,
                    sender: Some(self.member.conn_id()),
                    from: Arc::clone(&p.sub),
                };
                match rooms::publish(&self.s, b) {
                    Ok(n) => self.send(sink, frames::ack(&id, json!({ "topic": topic, "delivered": n }))).await,
                    Err(e) => self.refuse(sink, &id, e).await,
                }
            }
            ClientFrame::Presence { topic, meta, id } => {
                let meta = meta.unwrap_or_else(|| json!({}));
                if let Err(m) = room_of(&topic) {
                    return self.send(sink, frames::error(&id, "invalid_topic", m)).await;
                }
                if !meta.is_object() {
                    return self.send(sink, frames::error(&id, "invalid_frame", "meta: must be a JSON object")).await;
                }
                if !self.subs.contains_key(topic.as_str()) {
                    // Presence joins the room, with the room's read rules.
                    let room = match authorize(&self.s, &p, &topic).await {
                        Ok(room) => room,
                        Err(e) => return self.refuse(sink, &id, e).await,
                    };
                    if let Err(e) = self.subscribe_room(sink, &p, &topic, room).await? {
                        return self.refuse(sink, &id, e).await;
                    }
                }
                // The entry is keyed by the verified identity, never by the client's word.
                let key = TopicKey::new(&p.tenant, &topic);
                self.member.track(&key, &p.sub, meta);
                self.send(sink, frames::ack(&id, json!({ "topic": topic }))).await
            }
            ClientFrame::Refresh { token, id } => self.refresh(sink, &p, &token, &id).await,
        }
    }

    /// Completes authentication: counts the connection and joins the implicit topics.
    async fn authenticated(&mut self, sink: &mut impl WsSink, p: Principal, id: &Option<Value>) -> Result<(), Fatal> {
        self.member.connect(&p.tenant).map_err(|e| (CloseReason::TooManyConnections, e.message))?;
        self.member.describe("websocket", &p);
        self.member.join(&p.tenant, TENANT_TOPIC);
        self.member.join(&p.tenant, &inbox_topic(&p.sub));
        let welcome = json!({
            "op": "welcome",
            "id": id,
            "conn": self.member.conn_id(),
            "sub": &*p.sub,
            "tenant": &*p.tenant,
            "role": p.role.as_str(),
            "expires_at": p.exp,
            "heartbeat_ms": self.s.limits.heartbeat_interval.as_millis() as u64,
            "encoding": match self.encoding {
                frames::Encoding::Json => "json",
                frames::Encoding::Compact => "compact",
            },
        });
        self.principal = Some(p);
        self.send(sink, frames::text(welcome)).await
    }

    fn check_room_for_one_more(&self, tenant: &str, topic: &str) -> Result<(), SessionError> {
        self.member.check_room_for(tenant, [topic])?;
        let max = self.s.limits.max_subscriptions;
        if self.subs.len() + self.lists.len() >= max {
            return Err(SessionError::limit(
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        Ok(())
    }

    /// Joins a room's delivery list and sends its presence state. The outer error
    /// closes the connection; the inner one is a refusal for the client.
    async fn subscribe_room(
        &mut self,
        sink: &mut impl WsSink,
        p: &Principal,
        raw: &str,
        room: Topic,
    ) -> Result<Result<(), SessionError>, Fatal> {
        if let Err(e) = self.join_room(p, raw, room) {
            return Ok(Err(e));
        }
        self.send_presence_state(sink, p, raw).await?;
        Ok(Ok(()))
    }

    /// Joins a room's hub topic: from here on its broadcasts reach this connection.
    fn join_room(&mut self, p: &Principal, raw: &str, room: Topic) -> Result<(), SessionError> {
        self.check_room_for_one_more(&p.tenant, raw)?;
        let key = self.member.join(&p.tenant, raw);
        self.subs.insert(Arc::clone(&key.topic), Sub { key, topic: room, cursor: Cursor::default(), stream: None });
        Ok(())
    }

    async fn send_presence_state(&mut self, sink: &mut impl WsSink, p: &Principal, raw: &str) -> Result<(), Fatal> {
        let state = self.s.hub.presence.state(&p.tenant, raw);
        self.send(sink, frames::text(json!({ "op": "presence_state", "topic": raw, "state": state }))).await
    }

    async fn subscribe(
        &mut self,
        sink: &mut impl WsSink,
        p: &Principal,
        raw: &str,
        since: Option<u64>,
        conflate: bool,
        id: &Option<Value>,
    ) -> Result<(), Fatal> {
        if self.subs.contains_key(raw) {
            return self.send(sink, frames::ack(id, json!({ "topic": raw, "already": true }))).await;
        }
        if let Err(e) = self.check_room_for_one_more(&p.tenant, raw) {
            return self.refuse(sink, id, e).await;
        }
        let topic = match authorize_with_streams(&self.s, p, raw).await {
            Ok(t) => t,
            Err(e) => return self.refuse(sink, id, e).await,
        };
        if let Topic::Stream { job, name } = &topic {
            let stream = StreamRef { tenant: Arc::clone(&p.tenant), job: job.clone(), name: name.clone() };
            return self.subscribe_stream(sink, p, raw, topic.clone(), stream, since, id).await;
        }
        if topic.is_room() {
            // Joined before the ack: a broadcast sent once the client has its ack reaches it.
            if let Err(e) = self.join_room(p, raw, topic) {
                return self.refuse(sink, id, e).await;
            }
            self.send(sink, frames::ack(id, json!({ "topic": raw }))).await?;
            return self.send_presence_state(sink, p, raw).await;
        }
        // Live first, then the log: anything committed meanwhile arrives twice at
        // most, and the cursor drops the second copy.
        let key = self.member.join_with(&p.tenant, raw, conflate);
        self.subs.insert(Arc::clone(&key.topic), Sub { key, topic, cursor: Cursor::default(), stream: None });
        let position = match head(&self.s).await {
            Ok(h) => h,
            Err(e) => {
                self.unsubscribe(raw);
                return self.refuse(sink, id, e).await;
            }
        };
        self.send(sink, frames::ack(id, json!({ "topic": raw, "position": position }))).await?;
        let Some(since) = since else { return Ok(()) };
        let since = Position::from_u64(since);
        // The client has everything up to `since`: a late live copy of an older
        // event (from another node) is not sent again. A `since` past the head
        // (a database reset) must not hold back what comes next.
        if let Some(sub) = self.subs.get_mut(raw) {
            sub.cursor.advance(since.min(position));
        }
        let mut replay = Replay::new(Arc::clone(&p.tenant), vec![raw.to_string()], since);
        loop {
            let page = match replay.next_page(&self.s).await {
                Ok(Some(page)) => page,
                Ok(None) => return Ok(()),
                Err(e) => return self.refuse(sink, id, e).await,
            };
            match page {
                ReplayPage::Behind { head } => {
                    let topic = self.subs.get(raw).map(|s| s.topic.clone()).unwrap_or(Topic::Jobs);
                    let snap = snapshot(&self.s, p, &topic).await.unwrap_or(Value::Null);
                    if let Some(sub) = self.subs.get_mut(raw) {
                        sub.cursor.advance(head);
                    }
                    let resync = json!({ "op": "resync", "topic": raw, "position": head, "snapshot": snap });
                    return self.send(sink, frames::text(resync)).await;
                }
                ReplayPage::Events(events) => {
                    let mut last = since;
                    for e in &events {
                        let frame = frames::event(e, raw, self.encoding);
                        sink.feed(Message::Text(frame))
                            .await
                            .map_err(|_| (CloseReason::ProtocolError, String::new()))?;
                        last = e.position;
                    }
                    sink.flush().await.map_err(|_| (CloseReason::ProtocolError, String::new()))?;
                    if let Some(sub) = self.subs.get_mut(raw) {
                        sub.cursor.advance(last);
                    }
                }
            }
        }
    }

    /// Opens (or replaces) a live job list and sends its snapshot, or with
    /// `have` only what the client lacks.
    async fn list(
        &mut self,
        sink: &mut impl WsSink,
        p: &Principal,
        name: String,
        query: Option<Value>,
        have: Option<HashMap<String, u64>>,
        id: &Option<Value>,
    ) -> Result<(), Fatal> {
        if let Err(m) = crate::model::ids::validate_id(&name) {
            return self.refuse(sink, id, SessionError::invalid("invalid_frame", format!("list: {m}"))).await;
        }
        let query = match JobQuery::from_json(&query.unwrap_or_else(|| json!({}))) {
            Ok(q) => q,
            Err(m) => return self.refuse(sink, id, SessionError::invalid("invalid_query", m)).await,
        };
        // Replacing a list frees its place first.
        self.unlist(&name);
        if let Err(e) = self.check_room_for_one_more(&p.tenant, "jobs") {
            return self.refuse(sink, id, e).await;
        }
        let opened = match JobList::open(&self.s, p, &mut self.member, query).await {
            Ok(o) => o,
            Err(e) => return self.refuse(sink, id, e).await,
        };
        let ack = json!({ "list": name, "position": opened.position, "count": opened.list.len() });
        self.send(sink, frames::ack(id, ack)).await?;
        match have {
            None => self.send(sink, frames::list_snapshot(&name, opened.position, &opened.jobs)).await?,
            Some(have) => {
                let mut changes = opened.list.resume(&opened.jobs, &have);
                JobList::describe_leaves(&self.s, p, &mut changes).await;
                for change in changes {
                    sink.feed(Message::Text(frames::list_change(&name, &change, self.encoding)))
                        .await
                        .map_err(|_| (CloseReason::ProtocolError, String::new()))?;
                }
                sink.flush().await.map_err(|_| (CloseReason::ProtocolError, String::new()))?;
            }
        }
        self.lists.insert(name, opened.list);
        Ok(())
    }

    fn unlist(&mut self, name: &str) -> bool {
        let Some(list) = self.lists.remove(name) else { return false };
        self.member.leave(&list.key);
        true
    }

    /// Subscribes to a job output stream: live first, then (with `since`, the
    /// next offset wanted) the stored chunks from there.
    #[allow(clippy::too_many_arguments)]
    async fn subscribe_stream(
        &mut self,
        sink: &mut impl WsSink,
        p: &Principal,
        raw: &str,
        topic: Topic,
        stream: StreamRef,
        since: Option<u64>,
        id: &Option<Value>,
    ) -> Result<(), Fatal> {
        let key = self.member.join(&p.tenant, raw);
        let end = match stream.end(&self.s).await {
            Ok(end) => end,
            Err(e) => {
                self.member.leave(&key);
                return self.refuse(sink, id, e).await;
            }
        };
        let cursor = StreamCursor::at(since.unwrap_or(end));
        let sub = Sub { key, topic, cursor: Cursor::default(), stream: Some((stream, cursor)) };
        self.subs.insert(Arc::from(raw), sub);
        self.send(sink, frames::ack(id, json!({ "topic": raw, "offset": end }))).await?;
        self.catch_up(sink, raw).await
    }

    /// Sends a stream's stored chunks from its reader's offset to the end.
    async fn catch_up(&mut self, sink: &mut impl WsSink, topic: &str) -> Result<(), Fatal> {
        loop {
            let Some((stream, cursor)) = self.subs.get(topic).and_then(|s| s.stream.clone()) else { return Ok(()) };
            let page = match stream.page(&self.s, cursor).await {
                Ok(page) => page,
                Err(e) => {
                    // Names the stream: the client resubscribes from its offset.
                    self.member.record_error(e.code, &e.message);
                    let frame =
                        json!({ "op": "error", "id": null, "code": e.code, "topic": topic, "message": e.message });
                    return self.send(sink, frames::text(frame)).await;
                }
            };
            if page.first > cursor.next {
                let gone = json!({ "op": "stream_truncated", "topic": topic, "from": cursor.next, "to": page.first });
                self.send(sink, frames::text(gone)).await?;
            }
            let mut next = StreamCursor::at(page.first);
            next.read(&page);
            if let Some(s) = self.subs.get_mut(topic).and_then(|s| s.stream.as_mut()) {
                s.1 = next;
            }
            if page.chunks.is_empty() {
                return Ok(());
            }
            let frame = frames::chunks_frame(topic, page.first, &chunks_array(&page), self.encoding);
            self.send(sink, Utf8Bytes::from(frame)).await?;
        }
    }

    fn unsubscribe(&mut self, topic: &str) -> bool {
        let Some(sub) = self.subs.remove(topic) else { return false };
        self.member.leave(&sub.key);
        true
    }

    /// A new token: same tenant and subject, and every subscription is checked again.
    async fn refresh(
        &mut self,
        sink: &mut impl WsSink,
        p: &Principal,
        token: &str,
        id: &Option<Value>,
    ) -> Result<(), Fatal> {
        let new = match token::refresh(&self.s, p, token).await {
            Ok(n) => n,
            Err(e) => return self.refuse(sink, id, e).await,
        };
        let topics: Vec<String> = self.subs.keys().map(|k| k.to_string()).collect();
        let mut dropped = Vec::new();
        for t in topics {
            if let Err(e) = authorize_with_streams(&self.s, &new, &t).await {
                self.unsubscribe(&t);
                self.send(sink, frames::error(&None, e.code, format!("subscription to {t} ended: {}", e.message)))
                    .await?;
                dropped.push(t);
            }
        }
        let names: Vec<String> = self.lists.keys().cloned().collect();
        for name in names {
            let topic = self.lists.get(&name).map(|l| l.key.topic.to_string()).unwrap_or_default();
            if let Err(e) = authorize(&self.s, &new, &topic).await {
                self.unlist(&name);
                let message = format!("list {name} ended: {}", e.message);
                self.send(
                    sink,
                    frames::text(
                        json!({ "op": "error", "id": null, "code": e.code, "list": name, "message": message }),
                    ),
                )
                .await?;
                dropped.push(name);
            }
        }
        let exp = new.exp;
        self.principal = Some(new);
        self.send(sink, frames::ack(id, json!({ "expires_at": exp, "dropped": dropped }))).await
    }
}

fn auth_close(e: &AuthError) -> (CloseReason, String) {
    match e {
        AuthError::Expired => (CloseReason::TokenExpired, e.to_string()),
        AuthError::Unavailable(_) => (CloseReason::Unavailable, e.to_string()),
        _ => (CloseReason::AuthFailed, e.to_string()),
    }
}

fn room_of(topic: &str) -> Result<String, String> {
    match Topic::parse(topic)? {
        Topic::Room(name) => Ok(name),
        _ => Err(format!("{topic} is not a room; pub and presence take room:<name>")),
    }
}

fn frame_id(f: &ClientFrame) -> Option<Value> {
    match f {
        ClientFrame::Auth { id, .. }
        | ClientFrame::Sub { id, .. }
        | ClientFrame::Unsub { id, .. }
        | ClientFrame::List { id, .. }
        | ClientFrame::Unlist { id, .. }
        | ClientFrame::Pub { id, .. }
        | ClientFrame::Presence { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Refresh { id, .. } => id.clone(),
    }
}

/// Parses a text frame, telling malformed JSON, unknown ops and bad fields apart.
pub fn parse_frame(text: &str) -> Result<ClientFrame, (&'static str, String, Option<Value>)> {
    // A published payload sits one level into the frame; deeper is refused as at ingest.
    if let Some(at) = crate::transport::http::extract::too_deep(text.as_bytes(), MAX_JSON_DEPTH + 1) {
        let why =
            format!("objects and arrays nest more than {MAX_JSON_DEPTH} levels deep in the payload (at byte {at})");
        // The frame's id, if serde can still skip to it, so the client can match the error.
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: Option<Value>,
        }
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id);
        return Err(("json_too_deep", why, id));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| ("invalid_json", format!("malformed JSON: {e}"), None))?;
    let id = value.get("id").cloned();
    let op = match value.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err(("invalid_frame", "op: must be a string".into(), id)),
        None => return Err(("invalid_frame", "op: missing".into(), id)),
    };
    if !KNOWN_OPS.contains(&op.as_str()) {
        return Err(("unknown_op", format!("unknown op {op:?}; known: {}", KNOWN_OPS.join(", ")), id));
    }
    serde_json::from_value(value).map_err(|e| ("invalid_frame", format!("{op}: {e}"), id))
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn frames_errors_are_classified() {
        assert_eq!(parse_frame("{").unwrap_err().0, "invalid_json");
        assert_eq!(parse_frame(r#"{"op":"dance","id":3}"#).unwrap_err().0, "unknown_op");
        let e = parse_frame(r#"{"op":"sub","id":4}"#).unwrap_err();
        assert_eq!((e.0, e.2), ("invalid_frame", Some(serde_json::json!(4))));
        assert!(e.1.contains("topic"));
        assert_eq!(parse_frame(r#"{"op":"sub","topic":"jobs","bogus":1}"#).unwrap_err().0, "invalid_frame");
        assert!(parse_frame(r#"{"op":"sub","topic":"jobs","since":5,"id":"a"}"#).is_ok());
        assert!(parse_frame(r#"{"op":"pub","topic":"room:a","event":"e","data":{"n":[1,2]}}"#).is_ok());
        let deep = format!(
            r#"{{"op":"pub","topic":"room:a","event":"e","data":{}1{},"id":"d"}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = parse_frame(&deep).unwrap_err();
        assert_eq!((e.0, e.2), ("json_too_deep", Some(serde_json::json!("d"))), "{}", e.1);
    }
}

/// The session over channels instead of a socket: its behaviour, fast, with
/// the real store, feed and hub behind it.
#[cfg(test)]
mod session_tests {
    use super::serve;
    use crate::app::AppState;
    use crate::rules::{Command, NewJob};
    use axum::extract::ws::Message;
    use futures_util::StreamExt;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::sync::mpsc;

    struct Client {
        to_server: Option<mpsc::UnboundedSender<Message>>,
        from_server: mpsc::UnboundedReceiver<Message>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Client {
        fn start(s: &AppState) -> Client {
            let (to_server, server_in) = mpsc::unbounded_channel::<Message>();
            let (server_out, from_server) = mpsc::unbounded_channel::<Message>();
            let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(server_in).map(Ok::<_, axum::Error>);
            let sink = Box::pin(futures_util::sink::unfold(server_out, |tx, m: Message| async move {
                tx.send(m).map_err(axum::Error::new)?;
                Ok::<_, axum::Error>(tx)
            }));
            let task = tokio::spawn(serve(sink, stream, s.clone(), None, super::frames::Encoding::Json));
            Client { to_server: Some(to_server), from_server, task }
        }

        fn send(&self, v: Value) {
            if let Some(tx) = &self.to_server {
                let _ = tx.send(Message::Text(v.to_string().into()));
            }
        }

        /// The next frame with this `op`.
        async fn expect(&mut self, op: &str) -> Value {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no {op} in time"))
                    .unwrap_or_else(|| panic!("closed before {op}"));
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).expect("JSON frame");
                if v["op"] == op {
                    return v;
                }
            }
        }
    }

    fn app(name: &str) -> AppState {
        let dir = std::env::temp_dir().join(format!("herald-session-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut config = crate::config::Config::for_tests(&dir.join("h.db"));
        config.jwt_secret = Some("session-test-secret".into());
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        std::mem::forget(_stop);
        crate::server::build(&config, stop_rx).expect("state")
    }

    fn token(s: &AppState, sub: &str, role: &str) -> String {
        s.auth.jwt.mint(sub, "acme", role, 3600).expect("a secret is configured")
    }

    async fn create(s: &AppState, id: &str, owner: &str) {
        let new = NewJob {
            id: Some(id.into()),
            owner: Some(owner.into()),
            kind: None,
            title: None,
            total: None,
            status: None,
            metadata: None,
            tasks: vec![],
        };
        s.write("acme", Command::CreateJob(new), None).await.expect("create");
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate_and_release_on_close() {
        let s = app("handover");
        create(&s, "j1", "alice").await;
        create(&s, "j2", "alice").await;
        let mut c = Client::start(&s);
        c.send(json!({ "op": "auth", "token": token(&s, "sam", "staff") }));
        c.expect("welcome").await;
        c.send(json!({ "op": "sub", "topic": "jobs", "since": 0, "id": 1 }));
        let ack = c.expect("ack").await;
        assert_eq!(ack["position"], 2, "{ack}");
        create(&s, "j3", "bob").await;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for _ in 0..3 {
            let e = c.expect("event").await;
            ids.push(e["data"]["id"].as_str().unwrap_or_default().to_string());
            positions.push(e["position"].as_u64().unwrap_or_default());
        }
        assert_eq!(ids, ["j1", "j2", "j3"]);
        assert_eq!(positions, [1, 2, 3]);
        assert_eq!(s.hub.stats().0["acme"].subscriptions, 3, "jobs, the tenant and the inbox topics");

        // The client goes away: the session's membership gives everything back.
        c.to_server = None;
        tokio::time::timeout(Duration::from_secs(5), &mut c.task).await.expect("session ends").expect("no panic");
        assert!(!s.hub.stats().0.contains_key("acme"), "nothing left in the hub: {:?}", s.hub.stats().0);
    }

    #[tokio::test]
    async fn refusals_are_error_frames_and_customers_see_only_their_own() {
        let s = app("refusals");
        create(&s, "bobs", "bob").await;
        let mut c = Client::start(&s);
        c.send(json!({ "op": "sub", "topic": "jobs", "id": 1 }));
        assert_eq!(c.expect("error").await["code"], "unauthorized");
        c.send(json!({ "op": "auth", "token": token(&s, "alice", "customer") }));
        c.expect("welcome").await;
        for (topic, code) in [("jobs", "forbidden"), ("job:bobs", "not_found"), ("nope", "invalid_topic")] {
            c.send(json!({ "op": "sub", "topic": topic, "id": topic }));
            let e = c.expect("error").await;
            assert_eq!((e["id"].as_str(), e["code"].as_str()), (Some(topic), Some(code)), "{e}");
        }
        c.send(json!({ "op": "pub", "topic": "room:r", "event": "", "id": "p" }));
        assert_eq!(c.expect("error").await["code"], "invalid_frame");
    }
}
