//! One joined channel (`realtime:<name>`): what its join asked for, who joined
//! it, and which Herald topics feed it.

use super::changes::{parse_binding, BindingSpec};
use super::resume::ResumeKey;
use crate::auth::Principal;
use crate::model::Position;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The prefix realtime-js puts before every channel name.
pub const PREFIX: &str = "realtime:";

/// The room topic of the hub a channel's broadcasts and presence go through,
/// shared with native clients (`room:<name>`).
pub fn room_of(channel_topic: &str) -> String {
    format!("room:{}", channel_topic.strip_prefix(PREFIX).unwrap_or(channel_topic))
}

/// The channel topic of a hub room topic.
pub fn channel_of(room: &str) -> String {
    format!("{PREFIX}{}", room.strip_prefix("room:").unwrap_or(room))
}

/// What a `phx_join` payload asks for.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub presence_key: String,
    pub presence_enabled: bool,
    pub bindings: Vec<BindingSpec>,
    /// Canonical text of the bindings, part of the resume key.
    pub bindings_text: String,
    pub access_token: Option<String>,
}

fn flag(config: &Map<String, Value>, section: &str, key: &str) -> Result<bool, String> {
    match config.get(section).and_then(|s| s.get(key)) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("config.{section}.{key}: must be a boolean")),
    }
}

/// Reads a `phx_join` payload: `{config: {broadcast, presence, postgres_changes,
/// private}, access_token}`; everything is optional.
pub fn parse_join(payload: &Value) -> Result<JoinRequest, String> {
    let empty = Map::new();
    let root = match payload {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return Err("the join payload must be an object".into()),
    };
    let config = match root.get("config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => return Err("config: must be an object".into()),
    };
    let presence_key = match config.get("presence").and_then(|p| p.get("key")) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("config.presence.key: must be a string".into()),
    };
    let raw_bindings = match config.get("postgres_changes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("config.postgres_changes: must be an array".into()),
    };
    let bindings = raw_bindings.iter().map(parse_binding).collect::<Result<Vec<_>, _>>()?;
    let access_token = match root.get("access_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err("access_token: must be a string".into()),
    };
    Ok(JoinRequest {
        broadcast_self: flag(config, "broadcast", "self")?,
        broadcast_ack: flag(config, "broadcast", "ack")?,
        presence_key,
        presence_enabled: flag(config, "presence", "enabled")?,
        bindings,
        bindings_text: Value::Array(raw_bindings).to_string(),
        access_token,
    })
}

/// A binding with its id (as echoed to the client) and the Herald topics
/// authorized to feed it.
#[derive(Debug, Clone)]
pub struct Binding {
    pub id: u32,
    pub spec: BindingSpec,
    pub topics: Vec<String>,
}

/// A stable id for a binding (like Supabase's hash of the subscription), so a
/// rejoin gets the same ids.
pub fn binding_id(index: usize, spec: &BindingSpec) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in index.to_le_bytes().iter().chain(Value::Object(spec.echo.clone()).to_string().as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h >> 5
}

/// A joined channel.
#[derive(Debug)]
pub struct Channel {
    pub topic: String,
    pub join_ref: Option<String>,
    pub principal: Principal,
    pub room: String,
    pub request: JoinRequest,
    pub bindings: Vec<Binding>,
    /// Herald topic → last position sent on it to this channel.
    pub feeds: HashMap<String, Position>,
    /// `feeds` as last stored for the other nodes of a cluster.
    pub checkpointed: HashMap<String, Position>,
    /// When `checkpointed` was stored.
    pub checkpointed_at: Option<std::time::Instant>,
    /// Presence state was sent, so diffs may follow.
    pub presence_synced: bool,
    pub tracked: bool,
    /// Joined with an anon key: rooms only until a user's token arrives.
    pub anon: bool,
}

impl Channel {
    pub fn resume_key(&self) -> ResumeKey {
        ResumeKey {
            tenant: Arc::clone(&self.principal.tenant),
            sub: Arc::clone(&self.principal.sub),
            topic: self.topic.clone(),
            bindings: self.request.bindings_text.clone(),
        }
    }

    /// The key of this channel's presence entries: always the verified `sub`.
    /// A `config.presence.key` of the client's choosing would let anyone appear
    /// under someone else's identity, so it is not used.
    pub fn presence_key(&self) -> &str {
        &self.principal.sub
    }

    /// Every hub topic this channel listens on.
    pub fn hub_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.feeds.keys().cloned().collect();
        t.push(self.room.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_payloads_of_realtime_js() {
        let r = parse_join(&json!({
            "config": {"broadcast": {"ack": true, "self": false}, "presence": {"key": "", "enabled": true},
                       "postgres_changes": [{"event": "*", "schema": "public", "table": "jobs"}], "private": false},
            "access_token": "t"
        }))
        .unwrap();
        assert!(r.broadcast_ack && !r.broadcast_self && r.presence_enabled);
        assert_eq!((r.bindings.len(), r.access_token.as_deref()), (1, Some("t")));
        assert!(parse_join(&json!({})).unwrap().bindings.is_empty());
        assert!(parse_join(&json!([1])).is_err());
        assert!(parse_join(&json!({"config": {"postgres_changes": {}}})).is_err());
        assert!(parse_join(&json!({"config": {"broadcast": {"self": "yes"}}})).is_err());
        assert_eq!(room_of("realtime:lobby"), "room:lobby");
        assert_eq!(channel_of("room:lobby"), "realtime:lobby");
        let b = &r.bindings[0];
        assert_eq!(binding_id(0, b), binding_id(0, b));
        assert_ne!(binding_id(0, b), binding_id(1, b));
    }
}
