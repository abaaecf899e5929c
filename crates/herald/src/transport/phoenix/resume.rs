//! Resume for clients that cannot say where they stopped. realtime-js rejoins a
//! channel with the very join payload it first sent, so Herald remembers, per
//! (tenant, sub, channel topic, bindings), the last log position each Herald
//! topic delivered to a channel that ended without `phx_leave`; a client that
//! comes back on a reconnecting socket replays from there.
//!
//! A socket the client closed on purpose (a close frame: `disconnect()`, a tab
//! closed) leaves nothing behind; a socket that dropped does. After a server
//! restart the book is empty; sockets opened within [`RESTART_WINDOW`] of the
//! start — the clients coming back, realtime-js retries within 10 s — replay
//! from the head of the log at startup, so nothing committed since the restart
//! is lost (a fresh page in that window also gets those changes).
//!
//! In a cluster the client may come back on another node, or its node may die
//! with `kill -9`; so the book is also kept in the store's `sessions` table
//! ([`Shared`]): a channel's final position when its socket drops, a tombstone
//! when it leaves on purpose, and a checkpoint every [`CHECKPOINT_EVERY`] while
//! it lives. A channel whose node died resumes from its last checkpoint: nothing
//! is missed, and what it was sent in the last interval may come again.

use crate::app::AppState;
use crate::model::time::now_ms;
use crate::model::Position;
use crate::rules::Command;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a position is kept for a client that has not come back.
const KEEP: Duration = Duration::from_secs(10 * 60);
/// How long after a start sockets are taken for clients coming back.
pub const RESTART_WINDOW: Duration = Duration::from_secs(30);
/// Most entries kept; the oldest go first.
const MAX_ENTRIES: usize = 100_000;
/// How often a live channel's position is checkpointed in a cluster: the
/// bound on what a channel of a killed node may receive twice.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A quiet channel's checkpoint is written again this often, so it never
/// ages past [`KEEP`] while the channel lives.
pub const CHECKPOINT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Stored positions waiting for the writer; beyond this a checkpoint is
/// skipped (the next one carries the same news).
const SHARED_QUEUE: usize = 65_536;

/// Who a resume position belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResumeKey {
    pub tenant: Arc<str>,
    pub sub: Arc<str>,
    pub topic: String,
    /// The bindings as the client sent them, canonical JSON.
    pub bindings: String,
}

/// Positions per Herald topic.
pub type Cursors = HashMap<String, Position>;

impl ResumeKey {
    /// The key's row id in the `sessions` table: a digest, since bindings may
    /// be long, under a prefix no Socket.IO session id (hex) can have.
    fn stored_id(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.sub.as_bytes(), self.topic.as_bytes(), self.bindings.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("phx:{hex}")
    }
}

/// Shared by every Phoenix connection of the server.
pub struct ResumeBook {
    /// Positions with when they were kept (for expiry) and the wall-clock time
    /// (to compare with the store's copy in a cluster).
    entries: Mutex<HashMap<ResumeKey, (Cursors, Instant, i64)>>,
    started: Instant,
    /// Head of the log when the server started, once known.
    pub startup_head: OnceLock<Position>,
    /// The store's copy, in a cluster.
    shared: Option<Shared>,
}

impl Default for ResumeBook {
    fn default() -> Self {
        ResumeBook { entries: Mutex::default(), started: Instant::now(), startup_head: OnceLock::new(), shared: None }
    }
}

impl ResumeBook {
    /// A book whose positions are also kept in the store, for the other nodes
    /// of a cluster. Spawns the task that writes them, so call it in a runtime.
    pub fn shared(s: AppState) -> ResumeBook {
        let (tx, rx) = mpsc::channel(SHARED_QUEUE);
        tokio::spawn(write_shared(s.clone(), rx));
        ResumeBook { shared: Some(Shared { s, tx }), ..ResumeBook::default() }
    }

    /// Whether live channels should be checkpointed ([`ResumeBook::checkpoint`]).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Records a live channel's position for the other nodes (a cluster
    /// only); false when it could not be queued (try again next tick).
    pub fn checkpoint(&self, key: &ResumeKey, cursors: &Cursors) -> bool {
        match &self.shared {
            Some(shared) => shared.put(key, Some(cursors)),
            None => true,
        }
    }

    /// Remembers where a channel stopped.
    pub fn save(&self, key: ResumeKey, cursors: Cursors) {
        if cursors.is_empty() {
            return;
        }
        if let Some(shared) = &self.shared {
            shared.put(&key, Some(&cursors));
        }
        let mut entries = self.entries.lock();
        let now = Instant::now();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at, _)| now.duration_since(*at) < KEEP);
            if entries.len() >= MAX_ENTRIES {
                if let Some(oldest) = entries.iter().min_by_key(|(_, (_, at, _))| *at).map(|(k, _)| k.clone()) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (cursors, now, now_ms()));
    }

    /// Forgets a channel that left on purpose; `stored` says whether its
    /// position ever reached the store (else there is nothing to tombstone).
    pub fn forget(&self, key: &ResumeKey, stored: bool) {
        if let (Some(shared), true) = (&self.shared, stored) {
            shared.put(key, None);
        }
        self.entries.lock().remove(key);
    }

    /// Where a rejoining channel should resume from, per Herald topic: this
    /// node's memory, or in a cluster the store's copy when it is newer (the
    /// client may have moved on, or left, on another node since).
    pub async fn lookup(&self, key: &ResumeKey) -> Option<Cursors> {
        let local = self.lookup_local(key);
        let Some(shared) = &self.shared else { return local.map(|(c, _)| c) };
        match (local, shared.get(key).await) {
            (Some((l, l_at)), Some((r, r_at))) => {
                let newest = if r_at > l_at { r } else { l };
                (!newest.is_empty()).then_some(newest)
            }
            (Some((l, _)), None) => Some(l),
            (None, Some((r, _))) => (!r.is_empty()).then_some(r),
            (None, None) => None,
        }
    }

    fn lookup_local(&self, key: &ResumeKey) -> Option<(Cursors, i64)> {
        let entries = self.entries.lock();
        let (cursors, at, at_ms) = entries.get(key)?;
        (at.elapsed() < KEEP).then(|| (cursors.clone(), *at_ms))
    }

    /// Whether a socket opened now is probably a client coming back after a restart.
    pub fn is_young(&self) -> bool {
        self.started.elapsed() < RESTART_WINDOW
    }
}

