//! One Socket.IO connection: the driver over the session core. Engine.IO
//! (transports, upgrade, heartbeats) is engineioxide's; this task reads the
//! Socket.IO packets it hands over, answers them, and writes the outbox.

use super::events::{chunks_packet, delivery_packets};
use super::packet::{self, ClientPacket, MAIN_NAMESPACE};
use super::recovery::{self, Saved, SavedRoom, SavedTopic};
use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::hub::{Delivery, Inbox, Payload, TopicKey};
use crate::model::{Position, Role, Topic};
use crate::session::rooms::{self, Broadcast};
use crate::session::stream::{chunks_array, Admit, StreamCursor, StreamRef};
use crate::session::{
    authorize, authorize_existing, authorize_existing_stream, head, revocation, token, CloseReason, Cursor, Deadline,
    KeyChanges, Membership, Replay, ReplayPage, SessionError,
};
use crate::transport::conn::{self, Batch, RateLimit, Verdict};
use engineioxide::{DisconnectReason, Socket, Str};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Time a client has to send its CONNECT packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may exceed the message rate without pause before it is closed.
const FLOOD_TOLERANCE: Duration = Duration::from_secs(10);
/// How long a write may wait for room in the Engine.IO buffer (a polling
/// client empties it at its next request) before the client is a slow consumer.
const EMIT_WAIT: Duration = Duration::from_secs(10);
/// Time a client has to close after a server DISCONNECT before it is closed.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Packets a connection may have waiting for its task: twice the burst its
/// rate limit allows, within bounds. The limit is applied as packets arrive
/// (Engine.IO reads on its own task and cannot wait for this one), so a full
/// queue means the task has stalled behind a client that stays in its rate.
fn inbound_queue(messages_per_second: u32) -> usize {
    const MAX: usize = 16 * 1024;
    match messages_per_second {
        0 => MAX,
        n => (n as usize).saturating_mul(4).clamp(64, MAX),
    }
}

/// What Herald keeps on each Engine.IO socket: the way to its task.
#[derive(Debug, Default)]
pub struct SocketData {
    inbound: OnceLock<Inbound>,
}

#[derive(Debug)]
struct Inbound {
    tx: mpsc::Sender<Str>,
    rate: parking_lot::Mutex<RateLimit>,
    per_second: u32,
}

pub type EioSocket = Socket<SocketData>;

/// Why a socket cannot take a client's packet and is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the rate limit for longer than the flood tolerance.
    RateLimited,
    /// The connection's task fell too far behind the client.
    Backlog,
    /// The connection's task has ended (it closes the socket as it ends;
    /// this covers the moment between).
    Ended,
}

impl Refused {
    pub fn name(self) -> &'static str {
        match self {
            Refused::RateLimited => "rate_limited",
            Refused::Backlog => "backlog",
            Refused::Ended => "ended",
        }
    }
}

impl SocketData {
    /// Takes a client's packet as it arrives: within the rate limit it goes
    /// to the connection's task; over it, it is dropped (with a
    /// `herald:error` at most once a second); an error closes the socket.
    pub fn forward(&self, socket: &EioSocket, msg: Str) -> Result<(), Refused> {
        let Some(inbound) = self.inbound.get() else { return Ok(()) };
        let verdict = inbound.rate.lock().check();
        match verdict {
            Verdict::Allow => match inbound.tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(Refused::Backlog),
                Err(TrySendError::Closed(_)) => Err(Refused::Ended),
            },
            Verdict::Drop => Ok(()),
            Verdict::Warn => {
                let why = format!("over {} messages per second; messages are being dropped", inbound.per_second);
                let body = json!({ "code": "rate_limited", "message": why });
                let _ = socket.emit(packet::event("herald:error", &body.to_string()));
                Ok(())
            }
            Verdict::Close => Err(Refused::RateLimited),
        }
    }
}

