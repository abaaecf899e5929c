//! Job output streams over HTTP: workers append chunks (log lines, LLM
//! tokens, JSON records); readers page from an offset (JSON, with `wait` as a
//! long-poll) or follow one as server-sent events. Chunks are stored one
//! segment per append, never as log events, and announced live on
//! `stream:<job>:<name>` in commit order.

use super::error::{ApiError, ErrorBody};
use super::extract::{bearer, check_id, idempotency_key, parse_json, parse_query, Auth, Path, Query};
use super::jobs::visible_job;
use crate::app::AppState;
use crate::auth::{can_write_jobs, Principal};
use crate::hub::Payload;
use crate::model::stream::{Appended, StreamInfo, MAX_CHUNKS_PER_APPEND, MAX_CHUNK_BYTES};
use crate::model::topic::validate_stream_name;
use crate::rules::Command;
use crate::session::stream::{StreamRef, PAGE_CHUNKS};
use crate::session::{KeyChanges, Membership};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// Body of `POST /v1/jobs/{id}/streams/{name}` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"chunks": ["Fetching /pricing", {"token": "Hel"}, {"token": "lo"}]}))]
pub struct AppendChunks {
    /// 1–10,000 chunks, each any JSON value of at most 64 KiB.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub chunks: Vec<serde_json::Value>,
}

/// Query of `GET /v1/jobs/{id}/streams/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadChunks {
    /// First offset wanted (default 0, the oldest kept).
    pub offset: Option<u64>,
    /// 1–10,000 chunks, default 1,000 (a page also ends past 1 MiB).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// Seconds to wait for a chunk when there is none at `offset` yet (default 0; at most 60).
    pub wait: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct ChunkList {
    pub stream: String,
    /// Offset of `chunks[0]`: later than asked when older chunks were dropped.
    pub offset: u64,
    /// The `offset` of the next call.
    pub next: u64,
    /// The stream's end now: the offset the next chunk appended will get.
    pub end: u64,
    /// The oldest offset still kept.
    pub floor: u64,
    /// True when chunks between the offset asked for and `offset` were dropped
    /// (retention or the stream's size bound).
    pub truncated: bool,
    #[schema(value_type = Vec<serde_json::Value>)]
    pub chunks: Vec<Box<RawValue>>,
}

#[derive(Serialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
}

fn stream_ref(p: &Principal, job: &str, name: &str) -> Result<StreamRef, ApiError> {
    check_id("job id", job)?;
    validate_stream_name(name).map_err(|m| ApiError::invalid_field("stream", m))?;
    Ok(StreamRef { tenant: Arc::clone(&p.tenant), job: job.to_string(), name: name.to_string() })
}

