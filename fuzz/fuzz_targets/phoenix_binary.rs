//! Phoenix 2.0.0 binary frames: the client's user broadcast push (kind 3)
//! through `decode_binary`. A frame that decodes is rebuilt from what was
//! decoded and must decode to the same message.

#![no_main]

use herald::transport::phoenix::codec::decode_binary;
use herald_fuzz::assert_json_eq;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode_binary(data) else { return };
    assert_eq!(m.event, "broadcast");
    assert_eq!(m.payload["type"], "broadcast");
    assert!(m.topic.len() <= 255);
    let event = m.payload["event"].as_str().expect("the event is a string").to_string();
    let meta = m.payload.get("meta").map(Value::to_string).unwrap_or_default();
    let body = m.payload.get("payload").expect("a payload").to_string();
    let (jr, r) = (m.join_ref.clone().unwrap_or_default(), m.reference.clone().unwrap_or_default());
    let fields = [jr.as_str(), r.as_str(), m.topic.as_str(), event.as_str(), meta.as_str()];
    // Re-serialized metadata may be longer than the original (`1e2` prints as `100.0`).
    if fields.iter().any(|f| f.len() > 255) {
        return;
    }
    let mut frame = vec![3u8];
    frame.extend(fields.iter().map(|f| f.len() as u8));
    frame.push(1);
    for f in fields {
        frame.extend_from_slice(f.as_bytes());
    }
    frame.extend_from_slice(body.as_bytes());
    let back = decode_binary(&frame).unwrap_or_else(|e| panic!("rebuilt frame does not decode: {e}"));
    assert_eq!(
        (&back.join_ref, &back.reference, &back.topic, &back.event),
        (&m.join_ref, &m.reference, &m.topic, &m.event)
    );
    assert_json_eq("payload", &m.payload, &back.payload);
});
