//! The hand-over from the log to live delivery. A subscription joins the hub
//! first (live deliveries queue up), then replays the log page by page from
//! its cursor; the cursor drops anything at or below the last position sent,
//! so nothing falls between the two and nothing arrives twice.

use super::error::SessionError;
use crate::app::AppState;
use crate::model::{Event, Position};

/// Events replayed per page.
pub const REPLAY_PAGE: usize = 1000;

/// The newest position in the log.
pub async fn head(s: &AppState) -> Result<Position, SessionError> {
    Ok(s.store.head().await?)
}

/// The last position delivered on a feed; positions at or below it are duplicates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(Position);

impl Cursor {
    pub fn at(position: Position) -> Cursor {
        Cursor(position)
    }

    pub fn position(self) -> Position {
        self.0
    }

    /// Whether an event at `position` is new here; if so, the cursor moves to it.
    pub fn admit(&mut self, position: Position) -> bool {
        if position <= self.0 {
            return false;
        }
        self.0 = position;
        true
    }

    /// Moves forward to `position` (a resync), never back.
    pub fn advance(&mut self, position: Position) {
        self.0 = self.0.max(position);
    }
}

/// Counts a resume of `tenant`: served from the log, or behind retention (a
/// resync); in `/metrics` and in the tenant's inspector.
pub fn count_resume(s: &AppState, tenant: &std::sync::Arc<str>, behind: bool) {
    let result = if behind { "resync" } else { "replayed" };
    metrics::counter!("herald_resumes_total", "result" => result).increment(1);
    s.hub.registry.count_resume(tenant, behind);
}

/// One step of a replay.
pub enum ReplayPage {
    /// Events after the cursor, oldest first.
    Events(Vec<Event>),
    /// The cursor is older than retention: the client must resync from a
    /// snapshot and continue from `head`.
    Behind { head: Position },
}

/// A replay of `topics` after a position, read one page at a time.
pub struct Replay {
    tenant: std::sync::Arc<str>,
    topics: Vec<String>,
    after: Position,
    done: bool,
    /// Whether this resume was counted (`herald_resumes_total`), on its first page.
    counted: bool,
}

impl Replay {
    pub fn new(tenant: std::sync::Arc<str>, topics: Vec<String>, after: Position) -> Replay {
        Replay { tenant, topics, after, done: false, counted: false }
    }

    /// The next page, or `None` once the replay has caught up with the log.
    pub async fn next_page(&mut self, s: &AppState) -> Result<Option<ReplayPage>, SessionError> {
        if self.done {
            return Ok(None);
        }
        let page = s.store.events(&self.tenant, &self.topics, self.after, REPLAY_PAGE).await?;
        let behind = self.after < page.floor;
        if !std::mem::replace(&mut self.counted, true) {
            count_resume(s, &self.tenant, behind);
        }
        if behind {
            self.done = true;
            return Ok(Some(ReplayPage::Behind { head: page.head }));
        }
        // A short page means the replay reached the head it read (unless it
        // was cut short by its byte bound).
        self.done = page.events.len() < REPLAY_PAGE && !page.truncated;
        if let Some(last) = page.events.last() {
            self.after = last.position;
        }
        if page.events.is_empty() {
            return Ok(None);
        }
        Ok(Some(ReplayPage::Events(page.events)))
    }
}