/// The chunks of a body: `{"chunks": [...]}` as JSON, or one per line of a
/// `text/plain` body. Returns them as one JSON array, and how many.
fn parse_chunks(headers: &HeaderMap, bytes: &[u8]) -> Result<(String, usize), ApiError> {
    let mime = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let chunks: Vec<serde_json::Value> = if mime == "text/plain" {
        let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("invalid_body", "not UTF-8"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        text.split('\n').map(|l| serde_json::Value::String(l.strip_suffix('\r').unwrap_or(l).to_string())).collect()
    } else if mime == "application/json" || mime.ends_with("+json") {
        parse_json::<AppendChunks>(bytes)?.chunks
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send {\"chunks\": [...]} as application/json, or lines as text/plain",
        ));
    };
    if chunks.is_empty() || chunks.len() > MAX_CHUNKS_PER_APPEND {
        return Err(ApiError::invalid_field("chunks", format!("give 1 to {MAX_CHUNKS_PER_APPEND} chunks")));
    }
    // One serialization: each chunk is measured as it is written into the array.
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('[');
    for (i, chunk) in chunks.iter().enumerate() {
        let json = serde_json::to_string(chunk).map_err(|e| ApiError::invalid_field("chunks", e))?;
        if json.len() > MAX_CHUNK_BYTES {
            return Err(ApiError::invalid_field(
                &format!("chunks[{i}]"),
                format!("is {} bytes; a chunk is at most {MAX_CHUNK_BYTES}", json.len()),
            ));
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json);
    }
    out.push(']');
    Ok((out, chunks.len()))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/streams/{name}", tag = "streams",
    summary = "Append to a job's output stream",
    description = "Appends chunks — log lines, LLM tokens, JSON records — to the job's stream `name` (created on first use) \
        and sends them live to its readers (`stream:<job>:<name>` on /v1/ws, the SSE and long-poll reads below). One append is \
        one stored segment, not one log event per chunk: batch tokens into appends of tens or hundreds. Offsets count chunks \
        from 0 per stream. Past `--stream-max-bytes` (default 16 MiB) the oldest segments go; chunks older than `--retention` too. \
        Body: `{\"chunks\": [...]}` (any JSON values, at most 64 KiB each, 1–10,000) or `text/plain`, one chunk per line. \
        Workers, services and admins; safe to retry with `Idempotency-Key`.",
    request_body(content = AppendChunks, description = "Or `text/plain`: one chunk per line"),
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    responses((status = 200, description = "Where the chunks went", body = Appended),
        (status = 404, description = "No such job in the caller's tenant", body = ErrorBody),
        (status = 400, description = "A bad job id, or a text body that is not UTF-8", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 403, description = "Customers and staff may not append", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn append(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((job, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    if !can_write_jobs(&p) {
        return Err(ApiError::forbidden(format!("role {} may not append to streams", p.role.as_str())));
    }
    let stream = stream_ref(&p, &job, &name)?;
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, &s).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body is larger than the limit of {} bytes", s.limits.body_limit),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })?;
    let (chunks, count) = parse_chunks(&headers, &bytes)?;
    let path = format!("/v1/jobs/{job}/streams/{name}");
    let digest = super::extract::hex(&sha2::Sha256::digest(&bytes));
    let idem = idempotency_key(&headers, &p, "POST", &path, &digest)?;
    let live = Arc::<RawValue>::from(RawValue::from_string(chunks.clone()).map_err(crate::store::StoreError::corrupt)?);
    let topic = format!("stream:{}:{}", stream.job, stream.name);
    let broker = Arc::clone(&s.broker);
    let tenant = Arc::clone(&p.tenant);
    // Announced from the writer, in commit order: readers see offsets in order.
    let announce: crate::rules::OnCommit = Box::new(move |reply| {
        #[derive(Deserialize)]
        struct Where {
            first_offset: u64,
        }
        if let Ok(w) = serde_json::from_str::<Where>(reply.body.get()) {
            let payload = Payload::Chunks { first: w.first_offset, count: count as u64, chunks: live };
            broker.publish(&tenant, &topic, payload);
        }
    });
    let cmd = Command::AppendChunks {
        job_id: stream.job,
        stream: stream.name,
        chunks,
        count: count as u64,
        max_bytes: s.limits.stream_max_bytes,
    };
    let reply = crate::rules::write_then(&*s.store, &p.tenant, cmd, idem, Some(announce)).await?;
    metrics::counter!("herald_stream_chunks_total").increment(count as u64);
    Ok(super::jobs::reply_response(reply))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/streams", tag = "streams",
    summary = "List a job's output streams",
    description = "Each stream of the job with its kept range (`floor` to `next_offset`) and size. Who may read the job may read this.",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = StreamList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(job): Path<String>,
) -> Result<Json<StreamList>, ApiError> {
    visible_job(&s, &p, &job).await?;
    Ok(Json(StreamList { streams: s.store.streams(&p.tenant, &job).await? }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/streams/{name}", tag = "streams",
    summary = "Read a job's output stream",
    description = "Chunks from `offset` on, oldest first; `next` is the `offset` of the next call. With `wait` (seconds) an \
        answer that would be empty waits for the next append: a long-poll that follows the stream. `truncated: true` says \
        chunks before `offset` (the one answered) were dropped by retention or the size bound. Who may read the job may read \
        its streams; a stream never appended to is empty (`end` 0).",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$"), ReadChunks),
    responses((status = 200, body = ChunkList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "A stream name that is not 1–64 characters of A-Za-z0-9_-.", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn read(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((job, name)): Path<(String, String)>,
    Query(q): Query<ReadChunks>,
) -> Result<Response, ApiError> {
    let stream = stream_ref(&p, &job, &name)?;
    let limit = q.limit.unwrap_or(PAGE_CHUNKS);
    if !(1..=MAX_CHUNKS_PER_APPEND).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: must be 1 to {MAX_CHUNKS_PER_APPEND}")));
    }
    let wait = q.wait.unwrap_or(0.0);
    if !(0.0..=s.limits.max_poll_wait.as_secs_f64()).contains(&wait) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait: must be 0 to {} seconds", s.limits.max_poll_wait.as_secs()),
        ));
    }
    visible_job(&s, &p, &job).await?;
    let offset = q.offset.unwrap_or(0);
    // Listen before reading, so an append between the read and the wait still wakes us.
    let (mut member, mut inbox) = Membership::new(&s, 16);
    if wait > 0.0 {
        member.describe("longpoll", &p);
        member.join(&p.tenant, &format!("stream:{job}:{name}"));
    }
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut keys = KeyChanges::default();
    if wait > 0.0 {
        keys.follow(&s, &p);
    }
    let mut shutdown = s.shutdown.clone();
    let page = loop {
        let page =
            s.store.stream_chunks(&p.tenant, &job, &name, offset, limit, crate::session::stream::PAGE_BYTES).await?;
        if !page.chunks.is_empty() || tokio::time::Instant::now() >= deadline {
            break page;
        }
        super::events::wait_once(&s, &p, &mut keys, &mut inbox, &mut deadline, &mut shutdown).await?;
    };
    drop(member);
    let body = ChunkList {
        stream: stream.name,
        offset: page.first,
        next: page.first + page.chunks.len() as u64,
        end: page.next,
        floor: page.floor,
        truncated: page.first > offset,
        chunks: page.chunks,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Query of the SSE read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowChunks {
    offset: Option<u64>,
    token: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/streams/{name}/sse", tag = "streams",
    summary = "Follow a job's output stream (SSE)",
    description = "`event: chunks` messages with `{\"offset\", \"chunks\"}`, from `offset` (default: the stream's end, live only) \
        through the stored chunks and then live. Each message's `id` is the offset after its chunks, so an EventSource that \
        reconnects resumes with `Last-Event-ID` and misses nothing. An offset older than what is kept first gets `event: \
        truncated` with `{\"from\", \"to\"}`.",
    params(("id" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$"),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$"),
        ("offset" = Option<u64>, Query, description = "First offset wanted (`Last-Event-ID` wins)"),
        ("token" = Option<String>, Query, description = "Bearer token, for `EventSource`")),
    responses((status = 200, description = "`text/event-stream` of chunks"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn follow(
    State(s): State<AppState>,
    Path((job, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let q: FollowChunks = parse_query(parts.uri.query().unwrap_or(""))?;
    let token = bearer(&parts).or(q.token).ok_or(crate::auth::AuthError::Missing)?;
    let p = s.auth.authenticate(&token).await?;
    let stream = stream_ref(&p, &job, &name)?;
    visible_job(&s, &p, &job).await?;
    let last_event_id = crate::transport::sse::last_event_id(&parts.headers, "an offset")?;
    let guard = s
        .hub
        .connect(&p.tenant)
        .map_err(|e| ApiError::from(crate::session::SessionError::limit("too_many_connections", e.to_string())))?;
    let (mut member, inbox) = Membership::new(&s, s.limits.outbox_capacity);
    member.adopt(Some(guard));
    member.describe("sse", &p);
    member.join(&p.tenant, &format!("stream:{job}:{name}"));
    let start = match last_event_id.or(q.offset) {
        Some(o) => o,
        None => stream.end(&s).await?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(crate::transport::sse::follow_stream(s, p, stream, start, member, inbox, tx));
    Ok(crate::transport::sse::response(rx))
}
