//! Worker API (create, progress, tasks, artifacts), cancelling a job, and job reads.

use super::error::{ApiError, ErrorBody};
use super::extract::{check_id, idempotency_key, optional_json_body, Auth, JsonBody, Path, Query};
use crate::app::AppState;
use crate::auth::{can_write_jobs, Principal};
use crate::model::job::ProgressReport;
use crate::model::requests::{CreateJob, NewArtifact};
use crate::model::task::TaskUpsert;
use crate::model::{Artifact, Job, JobStatus, Task};
use crate::rules::{Command, NewJob, Reply};
use crate::store::JobFilter;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest free-text field (title, stage, current item, error), in bytes.
pub const MAX_TEXT: usize = 4096;

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    #[param(value_type = Option<JobStatus>)]
    pub status: Option<String>,
    pub kind: Option<String>,
    pub owner: Option<String>,
    /// RFC 3339; only jobs updated after this instant.
    #[param(format = DateTime)]
    pub updated_after: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^-?[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// Longest reason a cancellation may give, in bytes.
pub const MAX_CANCEL_REASON: usize = 1024;

/// Body of `POST /v1/jobs/{id}/cancel` (the body itself is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "customer asked to stop"}))]
pub struct CancelJob {
    /// Why the job is cancelled: recorded in the job's error log (at most 1024 bytes).
    #[schema(max_length = 1024, example = "customer asked to stop")]
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<Artifact>,
}

fn text(field: &str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    match v {
        Some(s) if s.len() > max => Err(ApiError::invalid_field(field, format!("must be at most {max} bytes"))),
        _ => Ok(()),
    }
}

/// Turns a store reply into 201 or 200 with its body.
pub fn reply_response(reply: Reply) -> Response {
    let status = if reply.created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(reply.body)).into_response()
}

fn require_writer(p: &Principal) -> Result<(), ApiError> {
    if can_write_jobs(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("role {} may not write jobs", p.role.as_str())))
    }
}

