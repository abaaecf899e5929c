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

use crate::model::Position;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a position is kept for a client that has not come back.
const KEEP: Duration = Duration::from_secs(10 * 60);
/// How long after a start sockets are taken for clients coming back.
pub const RESTART_WINDOW: Duration = Duration::from_secs(30);
/// Most entries kept; the oldest go first.
const MAX_ENTRIES: usize = 100_000;

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

/// Shared by every Phoenix connection of the server.
pub struct ResumeBook {
    entries: Mutex<HashMap<ResumeKey, (Cursors, Instant)>>,
    started: Instant,
    /// Head of the log when the server started, once known.
    pub startup_head: OnceLock<Position>,
}

impl Default for ResumeBook {
    fn default() -> Self {
        ResumeBook { entries: Mutex::default(), started: Instant::now(), startup_head: OnceLock::new() }
    }
}

impl ResumeBook {
    /// Remembers where a channel stopped.
    pub fn save(&self, key: ResumeKey, cursors: Cursors) {
        if cursors.is_empty() {
            return;
        }
        let mut entries = self.entries.lock();
        let now = Instant::now();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
            if entries.len() >= MAX_ENTRIES {
                if let Some(oldest) = entries.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone()) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (cursors, now));
    }

    /// Forgets a channel that left on purpose.
    pub fn forget(&self, key: &ResumeKey) {
        self.entries.lock().remove(key);
    }

    /// Where a rejoining channel should resume from, per Herald topic.
    pub fn lookup(&self, key: &ResumeKey) -> Option<Cursors> {
        let entries = self.entries.lock();
        let (cursors, at) = entries.get(key)?;
        (at.elapsed() < KEEP).then(|| cursors.clone())
    }

    /// Whether a socket opened now is probably a client coming back after a restart.
    pub fn is_young(&self) -> bool {
        self.started.elapsed() < RESTART_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_looks_up_and_forgets() {
        let book = ResumeBook::default();
        let key = ResumeKey { tenant: "t".into(), sub: "a".into(), topic: "realtime:x".into(), bindings: "[]".into() };
        assert!(book.lookup(&key).is_none());
        book.save(key.clone(), HashMap::from([("jobs".to_string(), Position::from_u64(7))]));
        assert_eq!(book.lookup(&key).unwrap()["jobs"], Position::from_u64(7));
        book.forget(&key);
        assert!(book.lookup(&key).is_none());
        assert!(book.is_young());
    }
}
