//! A connection's place in the hub: the topics it receives, the rooms where it
//! is present, and its count against the tenant's connection limit. Dropping
//! it gives everything back — whichever way the connection ended (a close, an
//! error, a panic in its task) — so nothing a closed connection took stays in
//! the hub.

use super::error::SessionError;
use super::CloseReason;
use crate::app::AppState;
use crate::auth::Principal;
use crate::hub::registry::{Closed, ConnInfo, Refused};
use crate::hub::{outbox, ConnectionGuard, Inbox, Outbox, Payload, TopicKey};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

pub struct Membership {
    s: AppState,
    outbox: Outbox,
    /// Hub topic → how many of this connection's subscriptions use it (one
    /// hub subscription however many channels or bindings share the topic).
    topics: HashMap<TopicKey, u32>,
    /// Rooms where this connection has set presence.
    present: HashSet<TopicKey>,
    guard: Option<ConnectionGuard>,
    /// Who this connection is, once it has said (shown by the inspector).
    described: Option<ConnInfo>,
    /// Why the server ends it, when it does; `None`: the client left.
    end: Option<(CloseReason, String)>,
}

impl Membership {
    /// A new connection's membership (holding nothing yet) and the queue its
    /// deliveries arrive on.
    pub fn new(s: &AppState, capacity: usize) -> (Membership, Inbox) {
        let (out, inbox) = outbox(s.hub.next_id(), capacity);
        let m = Membership {
            s: s.clone(),
            outbox: out,
            topics: HashMap::new(),
            present: HashSet::new(),
            guard: None,
            described: None,
            end: None,
        };
        (m, inbox)
    }

    /// Says who the connection is and over which transport, for the inspector
    /// (again when its identity changes, e.g. a guest that signs in).
    pub fn describe(&mut self, transport: &'static str, p: &Principal) {
        let same = self.described.as_ref().is_some_and(|d| d.sub == p.sub && d.tenant == p.tenant);
        if same {
            return;
        }
        let info = ConnInfo {
            tenant: std::sync::Arc::clone(&p.tenant),
            transport,
            sub: std::sync::Arc::clone(&p.sub),
            role: p.role.as_str(),
            connected_at: self.described.as_ref().map_or_else(crate::model::time::now_ms, |d| d.connected_at),
            stats: std::sync::Arc::clone(self.outbox.stats()),
        };
        self.s.hub.registry.add(self.conn_id(), info.clone());
        self.described = Some(info);
    }

    pub fn is_described(&self) -> bool {
        self.described.is_some()
    }

    /// Records an error this connection was sent (shown by the inspector).
    pub fn record_error(&self, code: &str, message: &str) {
        let Some(info) = &self.described else { return };
        self.s.hub.registry.record_error(Refused {
            at: crate::model::time::format_ms(crate::model::time::now_ms()),
            tenant: std::sync::Arc::clone(&info.tenant),
            transport: info.transport,
            sub: info.sub.to_string(),
            code: code.to_string(),
            message: message.chars().take(500).collect(),
        });
    }

    /// Records why the server ends this connection (shown by the inspector).
    pub fn ending(&mut self, reason: CloseReason, message: impl Into<String>) {
        self.end = Some((reason, message.into()));
    }

    /// The connection is over: it leaves the inspector's list, its end (the
    /// reason given to [`ending`](Self::ending), else "the client left") is
    /// recorded. Runs once; dropping the membership runs it too.
    pub fn finish(&mut self) {
        let Some(info) = self.described.take() else { return };
        self.s.hub.registry.remove(self.conn_id());
        let now = crate::model::time::now_ms();
        let slow_consumer = matches!(self.end, Some((CloseReason::SlowConsumer, _)));
        let (reason, code, message) = match self.end.take() {
            Some((r, m)) => (r.name(), Some(r.code()), m),
            None => ("client", None, String::new()),
        };
        self.s.hub.registry.record_close(
            Closed {
                at: crate::model::time::format_ms(now),
                tenant: info.tenant,
                transport: info.transport,
                sub: info.sub.to_string(),
                reason,
                code,
                message,
                lived_ms: now - info.connected_at,
            },
            slow_consumer,
        );
    }

    pub fn conn_id(&self) -> u64 {
        self.outbox.conn_id
    }

