//! [`WriteTx`] over a PostgreSQL transaction of the writer: SQL only. Events
//! are not written here: the sequencer derives them from the committed rows
//! (`sequencer.rs`), one path for Herald's own writes and anyone's SQL.

use super::rows::{parse_row, JobRow, NotificationRow, TaskRow};
use crate::model::{Artifact, Job, Notification, Task};
use crate::store::{ApiKeyRecord, Appended, NewEvent, StoreError, StoreErrorKind, WriteTx};
use postgres::types::ToSql;
use postgres::{Statement, Transaction};
use std::collections::HashMap;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let kind = match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreErrorKind::Conflict,
            Some(c)
                if *c == SqlState::CHECK_VIOLATION
                    || *c == SqlState::NOT_NULL_VIOLATION
                    || *c == SqlState::FOREIGN_KEY_VIOLATION
                    || *c == SqlState::INVALID_TEXT_REPRESENTATION =>
            {
                StoreErrorKind::Invalid
            }
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                StoreErrorKind::Retryable
            }
            Some(c)
                if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CRASH_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || *c == SqlState::READ_ONLY_SQL_TRANSACTION
                    || *c == SqlState::DISK_FULL =>
            {
                StoreErrorKind::Unavailable
            }
            Some(_) => StoreErrorKind::Internal,
            // No SQLSTATE: the connection broke or could not be made.
            None => StoreErrorKind::Unavailable,
        };
        StoreError::caused_by(kind, e.to_string(), e)
    }
}

/// Prepared statements of one connection, by SQL text.
#[derive(Default)]
pub struct Statements(HashMap<&'static str, Statement>);

/// One group transaction of the writer.
pub struct PgTx<'a, 'c> {
    pub tx: &'a mut Transaction<'c>,
    pub statements: &'a mut Statements,
    pub now: i64,
}

impl PgTx<'_, '_> {
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.0.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.tx.prepare(sql)?;
        self.statements.0.insert(sql, statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.tx.execute(&statement, params)?)
    }

    /// The first column of the first row, as text.
    fn text(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<String>, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.tx.query_opt(&statement, params)?.map(|r| r.get(0)))
    }

    fn texts(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<String>, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.tx.query(&statement, params)?.into_iter().map(|r| r.get(0)).collect())
    }
}

/// Counts are `u64` in the model and `bigint` here; the rules keep them sane.
fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

fn job_of(json: &str) -> Result<Job, StoreError> {
    parse_row::<JobRow>("jobs", json).map(Job::from)
}

impl WriteTx for PgTx<'_, '_> {
    fn now(&self) -> i64 {
        self.now
    }

    fn job(&mut self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        // FOR UPDATE: another writer (a second Herald, psql) cannot change the
        // job between this read and this transaction's write.
        self.text(
            "SELECT to_jsonb(j)::text FROM herald.jobs j WHERE tenant = $1 AND id = $2 FOR UPDATE",
            &[&tenant, &id],
        )?
        .map(|j| job_of(&j))
        .transpose()
    }

    fn job_creation(&mut self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let statement = self.prepared(
            "SELECT r.create_hash, to_jsonb(j)::text FROM herald.jobs j
             JOIN herald.job_reports r USING (tenant, id) WHERE j.tenant = $1 AND j.id = $2",
        )?;
        let Some(row) = self.tx.query_opt(&statement, &[&tenant, &id])? else { return Ok(None) };
        let job = job_of(row.get(1))?;
        let doc = serde_json::to_string(&job).map_err(StoreError::corrupt)?;
        Ok(Some((row.get(0), doc)))
    }

