//! The production store: PostgreSQL, schema `herald`.
//!
//! Writes run like SQLite's, in group transactions on a writer thread (the
//! blocking `postgres` client, so the rules stay synchronous). The log is not
//! written by the writers: the [`sequencer`] reads committed changes from a
//! logical replication slot and appends them in commit order, and every
//! process follows the log with a [`tail`] — its change feed.

mod capture;
mod changes;
pub mod pgoutput;
mod read;
mod rows;
mod schema;
pub mod sequencer;
pub mod tail;
mod tx;
mod writer;

use super::group_commit::{self, WriterHandle};
use super::{
    ApiKeyRecord, EventLog, EventPage, JobFilter, Keys, Page, Reads, StoreError, StoreErrorKind, Work, Writer,
};
use crate::config::CaptureSpec;
use crate::model::{Artifact, CapturedTable, Catalog, Job, JobVisibility, Notification, Position, Task};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sequencer::SequencerConfig;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::Notify;

/// Connections of the read pool.
const READ_POOL: usize = 16;
/// Writer threads, each with its connection and its group commits. Units of
/// one job go to one writer (in order); several keep PostgreSQL's round trips
/// and fsyncs overlapping instead of queued behind one connection.
const WRITERS: usize = 4;

/// A handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    writer: WriterHandle,
    pool: Pool,
    /// How to reach the database for the maintenance lock, and the session holding it.
    pg: tokio_postgres::Config,
    maintenance: Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
}

/// A PostgreSQL URL, parsed, with the form of it that is safe to print.
#[derive(Clone)]
pub struct PgUrl {
    pub config: tokio_postgres::Config,
    /// `postgres://user@host:port/db`: no password.
    pub display: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl, StoreError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::caused_by(StoreErrorKind::Invalid, "not a PostgreSQL URL (postgres://user@host:port/db)", e)
        })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let display = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or(config.get_user().unwrap_or(""))
        );
        Ok(PgUrl { config, display })
    }

    /// Where the nodes that share this database meet on the cluster broker
    /// (a Redis channel, a NATS subject): one name per server and database.
    pub fn cluster_channel(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self.config.get_dbname().unwrap_or("postgres");
        let clean: String = format!("{host}_{port}_{db}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .collect();
        format!("herald.cluster.{clean}")
    }

    /// The replication slot of this database: one per database, shared by the
    /// Herald processes that use it (only the sequencer reads it).
    pub fn slot(&self) -> String {
        let db = self.config.get_dbname().unwrap_or("postgres");
        let clean: String =
            db.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        format!("herald_{clean}").chars().take(63).collect()
    }
}

impl PgStore {
    /// Connects, migrates, makes sure the replication slot exists (before any
    /// write, so no change escapes the log) and starts the writer, the
    /// sequencer and the log tail. Call inside a Tokio runtime.
    pub fn open(url: &PgUrl, capture: &[CaptureSpec]) -> Result<(PgStore, tail::LogTail, Arc<Catalog>), StoreError> {
        let slot = url.slot();
        let (setup, tables) = {
            let (config, display, slot, capture) =
                (url.config.clone(), url.display.clone(), slot.clone(), capture.to_vec());
            // The blocking client may not run on a runtime thread.
            std::thread::spawn(move || writer::setup(&config, &display, &slot, &capture))
                .join()
                .map_err(|_| StoreError::internal("PostgreSQL setup panicked"))??
        };
        let catalog = Arc::new(Catalog::new(tables));
        let mut batchers: Vec<writer::PgBatcher> = (1..WRITERS).map(|_| setup.another()).collect();
        batchers.insert(0, setup);
        let writer = group_commit::start_many("herald-writer", batchers)?;
        let mut manager_config = tokio_postgres::Config::clone(&url.config);
        manager_config.application_name("herald");
        let manager = Manager::from_config(
            manager_config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(READ_POOL)
            .build()
            .map_err(|e| StoreError::caused_by(StoreErrorKind::Internal, "building the read pool", e))?;
        let appended = Arc::new(Notify::new());
        sequencer::spawn(
            SequencerConfig {
                pg: url.config.clone(),
                slot,
                display_url: url.display.clone(),
                catalog: Arc::clone(&catalog),
            },
            Arc::clone(&appended),
        );
        let tail = tail::LogTail::start(pool.clone(), url.config.clone(), appended);
        let maintenance = Arc::new(tokio::sync::Mutex::new(None));
        Ok((PgStore { writer, pool, pg: url.config.clone(), maintenance }, tail, catalog))
    }
}

#[async_trait]
impl Writer for PgStore {
    async fn submit(&self, work: Box<dyn Work>) -> Result<(), StoreError> {
        self.writer.submit(work).await
    }

