//! The broker: how ephemeral publishes — room broadcasts, presence changes,
//! the REST bridges — reach subscribers. Nothing here is stored; the log is
//! the truth for events and never goes through a broker. One process uses
//! [`LocalBroker`]; a cluster uses [`cluster::ClusterBroker`] over Redis or
//! NATS ([`bus`]) without any transport changing.

pub mod bus;
pub mod cluster;

use crate::hub::{Hub, Payload};
use std::sync::Arc;

/// Carries ephemeral messages to every subscriber of a topic.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `payload` on `topic` of `tenant`; returns how many local
    /// subscribers took it.
    fn publish(&self, tenant: &str, topic: &str, payload: Payload) -> usize;

    /// This node is stopping: tell the others, so its presence leaves at once.
    fn leave(&self) {}

    /// Whether other nodes share this node's store (what one node remembers
    /// for a client must then be kept where the others can read it).
    fn is_clustered(&self) -> bool {
        false
    }
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

/// Where a cluster's nodes meet: a Redis server (pub/sub) or a NATS server.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    Redis(String),
    Nats(String),
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "rediss") => Ok(BrokerUrl::Redis(url.to_string())),
            Some("nats" | "tls") => Ok(BrokerUrl::Nats(url.to_string())),
            _ => Err(format!("expected redis://host:6379 or nats://host:4222, got {:?}", redact(url))),
        }
    }
}

/// The URL without a password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let host = &url[at + 1..];
            let user = rest.split_once('@').map(|(u, _)| u).unwrap_or("");
            let user = user.split_once(':').map(|(u, _)| u).unwrap_or(user);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerUrl::Redis(u) | BrokerUrl::Nats(u) => f.write_str(&redact(u)),
        }
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_and_hide_passwords() {
        assert_eq!(BrokerUrl::parse("redis://127.0.0.1:6379"), Ok(BrokerUrl::Redis("redis://127.0.0.1:6379".into())));
        assert_eq!(BrokerUrl::parse("nats://127.0.0.1:4222"), Ok(BrokerUrl::Nats("nats://127.0.0.1:4222".into())));
        assert!(BrokerUrl::parse("kafka://x").is_err());
        assert!(BrokerUrl::parse("127.0.0.1:6379").is_err());
        let u = BrokerUrl::parse("redis://app:s3cret@10.0.0.1:6379/0").unwrap();
        assert_eq!(u.to_string(), "redis://app:***@10.0.0.1:6379/0");
        assert!(!format!("{u:?}").contains("s3cret"));
    }
}