    fn insert_job(&mut self, tenant: &str, job: &Job, create_hash: &str, _doc: &str) -> Result<(), StoreError> {
        let now = self.now;
        let errors = serde_json::to_value(&job.errors).map_err(StoreError::corrupt)?;
        self.execute(
            "INSERT INTO herald.jobs (tenant, id, owner, kind, title, status, total, succeeded, failed, progress,
                stage, current_item, metadata, errors, created_at, started_at, updated_at, finished_at, version,
                counts_reported, progress_reported)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            &[
                &tenant,
                &job.id,
                &job.owner,
                &job.kind,
                &job.title,
                &job.status.as_str(),
                &job.total.map(big),
                &big(job.succeeded),
                &big(job.failed),
                &job.progress,
                &job.stage,
                &job.current_item,
                &job.metadata,
                &errors,
                &job.created_at,
                &job.started_at,
                &job.updated_at,
                &job.finished_at,
                &big(job.version),
                &job.counts_reported,
                &job.progress_reported,
            ],
        )?;
        self.execute(
            "INSERT INTO herald.job_reports (tenant, id, create_hash, last_report_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, id) DO UPDATE SET create_hash = excluded.create_hash,
                last_report_at = excluded.last_report_at",
            &[&tenant, &job.id, &create_hash, &now],
        )?;
        Ok(())
    }

    fn update_job(&mut self, tenant: &str, job: &Job, _doc: &str) -> Result<(), StoreError> {
        let errors = serde_json::to_value(&job.errors).map_err(StoreError::corrupt)?;
        let now = self.now;
        // One round trip for the job and its report time.
        self.execute(
            "WITH job AS (
                UPDATE herald.jobs SET kind = $3, title = $4, status = $5, total = $6, succeeded = $7, failed = $8,
                    progress = $9, stage = $10, current_item = $11, metadata = $12, errors = $13, started_at = $14,
                    updated_at = $15, finished_at = $16, version = $17, counts_reported = $18, progress_reported = $19
                WHERE tenant = $1 AND id = $2 RETURNING tenant, id)
             UPDATE herald.job_reports r SET last_report_at = $20 FROM job WHERE r.tenant = job.tenant AND r.id = job.id",
            &[
                &tenant,
                &job.id,
                &job.kind,
                &job.title,
                &job.status.as_str(),
                &job.total.map(big),
                &big(job.succeeded),
                &big(job.failed),
                &job.progress,
                &job.stage,
                &job.current_item,
                &job.metadata,
                &errors,
                &job.started_at,
                &job.updated_at,
                &job.finished_at,
                &big(job.version),
                &job.counts_reported,
                &job.progress_reported,
                &now,
            ],
        )?;
        Ok(())
    }

    fn touch_job(&mut self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "UPDATE herald.job_reports SET last_report_at = $3 WHERE tenant = $1 AND id = $2",
            &[&tenant, &id, &now],
        )?;
        Ok(())
    }

    fn silent_jobs(&mut self, before_ms: i64) -> Result<Vec<(String, Job)>, StoreError> {
        // SKIP LOCKED: a job another node is stalling (or a worker is reporting
        // on) right now is not silent; the next sweep looks again.
        let rows = self.texts(
            "SELECT to_jsonb(j)::text FROM herald.jobs j JOIN herald.job_reports r USING (tenant, id)
             WHERE j.status = 'running' AND r.last_report_at < $1 FOR UPDATE OF j SKIP LOCKED",
            &[&before_ms],
        )?;
        rows.iter().map(|j| job_of(j).map(|job| (job.tenant.clone(), job))).collect()
    }

    fn task(&mut self, tenant: &str, job_id: &str, id: &str) -> Result<Option<Task>, StoreError> {
        self.text(
            "SELECT to_jsonb(t)::text FROM herald.tasks t WHERE tenant = $1 AND job_id = $2 AND id = $3",
            &[&tenant, &job_id, &id],
        )?
        .map(|t| parse_row::<TaskRow>("tasks", &t).map(Task::from))
        .transpose()
    }

    fn upsert_task(&mut self, tenant: &str, task: &Task, _doc: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO herald.tasks (tenant, job_id, id, name, status, attempts, error, created_at, started_at,
                updated_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (tenant, job_id, id) DO UPDATE SET name = excluded.name, status = excluded.status,
                attempts = excluded.attempts, error = excluded.error, started_at = excluded.started_at,
                updated_at = excluded.updated_at, finished_at = excluded.finished_at",
            &[
                &tenant,
                &task.job_id,
                &task.id,
                &task.name,
                &task.status.as_str(),
                &(task.attempts as i64),
                &task.error,
                &task.created_at,
                &task.started_at,
                &task.updated_at,
                &task.finished_at,
            ],
        )?;
        Ok(())
    }

    fn task_counts(&mut self, tenant: &str, job_id: &str) -> Result<(u64, u64, u64), StoreError> {
        let statement = self.prepared(
            "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed')
             FROM herald.tasks WHERE tenant = $1 AND job_id = $2",
        )?;
        let row = self.tx.query_one(&statement, &[&tenant, &job_id])?;
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok((n(0), n(1), n(2)))
    }

    fn insert_artifact(&mut self, tenant: &str, artifact: &Artifact, _doc: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO herald.artifacts (tenant, job_id, id, kind, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&tenant, &artifact.job_id, &artifact.id, &artifact.kind, &artifact.payload, &artifact.created_at],
        )?;
        Ok(())
    }

    fn insert_notification(&mut self, tenant: &str, n: &Notification, _doc: &str) -> Result<(), StoreError> {
        let level = serde_json::to_value(n.level).map_err(StoreError::corrupt)?;
        let level = level.as_str().unwrap_or("info");
        self.execute(
            "INSERT INTO herald.notifications (tenant, id, recipient, level, title, body, link, job_id, read,
                created_at, read_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &tenant,
                &n.id,
                &n.recipient,
                &level,
                &n.title,
                &n.body,
                &n.link,
                &n.job_id,
                &n.read,
                &n.created_at,
                &n.read_at,
            ],
        )?;
        Ok(())
    }

    fn notification(&mut self, tenant: &str, recipient: &str, id: &str) -> Result<Option<Notification>, StoreError> {
        self.text(
            "SELECT to_jsonb(n)::text FROM herald.notifications n WHERE tenant = $1 AND id = $2 AND recipient = $3",
            &[&tenant, &id, &recipient],
        )?
        .map(|n| parse_row::<NotificationRow>("notifications", &n).map(Notification::from))
        .transpose()
    }

    fn unread_notifications(&mut self, tenant: &str, recipient: &str) -> Result<Vec<Notification>, StoreError> {
        self.texts(
            "SELECT to_jsonb(n)::text FROM herald.notifications n
             WHERE tenant = $1 AND recipient = $2 AND NOT read ORDER BY seq",
            &[&tenant, &recipient],
        )?
        .iter()
        .map(|n| parse_row::<NotificationRow>("notifications", n).map(Notification::from))
        .collect()
    }

    fn update_notification(&mut self, tenant: &str, n: &Notification, _doc: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE herald.notifications SET read = $3, read_at = $4 WHERE tenant = $1 AND id = $2",
            &[&tenant, &n.id, &n.read, &n.read_at],
        )?;
        Ok(())
    }

    fn append(&mut self, _tenant: &str, _event: NewEvent<'_>) -> Result<(), StoreError> {
        // The row written just before is the event: the sequencer reads it from
        // the WAL, in commit order, and gives it its position.
        Ok(())
    }

    fn prune(&mut self, before_ms: i64, idempotency_before_ms: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM herald.idempotency WHERE created_at < $1", &[&idempotency_before_ms])?;
        let statement = self.prepared("SELECT max(position) FROM herald.events WHERE time < $1")?;
        let max: Option<i64> = self.tx.query_one(&statement, &[&before_ms])?.get(0);
        self.execute("DELETE FROM herald.sessions WHERE saved_at < $1", &[&before_ms])?;
        if self.execute("DELETE FROM herald.stream_segments WHERE at < $1", &[&before_ms])? > 0 {
            self.execute(
                "UPDATE herald.streams s SET bytes = coalesce((SELECT sum(g.bytes) FROM herald.stream_segments g
                   WHERE g.tenant = s.tenant AND g.job_id = s.job_id AND g.name = s.name), 0)",
                &[],
            )?;
        }
        let Some(max) = max else { return Ok(0) };
        self.execute("DELETE FROM herald.event_topics WHERE position <= $1", &[&max])?;
        let pruned = self.execute("DELETE FROM herald.events WHERE position <= $1", &[&max])?;
        self.execute(
            "INSERT INTO herald.meta (key, value) VALUES ('floor', $1)
             ON CONFLICT (key) DO UPDATE SET value = greatest(herald.meta.value::bigint, excluded.value::bigint)::text",
            &[&max.to_string()],
        )?;
        Ok(pruned)
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "INSERT INTO herald.api_keys (id, tenant, name, role, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&key.id, &key.tenant, &key.name, &key.role.as_str(), &key.hash, &now],
        )?;
        Ok(())
    }

    fn api_key(&mut self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        // The columns of API_KEY_COLUMNS, spelled out: statements here are cached by &'static str.
        let statement = self.prepared(
            "SELECT id, tenant, name, role, hash, created_at, last_used_at, expires_at, revoked_at, changed_at
             FROM herald.api_keys WHERE id = $1 AND tenant = $2 FOR UPDATE",
        )?;
        Ok(self.tx.query_opt(&statement, &[&id, &tenant])?.as_ref().map(super::read::api_key_row))
    }

    fn change_api_key(
        &mut self,
        tenant: &str,
        id: &str,
        revoked_at: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "UPDATE herald.api_keys SET revoked_at = coalesce($3, revoked_at), expires_at = coalesce($4, expires_at),
                changed_at = $5 WHERE id = $1 AND tenant = $2",
            &[&id, &tenant, &revoked_at, &expires_at, &now],
        )?;
        Ok(())
    }

    fn touch_api_keys(&mut self, used: &[(String, i64)]) -> Result<(), StoreError> {
        for (id, at) in used {
            self.execute(
                "UPDATE herald.api_keys SET last_used_at = greatest(coalesce(last_used_at, 0), $2) WHERE id = $1",
                &[id, at],
            )?;
        }
        Ok(())
    }

    fn idempotent_reply(&mut self, tenant: &str, sub: &str, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let statement = self.prepared(
            "SELECT fingerprint, reply FROM herald.idempotency WHERE tenant = $1 AND sub = $2 AND key = $3",
        )?;
        Ok(self.tx.query_opt(&statement, &[&tenant, &sub, &key])?.map(|r| (r.get(0), r.get(1))))
    }

    fn save_idempotent_reply(
        &mut self,
        tenant: &str,
        sub: &str,
        key: &str,
        fingerprint: &str,
        reply: &str,
    ) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "INSERT INTO herald.idempotency (tenant, sub, key, fingerprint, reply, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&tenant, &sub, &key, &fingerprint, &reply, &now],
        )?;
        Ok(())
    }

    fn save_session(
        &mut self,
        tenant: &str,
        id: &str,
        sub: &str,
        doc: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        let saved_at = at.unwrap_or(self.now);
        self.execute(
            "INSERT INTO herald.sessions (tenant, id, sub, doc, saved_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, id) DO UPDATE SET doc = excluded.doc, saved_at = excluded.saved_at
             WHERE herald.sessions.sub = excluded.sub AND herald.sessions.saved_at <= excluded.saved_at",
            &[&tenant, &id, &sub, &doc, &saved_at],
        )?;
        Ok(())
    }

    fn append_chunks(
        &mut self,
        tenant: &str,
        job_id: &str,
        stream: &str,
        chunks_json: &str,
        count: u64,
        max_bytes: u64,
    ) -> Result<Appended, StoreError> {
        let (count, bytes, now) = (count as i64, chunks_json.len() as i64, self.now);
        // One statement gives the offsets: concurrent appends cannot share one.
        let statement = self.prepared(
            "INSERT INTO herald.streams (tenant, job_id, name, next_offset, bytes, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant, job_id, name) DO UPDATE SET next_offset = herald.streams.next_offset + excluded.next_offset,
               bytes = herald.streams.bytes + excluded.bytes, updated_at = excluded.updated_at
             RETURNING next_offset, bytes",
        )?;
        let row = self.tx.query_one(&statement, &[&tenant, &job_id, &stream, &count, &bytes, &now])?;
        let (next, mut total): (i64, i64) = (row.get(0), row.get(1));
        let first = next - count;
        self.execute(
            "INSERT INTO herald.stream_segments (tenant, job_id, name, first, count, bytes, at, chunks)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&tenant, &job_id, &stream, &first, &count, &bytes, &now, &chunks_json],
        )?;
        if total > max_bytes as i64 {
            let statement = self.prepared(
                "SELECT first, bytes FROM herald.stream_segments WHERE tenant = $1 AND job_id = $2 AND name = $3
                 AND first < $4 ORDER BY first LIMIT 1024",
            )?;
            let oldest = self.tx.query(&statement, &[&tenant, &job_id, &stream, &first])?;
            let segments = oldest.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
            let (cut, after) = crate::store::trim_cut(segments, total, max_bytes as i64);
            total = after;
            if let Some(cut) = cut {
                self.execute(
                    "DELETE FROM herald.stream_segments WHERE tenant = $1 AND job_id = $2 AND name = $3 AND first <= $4",
                    &[&tenant, &job_id, &stream, &cut],
                )?;
                self.execute(
                    "UPDATE herald.streams SET bytes = $4 WHERE tenant = $1 AND job_id = $2 AND name = $3",
                    &[&tenant, &job_id, &stream, &total],
                )?;
            }
        }
        let statement = self.prepared(
            "SELECT min(first) FROM herald.stream_segments WHERE tenant = $1 AND job_id = $2 AND name = $3",
        )?;
        let floor: Option<i64> = self.tx.query_one(&statement, &[&tenant, &job_id, &stream])?.get(0);
        Ok(Appended { first: first as u64, next: next as u64, floor: floor.unwrap_or(first) as u64 })
    }
}
