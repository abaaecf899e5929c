//! The embedded store: one SQLite file in WAL mode. Writes go through the
//! group-commit [`writer`]; reads use a small pool of their own connections.

mod read;
mod schema;
mod tx;
pub mod writer;

use super::group_commit::{self, writer_stopped, WriterHandle};
use super::{ApiKeyRecord, EventLog, EventPage, JobFilter, Keys, Page, Reads, StoreError, Work, Writer};
use crate::feed::CommitFeed;
use crate::model::{Artifact, Job, Notification, Position, Task};
use crate::model::{CapturedTable, JobVisibility};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit (`synchronous=FULL`): an acknowledged write survives power loss.
    Full,
    /// `synchronous=NORMAL`: survives a crash of Herald, may lose the last commits on power loss.
    Normal,
}

/// A handle to the embedded store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: WriterHandle,
    readers: Arc<ReadPool>,
}

/// Reader connections, taken and returned around each blocking query.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn open(&self) -> Result<Connection, StoreError> {
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| StoreError::caused_by(super::StoreErrorKind::Unavailable, "opening a reader", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(StoreError::from)?;
        Ok(conn)
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn with<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().pop() {
                Some(c) => c,
                None => pool.open()?,
            };
            let result = f(&conn);
            let mut idle = pool.idle.lock();
            if idle.len() < 16 {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::internal(format!("a read task failed: {e}")))?
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations and
    /// starts the writer thread. The [`CommitFeed`] yields every committed event,
    /// in position order, right after its commit: SQLite's change feed.
    pub fn open(path: &Path, durability: Durability) -> Result<(Self, CommitFeed), StoreError> {
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::caused_by(super::StoreErrorKind::Unavailable, path.display().to_string(), e))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Per-request savepoints journal the pages they touch: keep that in memory.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 64 MiB of page cache for the writer, so hot job rows and index pages stay resident.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        let (commits, feed) = CommitFeed::channel();
        let writer = group_commit::start("herald-writer", writer::SqliteBatcher { conn, commits })?;
        let store = SqliteStore {
            writer,
            readers: Arc::new(ReadPool { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) }),
        };
        Ok((store, feed))
    }
}

#[async_trait]
impl Writer for SqliteStore {
    async fn submit(&self, work: Box<dyn Work>) -> Result<(), StoreError> {
        self.writer.submit(work).await
    }

    async fn close(&self) {
        self.writer.close().await
    }
}

#[async_trait]
impl Reads for SqliteStore {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.readers.with(move |c| read::job(c, &tenant, &id)).await
    }

    async fn job_owner(&self, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.readers.with(move |c| read::job_owner(c, &tenant, &id)).await
    }

    async fn session(&self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.readers.with(move |c| read::session(c, &tenant, &id)).await
    }

    async fn jobs(&self, tenant: &str, vis: &JobVisibility, filter: JobFilter) -> Result<Page<Job>, StoreError> {
        let (tenant, vis) = (tenant.to_string(), vis.clone());
        self.readers.with(move |c| read::jobs(c, &tenant, &vis, &filter)).await
    }

    async fn job_list(
        &self,
        tenant: &str,
        vis: &JobVisibility,
        query: &crate::model::JobQuery,
        now_ms: i64,
        max_rows: usize,
    ) -> Result<crate::store::JobListSnapshot, StoreError> {
        let (tenant, vis, query) = (tenant.to_string(), vis.clone(), query.clone());
        self.readers.with(move |c| read::job_list(c, &tenant, &vis, &query, now_ms, max_rows)).await
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
        let (tenant, job_id, stream) = (tenant.to_string(), job_id.to_string(), stream.to_string());
        self.readers.with(move |c| read::stream_chunks(c, &tenant, &job_id, &stream, from, max_chunks, max_bytes)).await
    }

    async fn streams(&self, tenant: &str, job_id: &str) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
        let (tenant, job_id) = (tenant.to_string(), job_id.to_string());
        self.readers.with(move |c| read::streams(c, &tenant, &job_id)).await
    }

    async fn tasks(&self, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError> {
        let (tenant, job_id) = (tenant.to_string(), job_id.to_string());
        self.readers.with(move |c| read::tasks(c, &tenant, &job_id)).await
    }

    async fn artifacts(&self, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        let (tenant, job_id) = (tenant.to_string(), job_id.to_string());
        self.readers.with(move |c| read::artifacts(c, &tenant, &job_id)).await
    }

    async fn notifications(
        &self,
        tenant: &str,
        recipient: &str,
        unread_only: bool,
        limit: usize,
    ) -> Result<(Vec<Notification>, u64), StoreError> {
        let (tenant, recipient) = (tenant.to_string(), recipient.to_string());
        self.readers.with(move |c| read::notifications(c, &tenant, &recipient, unread_only, limit)).await
    }

    async fn table_rows(
        &self,
        _table: &CapturedTable,
        _tenant: &str,
        _owner: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        // Tables are captured on PostgreSQL only; the configuration refuses them here.
        Ok(Vec::new())
    }

    async fn query_rows(&self, q: &crate::store::query::RowQuery) -> Result<Vec<serde_json::Value>, StoreError> {
        let q = q.clone();
        self.readers.with(move |c| read::query_rows(c, &q)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(writer_stopped());
        }
        self.readers.with(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await.map(|_| ())
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn head(&self) -> Result<Position, StoreError> {
        self.readers.with(|c| read::head_and_floor(c).map(|(head, _)| head)).await
    }

    async fn events(
        &self,
        tenant: &str,
        topics: &[String],
        since: Position,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let (tenant, topics) = (tenant.to_string(), topics.to_vec());
        self.readers.with(move |c| read::events(c, &tenant, &topics, since, limit)).await
    }
}

#[async_trait]
impl Keys for SqliteStore {
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_string();
        self.readers.with(move |c| read::api_key(c, &id)).await
    }

    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.readers.with(move |c| read::api_keys(c, &tenant)).await
    }

    async fn api_key_changes(&self, since_ms: i64) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.readers.with(move |c| read::api_key_changes(c, since_ms)).await
    }
}
