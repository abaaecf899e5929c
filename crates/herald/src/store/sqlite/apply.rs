//! Applies one [`Command`] inside the writer's transaction: reads the rows it
//! needs, lets the domain rules decide, writes rows and appends events.

use crate::model::ids::new_id;
use crate::model::notification::Level;
use crate::model::topic::{job_topics, user_topic};
use crate::model::{Artifact, Event, EventType, Job, JobStatus, Notification, Task, TaskStatus};
use crate::store::{Command, NewJob, NewNotification, Reply, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::sync::Arc;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

/// Result of one command: its reply and the events it appended.
pub struct Applied {
    pub reply: Reply,
    pub events: Vec<Event>,
}

/// Everything one command needs while it runs.
struct Tx<'a> {
    conn: &'a Connection,
    tenant: &'a str,
    now: i64,
    events: Vec<Event>,
}

pub fn apply(conn: &Connection, tenant: &str, cmd: Command, now: i64) -> Result<Applied, StoreError> {
    let mut tx = Tx { conn, tenant, now, events: Vec::new() };
    let reply = match cmd {
        Command::CreateJob(new) => tx.create_job(new)?,
        Command::ReportProgress { job_id, report } => tx.report_progress(&job_id, &report)?,
        Command::UpsertTask { job_id, task_id, upsert } => tx.upsert_task(&job_id, &task_id, &upsert)?,
        Command::AddArtifact { job_id, kind, payload } => tx.add_artifact(&job_id, kind, payload)?,
        Command::CreateNotification(n) => {
            let n = tx.create_notification(n, None)?;
            Reply { created: true, body: to_value(&n)? }
        }
        Command::MarkRead { recipient, id } => tx.mark_read(&recipient, &id)?,
        Command::MarkAllRead { recipient } => tx.mark_all_read(&recipient)?,
        Command::DetectStalls { timeout_ms } => tx.detect_stalls(timeout_ms)?,
        Command::Prune { before_ms } => tx.prune(before_ms)?,
        Command::CreateApiKey { id, name, role, hash } => {
            tx.conn.execute(
                "INSERT INTO api_keys (id, tenant, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, tenant, name, role.as_str(), hash, now],
            )?;
            Reply {
                created: true,
                body: to_value(&serde_json::json!({"id": id, "tenant": tenant, "name": name, "role": role.as_str()}))?,
            }
        }
    };
    Ok(Applied { reply, events: tx.events })
}

