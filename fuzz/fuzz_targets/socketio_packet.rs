//! Socket.IO packets (`/socket.io/`, docs/SOCKETIO.md): the text of one
//! Engine.IO message through `packet::decode`; a decoded packet is encoded
//! again and must decode the same (floats aside: serde_json's float parsing
//! is not exact, so a round trip may move a float's last digit). The same text as an artifact kind through
//! the event-name mapping, which must never name one of Herald's own events.

#![no_main]

use herald::transport::socketio::events::artifact_event;
use herald::transport::socketio::packet::{decode, ClientPacket, MAIN_NAMESPACE};
use libfuzzer_sys::fuzz_target;

fn encode(kind: char, ns: &str, id: Option<u64>, json: Option<String>) -> String {
    let ns = if ns == MAIN_NAMESPACE { String::new() } else { format!("{ns},") };
    let id = id.map(|i| i.to_string()).unwrap_or_default();
    format!("{kind}{ns}{id}{}", json.unwrap_or_default())
}

fn reencode(packet: &ClientPacket) -> String {
    match packet {
        ClientPacket::Connect { ns, auth } => encode('0', ns, None, auth.as_ref().map(|a| a.to_string())),
        ClientPacket::Disconnect { ns } => encode('1', ns, None, None),
        ClientPacket::Event { ns, id, name, args } => {
            let mut all = vec![serde_json::Value::String(name.clone())];
            all.extend(args.iter().cloned());
            encode('2', ns, *id, Some(serde_json::Value::Array(all).to_string()))
        }
        ClientPacket::Ack { ns, id } => encode('3', ns, Some(*id), Some("[]".into())),
    }
}

/// The packet with every non-integer number replaced by `null`.
fn without_floats(packet: &ClientPacket) -> ClientPacket {
    fn strip(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Number(n) if n.is_f64() => Value::Null,
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), strip(v))).collect()),
            other => other.clone(),
        }
    }
    match packet {
        ClientPacket::Connect { ns, auth } => ClientPacket::Connect { ns: ns.clone(), auth: auth.as_ref().map(strip) },
        ClientPacket::Event { ns, id, name, args } => {
            ClientPacket::Event { ns: ns.clone(), id: *id, name: name.clone(), args: args.iter().map(strip).collect() }
        }
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    // Engine.IO hands over text messages only as `Str` (valid UTF-8).
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode(text) {
        Ok(packet) => {
            let again = reencode(&packet);
            let decoded = decode(&again).unwrap_or_else(|e| panic!("{again}: {e:?}"));
            assert_eq!(without_floats(&decoded), without_floats(&packet), "{again}");
            if let ClientPacket::Event { ns, .. } = &packet {
                assert!(ns.starts_with('/') && !ns.contains(','), "{ns:?}");
            }
        }
        Err(e) => {
            let known = ["invalid_packet", "invalid_json", "json_too_deep", "binary_not_supported"];
            assert!(known.contains(&e.code), "{}", e.code);
            assert!(!e.message.is_empty());
        }
    }
    let event = artifact_event(text);
    if event != "artifact:created" {
        assert_eq!(event, text);
        let (noun, verb) = event.split_once(':').unwrap();
        assert!(!verb.contains(':'));
        assert!(!["job", "jobs", "task", "artifact", "notification", "notifications", "room", "presence", "herald"]
            .contains(&noun));
    }
});
