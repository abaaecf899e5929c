//! What every part of the server shares: the state handed to handlers and
//! sessions, the limits they enforce, and the shutdown signal.

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::hub::Hub;
use crate::store::DynStore;
use std::sync::Arc;
use std::time::Duration;

/// Limits and timings the transports enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Largest WebSocket message, bytes.
    pub ws_max_message: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Most `postgres_changes` bindings one Phoenix channel may declare.
    pub max_bindings: usize,
    /// Most hub topics one connection may receive, over all its subscriptions,
    /// channels and bindings: what bounds the memory one socket can take.
    pub max_topics_per_connection: usize,
    /// Messages per second a connection may send (a burst of twice that is allowed).
    pub messages_per_second: u32,
    /// Deliveries a connection may have queued before it is cut off as a slow consumer.
    pub outbox_capacity: usize,
    /// How often an idle connection is pinged.
    pub heartbeat_interval: Duration,
    /// How long a connection may stay silent before it is dropped as dead.
    pub heartbeat_timeout: Duration,
    /// Longest long-poll wait.
    pub max_poll_wait: Duration,
    /// Interval of SSE keep-alive comments.
    pub sse_keepalive: Duration,
    /// Bytes of chunks one job output stream keeps; older ones go first.
    pub stream_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_limit: 1024 * 1024,
            ws_max_message: 64 * 1024,
            max_subscriptions: 100,
            max_bindings: 100,
            max_topics_per_connection: 1000,
            messages_per_second: 100,
            outbox_capacity: 4096,
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(60),
            max_poll_wait: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            stream_max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub hub: Arc<Hub>,
    /// Every ephemeral publish (broadcast, presence) goes through here.
    pub broker: Arc<dyn Broker>,
    pub auth: Authenticator,
    pub limits: Arc<Limits>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Flips to true when the server begins shutting down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Started with `--demo`: enables the dashboard's demo sign-in.
    pub demo: bool,
    /// Captured application tables (PostgreSQL; empty on SQLite).
    pub catalog: Arc<crate::model::Catalog>,
}

impl AppState {
    /// Applies a write through the rules, in one durable transaction.
    pub async fn write(
        &self,
        tenant: &str,
        cmd: crate::rules::Command,
        idem: Option<crate::rules::IdempotencyKey>,
    ) -> Result<crate::rules::Reply, crate::rules::WriteError> {
        crate::rules::write(&*self.store, tenant, cmd, idem).await
    }
}

/// Resolves once the server starts shutting down.
pub async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
