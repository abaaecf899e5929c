//! `herald job ...` and `herald notify`: the worker API for shell scripts and
//! cron jobs, through the Rust SDK (`herald-client`): retries under one
//! idempotency key, Herald's error codes mapped to exit codes a script can
//! branch on, `--json` for the server's answer as is.

use clap::{Args, Subcommand};
use herald_client::{
    Client, CreateJob, CreateNotification, Error, JobStatus, Level, NewArtifact, ProgressReport, Retry, TaskStatus,
    TaskUpsert,
};
use serde_json::Value;
use std::time::Duration;

/// Where the server is and who is asking; shared by every worker command.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Server URL.
    #[arg(long, global = true, env = "HERALD_URL", default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// A worker API key (`hk_...`) or a JWT (required).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print Herald's answer (or error) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to retry while Herald is unreachable or restarting (e.g. 30s, 0 for no retry).
    #[arg(long, global = true, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub retry_for: Duration,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Create a job (the same id and body again is a no-op).
    Create {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        title: Option<String>,
        /// The `sub` of the customer who may watch it.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        total: Option<u64>,
        /// queued (default) or running.
        #[arg(long, value_parser = job_status)]
        status: Option<JobStatus>,
        /// A JSON object.
        #[arg(long, value_parser = json_object)]
        metadata: Option<Value>,
    },
    /// Report progress: counts are absolute, the percent follows them unless given.
    Progress {
        id: String,
        #[arg(long, value_parser = job_status)]
        status: Option<JobStatus>,
        #[arg(long)]
        succeeded: Option<u64>,
        #[arg(long)]
        failed: Option<u64>,
        #[arg(long)]
        total: Option<u64>,
        /// An explicit percent, 0-100.
        #[arg(long)]
        percent: Option<f64>,
        #[arg(long)]
        stage: Option<String>,
        /// The item being worked on.
        #[arg(long)]
        item: Option<String>,
        /// A JSON merge patch for the job's metadata.
        #[arg(long, value_parser = json_object)]
        metadata: Option<Value>,
        /// A line for the job's error log.
        #[arg(long)]
        error: Option<String>,
    },
    /// Create or change a task of the job.
    Task {
        id: String,
        task_id: String,
        /// pending, running, succeeded, failed or skipped.
        #[arg(long, value_parser = task_status)]
        status: TaskStatus,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        error: Option<String>,
    },
    /// Record something the job produced.
    Artifact {
        id: String,
        /// screenshot, ocr, label...
        #[arg(long)]
        kind: String,
        /// Any JSON.
        #[arg(long, value_parser = json_value)]
        payload: Value,
    },
    /// Mark the job completed.
    Complete { id: String },
    /// Mark the job failed, with the reason.
    Fail {
        id: String,
        #[arg(long)]
        error: String,
    },
    /// Print the job.
    Show { id: String },
}

/// `herald notify`.
#[derive(Args, Debug)]
pub struct NotifyArgs {
    /// The `sub` it is for.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub title: String,
    #[arg(long)]
    pub body: Option<String>,
    /// info, success, warning or error.
    #[arg(long, default_value = "info", value_parser = level)]
    pub level: Level,
    #[arg(long)]
    pub link: Option<String>,
}

/// Exit codes, documented in docs/SDKS.md.
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything else (a bug, an answer that does not parse).
    pub const OTHER: i32 = 1;
    // 2 is clap's: the command line is wrong.
    /// 401/403: the token is refused or may not do this.
    pub const UNAUTHORIZED: i32 = 3;
    /// 404: no such job (or not yours).
    pub const NOT_FOUND: i32 = 4;
    /// 409: an illegal transition, a finished job, a conflicting create.
    pub const CONFLICT: i32 = 5;
    /// 400/413/422: Herald refused the input.
    pub const INVALID: i32 = 6;
    /// Herald could not be reached (or kept failing) for the whole `--retry-for`.
    pub const UNREACHABLE: i32 = 7;
}

/// The exit code of an error.
pub fn exit_code(e: &Error) -> i32 {
    match e.status() {
        Some(401 | 403) => exit::UNAUTHORIZED,
        Some(404) => exit::NOT_FOUND,
        Some(409) => exit::CONFLICT,
        Some(400 | 413 | 415 | 422) => exit::INVALID,
        Some(s) if s >= 500 || s == 408 || s == 429 => exit::UNREACHABLE,
        _ if e.code() == "network" => exit::UNREACHABLE,
        _ => exit::OTHER,
    }
}

fn client(c: &Connection) -> Result<Client, Error> {
    let retry = if c.retry_for.is_zero() { Retry::none() } else { Retry { budget: c.retry_for, ..Retry::default() } };
    Client::builder(&c.url, c.token.as_deref().unwrap_or_default()).retry(retry).build()
}