    /// Counts the connection against its tenant's limit (once; later calls keep
    /// the first tenant).
    pub fn connect(&mut self, tenant: &str) -> Result<(), SessionError> {
        if self.guard.is_none() {
            let guard =
                self.s.hub.connect(tenant).map_err(|e| SessionError::limit("too_many_connections", e.to_string()))?;
            self.guard = Some(guard);
        }
        Ok(())
    }

    /// Takes a connection slot counted elsewhere (e.g. at the HTTP upgrade).
    pub fn adopt(&mut self, guard: Option<ConnectionGuard>) {
        if self.guard.is_none() {
            self.guard = guard;
        }
    }

    /// The tenant this connection is counted in, if it is.
    pub fn tenant(&self) -> Option<&str> {
        self.guard.as_ref().map(|g| &*g.tenant)
    }

    /// Starts receiving `topic`; the first use subscribes the hub. Progress
    /// ticks may supersede each other while the connection is behind.
    pub fn join(&mut self, tenant: &str, topic: &str) -> TopicKey {
        self.join_with(tenant, topic, true)
    }

    /// [`join`](Self::join), choosing whether this subscription's progress
    /// ticks may be conflated; one that wants every tick wins for the topic.
    pub fn join_with(&mut self, tenant: &str, topic: &str, conflate: bool) -> TopicKey {
        let key = TopicKey::new(tenant, topic);
        let uses = self.topics.entry(key.clone()).or_insert(0);
        *uses += 1;
        if *uses == 1 || !conflate {
            // Subscribing again replaces the hub's entry: the flag changes, the counts do not.
            self.s.hub.subscribe(&key, self.outbox.conflating(conflate));
            self.outbox.stats().topics.store(self.topics.len(), Ordering::Relaxed);
        }
        key
    }

    /// Stops one use of `topic`; the last one unsubscribes the hub and ends
    /// this connection's presence there.
    pub fn leave(&mut self, key: &TopicKey) {
        let Some(uses) = self.topics.get_mut(key) else { return };
        *uses -= 1;
        if *uses == 0 {
            self.topics.remove(key);
            self.outbox.stats().topics.store(self.topics.len(), Ordering::Relaxed);
            self.s.hub.unsubscribe(key, self.conn_id());
            self.untrack(key);
        }
    }

    /// Checks that receiving `topics` (of `tenant`) too stays within the
    /// connection's bound on hub topics; topics it already receives are free.
    pub fn check_room_for<'a>(
        &self,
        tenant: &str,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SessionError> {
        let max = self.s.limits.max_topics_per_connection;
        let mut new = std::collections::HashSet::new();
        for t in topics {
            if !self.topics.contains_key(&TopicKey::new(tenant, t)) {
                new.insert(t);
            }
        }
        if self.topics.len() + new.len() > max {
            return Err(SessionError::limit(
                "too_many_subscriptions",
                format!("a connection may receive at most {max} topics"),
            ));
        }
        Ok(())
    }

    /// Whether this connection receives `key`.
    pub fn has(&self, key: &TopicKey) -> bool {
        self.topics.contains_key(key)
    }

    /// Hub subscriptions held.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Sets this connection's presence in a room under `key` (the verified
    /// identity) and announces the change.
    pub fn track(&mut self, room: &TopicKey, key: &str, meta: Value) {
        let diff = self.s.hub.presence.track(&room.tenant, &room.topic, self.conn_id(), key, meta);
        self.present.insert(room.clone());
        self.s.broker.publish(
            &room.tenant,
            &room.topic,
            Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves },
        );
    }

    /// Removes this connection's presence from a room and announces it.
    pub fn untrack(&mut self, room: &TopicKey) {
        if !self.present.remove(room) {
            return;
        }
        if let Some(diff) = self.s.hub.presence.untrack(&room.tenant, &room.topic, self.conn_id()) {
            self.s.broker.publish(
                &room.tenant,
                &room.topic,
                Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves },
            );
        }
    }

    /// Gives back every hub subscription and presence entry (also done on drop).
    pub fn clear(&mut self) {
        // Presence first: leaves go out while the rooms still have their members.
        for room in self.present.clone() {
            self.untrack(&room);
        }
        for (key, _) in self.topics.drain() {
            self.s.hub.unsubscribe(&key, self.outbox.conn_id);
        }
        self.outbox.stats().topics.store(0, Ordering::Relaxed);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.clear();
        self.finish();
    }
}
