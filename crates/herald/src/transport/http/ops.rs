//! Operations: liveness, readiness, Prometheus metrics and hub statistics.

use super::error::ApiError;
use super::extract::Auth;
use crate::app::AppState;
use crate::auth::Role;
use crate::hub::TenantCounts;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use utoipa::ToSchema;

/// The database file, for the readiness check; the server adds it to the
/// router as an extension (a router built without it skips that check).
#[derive(Debug, Clone)]
pub struct DbFile(pub Arc<PathBuf>);

#[utoipa::path(get, path = "/healthz",
    summary = "Liveness",
    description = "Answers while the process runs, whatever the store's state.", tag = "operations", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz",
    summary = "Readiness",
    description = "200 when the store answers and its files can be written; 503 with the reason while shutting down or when the database cannot be used. Point load balancers here.", tag = "operations",
    responses((status = 200, description = "The store answers and its files can be written"),
        (status = 503, description = "Not ready: `reason` is `shutting_down`, `store_unavailable` or `database_not_writable`, `error` says why")))]
pub async fn readyz(State(s): State<AppState>, db: Option<Extension<DbFile>>) -> impl IntoResponse {
    let unavailable = |reason: &str, error: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "reason": reason, "error": error })),
        )
    };
    if *s.shutdown.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "shutting_down", "reason": "shutting_down" })),
        );
    }
    if let Err(e) = s.store.ping().await {
        return unavailable("store_unavailable", e.to_string());
    }
    if let Some(Extension(DbFile(path))) = db {
        let checked = tokio::task::spawn_blocking(move || writable(&path)).await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return unavailable("database_not_writable", e),
            Err(e) => return unavailable("database_not_writable", format!("checking the database files: {e}")),
        }
    }
    (StatusCode::OK, Json(serde_json::json!({ "status": "ready" })))
}

/// Whether SQLite can write the database: the file, its `-wal` and `-shm`
/// files where they exist, and its directory while there is no `-wal` (it must
/// create one). A read-only file (permissions, a read-only mount, an immutable
/// flag) lets the store open and answer reads while every write fails.
///
/// Asked with `faccessat(2)`, never by opening the file: closing any
/// descriptor of the database would drop the POSIX locks SQLite holds on it.
fn writable(db: &Path) -> Result<(), String> {
    let beside = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    can_write(db)?;
    let wal = beside("-wal");
    for f in [&wal, &beside("-shm")] {
        if f.exists() {
            can_write(f)?;
        }
    }
    if !wal.exists() {
        let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        can_write(dir)?;
    }
    Ok(())
}

#[cfg(unix)]
fn can_write(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} is not a valid path", path.display()))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{} is not writable: {}", path.display(), std::io::Error::last_os_error()))
    }
}

#[cfg(not(unix))]
fn can_write(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.permissions().readonly() => Ok(()),
        Ok(_) => Err(format!("{} is read-only", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[utoipa::path(get, path = "/metrics",
    summary = "Prometheus metrics",
    description = "Connections, subscriptions, deliveries, queue overflows, request counts and latencies, store and replication figures, in the Prometheus text format (docs/OPERATIONS.md lists them).", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Read at scrape time from the queues' own counters: nothing per delivery.
    let (waiting, lag) = s.hub.registry.backlog();
    metrics::gauge!("herald_queue_waiting").set(waiting as f64);
    metrics::gauge!("herald_queue_lag_max").set(lag as f64);
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Connections and subscriptions of the caller's tenant, on every node of
    /// the cluster (the other nodes as of their last heartbeat, at most a
    /// second or two old).
    pub tenant: TenantCounts,
    /// The same, on this node only.
    pub node: TenantCounts,
    /// Nodes counted: 1 without a cluster.
    pub nodes: usize,
    /// Topics with at least one subscriber, on this node, all tenants.
    pub topics: usize,
}

#[utoipa::path(get, path = "/v1/stats",
    summary = "Connection counts of my tenant",
    description = "Connections and subscriptions of the caller's tenant over the whole cluster and on this node, the number of nodes, and the live topics of this node. Admin, staff and service.", tag = "operations",
    responses((status = 200, body = Stats), (status = 403, description = "Only admin, staff and service")), security(("bearer" = [])))]
pub async fn stats(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<Stats>, ApiError> {
    if !matches!(p.role, Role::Admin | Role::Staff | Role::Service) {
        return Err(ApiError::forbidden("stats are for admin, staff and service roles"));
    }
    let (tenants, topics) = s.hub.stats();
    let (tenant, nodes) = s.hub.cluster_counts(&p.tenant);
    Ok(Json(Stats { tenant, node: tenants.get(&*p.tenant).copied().unwrap_or_default(), nodes, topics }))
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn a_database_that_cannot_be_written_is_not_ready() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("herald-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("h.db");
        std::fs::write(&db, b"").unwrap();
        assert_eq!(super::writable(&db), Ok(()));
        assert!(super::writable(&dir.join("missing.db")).is_err());
        // Root writes read-only files anyway (so would SQLite): only check the refusal otherwise.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
        let root = std::fs::OpenOptions::new().write(true).open(&db).is_ok();
        let r = super::writable(&db);
        assert_eq!(r.is_ok(), root, "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