/// How a connection ends.
enum End {
    /// The client left or the transport broke: nothing to say.
    Gone,
    /// Close the transport without a Socket.IO DISCONNECT: the client
    /// reconnects by itself and recovers.
    Transport(CloseReason),
    /// Tell the client why (`herald:disconnect`), then DISCONNECT: the client
    /// stays disconnected until the application connects it again.
    Disconnect(CloseReason, String),
}

/// A log topic this connection receives.
struct Sub {
    key: TopicKey,
    /// The head of the log when it was subscribed.
    since: Position,
}

/// A job output stream this connection follows, and the next offset it sends.
struct StreamSub {
    key: TopicKey,
    stream: StreamRef,
    cursor: StreamCursor,
}

struct Conn {
    s: AppState,
    socket: Arc<EioSocket>,
    principal: Option<Principal>,
    member: Membership,
    /// The connection's id, and the session's id that recovery goes by.
    sid: String,
    pid: String,
    subs: BTreeMap<String, Sub>,
    /// Rooms joined (`room:<name>`) and the presence meta set in each.
    rooms: BTreeMap<String, Option<Value>>,
    /// Job output streams followed (`stream:<job>:<name>`). Not part of
    /// recovery: chunks carry offsets of their own, and the client subscribes
    /// again on every connect with the next offset it wants.
    streams: BTreeMap<String, StreamSub>,
    /// Streams whose stored chunks are to be sent once the current answer is out.
    catch_up_due: Vec<String>,
    /// Positions are global and deliveries arrive in order: one cursor for all topics.
    cursor: Cursor,
}

/// Starts the task of a new Engine.IO socket.
pub fn start(s: AppState, socket: Arc<EioSocket>) {
    let per_second = s.limits.messages_per_second;
    let (tx, rx) = mpsc::channel(inbound_queue(per_second));
    let rate = parking_lot::Mutex::new(RateLimit::new(per_second, Some(FLOOD_TOLERANCE)));
    if socket.data.inbound.set(Inbound { tx, rate, per_second }).is_err() {
        return;
    }
    tokio::spawn(run(s, socket, rx));
}

/// Closes the Engine.IO socket when the connection's task ends, whichever
/// way it ends (a panic included): no socket outlives its task.
struct CloseOnDrop(Arc<EioSocket>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if !self.0.is_closed() {
            self.0.close(DisconnectReason::TransportError);
        }
    }
}

async fn run(s: AppState, socket: Arc<EioSocket>, mut inbound: mpsc::Receiver<Str>) {
    let _close = CloseOnDrop(Arc::clone(&socket));
    let (member, mut inbox) = Membership::new(&s, s.limits.outbox_capacity);
    let mut c = Conn {
        s: s.clone(),
        socket: Arc::clone(&socket),
        principal: None,
        member,
        sid: recovery::new_pid(),
        pid: String::new(),
        subs: BTreeMap::new(),
        rooms: BTreeMap::new(),
        streams: BTreeMap::new(),
        catch_up_due: Vec::new(),
        cursor: Cursor::default(),
    };
    let end = c.drive(&mut inbound, &mut inbox).await;
    // Give back hub topics and presence at once (the drop would, too).
    c.subs.clear();
    c.streams.clear();
    c.member.clear();
    match &end {
        End::Gone => {}
        End::Transport(r) => c.member.ending(*r, r.advice()),
        End::Disconnect(r, message) => c.member.ending(*r, message.clone()),
    }
    c.member.finish();
    metrics::counter!("herald_socketio_closes_total", "reason" => end_name(&end)).increment(1);
    match end {
        End::Gone => socket.close(DisconnectReason::TransportClose),
        End::Transport(reason) => {
            tracing::debug!(reason = reason.name(), "closing a Socket.IO transport");
            socket.close(if reason == CloseReason::ShuttingDown {
                DisconnectReason::ClosingServer
            } else {
                DisconnectReason::TransportError
            });
        }
        End::Disconnect(reason, message) => {
            let body = json!({ "reason": reason.name(), "message": message, "reconnect": reason.reconnect() });
            let _ = socket.emit(packet::event("herald:disconnect", &body.to_string()));
            let _ = socket.emit(packet::DISCONNECT);
            // The client closes on DISCONNECT; one that does not is closed.
            let _ = tokio::time::timeout(DISCONNECT_GRACE, socket.closed()).await;
            socket.close(DisconnectReason::TransportClose);
        }
    }
}

