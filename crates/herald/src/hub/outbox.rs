//! A connection's bounded send queue, which conflates rather than cuts off.
//!
//! Publishing never waits. While a connection keeps up, every delivery is
//! queued and sent, bursts included. When it falls behind (its oldest queued
//! delivery has waited 250 ms, or half its bound is used), a job's progress
//! ticks supersede one another: a `job.updated` that keeps the job's status replaces the same
//! job's pending tick on the same topic (the newer goes to the back, so
//! positions stay in order). Nothing else is ever replaced — a status change,
//! a terminal event, a task, an artifact, a notification, a broadcast — and a
//! tick is never replaced across one of those: a tick followed by a task
//! failure of its job stays. Only what cannot be conflated counts against the
//! bound; past it the connection is flagged a slow consumer and its task
//! closes it (4008), as before. A subscription may opt out (`conflate:
//! false`): its deliveries are queued one by one.

use super::delivery::{Delivery, Payload};
use super::registry::QueueStats;
use crate::model::EventType;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A connection is behind once its oldest queued delivery has waited this
/// long (or its queue is half full): only then do ticks supersede each other.
/// A reader that keeps up gets every tick, even of a burst that arrives at once.
const BEHIND_AFTER: Duration = Duration::from_millis(250);

/// Sending half, held by the hub for every topic the connection subscribes to.
#[derive(Clone)]
pub struct Outbox {
    pub conn_id: u64,
    shared: Arc<Shared>,
    /// This subscription lets progress ticks supersede each other when behind.
    conflate: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("conn_id", &self.conn_id).field("conflate", &self.conflate).finish()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the connection's task when something was queued.
    ready: Notify,
    overflow: Overflow,
    /// The inbox is gone: nothing will be read any more.
    closed: AtomicBool,
    stats: Arc<QueueStats>,
    capacity: usize,
}

#[derive(Default)]
struct Overflow {
    hit: AtomicBool,
    notify: Notify,
}

#[derive(Default)]
struct Queue {
    /// In position order; a superseded tick stays as an empty slot until the
    /// front reaches it or the queue is compacted.
    items: VecDeque<Item>,
    /// Items that still hold a delivery.
    live: usize,
    /// (topic, job) → sequence number of that job's pending tick on that topic.
    ticks: HashMap<u64, u64>,
    next_seq: u64,
    hasher: std::collections::hash_map::RandomState,
}

struct Item {
    seq: u64,
    delivery: Option<Arc<Delivery>>,
    /// The key of `ticks` this item holds, if it is a tick.
    tick: Option<u64>,
}

/// Receiving half, owned by the connection's task.
pub struct Inbox {
    shared: Arc<Shared>,
}

/// Makes a queue holding at most `capacity` deliveries that cannot be conflated.
pub fn outbox(conn_id: u64, capacity: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        ready: Notify::new(),
        overflow: Overflow::default(),
        closed: AtomicBool::new(false),
        stats: Arc::new(QueueStats::default()),
        capacity: capacity.max(1),
    });
    (Outbox { conn_id, shared: Arc::clone(&shared), conflate: true }, Inbox { shared })
}

/// The job of a progress tick (a `job.updated` of Herald's own jobs), if `d` is one.
fn tick_of(d: &Delivery) -> Option<&str> {
    let Payload::Event(e) = &d.payload else { return None };
    if e.kind != EventType::JobUpdated || e.table.is_some() {
        return None;
    }
    e.job_id.as_deref()
}

/// The job status a tick carries. Read only when a tick may supersede another
/// (the connection is behind), and parsed once per event, not per subscriber.
fn status_of(d: &Delivery) -> Option<&str> {
    let Payload::Event(e) = &d.payload else { return None };
    e.row().get("status")?.as_str()
}

impl Outbox {
    /// The same queue, for a subscription that wants every tick (`false`) or
    /// lets ticks supersede each other when behind (`true`, the default).
    pub fn conflating(&self, conflate: bool) -> Outbox {
        Outbox { conflate, ..self.clone() }
    }

