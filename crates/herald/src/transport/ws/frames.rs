//! Native protocol v1 frames (docs/PROTOCOL.md) and close codes.

use crate::hub::{Delivery, Payload, WireFormat};
use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

/// A client → server frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Auth { token: String, id: Option<Value> },
    Sub { topic: String, since: Option<u64>, id: Option<Value> },
    Unsub { topic: String, id: Option<Value> },
    // A `Value`, not a `RawValue`: an internally tagged enum buffers its
    // fields, and a `RawValue` cannot be read back from that buffer.
    Pub { topic: String, event: String, data: Option<Value>, id: Option<Value> },
    Presence { topic: String, meta: Option<Value>, id: Option<Value> },
    Ping { id: Option<Value> },
    Refresh { token: String, id: Option<Value> },
}

/// Ops the server knows, to tell an unknown op from a malformed known one.
pub const KNOWN_OPS: &[&str] = &["auth", "sub", "unsub", "pub", "presence", "ping", "refresh"];

/// Why the server closes a connection; each has a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 4000: a frame broke the protocol beyond repair. Do not reconnect unchanged.
    ProtocolError,
    /// 4001: no valid credentials. Reconnect only with a new token.
    AuthFailed,
    /// 4002: the token expired. Reconnect with a fresh token.
    TokenExpired,
    /// 4003: nothing heard within the heartbeat timeout. Reconnect.
    HeartbeatTimeout,
    /// 4008: the send queue overflowed. Reconnect and resume with `since`.
    SlowConsumer,
    /// 4009: the tenant holds its maximum number of connections. Reconnect later, with backoff.
    TooManyConnections,
    /// 4029: kept sending over the rate limit. Reconnect later, with backoff.
    RateLimited,
    /// 1001: the server is shutting down. Reconnect (to another node) and resume.
    ShuttingDown,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ProtocolError => 4000,
            CloseReason::AuthFailed => 4001,
            CloseReason::TokenExpired => 4002,
            CloseReason::HeartbeatTimeout => 4003,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooManyConnections => 4009,
            CloseReason::RateLimited => 4029,
            CloseReason::ShuttingDown => 1001,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ShuttingDown => "shutting_down",
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        !matches!(self, CloseReason::ProtocolError | CloseReason::AuthFailed)
    }
}

pub fn text(v: Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

pub fn ack(id: &Option<Value>, extra: Value) -> Utf8Bytes {
    let mut v = json!({ "op": "ack", "id": id });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    text(v)
}

pub fn error(id: &Option<Value>, code: &str, message: impl std::fmt::Display) -> Utf8Bytes {
    text(json!({ "op": "error", "id": id, "code": code, "message": message.to_string() }))
}

pub fn goodbye(reason: CloseReason, message: &str) -> Utf8Bytes {
    text(json!({
        "op": "goodbye",
        "code": reason.code(),
        "reason": reason.name(),
        "reconnect": reason.reconnect(),
        "message": message,
    }))
}

/// The native frame of a delivery, serialized once and shared.
pub fn delivery(d: &Delivery) -> Utf8Bytes {
    d.frame(WireFormat::Native, |d| match &d.payload {
        Payload::Event(e) => crate::transport::topics::event_json(Some("event"), &d.topic, e),
        Payload::Broadcast { event, data, from, .. } => json!({
            "op": "broadcast",
            "topic": &*d.topic,
            "event": event,
            "data": data,
            "from": from.as_deref(),
        })
        .to_string(),
        Payload::PresenceDiff { joins, leaves } => json!({
            "op": "presence_diff",
            "topic": &*d.topic,
            "joins": joins,
            "leaves": leaves,
        })
        .to_string(),
    })
}
