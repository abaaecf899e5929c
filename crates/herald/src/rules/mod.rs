//! The rules of writing, above any store: the job lifecycle, which event each
//! change is announced as and where it is routed, Herald's own notifications,
//! stall transitions and idempotency. Written once; each store only runs them
//! inside its transaction through [`crate::store::WriteTx`].

pub mod command;
pub mod error;
mod jobs;
pub mod keys;
mod notifications;

pub use command::{Command, IdempotencyKey, NewJob, NewNotification, Reply};
pub use error::WriteError;
pub(crate) use jobs::job_event_type;

use crate::store::{StoreError, Work, WriteTx, Writer};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// How long idempotency keys are remembered.
const IDEMPOTENCY_KEEP_MS: i64 = 24 * 3600 * 1000;

/// Applies `cmd` for `tenant` in one durable transaction and returns the reply
/// once it is committed.
pub async fn write(
    store: &dyn Writer,
    tenant: &str,
    cmd: Command,
    idem: Option<IdempotencyKey>,
) -> Result<Reply, WriteError> {
    write_then(store, tenant, cmd, idem, None).await
}

/// What runs on the writer once a write is committed, before anyone hears of
/// it: writes commit in order, so what these publish goes out in commit order.
pub type OnCommit = Box<dyn FnOnce(&Reply) + Send>;

/// [`write`], running `on_commit` with the reply once it is committed (also
/// for an idempotent replay, which commits nothing new).
pub async fn write_then(
    store: &dyn Writer,
    tenant: &str,
    cmd: Command,
    idem: Option<IdempotencyKey>,
    on_commit: Option<OnCommit>,
) -> Result<Reply, WriteError> {
    let (tx, rx) = oneshot::channel();
    let work =
        Box::new(Apply { tenant: tenant.to_string(), cmd: Some(cmd), idem, outcome: None, answer: tx, on_commit });
    store.submit(work).await?;
    rx.await.map_err(|_| WriteError::Store(StoreError::unavailable("the writer has stopped")))?
}

/// One command as a unit of the writer's work.
struct Apply {
    tenant: String,
    cmd: Option<Command>,
    idem: Option<IdempotencyKey>,
    outcome: Option<Result<Reply, WriteError>>,
    answer: oneshot::Sender<Result<Reply, WriteError>>,
    on_commit: Option<OnCommit>,
}

impl Work for Apply {
    fn shard(&self) -> Option<u64> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let job = match self.cmd.as_ref()? {
            Command::ReportProgress { job_id, .. }
            | Command::UpsertTask { job_id, .. }
            | Command::AddArtifact { job_id, .. }
            | Command::AppendChunks { job_id, .. } => job_id.as_str(),
            Command::CreateJob(new) => new.id.as_deref()?,
            _ => return None,
        };
        // A fixed hasher: the same job maps to the same writer for the process's life.
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        Some(hasher.hash_one((&self.tenant, job)))
    }

    fn run(&mut self, tx: &mut dyn WriteTx) -> bool {
        let Some(cmd) = self.cmd.take() else { return false };
        let outcome = apply_once(tx, &self.tenant, cmd, self.idem.as_ref());
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn committed(self: Box<Self>) {
        let outcome = self.outcome.unwrap_or_else(|| Err(StoreError::internal("the write did not run").into()));
        if let (Ok(reply), Some(on_commit)) = (&outcome, self.on_commit) {
            on_commit(reply);
        }
        let _ = self.answer.send(outcome);
    }

    fn failed(self: Box<Self>, error: StoreError) {
        let _ = self.answer.send(Err(error.into()));
    }
}

