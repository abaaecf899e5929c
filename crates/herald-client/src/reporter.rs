//! The worker side: a job's progress reported in order, bursts coalesced,
//! nothing lost while Herald restarts, nothing counted twice.
//!
//! Every call is queued and sent by one background task, in call order. While
//! a progress report waits (for its coalescing window, or because Herald is
//! unreachable and earlier requests are being retried), later progress of the
//! same job merges into it: latest values win, metadata merges key by key, and
//! two `error`s never share one report. Status changes, tasks, artifacts and
//! notifications are never merged or dropped; a progress report queued before
//! one is sent first, at once. The queue holds at most `capacity` requests;
//! when it is full a call that cannot merge fails with [`Error::QueueFull`]
//! and nothing is queued.
//!
//! Output streams ([`Reporter::stream`]) ride the same queue as batches: a
//! chunk joins its writer's newest unsent batch (up to
//! [`ReporterOptions::stream_batch`] chunks and 512 KiB), and a batch waits
//! at most [`ReporterOptions::stream_linger`] for more before it is sent as
//! one append. Progress and other streams' chunks commute with a batch (a
//! chunk may join a batch queued before them); any other request of the job
//! (a task, an artifact, a status change) is a barrier: chunks written after
//! it are sent after it. Each append is retried under its own
//! `Idempotency-Key`, so chunks arrive in order and once; after an append
//! fails for good, the writer's later chunks are refused rather than sent
//! past a hole.

use crate::client::{segment, Client};
use crate::error::{Error, Result};
use crate::stream::MAX_CHUNK_BYTES;
use herald_model::{CreateJob, CreateNotification, JobStatus, NewArtifact, ProgressReport, TaskStatus, TaskUpsert};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Options of a [`Reporter`].
#[derive(Debug, Clone)]
pub struct ReporterOptions {
    /// How long a progress report waits for more to merge into it; zero sends
    /// every call as its own request (coalescing off). Default 250 ms.
    pub coalesce: Duration,
    /// Most requests waiting to be sent. Default 10,000.
    pub capacity: usize,
    /// How long a batch of stream chunks ([`Reporter::stream`]) waits for
    /// more before it is sent as one append, when nothing is queued behind
    /// it. Default 100 ms; zero sends a batch as soon as the sender is free
    /// (chunks written meanwhile still join it).
    pub stream_linger: Duration,
    /// Most chunks in one append (1 to 10,000): a full batch is sent at once.
    /// Default 1,000.
    pub stream_batch: usize,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        ReporterOptions {
            coalesce: Duration::from_millis(250),
            capacity: 10_000,
            stream_linger: Duration::from_millis(100),
            stream_batch: 1_000,
        }
    }
}

impl ReporterOptions {
    /// [`ReporterOptions::stream_batch`] within what Herald takes.
    fn max_chunks(&self) -> usize {
        self.stream_batch.clamp(1, crate::stream::MAX_CHUNKS_PER_APPEND)
    }
}

/// Most bytes of chunks in one append: well under Herald's default 1 MiB
/// `--body-limit`, with room for any one chunk.
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Herald's answer to one queued request (the job, task, artifact or
/// notification as stored). `.await` it, or drop it: the request is sent
/// either way (so it is not a `Future` itself, which would have to be awaited).
/// Progress calls merged into one request share that request's answer.
#[must_use = "the request is sent either way; await the receipt to see Herald's answer"]
pub struct Receipt(watch::Receiver<Option<Result<Value>>>);

/// A [`Receipt`] being awaited.
pub type Answer = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;

impl IntoFuture for Receipt {
    type Output = Result<Value>;
    type IntoFuture = Answer;

    fn into_future(self) -> Answer {
        let mut rx = self.0;
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(answer) => answer.clone().unwrap_or(Err(Error::Closed)),
                // The sending task is gone without an answer.
                Err(_) => Err(Error::Closed),
            }
        })
    }
}

impl Receipt {
    fn failed(e: Error) -> Receipt {
        let (_, rx) = watch::channel(Some(Err(e)));
        Receipt(rx)
    }
}

