//! Jobs, their tasks and artifacts: the lifecycle, the event each change is
//! announced as, and the owner's notifications when a job ends or stalls.

use super::{notifications, raw, to_json, to_raw, NewJob, NewNotification, Reply, WriteError};
use crate::model::ids::new_id;
use crate::model::job::{ProgressReport, METADATA_LIMIT};
use crate::model::notification::Level;
use crate::model::task::TaskUpsert;
use crate::model::topic::job_topics;
use crate::model::{Artifact, EventType, Job, JobStatus, Task, TaskStatus};
use crate::store::{NewEvent, WriteTx};
use sha2::{Digest, Sha256};

/// The event type a job change is announced as.
pub(crate) fn job_event_type(before: Option<JobStatus>, after: JobStatus) -> EventType {
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

fn require(tx: &mut dyn WriteTx, tenant: &str, id: &str) -> Result<Job, WriteError> {
    tx.job(tenant, id)?.ok_or_else(|| WriteError::NotFound(format!("job {id}")))
}

/// Stores a changed job and announces it; the owner hears when it ends or stalls.
/// Returns the row's JSON.
fn save(tx: &mut dyn WriteTx, tenant: &str, job: &Job, before: JobStatus) -> Result<String, WriteError> {
    let doc = to_json(job)?;
    tx.update_job(tenant, job, &doc)?;
    let owner = job.owner.as_deref();
    tx.append(
        tenant,
        NewEvent {
            kind: job_event_type(Some(before), job.status),
            job: Some((&job.id, owner)),
            topics: job_topics(&job.id, owner, true),
            data: doc.clone(),
        },
    )?;
    if before != job.status {
        notify_owner(tx, tenant, job)?;
    }
    Ok(doc)
}

/// Herald's own notifications: the owner hears when a job completes, fails or stalls.
fn notify_owner(tx: &mut dyn WriteTx, tenant: &str, job: &Job) -> Result<(), WriteError> {
    let Some(owner) = job.owner.clone() else { return Ok(()) };
    let name = job.title.clone().unwrap_or_else(|| job.id.clone());
    let (level, title) = match job.status {
        JobStatus::Completed => (Level::Success, format!("{name} completed")),
        JobStatus::Failed => (Level::Error, format!("{name} failed")),
        JobStatus::Stalled => (Level::Warning, format!("{name} stalled")),
        _ => return Ok(()),
    };
    let body = match job.status {
        JobStatus::Completed | JobStatus::Failed => Some(format!("{} succeeded, {} failed", job.succeeded, job.failed)),
        _ => Some("No progress report arrived within the stall timeout.".to_string()),
    };
    let n = NewNotification { recipient: owner, level, title, body, link: Some(format!("/jobs/{}", job.id)) };
    notifications::create(tx, tenant, n, Some(&job.id))?;
    Ok(())
}

pub fn create(tx: &mut dyn WriteTx, tenant: &str, new: NewJob) -> Result<Reply, WriteError> {
    let now = tx.now();
    let id = new.id.clone().unwrap_or_else(new_id);
    // The same id with the same body is a retry: answer with the job as it is.
    let hash = {
        let mut keyed = new.clone();
        keyed.id = Some(id.clone());
        hex(&Sha256::digest(to_json(&keyed)?.as_bytes()))
    };
    if let Some((existing_hash, doc)) = tx.job_creation(tenant, &id)? {
        if existing_hash == hash {
            return Ok(Reply { created: false, body: raw(doc)? });
        }
        return Err(WriteError::Conflict(format!("job {id} already exists with a different body")));
    }
    let status = new.status.unwrap_or(JobStatus::Queued);
    if !matches!(status, JobStatus::Queued | JobStatus::Running) {
        return Err(WriteError::invalid("status", "a new job is queued or running"));
    }
    if let Some(m) = &new.metadata {
        if !m.is_object() {
            return Err(WriteError::invalid("metadata", "must be a JSON object"));
        }
        // The same bound as for merge patches: every change writes the whole job into an event.
        let size = crate::model::job::json_size(m);
        if size > METADATA_LIMIT {
            return Err(WriteError::TooLarge {
                field: "metadata".into(),
                message: format!("{size} bytes; the limit is {METADATA_LIMIT} bytes"),
            });
        }
    }
    let mut job = Job {
        id: id.clone(),
        tenant: tenant.to_string(),
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
        created_at: now,
        started_at: (status == JobStatus::Running).then_some(now),
        updated_at: now,
        finished_at: None,
        version: 1,
        counts_reported: false,
        progress_reported: false,
    };
    let mut tasks = Vec::with_capacity(new.tasks.len());
    for (i, t) in new.tasks.iter().enumerate() {
        let task_id = t.id.clone().unwrap_or_else(|| (i + 1).to_string());
        crate::model::ids::validate_id(&task_id).map_err(|m| WriteError::invalid(format!("tasks[{i}].id"), m))?;
        if tasks.iter().any(|other: &Task| other.id == task_id) {
            return Err(WriteError::invalid("tasks", format!("task id {task_id} appears twice")));
        }
        let mut task = Task::new(task_id, id.clone(), now);
        task.apply(t, now);
        tasks.push(task);
    }
    if !tasks.is_empty() {
        let (s, f) = count_finished(tasks.iter().map(|t| t.status));
        job.follow_tasks(tasks.len() as u64, s, f);
    }
    // As with an upsert, a task already running means the job has started.
    if job.status == JobStatus::Queued && tasks.iter().any(|t| t.status == TaskStatus::Running) {
        job.transition(JobStatus::Running, now)?;
    }
    let doc = to_json(&job)?;
    tx.insert_job(tenant, &job, &hash, &doc)?;
    let owner = job.owner.as_deref();
    tx.append(
        tenant,
        NewEvent {
            kind: EventType::JobCreated,
            job: Some((&id, owner)),
            topics: job_topics(&id, owner, true),
            data: doc,
        },
    )?;
    for task in &tasks {
        save_task(tx, tenant, task, &job, true)?;
    }
    Ok(Reply { created: true, body: to_raw(&job)? })
}

/// Stores a task and announces it on its job's topic.
fn save_task(tx: &mut dyn WriteTx, tenant: &str, task: &Task, job: &Job, new: bool) -> Result<(), WriteError> {
    let doc = to_json(task)?;
    tx.upsert_task(tenant, task, &doc)?;
    let owner = job.owner.as_deref();
    tx.append(
        tenant,
        NewEvent {
            kind: if new { EventType::TaskCreated } else { EventType::TaskUpdated },
            job: Some((&job.id, owner)),
            topics: job_topics(&job.id, owner, false),
            data: doc,
        },
    )?;
    Ok(())
}

pub fn report_progress(
    tx: &mut dyn WriteTx,
    tenant: &str,
    job_id: &str,
    report: &ProgressReport,
) -> Result<Reply, WriteError> {
    let mut job = require(tx, tenant, job_id)?;
    let before = job.status;
    job.apply_report(report, tx.now())?;
    let doc = save(tx, tenant, &job, before)?;
    Ok(Reply { created: false, body: raw(doc)? })
}

pub fn upsert_task(
    tx: &mut dyn WriteTx,
    tenant: &str,
    job_id: &str,
    task_id: &str,
    upsert: &TaskUpsert,
) -> Result<Reply, WriteError> {
    let now = tx.now();
    let mut job = require(tx, tenant, job_id)?;
    if job.status.is_terminal() {
        return Err(WriteError::JobFinished(job.status));
    }
    let existing = tx.task(tenant, job_id, task_id)?;
    let is_new = existing.is_none();
    let mut task = existing.unwrap_or_else(|| Task::new(task_id.to_string(), job_id.to_string(), now));
    let changed = task.apply(upsert, now);
    if !changed && !is_new {
        return Ok(Reply { created: false, body: to_raw(&task)? });
    }
    save_task(tx, tenant, &task, &job, is_new)?;

    // The job follows its tasks: counts, and a first running task starts it.
    let before = job.clone();
    let (total, succeeded, failed) = tx.task_counts(tenant, job_id)?;
    job.follow_tasks(total, succeeded, failed);
    if job.status == JobStatus::Stalled || (job.status == JobStatus::Queued && task.status == TaskStatus::Running) {
        job.transition(JobStatus::Running, now)?;
    }
    if job != before {
        job.touch(now);
        save(tx, tenant, &job, before.status)?;
    } else {
        tx.touch_job(tenant, job_id)?;
    }
    Ok(Reply { created: is_new, body: to_raw(&task)? })
}

pub fn add_artifact(
    tx: &mut dyn WriteTx,
    tenant: &str,
    job_id: &str,
    kind: String,
    payload: serde_json::Value,
) -> Result<Reply, WriteError> {
    let job = require(tx, tenant, job_id)?;
    let artifact = Artifact { id: new_id(), job_id: job_id.to_string(), kind, payload, created_at: tx.now() };
    let doc = to_json(&artifact)?;
    tx.insert_artifact(tenant, &artifact, &doc)?;
    tx.touch_job(tenant, job_id)?;
    let owner = job.owner.as_deref();
    tx.append(
        tenant,
        NewEvent {
            kind: EventType::ArtifactCreated,
            job: Some((job_id, owner)),
            topics: job_topics(job_id, owner, false),
            data: doc,
        },
    )?;
    Ok(Reply { created: true, body: to_raw(&artifact)? })
}

/// Running jobs silent for longer than `timeout_ms` become stalled, each in its own tenant.
pub fn detect_stalls(tx: &mut dyn WriteTx, timeout_ms: i64) -> Result<Reply, WriteError> {
    let now = tx.now();
    let silent = tx.silent_jobs(now - timeout_ms)?;
    let count = silent.len();
    for (tenant, mut job) in silent {
        job.transition(JobStatus::Stalled, now)?;
        job.touch(now);
        save(tx, &tenant, &job, JobStatus::Running)?;
    }
    Ok(Reply { created: false, body: to_raw(&serde_json::json!({ "stalled": count }))? })
}

fn count_finished(statuses: impl Iterator<Item = TaskStatus>) -> (u64, u64) {
    statuses.fold((0, 0), |(s, f), st| match st {
        TaskStatus::Succeeded => (s + 1, f),
        TaskStatus::Failed => (s, f + 1),
        _ => (s, f),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
