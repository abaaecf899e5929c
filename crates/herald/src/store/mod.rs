//! Durable storage of rows and the ordered event log, behind traits split by
//! role — [`Writer`] (units of work in transactions, over [`WriteTx`]),
//! [`Reads`], [`EventLog`], [`Keys`] — so nothing above knows which database
//! it talks to. A store holds SQL only: what a write means is decided by the
//! rules (`crate::rules`), which run as [`Work`] inside the store's transaction.

pub mod error;
pub mod group_commit;
pub mod postgres;
pub mod query;
pub mod sqlite;

pub use error::{StoreError, StoreErrorKind};

use crate::model::{
    Artifact, CapturedTable, Event, EventType, Job, JobStatus, JobVisibility, Notification, Position, Role, Task,
};
use async_trait::async_trait;
use std::sync::Arc;

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub owner: Option<String>,
    pub updated_after: Option<i64>,
    /// Return jobs older than this cursor (newest first).
    pub before: Option<i64>,
    pub limit: usize,
}

/// What a live job list starts from (`Reads::job_list`).
#[derive(Debug, Clone, Default)]
pub struct JobListSnapshot {
    /// The log position the jobs reflect: every event at or below it is in them.
    pub head: Position,
    /// Jobs passing the query's status, kind, owner and window (tags are the caller's).
    pub jobs: Vec<Job>,
    /// More rows matched than were asked for.
    pub truncated: bool,
    /// Versions of jobs outside `jobs` changed lately, whose events may still
    /// reach the log after `head` (PostgreSQL sequences commits after they
    /// happen): an event at or below such a version is older than the snapshot.
    pub recent: Vec<(String, u64)>,
}

/// Chunks read from a job's output stream (`Reads::stream_chunks`).
#[derive(Debug, Clone, Default)]
pub struct ChunkPage {
    /// The oldest offset still kept (retention and the size bound drop older chunks).
    pub floor: u64,
    /// The offset the next chunk appended will get: the stream's end.
    pub next: u64,
    /// The offset of `chunks[0]` (the one asked for, or `floor` if that was gone).
    pub first: u64,
    pub chunks: Vec<Box<serde_json::value::RawValue>>,
}

/// One output stream of a job (`Reads::streams`): the wire type itself.
pub use herald_model::stream::StreamInfo;

/// Parses a stored segment (a JSON array of chunks) into its chunks.
pub(crate) fn segment_chunks(json: &str) -> Result<Vec<Box<serde_json::value::RawValue>>, StoreError> {
    serde_json::from_str(json).map_err(StoreError::corrupt)
}

/// Gathers a page of chunks from segments `(first, chunks_json)` in offset order.
pub(crate) fn chunk_page(
    next: u64,
    floor: u64,
    from: u64,
    segments: impl IntoIterator<Item = Result<(u64, String), StoreError>>,
    max_chunks: usize,
    max_bytes: usize,
) -> Result<crate::store::ChunkPage, StoreError> {
    let first = from.max(floor).min(next);
    let mut page = crate::store::ChunkPage { floor, next, first, chunks: Vec::new() };
    let mut bytes = 0;
    'segments: for segment in segments {
        let (seg_first, json) = segment?;
        for (i, chunk) in segment_chunks(&json)?.into_iter().enumerate() {
            if seg_first + (i as u64) < first {
                continue;
            }
            if page.chunks.len() >= max_chunks || (bytes + chunk.get().len() > max_bytes && !page.chunks.is_empty()) {
                break 'segments;
            }
            bytes += chunk.get().len();
            page.chunks.push(chunk);
        }
    }
    Ok(page)
}

/// Which of a stream's oldest segments `(first, bytes)` go so that `total`
/// bytes come within `max`: the last `first` to delete (all up to it go) and
/// the total after. The segment just appended is never among them.
pub(crate) fn trim_cut(oldest: impl IntoIterator<Item = (i64, i64)>, mut total: i64, max: i64) -> (Option<i64>, i64) {
    let mut cut = None;
    for (first, bytes) in oldest {
        if total <= max {
            break;
        }
        total -= bytes;
        cut = Some(first);
    }
    (cut, total)
}

/// Where an append went in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first chunk appended.
    pub first: u64,
    /// The stream's end after it.
    pub next: u64,
    /// The oldest offset still kept after the size bound trimmed it.
    pub floor: u64,
}

/// A page of results and the cursor of the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<i64>,
}

/// Most bytes of event data one page of the log returns; the page ends early past it.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Events read from the log.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Position of the newest event in the whole log.
    pub head: Position,
    /// Events at or below this position were pruned; a reader behind it must resync.
    pub floor: Position,
    /// The page ended at its byte bound before its count: more events follow.
    pub truncated: bool,
}

/// A stored worker API key. Times are epoch milliseconds.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: Role,
    pub hash: Vec<u8>,
    pub created_at: i64,
    /// Last authenticated use, as recorded (in batches, so up to a minute behind).
    pub last_used_at: Option<i64>,
    /// When the key stops working (a rotation's grace period), if ever.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// When the key was last revoked or given an expiry: what every node polls for.
    pub changed_at: i64,
}