/// What a job is when [`Reporter::job_started`] has to create it.
#[derive(Debug, Clone, Default)]
pub struct JobStart {
    pub title: Option<String>,
    pub kind: Option<String>,
    /// The `sub` of the customer who may watch it.
    pub owner: Option<String>,
    pub total: Option<u64>,
    pub stage: Option<String>,
    pub metadata: Option<Value>,
}

enum Request {
    Create(CreateJob),
    /// Marks the job running, creating it first when it does not exist.
    Start(String, JobStart),
    Progress(String, ProgressReport),
    /// A status change (completed, failed): a report that nothing merges into.
    Status(String, ProgressReport),
    Task(String, String, TaskUpsert),
    Artifact(String, NewArtifact),
    Notify(CreateNotification),
    /// Chunks of one stream writer, sent as one append.
    Chunks(Batch),
    /// Resolves once everything queued before it was sent.
    Flush,
}

/// Chunks gathered for one append.
struct Batch {
    writer: Arc<WriterShared>,
    /// The chunks' JSON, comma-separated: the inside of `"chunks": [...]`.
    json: String,
    count: usize,
}

impl Batch {
    fn fits(&self, chunk: &str, max_chunks: usize) -> bool {
        self.count < max_chunks && self.json.len() + 1 + chunk.len() <= MAX_BATCH_BYTES
    }

    /// No chunk fits any more: sent without waiting out the linger.
    fn full(&self, max_chunks: usize) -> bool {
        !self.fits("", max_chunks)
    }

    fn add(&mut self, chunk: &str) {
        if self.count > 0 {
            self.json.push(',');
        }
        self.json.push_str(chunk);
        self.count += 1;
    }
}

impl Request {
    fn job(&self) -> Option<&str> {
        match self {
            Request::Create(c) => c.id.as_deref(),
            Request::Start(j, _)
            | Request::Progress(j, _)
            | Request::Status(j, _)
            | Request::Task(j, _, _)
            | Request::Artifact(j, _) => Some(j),
            Request::Chunks(b) => Some(&b.writer.job),
            Request::Notify(_) | Request::Flush => None,
        }
    }
}

struct Queued {
    request: Request,
    at: Instant,
    /// Herald's answer, once sent; every receipt of the request watches it.
    answer: watch::Sender<Option<Result<Value>>>,
}

impl Queued {
    fn new(request: Request) -> (Queued, Receipt) {
        let (answer, rx) = watch::channel(None);
        (Queued { request, at: Instant::now(), answer }, Receipt(rx))
    }
}

struct Shared {
    /// Held for a few queue operations, never across an `.await`.
    queue: Mutex<State>,
    wake: Notify,
    opts: ReporterOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    queue: VecDeque<Queued>,
    closed: bool,
}

/// Reports jobs' progress to Herald. Cheap to clone; one background task
/// sends for all clones.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
}

impl Reporter {
    /// A reporter sending through `client`, with the default options. Call
    /// it inside a tokio runtime: it spawns its sending task.
    pub fn new(client: Client) -> Reporter {
        Reporter::with_options(client, ReporterOptions::default())
    }

