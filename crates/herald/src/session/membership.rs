//! A connection's place in the hub: the topics it receives, the rooms where it
//! is present, and its count against the tenant's connection limit. Dropping
//! it gives everything back — whichever way the connection ended (a close, an
//! error, a panic in its task) — so nothing a closed connection took stays in
//! the hub.

use super::error::SessionError;
use crate::app::AppState;
use crate::hub::{outbox, ConnectionGuard, Inbox, Outbox, Payload, TopicKey};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

pub struct Membership {
    s: AppState,
    outbox: Outbox,
    /// Hub topic → how many of this connection's subscriptions use it (one
    /// hub subscription however many channels or bindings share the topic).
    topics: HashMap<TopicKey, u32>,
    /// Rooms where this connection has set presence.
    present: HashSet<TopicKey>,
    guard: Option<ConnectionGuard>,
}

impl Membership {
    /// A new connection's membership (holding nothing yet) and the queue its
    /// deliveries arrive on.
    pub fn new(s: &AppState, capacity: usize) -> (Membership, Inbox) {
        let (out, inbox) = outbox(s.hub.next_id(), capacity);
        let m = Membership { s: s.clone(), outbox: out, topics: HashMap::new(), present: HashSet::new(), guard: None };
        (m, inbox)
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

    /// Starts receiving `topic`; the first use subscribes the hub.
    pub fn join(&mut self, tenant: &str, topic: &str) -> TopicKey {
        let key = TopicKey::new(tenant, topic);
        let uses = self.topics.entry(key.clone()).or_insert(0);
        if *uses == 0 {
            self.s.hub.subscribe(&key, self.outbox.clone());
        }
        *uses += 1;
        key
    }

    /// Stops one use of `topic`; the last one unsubscribes the hub and ends
    /// this connection's presence there.
    pub fn leave(&mut self, key: &TopicKey) {
        let Some(uses) = self.topics.get_mut(key) else { return };
        *uses -= 1;
        if *uses == 0 {
            self.topics.remove(key);
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
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.clear();
    }
}
