//! Reading a job's output stream (`stream:<job>:<name>`): chunks have offsets
//! of their own (0, 1, 2, … per stream), so a reader keeps the next offset it
//! wants. It catches up from the store page by page, then takes live chunks;
//! a live batch it already has is skipped, one that overlaps is cut, and one
//! past a gap (appends from two nodes met out of order) sends it back to the
//! store. Nothing is missed and nothing arrives twice, whatever the order.

use super::error::SessionError;
use crate::app::AppState;
use crate::store::ChunkPage;
use serde_json::value::RawValue;

/// Chunks per page read from the store.
pub const PAGE_CHUNKS: usize = 1000;
/// Bytes per page read from the store (a page ends early past it).
pub const PAGE_BYTES: usize = 1024 * 1024;

/// Which stream, of which job and tenant.
#[derive(Debug, Clone)]
pub struct StreamRef {
    pub tenant: std::sync::Arc<str>,
    pub job: String,
    pub name: String,
}

/// What a reader makes of a live batch of chunks.
#[derive(Debug)]
pub enum Admit {
    /// Already held.
    Skip,
    /// New from its first chunk on: send it as it came.
    Whole,
    /// Partly held: send these `count` chunks, the first at offset `first`.
    Part { first: u64, count: u64, chunks: Box<RawValue> },
    /// Starts past the reader's offset: read the store first.
    Gap,
}

/// The next offset a reader wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCursor {
    pub next: u64,
}

impl StreamCursor {
    pub fn at(next: u64) -> StreamCursor {
        StreamCursor { next }
    }

    /// A live batch of `count` chunks from offset `first`.
    pub fn admit(&mut self, first: u64, count: u64, chunks: &RawValue) -> Admit {
        let end = first + count;
        if end <= self.next {
            return Admit::Skip;
        }
        if first > self.next {
            return Admit::Gap;
        }
        let skip = self.next - first;
        let from = self.next;
        self.next = end;
        if skip == 0 {
            return Admit::Whole;
        }
        // Rare (a batch that straddles a catch-up): cut it.
        let all: Vec<Box<RawValue>> = serde_json::from_str(chunks.get()).unwrap_or_default();
        let rest = serde_json::value::to_raw_value(&all[(skip as usize).min(all.len())..]).unwrap_or_default();
        Admit::Part { first: from, count: end - from, chunks: rest }
    }

    /// Moves past a page read from the store.
    pub fn read(&mut self, page: &ChunkPage) {
        self.next = page.first + page.chunks.len() as u64;
    }
}

impl StreamRef {
    /// The next page from `cursor` (its `first` says where it really starts:
    /// later than asked when retention or the size bound dropped older chunks).
    pub async fn page(&self, s: &AppState, cursor: StreamCursor) -> Result<ChunkPage, SessionError> {
        Ok(s.store.stream_chunks(&self.tenant, &self.job, &self.name, cursor.next, PAGE_CHUNKS, PAGE_BYTES).await?)
    }

    /// The offset the next chunk appended will get.
    pub async fn end(&self, s: &AppState) -> Result<u64, SessionError> {
        Ok(s.store.stream_chunks(&self.tenant, &self.job, &self.name, 0, 0, 0).await?.next)
    }
}

/// A page's chunks as one JSON array.
pub fn chunks_array(page: &ChunkPage) -> String {
    serde_json::to_string(&page.chunks).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn live_batches_are_skipped_cut_or_sent_back_to_the_store() {
        let mut c = StreamCursor::at(10);
        assert!(matches!(c.admit(5, 5, &raw(r#"[1,2,3,4,5]"#)), Admit::Skip));
        assert!(matches!(c.admit(12, 2, &raw(r#"[1,2]"#)), Admit::Gap));
        assert_eq!(c.next, 10, "a gap moves nothing");
        match c.admit(8, 4, &raw(r#"["a","b","c","d"]"#)) {
            Admit::Part { first, count, chunks } => assert_eq!((first, count, chunks.get()), (10, 2, r#"["c","d"]"#)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.next, 12);
        assert!(matches!(c.admit(12, 1, &raw(r#"["e"]"#)), Admit::Whole));
        assert_eq!(c.next, 13);
    }
}