    pub fn with_options(client: Client, opts: ReporterOptions) -> Reporter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(State { queue: VecDeque::new(), closed: false }),
            wake: Notify::new(),
            opts,
        });
        tokio::spawn(send_loop(client, Arc::clone(&shared)));
        Reporter { shared }
    }

    fn push(&self, request: Request) -> Receipt {
        let receipt = {
            let mut state = self.shared.lock();
            if state.closed {
                return Receipt::failed(Error::Closed);
            }
            if state.queue.len() >= self.shared.opts.capacity && !matches!(request, Request::Flush) {
                return Receipt::failed(Error::QueueFull(state.queue.len()));
            }
            let (queued, receipt) = Queued::new(request);
            state.queue.push_back(queued);
            receipt
        };
        self.shared.wake.notify_one();
        receipt
    }

    /// Creates a job (idempotent for the same id and body).
    pub fn create_job(&self, job: CreateJob) -> Receipt {
        self.push(Request::Create(job))
    }

    /// The job started: it becomes `running`, and is created first (with
    /// `start`'s title, kind, owner...) when Herald does not know it.
    pub fn job_started(&self, job_id: &str, start: JobStart) -> Receipt {
        self.push(Request::Start(job_id.to_string(), start))
    }

    /// A task of the job (a page, a submission, an agent step) started.
    pub fn task_started(&self, job_id: &str, task_id: &str, name: Option<&str>) -> Receipt {
        let task =
            TaskUpsert { name: name.map(str::to_string), status: Some(TaskStatus::Running), ..TaskUpsert::default() };
        self.push(Request::Task(job_id.to_string(), task_id.to_string(), task))
    }

    pub fn task_succeeded(&self, job_id: &str, task_id: &str) -> Receipt {
        let task = TaskUpsert { status: Some(TaskStatus::Succeeded), ..TaskUpsert::default() };
        self.push(Request::Task(job_id.to_string(), task_id.to_string(), task))
    }

    pub fn task_failed(&self, job_id: &str, task_id: &str, error: impl std::fmt::Display) -> Receipt {
        let task =
            TaskUpsert { status: Some(TaskStatus::Failed), error: Some(error.to_string()), ..TaskUpsert::default() };
        self.push(Request::Task(job_id.to_string(), task_id.to_string(), task))
    }

    /// Progress (counts, percent, stage, current item, metadata, an error
    /// line): merged with the job's progress still waiting to be sent.
    pub fn progress(&self, job_id: &str, report: ProgressReport) -> Receipt {
        let receipt = {
            let mut state = self.shared.lock();
            if state.closed {
                return Receipt::failed(Error::Closed);
            }
            let coalescing = !self.shared.opts.coalesce.is_zero();
            // The job's newest queued request, if it is progress, takes this one in
            // (stream chunks commute with progress: they are looked past).
            let target = state
                .queue
                .iter_mut()
                .rev()
                .find(|q| q.request.job() == Some(job_id) && !matches!(q.request, Request::Chunks(_)));
            if let Some(Queued { request: Request::Progress(_, pending), answer, .. }) = target {
                if coalescing && mergeable(pending, &report) {
                    merge(pending, report);
                    return Receipt(answer.subscribe());
                }
            }
            if state.queue.len() >= self.shared.opts.capacity {
                return Receipt::failed(Error::QueueFull(state.queue.len()));
            }
            let (queued, receipt) = Queued::new(Request::Progress(job_id.to_string(), report));
            state.queue.push_back(queued);
            receipt
        };
        self.shared.wake.notify_one();
        receipt
    }

    /// Records something the job produced (a screenshot URL, OCR text, a label).
    pub fn artifact(&self, job_id: &str, kind: &str, payload: Value) -> Receipt {
        self.push(Request::Artifact(job_id.to_string(), NewArtifact { kind: kind.to_string(), payload }))
    }

    /// Sends a notification to `notification.recipient`.
    pub fn notify(&self, notification: CreateNotification) -> Receipt {
        self.push(Request::Notify(notification))
    }

    pub fn job_completed(&self, job_id: &str) -> Receipt {
        self.status(job_id, JobStatus::Completed, None)
    }

    pub fn job_failed(&self, job_id: &str, error: impl std::fmt::Display) -> Receipt {
        self.status(job_id, JobStatus::Failed, Some(error.to_string()))
    }

    /// A status change: never merged with progress.
    fn status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Receipt {
        let report = ProgressReport { status: Some(status), error, ..ProgressReport::default() };
        self.push(Request::Status(job_id.to_string(), report))
    }

    /// Waits until everything queued so far was sent (or failed).
    pub async fn flush(&self) {
        let _ = self.push(Request::Flush).await;
    }

    /// Sends what is queued, then stops taking requests.
    pub async fn close(&self) {
        self.flush().await;
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Runs `work` as job `job_id`: started before, completed after, failed
    /// with the error's message if it returns `Err`. Herald's answer to the
    /// final status is awaited, so the job's state is stored on return.
    pub async fn run_job<F, Fut, T, E>(&self, job_id: &str, start: JobStart, work: F) -> Result<Result<T, E>>
    where
        F: FnOnce(Reporter) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.job_started(job_id, start).await?;
        let outcome = work(self.clone()).await;
        match &outcome {
            Ok(_) => self.job_completed(job_id).await?,
            Err(e) => self.job_failed(job_id, e).await?,
        };
        Ok(outcome)
    }

    /// How many requests wait to be sent.
    pub fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// A writer of the job's output stream `name` (created on first append;
    /// 1–64 characters of `A-Za-z0-9_-.`): [`StreamWriter::write`] queues one
    /// chunk, and chunks travel in batches, one append per batch (see the
    /// module's documentation), never one request per chunk.
    pub fn stream(&self, job_id: &str, name: &str) -> StreamWriter {
        StreamWriter {
            reporter: self.clone(),
            shared: Arc::new(WriterShared {
                job: job_id.to_string(),
                name: name.to_string(),
                failed: Mutex::new(None),
            }),
        }
    }

    /// Queues one serialized chunk of `writer`: into its newest unsent batch
    /// when no barrier of the job stands behind that batch, else as a new batch.
    fn push_chunk(&self, writer: &Arc<WriterShared>, chunk: &str) -> Result<()> {
        let max_chunks = self.shared.opts.max_chunks();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(Error::Closed);
            }
            // A chunk queued anyway would not be sent (see `send`).
            if let Some(e) = writer.failure() {
                return Err(e);
            }
            for q in state.queue.iter_mut().rev() {
                match &mut q.request {
                    Request::Chunks(b) if Arc::ptr_eq(&b.writer, writer) => {
                        if !b.fits(chunk, max_chunks) {
                            break;
                        }
                        b.add(chunk);
                        let full = b.full(max_chunks);
                        drop(state);
                        if full {
                            // The sender may be waiting out the batch's linger.
                            self.shared.wake.notify_one();
                        }
                        return Ok(());
                    }
                    // Progress and other streams commute with this one.
                    Request::Progress(..) | Request::Chunks(_) => {}
                    // Anything else of the job comes before chunks written after it.
                    other if other.job() == Some(writer.job.as_str()) => break,
                    _ => {}
                }
            }
            if state.queue.len() >= self.shared.opts.capacity {
                return Err(Error::QueueFull(state.queue.len()));
            }
            let mut batch =
                Batch { writer: Arc::clone(writer), json: String::with_capacity(chunk.len() * 16), count: 0 };
            batch.add(chunk);
            let (queued, _) = Queued::new(Request::Chunks(batch));
            state.queue.push_back(queued);
        }
        self.shared.wake.notify_one();
        Ok(())
    }
}

