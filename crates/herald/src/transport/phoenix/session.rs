//! One Phoenix socket: heartbeats on `phoenix`, channel joins and leaves, token
//! refresh and expiry, broadcast and presence, and `postgres_changes` fed from
//! the hub (live first, then a replay from the log when resuming).

use super::auth::{identify, topics_for, Credential};
use super::changes::{change_data, change_json, Change};
use super::channel::{binding_id, channel_of, parse_join, room_of, Binding, Channel, JoinRequest};
use super::codec::{self, decode_binary, decode_text, encode, encode_raw, reply, Inbound, Out, Vsn};
use super::resume::{ResumeBook, CHECKPOINT_EVERY, CHECKPOINT_REFRESH};
use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::hub::{ConnectionGuard, Delivery, Inbox, Payload, TopicKey};
use crate::model::{Event, Position};
use crate::session::rooms::{self, Broadcast};
use crate::session::CloseReason;
use crate::session::{authorize, head, Membership, Replay, ReplayPage};
use crate::session::{expiry_instant, revocation, Deadline, KeyChanges};
use crate::transport::conn::{self, Batch, Frame, Heartbeat, RateLimit, Read, Sink, Stream, Verdict, Written};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A reason to close the socket, with a message for the log.
type Fatal = (CloseReason, String);

/// The topic of socket-level messages (heartbeats).
const PHOENIX: &str = "phoenix";

/// What the upgrade handed over.
pub struct Opening {
    pub vsn: Vsn,
    pub credential: Credential,
    pub guard: Option<ConnectionGuard>,
}

struct Session {
    s: AppState,
    book: Arc<ResumeBook>,
    vsn: Vsn,
    conn_id: u64,
    base: Credential,
    /// Hub topics, presence and the connection count; given back on drop.
    member: Membership,
    channels: HashMap<String, Channel>,
    /// Hub topic → channels it feeds.
    by_hub: HashMap<String, Vec<String>>,
    /// Opened right after a server start: the client probably lost its place to the restart.
    after_restart: bool,
    /// The client closed the socket on purpose: nothing to resume.
    clean_close: bool,
    /// Channels this socket lost without a leave; their rejoin resumes.
    ended: HashSet<String>,
    /// Excess messages are dropped with a warning; a flood never closes the socket.
    rate: RateLimit,
    /// Changes to the API keys the socket or its channels authenticated with.
    keys: KeyChanges,
}

pub async fn run(socket: WebSocket, s: AppState, book: Arc<ResumeBook>, opening: Opening) {
    let (mut member, mut inbox) = Membership::new(&s, s.limits.outbox_capacity);
    member.adopt(opening.guard);
    let conn_id = member.conn_id();
    let (mut sink, mut stream) = socket.split();
    let young = book.is_young();
    let mut session = Session {
        s: s.clone(),
        book,
        vsn: opening.vsn,
        conn_id,
        base: opening.credential,
        member,
        channels: HashMap::new(),
        by_hub: HashMap::new(),
        after_restart: young,
        clean_close: false,
        ended: HashSet::new(),
        rate: RateLimit::new(s.limits.messages_per_second, None),
        keys: KeyChanges::default(),
    };
    if let Credential::User(p) = &session.base {
        session.keys.follow(&s, p);
        session.member.describe("phoenix", p);
    }
    let reason = session.drive(&mut sink, &mut stream, &mut inbox).await;
    session.cleanup();
    if let Some((reason, message)) = &reason {
        session.member.ending(*reason, message.clone());
    }
    session.member.finish();
    if let Some((reason, message)) = reason {
        tracing::debug!(conn = conn_id, reason = reason.name(), message, "closing Phoenix socket");
        conn::close(&mut sink, &mut stream, None, reason).await;
    }
}

/// Records a refusal for the inspector: Phoenix reasons read `code: message`.
fn record(member: &Membership, reason: &str) {
    match reason.split_once(": ") {
        Some((code, message)) if code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
            member.record_error(code, message)
        }
        _ => member.record_error("error", reason),
    }
}

fn io_err<E>(_: E) -> Fatal {
    (CloseReason::ProtocolError, "write failed".into())
}

