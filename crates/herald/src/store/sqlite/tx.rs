//! [`WriteTx`] over the writer's SQLite transaction: SQL only. Appended events
//! get their position from `AUTOINCREMENT` (one writer, so commit order) and
//! are kept here until the commit, when the writer hands them to the feed.

use crate::model::{Artifact, Event, Job, Notification, Position, Task};
use crate::store::{ApiKeyRecord, Appended, NewEvent, StoreError, StoreErrorKind, WriteTx, API_KEY_COLUMNS};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use std::sync::Arc;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreErrorKind::Retryable,
            Some(ErrorCode::ConstraintViolation) => StoreErrorKind::Conflict,
            Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Internal,
        };
        StoreError::caused_by(kind, e.to_string(), e)
    }
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(StoreError::corrupt)
}

/// One group transaction of the writer.
pub struct SqliteTx<'a> {
    pub conn: &'a Connection,
    pub now: i64,
    /// Events appended so far, in position order.
    pub events: Vec<Event>,
}

impl WriteTx for SqliteTx<'_> {
    fn now(&self) -> i64 {
        self.now
    }

    fn job(&mut self, tenant: &str, id: &str) -> Result<Option<Job>, StoreError> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM jobs WHERE tenant = ?1 AND id = ?2")?
            .query_row(params![tenant, id], |r| r.get(0))
            .optional()?;
        doc.map(|d| from_json(&d)).transpose()
    }

    fn job_creation(&mut self, tenant: &str, id: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT create_hash, doc FROM jobs WHERE tenant = ?1 AND id = ?2")?
            .query_row(params![tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn insert_job(&mut self, tenant: &str, job: &Job, create_hash: &str, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO jobs (tenant, id, owner, kind, status, updated_at, last_report_at, create_hash, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
            )?
            .execute(params![tenant, job.id, job.owner, job.kind, job.status.as_str(), self.now, create_hash, doc])?;
        Ok(())
    }

    fn update_job(&mut self, tenant: &str, job: &Job, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE jobs SET status = ?3, updated_at = ?4, last_report_at = ?5, doc = ?6 WHERE tenant = ?1 AND id = ?2",
            )?
            .execute(params![tenant, job.id, job.status.as_str(), job.updated_at, self.now, doc])?;
        Ok(())
    }

    fn touch_job(&mut self, tenant: &str, id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE jobs SET last_report_at = ?3 WHERE tenant = ?1 AND id = ?2")?
            .execute(params![tenant, id, self.now])?;
        Ok(())
    }

    fn silent_jobs(&mut self, before_ms: i64) -> Result<Vec<(String, Job)>, StoreError> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached("SELECT tenant, doc FROM jobs WHERE status = 'running' AND last_report_at < ?1")?
            .query_map(params![before_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(|(tenant, doc)| Ok((tenant, from_json(&doc)?))).collect()
    }

    fn task(&mut self, tenant: &str, job_id: &str, id: &str) -> Result<Option<Task>, StoreError> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM tasks WHERE tenant = ?1 AND job_id = ?2 AND id = ?3")?
            .query_row(params![tenant, job_id, id], |r| r.get(0))
            .optional()?;
        doc.map(|d| from_json(&d)).transpose()
    }

    fn upsert_task(&mut self, tenant: &str, task: &Task, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO tasks (tenant, job_id, id, status, doc) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, job_id, id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            )?
            .execute(params![tenant, task.job_id, task.id, task.status.as_str(), doc])?;
        Ok(())
    }

    fn task_counts(&mut self, tenant: &str, job_id: &str) -> Result<(u64, u64, u64), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, count(*) FROM tasks WHERE tenant = ?1 AND job_id = ?2 GROUP BY status")?;
        let rows = stmt.query_map(params![tenant, job_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let (mut total, mut succeeded, mut failed) = (0u64, 0u64, 0u64);
        for row in rows {
            let (status, n) = row?;
            total += n as u64;
            match status.as_str() {
                "succeeded" => succeeded += n as u64,
                "failed" => failed += n as u64,
                _ => {}
            }
        }
        Ok((total, succeeded, failed))
    }

    fn insert_artifact(&mut self, tenant: &str, artifact: &Artifact, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO artifacts (tenant, job_id, id, doc) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![tenant, artifact.job_id, artifact.id, doc])?;
        Ok(())
    }

    fn insert_notification(&mut self, tenant: &str, n: &Notification, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO notifications (tenant, recipient, id, read, doc) VALUES (?1, ?2, ?3, 0, ?4)")?
            .execute(params![tenant, n.recipient, n.id, doc])?;
        Ok(())
    }

    fn notification(&mut self, tenant: &str, recipient: &str, id: &str) -> Result<Option<Notification>, StoreError> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM notifications WHERE tenant = ?1 AND id = ?2 AND recipient = ?3")?
            .query_row(params![tenant, id, recipient], |r| r.get(0))
            .optional()?;
        doc.map(|d| from_json(&d)).transpose()
    }

    fn unread_notifications(&mut self, tenant: &str, recipient: &str) -> Result<Vec<Notification>, StoreError> {
        let docs: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT doc FROM notifications WHERE tenant = ?1 AND recipient = ?2 AND read = 0 ORDER BY seq",
            )?
            .query_map(params![tenant, recipient], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        docs.iter().map(|d| from_json(d)).collect()
    }

    fn update_notification(&mut self, tenant: &str, n: &Notification, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE notifications SET read = ?3, doc = ?4 WHERE tenant = ?1 AND id = ?2")?
            .execute(params![tenant, n.id, n.read, doc])?;
        Ok(())
    }

    fn append(&mut self, tenant: &str, event: NewEvent<'_>) -> Result<(), StoreError> {
        let (job_id, owner) = event.job.map_or((None, None), |(j, o)| (Some(j), o));
        self.conn
            .prepare_cached(
                "INSERT INTO events (tenant, type, job_id, owner, data, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![tenant, event.kind.as_str(), job_id, owner, event.data, self.now])?;
        let position = self.conn.last_insert_rowid();
        let mut topic_stmt =
            self.conn.prepare_cached("INSERT INTO event_topics (tenant, topic, position) VALUES (?1, ?2, ?3)")?;
        for t in &event.topics {
            topic_stmt.execute(params![tenant, t, position])?;
        }
        let data = RawValue::from_string(event.data).map_err(StoreError::corrupt)?;
        self.events.push(Event {
            position: Position::from_u64(position as u64),
            tenant: Arc::from(tenant),
            kind: event.kind,
            topics: event.topics,
            job_id: job_id.map(str::to_string),
            owner: owner.map(str::to_string),
            data: Arc::from(data),
            time: self.now,
            old: None,
            table: None,
            row: Default::default(),
        });
        Ok(())
    }

    fn prune(&mut self, before_ms: i64, idempotency_before_ms: i64) -> Result<u64, StoreError> {
        self.conn.execute("DELETE FROM idempotency WHERE created_at < ?1", params![idempotency_before_ms])?;
        let max: Option<i64> =
            self.conn
                .query_row("SELECT max(position) FROM events WHERE time < ?1", params![before_ms], |r| r.get(0))?;
        self.conn.execute("DELETE FROM sessions WHERE saved_at < ?1", params![before_ms])?;
        if self.conn.execute("DELETE FROM stream_segments WHERE at < ?1", params![before_ms])? > 0 {
            self.conn.execute(
                "UPDATE streams SET bytes = coalesce((SELECT sum(g.bytes) FROM stream_segments g
                   WHERE g.tenant = streams.tenant AND g.job_id = streams.job_id AND g.name = streams.name), 0)",
                [],
            )?;
        }
        let Some(max) = max else { return Ok(0) };
        self.conn.execute("DELETE FROM event_topics WHERE position <= ?1", params![max])?;
        let pruned = self.conn.execute("DELETE FROM events WHERE position <= ?1", params![max])?;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('floor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![max.to_string()],
        )?;
        Ok(pruned as u64)
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_keys (id, tenant, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.id, key.tenant, key.name, key.role.as_str(), key.hash, self.now],
        )?;
        Ok(())
    }

    fn api_key(&mut self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?1 AND tenant = ?2"))?
            .query_row(params![id, tenant], super::read::api_key_row)
            .optional()?)
    }

    fn change_api_key(
        &mut self,
        tenant: &str,
        id: &str,
        revoked_at: Option<i64>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(?3, revoked_at), expires_at = coalesce(?4, expires_at),
                changed_at = ?5 WHERE id = ?1 AND tenant = ?2",
            params![id, tenant, revoked_at, expires_at, self.now],
        )?;
        Ok(())
    }

    fn touch_api_keys(&mut self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1")?;
        for (id, at) in used {
            statement.execute(params![id, at])?;
        }
        Ok(())
    }

    fn idempotent_reply(&mut self, tenant: &str, sub: &str, key: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT fingerprint, reply FROM idempotency WHERE tenant = ?1 AND sub = ?2 AND key = ?3")?
            .query_row(params![tenant, sub, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn save_idempotent_reply(
        &mut self,
        tenant: &str,
        sub: &str,
        key: &str,
        fingerprint: &str,
        reply: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO idempotency (tenant, sub, key, fingerprint, reply, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![tenant, sub, key, fingerprint, reply, self.now])?;
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
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (tenant, id, sub, doc, saved_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, id) DO UPDATE SET doc = excluded.doc, saved_at = excluded.saved_at
                 WHERE sessions.sub = excluded.sub AND sessions.saved_at <= excluded.saved_at",
            )?
            .execute(params![tenant, id, sub, doc, at.unwrap_or(self.now)])?;
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
        let bytes = chunks_json.len() as i64;
        // One statement gives the offsets: concurrent appends cannot share one.
        let (next, mut total): (i64, i64) = self
            .conn
            .prepare_cached(
                "INSERT INTO streams (tenant, job_id, name, next_offset, bytes, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant, job_id, name) DO UPDATE SET next_offset = next_offset + excluded.next_offset,
                   bytes = bytes + excluded.bytes, updated_at = excluded.updated_at
                 RETURNING next_offset, bytes",
            )?
            .query_row(params![tenant, job_id, stream, count as i64, bytes, self.now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let first = next - count as i64;
        self.conn
            .prepare_cached(
                "INSERT INTO stream_segments (tenant, job_id, name, first, count, bytes, at, chunks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![tenant, job_id, stream, first, count as i64, bytes, self.now, chunks_json])?;
        if total > max_bytes as i64 {
            let oldest: Vec<(i64, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT first, bytes FROM stream_segments WHERE tenant = ?1 AND job_id = ?2 AND name = ?3
                     AND first < ?4 ORDER BY first LIMIT 1024",
                )?
                .query_map(params![tenant, job_id, stream, first], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let (cut, after) = crate::store::trim_cut(oldest, total, max_bytes as i64);
            total = after;
            if let Some(cut) = cut {
                self.conn
                    .prepare_cached(
                        "DELETE FROM stream_segments WHERE tenant = ?1 AND job_id = ?2 AND name = ?3 AND first <= ?4",
                    )?
                    .execute(params![tenant, job_id, stream, cut])?;
                self.conn
                    .prepare_cached("UPDATE streams SET bytes = ?4 WHERE tenant = ?1 AND job_id = ?2 AND name = ?3")?
                    .execute(params![tenant, job_id, stream, total])?;
            }
        }
        let floor: i64 = self
            .conn
            .prepare_cached("SELECT min(first) FROM stream_segments WHERE tenant = ?1 AND job_id = ?2 AND name = ?3")?
            .query_row(params![tenant, job_id, stream], |r| r.get::<_, Option<i64>>(0))?
            .unwrap_or(first);
        Ok(Appended { first: first as u64, next: next as u64, floor: floor as u64 })
    }
}