/// A reply body, serialized once here and written to the HTTP response as is.
fn to_value<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, StoreError> {
    serde_json::value::to_raw_value(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// A stored JSON document as a reply body, without a round trip through `Value`.
fn raw(doc: String) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(doc).map_err(|e| StoreError::Internal(format!("corrupt row: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Internal(format!("corrupt row: {e}")))
}

/// The event type a job change is announced as.
fn job_event_type(before: Option<JobStatus>, after: JobStatus) -> EventType {
    match (before, after) {
        (None, _) => EventType::JobCreated,
        (Some(b), a) if b == a => EventType::JobUpdated,
        (_, JobStatus::Completed) => EventType::JobCompleted,
        (_, JobStatus::Failed) => EventType::JobFailed,
        (_, JobStatus::Cancelled) => EventType::JobCancelled,
        (_, JobStatus::Stalled) => EventType::JobStalled,
        _ => EventType::JobUpdated,
    }
}

impl Tx<'_> {
    fn append(
        &mut self,
        kind: EventType,
        job: Option<(&str, Option<&str>)>,
        topics: Vec<String>,
        data: String,
    ) -> Result<(), StoreError> {
        let (job_id, owner) = job.map_or((None, None), |(j, o)| (Some(j), o));
        self.conn
            .prepare_cached(
                "INSERT INTO events (tenant, type, job_id, owner, data, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![self.tenant, kind.as_str(), job_id, owner, data, self.now])?;
        let position = self.conn.last_insert_rowid() as u64;
        let mut topic_stmt =
            self.conn.prepare_cached("INSERT INTO event_topics (tenant, topic, position) VALUES (?1, ?2, ?3)")?;
        for t in &topics {
            topic_stmt.execute(params![self.tenant, t, position as i64])?;
        }
        let data = RawValue::from_string(data).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.events.push(Event {
            position,
            tenant: Arc::from(self.tenant),
            kind,
            topics,
            job_id: job_id.map(str::to_string),
            owner: owner.map(str::to_string),
            data: Arc::from(data),
            time: self.now,
            row: Default::default(),
        });
        Ok(())
    }

    fn load_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM jobs WHERE tenant = ?1 AND id = ?2")?
            .query_row(params![self.tenant, id], |r| r.get(0))
            .optional()?;
        doc.map(|d| from_json(&d)).transpose()
    }

    fn require_job(&self, id: &str) -> Result<Job, StoreError> {
        self.load_job(id)?.ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Writes a job row and announces the change; returns the row's JSON.
    fn save_job(&mut self, job: &Job, before: Option<JobStatus>) -> Result<String, StoreError> {
        let doc = to_json(job)?;
        self.conn
            .prepare_cached(
                "UPDATE jobs SET status = ?3, updated_at = ?4, last_report_at = ?5, doc = ?6 WHERE tenant = ?1 AND id = ?2",
            )?
            .execute(params![self.tenant, job.id, job.status.as_str(), job.updated_at, self.now, doc])?;
        let kind = job_event_type(before, job.status);
        self.append(
            kind,
            Some((&job.id, job.owner.as_deref())),
            job_topics(&job.id, job.owner.as_deref(), true),
            doc.clone(),
        )?;
        if before != Some(job.status) {
            self.notify_owner(job)?;
        }
        Ok(doc)
    }

    /// Herald's own notifications: the owner hears when a job completes, fails or stalls.
    fn notify_owner(&mut self, job: &Job) -> Result<(), StoreError> {
        let Some(owner) = job.owner.clone() else { return Ok(()) };
        let name = job.title.clone().unwrap_or_else(|| job.id.clone());
        let (level, title) = match job.status {
            JobStatus::Completed => (Level::Success, format!("{name} completed")),
            JobStatus::Failed => (Level::Error, format!("{name} failed")),
            JobStatus::Stalled => (Level::Warning, format!("{name} stalled")),
            _ => return Ok(()),
        };
        let body = match job.status {
            JobStatus::Completed | JobStatus::Failed => {
                Some(format!("{} succeeded, {} failed", job.succeeded, job.failed))
            }
            _ => Some("No progress report arrived within the stall timeout.".to_string()),
        };
        let n = NewNotification { recipient: owner, level, title, body, link: Some(format!("/jobs/{}", job.id)) };
        self.create_notification(n, Some(&job.id))?;
        Ok(())
    }

    fn create_job(&mut self, new: NewJob) -> Result<Reply, StoreError> {
        let id = new.id.clone().unwrap_or_else(new_id);
        let hash = {
            let mut keyed = new.clone();
            keyed.id = Some(id.clone());
            hex(&Sha256::digest(to_json(&keyed)?.as_bytes()))
        };
        let existing: Option<(String, String)> = self
            .conn
            .prepare_cached("SELECT create_hash, doc FROM jobs WHERE tenant = ?1 AND id = ?2")?
            .query_row(params![self.tenant, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((existing_hash, doc)) = existing {
            if existing_hash == hash {
                return Ok(Reply { created: false, body: raw(doc)? });
            }
            return Err(StoreError::Conflict(format!("job {id} already exists with a different body")));
        }
        let status = new.status.unwrap_or(JobStatus::Queued);
        if !matches!(status, JobStatus::Queued | JobStatus::Running) {
            return Err(StoreError::Invalid {
                field: "status".into(),
                message: "a new job is queued or running".into(),
            });
        }
        if let Some(m) = &new.metadata {
            if !m.is_object() {
                return Err(StoreError::Invalid { field: "metadata".into(), message: "must be a JSON object".into() });
            }
        }
        let mut job = Job {
            id: id.clone(),
            tenant: self.tenant.to_string(),
            owner: new.owner,
            kind: new.kind,
            title: new.title,
            status,
            total: new.total,
            succeeded: 0,
            failed: 0,
            progress: 0.0,
            stage: None,
            current_item: None,
            metadata: new.metadata.unwrap_or_else(|| serde_json::json!({})),
            errors: Vec::new(),
            created_at: self.now,
            started_at: (status == JobStatus::Running).then_some(self.now),
            updated_at: self.now,
            finished_at: None,
            version: 1,
            counts_reported: false,
            progress_reported: false,
        };
        let mut tasks = Vec::with_capacity(new.tasks.len());
        for (i, t) in new.tasks.iter().enumerate() {
            let task_id = t.id.clone().unwrap_or_else(|| (i + 1).to_string());
            crate::model::ids::validate_id(&task_id)
                .map_err(|m| StoreError::Invalid { field: format!("tasks[{i}].id"), message: m })?;
            let mut task = Task::new(task_id, id.clone(), self.now);
            task.apply(t, self.now);
            tasks.push(task);
        }
        if !tasks.is_empty() {
            let (s, f) = count_finished(tasks.iter().map(|t| t.status));
            job.follow_tasks(tasks.len() as u64, s, f);
        }
        // As with an upsert, a task already running means the job has started.
        if job.status == JobStatus::Queued && tasks.iter().any(|t| t.status == TaskStatus::Running) {
            job.transition(JobStatus::Running, self.now)?;
        }
        let doc = to_json(&job)?;
        self.conn
            .prepare_cached(
                "INSERT INTO jobs (tenant, id, owner, kind, status, updated_at, last_report_at, create_hash, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
            )?
            .execute(params![self.tenant, id, job.owner, job.kind, job.status.as_str(), self.now, hash, doc])?;
        self.append(
            EventType::JobCreated,
            Some((&id, job.owner.as_deref())),
            job_topics(&id, job.owner.as_deref(), true),
            doc,
        )?;
        for task in &tasks {
            if tasks.iter().filter(|t| t.id == task.id).count() > 1 {
                return Err(StoreError::Invalid {
                    field: "tasks".into(),
                    message: format!("task id {} appears twice", task.id),
                });
            }
            self.insert_task(task, &job, true)?;
        }
        Ok(Reply { created: true, body: to_value(&job)? })
    }

    fn insert_task(&mut self, task: &Task, job: &Job, new: bool) -> Result<(), StoreError> {
        let doc = to_json(task)?;
        self.conn
            .prepare_cached(
                "INSERT INTO tasks (tenant, job_id, id, status, doc) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, job_id, id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            )?
            .execute(params![self.tenant, job.id, task.id, task.status.as_str(), doc])?;
        let kind = if new { EventType::TaskCreated } else { EventType::TaskUpdated };
        self.append(kind, Some((&job.id, job.owner.as_deref())), job_topics(&job.id, job.owner.as_deref(), false), doc)
    }

    fn report_progress(
        &mut self,
        job_id: &str,
        report: &crate::model::job::ProgressReport,
    ) -> Result<Reply, StoreError> {
        let mut job = self.require_job(job_id)?;
        let before = job.status;
        job.apply_report(report, self.now)?;
        let doc = self.save_job(&job, Some(before))?;
        Ok(Reply { created: false, body: raw(doc)? })
    }

    fn upsert_task(
        &mut self,
        job_id: &str,
        task_id: &str,
        upsert: &crate::model::task::TaskUpsert,
    ) -> Result<Reply, StoreError> {
        let mut job = self.require_job(job_id)?;
        if job.status.is_terminal() {
            return Err(StoreError::JobFinished(job.status));
        }
        let existing: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM tasks WHERE tenant = ?1 AND job_id = ?2 AND id = ?3")?
            .query_row(params![self.tenant, job_id, task_id], |r| r.get(0))
            .optional()?;
        let is_new = existing.is_none();
        let mut task = match existing {
            Some(doc) => from_json::<Task>(&doc)?,
            None => Task::new(task_id.to_string(), job_id.to_string(), self.now),
        };
        let changed = task.apply(upsert, self.now);
        if !changed && !is_new {
            return Ok(Reply { created: false, body: to_value(&task)? });
        }
        self.insert_task(&task, &job, is_new)?;

        let before = job.clone();
        let (total, succeeded, failed) = self.task_counts(job_id)?;
        job.follow_tasks(total, succeeded, failed);
        if job.status == JobStatus::Stalled || (job.status == JobStatus::Queued && task.status == TaskStatus::Running) {
            job.transition(JobStatus::Running, self.now)?;
        }
        if job != before {
            job.touch(self.now);
            self.save_job(&job, Some(before.status))?;
        } else {
            self.conn
                .prepare_cached("UPDATE jobs SET last_report_at = ?3 WHERE tenant = ?1 AND id = ?2")?
                .execute(params![self.tenant, job_id, self.now])?;
        }
        Ok(Reply { created: is_new, body: to_value(&task)? })
    }

    fn task_counts(&self, job_id: &str) -> Result<(u64, u64, u64), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, count(*) FROM tasks WHERE tenant = ?1 AND job_id = ?2 GROUP BY status")?;
        let rows =
            stmt.query_map(params![self.tenant, job_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let (mut total, mut s, mut f) = (0u64, 0u64, 0u64);
        for row in rows {
            let (status, n) = row?;
            total += n as u64;
            match status.as_str() {
                "succeeded" => s += n as u64,
                "failed" => f += n as u64,
                _ => {}
            }
        }
        Ok((total, s, f))
    }

    fn add_artifact(&mut self, job_id: &str, kind: String, payload: serde_json::Value) -> Result<Reply, StoreError> {
        let job = self.require_job(job_id)?;
        let artifact = Artifact { id: new_id(), job_id: job_id.to_string(), kind, payload, created_at: self.now };
        let doc = to_json(&artifact)?;
        self.conn
            .prepare_cached("INSERT INTO artifacts (tenant, job_id, id, doc) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![self.tenant, job_id, artifact.id, doc])?;
        self.conn
            .prepare_cached("UPDATE jobs SET last_report_at = ?3 WHERE tenant = ?1 AND id = ?2")?
            .execute(params![self.tenant, job_id, self.now])?;
        self.append(
            EventType::ArtifactCreated,
            Some((job_id, job.owner.as_deref())),
            job_topics(job_id, job.owner.as_deref(), false),
            doc,
        )?;
        Ok(Reply { created: true, body: to_value(&artifact)? })
    }

    fn create_notification(&mut self, n: NewNotification, job_id: Option<&str>) -> Result<Notification, StoreError> {
        let notification = Notification {
            id: new_id(),
            recipient: n.recipient,
            level: n.level,
            title: n.title,
            body: n.body,
            link: n.link,
            job_id: job_id.map(str::to_string),
            read: false,
            created_at: self.now,
            read_at: None,
        };
        let doc = to_json(&notification)?;
        self.conn
            .prepare_cached("INSERT INTO notifications (tenant, recipient, id, read, doc) VALUES (?1, ?2, ?3, 0, ?4)")?
            .execute(params![self.tenant, notification.recipient, notification.id, doc])?;
        self.append(EventType::NotificationCreated, None, vec![user_topic(&notification.recipient)], doc)?;
        Ok(notification)
    }

    fn mark_read(&mut self, recipient: &str, id: &str) -> Result<Reply, StoreError> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM notifications WHERE tenant = ?1 AND id = ?2 AND recipient = ?3")?
            .query_row(params![self.tenant, id, recipient], |r| r.get(0))
            .optional()?;
        let mut n: Notification = from_json(&doc.ok_or_else(|| StoreError::NotFound(format!("notification {id}")))?)?;
        if !n.read {
            self.set_read(&mut n)?;
        }
        Ok(Reply { created: false, body: to_value(&n)? })
    }

    fn set_read(&mut self, n: &mut Notification) -> Result<(), StoreError> {
        n.read = true;
        n.read_at = Some(self.now);
        let doc = to_json(&*n)?;
        self.conn
            .prepare_cached("UPDATE notifications SET read = 1, doc = ?3 WHERE tenant = ?1 AND id = ?2")?
            .execute(params![self.tenant, n.id, doc])?;
        self.append(EventType::NotificationRead, None, vec![user_topic(&n.recipient)], doc)
    }

    fn mark_all_read(&mut self, recipient: &str) -> Result<Reply, StoreError> {
        let docs: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT doc FROM notifications WHERE tenant = ?1 AND recipient = ?2 AND read = 0 ORDER BY seq",
            )?
            .query_map(params![self.tenant, recipient], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let count = docs.len();
        for doc in docs {
            let mut n: Notification = from_json(&doc)?;
            self.set_read(&mut n)?;
        }
        Ok(Reply { created: false, body: to_value(&serde_json::json!({ "marked_read": count }))? })
    }

    /// Stall detection crosses tenants: each job is handled in its own tenant.
    fn detect_stalls(&mut self, timeout_ms: i64) -> Result<Reply, StoreError> {
        let silent: Vec<(String, String)> = self
            .conn
            .prepare_cached("SELECT tenant, doc FROM jobs WHERE status = 'running' AND last_report_at < ?1")?
            .query_map(params![self.now - timeout_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let count = silent.len();
        for (tenant, doc) in silent {
            let mut job: Job = from_json(&doc)?;
            let mut tx = Tx { conn: self.conn, tenant: &tenant, now: self.now, events: Vec::new() };
            job.transition(JobStatus::Stalled, self.now)?;
            job.touch(self.now);
            tx.save_job(&job, Some(JobStatus::Running))?;
            self.events.append(&mut tx.events);
        }
        Ok(Reply { created: false, body: to_value(&serde_json::json!({ "stalled": count }))? })
    }

    fn prune(&mut self, before_ms: i64) -> Result<Reply, StoreError> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT max(position) FROM events WHERE time < ?1", params![before_ms], |r| r.get(0))?;
        let Some(max) = max else {
            return Ok(Reply { created: false, body: to_value(&serde_json::json!({ "pruned": 0 }))? });
        };
        self.conn.execute("DELETE FROM event_topics WHERE position <= ?1", params![max])?;
        let pruned = self.conn.execute("DELETE FROM events WHERE position <= ?1", params![max])?;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('floor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![max.to_string()],
        )?;
        self.conn.execute("DELETE FROM idempotency WHERE created_at < ?1", params![self.now - 24 * 3600 * 1000])?;
        Ok(Reply { created: false, body: to_value(&serde_json::json!({ "pruned": pruned }))? })
    }
}

fn count_finished(statuses: impl Iterator<Item = TaskStatus>) -> (u64, u64) {
    statuses.fold((0, 0), |(s, f), st| match st {
        TaskStatus::Succeeded => (s + 1, f),
        TaskStatus::Failed => (s, f + 1),
        _ => (s, f),
    })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
