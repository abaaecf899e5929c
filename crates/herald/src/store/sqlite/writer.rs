//! SQLite's batches: one thread owns the write connection and commits units of
//! work in groups — many requests, one transaction, one fsync. One writer is
//! also what makes event positions follow commit order. It publishes nothing:
//! committed events go to the change feed's channel, and the feed hands them
//! to the hub.

use super::tx::SqliteTx;
use crate::model::Event;
use crate::store::group_commit::{commit_all, fail_all, run_unit, Batcher};
use crate::store::{StoreError, Work};
use rusqlite::Connection;
use std::time::Instant;
use tokio::sync::mpsc;

pub struct SqliteBatcher {
    pub conn: Connection,
    pub commits: mpsc::Sender<Vec<Event>>,
}

impl Batcher for SqliteBatcher {
    fn commit(&mut self, batch: &mut Vec<Box<dyn Work>>) {
        let started = Instant::now();
        let now = crate::model::time::now_ms();
        let mut events = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            let mut stx = SqliteTx { conn: &tx, now, events: Vec::new() };
            for work in batch.iter_mut() {
                // One savepoint per unit, so a refused one rolls back alone.
                // Cached statements: rusqlite's `savepoint()` would parse SQL every time.
                stx.conn.prepare_cached("SAVEPOINT request")?.execute([])?;
                let appended = stx.events.len();
                if run_unit(work, &mut stx) {
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
            tracing::error!(error = %e, batch = batch.len(), "commit failed; the batch is refused");
            fail_all(batch, StoreError::from(e));
            return;
        }
        metrics::counter!("herald_events_appended_total").increment(events.len() as u64);
        // Answer first, then hand over: the commit is durable either way, and a
        // worker's acknowledgement should not queue behind the fan-out.
        commit_all(batch, started);
        // The change feed takes committed events from here, in position order. A
        // full feed holds the writer back rather than letting memory grow; a feed
        // that is gone (a CLI command with no hub) is not the writer's concern.
        if !events.is_empty() {
            let _ = self.commits.blocking_send(events);
        }
    }
}