/// What the clones of one [`StreamWriter`] share.
struct WriterShared {
    job: String,
    name: String,
    /// The first append of this writer that failed for good.
    failed: Mutex<Option<Error>>,
}

impl WriterShared {
    fn failure(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn fail(&self, e: &Error) {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| e.clone());
    }
}

/// Writes one job output stream through a [`Reporter`]: chunks are queued
/// in call order and sent in batches (one append of up to
/// [`ReporterOptions::stream_batch`] chunks, at most
/// [`ReporterOptions::stream_linger`] after its first chunk), each append
/// retried under its own `Idempotency-Key`, so every chunk lands once, in
/// order, across Herald restarts. From [`Reporter::stream`]; cheap to clone
/// (clones write the same batches). Dropping it does not drop what was
/// written: the reporter sends it.
///
/// ```no_run
/// # async fn run(reporter: herald_client::Reporter, tokens: Vec<String>) -> herald_client::Result<()> {
/// let out = reporter.stream("gen-7", "tokens");
/// for t in tokens {
///     out.write(&t)?; // queued: no request per token
/// }
/// out.close().await?; // sent, and Herald took every append
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamWriter {
    reporter: Reporter,
    shared: Arc<WriterShared>,
}

impl StreamWriter {
    /// Queues one chunk: any JSON value (a string for a line or a token, an
    /// object for a record). Fails at once, and queues nothing, when the
    /// chunk is over 64 KiB as JSON (`invalid`) or does not serialize, when
    /// the reporter's queue is full (`queue_full`) or closed, and with the
    /// error of an earlier append of this writer that failed for good (a
    /// later chunk would leave a hole in the stream).
    pub fn write(&self, chunk: impl Serialize) -> Result<()> {
        let json = serde_json::to_string(&chunk)
            .map_err(|e| Error::Invalid(format!("a stream chunk did not serialize: {e}")))?;
        if json.len() > MAX_CHUNK_BYTES {
            return Err(Error::Invalid(format!(
                "a stream chunk is {} bytes as JSON; Herald takes at most {MAX_CHUNK_BYTES}",
                json.len()
            )));
        }
        self.reporter.push_chunk(&self.shared, &json)
    }

