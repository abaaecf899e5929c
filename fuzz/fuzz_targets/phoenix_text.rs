//! Phoenix text frames of both serializers (`/realtime/v1/websocket`): the first
//! byte picks the version (odd: 1.0.0, even: 2.0.0; seeds start with `1` or
//! `2`), the rest is the frame. A frame that decodes must encode and decode
//! back to itself; a `phx_join` goes on to the join parser as in the session.

#![no_main]

use herald::transport::phoenix::channel::{channel_of, room_of, PREFIX};
use herald::transport::phoenix::codec::{decode_text, encode_raw, Vsn};
use herald_fuzz::{assert_json_eq, check_join};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let vsn = if first % 2 == 1 { Vsn::V1 } else { Vsn::V2 };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(m) = decode_text(vsn, text) else { return };

    let again =
        encode_raw(vsn, m.join_ref.as_deref(), m.reference.as_deref(), &m.topic, &m.event, &m.payload.to_string());
    let back = decode_text(vsn, &again).unwrap_or_else(|e| panic!("re-encoded frame {again:?} does not decode: {e}"));
    assert_eq!(
        (&back.join_ref, &back.reference, &back.topic, &back.event),
        (&m.join_ref, &m.reference, &m.topic, &m.event)
    );
    assert_json_eq("payload", &m.payload, &back.payload);

    if m.topic.starts_with(PREFIX) {
        assert_eq!(channel_of(&room_of(&m.topic)), m.topic);
    }
    match m.event.as_str() {
        "phx_join" => check_join(&m.payload),
        // A broadcast's data is kept as raw JSON to be spliced into every frame.
        "broadcast" => {
            let data = m.payload.get("payload").cloned().unwrap_or(serde_json::Value::Null);
            let raw = serde_json::value::to_raw_value(&data).expect("a Value serializes");
            assert_json_eq("broadcast data", &data, &serde_json::from_str(raw.get()).unwrap());
        }
        _ => {}
    }
});
