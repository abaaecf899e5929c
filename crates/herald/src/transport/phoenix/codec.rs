//! The Phoenix serializers Supabase Realtime clients speak: 1.0.0 (JSON objects)
//! and 2.0.0 (JSON arrays, plus binary frames for user broadcasts).
//!
//! 2.0.0 binary layouts (all lengths are one byte, strings UTF-8):
//! - client push, kind 3: `kind, join_ref_len, ref_len, topic_len, event_len,
//!   meta_len, encoding` then join_ref, ref, topic, event, meta, payload;
//! - server broadcast, kind 4: `kind, topic_len, event_len, meta_len, encoding`
//!   then topic, event, meta, payload.
//!
//! `encoding` is 0 for raw bytes, 1 for a JSON payload.

use crate::hub::WireFormat;
use crate::transport::http::extract::{too_deep, MAX_JSON_DEPTH};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::LazyLock;

/// Cache slots in a delivery for frames shared by every socket on one serializer.
pub static V1_FRAMES: LazyLock<WireFormat> = LazyLock::new(WireFormat::register);
pub static V2_FRAMES: LazyLock<WireFormat> = LazyLock::new(WireFormat::register);

/// The cache slot of serializer `vsn`.
pub fn frames_slot(vsn: Vsn) -> WireFormat {
    match vsn {
        Vsn::V1 => *V1_FRAMES,
        Vsn::V2 => *V2_FRAMES,
    }
}

/// Binary frame kinds.
const KIND_USER_BROADCAST_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;
const ENCODING_JSON: u8 = 1;

/// Serializer version, from the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// Without `vsn` a client gets 1.0.0, as from Supabase Realtime.
    pub fn parse(s: Option<&str>) -> Result<Vsn, String> {
        match s {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(format!("unsupported vsn {other:?}; Herald speaks 1.0.0 and 2.0.0")),
        }
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    #[error("binary frame: {0}")]
    Binary(String),
}

/// A frame for the socket.
#[derive(Debug, Clone)]
pub enum Out {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Refs are strings in phoenix.js; numbers are accepted and kept as text.
fn reference(v: Option<&Value>, what: &str) -> Result<Option<String>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::Shape(format!("{what}: must be a string or null"))),
    }
}

fn string(v: Option<&Value>, what: &str) -> Result<String, DecodeError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(DecodeError::Shape(format!("{what}: must be a string"))),
        None => Err(DecodeError::Shape(format!("{what}: missing"))),
    }
}

/// Refuses JSON nested deeper than `max` levels, as the HTTP API does (what
/// one client sends, others parse).
fn too_shallow(bytes: &[u8], max: usize) -> Result<(), DecodeError> {
    match too_deep(bytes, max) {
        Some(at) => Err(DecodeError::Shape(format!(
            "json_too_deep: objects and arrays nest more than {MAX_JSON_DEPTH} levels deep in the payload (at byte {at})"
        ))),
        None => Ok(()),
    }
}

/// Reads a text frame.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    // A broadcast's own payload sits two levels into the frame.
    too_shallow(text.as_bytes(), MAX_JSON_DEPTH + 2)?;
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match (vsn, value) {
        (Vsn::V1, Value::Object(m)) => Ok(Inbound {
            join_ref: reference(m.get("join_ref"), "join_ref")?,
            reference: reference(m.get("ref"), "ref")?,
            topic: string(m.get("topic"), "topic")?,
            event: string(m.get("event"), "event")?,
            payload: m.get("payload").cloned().unwrap_or_else(|| json!({})),
        }),
        (Vsn::V1, _) => {
            Err(DecodeError::Shape("vsn 1.0.0 frames are objects {topic, event, payload, ref, join_ref}".into()))
        }
        (Vsn::V2, Value::Array(a)) if a.len() == 5 => Ok(Inbound {
            join_ref: reference(a.first(), "join_ref")?,
            reference: reference(a.get(1), "ref")?,
            topic: string(a.get(2), "topic")?,
            event: string(a.get(3), "event")?,
            payload: a.get(4).cloned().unwrap_or(Value::Null),
        }),
        (Vsn::V2, _) => {
            Err(DecodeError::Shape("vsn 2.0.0 text frames are arrays [join_ref, ref, topic, event, payload]".into()))
        }
    }
}

/// Reads a binary frame: only the client's user broadcast push (kind 3) exists.
pub fn decode_binary(b: &[u8]) -> Result<Inbound, DecodeError> {
    let err = |m: &str| DecodeError::Binary(m.to_string());
    let kind = *b.first().ok_or_else(|| err("empty frame"))?;
    if kind != KIND_USER_BROADCAST_PUSH {
        return Err(DecodeError::Binary(format!("unknown kind {kind}; clients send kind 3 (user broadcast push)")));
    }
    let header = b.get(1..7).ok_or_else(|| err("truncated header"))?;
    let lens: Vec<usize> = header[..5].iter().map(|&n| n as usize).collect();
    let encoding = header[5];
    let mut at = 7;
    let mut field = |len: usize, what: &str| -> Result<String, DecodeError> {
        let bytes = b.get(at..at + len).ok_or_else(|| DecodeError::Binary(format!("truncated {what}")))?;
        at += len;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Binary(format!("{what} is not UTF-8")))
    };
    let join_ref = field(lens[0], "join_ref")?;
    let reference = field(lens[1], "ref")?;
    let topic = field(lens[2], "topic")?;
    let event = field(lens[3], "event")?;
    let meta = field(lens[4], "metadata")?;
    let body = &b[at..];
    if encoding != ENCODING_JSON {
        return Err(err("raw binary payloads are not supported; send JSON payloads"));
    }
    too_shallow(body, MAX_JSON_DEPTH)?;
    let data: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Binary(format!("payload is not JSON: {e}")))?;
    let mut payload = json!({ "type": "broadcast", "event": event, "payload": data });
    if !meta.is_empty() {
        let meta: Value =
            serde_json::from_str(&meta).map_err(|e| DecodeError::Binary(format!("metadata is not JSON: {e}")))?;
        payload["meta"] = meta;
    }
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(Inbound { join_ref: opt(join_ref), reference: opt(reference), topic, event: "broadcast".into(), payload })
}

