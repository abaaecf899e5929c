//! Rooms: ephemeral broadcast between the connections of a tenant. The checks
//! on what may be sent are written once here for every transport and the REST
//! bridges; delivery goes through the broker.

use super::error::SessionError;
use crate::app::AppState;
use crate::hub::Payload;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Longest event name of a broadcast, bytes.
pub const MAX_EVENT_NAME: usize = 256;

/// Checks a broadcast's event name: 1 to 256 bytes. The message names the field.
pub fn check_event_name(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(format!("event: must be 1 to {MAX_EVENT_NAME} bytes"));
    }
    Ok(())
}

/// A broadcast to send.
pub struct Broadcast {
    pub tenant: Arc<str>,
    /// The hub topic: `room:<name>`, or a tenant/inbox topic for the REST bridge.
    pub topic: String,
    pub event: String,
    pub data: Box<RawValue>,
    /// The sending connection, which does not get its own message back.
    pub sender: Option<u64>,
    /// The verified `sub` of whoever sent it, shown to receivers.
    pub from: Arc<str>,
}

/// Checks and publishes a broadcast; returns how many connections took it.
pub fn publish(s: &AppState, b: Broadcast) -> Result<usize, SessionError> {
    check_event_name(&b.event).map_err(|m| SessionError::invalid("invalid_frame", m))?;
    let payload = Payload::Broadcast { event: b.event, data: b.data, sender: b.sender, from: Some(b.from) };
    Ok(s.broker.publish(&b.tenant, &b.topic, payload))
}