impl ApiKeyRecord {
    /// A key as created now: never used, revoked or expiring.
    pub fn new(id: String, tenant: String, name: String, role: Role, hash: Vec<u8>) -> ApiKeyRecord {
        ApiKeyRecord {
            id,
            tenant,
            name,
            role,
            hash,
            created_at: 0,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            changed_at: 0,
        }
    }
}

/// The columns of `api_keys` in the order [`ApiKeyRecord`]'s readers take them.
pub const API_KEY_COLUMNS: &str =
    "id, tenant, name, role, hash, created_at, last_used_at, expires_at, revoked_at, changed_at";

/// One unit of work, run by the writer inside its own savepoint of a group
/// transaction. The rules implement it; the store only runs it.
pub trait Work: Send + 'static {
    /// Runs against the open transaction; false rolls this unit back alone.
    fn run(&mut self, tx: &mut dyn WriteTx) -> bool;
    /// The transaction committed (durably): answer the caller.
    fn committed(self: Box<Self>);
    /// The transaction did not commit, or the unit could not run: nothing it did remains.
    fn failed(self: Box<Self>, error: StoreError);
    /// What the unit writes to, hashed (a job): units with the same key go to
    /// the same writer, in order, where a store runs several. `None`: any one.
    fn shard(&self) -> Option<u64> {
        None
    }
}

/// What a stored event is made of before the log gives it a position.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub kind: EventType,
    /// The job the row belongs to, and its owner: who may see the event.
    pub job: Option<(&'a str, Option<&'a str>)>,
    /// Topics the event is routed to.
    pub topics: Vec<String>,
    /// The new row as JSON, serialized once.
    pub data: String,
}