    /// Queues chunks in order, as [`StreamWriter::write`] each; stops at the
    /// first that fails (the ones before it are queued).
    pub fn write_all<T: Serialize>(&self, chunks: impl IntoIterator<Item = T>) -> Result<()> {
        chunks.into_iter().try_for_each(|c| self.write(c))
    }

    /// Sends what was written now and waits until Herald answered every
    /// append queued so far (and everything queued before it on the
    /// reporter); the first append of this writer that failed for good, if any.
    pub async fn flush(&self) -> Result<()> {
        self.reporter.flush().await;
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`StreamWriter::flush`], for the last time.
    pub async fn close(self) -> Result<()> {
        self.flush().await
    }

    pub fn job_id(&self) -> &str {
        &self.shared.job
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// Whether `later` can ride in the same request as `pending`: two error
/// lines cannot, nor two metadata patches whose composition would differ
/// from applying them in turn.
fn mergeable(pending: &ProgressReport, later: &ProgressReport) -> bool {
    // A status is a move of its own: two in one report would skip the first.
    if pending.status.is_some() || later.status.is_some() {
        return false;
    }
    if pending.error.is_some() && later.error.is_some() {
        return false;
    }
    match (&pending.metadata, &later.metadata) {
        // A null patch is no patch on the wire: it cannot carry another one.
        (Some(Value::Null), Some(_)) | (Some(_), Some(Value::Null)) => false,
        (Some(a), Some(b)) => composable(a, b),
        _ => true,
    }
}

/// Two JSON merge patches (RFC 7386) compose into one unless the second
/// patches into an object where the first set a non-object (or deleted it):
/// in turn that replaces the value, composed it would merge into the old one.
fn composable(first: &Value, second: &Value) -> bool {
    let (Value::Object(a), Value::Object(b)) = (first, second) else { return true };
    b.iter().all(|(k, bv)| match (a.get(k), bv) {
        (Some(av @ Value::Object(_)), Value::Object(_)) => composable(av, bv),
        (Some(_), Value::Object(_)) => false,
        _ => true,
    })
}

/// Applies merge patch `second` on top of patch `first` (see [`composable`]).
fn compose(first: &mut Value, second: Value) {
    match (first, second) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get_mut(&k) {
                    Some(av @ Value::Object(_)) if bv.is_object() => compose(av, bv),
                    _ => {
                        a.insert(k, bv);
                    }
                }
            }
        }
        (first, second) => *first = second,
    }
}

/// Later values win; metadata patches compose (the same result as sending
/// them in turn).
fn merge(into: &mut ProgressReport, later: ProgressReport) {
    let ProgressReport { status, total, succeeded, failed, progress, stage, current_item, metadata, error } = later;
    into.status = status.or(into.status);
    into.total = total.or(into.total);
    into.succeeded = succeeded.or(into.succeeded);
    into.failed = failed.or(into.failed);
    into.progress = progress.or(into.progress);
    into.stage = stage.or(into.stage.take());
    into.current_item = current_item.or(into.current_item.take());
    into.error = error.or(into.error.take());
    into.metadata = match (into.metadata.take(), metadata) {
        (Some(mut a), Some(b)) => {
            compose(&mut a, b);
            Some(a)
        }
        (a, b) => b.or(a),
    };
}

