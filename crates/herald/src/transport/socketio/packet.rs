//! Socket.IO protocol v5 packets (what `socket.io-client` 3.x/4.x speaks)
//! inside Engine.IO messages: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`.
//! Decoding is strict and total (every input gets a packet or a precise
//! error); encoding writes the few packets a server sends.

use crate::transport::http::extract::{too_deep, MAX_JSON_DEPTH};
use serde_json::Value;

/// The namespace Herald serves; Socket.IO writes it as nothing at all.
pub const MAIN_NAMESPACE: &str = "/";

/// Largest acknowledgement id accepted (the client counts up from 0).
const MAX_ACK_ID: u64 = u32::MAX as u64 * 1024;

/// A packet from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientPacket {
    /// Joins a namespace, with the client's `auth` object (and, when it
    /// recovers, its `pid` and `offset` inside it).
    Connect { ns: String, auth: Option<Value> },
    /// Leaves a namespace.
    Disconnect { ns: String },
    /// `socket.emit(name, ...args)`, with an ack id when the client passed a callback.
    Event { ns: String, id: Option<u64>, name: String, args: Vec<Value> },
    /// The client's answer to a server emit with a callback (Herald sends none).
    Ack { ns: String, id: u64 },
}

/// Why a packet was refused, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketError {
    pub code: &'static str,
    pub message: String,
    /// The packet's ack id, when it could be read, so the refusal can answer it.
    pub id: Option<u64>,
}

impl PacketError {
    fn new(code: &'static str, message: impl Into<String>, id: Option<u64>) -> PacketError {
        PacketError { code, message: message.into(), id }
    }
}

/// Decodes one Socket.IO packet.
pub fn decode(text: &str) -> Result<ClientPacket, PacketError> {
    let bytes = text.as_bytes();
    let Some(&kind) = bytes.first() else {
        return Err(PacketError::new("invalid_packet", "empty packet", None));
    };
    if !kind.is_ascii_digit() {
        let first = text.chars().next().map(|c| c.escape_default().to_string()).unwrap_or_default();
        return Err(PacketError::new("invalid_packet", format!("unknown packet type \"{first}\""), None));
    }
    let mut rest = &text[1..];
    // Binary events carry their data as separate Engine.IO messages, counted
    // before a `-`; read past the count so the refusal can answer the ack.
    let binary = matches!(kind, b'5' | b'6');
    if binary {
        let count = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest = rest[count..].strip_prefix('-').unwrap_or(&rest[count..]);
    }
    let ns = match rest.strip_prefix('/') {
        Some(_) => {
            let end = rest.find(',').unwrap_or(rest.len());
            let ns = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
            ns.to_string()
        }
        None => MAIN_NAMESPACE.to_string(),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        match rest[..digits].parse::<u64>() {
            Ok(id) if id <= MAX_ACK_ID => Some(id),
            _ => return Err(PacketError::new("invalid_packet", "ack id: too large", None)),
        }
    } else {
        None
    };
    if binary {
        let why = "binary attachments are not supported; send JSON arguments";
        return Err(PacketError::new("binary_not_supported", why, id));
    }
    let json = &rest[digits..];
    let data = if json.is_empty() {
        None
    } else {
        if let Some(at) = too_deep(json.as_bytes(), MAX_JSON_DEPTH + 1) {
            let why = format!("arguments nest more than {MAX_JSON_DEPTH} levels deep (at byte {at})");
            return Err(PacketError::new("json_too_deep", why, id));
        }
        let value: Value = serde_json::from_str(json)
            .map_err(|e| PacketError::new("invalid_json", format!("malformed JSON: {e}"), id))?;
        Some(value)
    };
    match kind {
        b'0' => match data {
            None | Some(Value::Object(_)) => Ok(ClientPacket::Connect { ns, auth: data }),
            Some(_) => Err(PacketError::new("invalid_packet", "CONNECT: auth must be a JSON object", None)),
        },
        b'1' => Ok(ClientPacket::Disconnect { ns }),
        b'2' => {
            let Some(Value::Array(mut args)) = data else {
                return Err(PacketError::new("invalid_packet", "EVENT: data must be a JSON array", id));
            };
            if args.is_empty() {
                return Err(PacketError::new("invalid_packet", "EVENT: the event name is missing", id));
            }
            let Value::String(name) = args.remove(0) else {
                return Err(PacketError::new("invalid_packet", "EVENT: the event name must be a string", id));
            };
            Ok(ClientPacket::Event { ns, id, name, args })
        }
        b'3' => match (id, data) {
            (Some(id), Some(Value::Array(_))) => Ok(ClientPacket::Ack { ns, id }),
            _ => Err(PacketError::new("invalid_packet", "ACK: needs an id and a JSON array", None)),
        },
        b'4' => Err(PacketError::new("invalid_packet", "CONNECT_ERROR is sent by servers only", None)),
        other => Err(PacketError::new(
            "invalid_packet",
            format!("unknown packet type {:?}", char::from(other).escape_default().to_string()),
            None,
        )),
    }
}