    async fn close(&self) {
        self.writer.close().await
    }

    async fn leads_maintenance(&self) -> bool {
        // A session lock goes with its connection: a dead holder frees it.
        let mut held = self.maintenance.lock().await;
        if held.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        *held = None;
        let Ok(client) = sequencer::connect(&self.pg).await else { return false };
        match client.query_one("SELECT pg_try_advisory_lock($1)", &[&schema::MAINTENANCE_LOCK]).await {
            Ok(row) if row.get::<_, bool>(0) => {
                tracing::info!("this process runs stall detection and retention");
                metrics::gauge!("herald_maintenance_leader").set(1.0);
                *held = Some(client);
                true
            }
            _ => {
                metrics::gauge!("herald_maintenance_leader").set(0.0);
                false
            }
        }
    }
}

#[async_trait]
impl Reads for PgStore {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        read::job(&self.pool, tenant, id).await
    }

    async fn job_owner(&self, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError> {
        read::job_owner(&self.pool, tenant, id).await
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
        read::session(&self.pool, tenant, id).await
    }

    async fn jobs(&self, tenant: &str, vis: &JobVisibility, filter: JobFilter) -> Result<Page<Job>, StoreError> {
        read::jobs(&self.pool, tenant, vis, &filter).await
    }

    async fn job_list(
        &self,
        tenant: &str,
        vis: &JobVisibility,
        query: &crate::model::JobQuery,
        now_ms: i64,
        max_rows: usize,
    ) -> Result<crate::store::JobListSnapshot, StoreError> {
        read::job_list(&self.pool, tenant, vis, query, now_ms, max_rows).await
    }

    async fn stream_chunks(
        &self,
        tenant: &str,
        job_id: &str,
        stream: &str,
        from: u64,
        max_chunks: usize,
        max_bytes: usize,
    ) -> Result<crate::store::ChunkPage, StoreError> {
        read::stream_chunks(&self.pool, tenant, job_id, stream, from, max_chunks, max_bytes).await
    }

    async fn streams(&self, tenant: &str, job_id: &str) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
        read::streams(&self.pool, tenant, job_id).await
    }

    async fn tasks(&self, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError> {
        read::tasks(&self.pool, tenant, job_id).await
    }

    async fn artifacts(&self, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        read::artifacts(&self.pool, tenant, job_id).await
    }

    async fn notifications(
        &self,
        tenant: &str,
        recipient: &str,
        unread_only: bool,
        limit: usize,
    ) -> Result<(Vec<Notification>, u64), StoreError> {
        read::notifications(&self.pool, tenant, recipient, unread_only, limit).await
    }

    async fn table_rows(
        &self,
        table: &CapturedTable,
        tenant: &str,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        read::table_rows(&self.pool, table, tenant, owner, limit).await
    }

    async fn query_rows(&self, q: &crate::store::query::RowQuery) -> Result<Vec<serde_json::Value>, StoreError> {
        read::query_rows(&self.pool, q).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(group_commit::writer_stopped());
        }
        read::conn(&self.pool).await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn head(&self) -> Result<Position, StoreError> {
        let c = read::conn(&self.pool).await?;
        read::head_and_floor(&c).await.map(|(head, _)| head)
    }

    async fn events(
        &self,
        tenant: &str,
        topics: &[String],
        since: Position,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        read::events(&self.pool, tenant, topics, since, limit).await
    }
}

#[async_trait]
impl Keys for PgStore {
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        read::api_key(&self.pool, id).await
    }

    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        read::api_keys(&self.pool, tenant).await
    }

    async fn api_key_changes(&self, since_ms: i64) -> Result<Vec<ApiKeyRecord>, StoreError> {
        read::api_key_changes(&self.pool, since_ms).await
    }
}
