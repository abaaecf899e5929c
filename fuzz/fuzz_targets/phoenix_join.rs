//! `phx_join` payloads: the input as JSON through `parse_join`, which reads
//! `config.postgres_changes` with `parse_binding` and its PostgREST filters with
//! `parse_filter`; and the input as text straight through `parse_filter`.

#![no_main]

use herald::transport::phoenix::changes::{parse_binding, parse_filter};
use herald_fuzz::check_join;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = serde_json::from_slice::<Value>(data) {
        check_join(&payload);
        // One binding alone, as a client might send it.
        let _ = parse_binding(&payload);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(conditions) = parse_filter(text) {
            assert!(!conditions.is_empty());
            for c in &conditions {
                assert!(!c.column.is_empty() && !c.values.is_empty());
            }
        }
    }
});
