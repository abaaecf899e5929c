//! Wires the pieces together and runs them: store → hub → transports, plus
//! the maintenance loops, with graceful shutdown.

use crate::app::AppState;
use crate::auth::{Authenticator, JwtConfig, JwtVerifier};
use crate::config::Config;
use crate::config::Database;
use crate::hub::Hub;
use crate::store::postgres::{PgStore, PgUrl};
use crate::store::sqlite::SqliteStore;
use crate::store::DynStore;
use crate::transport::http::router;
use crate::transport::listener::{effective_max_connections, serve, ConnLimits};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::jwt::JwtSetupError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The Prometheus recorder is process-wide; install it once. A cluster node
/// labels every series with `node` (its id), so nodes can be told apart.
pub fn metrics_handle(node: Option<&str>) -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
            if let Some(node) = node {
                builder = builder.add_global_label("node", node);
            }
            let recorder = builder
                .set_buckets(&buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("herald_commit_batch_size".into()),
                        &sizes,
                    )
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Opens the store and builds the shared state.
pub fn build(config: &Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<AppState, ServerError> {
    // A cluster node's id labels its metrics and its messages.
    let node = config.cluster.as_ref().map(|_| crate::broker::cluster::new_node_id());
    // The recorder first, so the hub can register its series at zero.
    let metrics = metrics_handle(node.as_deref());
    let hub = Hub::new(config.max_connections_per_tenant);
    let mut channel = None;
    let (store, catalog): (DynStore, _) = match &config.db {
        Database::Sqlite(path) => {
            let (store, feed) = SqliteStore::open(path, config.durability)?;
            // Runs until the store's writer stops (the feed ends with it).
            crate::feed::spawn(feed, Arc::clone(&hub));
            (Arc::new(store), Arc::default())
        }
        Database::Postgres(url) => {
            let url = PgUrl::parse(url)?;
            channel = Some(url.cluster_channel());
            let (store, tail, catalog) = PgStore::open(&url, &config.capture)?;
            crate::feed::spawn(tail, Arc::clone(&hub));
            (Arc::new(store), catalog)
        }
    };
    let jwt = JwtVerifier::new(&JwtConfig {
        secret: config.jwt_secret.clone(),
        jwks_file: config.jwks_file.clone(),
        tenant_claim: config.tenant_claim.clone(),
        role_claim: config.role_claim.clone(),
        leeway_secs: 0,
    })?;
    let broker: Arc<dyn crate::broker::Broker> = match (&config.cluster, channel, node) {
        (Some(url), Some(channel), Some(node)) => {
            crate::broker::cluster::ClusterBroker::start(Arc::clone(&hub), node, url, &channel)
                .map_err(|e| crate::config::ConfigError::Invalid(format!("--cluster: {e}")))?
        }
        _ => crate::broker::LocalBroker::new(Arc::clone(&hub)),
    };
    Ok(AppState {
        auth: Authenticator::new(jwt, Arc::clone(&store)),
        store,
        broker,
        hub,
        limits: Arc::new(config.limits.clone()),
        metrics,
        shutdown,
        demo: config.demo,
        catalog,
    })
}

/// Serves on `listener` until `signal` resolves, then stops taking requests,
/// tells streaming clients goodbye, finishes in-flight requests and flushes
/// the writer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = build(&config, stop_rx)?;
    let maintenance = crate::maintenance::spawn(state.clone(), &config);
    let keywatch = crate::auth::keywatch::spawn(state.clone());
    let demo = config.demo.then(|| crate::demo::spawn(state.clone()));
    let upkeep = state.metrics.clone().map(|handle| {
        // Histogram samples pile up in memory until drained; drain them even when no one scrapes.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let mut app = router(state.clone());
    if let Some(cors) = crate::transport::http::cors::layer(&config.cors) {
        app = app.layer(cors);
    }
    if let Database::Sqlite(path) = &config.db {
        app = app.layer(axum::Extension(crate::transport::http::ops::DbFile(Arc::new(path.clone()))));
    }
    let limits = ConnLimits {
        max_connections: effective_max_connections(config.max_connections),
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
    };
    let addr = listener.local_addr()?;
    tracing::info!(
        url = %format!("http://{addr}/"),
        db = %config.db,
        demo = config.demo,
        cluster = ?config.cluster,
        max_connections = limits.max_connections,
        "herald listening{}",
        if config.demo { " (demo mode: simulated workers in tenant demo)" } else { "" }
    );
    let stop = async move {
        signal.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    serve(listener, app, limits, state.shutdown.clone(), stop).await;
    maintenance.abort();
    keywatch.abort();
    crate::auth::keywatch::flush_usage(&state).await;
    if let Some(u) = upkeep {
        u.abort();
    }
    if let Some(d) = demo {
        d.abort();
    }
    // Tell the other nodes at once, rather than after the heartbeat timeout.
    state.broker.leave();
    if config.cluster.is_some() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}
