//! A place in the event log. Opaque on purpose: positions are compared and
//! handed back to clients, never computed with, so a store may derive them as
//! it likes (an `AUTOINCREMENT` row id, a sequencer's counter) as long as they
//! strictly increase in commit order.

use serde::{Deserialize, Serialize};

/// A position in the log; `Position::ZERO` is before the first event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(u64);

impl Position {
    /// Before every event.
    pub const ZERO: Position = Position(0);

    /// The position a client sent (`since`, `Last-Event-ID`) or a store read.
    pub const fn from_u64(n: u64) -> Position {
        Position(n)
    }

    /// The number shown to clients.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
