//! The HTTP API, one call per operation, each retried with backoff under one
//! `Idempotency-Key`: a retry after a lost answer is answered from the
//! server's record, so a report is never counted twice.

use crate::error::{Error, Result};
use crate::stream::{Appended, ChunkPage, StreamInfo};
use herald_model::{
    Artifact, CreateJob, CreateNotification, Job, NewArtifact, Notification, Position, ProgressReport, Task,
    TaskUpsert, WireEvent,
};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How requests are retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// First wait; doubles with each attempt, with ±50 % jitter.
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// Longest a request is retried before it fails with [`Error::GaveUp`]:
    /// long enough to ride out a server restart.
    pub budget: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(120),
        }
    }
}

impl Retry {
    /// No retries: the first failure is the answer.
    pub fn none() -> Retry {
        Retry { budget: Duration::ZERO, ..Retry::default() }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

/// A client of one Herald server, cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    token: String,
    retry: Retry,
    /// Longest one attempt may take.
    timeout: Duration,
}

/// Options of a [`Client`].
pub struct ClientBuilder {
    base: String,
    token: String,
    retry: Retry,
    timeout: Duration,
}

impl ClientBuilder {
    /// How requests are retried (default: [`Retry::default`]).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Longest one attempt may take (default 15 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Result<Client> {
        let base = self.base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!("the server URL must start with http:// or https://, got {base:?}")));
        }
        if self.token.is_empty() {
            return Err(Error::Invalid("a token is required (a JWT or a worker API key)".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let inner = Inner { http, base, token: self.token, retry: self.retry, timeout: self.timeout };
        Ok(Client { inner: Arc::new(inner) })
    }
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<WireEvent>,
    /// The `since` of the next page.
    pub next: Position,
    /// `since` was older than retention: reload state over the API, go on from `next`.
    pub resync: bool,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl Client {
    /// A client of the server at `url` (`http://127.0.0.1:8080`) with `token`:
    /// a JWT or a worker API key (`hk_...`).
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Result<Client> {
        Client::builder(url, token).build()
    }

    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: url.into(),
            token: token.into(),
            retry: Retry::default(),
            timeout: Duration::from_secs(15),
        }
    }

    pub(crate) fn base(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn token(&self) -> &str {
        &self.inner.token
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn retry(&self) -> &Retry {
        &self.inner.retry
    }

    /// One attempt: Herald's answer, or its error as [`Error::Api`].
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
        extra_time: Duration,
    ) -> Result<T> {
        let mut req = self
            .inner
            .http
            .request(method.clone(), format!("{}{path}", self.inner.base))
            .bearer_auth(&self.inner.token)
            .timeout(self.inner.timeout + extra_time);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body.to_vec());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("an answer of {method} {path} did not parse: {e}")));
        }
        Err(api_error(status, &bytes))
    }

    /// A request with retries: network errors, 408, 429 and 5xx are retried
    /// with backoff until the budget is spent; writes carry one
    /// `Idempotency-Key` across their attempts.
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        self.request_waiting(method, path, body, Duration::ZERO).await
    }

    /// [`Client::request`] for a request the server may hold open for `wait`.
    async fn request_waiting<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        wait: Duration,
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Invalid(format!("the request body did not serialize: {e}")))?;
        self.request_bytes(method, path, body, wait).await
    }

    /// [`Client::request_waiting`] with a body already serialized as JSON.
    pub(crate) async fn request_bytes<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> Result<T> {
        let key = (method != Method::GET).then(|| uuid::Uuid::new_v4().simple().to_string());
        let started = Instant::now();
        let retry = &self.inner.retry;
        let mut attempt = 0u32;
        loop {
            let result = self.attempt(&method, path, body.as_deref(), key.as_deref(), wait).await;
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let wait = retry.delay(attempt);
            attempt += 1;
            if started.elapsed() + wait > retry.budget {
                if attempt == 1 {
                    return Err(err);
                }
                return Err(Error::GaveUp { attempts: attempt, elapsed: started.elapsed(), last: Box::new(err) });
            }
            tracing::debug!(%method, path, attempt, error = %err, ?wait, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// `POST /v1/jobs`: creates a job (the same id and body again returns it).
    pub async fn create_job(&self, job: &CreateJob) -> Result<Job> {
        self.request(Method::POST, "/v1/jobs", Some(job)).await
    }

    /// `POST /v1/jobs/{id}/progress`.
    pub async fn report(&self, job_id: &str, report: &ProgressReport) -> Result<Job> {
        self.request(Method::POST, &format!("/v1/jobs/{}/progress", segment(job_id)), Some(report)).await
    }

    /// `PUT /v1/jobs/{id}/tasks/{task_id}`.
    pub async fn put_task(&self, job_id: &str, task_id: &str, task: &TaskUpsert) -> Result<Task> {
        let path = format!("/v1/jobs/{}/tasks/{}", segment(job_id), segment(task_id));
        self.request(Method::PUT, &path, Some(task)).await
    }

    /// `POST /v1/jobs/{id}/artifacts`.
    pub async fn add_artifact(&self, job_id: &str, artifact: &NewArtifact) -> Result<Artifact> {
        self.request(Method::POST, &format!("/v1/jobs/{}/artifacts", segment(job_id)), Some(artifact)).await
    }

    /// `POST /v1/notifications`.
    pub async fn notify(&self, notification: &CreateNotification) -> Result<Notification> {
        self.request(Method::POST, "/v1/notifications", Some(notification)).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, job_id: &str) -> Result<Job> {
        self.request(Method::GET, &format!("/v1/jobs/{}", segment(job_id)), None::<&()>).await
    }

    /// `GET /v1/jobs/{id}/tasks`.
    pub async fn tasks(&self, job_id: &str) -> Result<Vec<Task>> {
        #[derive(Deserialize)]
        struct Tasks {
            tasks: Vec<Task>,
        }
        let page: Tasks =
            self.request(Method::GET, &format!("/v1/jobs/{}/tasks", segment(job_id)), None::<&()>).await?;
        Ok(page.tasks)
    }

    /// `POST /v1/jobs/{id}/streams/{name}`: appends `chunks` (1 to 10,000 JSON
    /// values of at most 64 KiB each) to the job's output stream `stream`,
    /// created on first use, as one request retried under one
    /// `Idempotency-Key` (a retry never appends twice). Herald refuses a bad
    /// stream name, an empty or oversized append with `invalid_field` (422).
    /// To write chunk by chunk, use [`Reporter::stream`](crate::Reporter::stream),
    /// which batches them.
    pub async fn append_chunks(&self, job_id: &str, stream: &str, chunks: &[Value]) -> Result<Appended> {
        #[derive(Serialize)]
        struct Body<'a> {
            chunks: &'a [Value],
        }
        let path = format!("/v1/jobs/{}/streams/{}", segment(job_id), segment(stream));
        self.request(Method::POST, &path, Some(&Body { chunks })).await
    }

    /// `GET /v1/jobs/{id}/streams`: the job's output streams.
    pub async fn streams(&self, job_id: &str) -> Result<Vec<StreamInfo>> {
        #[derive(Deserialize)]
        struct Streams {
            streams: Vec<StreamInfo>,
        }
        let list: Streams =
            self.request(Method::GET, &format!("/v1/jobs/{}/streams", segment(job_id)), None::<&()>).await?;
        Ok(list.streams)
    }

    /// `GET /v1/jobs/{id}/streams/{name}`: up to `limit` chunks (1 to 10,000;
    /// a page also ends past 1 MiB) of the job's stream from `offset` on,
    /// oldest first. With a non-zero `wait` (at most 60 s) a read that would
    /// come back empty waits for the next append: call it in a loop with
    /// `offset = page.next` to follow a stream. A stream never appended to
    /// reads as empty (`end` 0).
    pub async fn read_stream(
        &self,
        job_id: &str,
        stream: &str,
        offset: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<ChunkPage> {
        let path = format!(
            "/v1/jobs/{}/streams/{}?offset={offset}&limit={limit}&wait={}",
            segment(job_id),
            segment(stream),
            wait.as_secs_f64()
        );
        self.request_waiting(Method::GET, &path, None::<&()>, wait).await
    }

    /// `GET /v1/events`: the log of `topics` after `since`, waiting up to
    /// `wait` (at most 60 s) when there is nothing yet.
    pub async fn events(&self, topics: &[&str], since: Position, limit: u32, wait: Duration) -> Result<EventPage> {
        let path = format!(
            "/v1/events?topic={}&since={}&limit={limit}&wait={}",
            topics.iter().map(|t| segment(t)).collect::<Vec<_>>().join(","),
            since.get(),
            wait.as_secs()
        );
        self.request_waiting(Method::GET, &path, None::<&()>, wait).await
    }
}

/// Herald's error body, or what the status says when there is none (a proxy's page).
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(e) => Error::Api { status: status.as_u16(), code: e.error.code, message: e.error.message },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: match status.as_u16() {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                408 | 504 => "timeout",
                429 => "rate_limited",
                s if s >= 500 => "unavailable",
                _ => "http_error",
            }
            .into(),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
        },
    }
}

/// Percent-encodes a path segment or a query value (ids are `A-Za-z0-9_-.:`
/// on the server, but a caller's typo should get Herald's `invalid_id`, not a
/// different URL).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