fn quote(s: Option<&str>) -> String {
    match s {
        Some(s) => Value::from(s).to_string(),
        None => "null".into(),
    }
}

/// Encodes a message whose payload is already JSON text (shared bytes are spliced
/// in, not re-serialized).
pub fn encode_raw(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let (jr, r, t, e) = (quote(join_ref), quote(reference), quote(Some(topic)), quote(Some(event)));
    match vsn {
        Vsn::V1 => format!(r#"{{"join_ref":{jr},"ref":{r},"topic":{t},"event":{e},"payload":{payload}}}"#),
        Vsn::V2 => format!("[{jr},{r},{t},{e},{payload}]"),
    }
}

/// Encodes a message with a JSON value payload.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> Utf8Bytes {
    Utf8Bytes::from(encode_raw(vsn, join_ref, reference, topic, event, &payload.to_string()))
}

/// A `phx_reply`.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    status: &str,
    response: Value,
) -> Utf8Bytes {
    encode(vsn, join_ref, reference, topic, "phx_reply", &json!({ "status": status, "response": response }))
}

/// The kind-4 frame of a user broadcast with a JSON payload; `None` when a
/// field is too long for the one-byte lengths (the caller then sends text).
pub fn broadcast_binary(topic: &str, event: &str, payload_json: &str) -> Option<Bytes> {
    let (t, e) = (topic.as_bytes(), event.as_bytes());
    if t.len() > 255 || e.len() > 255 {
        return None;
    }
    let mut out = Vec::with_capacity(5 + t.len() + e.len() + payload_json.len());
    out.extend_from_slice(&[KIND_USER_BROADCAST, t.len() as u8, e.len() as u8, 0, ENCODING_JSON]);
    out.extend_from_slice(t);
    out.extend_from_slice(e);
    out.extend_from_slice(payload_json.as_bytes());
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_frame(join_ref: &str, r: &str, topic: &str, event: &str, meta: &str, enc: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![3, join_ref.len() as u8, r.len() as u8, topic.len() as u8, event.len() as u8];
        b.push(meta.len() as u8);
        b.push(enc);
        for s in [join_ref, r, topic, event, meta] {
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn text_frames_of_both_versions() {
        let m = decode_text(Vsn::V2, r#"["1","2","realtime:a","phx_join",{"x":1}]"#).unwrap();
        assert_eq!(
            (m.join_ref.as_deref(), m.reference.as_deref(), m.topic.as_str()),
            (Some("1"), Some("2"), "realtime:a")
        );
        let m = decode_text(Vsn::V1, r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":7}"#).unwrap();
        assert_eq!((m.reference.as_deref(), m.join_ref), (Some("7"), None));
        assert!(matches!(decode_text(Vsn::V1, "[1]"), Err(DecodeError::Shape(_))));
        assert!(matches!(decode_text(Vsn::V2, "{}"), Err(DecodeError::Shape(_))));
        assert!(matches!(decode_text(Vsn::V2, "[1,2"), Err(DecodeError::Json(_))));
        assert!(matches!(decode_text(Vsn::V2, r#"[null,null,5,"e",{}]"#), Err(DecodeError::Shape(_))));
        assert_eq!(
            encode_raw(Vsn::V2, None, Some("3"), "phoenix", "phx_reply", "{}"),
            r#"[null,"3","phoenix","phx_reply",{}]"#
        );
        let v1: Value = serde_json::from_str(&encode_raw(Vsn::V1, Some("1"), None, "t", "e", "[1]")).unwrap();
        assert_eq!(v1, json!({"join_ref":"1","ref":null,"topic":"t","event":"e","payload":[1]}));
    }

    #[test]
    fn binary_push_and_broadcast_layouts() {
        let f = push_frame("1", "2", "realtime:room", "cursor", r#"{"persist":true}"#, 1, br#"{"x":1}"#);
        let m = decode_binary(&f).unwrap();
        assert_eq!(m.event, "broadcast");
        assert_eq!(m.payload, json!({"type":"broadcast","event":"cursor","payload":{"x":1},"meta":{"persist":true}}));
        assert_eq!((m.join_ref.as_deref(), m.reference.as_deref()), (Some("1"), Some("2")));
        assert!(decode_binary(&push_frame("1", "2", "t", "e", "", 0, b"raw")).is_err());
        assert!(decode_binary(&f[..9]).is_err());
        assert!(decode_binary(&[9]).is_err());
        assert!(decode_binary(&[]).is_err());
        let b = broadcast_binary("realtime:room", "cursor", r#"{"x":1}"#).unwrap();
        assert_eq!(&b[..5], &[4, 13, 6, 0, 1]);
        assert_eq!(&b[5..18], b"realtime:room");
        assert_eq!(&b[18..24], b"cursor");
        assert_eq!(&b[24..], br#"{"x":1}"#);
        assert!(broadcast_binary(&"t".repeat(300), "e", "{}").is_none());
    }
}
