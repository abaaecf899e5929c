//! One node of a cluster. Room broadcasts and presence changes go to this
//! node's hub and, through the bus, to every other node's; events never do
//! (each node follows the log in PostgreSQL). Every node announces itself
//! each second with its connection counts; a node not heard from for
//! [`NODE_TIMEOUT`] is gone, and its presence entries leave with it. A node
//! that (re)connects says hello, and every node answers with a snapshot of
//! its own presence, which replaces what the others knew of it: presence
//! converges after any lost message, and a node never comes back with
//! ghosts (each process is a new node).

use super::bus::{self, Incoming};
use super::{Broker, BrokerUrl};
use crate::hub::{Hub, Payload, TenantCounts};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a node announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone: its presence leaves and its
/// connections stop counting against tenant limits.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// What nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: String,
    msg: Message,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Broadcast {
        tenant: String,
        topic: String,
        event: String,
        data: Box<RawValue>,
        from: Option<String>,
    },
    Presence {
        tenant: String,
        topic: String,
        joins: Value,
        leaves: Value,
    },
    /// Chunks appended to a job's stream on that node (durable in the shared
    /// store; this only makes them live here too).
    Chunks {
        tenant: String,
        topic: String,
        first: u64,
        count: u64,
        chunks: Box<RawValue>,
    },
    Heartbeat {
        counts: HashMap<String, TenantCounts>,
    },
    /// "I (re)joined": every node answers with a snapshot.
    Hello,
    /// A node's own presence, room by room: `(tenant, topic, {key: {metas}})`.
    Snapshot {
        rooms: Vec<(String, String, Value)>,
    },
    /// The node is stopping.
    Bye,
}

/// The broker of a cluster node.
pub struct ClusterBroker {
    hub: Arc<Hub>,
    node: Arc<str>,
    out: mpsc::Sender<Bytes>,
}

/// A new node's id: every process is a new node, so a node that restarts
/// never revives what the cluster knew of its previous life.
pub fn new_node_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl ClusterBroker {
    /// Joins, as `node`, the cluster that meets on `channel` of the broker at `url`.
    pub fn start(hub: Arc<Hub>, node: String, url: &BrokerUrl, channel: &str) -> Result<Arc<ClusterBroker>, String> {
        let (out, incoming) = bus::start(url, channel)?;
        let node: Arc<str> = Arc::from(node);
        tracing::info!(node = %node, broker = %url, channel, "joining the cluster");
        let broker = Arc::new(ClusterBroker { hub, node, out });
        let seen = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
        tokio::spawn(listen(Arc::clone(&broker), incoming, Arc::clone(&seen)));
        tokio::spawn(beat(Arc::downgrade(&broker), seen));
        metrics::gauge!("herald_cluster_nodes").set(1.0);
        Ok(broker)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn send(&self, msg: Message) {
        let envelope = Envelope { node: self.node.to_string(), msg };
        let Ok(bytes) = serde_json::to_vec(&envelope) else { return };
        if self.out.try_send(Bytes::from(bytes)).is_err() {
            metrics::counter!("herald_cluster_dropped_total").increment(1);
        }
    }

    /// Applies what another node said.
    fn receive(&self, from: &str, msg: Message) {
        match msg {
            Message::Broadcast { tenant, topic, event, data, from: sender } => {
                let payload = Payload::Broadcast { event, data, sender: None, from: sender.map(Arc::from) };
                self.hub.publish(&tenant, &topic, payload);
            }
            Message::Presence { tenant, topic, joins, leaves } => {
                self.hub.presence.apply_remote(from, &tenant, &topic, &joins, &leaves);
                self.hub.publish(&tenant, &topic, Payload::PresenceDiff { joins, leaves });
            }
            Message::Chunks { tenant, topic, first, count, chunks } => {
                self.hub.publish(&tenant, &topic, Payload::Chunks { first, count, chunks: Arc::from(chunks) });
            }
            Message::Heartbeat { counts } => self.hub.set_node_counts(from, counts),
            Message::Hello => self.send(Message::Snapshot { rooms: self.hub.presence.local_rooms() }),
            Message::Snapshot { rooms } => {
                for (tenant, topic, diff) in self.hub.presence.replace_node(from, rooms) {
                    self.hub.publish(&tenant, &topic, Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves });
                }
            }
            Message::Bye => self.forget(from),
        }
    }

    /// A node is gone: its presence leaves, its connections stop counting.
    fn forget(&self, node: &str) {
        for (tenant, topic, diff) in self.hub.presence.drop_node(node) {
            self.hub.publish(&tenant, &topic, Payload::PresenceDiff { joins: diff.joins, leaves: diff.leaves });
        }
        self.hub.drop_node_counts(node);
    }
}

