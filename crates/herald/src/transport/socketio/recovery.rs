//! Connection-state recovery backed by the log. Socket.IO keeps a session's
//! rooms and missed packets in one process's memory for two minutes; Herald
//! stores what a session subscribed to (and from which position) in the
//! database, and replays what it missed from the log. A client that comes
//! back with its `pid` and last `offset` — after a network cut, a `kill -9`
//! and restart, or on another node — is recovered for as long as the log
//! holds the events it missed.

use crate::app::AppState;
use crate::auth::Principal;
use crate::model::Position;
use crate::rules::Command;
use crate::session::{Refusal, SessionError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a session holds, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Topics of the log, each with the head of the log when it was
    /// subscribed: a recovery replays it from there at the earliest.
    pub topics: Vec<SavedTopic>,
    /// Rooms (`room:<name>`), with this session's presence meta if it set one.
    pub rooms: Vec<SavedRoom>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTopic {
    pub topic: String,
    pub since: Position,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRoom {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Value>,
}

/// A new, unguessable session id.
pub fn new_pid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Stores what session `pid` of `p` holds, durably, before the client is told
/// it holds it: a recovery never claims a subscription the log cannot back.
pub async fn save(s: &AppState, p: &Principal, pid: &str, saved: &Saved) -> Result<(), SessionError> {
    let doc =
        serde_json::to_string(saved).map_err(|e| SessionError::new(Refusal::Internal, "internal", e.to_string()))?;
    let cmd = Command::SaveSession { id: pid.to_string(), sub: p.sub.to_string(), doc, at: None };
    s.write(&p.tenant, cmd, None).await.map(drop).map_err(|e| {
        SessionError::new(
            Refusal::Unavailable,
            "unavailable",
            format!("the session could not be saved for recovery: {e}"),
        )
    })
}

/// The stored session `pid` of `p`, if there is one and it is `p`'s (same
/// tenant, same subject); anything else starts afresh.
pub async fn load(s: &AppState, p: &Principal, pid: &str) -> Result<Option<Saved>, SessionError> {
    let Some((sub, doc)) = s.store.session(&p.tenant, pid).await? else { return Ok(None) };
    if sub != *p.sub {
        return Ok(None);
    }
    match serde_json::from_str(&doc) {
        Ok(saved) => Ok(Some(saved)),
        Err(e) => {
            tracing::warn!(error = %e, "a stored Socket.IO session does not parse; starting afresh");
            Ok(None)
        }
    }
}