    /// Queues a delivery; returns false (and flags the connection) if what
    /// cannot be conflated has reached the bound.
    pub fn push(&self, d: &Arc<Delivery>) -> bool {
        let sh = &*self.shared;
        if sh.closed.load(Ordering::Acquire) {
            return false;
        }
        let tick = if self.conflate { tick_of(d) } else { None };
        let position = d.position();
        let mut q = sh.queue.lock();
        let key = tick.map(|job| {
            let mut h = q.hasher.build_hasher();
            d.topic.hash(&mut h);
            job.hash(&mut h);
            h.finish()
        });
        // A pending tick of the same job on the same topic with the same status goes.
        let superseded = match (key, tick) {
            (Some(k), Some(job)) => {
                q.ticks.get(&k).copied().filter(|seq| q.is_behind(sh.capacity) && q.same_tick(*seq, d, job))
            }
            _ => None,
        };
        if superseded.is_none() && q.live >= sh.capacity {
            drop(q);
            if !sh.overflow.hit.swap(true, Ordering::AcqRel) {
                metrics::counter!("herald_queue_overflows_total").increment(1);
                sh.overflow.notify.notify_one();
            }
            return false;
        }
        if let Some(seq) = superseded {
            q.vacate(seq);
            sh.stats.conflated.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_conflated_total").increment(1);
        }
        if tick.is_none() {
            // A tick is never replaced across another event of its job: the
            // pending tick (if any) stays, and later ones queue behind this.
            if let Payload::Event(e) = &d.payload {
                if let Some(job) = e.job_id.as_deref() {
                    let mut h = q.hasher.build_hasher();
                    d.topic.hash(&mut h);
                    job.hash(&mut h);
                    let k = h.finish();
                    q.ticks.remove(&k);
                }
            }
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back(Item { seq, delivery: Some(Arc::clone(d)), tick: key });
        q.live += 1;
        if let Some(k) = key {
            q.ticks.insert(k, seq);
        }
        q.compact_if_sparse();
        drop(q);
        sh.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = position {
            sh.stats.last_queued.fetch_max(p.get(), Ordering::Relaxed);
        }
        sh.ready.notify_one();
        true
    }

    /// The queue's counters, shared with its inbox.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.shared.stats
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.shared.overflow.hit.load(Ordering::Acquire)
    }

    /// Ends the connection as a slow consumer's is ended, so its client resumes
    /// from the log (used when the log itself lost changes: the resume resyncs).
    pub fn cut_off(&self) {
        if !self.shared.overflow.hit.swap(true, Ordering::AcqRel) {
            self.shared.overflow.notify.notify_one();
        }
    }
}

impl Queue {
    fn index_of(&self, seq: u64) -> Option<usize> {
        self.items.binary_search_by_key(&seq, |i| i.seq).ok()
    }

    /// Whether the pending item `seq` is a tick that `new` (a tick of `job`)
    /// supersedes: same topic, same job, same status (the key is a hash: this
    /// also rules out a collision).
    fn same_tick(&self, seq: u64, new: &Delivery, job: &str) -> bool {
        let Some(i) = self.index_of(seq) else { return false };
        let Some(old) = self.items[i].delivery.as_ref() else { return false };
        old.topic == new.topic
            && tick_of(old) == Some(job)
            && status_of(old).is_some()
            && status_of(old) == status_of(new)
    }

    /// Whether the reader is behind: its oldest delivery has waited
    /// [`BEHIND_AFTER`], or half the bound is used.
    fn is_behind(&self, capacity: usize) -> bool {
        self.live >= capacity / 2
            || self
                .items
                .iter()
                .find_map(|i| i.delivery.as_ref())
                .is_some_and(|d| d.published_at.elapsed() >= BEHIND_AFTER)
    }

    /// Empties the slot of a superseded tick.
    fn vacate(&mut self, seq: u64) {
        if let Some(i) = self.index_of(seq) {
            if self.items[i].delivery.take().is_some() {
                self.live -= 1;
            }
        }
    }

    /// Drops empty slots once they outnumber the deliveries (a reader that
    /// stalled for long under a stream of ticks would otherwise keep one per tick).
    fn compact_if_sparse(&mut self) {
        let empty = self.items.len() - self.live;
        if empty > 64 && empty > self.live {
            self.items.retain(|i| i.delivery.is_some());
        }
    }
}

impl Inbox {
    /// Waits for deliveries and moves up to `max` of them into `buf`, in order.
    /// Never returns 0: a queue is read until its connection ends.
    pub async fn recv_many(&mut self, buf: &mut Vec<Arc<Delivery>>, max: usize) -> usize {
        loop {
            let n = self.take(buf, max);
            if n > 0 {
                return n;
            }
            self.shared.ready.notified().await;
        }
    }

    fn take(&self, buf: &mut Vec<Arc<Delivery>>, max: usize) -> usize {
        let sh = &*self.shared;
        let mut n = 0;
        let mut last = None;
        {
            let mut q = sh.queue.lock();
            while n < max.max(1) {
                let Some(item) = q.items.pop_front() else { break };
                let Some(d) = item.delivery else { continue };
                q.live -= 1;
                // Taken: a later tick of the job starts a new slot.
                if let Some(k) = item.tick {
                    if q.ticks.get(&k) == Some(&item.seq) {
                        q.ticks.remove(&k);
                    }
                }
                if let Some(p) = d.position() {
                    last = Some(p.get());
                }
                buf.push(d);
                n += 1;
            }
            if q.items.is_empty() && q.ticks.capacity() > 64 {
                q.ticks.shrink_to(16);
                q.items.shrink_to(16);
            }
        }
        sh.stats.taken.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(p) = last {
            sh.stats.last_taken.fetch_max(p, Ordering::Relaxed);
        }
        n
    }

    /// A handle that resolves once this queue has overflowed.
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal(Arc::clone(&self.shared))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // What is queued will never be read: let it go now, not with the last outbox clone.
        let mut q = self.shared.queue.lock();
        q.items.clear();
        q.ticks.clear();
        q.live = 0;
    }
}

/// Tells a connection's task that its queue overflowed.
pub struct OverflowSignal(Arc<Shared>);

impl OverflowSignal {
    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.0.overflow.notify.notified();
            if self.0.overflow.hit.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}
