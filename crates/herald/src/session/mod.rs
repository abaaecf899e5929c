//! The session core: everything a realtime connection does, whatever its wire
//! format — authorize topics, subscribe live then replay from the log with no
//! gap and no duplicate, keep cursors, re-check on token refresh and expiry,
//! rooms and presence, limits, and why a connection ends. Native WebSocket,
//! Phoenix, SSE and long-poll are codecs and drivers over it: they decide how
//! a frame looks, never what a subscription means.

pub mod access;
pub mod close;
pub mod error;
pub mod job_list;
pub mod membership;
pub mod replay;
pub mod revocation;
pub mod rooms;
pub mod stream;
pub mod token;

pub use access::{authorize, authorize_existing, authorize_existing_stream, authorize_with_streams, snapshot};
pub use close::CloseReason;
pub use error::{Refusal, SessionError};
pub use membership::Membership;
pub use replay::{head, Cursor, Replay, ReplayPage, REPLAY_PAGE};
pub use revocation::KeyChanges;
pub use token::{expiry_instant, Deadline};