/// A command line that cannot work: clap's exit code, 2.
fn usage_error(c: &Connection) -> Option<i32> {
    if c.token.as_deref().is_none_or(str::is_empty) {
        eprintln!("herald: no token: give --token or set HERALD_TOKEN (a worker API key or a JWT)");
        return Some(2);
    }
    None
}

/// Runs a `job` command; returns the process's exit code.
pub async fn job(c: &Connection, cmd: JobCmd) -> i32 {
    if let Some(code) = usage_error(c) {
        return code;
    }
    let result = match client(c) {
        Ok(client) => run_job(&client, cmd).await,
        Err(e) => Err(e),
    };
    finish(c, result)
}

/// Runs `notify`; returns the process's exit code.
pub async fn notify(c: &Connection, args: NotifyArgs) -> i32 {
    if let Some(code) = usage_error(c) {
        return code;
    }
    let n = CreateNotification {
        recipient: args.to,
        level: args.level,
        title: args.title,
        body: args.body,
        link: args.link,
    };
    let result = match client(c) {
        Ok(client) => client.notify(&n).await.map(|n| (to_value(&n), format!("notified {} ({})", n.recipient, n.id))),
        Err(e) => Err(e),
    };
    finish(c, result)
}

async fn run_job(client: &Client, cmd: JobCmd) -> Result<(Value, String), Error> {
    let job_line = |j: &herald_client::Job| {
        let counts = match j.total {
            Some(t) => format!("{}/{} ({:.0}%)", j.succeeded.saturating_add(j.failed), t, j.progress),
            None => format!("{:.0}%", j.progress),
        };
        format!("job {} {} {counts}", j.id, j.status.as_str())
    };
    match cmd {
        JobCmd::Create { id, title, owner, kind, total, status, metadata } => {
            let job = CreateJob { id, kind, title, owner, total, status, metadata, tasks: None };
            client.create_job(&job).await.map(|j| (to_value(&j), job_line(&j)))
        }
        JobCmd::Progress { id, status, succeeded, failed, total, percent, stage, item, metadata, error } => {
            let report = ProgressReport {
                status,
                total,
                succeeded,
                failed,
                progress: percent,
                stage,
                current_item: item,
                metadata,
                error,
            };
            client.report(&id, &report).await.map(|j| (to_value(&j), job_line(&j)))
        }
        JobCmd::Task { id, task_id, status, name, error } => {
            let task = TaskUpsert { id: None, name, status: Some(status), error };
            client
                .put_task(&id, &task_id, &task)
                .await
                .map(|t| (to_value(&t), format!("task {}/{} {}", t.job_id, t.id, t.status.as_str())))
        }
        JobCmd::Artifact { id, kind, payload } => client
            .add_artifact(&id, &NewArtifact { kind, payload })
            .await
            .map(|a| (to_value(&a), format!("artifact {} ({}) of job {}", a.id, a.kind, a.job_id))),
        JobCmd::Complete { id } => {
            let report = ProgressReport { status: Some(JobStatus::Completed), ..ProgressReport::default() };
            client.report(&id, &report).await.map(|j| (to_value(&j), job_line(&j)))
        }
        JobCmd::Fail { id, error } => {
            let report =
                ProgressReport { status: Some(JobStatus::Failed), error: Some(error), ..ProgressReport::default() };
            client.report(&id, &report).await.map(|j| (to_value(&j), job_line(&j)))
        }
        JobCmd::Show { id } => client.job(&id).await.map(|j| (to_value(&j), job_line(&j))),
    }
}

/// Prints the answer (a line, or the JSON with `--json`) or the error; the exit code.
fn finish(c: &Connection, result: Result<(Value, String), Error>) -> i32 {
    match result {
        Ok((json, line)) => {
            if c.json {
                println!("{json}");
            } else {
                println!("{line}");
            }
            exit::OK
        }
        Err(e) => {
            if c.json {
                println!("{}", serde_json::json!({ "error": { "code": e.code(), "message": e.to_string() } }));
            }
            eprintln!("herald: {e}");
            exit_code(&e)
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn job_status(s: &str) -> Result<JobStatus, String> {
    JobStatus::parse(s).ok_or_else(|| format!("{s:?}: use queued, running, stalled, completed, failed or cancelled"))
}

fn task_status(s: &str) -> Result<TaskStatus, String> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: use pending, running, succeeded, failed or skipped"))
}

fn level(s: &str) -> Result<Level, String> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: use info, success, warning or error"))
}

fn json_value(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn json_object(s: &str) -> Result<Value, String> {
    match json_value(s)? {
        v @ Value::Object(_) => Ok(v),
        _ => Err("must be a JSON object".into()),
    }
}
