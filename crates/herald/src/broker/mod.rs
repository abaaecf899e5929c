//! The broker: how ephemeral publishes — room broadcasts, presence changes,
//! the REST bridges — reach subscribers. Nothing here is stored; the log is
//! the truth for events and never goes through a broker. One process uses
//! [`LocalBroker`]; a cluster swaps in one backed by Redis or NATS without any
//! transport changing.

use crate::hub::{Hub, Payload};
use std::sync::Arc;

/// Carries ephemeral messages to every subscriber of a topic.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `topic` of `tenant`; returns how many local
    /// subscribers took it.
    fn publish(&self, tenant: &str, topic: &str, payload: Payload) -> usize;
}

/// The broker of a single process: straight into the hub.
pub struct LocalBroker {
    hub: Arc<Hub>,
}

impl LocalBroker {
    pub fn new(hub: Arc<Hub>) -> Arc<LocalBroker> {
        Arc::new(LocalBroker { hub })
    }
}

impl Broker for LocalBroker {
    fn publish(&self, tenant: &str, topic: &str, payload: Payload) -> usize {
        self.hub.publish(tenant, topic, payload)
    }
}
