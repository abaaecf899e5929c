//! A connection's bounded send queue. Publishing never waits: a full queue marks
//! the connection as a slow consumer and its task closes it.

use super::delivery::Delivery;
use super::registry::QueueStats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Sending half, held by the hub for every topic the connection subscribes to.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub conn_id: u64,
    tx: mpsc::Sender<Arc<Delivery>>,
    overflow: Arc<Overflow>,
    stats: Arc<QueueStats>,
}

#[derive(Debug, Default)]
struct Overflow {
    hit: AtomicBool,
    notify: Notify,
}

/// Receiving half, owned by the connection's task.
pub struct Inbox {
    rx: mpsc::Receiver<Arc<Delivery>>,
    overflow: Arc<Overflow>,
    stats: Arc<QueueStats>,
}

/// Makes a queue holding at most `capacity` deliveries.
pub fn outbox(conn_id: u64, capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflow = Arc::new(Overflow::default());
    let stats = Arc::new(QueueStats::default());
    (Outbox { conn_id, tx, overflow: Arc::clone(&overflow), stats: Arc::clone(&stats) }, Inbox { rx, overflow, stats })
}

impl Outbox {
    /// Queues a delivery; returns false (and flags the connection) if the queue is full.
    pub fn push(&self, d: &Arc<Delivery>) -> bool {
        match self.tx.try_send(Arc::clone(d)) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = d.position() {
                    self.stats.last_queued.fetch_max(p.get(), Ordering::Relaxed);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.hit.swap(true, Ordering::AcqRel) {
                    metrics::counter!("herald_queue_overflows_total").increment(1);
                    self.overflow.notify.notify_one();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The queue's counters, shared with its inbox.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.overflow.hit.load(Ordering::Acquire)
    }

    /// Ends the connection as a slow consumer's is ended, so its client resumes
    /// from the log (used when the log itself lost changes: the resume resyncs).
    pub fn cut_off(&self) {
        if !self.overflow.hit.swap(true, Ordering::AcqRel) {
            self.overflow.notify.notify_one();
        }
    }
}

impl Inbox {
    /// Waits for deliveries and moves up to `max` of them into `buf`; 0 means closed.
    pub async fn recv_many(&mut self, buf: &mut Vec<Arc<Delivery>>, max: usize) -> usize {
        let before = buf.len();
        let n = self.rx.recv_many(buf, max).await;
        self.stats.taken.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(p) = buf[before..].iter().rev().find_map(|d| d.position()) {
            self.stats.last_taken.fetch_max(p.get(), Ordering::Relaxed);
        }
        n
    }

    /// A handle that resolves once this queue has overflowed.
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal(Arc::clone(&self.overflow))
    }
}

/// Tells a connection's task that its queue overflowed.
pub struct OverflowSignal(Arc<Overflow>);

impl OverflowSignal {
    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.0.hit.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}