impl Session {
    /// The main loop, in the socket's one task (frames are read inline, as in
    /// the native session); returns why the server closes, or `None` if the
    /// client left.
    async fn drive(&mut self, sink: &mut Sink, stream: &mut Stream, inbox: &mut Inbox) -> Option<Fatal> {
        let mut heartbeat = Heartbeat::new(self.s.limits.heartbeat_interval, self.s.limits.heartbeat_timeout);
        let mut shutdown = self.s.shutdown.clone();
        let overflow = inbox.overflow_signal();
        let mut batch = Batch::default();
        let mut deadline = Deadline::default();
        let mut checkpoints = tokio::time::interval(CHECKPOINT_EVERY);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpointing = self.book.is_shared();
        loop {
            deadline.set(self.next_expiry(), expiry_instant);
            tokio::select! {
                biased;
                reason = conn::interrupted(&mut shutdown, &overflow) => return Some((reason, reason.advice().into())),
                _ = deadline.passed(), if deadline.is_armed() => {
                    if let Err(f) = Box::pin(self.expire(sink)).await {
                        return Some(f);
                    }
                }
                changed = self.keys.next(), if self.keys.is_armed() => {
                    if let Err(f) = Box::pin(self.key_changed(sink, changed)).await {
                        return Some(f);
                    }
                }
                msg = stream.next() => {
                    heartbeat.seen();
                    let frame = match conn::read(msg) {
                        Read::Frame(f) => f,
                        Read::Control => continue,
                        Read::Closed { clean } => {
                            self.clean_close = clean;
                            return None;
                        }
                    };
                    // Boxed: a request's future (joins, replays, token checks) is large
                    // and short-lived; inline it would sit in every idle socket's state.
                    if let Err(f) = Box::pin(self.on_inbound(sink, frame)).await {
                        return Some(f);
                    }
                }
                n = batch.recv(inbox) => {
                    if n == 0 {
                        return None;
                    }
                    let mut frames = Vec::new();
                    let mut undo = Vec::new();
                    for d in batch.drain() {
                        self.frames_for(&d, &mut frames, &mut undo);
                    }
                    match conn::write(sink, frames.into_iter().map(out_message), &overflow).await {
                        Written::Sent => {}
                        Written::Failed => {
                            self.rewind(undo);
                            return None;
                        }
                        Written::Overflowed => {
                            self.rewind(undo);
                            return Some((CloseReason::SlowConsumer, "send queue overflowed".into()));
                        }
                    }
                }
                _ = checkpoints.tick(), if checkpointing => self.checkpoint(),
                // A beat that pinged loops on; an `Err` pattern here would disable the arm.
                beat = heartbeat.ping(sink) => {
                    if let Err(dead) = beat {
                        return dead.map(|r| (r, "no message within the heartbeat timeout".into()));
                    }
                }
            }
        }
    }

    async fn send(&self, sink: &mut Sink, frame: Utf8Bytes) -> Result<(), Fatal> {
        sink.send(Message::Text(frame)).await.map_err(io_err)
    }

    /// A socket-level error about a message that could not be read: there is no
    /// channel to answer on, so it goes to `phoenix`, which clients ignore but a
    /// developer sees in the frames.
    async fn socket_error(&self, sink: &mut Sink, reason: String) -> Result<(), Fatal> {
        record(&self.member, &reason);
        self.send(sink, encode(self.vsn, None, None, PHOENIX, "phx_error", &json!({ "reason": reason }))).await
    }

    async fn on_inbound(&mut self, sink: &mut Sink, m: Frame) -> Result<(), Fatal> {
        match self.rate.check() {
            Verdict::Allow => {}
            // No flood tolerance is set, so `Close` never comes; it would drop too.
            Verdict::Drop | Verdict::Close => return Ok(()),
            Verdict::Warn => {
                let limit = self.s.limits.messages_per_second;
                return self
                    .socket_error(sink, format!("rate_limited: over {limit} messages per second; dropped"))
                    .await;
            }
        }
        let len = match &m {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        };
        if len > self.s.limits.ws_max_message {
            let max = self.s.limits.ws_max_message;
            return self.socket_error(sink, format!("frame_too_large: {len} bytes; the limit is {max}")).await;
        }
        let decoded = match m {
            Frame::Text(t) => decode_text(self.vsn, &t),
            Frame::Binary(b) if self.vsn == Vsn::V2 => decode_binary(&b),
            Frame::Binary(_) => {
                return self.socket_error(sink, "binary frames need vsn 2.0.0".into()).await;
            }
        };
        let msg = match decoded {
            Ok(msg) => msg,
            Err(e) => return self.socket_error(sink, format!("invalid frame: {e}")).await,
        };
        self.on_message(sink, msg).await
    }

    async fn reply(&self, sink: &mut Sink, m: &Inbound, status: &str, response: Value) -> Result<(), Fatal> {
        self.send(sink, reply(self.vsn, m.join_ref.as_deref(), m.reference.as_deref(), &m.topic, status, response))
            .await
    }

    async fn refuse(&self, sink: &mut Sink, m: &Inbound, reason: impl Into<String>) -> Result<(), Fatal> {
        let reason = reason.into();
        record(&self.member, &reason);
        self.reply(sink, m, "error", json!({ "reason": reason })).await
    }

