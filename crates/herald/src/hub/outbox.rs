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
    /// queue is compacted (the front is always a live item).
    items: VecDeque<Item>,
    /// Items that still hold a delivery.
    live: usize,
    /// (topic, job) → the newest event of that job queued on that topic (its
    /// sequence number), and whether it is a tick a newer one may supersede.
    jobs: HashMap<u64, (u64, bool)>,
    next_seq: u64,
    hasher: std::collections::hash_map::RandomState,
}

struct Item {
    seq: u64,
    delivery: Option<Arc<Delivery>>,
    /// The key of `jobs` this item is the newest event of, when it was queued.
    job: Option<u64>,
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

/// The job of an event of Herald's own jobs (tasks and artifacts included).
fn job_of(d: &Delivery) -> Option<&str> {
    let Payload::Event(e) = &d.payload else { return None };
    if e.table.is_some() {
        return None;
    }
    e.job_id.as_deref()
}

/// Whether `d` is an event about the job itself (its row), as opposed to a task or artifact.
fn is_job_event(d: &Delivery) -> bool {
    matches!(&d.payload, Payload::Event(e) if matches!(e.kind,
        EventType::JobCreated | EventType::JobUpdated | EventType::JobCompleted
        | EventType::JobFailed | EventType::JobCancelled | EventType::JobStalled))
}

/// Whether `d` is a progress tick candidate: a `job.updated`.
fn is_update(d: &Delivery) -> bool {
    matches!(&d.payload, Payload::Event(e) if e.kind == EventType::JobUpdated)
}

/// The job status an event carries. Read only while the connection is
/// behind, and parsed once per event, not per subscriber.
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
        let position = d.position();
        let mut q = sh.queue.lock();
        // Checked under the lock: a push racing the inbox's drop leaves nothing behind.
        if sh.closed.load(Ordering::Acquire) {
            return false;
        }
        // A reader with nothing queued is not behind, and nothing can be
        // superseded: a caught-up connection (the common case) pays no hashing.
        let key = if self.conflate && !q.items.is_empty() { job_of(d).map(|job| q.key(&d.topic, job)) } else { None };
        let prev = key.and_then(|k| q.jobs.get(&k).copied());
        // Only a `job.updated` while behind may supersede, and only a pending
        // tick of the same job, topic and status: a status change (which is a
        // `job.updated` too, e.g. queued → running) is never a slot, and a
        // task or artifact queued after a tick seals it (it is the newest now).
        let behind = is_update(d) && prev.is_some() && q.is_behind(sh.capacity);
        let superseded = match prev {
            Some((seq, true)) if behind && q.pending_same_status(seq, d) => Some(seq),
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
        // The new item is a slot when it is no status change: its job's previous
        // event here is still queued, is about the job, and has the same status.
        let slot = match prev {
            Some((seq, _)) if behind => superseded == Some(seq) || q.pending_same_status(seq, d),
            _ => false,
        };
        if let Some(seq) = superseded {
            q.vacate(seq);
            sh.stats.conflated.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_conflated_total").increment(1);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back(Item { seq, delivery: Some(Arc::clone(d)), job: key });
        q.live += 1;
        if let Some(k) = key {
            q.jobs.insert(k, (seq, slot));
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
    fn key(&self, topic: &str, job: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        topic.hash(&mut h);
        job.hash(&mut h);
        h.finish()
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        self.items.binary_search_by_key(&seq, |i| i.seq).ok()
    }

    /// Whether the item `seq` is still queued, is an event about the same job
    /// on the same topic as `new`, and carries the same status (the key is a
    /// hash: this also rules out a collision).
    fn pending_same_status(&self, seq: u64, new: &Delivery) -> bool {
        let Some(i) = self.index_of(seq) else { return false };
        let Some(old) = self.items[i].delivery.as_ref() else { return false };
        old.topic == new.topic
            && is_job_event(old)
            && job_of(old).is_some()
            && job_of(old) == job_of(new)
            && status_of(old).is_some()
            && status_of(old) == status_of(new)
    }

    /// Whether the reader is behind: its oldest delivery has waited
    /// [`BEHIND_AFTER`], or half the bound is used.
    fn is_behind(&self, capacity: usize) -> bool {
        self.live >= capacity / 2
            || self
                .items
                .front()
                .and_then(|i| i.delivery.as_ref())
                .is_some_and(|d| d.published_at.elapsed() >= BEHIND_AFTER)
    }

    /// Empties the slot of a superseded tick, and keeps the front live.
    fn vacate(&mut self, seq: u64) {
        if let Some(i) = self.index_of(seq) {
            if self.items[i].delivery.take().is_some() {
                self.live -= 1;
            }
        }
        while self.items.front().is_some_and(|i| i.delivery.is_none()) {
            self.items.pop_front();
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
                // Taken: nothing of this job is queued on this topic any more.
                if let Some(k) = item.job {
                    if q.jobs.get(&k).is_some_and(|(seq, _)| *seq == item.seq) {
                        q.jobs.remove(&k);
                    }
                }
                if let Some(p) = d.position() {
                    last = Some(p.get());
                }
                buf.push(d);
                n += 1;
            }
            // Keep the front live (`is_behind` reads it).
            while q.items.front().is_some_and(|i| i.delivery.is_none()) {
                q.items.pop_front();
            }
            // Give back what a backlog grew, once it is gone.
            if q.items.is_empty() {
                if q.items.capacity() > 64 {
                    q.items.shrink_to(16);
                }
                if q.jobs.capacity() > 64 {
                    q.jobs.shrink_to(16);
                }
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
        q.jobs.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Position};
    use serde_json::value::RawValue;

    fn event(pos: u64, kind: EventType, job: &str, status: &str) -> Arc<Delivery> {
        let data = format!(r#"{{"id":"{job}","status":"{status}"}}"#);
        let e = Event {
            position: Position::from_u64(pos),
            tenant: Arc::from("t"),
            kind,
            topics: vec!["jobs".into()],
            job_id: Some(job.into()),
            owner: None,
            data: Arc::from(RawValue::from_string(data).unwrap()),
            old: None,
            table: None,
            time: 0,
            row: Default::default(),
        };
        Delivery::new(Arc::from("t"), Arc::from("jobs"), Payload::Event(Arc::new(e)))
    }

    async fn drain(inbox: &mut Inbox) -> Vec<u64> {
        let mut buf = Vec::new();
        inbox.recv_many(&mut buf, 1000).await;
        buf.iter().filter_map(|d| d.position()).map(|p| p.get()).collect()
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_gets_every_tick_of_a_burst() {
        let (out, mut inbox) = outbox(1, 100);
        for p in 1..=40 {
            assert!(out.push(&event(p, EventType::JobUpdated, "a", "running")));
        }
        assert_eq!(drain(&mut inbox).await, (1..=40).collect::<Vec<_>>());
        assert_eq!(out.stats().conflated.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn behind_ticks_supersede_but_never_a_status_change_nor_across_a_task() {
        use EventType::*;
        // Behind once 10 of 20 are queued: ten ticks of another job fill that half.
        let (out, mut inbox) = outbox(1, 20);
        for p in 1..=10 {
            assert!(out.push(&event(p, JobUpdated, "x", "running")));
        }
        let y = [
            (11, JobCreated, "queued"),
            (12, JobUpdated, "running"), // the status change: kept
            (13, JobUpdated, "running"), // superseded by 14
            (14, JobUpdated, "running"),
            (15, TaskUpdated, "failed"), // seals 14
            (16, JobUpdated, "running"), // after the task: kept
            (17, JobUpdated, "running"), // superseded by 18
            (18, JobUpdated, "running"),
            (19, JobCompleted, "completed"),
        ];
        for (p, kind, status) in y {
            assert!(out.push(&event(p, kind, "y", status)), "{p}");
        }
        let got = drain(&mut inbox).await;
        let of_y: Vec<u64> = got.iter().copied().filter(|p| *p > 10).collect();
        assert_eq!(of_y, [11, 12, 14, 15, 16, 18, 19]);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(out.stats().conflated.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_subscription_that_opted_out_is_cut_off_at_the_bound() {
        let (out, _inbox) = outbox(1, 4);
        let strict = out.conflating(false);
        for p in 1..=4 {
            assert!(strict.push(&event(p, EventType::JobUpdated, "a", "running")));
        }
        assert!(!strict.push(&event(5, EventType::JobUpdated, "a", "running")), "full: cut off");
        assert!(out.is_closed(), "flagged as a slow consumer");
    }
}
