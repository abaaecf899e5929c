//! What the hub hands to subscribers: one shared [`Delivery`] per (event, topic),
//! with a cache so each wire format serializes it once for every subscriber.

use crate::model::Event;
use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};

/// Wire formats that cache their encoding of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Herald's own WebSocket protocol (docs/PROTOCOL.md).
    Native = 0,
    /// Server-sent events.
    Sse = 1,
    /// Phoenix serializer 1.0.0 (Supabase Realtime).
    PhoenixV1 = 2,
    /// Phoenix serializer 2.0.0 (Supabase Realtime).
    PhoenixV2 = 3,
}

const FORMATS: usize = 4;

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
}

/// One payload on one topic, shared by every subscriber of that topic.
#[derive(Debug)]
pub struct Delivery {
    pub tenant: Arc<str>,
    pub topic: Arc<str>,
    pub payload: Payload,
    /// Publish time in epoch milliseconds, for delivery-latency metrics.
    pub published_at: std::time::Instant,
    frames: [OnceLock<Utf8Bytes>; FORMATS],
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
    pub fn position(&self) -> Option<u64> {
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
    pub fn frame(&self, format: WireFormat, encode: impl FnOnce(&Delivery) -> String) -> Utf8Bytes {
        self.frames[format as usize].get_or_init(|| Utf8Bytes::from(encode(self))).clone()
    }
}
