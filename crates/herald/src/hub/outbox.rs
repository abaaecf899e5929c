//! A connection's bounded send queue. Publishing never waits: a full queue marks
//! the connection as a slow consumer and its task closes it.

use super::delivery::Delivery;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Sending half, held by the hub for every topic the connection subscribes to.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub conn_id: u64,
    tx: mpsc::Sender<Arc<Delivery>>,
    overflow: Arc<Overflow>,
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
}

/// Makes a queue holding at most `capacity` deliveries.
pub fn outbox(conn_id: u64, capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflow = Arc::new(Overflow::default());
    (Outbox { conn_id, tx, overflow: Arc::clone(&overflow) }, Inbox { rx, overflow })
}

impl Outbox {
    /// Queues a delivery; returns false (and flags the connection) if the queue is full.
    pub fn push(&self, d: &Arc<Delivery>) -> bool {
        match self.tx.try_send(Arc::clone(d)) {
            Ok(()) => true,
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
        self.rx.recv_many(buf, max).await
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
