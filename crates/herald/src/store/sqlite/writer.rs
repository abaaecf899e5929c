//! The single writer: one thread owns the write connection and commits requests
//! in groups — many requests, one transaction, one fsync — and answers each only
//! after the commit is on disk. One writer is also what makes event positions
//! follow commit order. It publishes nothing: committed events go to the
//! change feed's channel, and the feed hands them to the hub.

use super::apply::{apply, Applied};
use crate::model::Event;
use crate::store::{Command, IdempotencyKey, Reply, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

pub struct WriteRequest {
    pub tenant: String,
    pub cmd: Command,
    pub idem: Option<IdempotencyKey>,
    pub reply: oneshot::Sender<Result<Reply, StoreError>>,
}

pub enum WriterMsg {
    Write(Box<WriteRequest>),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// Runs the writer loop until every sender is gone or `Close` arrives.
pub fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriterMsg>, commits: mpsc::Sender<Vec<Event>>) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        match first {
            WriterMsg::Write(w) => batch.push(*w),
            WriterMsg::Close(done) => close = Some(done),
        }
        while batch.len() < MAX_BATCH && close.is_none() {
            match rx.try_recv() {
                Ok(WriterMsg::Write(w)) => batch.push(*w),
                Ok(WriterMsg::Close(done)) => close = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, &mut batch, &commits);
        }
        if let Some(done) = close.take() {
            // Anything still queued behind the close is answered, not dropped.
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let WriterMsg::Write(w) = msg {
                    batch.push(*w);
                }
            }
            if !batch.is_empty() {
                commit_batch(&mut conn, &mut batch, &commits);
            }
            let _ = done.send(());
            break;
        }
    }
    tracing::info!("store writer stopped");
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<WriteRequest>, commits: &mpsc::Sender<Vec<Event>>) {
    let started = Instant::now();
    let size = batch.len();
    let now = crate::model::time::now_ms();
    let mut results: Vec<Result<Reply, StoreError>> = Vec::with_capacity(size);
    let mut events = Vec::new();
    let outcome = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for req in batch.iter() {
            // One savepoint per request, so a refused request rolls back alone.
            // Cached statements: rusqlite's `savepoint()` would parse SQL every time.
            tx.prepare_cached("SAVEPOINT request")?.execute([])?;
            // A bug in one command must not take the writer (and every later write) down.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_one(&tx, req, now)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "a write panicked; it is refused");
                    Err(StoreError::Internal(format!("the write failed: {what}")))
                });
            match outcome {
                Ok(applied) => {
                    tx.prepare_cached("RELEASE request")?.execute([])?;
                    events.extend(applied.events);
                    results.push(Ok(applied.reply));
                }
                Err(e) => {
                    tx.prepare_cached("ROLLBACK TO request")?.execute([])?;
                    tx.prepare_cached("RELEASE request")?.execute([])?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit()
    })();
    if let Err(e) = outcome {
        tracing::error!(error = %e, batch = size, "commit failed; the batch is refused");
        for req in batch.drain(..) {
            let _ = req.reply.send(Err(StoreError::Internal(format!("commit failed: {e}"))));
        }
        return;
    }
    metrics::histogram!("herald_commit_batch_size").record(size as f64);
    metrics::histogram!("herald_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("herald_events_appended_total").increment(events.len() as u64);
    // Answer first, then fan out: the commit is durable either way, and a
    // worker's acknowledgement should not queue behind thousands of socket writes.
    for (req, result) in batch.drain(..).zip(results) {
        let _ = req.reply.send(result);
    }
    // The change feed takes committed events from here, in position order. A
    // full feed holds the writer back rather than letting memory grow; a feed
    // that is gone (a CLI command with no hub) is not the writer's concern.
    if !events.is_empty() {
        let _ = commits.blocking_send(events);
    }
}

/// One request: an idempotent replay returns the stored reply and writes nothing.
fn run_one(conn: &Connection, req: &WriteRequest, now: i64) -> Result<Applied, StoreError> {
    if let Some(idem) = &req.idem {
        let stored: Option<(String, String)> = conn
            .prepare_cached("SELECT fingerprint, reply FROM idempotency WHERE tenant = ?1 AND sub = ?2 AND key = ?3")?
            .query_row(params![req.tenant, idem.sub, idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((fingerprint, reply)) = stored {
            if fingerprint != idem.fingerprint {
                return Err(StoreError::IdempotencyMismatch);
            }
            let reply: Reply = serde_json::from_str(&reply).map_err(|e| StoreError::Internal(e.to_string()))?;
            metrics::counter!("herald_idempotent_replays_total").increment(1);
            return Ok(Applied { reply, events: Vec::new() });
        }
    }
    let applied = apply(conn, &req.tenant, req.cmd.clone(), now)?;
    if let Some(idem) = &req.idem {
        let reply = serde_json::to_string(&applied.reply).map_err(|e| StoreError::Internal(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO idempotency (tenant, sub, key, fingerprint, reply, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![req.tenant, idem.sub, idem.key, idem.fingerprint, reply, now])?;
    }
    Ok(applied)
}
