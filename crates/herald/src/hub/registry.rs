//! This node's live connections as the inspector shows them — who, over which
//! transport, how many topics, how far behind — and why recent ones ended.
//! Written on connect and close; the queue keeps its counters in atomics, so
//! nothing here is locked per delivery.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// How many ended connections, and how many errors, are remembered (over all tenants of the node).
const CLOSES_KEPT: usize = 1000;

/// A connection queue's counters: kept by the queue's two ends.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Deliveries the hub queued for the connection.
    pub queued: AtomicU64,
    /// Deliveries the connection took off its queue to send.
    pub taken: AtomicU64,
    /// Position of the newest event queued, and of the newest taken.
    pub last_queued: AtomicU64,
    pub last_taken: AtomicU64,
    /// Hub topics the connection receives.
    pub topics: AtomicUsize,
    /// Progress ticks superseded by newer ones while the connection was behind.
    pub conflated: AtomicU64,
}

impl QueueStats {
    /// Events queued but not yet taken, as a distance in log positions.
    pub fn lag(&self) -> u64 {
        self.last_queued.load(Ordering::Relaxed).saturating_sub(self.last_taken.load(Ordering::Relaxed))
    }

    /// Deliveries waiting in the queue.
    pub fn waiting(&self) -> u64 {
        let gone = self.taken.load(Ordering::Relaxed) + self.conflated.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).saturating_sub(gone)
    }
}

/// Who a live connection is.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tenant: Arc<str>,
    pub transport: &'static str,
    pub sub: Arc<str>,
    pub role: &'static str,
    /// Epoch milliseconds.
    pub connected_at: i64,
    pub stats: Arc<QueueStats>,
}

/// A tenant's delivery counters on this node since it started: the
/// inspector's resume hits and misses, and the connections cut off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryCounts {
    /// Resumes served from the log (a hit: every missed event replayed).
    pub resumes_replayed: u64,
    /// Resumes older than retention (a miss: the client got a resync and a snapshot).
    pub resumes_resynced: u64,
    /// Connections cut off because what could not be conflated filled their queue (4008).
    pub slow_consumers: u64,
}

/// A connection that ended, and why.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Closed {
    /// RFC 3339.
    pub at: String,
    #[serde(skip)]
    pub tenant: Arc<str>,
    pub transport: &'static str,
    pub sub: String,
    /// `client` when the client left; otherwise the close reason (PROTOCOL.md).
    pub reason: &'static str,
    /// The WebSocket close code, when the server closed.
    pub code: Option<u16>,
    pub message: String,
    /// How long it lived, milliseconds.
    pub lived_ms: i64,
}

/// An error a live connection was sent (a refused subscription, a bad frame).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Refused {
    /// RFC 3339.
    pub at: String,
    #[serde(skip)]
    pub tenant: Arc<str>,
    pub transport: &'static str,
    pub sub: String,
    /// The error code the client got (PROTOCOL.md), e.g. `forbidden`.
    pub code: String,
    pub message: String,
}

#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, ConnInfo>>,
    closed: Mutex<VecDeque<Closed>>,
    errors: Mutex<VecDeque<Refused>>,
    /// Per tenant; one entry per tenant that resumed or was cut off.
    counts: Mutex<HashMap<Arc<str>, DeliveryCounts>>,
}

impl Registry {
    pub fn add(&self, id: u64, info: ConnInfo) {
        self.conns.lock().insert(id, info);
    }

    pub fn remove(&self, id: u64) -> Option<ConnInfo> {
        self.conns.lock().remove(&id)
    }

    /// Records why a connection ended; `slow_consumer` when its queue overflowed.
    pub fn record_close(&self, closed: Closed, slow_consumer: bool) {
        if slow_consumer {
            self.count(&closed.tenant, |c| c.slow_consumers += 1);
        }
        keep_last(&mut self.closed.lock(), closed);
    }

    /// Counts a resume of `tenant`: replayed from the log, or behind retention.
    pub fn count_resume(&self, tenant: &Arc<str>, behind: bool) {
        self.count(tenant, |c| match behind {
            true => c.resumes_resynced += 1,
            false => c.resumes_replayed += 1,
        });
    }

    fn count(&self, tenant: &Arc<str>, add: impl FnOnce(&mut DeliveryCounts)) {
        add(self.counts.lock().entry(Arc::clone(tenant)).or_default());
    }

    /// A tenant's delivery counters.
    pub fn counts_of(&self, tenant: &str) -> DeliveryCounts {
        self.counts.lock().get(tenant).copied().unwrap_or_default()
    }

    pub fn record_error(&self, refused: Refused) {
        keep_last(&mut self.errors.lock(), refused);
    }

    /// A tenant's most recent errors, newest first.
    pub fn errors_of(&self, tenant: &str, n: usize) -> Vec<Refused> {
        self.errors.lock().iter().rev().filter(|e| &*e.tenant == tenant).take(n).cloned().collect()
    }

    /// Over every live connection of the node: deliveries waiting in queues,
    /// and the largest lag (log positions), for `/metrics`.
    pub fn backlog(&self) -> (u64, u64) {
        let conns = self.conns.lock();
        conns.values().fold((0, 0), |(waiting, lag), c| (waiting + c.stats.waiting(), lag.max(c.stats.lag())))
    }

    /// A tenant's live connections (by id), and its most recent closes, newest first.
    pub fn of_tenant(&self, tenant: &str, closes: usize) -> (Vec<(u64, ConnInfo)>, Vec<Closed>) {
        let conns =
            self.conns.lock().iter().filter(|(_, c)| &*c.tenant == tenant).map(|(id, c)| (*id, c.clone())).collect();
        let closed = self.closed.lock().iter().rev().filter(|c| &*c.tenant == tenant).take(closes).cloned().collect();
        (conns, closed)
    }
}

/// Appends to a list that keeps only the newest [`CLOSES_KEPT`] entries.
fn keep_last<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == CLOSES_KEPT {
        list.pop_front();
    }
    list.push_back(item);
}
