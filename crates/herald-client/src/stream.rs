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
//! The limits, the name rule and the append and listing answers are
//! `herald-model`'s, shared with the server; a page of chunks is the client's
//! own reading (the server writes chunks through as raw JSON), like
//! [`EventPage`](crate::EventPage).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use herald_model::stream::{validate_stream_name, Appended, StreamInfo, MAX_CHUNKS_PER_APPEND, MAX_CHUNK_BYTES};

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
