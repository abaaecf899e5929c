//! Job output streams: the answers of `POST /v1/jobs/{id}/streams/{name}`,
//! `GET /v1/jobs/{id}/streams` and `GET /v1/jobs/{id}/streams/{name}`, and
//! the limits of an append.
//!
//! A stream is an append-only sequence of chunks (log lines, LLM tokens, JSON
//! records), named per job (`A-Za-z0-9_-.`, 1–64 characters) and created on
//! first append. Offsets count chunks from 0 per stream; the oldest chunks go
//! past the server's `--stream-max-bytes` and `--retention`, which `floor` and
//! `truncated` say. Write with [`Client::append_chunks`](crate::Client::append_chunks),
//! or in batches through [`Reporter::stream`](crate::Reporter::stream); read
//! with [`Client::read_stream`](crate::Client::read_stream).
//!
//! These types are the client's reading of the server's answers (the server
//! defines its own in `transport/http/streams.rs`), like [`EventPage`](crate::EventPage).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest chunk Herald takes, serialized as compact JSON, in bytes (64 KiB).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Most chunks one append (and one read) may carry.
pub const MAX_CHUNKS_PER_APPEND: usize = 10_000;

/// Herald's answer to an append: where the chunks went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub stream: String,
    /// Offset of the first chunk appended.
    pub first_offset: u64,
    /// The offset the next chunk will get.
    pub next_offset: u64,
    /// The oldest offset still kept.
    pub floor: u64,
}

/// One page of a stream, from `GET /v1/jobs/{id}/streams/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPage {
    pub stream: String,
    /// Offset of `chunks[0]`: later than asked for when older chunks were
    /// dropped (then `truncated` is true).
    pub offset: u64,
    /// The `offset` of the next read.
    pub next: u64,
    /// The stream's end now: the offset the next chunk appended will get
    /// (0 for a stream never appended to).
    pub end: u64,
    /// The oldest offset still kept.
    pub floor: u64,
    /// Chunks between the offset asked for and `offset` were dropped
    /// (retention or the stream's size bound).
    pub truncated: bool,
    pub chunks: Vec<Value>,
}

/// One stream of a job, from `GET /v1/jobs/{id}/streams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    /// The oldest offset still kept.
    pub floor: u64,
    /// The offset the next chunk will get.
    pub next_offset: u64,
    /// Bytes of chunks kept.
    pub bytes: u64,
    /// Epoch milliseconds of the last append (RFC 3339 on the wire).
    #[serde(with = "herald_model::time::rfc3339")]
    pub updated_at: i64,
}