/// A request with an idempotency key already seen returns the stored reply
/// and writes nothing; otherwise the command runs and its reply is stored with
/// the key, in the same transaction.
fn apply_once(
    tx: &mut dyn WriteTx,
    tenant: &str,
    cmd: Command,
    idem: Option<&IdempotencyKey>,
) -> Result<Reply, WriteError> {
    if let Some(idem) = idem {
        if let Some((fingerprint, reply)) = tx.idempotent_reply(tenant, &idem.sub, &idem.key)? {
            if fingerprint != idem.fingerprint {
                return Err(WriteError::IdempotencyMismatch);
            }
            metrics::counter!("herald_idempotent_replays_total").increment(1);
            return serde_json::from_str(&reply).map_err(|e| StoreError::corrupt(e).into());
        }
    }
    let reply = apply(tx, tenant, cmd)?;
    if let Some(idem) = idem {
        let stored = serde_json::to_string(&reply).map_err(|e| StoreError::internal(e.to_string()))?;
        tx.save_idempotent_reply(tenant, &idem.sub, &idem.key, &idem.fingerprint, &stored)?;
    }
    Ok(reply)
}

/// Applies one command: reads what it needs, lets the domain decide, writes
/// rows and appends events.
pub fn apply(tx: &mut dyn WriteTx, tenant: &str, cmd: Command) -> Result<Reply, WriteError> {
    match cmd {
        Command::CreateJob(new) => jobs::create(tx, tenant, new),
        Command::ReportProgress { job_id, report } => jobs::report_progress(tx, tenant, &job_id, &report),
        Command::UpsertTask { job_id, task_id, upsert } => jobs::upsert_task(tx, tenant, &job_id, &task_id, &upsert),
        Command::AddArtifact { job_id, kind, payload } => jobs::add_artifact(tx, tenant, &job_id, kind, payload),
        Command::AppendChunks { job_id, stream, chunks, count, max_bytes } => {
            if tx.job(tenant, &job_id)?.is_none() {
                return Err(WriteError::NotFound(format!("job {job_id}")));
            }
            let a = tx.append_chunks(tenant, &job_id, &stream, &chunks, count, max_bytes)?;
            let body = serde_json::json!({
                "stream": stream,
                "first_offset": a.first,
                "next_offset": a.next,
                "floor": a.floor,
            });
            Ok(Reply { created: false, body: to_raw(&body)? })
        }
        Command::CreateNotification(n) => {
            let n = notifications::create(tx, tenant, n, None)?;
            Ok(Reply { created: true, body: to_raw(&n)? })
        }
        Command::MarkRead { recipient, id } => notifications::mark_read(tx, tenant, &recipient, &id),
        Command::MarkAllRead { recipient } => notifications::mark_all_read(tx, tenant, &recipient),
        Command::DetectStalls { timeout_ms } => jobs::detect_stalls(tx, timeout_ms),
        Command::Prune { before_ms } => {
            let pruned = tx.prune(before_ms, tx.now() - IDEMPOTENCY_KEEP_MS)?;
            Ok(Reply { created: false, body: to_raw(&serde_json::json!({ "pruned": pruned }))? })
        }
        Command::CreateApiKey { id, name, role, hash } => keys::create(tx, tenant, id, name, role, hash),
        Command::RevokeApiKey { id } => keys::revoke(tx, tenant, &id),
        Command::RotateApiKey { id, new_id, new_hash, grace_ms } => {
            keys::rotate(tx, tenant, &id, new_id, new_hash, grace_ms)
        }
        Command::TouchApiKeys { used } => {
            tx.touch_api_keys(&used)?;
            Ok(Reply { created: false, body: to_raw(&serde_json::json!({ "touched": used.len() }))? })
        }
        Command::SaveSession { id, sub, doc, at } => {
            tx.save_session(tenant, &id, &sub, &doc, at)?;
            Ok(Reply { created: false, body: to_raw(&serde_json::json!({ "saved": id }))? })
        }
    }
}

/// A reply body, serialized once here and written to the HTTP response as is.
fn to_raw<T: serde::Serialize>(v: &T) -> Result<Box<RawValue>, WriteError> {
    serde_json::value::to_raw_value(v).map_err(|e| StoreError::internal(e.to_string()).into())
}

/// A stored JSON document as a reply body, without a round trip through `Value`.
fn raw(doc: String) -> Result<Box<RawValue>, WriteError> {
    RawValue::from_string(doc).map_err(|e| StoreError::corrupt(e).into())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, WriteError> {
    serde_json::to_string(v).map_err(|e| StoreError::internal(e.to_string()).into())
}
