//! One native WebSocket connection: authentication, subscriptions with gapless
//! resume, rooms, heartbeats, limits, and the writer that drains the outbox.

use super::frames::{self, ClientFrame, KNOWN_OPS};
use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::hub::{outbox, ConnectionGuard, Delivery, Inbox, Outbox, Payload, TopicKey};
use crate::model::topic::{inbox_topic, TENANT_TOPIC};
use crate::model::Topic;
use crate::session::CloseReason;
use crate::transport::conn::{
    self, expiry_instant, Batch, Deadline, Frame, Heartbeat, RateLimit, Read, Sink, Stream, Verdict, Written,
};
use crate::transport::topics::{authorize, head, replay_page, snapshot, ReplayPage};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Time a connection has to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may exceed the message rate without pause before it is closed.
const FLOOD_TOLERANCE: Duration = Duration::from_secs(10);

/// A subscription of this connection.
struct Sub {
    key: TopicKey,
    topic: Topic,
    /// Position of the last event sent; anything at or below it is a duplicate.
    last: u64,
}

struct Session {
    s: AppState,
    conn_id: u64,
    principal: Option<Principal>,
    guard: Option<ConnectionGuard>,
    outbox: Outbox,
    subs: HashMap<Arc<str>, Sub>,
    /// Topics joined implicitly (tenant-wide and per-user broadcasts).
    internal: Vec<TopicKey>,
    /// Rooms where this connection has set presence.
    rooms: HashSet<String>,
    rate: RateLimit,
}

/// Runs a connection to its end. `initial` is the principal from `?token=` or
/// `Sec-WebSocket-Protocol`, if the client sent one.
pub async fn run(socket: WebSocket, s: AppState, initial: Option<Result<Principal, AuthError>>) {
    let conn_id = s.hub.next_id();
    let (out, mut inbox) = outbox(conn_id, s.limits.outbox_capacity);
    let (mut sink, mut stream) = socket.split();
    let mut session = Session {
        s: s.clone(),
        conn_id,
        principal: None,
        guard: None,
        outbox: out,
        subs: HashMap::new(),
        internal: Vec::new(),
        rooms: HashSet::new(),
        rate: RateLimit::new(s.limits.messages_per_second, Some(FLOOD_TOLERANCE)),
    };
    let reason = session.drive(&mut sink, &mut stream, &mut inbox, initial).await;
    // Leave topics and rooms first: presence leaves go out at once, and nothing
    // more is queued for a connection that is going away.
    session.cleanup();
    if let Some((reason, message)) = reason {
        conn::close(&mut sink, &mut stream, Some(frames::goodbye(reason, &message)), reason).await;
    }
}

