//! The hub: topics → subscribers, sharded by topic; presence and per-tenant
//! connection accounting beside. Publishing is a hash lookup and a non-blocking
//! push per subscriber; it never waits on one.

pub mod delivery;
pub mod index;
pub mod outbox;
pub mod presence;
pub mod registry;

pub use delivery::{Delivery, Payload, WireFormat};
pub use outbox::{outbox, Inbox, Outbox, OverflowSignal};

use crate::model::Event;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SHARDS: usize = 64;

/// A topic within a tenant: the routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub tenant: Arc<str>,
    pub topic: Arc<str>,
}

impl TopicKey {
    pub fn new(tenant: &str, topic: &str) -> TopicKey {
        TopicKey { tenant: Arc::from(tenant), topic: Arc::from(topic) }
    }
}

#[derive(Default)]
struct Shard {
    topics: HashMap<TopicKey, HashMap<u64, Outbox>>,
}

/// Live connection and subscription counts of one tenant.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TenantCounts {
    pub connections: u64,
    pub subscriptions: u64,
}

/// Refused because a limit was reached.
#[derive(Debug, thiserror::Error)]
#[error("tenant has {0} connections, the configured maximum")]
pub struct TooManyConnections(pub u64);

/// Shared routing state; clone the `Arc<Hub>`.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    next_conn: AtomicU64,
    tenants: Mutex<HashMap<Arc<str>, TenantCounts>>,
    /// Members of presence rooms.
    pub presence: presence::Presence,
    /// This node's live connections and recent closes, for the inspector.
    pub registry: registry::Registry,
    /// Most connections one tenant may hold (0 = unlimited).
    max_connections_per_tenant: u64,
    /// Which columns of which captured tables have equality subscribers.
    indexes: index::Indexes,
    /// In a cluster: the counts each other node last reported, per tenant.
    remote_counts: Mutex<HashMap<String, HashMap<String, TenantCounts>>>,
}

impl Hub {
    pub fn new(max_connections_per_tenant: u64) -> Arc<Hub> {
        register_metrics();
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            next_conn: AtomicU64::new(1),
            tenants: Mutex::new(HashMap::new()),
            presence: presence::Presence::default(),
            registry: registry::Registry::default(),
            max_connections_per_tenant,
            indexes: index::Indexes::default(),
            remote_counts: Mutex::default(),
        })
    }

    fn shard(&self, key: &TopicKey) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Counts a new connection of `tenant`, or refuses it at the tenant's limit.
    /// In a cluster the limit counts every node (as their last reports say).
    pub fn connect(self: &Arc<Self>, tenant: &str) -> Result<ConnectionGuard, TooManyConnections> {
        let elsewhere = if self.max_connections_per_tenant > 0 { self.remote_connections(tenant) } else { 0 };
        let mut tenants = self.tenants.lock();
        let counts = tenants.entry(Arc::from(tenant)).or_default();
        let total = counts.connections + elsewhere;
        if self.max_connections_per_tenant > 0 && total >= self.max_connections_per_tenant {
            return Err(TooManyConnections(total));
        }
        counts.connections += 1;
        drop(tenants);
        metrics::gauge!("herald_connections").increment(1.0);
        Ok(ConnectionGuard { hub: Arc::clone(self), tenant: Arc::from(tenant), id: self.next_id() })
    }

    /// A fresh connection id (also used by transports that are not counted).
    pub fn next_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `outbox` as a subscriber of `key`. Returns false if it already was one.
    pub fn subscribe(&self, key: &TopicKey, outbox: Outbox) -> bool {
        let added = {
            let mut shard = self.shard(key).lock();
            let subs = shard.topics.entry(key.clone()).or_default();
            subs.insert(outbox.conn_id, outbox).is_none()
        };
        if added {
            self.indexes.added(&key.tenant, &key.topic);
            self.tenants.lock().entry(Arc::clone(&key.tenant)).or_default().subscriptions += 1;
            metrics::gauge!("herald_subscriptions").increment(1.0);
        }
        added
    }

    /// Removes connection `conn_id` from `key`.
    pub fn unsubscribe(&self, key: &TopicKey, conn_id: u64) -> bool {
        let removed = {
            let mut shard = self.shard(key).lock();
            let Some(subs) = shard.topics.get_mut(key) else { return false };
            let removed = subs.remove(&conn_id).is_some();
            if subs.is_empty() {
                shard.topics.remove(key);
                shrink(&mut shard.topics);
            } else {
                shrink(subs);
            }
            removed
        };
        if removed {
            self.indexes.removed(&key.tenant, &key.topic);
            if let Some(c) = self.tenants.lock().get_mut(&key.tenant) {
                c.subscriptions = c.subscriptions.saturating_sub(1);
            }
            metrics::gauge!("herald_subscriptions").decrement(1.0);
        }
        removed
    }

    /// Hands `delivery` to every subscriber of its topic; returns how many took it.
    pub fn deliver(&self, delivery: Arc<Delivery>) -> usize {
        let key = TopicKey { tenant: Arc::clone(&delivery.tenant), topic: Arc::clone(&delivery.topic) };
        let shard = self.shard(&key).lock();
        let Some(subs) = shard.topics.get(&key) else { return 0 };
        // A client's own broadcast is not echoed back (nor counted as delivered).
        let sender = match &delivery.payload {
            Payload::Broadcast { sender, .. } => *sender,
            _ => None,
        };
        let mut n = 0;
        for outbox in subs.values() {
            if sender == Some(outbox.conn_id) {
                continue;
            }
            if outbox.push(&delivery) {
                n += 1;
            }
        }
        n
    }

    /// Cuts every subscriber off; each client resumes from the log. Called when
    /// the log lost changes, so nobody stays live across a silent gap.
    pub fn cut_off_all(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            for subs in shard.lock().topics.values() {
                for outbox in subs.values() {
                    outbox.cut_off();
                    n += 1;
                }
            }
        }
        n
    }

    /// Publishes a broadcast or presence payload to a room topic.
    pub fn publish(&self, tenant: &str, topic: &str, payload: Payload) -> usize {
        let n = self.deliver(Delivery::new(Arc::from(tenant), Arc::from(topic), payload));
        metrics::counter!("herald_deliveries_total").increment(n as u64);
        n
    }

    /// Records what another node reports it holds (cluster heartbeats).
    pub fn set_node_counts(&self, node: &str, counts: HashMap<String, TenantCounts>) {
        self.remote_counts.lock().insert(node.to_string(), counts);
    }

    /// Forgets a node that stopped or went silent.
    pub fn drop_node_counts(&self, node: &str) {
        self.remote_counts.lock().remove(node);
    }

    fn remote_connections(&self, tenant: &str) -> u64 {
        self.remote_counts.lock().values().filter_map(|c| c.get(tenant)).map(|c| c.connections).sum()
    }

    /// A tenant's counts over the whole cluster (this node's plus the others'
    /// last reports), and how many nodes that is.
    pub fn cluster_counts(&self, tenant: &str) -> (TenantCounts, usize) {
        let mut total = self.tenants.lock().get(tenant).copied().unwrap_or_default();
        let remote = self.remote_counts.lock();
        for c in remote.values().filter_map(|c| c.get(tenant)) {
            total.connections += c.connections;
            total.subscriptions += c.subscriptions;
        }
        (total, remote.len() + 1)
    }

    /// A tenant's live topics on this node and how many connections receive each.
    pub fn topic_counts(&self, tenant: &str) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(
                shard
                    .topics
                    .iter()
                    .filter(|(k, _)| &*k.tenant == tenant)
                    .map(|(k, subs)| (Arc::clone(&k.topic), subs.len())),
            );
        }
        out
    }

    /// Connection and subscription counts per tenant, and the number of live topics.
    pub fn stats(&self) -> (HashMap<String, TenantCounts>, usize) {
        let tenants = self
            .tenants
            .lock()
            .iter()
            .filter(|(_, c)| c.connections > 0 || c.subscriptions > 0)
            .map(|(t, c)| (t.to_string(), *c))
            .collect();
        let topics = self.shards.iter().map(|s| s.lock().topics.len()).sum();
        (tenants, topics)
    }
}