impl Broker for ClusterBroker {
    fn is_clustered(&self) -> bool {
        true
    }

    fn publish(&self, tenant: &str, topic: &str, payload: Payload) -> usize {
        let msg = match &payload {
            Payload::Broadcast { event, data, from, .. } => Some(Message::Broadcast {
                tenant: tenant.to_string(),
                topic: topic.to_string(),
                event: event.clone(),
                data: data.clone(),
                from: from.as_deref().map(str::to_string),
            }),
            Payload::PresenceDiff { joins, leaves } => Some(Message::Presence {
                tenant: tenant.to_string(),
                topic: topic.to_string(),
                joins: joins.clone(),
                leaves: leaves.clone(),
            }),
            Payload::Chunks { first, count, chunks } => Some(Message::Chunks {
                tenant: tenant.to_string(),
                topic: topic.to_string(),
                first: *first,
                count: *count,
                chunks: RawValue::from_string(chunks.get().to_string()).unwrap_or_else(|_| empty_array()),
            }),
            // Events reach every node through the log, never through here.
            Payload::Event(_) => None,
        };
        let n = self.hub.publish(tenant, topic, payload);
        if let Some(msg) = msg {
            self.send(msg);
        }
        n
    }

    fn leave(&self) {
        self.send(Message::Bye);
    }
}

/// Applies what arrives from the bus, in order.
async fn listen(
    broker: Arc<ClusterBroker>,
    mut incoming: mpsc::Receiver<Incoming>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) {
    while let Some(item) = incoming.recv().await {
        let bytes = match item {
            Incoming::Connected => {
                // Whatever was said while this node could not hear is lost: ask again.
                broker.send(Message::Hello);
                broker.send(Message::Heartbeat { counts: broker.hub.stats().0 });
                continue;
            }
            Incoming::Message(bytes) => bytes,
        };
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable message on the cluster channel");
                continue;
            }
        };
        if *envelope.node == *broker.node {
            continue;
        }
        if matches!(envelope.msg, Message::Bye) {
            seen.lock().remove(&envelope.node);
        } else {
            let first = seen.lock().insert(envelope.node.clone(), Instant::now()).is_none();
            if first && !matches!(envelope.msg, Message::Hello) {
                // A node this one has not heard from (it started, or this one
                // missed its hello): hear its presence and show it this one's.
                tracing::info!(node = %envelope.node, "a cluster node appeared");
                broker.send(Message::Hello);
            }
            metrics::gauge!("herald_cluster_nodes").set((seen.lock().len() + 1) as f64);
        }
        broker.receive(&envelope.node, envelope.msg);
    }
}

/// Announces this node every [`HEARTBEAT`] and forgets nodes gone silent.
async fn beat(broker: std::sync::Weak<ClusterBroker>, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    loop {
        every.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        broker.send(Message::Heartbeat { counts: broker.hub.stats().0 });
        let gone: Vec<String> = {
            let mut seen = seen.lock();
            let gone: Vec<String> =
                seen.iter().filter(|(_, at)| at.elapsed() > NODE_TIMEOUT).map(|(n, _)| n.clone()).collect();
            for n in &gone {
                seen.remove(n);
            }
            gone
        };
        for node in gone {
            tracing::warn!(node = %node, "a cluster node went silent; its presence leaves");
            broker.forget(&node);
        }
        metrics::gauge!("herald_cluster_nodes").set((seen.lock().len() + 1) as f64);
    }
}

fn empty_array() -> Box<RawValue> {
    RawValue::from_string("[]".into()).unwrap_or_default()
}
