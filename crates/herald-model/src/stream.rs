//! Job output streams on the wire: the limits of an append, the rule for a
//! stream's name, and the answers of `POST /v1/jobs/{id}/streams/{name}` and
//! `GET /v1/jobs/{id}/streams`.
//!
//! A stream is an append-only sequence of chunks (log lines, LLM tokens, JSON
//! records), named per job and created on first append. Offsets count chunks
//! from 0 per stream; the oldest chunks go past the server's size bound and
//! retention, which `floor` says.

use serde::{Deserialize, Serialize};

/// Largest chunk Herald takes, serialized as compact JSON, in bytes (64 KiB).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Most chunks one append (and one read) may carry.
pub const MAX_CHUNKS_PER_APPEND: usize = 10_000;

/// A stream's name: 1–64 characters of `A-Za-z0-9_-.` (no `:`, which ends
/// the job id in the topic `stream:<job>:<name>`).
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("stream name {name:?}: 1–64 characters of A-Za-z0-9_-."))
    }
}

/// The answer to an append: where the chunks went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Appended {
    pub stream: String,
    /// Offset of the first chunk appended.
    pub first_offset: u64,
    /// The offset the next chunk will get.
    pub next_offset: u64,
    /// The oldest offset still kept.
    pub floor: u64,
}

/// One stream of a job, from `GET /v1/jobs/{id}/streams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamInfo {
    pub name: String,
    /// The oldest offset still kept.
    pub floor: u64,
    /// The offset the next chunk will get.
    pub next_offset: u64,
    /// Bytes of chunks kept.
    pub bytes: u64,
    /// Epoch milliseconds of the last append (RFC 3339 on the wire).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_short_plain_words() {
        for ok in ["out", "stdout", "llm.tokens", "step_2-log", &"a".repeat(64)] {
            assert!(validate_stream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a:b", "with space", "é", &"a".repeat(65), "x/y"] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
    }
}