fn end_name(end: &End) -> &'static str {
    match end {
        End::Gone => "client",
        End::Transport(r) | End::Disconnect(r, _) => r.name(),
    }
}

impl Conn {
    async fn drive(&mut self, inbound: &mut mpsc::Receiver<Str>, inbox: &mut Inbox) -> End {
        let connect_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut shutdown = self.s.shutdown.clone();
        let overflow = inbox.overflow_signal();
        let mut deadline = Deadline::default();
        let mut batch = Batch::default();
        let mut keys = KeyChanges::default();
        loop {
            deadline.set_for(self.principal.as_ref(), connect_deadline);
            if let Some(p) = &self.principal {
                keys.follow(&self.s, p);
            }
            tokio::select! {
                biased;
                reason = conn::interrupted(&mut shutdown, &overflow) => return End::Transport(reason),
                _ = deadline.passed(), if deadline.is_armed() => {
                    return match self.principal {
                        None => End::Transport(CloseReason::AuthFailed),
                        Some(_) => End::Disconnect(CloseReason::TokenExpired, "token expired; connect again with a fresh token".into()),
                    };
                }
                changed = keys.next(), if keys.is_armed() => {
                    if let Some(p) = self.principal.as_mut().filter(|p| changed.concerns(p)) {
                        match revocation::recheck(&self.s, p).await {
                            Ok(()) => {}
                            Err(AuthError::Expired) => {
                                return End::Disconnect(CloseReason::TokenExpired, "API key expired; connect again with a new key".into());
                            }
                            Err(e) => return End::Disconnect(CloseReason::AuthFailed, format!("{e}; connect again with a new key")),
                        }
                    }
                }
                _ = self.socket.closed() => return End::Gone,
                msg = inbound.recv() => {
                    let Some(msg) = msg else { return End::Gone };
                    // Boxed: a request's future (store reads, replays) is large
                    // and short-lived; inline it would sit in every idle connection.
                    if let Err(end) = Box::pin(self.on_message(msg)).await {
                        return end;
                    }
                }
                n = batch.recv(inbox) => {
                    if n == 0 {
                        return End::Gone;
                    }
                    if let Err(end) = self.deliver(batch.drain()).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes queued deliveries: the topics still held, each event once.
    async fn deliver(&mut self, batch: impl Iterator<Item = Arc<Delivery>>) -> Result<(), End> {
        for d in batch {
            if let Payload::Chunks { first, count, chunks } = &d.payload {
                self.deliver_chunks(&d, *first, *count, chunks).await?;
                continue;
            }
            let held = self.subs.contains_key(&*d.topic) || self.rooms.contains_key(&*d.topic);
            if !held {
                continue;
            }
            match &d.payload {
                Payload::Event(e) if !self.cursor.admit(e.position) => continue,
                Payload::Broadcast { sender: Some(from), .. } if *from == self.member.conn_id() => continue,
                _ => {}
            }
            for p in delivery_packets(&d).iter() {
                self.emit(p.clone()).await?;
            }
        }
        Ok(())
    }

    /// Live chunks of a followed stream: sent whole (the shared packet), cut
    /// where the reader already has some, or, past a gap, read from the store.
    async fn deliver_chunks(
        &mut self,
        d: &Delivery,
        first: u64,
        count: u64,
        chunks: &serde_json::value::RawValue,
    ) -> Result<(), End> {
        let Some(sub) = self.streams.get_mut(&*d.topic) else { return Ok(()) };
        match sub.cursor.admit(first, count, chunks) {
            Admit::Skip => Ok(()),
            Admit::Whole => {
                for p in delivery_packets(d).iter() {
                    self.emit(p.clone()).await?;
                }
                Ok(())
            }
            Admit::Part { first, chunks, .. } => self.emit(chunks_packet(&d.topic, first, chunks.get())).await,
            Admit::Gap => self.catch_up(&d.topic).await,
        }
    }

    /// Sends a stream's stored chunks from its reader's offset to the end
    /// (`stream:truncated` first when older chunks were dropped). A store
    /// that fails ends the subscription with a `herald:error` naming it: the
    /// client subscribes again from its offset.
    async fn catch_up(&mut self, topic: &str) -> Result<(), End> {
        loop {
            let Some(sub) = self.streams.get(topic) else { return Ok(()) };
            let (stream, cursor) = (sub.stream.clone(), sub.cursor);
            let page = match stream.page(&self.s, cursor).await {
                Ok(page) => page,
                Err(e) => {
                    if let Some(sub) = self.streams.remove(topic) {
                        self.member.leave(&sub.key);
                    }
                    return self.error_event(e.code, &format!("subscription to {topic} ended: {}", e.message)).await;
                }
            };
            if page.first > cursor.next {
                let body = json!({ "jobId": stream.job, "stream": stream.name, "from": cursor.next, "to": page.first });
                self.emit_text(packet::event("stream:truncated", &body.to_string())).await?;
            }
            let mut next = StreamCursor::at(page.first);
            next.read(&page);
            if let Some(sub) = self.streams.get_mut(topic) {
                sub.cursor = next;
            }
            if page.chunks.is_empty() {
                return Ok(());
            }
            self.emit(chunks_packet(topic, page.first, &chunks_array(&page))).await?;
        }
    }

    /// Queues a packet on the socket, waiting (boundedly) for room.
    async fn emit(&self, packet: Str) -> Result<(), End> {
        let give_up = tokio::time::Instant::now() + EMIT_WAIT;
        let mut packet = packet;
        loop {
            match self.socket.emit(packet) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(End::Gone),
                Err(TrySendError::Full(p)) => {
                    if tokio::time::Instant::now() >= give_up {
                        return Err(End::Transport(CloseReason::SlowConsumer));
                    }
                    packet = p;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    async fn emit_text(&self, packet: String) -> Result<(), End> {
        self.emit(Str::from(packet)).await
    }

    /// Answers a packet: its ack when the client asked for one, else a
    /// `herald:error` event for refusals (successes without an ack say nothing).
    async fn answer(&self, id: Option<u64>, result: Result<Value, SessionError>) -> Result<(), End> {
        match (id, result) {
            (Some(id), Ok(mut v)) => {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("ok".into(), Value::Bool(true));
                }
                self.emit_text(packet::ack(id, &v)).await
            }
            (Some(id), Err(e)) => {
                let body = json!({ "ok": false, "error": { "code": e.code, "message": e.message } });
                self.emit_text(packet::ack(id, &body)).await
            }
            (None, Ok(_)) => Ok(()),
            (None, Err(e)) => self.error_event(e.code, &e.message).await,
        }
    }

    async fn error_event(&self, code: &str, message: &str) -> Result<(), End> {
        self.member.record_error(code, message);
        self.emit_text(packet::event("herald:error", &json!({ "code": code, "message": message }).to_string())).await
    }

    async fn on_message(&mut self, msg: Str) -> Result<(), End> {
        let packet = match packet::decode(msg.as_str()) {
            Ok(p) => p,
            Err(e) => {
                return self.answer(e.id, Err(SessionError::invalid(e.code, e.message))).await;
            }
        };
        match packet {
            ClientPacket::Connect { ns, auth } => self.connect(&ns, auth).await,
            ClientPacket::Disconnect { ns } if ns == MAIN_NAMESPACE => Err(End::Gone),
            ClientPacket::Disconnect { .. } | ClientPacket::Ack { .. } => Ok(()),
            ClientPacket::Event { ns, id, name, args } => {
                let Some(p) = self.principal.clone() else {
                    return self.answer(id, Err(SessionError::invalid("unauthorized", "connect first"))).await;
                };
                if ns != MAIN_NAMESPACE {
                    return self.answer(id, Err(invalid_namespace(&ns))).await;
                }
                let result = self.on_event(&p, &name, args).await;
                self.answer(id, result).await?;
                // A new stream's stored chunks follow its answer.
                for topic in std::mem::take(&mut self.catch_up_due) {
                    self.catch_up(&topic).await?;
                }
                Ok(())
            }
        }
    }

    /// CONNECT: authenticate, count the connection, then recover the session
    /// the client names or start a new one.
    async fn connect(&mut self, ns: &str, auth: Option<Value>) -> Result<(), End> {
        if self.principal.is_some() {
            return self.error_event("already_connected", "this connection is already connected").await;
        }
        if ns != MAIN_NAMESPACE {
            let e = invalid_namespace(ns);
            return self.emit_text(packet::connect_error(e.code, &e.message)).await;
        }
        let field = |k: &str| auth.as_ref().and_then(|a| a.get(k)).and_then(Value::as_str).map(str::to_string);
        let Some(token) = field("token").or_else(|| self.handshake_token()) else {
            let e = AuthError::Missing;
            return self.refuse_connect(e.code(), "missing credentials: pass auth: { token } or ?token=").await;
        };
        let p = match self.s.auth.authenticate(&token).await {
            Ok(p) => p,
            Err(e) => return self.refuse_connect(e.code(), &e.to_string()).await,
        };
        if let Err(e) = self.member.connect(&p.tenant) {
            return self.refuse_connect(e.code, &e.message).await;
        }
        self.member.describe("socketio", &p);
        self.principal = Some(p.clone());
        let offset = field("offset").and_then(|o| o.parse::<u64>().ok());
        if let Some(pid) = field("pid") {
            match self.recover(&p, &pid, offset).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // The store did not answer: the client tries again, from the same offset.
                Err(e) => {
                    tracing::warn!(error = %e, "Socket.IO recovery failed");
                    return Err(End::Transport(CloseReason::Unavailable));
                }
            }
        }
        self.pid = recovery::new_pid();
        self.emit_text(packet::connected(&self.sid, &self.pid)).await
    }

    async fn refuse_connect(&self, code: &str, message: &str) -> Result<(), End> {
        self.emit_text(packet::connect_error(code, message)).await
    }

    /// `?token=` on the Engine.IO handshake, or `Authorization: Bearer`.
    fn handshake_token(&self) -> Option<String> {
        let parts = &self.socket.req_parts;
        if let Some(t) = crate::transport::http::extract::bearer(parts) {
            return Some(t);
        }
        let query = parts.uri.query()?;
        query_token(query)
    }

    /// Recovers session `pid`: the same topics and rooms, and every event
    /// after `offset` (or after each topic's start) from the log, in order,
    /// once. False when there is nothing to recover (unknown, another
    /// subject's, or older than the log): the caller starts a new session.
    async fn recover(&mut self, p: &Principal, pid: &str, offset: Option<u64>) -> Result<bool, SessionError> {
        let Some(saved) = recovery::load(&self.s, p, pid).await? else { return Ok(false) };
        let offset = Position::from_u64(offset.unwrap_or(0));
        // Every topic is checked again: the token may say less than it did.
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for t in &saved.topics {
            match authorize(&self.s, p, &t.topic).await {
                Ok(_) => kept.push(t.clone()),
                Err(e) => dropped.push((t.topic.clone(), e)),
            }
        }
        let mut rooms = Vec::new();
        for r in &saved.rooms {
            match authorize(&self.s, p, &r.room).await {
                Ok(_) => rooms.push(r.clone()),
                Err(e) => dropped.push((r.room.clone(), e)),
            }
        }
        // Live first, then the log: the cursor drops what arrives twice.
        for t in &kept {
            let key = self.member.join(&p.tenant, &t.topic);
            self.subs.insert(t.topic.clone(), Sub { key, since: t.since });
        }
        self.cursor = Cursor::at(offset);
        let topics: Vec<String> = kept.iter().map(|t| t.topic.clone()).collect();
        let start = kept.iter().map(|t| t.since.max(offset)).min().unwrap_or(offset);
        let mut replay = Replay::new(Arc::clone(&p.tenant), topics, start);
        let first = match replay.next_page(&self.s).await {
            Ok(page) => page,
            Err(e) => {
                self.forget_all();
                return Err(e);
            }
        };
        if let Some(ReplayPage::Behind { .. }) = first {
            // Older than the log: Socket.IO's answer is a new session.
            self.forget_all();
            return Ok(false);
        }
        self.pid = pid.to_string();
        for r in &rooms {
            self.member.join(&p.tenant, &r.room);
            self.rooms.insert(r.room.clone(), r.presence.clone());
            if let Some(meta) = &r.presence {
                let key = TopicKey::new(&p.tenant, &r.room);
                self.member.track(&key, &p.sub, meta.clone());
            }
        }
        metrics::counter!("herald_socketio_recoveries_total").increment(1);
        self.emit_text(packet::connected(&self.sid, &self.pid)).await.map_err(|_| closed())?;
        let mut page = first;
        while let Some(ReplayPage::Events(events)) = page {
            for e in &events {
                let wanted = e.topics.iter().any(|t| self.subs.get(t).is_some_and(|s| e.position > s.since));
                if !wanted || !self.cursor.admit(e.position) {
                    continue;
                }
                for packet in super::events::event_packets(e) {
                    self.emit(packet).await.map_err(|_| closed())?;
                }
            }
            page = replay.next_page(&self.s).await?;
        }
        if !dropped.is_empty() {
            for (topic, e) in &dropped {
                let message = format!("subscription to {topic} ended: {}", e.message);
                self.error_event(e.code, &message).await.map_err(|_| closed())?;
            }
            self.save(p).await?;
        }
        Ok(true)
    }

    fn forget_all(&mut self) {
        self.subs.clear();
        self.streams.clear();
        self.rooms.clear();
        self.member.clear();
        self.cursor = Cursor::default();
    }

    /// What this session holds, stored for its recovery.
    async fn save(&self, p: &Principal) -> Result<(), SessionError> {
        let saved = Saved {
            topics: self.subs.iter().map(|(t, s)| SavedTopic { topic: t.clone(), since: s.since }).collect(),
            rooms: self.rooms.iter().map(|(r, m)| SavedRoom { room: r.clone(), presence: m.clone() }).collect(),
        };
        recovery::save(&self.s, p, &self.pid, &saved).await
    }

    async fn on_event(&mut self, p: &Principal, name: &str, args: Vec<Value>) -> Result<Value, SessionError> {
        let arg = |i: usize, what: &str| -> Result<String, SessionError> {
            match args.get(i) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(SessionError::invalid(
                    "invalid_event",
                    format!("{name}: argument {} must be the {what} (a string)", i + 1),
                )),
            }
        };
        match name {
            "job:subscribe" => self.subscribe(p, &format!("job:{}", arg(0, "job id")?)).await,
            "job:unsubscribe" => self.unsubscribe(p, &format!("job:{}", arg(0, "job id")?)).await,
            "jobs:subscribe" => self.subscribe(p, &jobs_topic(p)).await,
            "jobs:unsubscribe" => self.unsubscribe(p, &jobs_topic(p)).await,
            "notifications:subscribe" => self.subscribe(p, &format!("user:{}", p.sub)).await,
            "notifications:unsubscribe" => self.unsubscribe(p, &format!("user:{}", p.sub)).await,
            "room:join" => {
                let meta = match args.get(1) {
                    None | Some(Value::Null) => None,
                    Some(m @ Value::Object(_)) => Some(m.clone()),
                    Some(_) => {
                        return Err(SessionError::invalid(
                            "invalid_event",
                            "room:join: presence meta must be an object",
                        ))
                    }
                };
                self.join_room(p, &format!("room:{}", arg(0, "room name")?), meta).await
            }
            "stream:subscribe" => {
                let offset = match args.get(2) {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| {
                        SessionError::invalid(
                            "invalid_event",
                            "stream:subscribe: argument 3 must be the next offset wanted (an integer ≥ 0)",
                        )
                    })?),
                };
                self.subscribe_stream(p, &arg(0, "job id")?, &arg(1, "stream name")?, offset).await
            }
            "stream:unsubscribe" => {
                let topic = format!("stream:{}:{}", arg(0, "job id")?, arg(1, "stream name")?);
                let Some(sub) = self.streams.remove(&topic) else {
                    return Err(SessionError::invalid("not_subscribed", format!("not subscribed to {topic}")));
                };
                self.member.leave(&sub.key);
                Ok(json!({}))
            }
            "room:leave" => self.leave_room(p, &format!("room:{}", arg(0, "room name")?)).await,
            "room:broadcast" => {
                let room = format!("room:{}", arg(0, "room name")?);
                Topic::parse(&room).map_err(|m| SessionError::invalid("invalid_topic", m))?;
                let event = arg(1, "event name")?;
                let data = serde_json::value::to_raw_value(args.get(2).unwrap_or(&Value::Null))
                    .map_err(|e| SessionError::invalid("invalid_event", e.to_string()))?;
                let b = Broadcast {
                    tenant: Arc::clone(&p.tenant),
                    topic: room,
                    event,
                    data,
                    sender: Some(self.member.conn_id()),
                    from: Arc::clone(&p.sub),
                };
                let n = rooms::publish(&self.s, b)?;
                Ok(json!({ "delivered": n }))
            }
            "auth:refresh" => self.refresh(p, &arg(0, "token")?).await,
            other => Err(SessionError::invalid(
                "unknown_event",
                format!("unknown event {other:?}; see docs/SOCKETIO.md for the events Herald answers"),
            )),
        }
    }

    fn check_room_for_one_more(&self, p: &Principal, topic: &str) -> Result<(), SessionError> {
        self.member.check_room_for(&p.tenant, [topic])?;
        let max = self.s.limits.max_subscriptions;
        if self.subs.len() + self.rooms.len() + self.streams.len() >= max {
            return Err(SessionError::limit(
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        Ok(())
    }

    /// Subscribes a log topic from now on, durably for recovery.
    async fn subscribe(&mut self, p: &Principal, topic: &str) -> Result<Value, SessionError> {
        if self.subs.contains_key(topic) {
            return Ok(json!({ "already": true }));
        }
        self.check_room_for_one_more(p, topic)?;
        authorize_existing(&self.s, p, topic).await?;
        // Live first; the head read after it is where recovery would start.
        let key = self.member.join(&p.tenant, topic);
        let since = match head(&self.s).await {
            Ok(h) => h,
            Err(e) => {
                self.member.leave(&key);
                return Err(e);
            }
        };
        self.subs.insert(topic.to_string(), Sub { key, since });
        if let Err(e) = self.save(p).await {
            if let Some(sub) = self.subs.remove(topic) {
                self.member.leave(&sub.key);
            }
            return Err(e);
        }
        Ok(json!({}))
    }

    /// Follows a job output stream: live first, then the stored chunks from
    /// `offset` (the next one wanted; default: from now on) once the answer,
    /// which carries the stream's end, is out.
    async fn subscribe_stream(
        &mut self,
        p: &Principal,
        job: &str,
        name: &str,
        offset: Option<u64>,
    ) -> Result<Value, SessionError> {
        let topic = format!("stream:{job}:{name}");
        if self.streams.contains_key(&topic) {
            return Err(SessionError::invalid(
                "already_subscribed",
                format!("already following {topic}; unsubscribe first to read from another offset"),
            ));
        }
        self.check_room_for_one_more(p, &topic)?;
        authorize_existing_stream(&self.s, p, &topic).await?;
        let key = self.member.join(&p.tenant, &topic);
        let stream = StreamRef { tenant: Arc::clone(&p.tenant), job: job.to_string(), name: name.to_string() };
        let end = match stream.end(&self.s).await {
            Ok(end) => end,
            Err(e) => {
                self.member.leave(&key);
                return Err(e);
            }
        };
        let cursor = StreamCursor::at(offset.unwrap_or(end));
        self.streams.insert(topic.clone(), StreamSub { key, stream, cursor });
        self.catch_up_due.push(topic);
        Ok(json!({ "offset": end }))
    }

    async fn unsubscribe(&mut self, p: &Principal, topic: &str) -> Result<Value, SessionError> {
        let Some(sub) = self.subs.remove(topic) else {
            return Err(SessionError::invalid("not_subscribed", format!("not subscribed to {topic}")));
        };
        self.member.leave(&sub.key);
        self.save(p).await?;
        Ok(json!({}))
    }

    /// Joins a room (with the room's read rules), sets presence if `meta` is
    /// given, and answers with the room's presence.
    async fn join_room(&mut self, p: &Principal, room: &str, meta: Option<Value>) -> Result<Value, SessionError> {
        let joined = self.rooms.contains_key(room);
        if !joined {
            self.check_room_for_one_more(p, room)?;
            authorize(&self.s, p, room).await?;
            self.member.join(&p.tenant, room);
            self.rooms.insert(room.to_string(), None);
        }
        if let Some(meta) = &meta {
            // Keyed by the verified identity, never by the client's word.
            self.member.track(&TopicKey::new(&p.tenant, room), &p.sub, meta.clone());
            self.rooms.insert(room.to_string(), Some(meta.clone()));
        }
        if !joined || meta.is_some() {
            if let Err(e) = self.save(p).await {
                if !joined {
                    self.rooms.remove(room);
                    self.member.leave(&TopicKey::new(&p.tenant, room));
                }
                return Err(e);
            }
        }
        Ok(json!({ "presence": self.s.hub.presence.state(&p.tenant, room) }))
    }

    async fn leave_room(&mut self, p: &Principal, room: &str) -> Result<Value, SessionError> {
        if self.rooms.remove(room).is_none() {
            return Err(SessionError::invalid("not_subscribed", format!("not in {room}")));
        }
        self.member.leave(&TopicKey::new(&p.tenant, room));
        self.save(p).await?;
        Ok(json!({}))
    }

    /// A new token: same tenant and subject, and every topic is checked again.
    async fn refresh(&mut self, p: &Principal, token: &str) -> Result<Value, SessionError> {
        let new = token::refresh(&self.s, p, token).await?;
        let mut dropped = Vec::new();
        let held: Vec<String> = self.subs.keys().chain(self.rooms.keys()).chain(self.streams.keys()).cloned().collect();
        for t in held {
            let allowed = if self.streams.contains_key(&t) {
                authorize_existing_stream(&self.s, &new, &t).await.is_ok()
            } else {
                authorize(&self.s, &new, &t).await.is_ok()
            };
            if !allowed {
                if let Some(sub) = self.subs.remove(&t) {
                    self.member.leave(&sub.key);
                } else if let Some(sub) = self.streams.remove(&t) {
                    self.member.leave(&sub.key);
                } else if self.rooms.remove(&t).is_some() {
                    self.member.leave(&TopicKey::new(&p.tenant, &t));
                }
                dropped.push(t);
            }
        }
        let exp = new.exp;
        self.principal = Some(new);
        if !dropped.is_empty() {
            self.save(p).await?;
        }
        Ok(json!({ "expiresAt": exp, "dropped": dropped }))
    }
}

/// A recovery that could not write to the socket: the client is gone.
fn closed() -> SessionError {
    SessionError::new(crate::session::Refusal::Unavailable, "unavailable", "the connection closed during recovery")
}

fn invalid_namespace(ns: &str) -> SessionError {
    SessionError::invalid("invalid_namespace", format!("Invalid namespace {ns:?}: Herald serves \"/\""))
}

/// `jobs:subscribe` is the tenant's job feed for staff; a customer gets the
/// feed of the jobs it owns.
fn jobs_topic(p: &Principal) -> String {
    match p.role {
        Role::Customer => format!("jobs:owner:{}", p.sub),
        _ => "jobs".to_string(),
    }
}

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Q {
        token: Option<String>,
    }
    crate::transport::http::extract::parse_query::<Q>(query).ok()?.token
}