/// The SQL a unit of work may run inside the writer's transaction: rows in,
/// rows out, events appended. No rules live here; the rules call these.
pub trait WriteTx {
    /// Commit time of this transaction, epoch milliseconds.
    fn now(&self) -> i64;
    fn job(&mut self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError>;
    /// The fingerprint a job was created with, and its stored document.
    fn job_creation(&mut self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError>;
    fn insert_job(&mut self, tenant: &str, job: &Job, create_hash: &str, doc: &str) -> Result<(), StoreError>;
    /// Stores a changed job and records that its worker reported now.
    fn update_job(&mut self, tenant: &str, job: &Job, doc: &str) -> Result<(), StoreError>;
    /// Records that a job's worker reported now, without changing the job.
    fn touch_job(&mut self, tenant: &str, id: &str) -> Result<(), StoreError>;
    /// Running jobs (every tenant) whose worker last reported before `before_ms`.
    fn silent_jobs(&mut self, before_ms: i64) -> Result<Vec<(String, Job)>, StoreError>;
    fn task(&mut self, tenant: &str, job_id: &str, id: &str) -> Result<Option<Task>, StoreError>;
    fn upsert_task(&mut self, tenant: &str, task: &Task, doc: &str) -> Result<(), StoreError>;
    /// (total, succeeded, failed) tasks of a job.
    fn task_counts(&mut self, tenant: &str, job_id: &str) -> Result<(u64, u64, u64), StoreError>;
    fn insert_artifact(&mut self, tenant: &str, artifact: &Artifact, doc: &str) -> Result<(), StoreError>;
    fn insert_notification(&mut self, tenant: &str, n: &Notification, doc: &str) -> Result<(), StoreError>;
    fn notification(&mut self, tenant: &str, recipient: &str, id: &str) -> Result<Option<Notification>, StoreError>;
    /// A recipient's unread notifications, oldest first.
    fn unread_notifications(&mut self, tenant: &str, recipient: &str) -> Result<Vec<Notification>, StoreError>;
    fn update_notification(&mut self, tenant: &str, n: &Notification, doc: &str) -> Result<(), StoreError>;
    /// Appends an event to the log (the store gives it its position).
    fn append(&mut self, tenant: &str, event: NewEvent<'_>) -> Result<(), StoreError>;
    /// Deletes events older than `before_ms` (and sessions last saved before
    /// it: they could not resume anyway) and idempotency records older than
    /// `idempotency_before_ms`; returns how many events went.
    fn prune(&mut self, before_ms: i64, idempotency_before_ms: i64) -> Result<u64, StoreError>;
    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// A key of `tenant`, read for update.
    fn api_key(&mut self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Revokes a key now and/or sets when it expires; stamps `changed_at` now.
    fn change_api_key(
        &mut self,
        tenant: &str,
        id: &str,
        revoked_at: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Records when keys were last used (any tenant); unknown ids are skipped.
    fn touch_api_keys(&mut self, used: &[(String, i64)]) -> Result<(), StoreError>;
    /// The fingerprint and stored reply of an idempotency key, if used before.
    fn idempotent_reply(&mut self, tenant: &str, sub: &str, key: &str) -> Result<Option<(String, String)>, StoreError>;
    fn save_idempotent_reply(
        &mut self,
        tenant: &str,
        sub: &str,
        key: &str,
        fingerprint: &str,
        reply: &str,
    ) -> Result<(), StoreError>;
    /// Appends one segment of chunks (`chunks_json`, a JSON array of `count`
    /// chunks, `bytes` long) to a job's stream, then drops its oldest segments
    /// while it holds more than `max_bytes` (never the one just appended).
    fn append_chunks(
        &mut self,
        tenant: &str,
        job_id: &str,
        stream: &str,
        chunks_json: &str,
        count: u64,
        max_bytes: u64,
    ) -> Result<Appended, StoreError>;
    /// Stores (or replaces) what a recoverable realtime session holds, as a
    /// JSON document, for the client that comes back with its id.
    /// Stores a session's state, unless the stored one is newer than `at` (default: now).
    fn save_session(&mut self, tenant: &str, id: &str, sub: &str, doc: &str, at: Option<i64>)
        -> Result<(), StoreError>;
}

/// Runs units of work in durable transactions (group commit where it can).
#[async_trait]
pub trait Writer: Send + Sync + 'static {
    /// Queues `work`; it answers through its own `committed`/`failed`.
    async fn submit(&self, work: Box<dyn Work>) -> Result<(), StoreError>;
    /// Flushes pending writes and stops the writer.
    async fn close(&self);
    /// Whether this process runs the duties that must run once per database
    /// (stall detection, retention): always for a store only it uses; on
    /// PostgreSQL, the one process holding a lock, which moves to another
    /// when its holder dies.
    async fn leads_maintenance(&self) -> bool {
        true
    }
}

/// Reads of rows.
#[async_trait]
pub trait Reads: Send + Sync + 'static {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError>;
    /// Whether a job exists, and its owner: an indexed read, for access checks
    /// that must not load (or be timed by) the whole document.
    async fn job_owner(&self, tenant: &str, id: &str) -> Result<Option<Option<String>>, StoreError>;
    async fn jobs(&self, tenant: &str, vis: &JobVisibility, filter: JobFilter) -> Result<Page<Job>, StoreError>;
    /// The jobs a live list starts from, consistent with the log's head (at
    /// most `max_rows`; `truncated` says there were more).
    async fn job_list(
        &self,
        tenant: &str,
        vis: &JobVisibility,
        query: &crate::model::JobQuery,
        now_ms: i64,
        max_rows: usize,
    ) -> Result<JobListSnapshot, StoreError>;
    async fn tasks(&self, tenant: &str, job_id: &str) -> Result<Vec<Task>, StoreError>;
    /// Chunks of a job's stream from offset `from` (or the floor, if older):
    /// at most `max_chunks`, and past `max_bytes` the page ends early.
    async fn stream_chunks(
        &self,
        tenant: &str,
        job_id: &str,
        stream: &str,
        from: u64,
        max_chunks: usize,
        max_bytes: usize,
    ) -> Result<ChunkPage, StoreError>;
    /// The output streams of a job.
    async fn streams(&self, tenant: &str, job_id: &str) -> Result<Vec<StreamInfo>, StoreError>;
    async fn artifacts(&self, tenant: &str, job_id: &str) -> Result<Vec<Artifact>, StoreError>;
    /// A recipient's notifications (newest first) and their unread count.
    async fn notifications(
        &self,
        tenant: &str,
        recipient: &str,
        unread_only: bool,
        limit: usize,
    ) -> Result<(Vec<Notification>, u64), StoreError>;
    /// Rows of a captured table in `tenant` (owned by `owner` if given), as
    /// JSON objects, newest first as far as the table says (its first column).
    async fn table_rows(
        &self,
        table: &CapturedTable,
        tenant: &str,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError>;
    /// Rows matching a PostgREST-style query (`GET /rest/v1/<table>`), within
    /// its scope, as JSON objects: Herald's rows as the API shows them, a
    /// captured table's as `to_jsonb` gives them. A value the database cannot
    /// compare is an `Invalid` error carrying a [`query::Refused`].
    async fn query_rows(&self, q: &query::RowQuery) -> Result<Vec<serde_json::Value>, StoreError>;
    /// A recoverable realtime session's owner (`sub`) and document, if stored
    /// and not yet pruned.
    async fn session(&self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The ordered event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The newest position in the log.
    async fn head(&self) -> Result<Position, StoreError>;
    /// Events of any of `topics` after `since`, oldest first, with the head and
    /// floor read before them.
    async fn events(
        &self,
        tenant: &str,
        topics: &[String],
        since: Position,
        limit: usize,
    ) -> Result<EventPage, StoreError>;
}

/// Worker API keys.
#[async_trait]
pub trait Keys: Send + Sync + 'static {
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// A tenant's keys, newest first (revoked ones too).
    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Keys (any tenant) revoked or given an expiry at or after `since_ms`.
    async fn api_key_changes(&self, since_ms: i64) -> Result<Vec<ApiKeyRecord>, StoreError>;
}

/// Everything a store does, by role.
pub trait Store: Writer + Reads + EventLog + Keys {}
impl<T: Writer + Reads + EventLog + Keys> Store for T {}

pub type DynStore = Arc<dyn Store>;