/// Sends the queue, in order, until the reporter is closed.
async fn send_loop(client: Client, shared: Arc<Shared>) {
    loop {
        let next = {
            let mut state = shared.lock();
            match state.queue.front() {
                None if state.closed => return,
                None => None,
                Some(front) => {
                    // A lone progress report waits out its window for more to merge;
                    // anything queued behind it (a status change, a flush) sends it now.
                    let wait = match &front.request {
                        Request::Progress(..) if state.queue.len() == 1 => {
                            shared.opts.coalesce.saturating_sub(front.at.elapsed())
                        }
                        // So does a lone batch of chunks that has room for more.
                        Request::Chunks(b) if state.queue.len() == 1 && !b.full(shared.opts.max_chunks()) => {
                            shared.opts.stream_linger.saturating_sub(front.at.elapsed())
                        }
                        _ => Duration::ZERO,
                    };
                    if wait.is_zero() {
                        state.queue.pop_front().map(Ok)
                    } else {
                        Some(Err(wait))
                    }
                }
            }
        };
        match next {
            None => shared.wake.notified().await,
            Some(Err(wait)) => {
                // Woken early by a new request behind it, or at the window's end.
                let _ = tokio::time::timeout(wait, shared.wake.notified()).await;
            }
            Some(Ok(queued)) => {
                let result = send(&client, queued.request).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "a report to Herald failed");
                }
                queued.answer.send_replace(Some(result));
            }
        }
    }
}

