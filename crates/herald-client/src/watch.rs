//! Watching topics live over server-sent events, resuming from the last
//! position after any cut: every event once, in order, nothing missed while
//! the log still holds it (a `Resync` says when it no longer does).

use crate::client::{api_error, segment, Client};
use crate::error::{Error, Result};
use herald_model::{Position, WireEvent};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// What a watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A committed change.
    Event(WireEvent),
    /// The position to resume from is older than the log's retention: what
    /// was missed is gone from the log, so here is the current state of each
    /// topic (`snapshot`, keyed by topic), and events go on after `position`.
    Resync { position: Position, snapshot: Value },
}

/// A live view of some topics. Call [`Watch::next`] in a loop; it reconnects
/// by itself (with backoff) and only returns an error that a reconnect cannot
/// fix: a refused token, a topic the caller may not see.
pub struct Watch {
    client: Client,
    topics: String,
    /// The position to resume after; `None` until the first stream told it.
    position: Option<Position>,
    stream: Option<reqwest::Response>,
    buf: Vec<u8>,
    failures: u32,
    /// The current stream has handed out an update.
    delivered: bool,
}

/// Three of Herald's 15-second keep-alives missed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Deserialize)]
struct ResyncBody {
    position: Position,
    #[serde(default)]
    snapshot: Value,
}

impl Client {
    /// Watches `topics` (`job:<id>`, `jobs`, `jobs:owner:<sub>`, `user:<sub>`)
    /// from after `since`, or live from now when `None`.
    pub fn watch(&self, topics: &[&str], since: Option<Position>) -> Watch {
        Watch {
            client: self.clone(),
            topics: topics.iter().map(|t| segment(t)).collect::<Vec<_>>().join(","),
            position: since,
            stream: None,
            buf: Vec::new(),
            failures: 0,
            delivered: false,
        }
    }

    /// Watches one job: `job:<id>`.
    pub fn watch_job(&self, job_id: &str, since: Option<Position>) -> Watch {
        self.watch(&[&format!("job:{job_id}")], since)
    }

    /// Watches every job of the tenant (staff, services): `jobs`.
    pub fn watch_jobs(&self, since: Option<Position>) -> Watch {
        self.watch(&["jobs"], since)
    }
}

impl Watch {
    /// The position of the last event (or of the stream's start): what a new
    /// watch should be given as `since` to go on from here.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The next update, reconnecting as often as needed.
    pub async fn next(&mut self) -> Result<Update> {
        loop {
            if let Some(update) = self.parse_buffered()? {
                return Ok(update);
            }
            if self.stream.is_none() {
                self.connect().await?;
                continue;
            }
            let chunk = match self.stream.as_mut() {
                // Herald sends a keep-alive every 15 s: silence past this is a dead connection.
                Some(resp) => tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await,
                None => continue,
            };
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                // The stream ended (a goodbye, a restart, a cut) or went silent: resume.
                Ok(Ok(None) | Err(_)) | Err(_) => {
                    if !self.delivered {
                        // Accepted and ended without an event: back off as after a failure.
                        self.failures += 1;
                    }
                    self.drop_stream();
                }
            }
        }
    }

    fn drop_stream(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Opens the stream from the current position, waiting between attempts;
    /// gives up only on errors a retry cannot fix.
    async fn connect(&mut self) -> Result<()> {
        loop {
            if self.failures > 0 {
                let wait = self.client.retry().initial.saturating_mul(1 << self.failures.min(6));
                tokio::time::sleep(wait.min(self.client.retry().max_delay)).await;
            }
            let mut req = self
                .client
                .http()
                .get(format!("{}/v1/sse?topic={}", self.client.base(), self.topics))
                .bearer_auth(self.client.token());
            if let Some(p) = self.position {
                req = req.header("Last-Event-ID", p.get().to_string());
            }
            let err = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.stream = Some(resp);
                    self.delivered = false;
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    api_error(status, &body)
                }
                Err(e) => Error::from(e),
            };
            if !err.is_retryable() {
                return Err(err);
            }
            self.failures += 1;
            tracing::debug!(error = %err, failures = self.failures, "watch: reconnecting");
        }
    }

    /// The next complete message in the buffer, if it is one to hand out.
    fn parse_buffered(&mut self) -> Result<Option<Update>> {
        while let Some(end) = find_block_end(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in text.lines() {
                let (field, value) =
                    line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                match field {
                    "id" => id = value.trim().parse::<u64>().ok().map(Position::from_u64),
                    "event" => event = value.to_string(),
                    "data" => {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(value);
                    }
                    _ => {}
                }
            }
            if data.is_empty() {
                // An id-only message: where the stream starts.
                if let Some(p) = id {
                    self.position = Some(p);
                }
                continue;
            }
            match event.as_str() {
                "resync" => {
                    let body: ResyncBody = serde_json::from_str(&data)
                        .map_err(|e| Error::Invalid(format!("a resync message did not parse: {e}")))?;
                    self.position = Some(body.position);
                    self.failures = 0;
                    self.delivered = true;
                    return Ok(Some(Update::Resync { position: body.position, snapshot: body.snapshot }));
                }
                // The server is ending the stream; the next read sees the end and resumes.
                "goodbye" | "broadcast" | "presence_diff" => continue,
                _ => {
                    let e: WireEvent = serde_json::from_str(&data)
                        .map_err(|e| Error::Invalid(format!("an event did not parse: {e}")))?;
                    self.position = Some(e.position);
                    self.failures = 0;
                    self.delivered = true;
                    return Ok(Some(Update::Event(e)));
                }
            }
        }
        Ok(None)
    }
}

/// The end of the first message (after its blank line), if one is complete.
fn find_block_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_with(buf: &str) -> Watch {
        let client = Client::new("http://127.0.0.1:1", "t").unwrap();
        let mut w = client.watch(&["jobs"], None);
        w.buf = buf.as_bytes().to_vec();
        w
    }

    #[test]
    fn reads_ids_events_and_resyncs_and_skips_the_rest() {
        let ev =
            r#"{"topic":"jobs","position":8,"type":"job.updated","data":{"id":"a"},"time":"2026-01-01T00:00:00Z"}"#;
        let mut w = watch_with("retry: 2000\n\nid: 7\n\n: keep-alive\n\n");
        assert_eq!(w.parse_buffered().unwrap(), None);
        assert_eq!(w.position(), Some(Position::from_u64(7)), "an id-only message moves the position");
        // The id-only message moved the position; the event came out; then the resync.
        let mut w = watch_with(&format!("id: 7\n\nid: 8\nevent: job.updated\ndata: {ev}\n\n"));
        match w.parse_buffered().unwrap() {
            Some(Update::Event(e)) => assert_eq!(e.position, Position::from_u64(8)),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.position(), Some(Position::from_u64(8)));
        let mut w = watch_with("id: 20\nevent: resync\ndata: {\"position\":20,\"snapshot\":{}}\n\npartial");
        assert!(matches!(w.parse_buffered().unwrap(), Some(Update::Resync { .. })));
        assert_eq!(w.parse_buffered().unwrap(), None, "an incomplete message waits");
        assert_eq!(w.buf, b"partial");
    }
}