/// Gives memory back once a map is mostly empty: a burst of subscriptions
/// (one socket can hold many) must not leave its peak allocated for good.
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// Makes the hub's series visible in `/metrics` before anything happens.
fn register_metrics() {
    metrics::describe_gauge!("herald_connections", "Open realtime connections (WebSocket and SSE)");
    metrics::describe_gauge!("herald_subscriptions", "Topic subscriptions of open connections");
    metrics::describe_counter!("herald_deliveries_total", "Deliveries handed to connection queues");
    metrics::describe_counter!(
        "herald_queue_overflows_total",
        "Connections cut off because their send queue overflowed"
    );
    metrics::describe_counter!(
        "herald_conflated_total",
        "Progress ticks superseded by a newer tick of the same job while their connection was behind"
    );
    metrics::describe_counter!(
        "herald_resumes_total",
        "Subscriptions resumed from a position: result=replayed (from the log) or resync (older than retention)"
    );
    metrics::describe_gauge!("herald_queue_waiting", "Deliveries waiting in connection queues (read at scrape)");
    metrics::describe_gauge!(
        "herald_queue_lag_max",
        "Largest lag of a connection, in log positions between the newest event queued and the newest taken"
    );
    metrics::describe_histogram!("herald_delivery_seconds", "Time from publish to the write of a delivery batch");
    metrics::gauge!("herald_connections").increment(0.0);
    metrics::gauge!("herald_subscriptions").increment(0.0);
    metrics::counter!("herald_deliveries_total").increment(0);
    metrics::counter!("herald_queue_overflows_total").increment(0);
    metrics::counter!("herald_conflated_total").increment(0);
    metrics::counter!("herald_resumes_total", "result" => "replayed").increment(0);
    metrics::counter!("herald_resumes_total", "result" => "resync").increment(0);
}

impl Hub {
    /// Hands committed events, in position order, to the subscribers of their
    /// topics: called by the change feed only.
    pub fn publish_events(&self, events: Vec<Event>) {
        let mut delivered = 0u64;
        for event in events {
            let event = Arc::new(event);
            let indexed = self.indexes.topics_of(&event);
            for topic in event.topics.iter().chain(&indexed) {
                let d = Delivery::new(
                    Arc::clone(&event.tenant),
                    Arc::from(topic.as_str()),
                    Payload::Event(Arc::clone(&event)),
                );
                delivered += self.deliver(d) as u64;
            }
        }
        metrics::counter!("herald_deliveries_total").increment(delivered);
    }
}

/// Keeps a connection counted while it lives.
pub struct ConnectionGuard {
    hub: Arc<Hub>,
    pub tenant: Arc<str>,
    pub id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(c) = self.hub.tenants.lock().get_mut(&self.tenant) {
            c.connections = c.connections.saturating_sub(1);
        }
        metrics::gauge!("herald_connections").decrement(1.0);
    }
}
