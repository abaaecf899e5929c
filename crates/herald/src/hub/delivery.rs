//! What the hub hands to subscribers: one shared [`Delivery`] per (event, topic),
//! with a cache so each wire format serializes it once for every subscriber.

use crate::model::Event;
use serde_json::value::RawValue;
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Most wire formats that can cache their encoding in a delivery.
const MAX_FORMATS: usize = 8;

/// A wire format that caches its encoding of deliveries. Each codec registers
/// its own once (`WireFormat::register`), so a new protocol needs no edit here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFormat(usize);

impl WireFormat {
    /// A new cache slot; past [`MAX_FORMATS`] the format still works, uncached.
    pub fn register() -> WireFormat {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        WireFormat(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What is being delivered.
#[derive(Debug)]
pub enum Payload {
    /// A committed event from the log.
    Event(Arc<Event>),
    /// An ephemeral broadcast to a room.
    Broadcast {
        event: String,
        data: Box<RawValue>,
        /// The connection that sent it, so it can skip its own message.
        sender: Option<u64>,
        /// The `sub` of whoever sent it, shown to receivers.
        from: Option<Arc<str>>,
    },
    /// Presence changes in a room.
    PresenceDiff { joins: serde_json::Value, leaves: serde_json::Value },
    /// Chunks appended to a job's output stream (`stream:<job>:<name>`):
    /// `chunks` is their JSON array, the first at offset `first`.
    Chunks { first: u64, count: u64, chunks: Arc<RawValue> },
}

/// One payload on one topic, shared by every subscriber of that topic.
#[derive(Debug)]
pub struct Delivery {
    pub tenant: Arc<str>,
    pub topic: Arc<str>,
    pub payload: Payload,
    /// Publish time in epoch milliseconds, for delivery-latency metrics.
    pub published_at: std::time::Instant,
    frames: [OnceLock<Box<dyn Any + Send + Sync>>; MAX_FORMATS],
}

impl Delivery {
    pub fn new(tenant: Arc<str>, topic: Arc<str>, payload: Payload) -> Arc<Delivery> {
        Arc::new(Delivery {
            tenant,
            topic,
            payload,
            published_at: std::time::Instant::now(),
            frames: Default::default(),
        })
    }

    /// The log position, for events.
    pub fn position(&self) -> Option<crate::model::Position> {
        match &self.payload {
            Payload::Event(e) => Some(e.position),
            _ => None,
        }
    }

    /// Records publish-to-write latency into `herald_delivery_seconds` (callers
    /// sample: see `transport::conn::Batch`).
    pub fn record_latency(&self) {
        static HISTOGRAM: OnceLock<metrics::Histogram> = OnceLock::new();
        HISTOGRAM
            .get_or_init(|| metrics::histogram!("herald_delivery_seconds"))
            .record(self.published_at.elapsed().as_secs_f64());
    }

    /// This delivery encoded in `format`: built by the first subscriber that
    /// needs it, then shared (a reference-count increment) with all the others.
    /// `T` is the codec's frame type (text frame, SSE bytes, ...).
    pub fn frame<T>(&self, format: WireFormat, encode: impl FnOnce(&Delivery) -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        let Some(slot) = self.frames.get(format.0) else { return encode(self) };
        if let Some(frame) = slot.get().and_then(|cached| cached.downcast_ref::<T>()) {
            return frame.clone();
        }
        // Two subscribers racing here both encode; the frames are equal and one is kept.
        let frame = encode(self);
        let _ = slot.set(Box::new(frame.clone()));
        frame
    }
}