async fn send(client: &Client, request: Request) -> Result<Value> {
    match request {
        Request::Create(job) => client.request(Method::POST, "/v1/jobs", Some(&job)).await,
        Request::Start(job_id, start) => {
            let report = ProgressReport {
                status: Some(JobStatus::Running),
                total: start.total,
                stage: start.stage.clone(),
                ..ProgressReport::default()
            };
            let path = format!("/v1/jobs/{}/progress", segment(&job_id));
            match client.request(Method::POST, &path, Some(&report)).await {
                Err(e) if e.code() == "not_found" => {
                    let job = CreateJob {
                        id: Some(job_id),
                        kind: start.kind,
                        title: start.title,
                        owner: start.owner,
                        total: start.total,
                        status: Some(JobStatus::Running),
                        metadata: start.metadata,
                        tasks: None,
                    };
                    client.request(Method::POST, "/v1/jobs", Some(&job)).await
                }
                other => other,
            }
        }
        Request::Progress(job_id, report) | Request::Status(job_id, report) => {
            client.request(Method::POST, &format!("/v1/jobs/{}/progress", segment(&job_id)), Some(&report)).await
        }
        Request::Task(job_id, task_id, task) => {
            let path = format!("/v1/jobs/{}/tasks/{}", segment(&job_id), segment(&task_id));
            client.request(Method::PUT, &path, Some(&task)).await
        }
        Request::Artifact(job_id, artifact) => {
            client.request(Method::POST, &format!("/v1/jobs/{}/artifacts", segment(&job_id)), Some(&artifact)).await
        }
        Request::Notify(n) => client.request(Method::POST, "/v1/notifications", Some(&n)).await,
        Request::Chunks(batch) => {
            let writer = batch.writer;
            // An earlier append of this writer failed for good: sending this
            // one would leave a hole in the stream.
            if let Some(e) = writer.failure() {
                return Err(e);
            }
            let path = format!("/v1/jobs/{}/streams/{}", segment(&writer.job), segment(&writer.name));
            let body = format!("{{\"chunks\":[{}]}}", batch.json).into_bytes();
            let result = client.request_bytes(Method::POST, &path, Some(body), Duration::ZERO).await;
            if let Err(e) = &result {
                writer.fail(e);
            }
            result
        }
        Request::Flush => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The server's own merge patch: a composition must equal applying in turn.
    use herald_model::job::merge_patch as apply;

    #[test]
    fn composed_metadata_patches_equal_applying_them_in_turn() {
        let original = json!({ "a": { "x": 1 }, "b": 5, "c": { "keep": true } });
        let cases = [
            (json!({ "a": { "y": 2 } }), json!({ "a": { "z": 3 }, "b": null })),
            (json!({ "b": 1 }), json!({ "b": 2, "n": { "deep": { "v": 1 } } })),
            (json!({ "c": { "keep": null } }), json!({ "c": { "new": 1 } })),
            (json!({ "a": null }), json!({ "a": 7 })),
        ];
        for (p1, p2) in cases {
            assert!(composable(&p1, &p2), "{p1} then {p2}");
            let mut in_turn = original.clone();
            apply(&mut in_turn, &p1);
            apply(&mut in_turn, &p2);
            let mut combined = p1.clone();
            compose(&mut combined, p2.clone());
            let mut at_once = original.clone();
            apply(&mut at_once, &combined);
            assert_eq!(at_once, in_turn, "{p1} then {p2} composed as {combined}");
        }
        // An object patched where the first patch put a scalar (or deleted): not composable.
        assert!(!composable(&json!({ "b": 1 }), &json!({ "b": { "x": 1 } })));
        assert!(!composable(&json!({ "a": null }), &json!({ "a": { "x": 1 } })));
    }

    /// A reporter whose queue nobody sends: what the calls leave in it.
    fn idle_reporter(stream_batch: usize) -> Reporter {
        let opts = ReporterOptions { stream_batch, ..ReporterOptions::default() };
        let shared = Arc::new(Shared {
            queue: Mutex::new(State { queue: VecDeque::new(), closed: false }),
            wake: Notify::new(),
            opts,
        });
        Reporter { shared }
    }

    /// The queue as `C<count>:<stream>` for batches and `P`, `T` for the rest.
    fn shape(r: &Reporter) -> Vec<String> {
        r.shared
            .lock()
            .queue
            .iter()
            .map(|q| match &q.request {
                Request::Chunks(b) => format!("C{}:{}", b.count, b.writer.name),
                Request::Progress(..) => "P".into(),
                Request::Task(..) => "T".into(),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn chunks_join_their_writers_batch_past_progress_and_other_streams_but_not_past_a_barrier() {
        let r = idle_reporter(3);
        let out = r.stream("j", "out");
        let err = r.stream("j", "err");
        let other_job = r.stream("k", "out");
        out.write("a").unwrap();
        let _ = r.progress("j", ProgressReport { succeeded: Some(1), ..Default::default() });
        err.write("e").unwrap();
        out.write("b").unwrap();
        other_job.write("x").unwrap();
        let _ = r.progress("j", ProgressReport { succeeded: Some(2), ..Default::default() });
        assert_eq!(shape(&r), ["C2:out", "P", "C1:err", "C1:out"], "progress merged past err's batch too");
        out.write("c").unwrap();
        out.write("d").unwrap(); // the batch holds 3: a new one
        assert_eq!(shape(&r), ["C3:out", "P", "C1:err", "C1:out", "C1:out"]);
        let _ = r.task_started("j", "t", None);
        out.write("e").unwrap(); // written after the task: sent after it
        assert_eq!(shape(&r), ["C3:out", "P", "C1:err", "C1:out", "C1:out", "T", "C1:out"]);
        let Request::Chunks(b) = &r.shared.lock().queue[0].request else { panic!() };
        assert_eq!(format!("[{}]", b.json), r#"["a","b","c"]"#);
    }

    #[test]
    fn a_failed_append_refuses_the_writers_later_chunks_and_a_big_chunk_is_refused_at_once() {
        let r = idle_reporter(1000);
        let out = r.stream("j", "out");
        let e = out.write("x".repeat(MAX_CHUNK_BYTES)).unwrap_err();
        assert_eq!(e.code(), "invalid", "{e}");
        out.write("x".repeat(MAX_CHUNK_BYTES - 2)).unwrap(); // 64 KiB with its quotes
        out.shared.fail(&Error::Api { status: 404, code: "not_found".into(), message: "no job".into() });
        assert_eq!(out.write("y").unwrap_err().code(), "not_found");
        assert_eq!(shape(&r), ["C1:out"]);
        // Another writer of the same stream starts afresh.
        r.stream("j", "out").write("z").unwrap();
    }

    #[test]
    fn two_error_lines_never_share_a_report() {
        let e = |m: &str| ProgressReport { error: Some(m.into()), ..ProgressReport::default() };
        assert!(!mergeable(&e("one"), &e("two")));
        assert!(mergeable(&e("one"), &ProgressReport { succeeded: Some(3), ..ProgressReport::default() }));
        let running = ProgressReport { status: Some(JobStatus::Running), ..ProgressReport::default() };
        assert!(!mergeable(
            &running,
            &ProgressReport { status: Some(JobStatus::Completed), ..ProgressReport::default() }
        ));
    }
}