    async fn on_message(&mut self, sink: &mut Sink, m: Inbound) -> Result<(), Fatal> {
        if m.topic == PHOENIX {
            return match m.event.as_str() {
                "heartbeat" => self.reply(sink, &m, "ok", json!({})).await,
                other => self.refuse(sink, &m, format!("unknown event {other:?} on phoenix")).await,
            };
        }
        if m.event == "phx_join" {
            return self.join(sink, m).await;
        }
        if !self.channels.contains_key(&m.topic) {
            return self.refuse(sink, &m, "unmatched topic").await;
        }
        match m.event.as_str() {
            "phx_leave" => {
                self.reply(sink, &m, "ok", json!({})).await?;
                if let Some(ch) = self.remove_channel(&m.topic) {
                    self.book.forget(&ch.resume_key(), !ch.checkpointed.is_empty());
                    self.ended.remove(&m.topic);
                    self.send(sink, encode(self.vsn, ch.join_ref.as_deref(), None, &ch.topic, "phx_close", &json!({})))
                        .await?;
                }
                Ok(())
            }
            "broadcast" => self.broadcast(sink, m).await,
            "presence" => self.presence(sink, m).await,
            "access_token" => self.access_token(sink, m).await,
            other => self.refuse(sink, &m, format!("unknown event {other:?}")).await,
        }
    }

    /// The principal of a join: its `access_token`, else the socket's `apikey`.
    /// An anon key joins as a guest of its tenant: rooms work, and rows flow
    /// once an `access_token` arrives (supabase-js joins before its token is
    /// ready and sends it right after).
    async fn principal_for(&self, req: &JoinRequest) -> Result<(Principal, bool), String> {
        let cred = match &req.access_token {
            Some(t) => identify(&self.s, t).await.map_err(|e| match e {
                AuthError::Expired => "token_expired: Token has expired".to_string(),
                e => format!("{}: {e}", e.code()),
            })?,
            None => self.base.clone(),
        };
        match cred {
            Credential::Anon { tenant } => {
                let tenant = tenant.or_else(|| self.base.tenant().map(str::to_string)).ok_or(
                    "unauthorized: this anon key names no tenant; pass a signed-in user's access_token".to_string(),
                )?;
                // Guests too stay in the socket's tenant: its rooms and its connection count.
                if self.base.tenant().is_some_and(|t| t != tenant) || self.member.tenant().is_some_and(|t| t != tenant)
                {
                    return Err("unauthorized: access_token and apikey name different tenants".into());
                }
                let guest = Principal {
                    sub: Arc::from(format!("anon-{}", self.conn_id)),
                    tenant: Arc::from(tenant.as_str()),
                    role: crate::auth::Role::Customer,
                    exp: None,
                    key: None,
                };
                Ok((guest, true))
            }
            Credential::User(p) => {
                if let Some(t) = self.base.tenant() {
                    if t != &*p.tenant {
                        return Err("unauthorized: access_token and apikey name different tenants".into());
                    }
                }
                if self.member.tenant().is_some_and(|t| t != &*p.tenant) {
                    return Err("unauthorized: this socket belongs to another tenant".into());
                }
                Ok((p, false))
            }
        }
    }

