//! Herald's tables in schema `herald`, migrated at start. Several Herald
//! processes may start at once: migrations run under a transaction-scoped
//! advisory lock, and `herald.meta` records how many have run.
//!
//! The columns people update by hand (`status`, `succeeded`, `progress`, ...)
//! are real columns; times are epoch milliseconds (`bigint`), as in the API's
//! model. Triggers keep hand-written SQL honest: an UPDATE of a job that does
//! not move `version` gets the next version and a fresh `updated_at`, exactly
//! as a report through the API would.

use crate::store::StoreError;

/// Advisory lock keys (an arbitrary constant namespace: "herald" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;
pub const SEQUENCER_LOCK: i64 = 0x6865_7261_6c64_0002;
/// Held by the one process that runs stall detection and retention.
pub const MAINTENANCE_LOCK: i64 = 0x6865_7261_6c64_0003;

/// The publication every captured table is part of.
pub const PUBLICATION: &str = "herald_changes";

/// Herald's own tables that stream: their changes become log events.
pub const OWN_TABLES: [&str; 4] = ["jobs", "tasks", "artifacts", "notifications"];

const MIGRATIONS: &[&str] = &[
    r#"
CREATE FUNCTION herald.now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE herald.jobs (
    -- Insertion order: the cursor of job listings.
    seq bigserial NOT NULL UNIQUE,
    tenant text NOT NULL,
    id text NOT NULL,
    owner text,
    kind text,
    title text,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'stalled', 'completed', 'failed', 'cancelled')),
    total bigint CHECK (total >= 0),
    succeeded bigint NOT NULL DEFAULT 0 CHECK (succeeded >= 0),
    failed bigint NOT NULL DEFAULT 0 CHECK (failed >= 0),
    progress double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    stage text,
    current_item text,
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    errors jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    created_at bigint NOT NULL DEFAULT herald.now_ms(),
    started_at bigint,
    updated_at bigint NOT NULL DEFAULT herald.now_ms(),
    finished_at bigint,
    version bigint NOT NULL DEFAULT 1,
    counts_reported boolean NOT NULL DEFAULT false,
    progress_reported boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX jobs_by_owner ON herald.jobs (tenant, owner);
CREATE INDEX jobs_by_tenant_seq ON herald.jobs (tenant, seq);
CREATE INDEX jobs_by_status ON herald.jobs (status);

-- Bookkeeping that changes on every report but is nobody's news: kept out of
-- the streamed table, so it writes no event and no old row to the WAL.
CREATE TABLE herald.job_reports (
    tenant text NOT NULL,
    id text NOT NULL,
    create_hash text NOT NULL DEFAULT '',
    last_report_at bigint NOT NULL DEFAULT herald.now_ms(),
    PRIMARY KEY (tenant, id),
    FOREIGN KEY (tenant, id) REFERENCES herald.jobs (tenant, id) ON DELETE CASCADE
);

CREATE TABLE herald.tasks (
    tenant text NOT NULL,
    job_id text NOT NULL,
    id text NOT NULL,
    name text,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    attempts bigint NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error text,
    created_at bigint NOT NULL DEFAULT herald.now_ms(),
    started_at bigint,
    updated_at bigint NOT NULL DEFAULT herald.now_ms(),
    finished_at bigint,
    -- The job's owner, copied so each task change can be routed without a lookup.
    job_owner text,
    PRIMARY KEY (tenant, job_id, id),
    FOREIGN KEY (tenant, job_id) REFERENCES herald.jobs (tenant, id) ON DELETE CASCADE
);

CREATE TABLE herald.artifacts (
    seq bigserial PRIMARY KEY,
    tenant text NOT NULL,
    job_id text NOT NULL,
    id text NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at bigint NOT NULL DEFAULT herald.now_ms(),
    job_owner text,
    FOREIGN KEY (tenant, job_id) REFERENCES herald.jobs (tenant, id) ON DELETE CASCADE
);
CREATE INDEX artifacts_by_job ON herald.artifacts (tenant, job_id, seq);

CREATE TABLE herald.notifications (
    seq bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    recipient text NOT NULL,
    level text NOT NULL DEFAULT 'info' CHECK (level IN ('info', 'success', 'warning', 'error')),
    title text NOT NULL,
    body text,
    link text,
    job_id text,
    read boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL DEFAULT herald.now_ms(),
    read_at bigint
);
CREATE UNIQUE INDEX notifications_by_id ON herald.notifications (tenant, id);
CREATE INDEX notifications_by_recipient ON herald.notifications (tenant, recipient, seq);

-- The log. Positions are given by the one sequencer in commit order
-- (docs/ARCHITECTURE.md), never by a sequence: gapless by construction.
CREATE TABLE herald.events (
    position bigint PRIMARY KEY,
    tenant text NOT NULL,
    type text NOT NULL,
    job_id text,
    owner text,
    data text NOT NULL,
    time bigint NOT NULL
);
CREATE INDEX events_by_time ON herald.events (time);
CREATE TABLE herald.event_topics (
    tenant text NOT NULL,
    topic text NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tenant, topic, position)
);

CREATE TABLE herald.idempotency (
    tenant text NOT NULL,
    sub text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    reply text NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant, sub, key)
);
CREATE INDEX idempotency_by_time ON herald.idempotency (created_at);