/// Loads a job the caller may see; anything else is 404 so existence does not leak.
pub async fn visible_job(s: &AppState, p: &Principal, id: &str) -> Result<Job, ApiError> {
    check_id("job id", id)?;
    // Access is decided on the indexed owner column before any document is
    // loaded, so a 404 takes the same time whatever the job's size.
    let visible = match s.store.job_owner(&p.tenant, id).await? {
        Some(owner) => p.job_visibility().allows(owner.as_deref()),
        None => false,
    };
    let job = if visible { s.store.job(&p.tenant, id).await? } else { None };
    job.ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

/// Runs a write with the request's idempotency key.
async fn write(
    s: &AppState,
    p: &Principal,
    headers: &HeaderMap,
    path: &str,
    digest: &str,
    cmd: Command,
) -> Result<Response, ApiError> {
    let method = if path.contains("/tasks/") { "PUT" } else { "POST" };
    let idem = idempotency_key(headers, p, method, path, digest)?;
    Ok(reply_response(s.write(&p.tenant, cmd, idem).await?))
}

#[utoipa::path(post, path = "/v1/jobs",
    summary = "Create a job",
    description = "Creates a job in the caller's tenant, optionally with its tasks (up to 10,000), and announces it (`job.created`) to `jobs`, `jobs:owner:<owner>` and `job:<id>`. Without `id` one is generated. Sending the same id again with the same body answers the existing job (200); with a different body, 409 `conflict`. Workers, services and admins; safe to retry with `Idempotency-Key`.", request_body = CreateJob, tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    responses((status = 201, description = "Created", body = Job), (status = 200, description = "Same id and body again: the existing job", body = Job),
        (status = 409, description = "Same id, different body", body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 403, description = "Customers may not write jobs", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_job(
    State(s): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: JsonBody<CreateJob>,
) -> Result<Response, ApiError> {
    require_writer(&p)?;
    let b = body.value;
    if let Some(id) = &b.id {
        crate::model::ids::validate_id(id).map_err(|m| ApiError::invalid_field("id", m))?;
    }
    if let Some(o) = &b.owner {
        crate::model::ids::validate_id(o).map_err(|m| ApiError::invalid_field("owner", m))?;
    }
    text("kind", &b.kind, 256)?;
    text("title", &b.title, MAX_TEXT)?;
    let tasks = b.tasks.unwrap_or_default();
    if tasks.len() > 10_000 {
        return Err(ApiError::invalid_field("tasks", "at most 10000 tasks at creation"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tasks.iter().enumerate() {
        text(&format!("tasks[{i}].name"), &t.name, MAX_TEXT)?;
        if let Some(id) = &t.id {
            if !seen.insert(id.as_str()) {
                return Err(ApiError::invalid_field(&format!("tasks[{i}].id"), format!("{id} appears twice")));
            }
        }
    }
    let cmd = Command::CreateJob(NewJob {
        id: b.id,
        owner: b.owner,
        kind: b.kind,
        title: b.title,
        total: b.total,
        status: b.status,
        metadata: b.metadata,
        tasks,
    });
    write(&s, &p, &headers, "/v1/jobs", &body.digest, cmd).await
}

#[utoipa::path(post, path = "/v1/jobs/{id}/progress",
    summary = "Report progress",
    description = "A worker's report: status change, absolute counts, explicit percent, stage, current item, a metadata merge patch, an error for the job's log. Absent fields are left alone; every report also resets the stall timer. Illegal status moves (e.g. out of `completed`) are 409 `illegal_transition`; a job grown past its size bound is 413 `job_too_large`. Safe to retry with `Idempotency-Key`.", request_body = ProgressReport, tag = "jobs",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition", body = ErrorBody),
        (status = 403, description = "Customers may not write jobs", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn report_progress(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<ProgressReport>,
) -> Result<Response, ApiError> {
    require_writer(&p)?;
    check_id("job id", &id)?;
    let r = body.value;
    text("stage", &r.stage, MAX_TEXT)?;
    text("current_item", &r.current_item, MAX_TEXT)?;
    text("error", &r.error, MAX_TEXT * 4)?;
    let path = format!("/v1/jobs/{id}/progress");
    write(&s, &p, &headers, &path, &body.digest, Command::ReportProgress { job_id: id, report: r }).await
}

#[utoipa::path(put, path = "/v1/jobs/{id}/tasks/{task_id}",
    summary = "Create or update a task",
    description = "Upserts one task of a job (201 when created, 200 when updated): name, status, error. The job's counts and progress follow its tasks. A finished job's tasks cannot change (409 `job_finished`).", request_body = TaskUpsert, tag = "jobs",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"), ("task_id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 403, description = "Customers may not write jobs", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upsert_task(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody<TaskUpsert>,
) -> Result<Response, ApiError> {
    require_writer(&p)?;
    check_id("job id", &id)?;
    check_id("task id", &task_id)?;
    let u = body.value;
    if u.id.as_ref().is_some_and(|b| *b != task_id) {
        return Err(ApiError::invalid_field("id", "differs from the task id in the path"));
    }
    text("name", &u.name, MAX_TEXT)?;
    text("error", &u.error, MAX_TEXT * 4)?;
    let path = format!("/v1/jobs/{id}/tasks/{task_id}");
    write(&s, &p, &headers, &path, &body.digest, Command::UpsertTask { job_id: id, task_id, upsert: u }).await
}

#[utoipa::path(post, path = "/v1/jobs/{id}/artifacts",
    summary = "Attach an artifact",
    description = "Adds an output of the job — a screenshot URL, OCR text, a label, any JSON — announced as `artifact.created` to the job's watchers. Payloads are bounded by the request body limit.", request_body = NewArtifact, tag = "jobs",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Artifact), (status = 404, body = ErrorBody), (status = 403, description = "Customers may not write jobs", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_artifact(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<NewArtifact>,
) -> Result<Response, ApiError> {
    require_writer(&p)?;
    check_id("job id", &id)?;
    let a = body.value;
    if a.kind.is_empty() || a.kind.len() > 256 {
        return Err(ApiError::invalid_field("kind", "must be 1 to 256 bytes"));
    }
    let path = format!("/v1/jobs/{id}/artifacts");
    write(&s, &p, &headers, &path, &body.digest, Command::AddArtifact { job_id: id, kind: a.kind, payload: a.payload })
        .await
}

fn require_canceller(p: &Principal) -> Result<(), ApiError> {
    if crate::auth::can_cancel_jobs(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("role {} may not cancel jobs", p.role.as_str())))
    }
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    summary = "Cancel a job",
    description = "Moves a queued, running or stalled job to `cancelled` through the normal write path: \
        `finished_at` is set, a `job.cancelled` event goes to everyone watching the job, and the error log \
        records who cancelled it and why (`cancelled by <sub>: <reason>`). The worker's next write to the job \
        is refused (409). For staff, admins, workers and services of the job's tenant; customers get 403. \
        The body is optional (none, empty or `null`: no reason). A finished job answers 409 `illegal_transition`.",
    request_body(content = Option<CancelJob>, description = "Optional: `{\"reason\": \"...\"}`",
        example = json!({"reason": "customer asked to stop"})),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "The cancelled job", body = Job), (status = 404, body = ErrorBody),
        (status = 409, description = "The job is already finished (`illegal_transition`)", body = ErrorBody),
        (status = 403, description = "Customers may not cancel jobs", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    require_canceller(&p)?;
    check_id("job id", &id)?;
    let headers = req.headers().clone();
    let (body, digest) = optional_json_body::<CancelJob>(&s, req).await?;
    text("reason", &body.reason, MAX_CANCEL_REASON)?;
    // Another tenant's job, or one this caller may not see, is not found.
    visible_job(&s, &p, &id).await?;
    let error = match body.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => format!("cancelled by {}: {r}", p.sub),
        _ => format!("cancelled by {}", p.sub),
    };
    let report = ProgressReport { status: Some(JobStatus::Cancelled), error: Some(error), ..Default::default() };
    let path = format!("/v1/jobs/{id}/cancel");
    write(&s, &p, &headers, &path, &digest, Command::ReportProgress { job_id: id, report }).await
}

#[utoipa::path(get, path = "/v1/jobs",
    summary = "List jobs",
    description = "The jobs the caller may see, newest first: the whole tenant for staff, admins, workers and services; only their own for customers. Filter by status, kind, owner and update time; page with `before` = the previous page's `next_cursor`.", tag = "jobs", params(ListJobs),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_jobs(
    State(s): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<ListJobs>,
) -> Result<Json<JobList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|v| {
            JobStatus::parse(v)
                .ok_or_else(|| ApiError::bad_request("invalid_query", format!("status: unknown status {v:?}")))
        })
        .transpose()?;
    let updated_after = q
        .updated_after
        .as_deref()
        .map(|v| {
            crate::model::time::parse_rfc3339(v)
                .ok_or_else(|| ApiError::bad_request("invalid_query", "updated_after: expected an RFC 3339 timestamp"))
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| ApiError::bad_request("invalid_query", "cursor: not a cursor from this API"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit: must be 1 to 500"));
    }
    let filter = JobFilter { status, kind: q.kind, owner: q.owner, updated_after, before, limit };
    let page = s.store.jobs(&p.tenant, &p.job_visibility(), filter).await?;
    Ok(Json(JobList { jobs: page.items, next_cursor: page.next_cursor.map(|c| c.to_string()) }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}",
    summary = "Get a job",
    description = "One job as stored now, with counts, progress, stage and its error log. A customer asking for another customer's job gets 404, as for a job that does not exist.", tag = "jobs", params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_job(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(visible_job(&s, &p, &id).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tasks",
    summary = "List a job's tasks",
    description = "Every task of a job, in creation order, with status and error.", tag = "jobs", params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = TaskList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_tasks(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<TaskList>, ApiError> {
    visible_job(&s, &p, &id).await?;
    Ok(Json(TaskList { tasks: s.store.tasks(&p.tenant, &id).await? }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts",
    summary = "List a job's artifacts",
    description = "Every artifact of a job, oldest first.", tag = "jobs", params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = ArtifactList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_artifacts(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<ArtifactList>, ApiError> {
    visible_job(&s, &p, &id).await?;
    Ok(Json(ArtifactList { artifacts: s.store.artifacts(&p.tenant, &id).await? }))
}
