//! Schema migrations, applied in order at start; `PRAGMA user_version` records
//! how many have run.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    owner TEXT,
    kind TEXT,
    status TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    last_report_at INTEGER NOT NULL,
    create_hash TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX jobs_by_status_report ON jobs (status, last_report_at);
CREATE INDEX jobs_by_owner ON jobs (tenant, owner);
CREATE TABLE tasks (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (tenant, job_id, id)
);
CREATE TABLE artifacts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX artifacts_by_job ON artifacts (tenant, job_id, seq);
CREATE TABLE notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    recipient TEXT NOT NULL,
    id TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX notifications_by_id ON notifications (tenant, id);
CREATE INDEX notifications_by_recipient ON notifications (tenant, recipient, seq);
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    job_id TEXT,
    owner TEXT,
    data TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX events_by_time ON events (time);
CREATE TABLE event_topics (
    tenant TEXT NOT NULL,
    topic TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tenant, topic, position)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    sub TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    reply TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, sub, key)
);
CREATE INDEX idempotency_by_time ON idempotency (created_at);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    // Every progress report moves last_report_at; indexing it made each report
    // rewrite an index entry. Stall detection scans the running jobs instead.
    r#"
DROP INDEX jobs_by_status_report;
CREATE INDEX jobs_by_status ON jobs (status);
"#,
    // Recoverable realtime sessions (Socket.IO connection-state recovery).
    r#"
CREATE TABLE sessions (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    sub TEXT NOT NULL,
    doc TEXT NOT NULL,
    saved_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sessions_by_time ON sessions (saved_at);
"#,
    // Key lifecycle: revoke, rotate with a grace period, last use. Every node
    // polls `changed_at` to cut the open connections of a key revoked elsewhere.
    r#"
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
ALTER TABLE api_keys ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);
CREATE INDEX api_keys_by_change ON api_keys (changed_at);
"#,
    // Job output streams: one row per append (a segment of chunks), not per chunk.
    r#"
CREATE TABLE streams (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, job_id, name)
);
CREATE TABLE stream_segments (
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    at INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    PRIMARY KEY (tenant, job_id, name, first)
);
CREATE INDEX stream_segments_by_time ON stream_segments (at);
"#,
];

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}