CREATE TABLE herald.api_keys (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    name text NOT NULL,
    role text NOT NULL,
    hash bytea NOT NULL,
    created_at bigint NOT NULL
);

-- Hand-written SQL on a job moves it as a report would.
CREATE FUNCTION herald.job_touched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version = OLD.version THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := greatest(herald.now_ms(), OLD.updated_at);
    END IF;
    IF NEW.status <> OLD.status THEN
        IF NEW.status = 'running' AND NEW.started_at IS NULL THEN
            NEW.started_at := NEW.updated_at;
        END IF;
        IF NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.finished_at IS NULL THEN
            NEW.finished_at := NEW.updated_at;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER job_touched BEFORE UPDATE ON herald.jobs
    FOR EACH ROW EXECUTE FUNCTION herald.job_touched();

-- A job inserted by hand gets its bookkeeping row.
CREATE FUNCTION herald.job_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO herald.job_reports (tenant, id) VALUES (NEW.tenant, NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER job_inserted AFTER INSERT ON herald.jobs
    FOR EACH ROW EXECUTE FUNCTION herald.job_inserted();

-- Tasks and artifacts carry their job's owner, whoever inserts them.
CREATE FUNCTION herald.copy_job_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT owner INTO NEW.job_owner FROM herald.jobs WHERE tenant = NEW.tenant AND id = NEW.job_id;
    RETURN NEW;
END $$;
CREATE TRIGGER task_owner BEFORE INSERT OR UPDATE OF job_id, tenant ON herald.tasks
    FOR EACH ROW EXECUTE FUNCTION herald.copy_job_owner();
CREATE TRIGGER artifact_owner BEFORE INSERT ON herald.artifacts
    FOR EACH ROW EXECUTE FUNCTION herald.copy_job_owner();

-- DELETE and UPDATE carry the old row, so events know what changed.
ALTER TABLE herald.jobs REPLICA IDENTITY FULL;
ALTER TABLE herald.tasks REPLICA IDENTITY FULL;
ALTER TABLE herald.artifacts REPLICA IDENTITY FULL;
ALTER TABLE herald.notifications REPLICA IDENTITY FULL;
"#,
    // Changes of captured application tables: the table, and the old row.
    r#"
ALTER TABLE herald.events ADD COLUMN source text, ADD COLUMN old text;
"#,
    // Recoverable realtime sessions (Socket.IO connection-state recovery),
    // shared by every node. Not published: they are no one's events.
    r#"
CREATE TABLE herald.sessions (
    tenant text NOT NULL,
    id text NOT NULL,
    sub text NOT NULL,
    doc text NOT NULL,
    saved_at bigint NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sessions_by_time ON herald.sessions (saved_at);
"#,
    // Key lifecycle: revoke, rotate with a grace period, last use. Every node
    // polls `changed_at` to cut the open connections of a key revoked elsewhere.
    r#"
ALTER TABLE herald.api_keys ADD COLUMN last_used_at bigint, ADD COLUMN expires_at bigint,
    ADD COLUMN revoked_at bigint, ADD COLUMN changed_at bigint NOT NULL DEFAULT 0;
CREATE INDEX api_keys_by_tenant ON herald.api_keys (tenant, created_at);
CREATE INDEX api_keys_by_change ON herald.api_keys (changed_at);
"#,
    // Live job lists read the versions of a tenant's recently changed jobs.
    r#"
CREATE INDEX jobs_by_tenant_updated ON herald.jobs (tenant, updated_at);
"#,
    // Job output streams: one row per append (a segment of chunks), not per
    // chunk. Not published: chunks are no one's events.
    r#"
CREATE TABLE herald.streams (
    tenant text NOT NULL,
    job_id text NOT NULL,
    name text NOT NULL,
    next_offset bigint NOT NULL,
    bytes bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant, job_id, name)
);
CREATE TABLE herald.stream_segments (
    tenant text NOT NULL,
    job_id text NOT NULL,
    name text NOT NULL,
    first bigint NOT NULL,
    count bigint NOT NULL,
    bytes bigint NOT NULL,
    at bigint NOT NULL,
    chunks text NOT NULL,
    PRIMARY KEY (tenant, job_id, name, first)
);
CREATE INDEX stream_segments_by_time ON herald.stream_segments (at);
"#,
];

/// Creates schema `herald` and brings it up to date.
pub fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    // Serializes concurrent starts; released at commit.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS herald;
         CREATE TABLE IF NOT EXISTS herald.meta (key text PRIMARY KEY, value text NOT NULL);",
    )?;
    let applied: usize = tx
        .query_opt("SELECT value FROM herald.meta WHERE key = 'schema_version'", &[])?
        .and_then(|r| r.get::<_, String>(0).parse().ok())
        .unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::internal(format!(
            "the database's schema is version {applied}, newer than this Herald knows ({}): upgrade Herald",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO herald.meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&(i + 1).to_string()],
        )?;
        tracing::info!(version = i + 1, "applied PostgreSQL schema migration");
    }
    let publication_exists =
        tx.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&PUBLICATION])?.is_some();
    if !publication_exists {
        let tables: Vec<String> = OWN_TABLES.iter().map(|t| format!("herald.{t}")).collect();
        tx.batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {}", tables.join(", ")))?;
    }
    tx.commit()?;
    Ok(())
}
