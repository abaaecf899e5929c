//! Herald's events as Socket.IO events (docs/SOCKETIO.md has the table).
//! Each delivery is encoded once, into packets every subscriber shares; an
//! event from the log ends with its position as a string, which
//! `socket.io-client` keeps as the offset it recovers from.

use super::packet;
use crate::hub::{Delivery, Payload, WireFormat};
use crate::model::{Event, EventType};
use engineioxide::Str;
use std::sync::{Arc, LazyLock};

/// Socket.IO's cache slot in a delivery.
static SOCKET_IO: LazyLock<WireFormat> = LazyLock::new(WireFormat::register);

/// The packets of one delivery (one, or two for a job that moved: `job:updated`
/// then `job:progress`), shared by every subscriber.
pub type Packets = Arc<[Str]>;

/// Artifact kinds that name their own event must not pass for Herald's.
const RESERVED_NOUNS: &[&str] =
    &["job", "jobs", "task", "artifact", "notification", "notifications", "room", "presence", "herald"];

/// The event an artifact of `kind` is emitted as: `kind` itself when it has
/// the form `noun:verb` (`screenshot:captured`), else `artifact:created`.
pub fn artifact_event(kind: &str) -> &str {
    let word = |w: &str| {
        !w.is_empty() && w.len() <= 64 && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match kind.split_once(':') {
        Some((noun, verb)) if word(noun) && word(verb) && !RESERVED_NOUNS.contains(&noun) => kind,
        _ => "artifact:created",
    }
}

/// The name a log event is emitted under.
fn event_name(e: &Event) -> &str {
    match e.kind {
        EventType::JobCreated => "job:created",
        EventType::JobUpdated => "job:updated",
        EventType::JobCompleted => "job:completed",
        EventType::JobFailed => "job:failed",
        EventType::JobCancelled => "job:cancelled",
        EventType::JobStalled => "job:stalled",
        EventType::TaskCreated => "task:created",
        EventType::TaskUpdated => "task:updated",
        EventType::ArtifactCreated => match e.row().get("kind") {
            Some(serde_json::Value::String(kind)) => artifact_event(kind),
            _ => "artifact:created",
        },
        EventType::NotificationCreated => "notification",
        EventType::NotificationRead => "notification:read",
        EventType::RowInserted => "row:inserted",
        EventType::RowUpdated => "row:updated",
        EventType::RowDeleted => "row:deleted",
        EventType::TableTruncated => "table:truncated",
    }
}

/// `data` (a JSON object) with `"jobId"` first, spliced as text: the stored
/// JSON is never parsed and re-serialized for this.
fn with_job_id(data: &str, job_id: Option<&str>) -> String {
    let Some(id) = job_id else { return data.to_string() };
    let id = serde_json::to_string(id).unwrap_or_else(|_| "null".into());
    let body = data.trim_start();
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"jobId\":{id}}}"),
        Some(rest) => format!("{{\"jobId\":{id},{rest}"),
        None => format!("{{\"jobId\":{id},\"data\":{body}}}"),
    }
}

/// The packets of one log event.
pub fn event_packets(e: &Event) -> Vec<Str> {
    let offset = format!("\"{}\"", e.position.get());
    let body = with_job_id(e.data.get(), e.job_id.as_deref());
    let mut out = vec![Str::from(packet::event(event_name(e), &format!("{body},{offset}")))];
    if e.kind == EventType::JobUpdated {
        let row = e.row();
        let progress = serde_json::json!({
            "jobId": e.job_id,
            "progress": row.get("progress"),
            "stage": row.get("stage"),
            "succeeded": row.get("succeeded"),
            "failed": row.get("failed"),
            "total": row.get("total"),
        });
        out.push(Str::from(packet::event("job:progress", &format!("{progress},{offset}"))));
    }
    out
}

/// The packets of a delivery, encoded by the first subscriber that needs them.
pub fn delivery_packets(d: &Delivery) -> Packets {
    d.frame(*SOCKET_IO, |d| -> Packets {
        let room = d.topic.strip_prefix("room:").unwrap_or(&d.topic);
        match &d.payload {
            Payload::Event(e) => event_packets(e).into(),
            // Room messages end in an object, never a string: the client must
            // not take them for an offset.
            Payload::Broadcast { event, data, from, .. } => {
                let body = serde_json::json!({ "room": room, "event": event, "data": data, "from": from.as_deref() });
                Arc::from([Str::from(packet::event("room:broadcast", &body.to_string()))])
            }
            Payload::PresenceDiff { joins, leaves } => {
                let body = serde_json::json!({ "room": room, "joins": joins, "leaves": leaves });
                Arc::from([Str::from(packet::event("presence:diff", &body.to_string()))])
            }
            Payload::Chunks { first, chunks, .. } => Arc::from([chunks_packet(&d.topic, *first, chunks.get())]),
        }
    })
}

/// `stream:chunks` with `{"jobId","stream","first","chunks"}`: chunks of a job
/// output stream from offset `first`. It ends in an object, never a string,
/// so the client does not take it for a log offset.
pub fn chunks_packet(topic: &str, first: u64, chunks: &str) -> Str {
    let (job, name) = match crate::model::Topic::parse(topic) {
        Ok(crate::model::Topic::Stream { job, name }) => (job, name),
        _ => (String::new(), String::new()),
    };
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let body = format!(r#"{{"jobId":{},"stream":{},"first":{first},"chunks":{chunks}}}"#, quoted(&job), quoted(&name));
    Str::from(packet::event("stream:chunks", &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_kinds_name_events_unless_they_pose_as_herald() {
        assert_eq!(artifact_event("screenshot:captured"), "screenshot:captured");
        assert_eq!(artifact_event("ocr:completed"), "ocr:completed");
        assert_eq!(artifact_event("label:generated"), "label:generated");
        assert_eq!(artifact_event("screenshot"), "artifact:created");
        assert_eq!(artifact_event("job:completed"), "artifact:created");
        assert_eq!(artifact_event("notification:x"), "artifact:created");
        assert_eq!(artifact_event("a:b:c"), "artifact:created");
        assert_eq!(artifact_event("a b:c"), "artifact:created");
        assert_eq!(artifact_event(":x"), "artifact:created");
    }

    #[test]
    fn job_id_is_spliced_into_the_stored_json() {
        assert_eq!(with_job_id(r#"{"id":"j","n":1}"#, Some("j")), r#"{"jobId":"j","id":"j","n":1}"#);
        assert_eq!(with_job_id("{}", Some("a\"b")), r#"{"jobId":"a\"b"}"#);
        assert_eq!(with_job_id("[1]", Some("j")), r#"{"jobId":"j","data":[1]}"#);
        assert_eq!(with_job_id(r#"{"x":1}"#, None), r#"{"x":1}"#);
        for out in [with_job_id(r#"{"id":"j"}"#, Some("j")), with_job_id(" { } ", Some("j"))] {
            serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
    }
}
