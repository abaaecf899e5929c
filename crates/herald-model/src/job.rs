//! A job: long work someone watches, and the rules for changing it.

use serde::{Deserialize, Serialize};

/// How many entries the bounded error log keeps (the oldest are dropped first).
pub const ERROR_LOG_LIMIT: usize = 50;
/// How many bytes of messages the error log keeps, all entries together (the
/// oldest are dropped first; the newest entry always stays).
pub const ERROR_LOG_BYTES: usize = 64 * 1024;
/// Longest message one error log entry keeps; a longer one is cut and ends in `…`.
pub const ERROR_MESSAGE_LIMIT: usize = 16 * 1024;
/// Largest a job's metadata may become through merge patches, serialized as
/// compact JSON. Every change of a job writes the whole job into an event, so
/// an unbounded document would make every small report a large write.
pub const METADATA_LIMIT: usize = 64 * 1024;

/// Lifecycle of a job. Legal moves: queued→running→completed|failed|cancelled,
/// running↔stalled, queued→cancelled|failed; nothing leaves a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Stalled,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Stalled => "stalled",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "stalled" => JobStatus::Stalled,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// Whether a job may move from `self` to `to`. Staying put is always allowed
    /// for non-terminal states (a report that repeats the status).
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        if self == to {
            return !self.is_terminal();
        }
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, Stalled)
                | (Stalled, Running)
                | (Stalled, Completed)
                | (Stalled, Failed)
                | (Stalled, Cancelled)
        )
    }
}

/// One entry of a job's bounded error log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub at: i64,
    pub message: String,
}

/// A job as stored, returned by the API and carried by `job.*` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: String,
    pub tenant: String,
    /// The `sub` of the customer who owns the job, if any.
    pub owner: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: JobStatus,
    pub total: Option<u64>,
    pub succeeded: u64,
    pub failed: u64,
    /// 0–100; derived from the counts unless the worker reports it.
    pub progress: f64,
    pub stage: Option<String>,
    pub current_item: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Value,
    pub errors: Vec<JobError>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub started_at: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub finished_at: Option<i64>,
    /// Increases by one with every change.
    pub version: u64,
    /// True once the worker reported counts itself; tasks then stop driving them.
    #[serde(default)]
    pub counts_reported: bool,
    /// True once the worker reported an explicit percent; counts then stop driving it.
    #[serde(default)]
    pub progress_reported: bool,
}