    async fn join(&mut self, sink: &mut Sink, m: Inbound) -> Result<(), Fatal> {
        let mut req = match parse_join(&m.payload) {
            Ok(r) => r,
            Err(e) => return self.refuse(sink, &m, format!("invalid_join: {e}")).await,
        };
        for spec in &mut req.bindings {
            if let Err(e) = spec.resolve(&self.s.catalog) {
                return self.refuse(sink, &m, format!("invalid_join: {e}")).await;
            }
        }
        if !self.channels.contains_key(&m.topic) && self.channels.len() >= self.s.limits.max_subscriptions {
            let max = self.s.limits.max_subscriptions;
            return self.refuse(sink, &m, format!("too_many_channels: at most {max} per socket")).await;
        }
        if !m.topic.starts_with(super::channel::PREFIX) || m.topic.len() > 255 {
            return self.refuse(sink, &m, "invalid_topic: channels are realtime:<name>, at most 255 bytes").await;
        }
        let (p, anon) = match self.principal_for(&req).await {
            Ok(p) => p,
            Err(reason) => return self.refuse(sink, &m, reason).await,
        };
        self.keys.follow(&self.s, &p);
        // A guest too: the inspector shows every socket (a user's join renames it).
        if !anon || !self.member.is_described() {
            self.member.describe("phoenix", &p);
        }
        let max_bindings = self.s.limits.max_bindings;
        if req.bindings.len() > max_bindings {
            let reason =
                format!("too_many_bindings: a channel may declare at most {max_bindings} postgres_changes bindings");
            return self.refuse(sink, &m, reason).await;
        }
        let room = room_of(&m.topic);
        // A room named after a job follows the job's read rules, as on the native protocol.
        if room.starts_with("room:job:") {
            if let Err(e) = authorize(&self.s, &p, &room).await {
                return self.refuse(sink, &m, format!("{}: {}", e.code, e.message)).await;
            }
        }
        let mut wanted: HashSet<String> = HashSet::from([room]);
        let mut bindings = Vec::with_capacity(req.bindings.len());
        for (i, spec) in req.bindings.iter().enumerate() {
            let topics = if anon {
                Vec::new()
            } else {
                match topics_for(&self.s, &p, spec).await {
                    Ok(topics) => topics,
                    Err(e) => return self.refuse(sink, &m, e.0).await,
                }
            };
            // Checked binding by binding: every topic costs an authorization
            // lookup and a hub subscription, so stop as soon as the socket's
            // bound is passed rather than after authorizing them all.
            wanted.extend(topics.iter().cloned());
            if let Err(e) = self.member.check_room_for(&p.tenant, wanted.iter().map(String::as_str)) {
                return self.refuse(sink, &m, format!("{}: {}", e.code, e.message)).await;
            }
            bindings.push(Binding { id: binding_id(i, spec), spec: spec.clone(), topics });
        }
        if let Err(e) = self.member.connect(&p.tenant) {
            return self.refuse(sink, &m, format!("too_many_connections: {}", e.message)).await;
        }
        // A second join of a topic replaces the first, as in Phoenix.
        let previous = self.remove_channel(&m.topic);
        let rejoin = previous.is_some() || self.ended.contains(&m.topic);
        if let Some(prev) = previous {
            self.book.save(prev.resume_key(), prev.feeds);
        }
        let mut feeds = HashMap::new();
        for b in &bindings {
            for t in &b.topics {
                feeds.insert(t.clone(), Position::ZERO);
            }
        }
        let ch = Channel {
            topic: m.topic.clone(),
            join_ref: m.join_ref.clone(),
            principal: p,
            room: room_of(&m.topic),
            request: req,
            bindings,
            feeds,
            checkpointed: HashMap::new(),
            checkpointed_at: None,
            presence_synced: false,
            tracked: false,
            anon,
        };
        let resume = self.resume_points(&ch, rejoin).await;
        for t in ch.hub_topics() {
            self.member.join(&ch.principal.tenant, &t);
            self.by_hub.entry(t).or_default().push(ch.topic.clone());
        }
        let echo: Vec<Value> = ch
            .bindings
            .iter()
            .map(|b| {
                let mut e = b.spec.echo.clone();
                e.insert("id".into(), json!(b.id));
                Value::Object(e)
            })
            .collect();
        let topic = ch.topic.clone();
        let presence = ch.request.presence_enabled;
        let has_changes = !ch.bindings.is_empty();
        let has_feeds = !ch.feeds.is_empty();
        // From here the channel owns its hub subscriptions: whatever fails below,
        // `remove_channel` or the socket's cleanup takes them back.
        self.channels.insert(topic.clone(), ch);
        self.ended.remove(&topic);
        if has_feeds {
            // Subscribed first, then the head: a fresh feed starts live at the head
            // (nothing older is replayed); a resumed one at its resume point.
            let head = match head(&self.s).await {
                Ok(h) => h,
                Err(e) => {
                    self.remove_channel(&topic);
                    return self.refuse(sink, &m, format!("unavailable: {}", e.message)).await;
                }
            };
            if let Some(ch) = self.channels.get_mut(&topic) {
                for (t, cursor) in ch.feeds.iter_mut() {
                    *cursor = resume.iter().find(|(r, _)| r == t).map_or(head, |(_, since)| *since);
                }
                // Where it starts is stored at once: its node may die before the first tick.
                if self.book.is_shared() && self.book.checkpoint(&ch.resume_key(), &ch.feeds) {
                    ch.checkpointed.clone_from(&ch.feeds);
                    ch.checkpointed_at = Some(Instant::now());
                }
            }
        }
        self.reply(sink, &m, "ok", json!({ "postgres_changes": echo })).await?;
        if presence {
            self.send_presence_state(sink, &topic).await?;
        }
        if has_changes {
            let sub = topic.strip_prefix(super::channel::PREFIX).unwrap_or(&topic).to_string();
            let msg = json!({ "status": "ok", "message": "Subscribed to PostgreSQL", "extension": "postgres_changes", "channel": sub });
            self.send(sink, encode(self.vsn, m.join_ref.as_deref(), None, &topic, "system", &msg)).await?;
        }
        for (hub_topic, since) in resume {
            self.replay(sink, &topic, &hub_topic, since).await?;
        }
        Ok(())
    }

    /// Where each Herald topic of a new channel resumes: an explicit `since` in a
    /// binding, else the position the book kept for a channel like it that was
    /// lost, else — on a socket opened just after a server start — the head at
    /// that start.
    async fn resume_points(&self, ch: &Channel, rejoin: bool) -> Vec<(String, Position)> {
        let mut points: HashMap<String, Position> = HashMap::new();
        for b in &ch.bindings {
            if let Some(since) = b.spec.since.map(Position::from_u64) {
                for t in &b.topics {
                    let p = points.entry(t.clone()).or_insert(since);
                    *p = (*p).min(since);
                }
            }
        }
        {
            let kept = self.book.lookup(&ch.resume_key()).await;
            let floor = if self.after_restart && !rejoin { self.book.startup_head.get().copied() } else { None };
            for t in ch.feeds.keys() {
                if points.contains_key(t) {
                    continue;
                }
                if let Some(p) = kept.as_ref().and_then(|k| k.get(t).copied()).or(floor) {
                    points.insert(t.clone(), p);
                }
            }
        }
        let mut v: Vec<(String, Position)> = points.into_iter().collect();
        v.sort();
        v
    }

