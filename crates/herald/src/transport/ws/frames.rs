//! Native protocol v1 frames (docs/PROTOCOL.md).

use crate::hub::{Delivery, Payload, WireFormat};
use crate::session::CloseReason;
use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

/// A client → server frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Auth {
        token: String,
        id: Option<Value>,
    },
    /// `conflate: false`: every progress tick, even when behind (default: ticks
    /// of one job may supersede each other while the connection is behind).
    Sub {
        topic: String,
        since: Option<u64>,
        conflate: Option<bool>,
        id: Option<Value>,
    },
    Unsub {
        topic: String,
        id: Option<Value>,
    },
    /// A live job list; `have` (ids and versions held) resumes one.
    List {
        list: String,
        query: Option<Value>,
        have: Option<std::collections::HashMap<String, u64>>,
        id: Option<Value>,
    },
    Unlist {
        list: String,
        id: Option<Value>,
    },
    // A `Value`, not a `RawValue`: an internally tagged enum buffers its
    // fields, and a `RawValue` cannot be read back from that buffer.
    Pub {
        topic: String,
        event: String,
        data: Option<Value>,
        id: Option<Value>,
    },
    Presence {
        topic: String,
        meta: Option<Value>,
        id: Option<Value>,
    },
    Ping {
        id: Option<Value>,
    },
    Refresh {
        token: String,
        id: Option<Value>,
    },
}

/// Ops the server knows, to tell an unknown op from a malformed known one.
pub const KNOWN_OPS: &[&str] = &["auth", "sub", "unsub", "list", "unlist", "pub", "presence", "ping", "refresh"];

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

/// How a connection's high-volume frames (events, broadcasts, presence
/// diffs, chunks, list changes) are spelt. Everything else is the same JSON
/// object in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `{"op":"event","topic":…}`: self-describing objects (`herald.v1`).
    #[default]
    Json,
    /// Positional arrays with a numeric tag first (`herald.v1c`): the same
    /// content without the keys, and times as epoch milliseconds.
    Compact,
}

/// Tags of compact frames, their first element.
pub mod tag {
    pub const EVENT: u8 = 0;
    pub const BROADCAST: u8 = 1;
    pub const PRESENCE_DIFF: u8 = 2;
    pub const CHUNKS: u8 = 3;
    pub const LIST_CHANGE: u8 = 4;
}

/// The native protocol's cache slots in a delivery, one per encoding.
static NATIVE: std::sync::LazyLock<WireFormat> = std::sync::LazyLock::new(WireFormat::register);
static COMPACT: std::sync::LazyLock<WireFormat> = std::sync::LazyLock::new(WireFormat::register);

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// An event of the log as a frame: `{"op":"event",…}` or `[0,topic,position,type,data,time_ms(,old)]`.
pub fn event(e: &crate::model::Event, topic: &str, enc: Encoding) -> Utf8Bytes {
    match enc {
        Encoding::Json => Utf8Bytes::from(e.wire_json(Some("event"), topic)),
        Encoding::Compact => {
            let old = e.old.as_ref().map(|o| format!(",{}", o.get())).unwrap_or_default();
            Utf8Bytes::from(format!(
                "[{},{},{},\"{}\",{},{}{old}]",
                tag::EVENT,
                quoted(topic),
                e.position.get(),
                e.kind.as_str(),
                e.data.get(),
                e.time
            ))
        }
    }
}

/// A delivery in the connection's encoding, serialized once per encoding and shared.
pub fn delivery_in(d: &Delivery, enc: Encoding) -> Utf8Bytes {
    match enc {
        Encoding::Json => delivery(d),
        Encoding::Compact => d.frame(*COMPACT, |d| -> Utf8Bytes {
            match &d.payload {
                Payload::Event(e) => event(e, &d.topic, Encoding::Compact),
                Payload::Broadcast { event, data, from, .. } => Utf8Bytes::from(format!(
                    "[{},{},{},{},{}]",
                    tag::BROADCAST,
                    quoted(&d.topic),
                    quoted(event),
                    data.get(),
                    from.as_deref().map_or_else(|| "null".to_string(), quoted)
                )),
                Payload::PresenceDiff { joins, leaves } => {
                    Utf8Bytes::from(format!("[{},{},{joins},{leaves}]", tag::PRESENCE_DIFF, quoted(&d.topic)))
                }
                Payload::Chunks { first, chunks, .. } => {
                    Utf8Bytes::from(chunks_frame(&d.topic, *first, chunks.get(), Encoding::Compact))
                }
            }
        }),
    }
}

/// The native frame of a delivery, serialized once and shared.
pub fn delivery(d: &Delivery) -> Utf8Bytes {
    d.frame(*NATIVE, |d| -> Utf8Bytes {
        match &d.payload {
            Payload::Event(e) => e.wire_json(Some("event"), &d.topic),
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
            Payload::Chunks { first, chunks, .. } => chunks_frame(&d.topic, *first, chunks.get(), Encoding::Json),
        }
        .into()
    })
}

/// A list's full state: `{"op":"list_snapshot","list","position","jobs"}`.
pub fn list_snapshot(list: &str, position: crate::model::Position, jobs: &[crate::model::Job]) -> Utf8Bytes {
    text(json!({ "op": "list_snapshot", "list": list, "position": position, "jobs": jobs }))
}

/// One change of a list. The job's JSON is the event's, spliced in as is.
/// Compact: `[4,list,change,position,id(,job)]`.
pub fn list_change(list: &str, c: &crate::session::job_list::Change, enc: Encoding) -> Utf8Bytes {
    let name = quoted(list);
    match enc {
        Encoding::Json => Utf8Bytes::from(format!(r#"{{"op":"list_change","list":{name},{}}}"#, c.json_fields())),
        Encoding::Compact => {
            let job = c.job.as_ref().map(|j| format!(",{}", j.get())).unwrap_or_default();
            Utf8Bytes::from(format!(
                "[{},{name},\"{}\",{},{}{job}]",
                tag::LIST_CHANGE,
                c.kind.as_str(),
                c.position.get(),
                quoted(&c.id)
            ))
        }
    }
}

/// Chunks of a job's output stream: `{"op":"chunks","topic","offset","chunks"}`
/// or `[3,topic,offset,chunks]`, `offset` being the first chunk's; the array
/// is spliced in as stored.
pub fn chunks_frame(topic: &str, first: u64, chunks: &str, enc: Encoding) -> String {
    let topic = quoted(topic);
    match enc {
        Encoding::Json => format!(r#"{{"op":"chunks","topic":{topic},"offset":{first},"chunks":{chunks}}}"#),
        Encoding::Compact => format!("[{},{topic},{first},{chunks}]", tag::CHUNKS),
    }
}
