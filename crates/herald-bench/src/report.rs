//! Prints a result as an aligned table and appends it as one JSON line.

use crate::Common;
use serde_json::{json, Value};
use std::io::Write;

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Number(n) => {
            let s = match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.3}"),
                _ => n.to_string(),
            };
            out.push((prefix.to_string(), s));
        }
        other => out.push((prefix.to_string(), other.to_string().trim_matches('"').to_string())),
    }
}

pub fn emit(c: &Common, mut result: Value) -> anyhow::Result<()> {
    if let Value::Object(m) = &mut result {
        m.insert("label".into(), json!(c.label));
        m.insert("unix_time".into(), json!(crate::target::now_us() / 1_000_000));
    }
    let mut rows = Vec::new();
    flatten("", &result, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("{k:<width$}  {v}");
    }
    if let Some(path) = &c.json_out {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{result}")?;
    }
    Ok(())
}