    /// Sends the events after `since` on `hub_topic` that the channel's bindings
    /// want, page by page; live deliveries queued meanwhile are deduplicated by
    /// position afterwards.
    async fn replay(&mut self, sink: &mut Sink, topic: &str, hub_topic: &str, since: Position) -> Result<(), Fatal> {
        let Some(tenant) = self.channels.get(topic).map(|c| Arc::clone(&c.principal.tenant)) else { return Ok(()) };
        // An index topic has no rows in the log: its table's topic has, and the
        // binding's own filter picks its rows out of those.
        let log_topic = crate::hub::index::log_topic(hub_topic);
        let mut replay = Replay::new(tenant, vec![log_topic.to_string()], since);
        loop {
            let page = match replay.next_page(&self.s).await {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let msg = json!({ "status": "error", "extension": "postgres_changes",
                        "message": format!("resume from {since} failed: {}", e.message) });
                    return self.system(sink, topic, msg).await;
                }
            };
            let events = match page {
                ReplayPage::Behind { head } => {
                    if let Some(last) = self.channels.get_mut(topic).and_then(|c| c.feeds.get_mut(hub_topic)) {
                        *last = (*last).max(head);
                    }
                    let msg = json!({ "status": "error", "extension": "postgres_changes",
                        "message": format!("changes after position {since} are older than the retention; reload the rows") });
                    return self.system(sink, topic, msg).await;
                }
                ReplayPage::Events(events) => events,
            };
            let page_start = self.channels.get(topic).and_then(|c| c.feeds.get(hub_topic).copied());
            let written = async {
                for e in &events {
                    let Some(ch) = self.channels.get_mut(topic) else { return Ok(()) };
                    let data = change_json(e, &self.s.catalog);
                    if let Some(frame) = change_frame(self.vsn, ch, hub_topic, e, &data) {
                        sink.feed(Message::Text(Utf8Bytes::from(frame))).await?;
                    }
                }
                sink.flush().await
            }
            .await;
            if let Err(e) = written {
                // Not written, not delivered: the rejoin resumes from this page again.
                if let (Some(start), Some(cursor)) =
                    (page_start, self.channels.get_mut(topic).and_then(|c| c.feeds.get_mut(hub_topic)))
                {
                    *cursor = start;
                }
                return Err(io_err(e));
            }
        }
    }

    async fn system(&self, sink: &mut Sink, topic: &str, msg: Value) -> Result<(), Fatal> {
        let join_ref = self.channels.get(topic).and_then(|c| c.join_ref.clone());
        self.send(sink, encode(self.vsn, join_ref.as_deref(), None, topic, "system", &msg)).await
    }

    async fn send_presence_state(&mut self, sink: &mut Sink, topic: &str) -> Result<(), Fatal> {
        let Some(ch) = self.channels.get_mut(topic) else { return Ok(()) };
        ch.presence_synced = true;
        let state = self.s.hub.presence.state(&ch.principal.tenant, &ch.room);
        let frame = encode(self.vsn, ch.join_ref.as_deref(), None, topic, "presence_state", &state);
        self.send(sink, frame).await
    }

    async fn broadcast(&mut self, sink: &mut Sink, m: Inbound) -> Result<(), Fatal> {
        let Some(ch) = self.channels.get(&m.topic) else { return Ok(()) };
        let event = match m.payload.get("event") {
            Some(Value::String(e)) if rooms::check_event_name(e).is_ok() => e.clone(),
            _ => return self.refuse(sink, &m, "invalid_broadcast: payload.event must be 1 to 256 bytes").await,
        };
        let data = m.payload.get("payload").cloned().unwrap_or(Value::Null);
        let Ok(data) = serde_json::value::to_raw_value(&data) else {
            return self.refuse(sink, &m, "invalid_broadcast: payload is not serializable").await;
        };
        let sender = (!ch.request.broadcast_self).then_some(self.conn_id);
        let ack = ch.request.broadcast_ack;
        let b = Broadcast {
            tenant: Arc::clone(&ch.principal.tenant),
            topic: ch.room.clone(),
            event,
            data,
            sender,
            from: Arc::clone(&ch.principal.sub),
        };
        if let Err(e) = rooms::publish(&self.s, b) {
            return self.refuse(sink, &m, format!("invalid_broadcast: {}", e.message)).await;
        }
        if ack {
            self.reply(sink, &m, "ok", json!({})).await?;
        }
        Ok(())
    }

    async fn presence(&mut self, sink: &mut Sink, m: Inbound) -> Result<(), Fatal> {
        let event = m.payload.get("event").and_then(Value::as_str).unwrap_or("");
        match event {
            "track" => {
                let meta = m.payload.get("payload").cloned().unwrap_or_else(|| json!({}));
                if !meta.is_object() {
                    return self.refuse(sink, &m, "invalid_presence: payload must be an object").await;
                }
                if self.channels.get(&m.topic).is_some_and(|c| !c.presence_synced) {
                    self.send_presence_state(sink, &m.topic).await?;
                }
                let Some(ch) = self.channels.get_mut(&m.topic) else { return Ok(()) };
                ch.tracked = true;
                let room = TopicKey::new(&ch.principal.tenant, &ch.room);
                self.member.track(&room, ch.presence_key(), meta);
                self.reply(sink, &m, "ok", json!({})).await
            }
            "untrack" => {
                if let Some(ch) = self.channels.get_mut(&m.topic) {
                    ch.tracked = false;
                    self.member.untrack(&TopicKey::new(&ch.principal.tenant, &ch.room));
                }
                self.reply(sink, &m, "ok", json!({})).await
            }
            other => {
                self.refuse(sink, &m, format!("invalid_presence: unknown event {other:?}; track or untrack")).await
            }
        }
    }

    /// A new token for a joined channel: same tenant and sub; every Herald topic
    /// feeding the channel is authorized again, and the channel ends if one is not.
    async fn access_token(&mut self, sink: &mut Sink, m: Inbound) -> Result<(), Fatal> {
        let Some(token) = m.payload.get("access_token").and_then(Value::as_str) else {
            return self.refuse(sink, &m, "invalid_token: payload.access_token must be a string").await;
        };
        let Some(old) = self.channels.get(&m.topic).map(|c| c.principal.clone()) else { return Ok(()) };
        let new = match identify(&self.s, token).await {
            Ok(Credential::User(p)) => p,
            Ok(Credential::Anon { .. }) => {
                return self.end_channel(sink, &m.topic, "the anon role may not hold a channel").await;
            }
            Err(AuthError::Expired) => return self.end_channel(sink, &m.topic, "Token has expired").await,
            Err(e) => return self.refuse(sink, &m, format!("{}: {e}", e.code())).await,
        };
        let was_anon = self.channels.get(&m.topic).is_some_and(|c| c.anon);
        if new.tenant != old.tenant {
            return self.refuse(sink, &m, "invalid_token: a refreshed token must keep the tenant").await;
        }
        self.keys.follow(&self.s, &new);
        if was_anon {
            return self.upgrade_guest(sink, m, new).await;
        }
        if new.sub != old.sub {
            return self.refuse(sink, &m, "invalid_token: a refreshed token must keep the sub").await;
        }
        let topics: Vec<String> =
            self.channels.get(&m.topic).map(|c| c.feeds.keys().cloned().collect()).unwrap_or_default();
        for t in topics {
            // An index topic is read with its table topic's rights.
            if let Err(e) = authorize(&self.s, &new, crate::hub::index::log_topic(&t)).await {
                return self.end_channel(sink, &m.topic, &format!("access to {t} ended: {}", e.message)).await;
            }
        }
        self.keys.follow(&self.s, &new);
        if let Some(ch) = self.channels.get_mut(&m.topic) {
            ch.principal = new;
        }
        self.reply(sink, &m, "ok", json!({})).await
    }

    /// A guest channel gets a user's token: its bindings are authorized now and
    /// start receiving rows.
    async fn upgrade_guest(&mut self, sink: &mut Sink, m: Inbound, p: Principal) -> Result<(), Fatal> {
        let specs: Vec<_> = self
            .channels
            .get(&m.topic)
            .map(|c| c.bindings.iter().map(|b| b.spec.clone()).collect())
            .unwrap_or_default();
        let mut all = Vec::with_capacity(specs.len());
        for spec in &specs {
            match topics_for(&self.s, &p, spec).await {
                Ok(t) => all.push(t),
                Err(e) => return self.end_channel(sink, &m.topic, &e.0).await,
            }
        }
        let tenant = Arc::clone(&p.tenant);
        if let Err(e) = self.member.check_room_for(&tenant, all.iter().flatten().map(String::as_str)) {
            return self.end_channel(sink, &m.topic, &format!("{}: {}", e.code, e.message)).await;
        }
        let Some(ch) = self.channels.get_mut(&m.topic) else { return Ok(()) };
        ch.principal = p;
        ch.anon = false;
        for (b, topics) in ch.bindings.iter_mut().zip(all) {
            for t in &topics {
                if !ch.feeds.contains_key(t) {
                    ch.feeds.insert(t.clone(), Position::ZERO);
                    self.member.join(&ch.principal.tenant, t);
                    self.by_hub.entry(t.clone()).or_default().push(ch.topic.clone());
                }
            }
            b.topics = topics;
        }
        self.reply(sink, &m, "ok", json!({})).await
    }

    /// Ends a channel from the server side: a `system` error, then `phx_close`.
    async fn end_channel(&mut self, sink: &mut Sink, topic: &str, message: &str) -> Result<(), Fatal> {
        let sub = topic.strip_prefix(super::channel::PREFIX).unwrap_or(topic).to_string();
        let msg = json!({ "status": "error", "extension": "system", "message": message, "channel": sub });
        self.system(sink, topic, msg).await?;
        if let Some(ch) = self.remove_channel(topic) {
            self.book.save(ch.resume_key(), ch.feeds.clone());
            self.ended.insert(topic.to_string());
            self.send(sink, encode(self.vsn, ch.join_ref.as_deref(), None, topic, "phx_close", &json!({}))).await?;
        }
        Ok(())
    }

    /// The earliest token expiry among the joined channels.
    fn next_expiry(&self) -> Option<u64> {
        let base = match &self.base {
            Credential::User(p) => p.exp,
            Credential::Anon { .. } => None,
        };
        self.channels.values().filter_map(|c| c.principal.exp).chain(base).min()
    }

    /// An API key was revoked or given an expiry: a socket that connected with
    /// it closes; channels that joined with it end, or take its new expiry.
    async fn key_changed(&mut self, sink: &mut Sink, changed: revocation::Changed) -> Result<(), Fatal> {
        if let Credential::User(p) = &mut self.base {
            if changed.concerns(p) {
                if let Err(e) = revocation::recheck(&self.s, p).await {
                    let reason =
                        if e == AuthError::Expired { CloseReason::TokenExpired } else { CloseReason::AuthFailed };
                    return Err((reason, e.to_string()));
                }
            }
        }
        let held: Vec<String> =
            self.channels.values().filter(|c| changed.concerns(&c.principal)).map(|c| c.topic.clone()).collect();
        for topic in held {
            let Some(ch) = self.channels.get_mut(&topic) else { continue };
            if let Err(e) = revocation::recheck(&self.s, &mut ch.principal).await {
                let message = if e == AuthError::Expired { "Token has expired".to_string() } else { e.to_string() };
                self.end_channel(sink, &topic, &message).await?;
            }
        }
        Ok(())
    }

    async fn expire(&mut self, sink: &mut Sink) -> Result<(), Fatal> {
        let now = (crate::model::time::now_ms() / 1000) as u64;
        // The socket's own credential (a rotated key's grace, say) ends the socket.
        if let Credential::User(p) = &self.base {
            if p.exp.is_some_and(|e| e <= now) {
                return Err((CloseReason::TokenExpired, "the socket's token expired".into()));
            }
        }
        let expired: Vec<String> = self
            .channels
            .values()
            .filter(|c| c.principal.exp.is_some_and(|e| e <= now))
            .map(|c| c.topic.clone())
            .collect();
        for t in expired {
            self.end_channel(sink, &t, "Token has expired").await?;
        }
        Ok(())
    }

    /// Drops a channel: its presence, and the hub topics nobody else here needs.
    fn remove_channel(&mut self, topic: &str) -> Option<Channel> {
        let ch = self.channels.remove(topic)?;
        if ch.tracked {
            self.member.untrack(&TopicKey::new(&ch.principal.tenant, &ch.room));
        }
        for t in ch.hub_topics() {
            if let Some(list) = self.by_hub.get_mut(&t) {
                list.retain(|c| c != topic);
                if list.is_empty() {
                    self.by_hub.remove(&t);
                }
            }
            self.member.leave(&TopicKey::new(&ch.principal.tenant, &t));
        }
        Some(ch)
    }

    /// Puts feed cursors back to where they were before a batch that was not written.
    fn rewind(&mut self, undo: Vec<(String, Arc<str>, Position)>) {
        for (channel, hub_topic, before) in undo {
            if let Some(cursor) = self.channels.get_mut(&channel).and_then(|c| c.feeds.get_mut(&*hub_topic)) {
                *cursor = before;
            }
        }
    }

    /// Frames of one delivery for every channel of this socket it concerns.
    /// `undo` collects each feed's cursor before this batch first moved it, so a
    /// batch that never reaches the client does not count as delivered.
    fn frames_for(&mut self, d: &Arc<Delivery>, out: &mut Vec<Out>, undo: &mut Vec<(String, Arc<str>, Position)>) {
        let Some(targets) = self.by_hub.get(&*d.topic) else { return };
        match &d.payload {
            Payload::Event(e) => {
                let Some(data) = change_data(d, &self.s.catalog) else { return };
                for t in targets {
                    let Some(ch) = self.channels.get_mut(t) else { continue };
                    let before = ch.feeds.get(&*d.topic).copied();
                    if let Some(f) = change_frame(self.vsn, ch, &d.topic, e, &data) {
                        out.push(Out::Text(Utf8Bytes::from(f)));
                    }
                    if let Some(before) = before.filter(|b| ch.feeds.get(&*d.topic) != Some(b)) {
                        if !undo.iter().any(|(c, h, _)| c == t && *h == d.topic) {
                            undo.push((t.clone(), Arc::clone(&d.topic), before));
                        }
                    }
                }
            }
            Payload::Broadcast { event, data, sender, .. } => {
                if *sender == Some(self.conn_id) {
                    return;
                }
                let topic = channel_of(&d.topic);
                let frame = match self.vsn {
                    Vsn::V2 => match codec::broadcast_binary(&topic, event, data.get()) {
                        Some(b) => Out::Binary(b),
                        None => Out::Text(broadcast_text(d, Vsn::V2, &topic, event, data.get())),
                    },
                    Vsn::V1 => Out::Text(broadcast_text(d, Vsn::V1, &topic, event, data.get())),
                };
                if targets.iter().any(|t| self.channels.contains_key(t)) {
                    out.push(frame);
                }
            }
            // Channels cannot join job output streams (`authorize` refuses them).
            Payload::Chunks { .. } => {}
            Payload::PresenceDiff { joins, leaves } => {
                let topic = channel_of(&d.topic);
                if !targets.iter().any(|t| self.channels.get(t).is_some_and(|c| c.presence_synced)) {
                    return;
                }
                let vsn = self.vsn;
                let slot = codec::frames_slot(vsn);
                let frame = d.frame(slot, |_| -> Utf8Bytes {
                    Utf8Bytes::from(encode_raw(
                        vsn,
                        None,
                        None,
                        &topic,
                        "presence_diff",
                        &json!({ "joins": joins, "leaves": leaves }).to_string(),
                    ))
                });
                out.push(Out::Text(frame));
            }
        }
    }

    /// Stores the position of every channel that moved since the last tick
    /// (in a cluster): what a channel resumes from if this node dies.
    fn checkpoint(&mut self) {
        for ch in self.channels.values_mut() {
            let stale = ch.checkpointed_at.is_none_or(|at| at.elapsed() >= CHECKPOINT_REFRESH);
            if (ch.feeds != ch.checkpointed || stale) && self.book.checkpoint(&ch.resume_key(), &ch.feeds) {
                ch.checkpointed.clone_from(&ch.feeds);
                ch.checkpointed_at = Some(Instant::now());
            }
        }
    }

    fn cleanup(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for t in topics {
            if let Some(ch) = self.remove_channel(&t) {
                if self.clean_close {
                    self.book.forget(&ch.resume_key(), !ch.checkpointed.is_empty());
                } else {
                    self.book.save(ch.resume_key(), ch.feeds.clone());
                }
            }
        }
        self.member.clear();
    }
}