/// What a progress report may change. Absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"status": "running", "succeeded": 57, "failed": 2, "stage": "fetching", "current_item": "/pricing", "metadata": {"last_url": "https://example.com/pricing"}})))]
pub struct ProgressReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Absolute count of items that succeeded so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<u64>,
    /// Absolute count of items that failed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    /// Explicit percent 0–100; overrides the percent derived from counts.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_item: Option<String>,
    /// JSON merge patch (RFC 7386) applied to the job's metadata.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Appended to the job's bounded error log.
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A refused change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobRuleError {
    #[error("job is {from}; it cannot become {to}")]
    IllegalTransition { from: JobStatus, to: JobStatus },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The change would make the stored job larger than its bound.
    #[error("{field}: {message}")]
    TooLarge { field: &'static str, message: String },
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Job {
    /// Moves the job to `to`, keeping the timestamps true to the lifecycle.
    pub fn transition(&mut self, to: JobStatus, now: i64) -> Result<(), JobRuleError> {
        if !self.status.can_become(to) {
            return Err(JobRuleError::IllegalTransition { from: self.status, to });
        }
        if to == JobStatus::Running && self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if to.is_terminal() {
            self.finished_at = Some(now);
            if to == JobStatus::Completed && !self.progress_reported {
                self.progress = 100.0;
            }
        }
        self.status = to;
        Ok(())
    }

    /// Applies a worker's report. Validates everything before changing anything,
    /// so a refused report leaves the job as it was.
    pub fn apply_report(&mut self, r: &ProgressReport, now: i64) -> Result<(), JobRuleError> {
        if let Some(p) = r.progress {
            if !(0.0..=100.0).contains(&p) || p.is_nan() {
                return Err(JobRuleError::Invalid { field: "progress", message: "must be between 0 and 100".into() });
            }
        }
        if let Some(m) = &r.metadata {
            if !(m.is_object() || m.is_null()) {
                return Err(JobRuleError::Invalid {
                    field: "metadata",
                    message: "must be a JSON object (a merge patch)".into(),
                });
            }
        }
        let mut next = self.clone();
        if let Some(to) = r.status {
            next.transition(to, now)?;
        } else if self.status.is_terminal() {
            // Counts or stage on a finished job would rewrite history.
            return Err(JobRuleError::IllegalTransition { from: self.status, to: self.status });
        } else if self.status == JobStatus::Stalled {
            // A report from a stalled job's worker means it is alive again.
            next.transition(JobStatus::Running, now)?;
        }
        if let Some(t) = r.total {
            next.total = Some(t);
        }
        if r.succeeded.is_some() || r.failed.is_some() {
            next.counts_reported = true;
        }
        if let Some(s) = r.succeeded {
            next.succeeded = s;
        }
        if let Some(f) = r.failed {
            next.failed = f;
        }
        if let Some(p) = r.progress {
            next.progress = p;
            next.progress_reported = true;
        } else if !next.progress_reported {
            next.progress = next.derived_progress();
        }
        if next.status == JobStatus::Completed && !next.progress_reported {
            next.progress = 100.0;
        }
        if let Some(s) = &r.stage {
            next.stage = Some(s.clone());
        }
        if let Some(c) = &r.current_item {
            next.current_item = Some(c.clone());
        }
        if let Some(patch) = &r.metadata {
            merge_patch(&mut next.metadata, patch);
            // A job stored larger than the limit (created so, or before it
            // existed) may still shrink; it may not grow.
            let size = json_size(&next.metadata);
            if size > METADATA_LIMIT && size > json_size(&self.metadata) {
                return Err(JobRuleError::TooLarge {
                    field: "metadata",
                    message: format!(
                        "with this patch the job's metadata would be {size} bytes; \
                         the limit is {METADATA_LIMIT} bytes (a patch can remove keys with null)"
                    ),
                });
            }
        }
        if let Some(e) = &r.error {
            next.push_error(e.clone(), now);
        }
        next.touch(now);
        *self = next;
        Ok(())
    }

    /// Percent from counts: (succeeded + failed) / total, rounded to 0.01.
    pub fn derived_progress(&self) -> f64 {
        match self.total {
            Some(t) if t > 0 => {
                // Counts are the caller's numbers: their sum must not overflow.
                let done = self.succeeded.saturating_add(self.failed).min(t) as f64;
                (done * 10000.0 / t as f64).round() / 100.0
            }
            _ => self.progress,
        }
    }

    /// Appends to the error log, which keeps at most [`ERROR_LOG_LIMIT`]
    /// entries and [`ERROR_LOG_BYTES`] of messages (the oldest go first), each
    /// message cut to [`ERROR_MESSAGE_LIMIT`].
    pub fn push_error(&mut self, mut message: String, now: i64) {
        if message.len() > ERROR_MESSAGE_LIMIT {
            const MARK: &str = "…";
            let mut cut = ERROR_MESSAGE_LIMIT - MARK.len();
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(MARK);
        }
        self.errors.push(JobError { at: now, message });
        let mut bytes: usize = self.errors.iter().map(|e| e.message.len()).sum();
        let mut excess = self.errors.len().saturating_sub(ERROR_LOG_LIMIT);
        for e in &self.errors[..excess] {
            bytes -= e.message.len();
        }
        while bytes > ERROR_LOG_BYTES && excess + 1 < self.errors.len() {
            bytes -= self.errors[excess].message.len();
            excess += 1;
        }
        self.errors.drain(..excess);
    }

    /// Records that the job changed: a new version and update time.
    pub fn touch(&mut self, now: i64) {
        self.version += 1;
        self.updated_at = now.max(self.updated_at);
    }

    /// Recomputes counts from the job's tasks, unless the worker reports counts itself.
    pub fn follow_tasks(&mut self, total: u64, succeeded: u64, failed: u64) {
        if self.counts_reported {
            return;
        }
        self.total = Some(total.max(self.total.unwrap_or(0)));
        self.succeeded = succeeded;
        self.failed = failed;
        if !self.progress_reported {
            self.progress = self.derived_progress();
        }
    }
}

/// The length of a value serialized as compact JSON, counted without building the text.
pub fn json_size(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: "j".into(),
            tenant: "t".into(),
            owner: None,
            kind: None,
            title: None,
            status: JobStatus::Queued,
            total: Some(20),
            succeeded: 0,
            failed: 0,
            progress: 0.0,
            stage: None,
            current_item: None,
            metadata: serde_json::json!({}),
            errors: vec![],
            created_at: 1,
            started_at: None,
            updated_at: 1,
            finished_at: None,
            version: 1,
            counts_reported: false,
            progress_reported: false,
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for t in [JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled] {
            for to in [JobStatus::Queued, JobStatus::Running, JobStatus::Stalled, JobStatus::Completed] {
                assert!(!t.can_become(to), "{t} -> {to}");
            }
        }
        assert!(JobStatus::Running.can_become(JobStatus::Stalled));
        assert!(JobStatus::Stalled.can_become(JobStatus::Running));
        assert!(!JobStatus::Queued.can_become(JobStatus::Completed));
    }

    #[test]
    fn report_derives_percent_and_stamps_times() {
        let mut j = job();
        let r = ProgressReport {
            status: Some(JobStatus::Running),
            succeeded: Some(4),
            failed: Some(1),
            ..Default::default()
        };
        j.apply_report(&r, 10).unwrap();
        assert_eq!(j.progress, 25.0);
        assert_eq!(j.started_at, Some(10));
        assert_eq!(j.version, 2);
        j.apply_report(&ProgressReport { status: Some(JobStatus::Completed), ..Default::default() }, 20).unwrap();
        assert_eq!(j.progress, 100.0);
        assert_eq!(j.finished_at, Some(20));
    }

    #[test]
    fn refused_report_changes_nothing() {
        let mut j = job();
        let before = j.clone();
        let r = ProgressReport { status: Some(JobStatus::Completed), succeeded: Some(3), ..Default::default() };
        assert!(matches!(j.apply_report(&r, 5), Err(JobRuleError::IllegalTransition { .. })));
        assert_eq!(j, before);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let mut j = job();
        let r = ProgressReport { succeeded: Some(u64::MAX), failed: Some(u64::MAX), ..Default::default() };
        j.apply_report(&r, 5).unwrap();
        assert_eq!(j.progress, 100.0);
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &serde_json::json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(v, serde_json::json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }

    #[test]
    fn metadata_may_not_grow_past_the_limit_but_may_shrink() {
        let mut j = job();
        let chunk = "x".repeat(20 * 1024);
        let patch = |k: &str, v: serde_json::Value| ProgressReport {
            metadata: Some(serde_json::json!({ k: v })),
            ..Default::default()
        };
        for k in ["a", "b", "c"] {
            j.apply_report(&patch(k, chunk.clone().into()), 5).unwrap();
        }
        let before = j.clone();
        let err = j.apply_report(&patch("d", chunk.clone().into()), 6).unwrap_err();
        let JobRuleError::TooLarge { field, message } = &err else { panic!("{err}") };
        assert_eq!(*field, "metadata");
        assert!(message.contains("65536"), "{message}");
        assert_eq!(j, before, "a refused patch changes nothing");
        // A job already over the limit (stored so earlier) may shrink, and other reports still work.
        j.metadata["big"] = "y".repeat(100 * 1024).into();
        j.apply_report(&ProgressReport { stage: Some("s".into()), ..Default::default() }, 7).unwrap();
        j.apply_report(&patch("a", serde_json::Value::Null), 8).unwrap();
        assert!(j.apply_report(&patch("e", "z".into()), 9).is_err(), "still over the limit, growing");
        j.apply_report(&patch("big", serde_json::Value::Null), 10).unwrap();
        j.apply_report(&patch("e", "z".into()), 11).unwrap();
        assert!(json_size(&j.metadata) <= METADATA_LIMIT);
        assert_eq!(json_size(&j.metadata), serde_json::to_string(&j.metadata).unwrap().len());
    }

    #[test]
    fn the_error_log_is_bounded_in_entries_and_bytes() {
        let mut j = job();
        for i in 0..100 {
            j.push_error(format!("e{i}"), i);
        }
        assert_eq!(j.errors.len(), ERROR_LOG_LIMIT);
        assert_eq!(j.errors[0].message, "e50");
        for i in 0..20 {
            j.push_error(format!("{i}{}", "é".repeat(ERROR_MESSAGE_LIMIT)), 200 + i);
        }
        let bytes: usize = j.errors.iter().map(|e| e.message.len()).sum();
        assert!(bytes <= ERROR_LOG_BYTES, "{bytes}");
        let last = j.errors.last().unwrap();
        assert!(last.message.starts_with("19") && last.message.ends_with('…'), "the newest stays");
        assert!(last.message.len() <= ERROR_MESSAGE_LIMIT);
    }
}
