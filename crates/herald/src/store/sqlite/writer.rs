//! The single writer: one thread owns the write connection and commits requests
//! in groups — many requests, one transaction, one fsync — and answers each only
//! after the commit is on disk. One writer is also what makes event positions
//! follow commit order. It publishes nothing: committed events go to the
//! change feed's channel, and the feed hands them to the hub.

use super::tx::SqliteTx;
use crate::model::Event;
use crate::store::{StoreError, Work};
use rusqlite::Connection;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most units of work committed in one transaction.
pub const MAX_BATCH: usize = 512;

pub enum WriterMsg {
    Work(Box<dyn Work>),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// Runs the writer loop until every sender is gone or `Close` arrives.
pub fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriterMsg>, commits: mpsc::Sender<Vec<Event>>) {
    let mut batch: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_BATCH);
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        match first {
            WriterMsg::Work(w) => batch.push(w),
            WriterMsg::Close(done) => close = Some(done),
        }
        while batch.len() < MAX_BATCH && close.is_none() {
            match rx.try_recv() {
                Ok(WriterMsg::Work(w)) => batch.push(w),
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
                if let WriterMsg::Work(w) = msg {
                    batch.push(w);
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

fn commit_batch(conn: &mut Connection, batch: &mut Vec<Box<dyn Work>>, commits: &mpsc::Sender<Vec<Event>>) {
    let started = Instant::now();
    let size = batch.len();
    let now = crate::model::time::now_ms();
    let mut events = Vec::new();
    let outcome = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        let mut stx = SqliteTx { conn: &tx, now, events: Vec::new() };
        for work in batch.iter_mut() {
            // One savepoint per unit, so a refused one rolls back alone.
            // Cached statements: rusqlite's `savepoint()` would parse SQL every time.
            stx.conn.prepare_cached("SAVEPOINT request")?.execute([])?;
            let appended = stx.events.len();
            // A bug in one unit must not take the writer (and every later write) down.
            let ok =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.run(&mut stx))).unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "a write panicked; it is refused");
                    false
                });
            if ok {
                stx.conn.prepare_cached("RELEASE request")?.execute([])?;
            } else {
                stx.events.truncate(appended);
                stx.conn.prepare_cached("ROLLBACK TO request")?.execute([])?;
                stx.conn.prepare_cached("RELEASE request")?.execute([])?;
            }
        }
        events = std::mem::take(&mut stx.events);
        tx.commit()
    })();
    if let Err(e) = outcome {
        tracing::error!(error = %e, batch = size, "commit failed; the batch is refused");
        let e = StoreError::from(e);
        for work in batch.drain(..) {
            work.failed(e.clone());
        }
        return;
    }
    metrics::histogram!("herald_commit_batch_size").record(size as f64);
    metrics::histogram!("herald_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("herald_events_appended_total").increment(events.len() as u64);
    // Answer first, then hand over: the commit is durable either way, and a
    // worker's acknowledgement should not queue behind the fan-out.
    for work in batch.drain(..) {
        work.committed();
    }
    // The change feed takes committed events from here, in position order. A
    // full feed holds the writer back rather than letting memory grow; a feed
    // that is gone (a CLI command with no hub) is not the writer's concern.
    if !events.is_empty() {
        let _ = commits.blocking_send(events);
    }
}