/// A channel's position as stored: `cursors` empty once it left on purpose.
#[derive(Serialize, Deserialize)]
struct StoredCursors {
    cursors: Cursors,
    /// When it was written (ms since the epoch): older than [`KEEP`] is forgotten.
    at_ms: i64,
}

/// The store's copy of the book, written in order by one task.
struct Shared {
    s: AppState,
    tx: mpsc::Sender<Put>,
}

/// One position (or tombstone) to store.
struct Put {
    tenant: Arc<str>,
    sub: Arc<str>,
    id: String,
    doc: String,
    /// When it was taken: the store keeps the newest of a channel's saves.
    at_ms: i64,
}

impl Shared {
    /// Queues `cursors` (`None`: a tombstone); false when the queue is full.
    fn put(&self, key: &ResumeKey, cursors: Option<&Cursors>) -> bool {
        let mut cursors = cursors.cloned().unwrap_or_default();
        // A feed still at zero has delivered nothing; stored, it would replay the whole log.
        cursors.retain(|_, p| *p > Position::ZERO);
        let at_ms = now_ms();
        let stored = StoredCursors { cursors, at_ms };
        let Ok(doc) = serde_json::to_string(&stored) else { return true };
        let put = Put { tenant: Arc::clone(&key.tenant), sub: Arc::clone(&key.sub), id: key.stored_id(), doc, at_ms };
        if self.tx.try_send(put).is_err() {
            metrics::counter!("herald_phoenix_checkpoints_skipped_total").increment(1);
            return false;
        }
        true
    }

    /// The stored position and when it was taken (empty cursors: a tombstone).
    async fn get(&self, key: &ResumeKey) -> Option<(Cursors, i64)> {
        let (sub, doc) = match self.s.store.session(&key.tenant, &key.stored_id()).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(error = %e, "a Phoenix channel's stored position could not be read; it starts live");
                return None;
            }
        };
        let stored: StoredCursors = serde_json::from_str(&doc).ok()?;
        let age_ms = now_ms().saturating_sub(stored.at_ms);
        let fresh = u128::try_from(age_ms).is_ok_and(|age| age < KEEP.as_millis());
        (sub == *key.sub && fresh).then_some((stored.cursors, stored.at_ms))
    }
}

/// Writes queued positions, the newest per channel, in batches: a burst of
/// checkpoints becomes one group commit, never a queue of stale ones.
async fn write_shared(s: AppState, mut rx: mpsc::Receiver<Put>) {
    let mut batch: Vec<Put> = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let mut newest: HashMap<(Arc<str>, String), Put> = HashMap::with_capacity(batch.len());
        for put in batch.drain(..) {
            newest.insert((Arc::clone(&put.tenant), put.id.clone()), put);
        }
        let writes = newest.into_values().map(|put| {
            let s = &s;
            async move {
                let cmd =
                    Command::SaveSession { id: put.id, sub: put.sub.to_string(), doc: put.doc, at: Some(put.at_ms) };
                if let Err(e) = s.write(&put.tenant, cmd, None).await {
                    tracing::warn!(error = %e, "a Phoenix channel's position could not be stored");
                }
            }
        });
        futures_util::future::join_all(writes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_looks_up_and_forgets() {
        let book = ResumeBook::default();
        let key = ResumeKey { tenant: "t".into(), sub: "a".into(), topic: "realtime:x".into(), bindings: "[]".into() };
        assert!(book.lookup(&key).await.is_none());
        book.save(key.clone(), HashMap::from([("jobs".to_string(), Position::from_u64(7))]));
        assert_eq!(book.lookup(&key).await.unwrap()["jobs"], Position::from_u64(7));
        book.forget(&key, false);
        assert!(book.lookup(&key).await.is_none());
        assert!(book.is_young());
    }

    #[test]
    fn stored_ids_tell_keys_apart_even_when_parts_shift() {
        let key = |sub: &str, topic: &str, bindings: &str| ResumeKey {
            tenant: "t".into(),
            sub: sub.into(),
            topic: topic.into(),
            bindings: bindings.into(),
        };
        let a = key("ab", "c", "[]").stored_id();
        assert_eq!(a, key("ab", "c", "[]").stored_id());
        assert_ne!(a, key("a", "bc", "[]").stored_id());
        assert!(a.starts_with("phx:") && a.len() == 36, "{a}");
    }
}