/// The text frame of a broadcast, shared by every subscriber on the same
/// serializer (v2 uses it only when the binary form cannot hold the topic).
fn broadcast_text(d: &Delivery, vsn: Vsn, topic: &str, event: &str, data: &str) -> Utf8Bytes {
    let slot = codec::frames_slot(vsn);
    d.frame(slot, |_| {
        let payload = format!(r#"{{"type":"broadcast","event":{},"payload":{data}}}"#, Value::from(event));
        Utf8Bytes::from(encode_raw(vsn, None, None, topic, "broadcast", &payload))
    })
}

/// The `postgres_changes` message of an event for one channel, if one of its
/// bindings fed by `hub_topic` wants it and it was not sent before.
fn change_frame(vsn: Vsn, ch: &mut Channel, hub_topic: &str, e: &Event, data: &str) -> Option<String> {
    let last = ch.feeds.get_mut(hub_topic)?;
    if e.position <= *last {
        return None;
    }
    *last = e.position;
    let change = Change::of(e);
    let ids: Vec<u32> = ch
        .bindings
        .iter()
        .filter(|b| b.topics.iter().any(|t| t == hub_topic) && change.matches(&b.spec))
        .map(|b| b.id)
        .collect();
    if ids.is_empty() {
        return None;
    }
    let payload = format!(r#"{{"ids":{},"data":{data}}}"#, json!(ids));
    Some(encode_raw(vsn, ch.join_ref.as_deref(), None, &ch.topic, "postgres_changes", &payload))
}

fn out_message(o: Out) -> Message {
    match o {
        Out::Text(t) => Message::Text(t),
        Out::Binary(b) => Message::Binary(b),
    }
}

/// Records the head of the log at startup, the fallback resume point of clients
/// that reconnect after a restart. An empty log has no returning clients.
pub async fn record_startup_head(s: AppState, book: Arc<ResumeBook>) {
    for _ in 0..50 {
        if let Ok(h) = head(&s).await {
            if h > Position::ZERO {
                let _ = book.startup_head.set(h);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
