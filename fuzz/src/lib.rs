//! Helpers shared by the fuzz targets.

use serde_json::Value;

/// JSON equality that forgives the last bits of a float: serde_json's default
/// float parser is best-effort, so `parse(print(x))` may differ from `x` by an
/// ulp. Everything else must be equal.
pub fn json_eq_loose(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) if x.is_f64() && y.is_f64() => {
                    let diff = (p - q).abs();
                    diff <= 1e-9 * p.abs().max(q.abs()) || diff < 1e-300
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq_loose(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq_loose(v, w)))
        }
        _ => a == b,
    }
}

/// Asserts `json_eq_loose`, showing both values when they differ.
#[track_caller]
pub fn assert_json_eq(what: &str, a: &Value, b: &Value) {
    assert!(json_eq_loose(a, b), "{what} changed in a round trip:\n  before: {a}\n  after:  {b}");
}

/// A topic that parses prints back as the same text.
pub fn check_topic(s: &str) {
    if let Ok(t) = herald::model::Topic::parse(s) {
        assert_eq!(t.to_string(), s, "topic {s:?} parsed as {t:?}");
    }
}

/// An RFC 3339 time that parses and prints back parses to the same instant.
pub fn check_time(s: &str) {
    use herald::model::time::{format_ms, parse_rfc3339};
    if let Some(ms) = parse_rfc3339(s) {
        let printed = format_ms(ms);
        // Instants the format cannot show (before year 0) print as a number.
        if let Some(again) = parse_rfc3339(&printed) {
            assert_eq!(again, ms, "{s:?} -> {ms} -> {printed:?} -> {again}");
        }
    }
}

/// Rows the filters of a binding are tried on: a value of every JSON kind
/// under the columns filters name.
fn sample_rows() -> Vec<serde_json::Map<String, Value>> {
    let rows = [
        serde_json::json!({"id": "j1", "status": "running", "progress": 42.5, "total": 10, "owner": null,
                           "counts_reported": true, "metadata": {"a": [1, 2]}}),
        serde_json::json!({"id": "-1", "job_id": "j1", "status": "failed", "attempts": -3, "error": "",
                           "progress": 1e308, "recipient": "alice", "read": false}),
    ];
    rows.into_iter().filter_map(|r| r.as_object().cloned()).collect()
}

/// A `phx_join` payload through `parse_join` (and so `parse_binding` and
/// `parse_filter`), then what the session does with the bindings.
pub fn check_join(payload: &Value) {
    use herald::model::Catalog;
    use herald::transport::phoenix::channel::{binding_id, parse_join};
    let Ok(req) = parse_join(payload) else { return };
    let raw = payload.get("config").and_then(|c| c.get("postgres_changes")).and_then(Value::as_array);
    assert_eq!(req.bindings.len(), raw.map_or(0, Vec::len));
    let text: Value = serde_json::from_str(&req.bindings_text).expect("bindings_text is JSON");
    assert_json_eq("bindings_text", &text, &Value::Array(raw.cloned().unwrap_or_default()));
    let rows = sample_rows();
    for (i, spec) in req.bindings.iter().enumerate() {
        let _ = binding_id(i, spec);
        let _ = spec.equals("id");
        // Resolved as at a join: the tables it names and its filter columns.
        let mut resolved = spec.clone();
        if resolved.resolve(&Catalog::default()).is_ok() {
            assert!(!resolved.tables.is_empty());
        }
        for c in &spec.conditions {
            assert!(!c.column.is_empty());
            assert!(!c.values.is_empty());
            for row in &rows {
                let _ = c.holds(row);
            }
        }
    }
}