/// `CONNECT` accepted: the connection's id and the id it recovers by.
pub fn connected(sid: &str, pid: &str) -> String {
    format!("0{}", serde_json::json!({ "sid": sid, "pid": pid }))
}

/// `CONNECT_ERROR`: `connect_error` on the client, with `err.message` and `err.data`.
pub fn connect_error(code: &str, message: &str) -> String {
    format!("4{}", serde_json::json!({ "message": message, "data": { "code": code } }))
}

/// `EVENT` with JSON arguments already serialized (`args` is `,`-joined JSON).
pub fn event(name: &str, args: &str) -> String {
    let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    if args.is_empty() {
        format!("2[{name}]")
    } else {
        format!("2[{name},{args}]")
    }
}

/// `ACK` of the client's packet `id` with one argument.
pub fn ack(id: u64, arg: &Value) -> String {
    format!("3{id}[{arg}]")
}

/// `DISCONNECT` of the main namespace: the client does not reconnect by itself.
pub const DISCONNECT: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_socket_io_client_sends() {
        assert_eq!(decode("0").unwrap(), ClientPacket::Connect { ns: "/".into(), auth: None });
        assert_eq!(
            decode(r#"0{"token":"t","pid":"p","offset":"7"}"#).unwrap(),
            ClientPacket::Connect { ns: "/".into(), auth: Some(json!({"token":"t","pid":"p","offset":"7"})) }
        );
        assert_eq!(
            decode(r#"0/admin,{"token":"t"}"#).unwrap(),
            ClientPacket::Connect { ns: "/admin".into(), auth: Some(json!({"token":"t"})) }
        );
        assert_eq!(
            decode(r#"212["job:subscribe","j1"]"#).unwrap(),
            ClientPacket::Event { ns: "/".into(), id: Some(12), name: "job:subscribe".into(), args: vec![json!("j1")] }
        );
        assert_eq!(
            decode(r#"2/x,["a",1,{"b":2}]"#).unwrap(),
            ClientPacket::Event { ns: "/x".into(), id: None, name: "a".into(), args: vec![json!(1), json!({"b":2})] }
        );
        assert_eq!(decode("1").unwrap(), ClientPacket::Disconnect { ns: "/".into() });
        assert_eq!(decode("35[]").unwrap(), ClientPacket::Ack { ns: "/".into(), id: 5 });
    }

    #[test]
    fn refuses_with_precise_codes() {
        let code = |t: &str| decode(t).unwrap_err().code;
        assert_eq!(code(""), "invalid_packet");
        assert_eq!(code("9"), "invalid_packet");
        // Found by fuzzing: a first character of several bytes.
        assert_eq!(code("é2[\"a\"]"), "invalid_packet");
        assert_eq!(code("2"), "invalid_packet");
        assert_eq!(code("2[]"), "invalid_packet");
        assert_eq!(code("2[1]"), "invalid_packet");
        assert_eq!(code("2{"), "invalid_json");
        assert_eq!(code("0[1]"), "invalid_packet");
        let e = decode(r#"51-3["up",{"_placeholder":true,"num":0}]"#).unwrap_err();
        assert_eq!((e.code, e.id), ("binary_not_supported", Some(3)));
        assert_eq!(decode("6").unwrap_err().code, "binary_not_supported");
        assert_eq!(code("299999999999999999999[\"a\"]"), "invalid_packet");
        let deep = format!("27[\"a\",{}{}]", "[".repeat(40), "]".repeat(40));
        let e = decode(&deep).unwrap_err();
        assert_eq!((e.code, e.id), ("json_too_deep", Some(7)));
        let e = decode(r#"23["a",]"#).unwrap_err();
        assert_eq!((e.code, e.id), ("invalid_json", Some(3)));
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(connected("s", "p"), r#"0{"pid":"p","sid":"s"}"#);
        assert_eq!(event("job:updated", r#"{"a":1},"9""#), r#"2["job:updated",{"a":1},"9"]"#);
        assert_eq!(ack(3, &json!({"ok": true})), r#"33[{"ok":true}]"#);
        let e = connect_error("invalid_token", "bad");
        assert_eq!(e, r#"4{"data":{"code":"invalid_token"},"message":"bad"}"#);
    }
}
