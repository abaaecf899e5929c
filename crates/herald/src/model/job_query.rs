//! A query over jobs for live lists (`list` on the native protocol,
//! `/v1/sse/jobs`): which jobs belong to a list. One matcher decides, for the
//! snapshot read from the store and for every live change alike.

use super::{Job, JobStatus};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Longest `updated_within`: 31 days.
pub const MAX_WINDOW_SECONDS: u64 = 31 * 24 * 3600;

/// The jobs of a list; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQuery {
    /// Any of these statuses (empty: any status).
    pub status: Vec<JobStatus>,
    pub kind: Option<String>,
    pub owner: Option<String>,
    /// Metadata keys and the text their value must have.
    pub tag: BTreeMap<String, String>,
    /// `updated_at` at most this many seconds old.
    pub updated_within: Option<u64>,
}

/// The fields of a job a query reads, from a stored job or an event's row.
#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub kind: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub metadata: Option<&'a Map<String, Value>>,
    pub updated_at: i64,
    pub version: u64,
}

impl<'a> JobFacts<'a> {
    pub fn of_job(job: &'a Job) -> JobFacts<'a> {
        JobFacts {
            id: &job.id,
            status: job.status.as_str(),
            kind: job.kind.as_deref(),
            owner: job.owner.as_deref(),
            metadata: job.metadata.as_object(),
            updated_at: job.updated_at,
            version: job.version,
        }
    }

    /// From a job row as events carry it; `None` if it is not one.
    pub fn of_row(row: &'a Map<String, Value>) -> Option<JobFacts<'a>> {
        Some(JobFacts {
            id: row.get("id")?.as_str()?,
            status: row.get("status")?.as_str()?,
            kind: row.get("kind").and_then(Value::as_str),
            owner: row.get("owner").and_then(Value::as_str),
            metadata: row.get("metadata").and_then(Value::as_object),
            updated_at: row.get("updated_at").and_then(time_ms).unwrap_or(0),
            version: row.get("version")?.as_u64()?,
        })
    }
}

/// A timestamp as rows carry it (RFC 3339 text, or epoch milliseconds).
fn time_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => super::time::parse_rfc3339(s),
        _ => None,
    }
}

/// A metadata value as the text a tag compares with.
fn tag_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

impl JobQuery {
    /// The `query` object of a `list` frame; the error names the field.
    pub fn from_json(v: &Value) -> Result<JobQuery, String> {
        let Some(obj) = v.as_object() else { return Err("query: must be an object".into()) };
        let mut q = JobQuery::default();
        for (field, value) in obj {
            match field.as_str() {
                "status" => {
                    let list = match value {
                        Value::String(_) => std::slice::from_ref(value),
                        Value::Array(a) => a.as_slice(),
                        _ => return Err("query.status: a status or an array of them".into()),
                    };
                    for s in list {
                        q.add_status(s.as_str().unwrap_or(""))?;
                    }
                }
                "kind" | "owner" => {
                    let Some(text) = value.as_str() else { return Err(format!("query.{field}: must be a string")) };
                    q.set_text(field, text)?;
                }
                "tag" => {
                    let Some(tags) = value.as_object() else {
                        return Err("query.tag: must be an object of metadata keys and values".into());
                    };
                    for (k, v) in tags {
                        let Some(text) = tag_text(v) else {
                            return Err(format!("query.tag.{k}: must be a string, number or boolean"));
                        };
                        q.add_tag(k, text)?;
                    }
                }
                "updated_within" => {
                    let secs = value.as_u64().ok_or("query.updated_within: must be a whole number of seconds")?;
                    q.set_window(secs)?;
                }
                other => {
                    return Err(format!(
                        "query.{other}: unknown field; known: status, kind, owner, tag, updated_within"
                    ))
                }
            }
        }
        Ok(q)
    }

    /// From query-string parameters (SSE): `status=a,b`, `tag=k:v,k2:v2`.
    pub fn from_params(
        status: Option<&str>,
        kind: Option<&str>,
        owner: Option<&str>,
        tag: Option<&str>,
        updated_within: Option<u64>,
    ) -> Result<JobQuery, String> {
        let mut q = JobQuery::default();
        for s in status.into_iter().flat_map(|s| s.split(',')) {
            q.add_status(s.trim())?;
        }
        if let Some(k) = kind {
            q.set_text("kind", k)?;
        }
        if let Some(o) = owner {
            q.set_text("owner", o)?;
        }
        for pair in tag.into_iter().flat_map(|t| t.split(',')) {
            let Some((k, v)) = pair.split_once(':') else {
                return Err(format!("tag: {pair:?} is not key:value"));
            };
            q.add_tag(k, v.to_string())?;
        }
        if let Some(secs) = updated_within {
            q.set_window(secs)?;
        }
        Ok(q)
    }

    fn add_status(&mut self, s: &str) -> Result<(), String> {
        let status = JobStatus::parse(s).ok_or_else(|| {
            format!("query.status: {s:?} is not a status (queued, running, stalled, completed, failed, cancelled)")
        })?;
        if !self.status.contains(&status) {
            self.status.push(status);
        }
        Ok(())
    }