impl Session {
    /// The main loop; returns why the server closes, or `None` if the client left.
    async fn drive(
        &mut self,
        sink: &mut Sink,
        stream: &mut Stream,
        inbox: &mut Inbox,
        initial: Option<Result<Principal, AuthError>>,
    ) -> Option<(CloseReason, String)> {
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
        loop {
            // Before authentication the deadline is the auth timeout (key 0: no
            // unexpired token has exp 0); after it, the token's expiry, if any.
            let key = match &self.principal {
                None => Some(0),
                Some(p) => p.exp,
            };
            deadline.set(key, |exp| if exp == 0 { auth_deadline } else { expiry_instant(exp) });
            tokio::select! {
                biased;
                _ = crate::app::shutting_down(&mut shutdown) => {
                    return Some((CloseReason::ShuttingDown, "server is shutting down; reconnect and resume".into()));
                }
                _ = overflow.overflowed() => {
                    return Some((CloseReason::SlowConsumer, "send queue overflowed; reconnect and resume with since".into()));
                }
                _ = deadline.passed(), if deadline.is_armed() => {
                    return Some(match self.principal {
                        None => (CloseReason::AuthFailed, "no auth frame within 10 seconds".into()),
                        Some(_) => (CloseReason::TokenExpired, "token expired; reconnect with a fresh token".into()),
                    });
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
                }
                alive = heartbeat.beat() => {
                    if !alive {
                        return Some((CloseReason::HeartbeatTimeout, "no frame within the heartbeat timeout".into()));
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Turns queued deliveries into frames, dropping duplicates and own broadcasts.
    fn frames_for(&mut self, batch: std::vec::Drain<'_, Arc<Delivery>>) -> Vec<Utf8Bytes> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            match &d.payload {
                Payload::Event(e) => {
                    let Some(sub) = self.subs.get_mut(&*d.topic) else { continue };
                    if e.position <= sub.last {
                        continue;
                    }
                    sub.last = e.position;
                }
                Payload::Broadcast { sender, .. } => {
                    if *sender == Some(self.conn_id) {
                        continue;
                    }
                }
                Payload::PresenceDiff { .. } => {}
            }
            out.push(frames::delivery(&d));
        }
        out
    }

    async fn on_inbound(&mut self, sink: &mut Sink, frame: Frame) -> Result<(), (CloseReason, String)> {
        match self.rate.check() {
            Verdict::Allow => {}
            Verdict::Drop => return Ok(()),
            Verdict::Close => {
                return Err((CloseReason::RateLimited, "over the message rate limit for 10 seconds".into()));
            }
            Verdict::Warn => {
                let limit = self.s.limits.messages_per_second;
                return self
                    .send(
                        sink,
                        frames::error(
                            &None,
                            "rate_limited",
                            format!("over {limit} messages per second; messages are being dropped"),
                        ),
                    )
                    .await;
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
            return self
                .send(
                    sink,
                    frames::error(
                        &None,
                        "frame_too_large",
                        format!("frame is {} bytes; the limit is {max}", text.len()),
                    ),
                )
                .await;
        }
        let frame = match parse_frame(&text) {
            Ok(f) => f,
            Err((code, message, id)) => return self.send(sink, frames::error(&id, code, message)).await,
        };
        self.on_frame(sink, frame).await
    }

    async fn send(&self, sink: &mut Sink, frame: Utf8Bytes) -> Result<(), (CloseReason, String)> {
        sink.send(Message::Text(frame)).await.map_err(|_| (CloseReason::ProtocolError, String::new()))
    }

    async fn on_frame(&mut self, sink: &mut Sink, frame: ClientFrame) -> Result<(), (CloseReason, String)> {
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
            ClientFrame::Sub { topic, since, id } => self.subscribe(sink, &p, &topic, since, &id).await,
            ClientFrame::Unsub { topic, id } => {
                let removed = self.unsubscribe(&topic);
                let frame = if removed {
                    frames::ack(&id, json!({ "topic": topic }))
                } else {
                    frames::error(&id, "not_subscribed", format!("not subscribed to {topic}"))
                };
                self.send(sink, frame).await
            }
            ClientFrame::Pub { topic, event, data, id } => {
                let frame = match room_of(&topic) {
                    Err(m) => frames::error(&id, "invalid_topic", m),
                    Ok(_) if event.is_empty() || event.len() > 256 => {
                        frames::error(&id, "invalid_frame", "event: must be 1 to 256 bytes")
                    }
                    Ok(_) => {
                        let data = serde_json::value::to_raw_value(&data.unwrap_or(Value::Null)).unwrap_or_default();
                        let payload = Payload::Broadcast {
                            event,
                            data,
                            sender: Some(self.conn_id),
                            from: Some(Arc::clone(&p.sub)),
                        };
                        let n = self.s.hub.publish(&p.tenant, &topic, payload);
                        frames::ack(&id, json!({ "topic": topic, "delivered": n }))
                    }
                };
                self.send(sink, frame).await
            }
            ClientFrame::Presence { topic, meta, id } => {
                let meta = meta.unwrap_or_else(|| json!({}));
                let frame = match room_of(&topic) {
                    Err(m) => frames::error(&id, "invalid_topic", m),
                    Ok(_) if !meta.is_object() => frames::error(&id, "invalid_frame", "meta: must be a JSON object"),
                    Ok(_) => {
                        if !self.subs.contains_key(topic.as_str()) {
                            if let Err(f) = self.subscribe_room(sink, &p, &topic, &id).await? {
                                return self.send(sink, f).await;
                            }
                        }
                        let diff = self.s.hub.presence.track(&p.tenant, &topic, self.conn_id, &p.sub, meta);
                        self.rooms.insert(topic.clone());
                        self.s.hub.publish(
                            &p.tenant,
                            &topic,
                            Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves },
                        );
                        frames::ack(&id, json!({ "topic": topic }))
                    }
                };
                self.send(sink, frame).await
            }
            ClientFrame::Refresh { token, id } => self.refresh(sink, &p, &token, &id).await,
        }
    }

    /// Completes authentication: counts the connection and joins the implicit topics.
    async fn authenticated(
        &mut self,
        sink: &mut Sink,
        p: Principal,
        id: &Option<Value>,
    ) -> Result<(), (CloseReason, String)> {
        let guard = self.s.hub.connect(&p.tenant).map_err(|e| (CloseReason::TooManyConnections, e.to_string()))?;
        for topic in [TENANT_TOPIC.to_string(), inbox_topic(&p.sub)] {
            let key = TopicKey::new(&p.tenant, &topic);
            self.s.hub.subscribe(&key, self.outbox.clone());
            self.internal.push(key);
        }
        self.guard = Some(guard);
        let welcome = json!({
            "op": "welcome",
            "id": id,
            "conn": self.conn_id,
            "sub": &*p.sub,
            "tenant": &*p.tenant,
            "role": p.role.as_str(),
            "expires_at": p.exp,
            "heartbeat_ms": self.s.limits.heartbeat_interval.as_millis() as u64,
        });
        self.principal = Some(p);
        self.send(sink, frames::text(welcome)).await
    }

    /// Joins a room's delivery list and sends its presence state. The outer error
    /// closes the connection; the inner one is an error frame for the client.
    async fn subscribe_room(
        &mut self,
        sink: &mut Sink,
        p: &Principal,
        topic: &str,
        id: &Option<Value>,
    ) -> Result<Result<(), Utf8Bytes>, (CloseReason, String)> {
        if self.subs.len() >= self.s.limits.max_subscriptions {
            let max = self.s.limits.max_subscriptions;
            return Ok(Err(frames::error(
                id,
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            )));
        }
        let key = TopicKey::new(&p.tenant, topic);
        self.s.hub.subscribe(&key, self.outbox.clone());
        self.subs.insert(Arc::clone(&key.topic), Sub { key, topic: Topic::Room(topic[5..].to_string()), last: 0 });
        let state = self.s.hub.presence.state(&p.tenant, topic);
        self.send(sink, frames::text(json!({ "op": "presence_state", "topic": topic, "state": state }))).await?;
        Ok(Ok(()))
    }

    async fn subscribe(
        &mut self,
        sink: &mut Sink,
        p: &Principal,
        raw: &str,
        since: Option<u64>,
        id: &Option<Value>,
    ) -> Result<(), (CloseReason, String)> {
        if self.subs.contains_key(raw) {
            return self.send(sink, frames::ack(id, json!({ "topic": raw, "already": true }))).await;
        }
        if self.subs.len() >= self.s.limits.max_subscriptions {
            let max = self.s.limits.max_subscriptions;
            return self
                .send(
                    sink,
                    frames::error(id, "too_many_subscriptions", format!("at most {max} subscriptions per connection")),
                )
                .await;
        }
        let topic = match authorize(&self.s, p, raw).await {
            Ok(t) => t,
            Err(e) => return self.send(sink, frames::error(id, e.code, e.message)).await,
        };
        if topic.is_room() {
            self.send(sink, frames::ack(id, json!({ "topic": raw }))).await?;
            if let Err(f) = self.subscribe_room(sink, p, raw, id).await? {
                self.send(sink, f).await?;
            }
            return Ok(());
        }
        // Live first, then the log: anything committed meanwhile arrives twice at
        // most, and the position check drops the second copy.
        let key = TopicKey::new(&p.tenant, raw);
        self.s.hub.subscribe(&key, self.outbox.clone());
        let topic_name = Arc::clone(&key.topic);
        self.subs.insert(Arc::clone(&topic_name), Sub { key, topic, last: 0 });
        let position = match head(&self.s, &p.tenant).await {
            Ok(h) => h,
            Err(e) => {
                self.unsubscribe(raw);
                return self.send(sink, frames::error(id, e.code, e.message)).await;
            }
        };
        self.send(sink, frames::ack(id, json!({ "topic": raw, "position": position }))).await?;
        let Some(since) = since else { return Ok(()) };
        let topics = [raw.to_string()];
        let mut after = since;
        loop {
            let page = match replay_page(&self.s, &p.tenant, &topics, after).await {
                Ok(page) => page,
                Err(e) => return self.send(sink, frames::error(id, e.code, e.message)).await,
            };
            match page {
                ReplayPage::Behind { head } => {
                    let topic = self.subs.get(raw).map(|s| s.topic.clone()).unwrap_or(Topic::Jobs);
                    let snap = snapshot(&self.s, p, &topic).await.unwrap_or(Value::Null);
                    if let Some(sub) = self.subs.get_mut(raw) {
                        sub.last = head;
                    }
                    return self
                        .send(
                            sink,
                            frames::text(json!({ "op": "resync", "topic": raw, "position": head, "snapshot": snap })),
                        )
                        .await;
                }
                ReplayPage::Events(events) => {
                    let n = events.len();
                    for e in &events {
                        sink.feed(Message::Text(Utf8Bytes::from(crate::transport::topics::event_json(
                            Some("event"),
                            raw,
                            e,
                        ))))
                        .await
                        .map_err(|_| (CloseReason::ProtocolError, String::new()))?;
                        after = e.position;
                    }
                    sink.flush().await.map_err(|_| (CloseReason::ProtocolError, String::new()))?;
                    if let Some(sub) = self.subs.get_mut(raw) {
                        sub.last = sub.last.max(after);
                    }
                    if n < crate::transport::topics::REPLAY_PAGE {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn unsubscribe(&mut self, topic: &str) -> bool {
        let Some(sub) = self.subs.remove(topic) else { return false };
        self.s.hub.unsubscribe(&sub.key, self.conn_id);
        if self.rooms.remove(topic) {
            self.leave_room(&sub.key.tenant, topic);
        }
        true
    }

    fn leave_room(&self, tenant: &str, room: &str) {
        if let Some(diff) = self.s.hub.presence.untrack(tenant, room, self.conn_id) {
            self.s.hub.publish(tenant, room, Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves });
        }
    }

    /// A new token: same tenant and subject, and every subscription is checked again.
    async fn refresh(
        &mut self,
        sink: &mut Sink,
        p: &Principal,
        token: &str,
        id: &Option<Value>,
    ) -> Result<(), (CloseReason, String)> {
        let new = match self.s.auth.authenticate(token).await {
            Ok(n) => n,
            Err(e) => return self.send(sink, frames::error(id, e.code(), e.to_string())).await,
        };
        if new.tenant != p.tenant || new.sub != p.sub {
            return self
                .send(sink, frames::error(id, "invalid_token", "a refreshed token must keep the tenant and sub"))
                .await;
        }
        let topics: Vec<String> = self.subs.keys().map(|k| k.to_string()).collect();
        let mut dropped = Vec::new();
        for t in topics {
            if let Err(e) = authorize(&self.s, &new, &t).await {
                self.unsubscribe(&t);
                self.send(sink, frames::error(&None, e.code, format!("subscription to {t} ended: {}", e.message)))
                    .await?;
                dropped.push(t);
            }
        }
        let exp = new.exp;
        self.principal = Some(new);
        self.send(sink, frames::ack(id, json!({ "expires_at": exp, "dropped": dropped }))).await
    }

    fn cleanup(&mut self) {
        let topics: Vec<String> = self.subs.keys().map(|k| k.to_string()).collect();
        for t in topics {
            self.unsubscribe(&t);
        }
        for key in self.internal.drain(..) {
            self.s.hub.unsubscribe(&key, self.conn_id);
        }
        self.guard = None;
    }
}

fn auth_close(e: &AuthError) -> (CloseReason, String) {
    match e {
        AuthError::Expired => (CloseReason::TokenExpired, e.to_string()),
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
        | ClientFrame::Pub { id, .. }
        | ClientFrame::Presence { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Refresh { id, .. } => id.clone(),
    }
}

/// Parses a text frame, telling malformed JSON, unknown ops and bad fields apart.
pub fn parse_frame(text: &str) -> Result<ClientFrame, (&'static str, String, Option<Value>)> {
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
    }
}
