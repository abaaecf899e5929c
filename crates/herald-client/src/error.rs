//! What can go wrong talking to Herald, with the server's own error codes.

use std::time::Duration;

/// An error from Herald or from the way to it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Herald answered with an error: `{"error":{"code","message"}}` (docs/API.md
    /// lists the codes: `unauthorized`, `token_expired`, `invalid_token`,
    /// `forbidden`, `not_found`, `illegal_transition`, `invalid_field`...).
    #[error("{code} ({status}): {message}")]
    Api { status: u16, code: String, message: String },
    /// Herald could not be reached, or the answer did not arrive in time.
    #[error("network: {0}")]
    Network(String),
    /// Retries went on for the whole budget without an answer.
    #[error("gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp { attempts: u32, elapsed: Duration, last: Box<Error> },
    /// The reporter's queue holds its limit of unsent requests (Herald has
    /// been unreachable for a while); this one was not taken.
    #[error("queue_full: {0} requests are waiting to be sent")]
    QueueFull(usize),
    /// The reporter was closed.
    #[error("closed: the reporter no longer takes requests")]
    Closed,
    /// A URL, option or answer that makes no sense.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl Error {
    /// Herald's error code (`not_found`, `illegal_transition`, ...), or this
    /// crate's (`network`, `queue_full`, `closed`, `invalid`).
    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            Error::Network(_) => "network",
            Error::GaveUp { last, .. } => last.code(),
            Error::QueueFull(_) => "queue_full",
            Error::Closed => "closed",
            Error::Invalid(_) => "invalid",
        }
    }

    /// The HTTP status Herald answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The credentials were refused (401): retrying will not help without a new token.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// Whether sending the same request again may succeed: the network, a
    /// timeout (408), throttling (429) or the server's side (5xx). Anything
    /// else is the request's fault and fails the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Network(_) => true,
            Error::Api { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Network(without_url(&e))
    }
}

/// reqwest's message names the URL, which may carry a `token=`.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