    fn set_text(&mut self, field: &str, text: &str) -> Result<(), String> {
        crate::model::ids::validate_id(text).map_err(|m| format!("query.{field}: {m}"))?;
        match field {
            "kind" => self.kind = Some(text.to_string()),
            _ => self.owner = Some(text.to_string()),
        }
        Ok(())
    }

    fn add_tag(&mut self, key: &str, text: String) -> Result<(), String> {
        if key.is_empty() || key.len() > 128 {
            return Err("query.tag: keys are 1–128 bytes".into());
        }
        if text.len() > 1024 {
            return Err(format!("query.tag.{key}: values are at most 1024 bytes"));
        }
        if self.tag.len() >= 16 {
            return Err("query.tag: at most 16 keys".into());
        }
        self.tag.insert(key.to_string(), text);
        Ok(())
    }

    fn set_window(&mut self, secs: u64) -> Result<(), String> {
        if secs == 0 || secs > MAX_WINDOW_SECONDS {
            return Err(format!("query.updated_within: 1–{MAX_WINDOW_SECONDS} seconds"));
        }
        self.updated_within = Some(secs);
        Ok(())
    }

    /// The oldest `updated_at` that still matches at `now_ms`.
    pub fn updated_after(&self, now_ms: i64) -> Option<i64> {
        self.updated_within.map(|w| now_ms - (w as i64) * 1000)
    }

    /// Whether the job belongs to the list at `now_ms`.
    pub fn matches(&self, job: &JobFacts<'_>, now_ms: i64) -> bool {
        if !self.status.is_empty() && !self.status.iter().any(|s| s.as_str() == job.status) {
            return false;
        }
        if self.kind.as_deref().is_some_and(|k| job.kind != Some(k)) {
            return false;
        }
        if self.owner.as_deref().is_some_and(|o| job.owner != Some(o)) {
            return false;
        }
        if let Some(after) = self.updated_after(now_ms) {
            if job.updated_at < after {
                return false;
            }
        }
        self.tag
            .iter()
            .all(|(k, want)| job.metadata.and_then(|m| m.get(k)).and_then(tag_text).is_some_and(|have| &have == want))
    }

    /// When a member updated at `updated_at` ages out of the window, if it can.
    pub fn expires_at(&self, updated_at: i64) -> Option<i64> {
        self.updated_within.map(|w| updated_at + (w as i64) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn queries_parse_and_name_the_bad_field() {
        let q = JobQuery::from_json(&json!({"status":["running","stalled"],"kind":"crawl","tag":{"env":"prod","n":4}}))
            .expect("valid");
        assert_eq!(q.status, [JobStatus::Running, JobStatus::Stalled]);
        assert_eq!(q.tag.get("n").map(String::as_str), Some("4"));
        for (bad, field) in [
            (json!({"status":"done"}), "query.status"),
            (json!({"status":[1]}), "query.status"),
            (json!({"kind":3}), "query.kind"),
            (json!({"tag":{"a":{"b":1}}}), "query.tag.a"),
            (json!({"updated_within":0}), "query.updated_within"),
            (json!({"updated_within":-5}), "query.updated_within"),
            (json!({"colour":"red"}), "query.colour"),
            (json!([1]), "query"),
        ] {
            let e = JobQuery::from_json(&bad).expect_err("refused");
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        let p =
            JobQuery::from_params(Some("running, queued"), None, Some("alice"), Some("env:prod,tier:gold"), Some(60))
                .expect("valid");
        assert_eq!(p.status.len(), 2);
        assert_eq!(p.tag.len(), 2);
        assert!(JobQuery::from_params(None, None, None, Some("nocolon"), None).is_err());
    }

    #[test]
    fn a_job_matches_on_every_condition() {
        let q = JobQuery::from_json(
            &json!({"status":["running"],"kind":"crawl","tag":{"env":"prod","n":"4"},"updated_within":60}),
        )
        .expect("valid");
        let now = 1_000_000_000;
        let base = json!({"id":"j","status":"running","kind":"crawl","metadata":{"env":"prod","n":4},"updated_at":now - 1000,"version":3});
        let r = row(base.clone());
        assert!(q.matches(&JobFacts::of_row(&r).expect("job"), now));
        for (field, value) in [
            ("status", json!("completed")),
            ("kind", json!("mail")),
            ("metadata", json!({"env":"dev","n":4})),
            ("metadata", json!({"env":"prod"})),
            ("updated_at", json!(now - 61_000)),
        ] {
            let mut other = base.clone();
            other[field] = value;
            let r = row(other);
            assert!(!q.matches(&JobFacts::of_row(&r).expect("job"), now), "{field}");
        }
        assert_eq!(q.expires_at(now - 1000), Some(now + 59_000));
        assert!(JobFacts::of_row(&row(json!({"id":"t","status":"running"}))).is_none(), "not a job: no version");
    }
}
