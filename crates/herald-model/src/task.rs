//! A task: one item of a job (a directory submission, a scan target, an agent step).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub id: String,
    pub job_id: String,
    pub name: Option<String>,
    pub status: TaskStatus,
    /// How many times the task has been started.
    pub attempts: u32,
    pub error: Option<String>,
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
}

/// Body of `PUT /v1/jobs/{id}/tasks/{task_id}` (and of tasks given at job creation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "/pricing", "status": "failed", "error": "timed out after 30 s"})))]
pub struct TaskUpsert {
    /// Only used when tasks are given inline at job creation.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Task {
    pub fn new(id: String, job_id: String, now: i64) -> Task {
        Task {
            id,
            job_id,
            name: None,
            status: TaskStatus::Pending,
            attempts: 0,
            error: None,
            created_at: now,
            started_at: None,
            updated_at: now,
            finished_at: None,
        }
    }

    /// Applies an upsert; returns whether anything changed.
    pub fn apply(&mut self, u: &TaskUpsert, now: i64) -> bool {
        let before = self.clone();
        if let Some(n) = &u.name {
            self.name = Some(n.clone());
        }
        if let Some(s) = u.status {
            if s == TaskStatus::Running && self.status != TaskStatus::Running {
                self.attempts += 1;
                self.started_at = Some(now);
                self.finished_at = None;
            }
            if s.is_finished() && !self.status.is_finished() {
                self.finished_at = Some(now);
            }
            self.status = s;
        }
        if let Some(e) = &u.error {
            self.error = Some(e.clone());
        }
        let changed = *self != before;
        if changed {
            self.updated_at = now;
        }
        changed
    }
}
