//! The session core: everything a realtime connection does, whatever its wire
//! format — authorize topics, subscribe live then replay from the log with no
//! gap and no duplicate, keep cursors, re-check on token refresh and expiry,
//! rooms and presence, limits, and why a connection ends. Native WebSocket,
//! Phoenix, SSE and long-poll are codecs and drivers over it.

pub mod close;

pub use close::CloseReason;
