"""Helpers shared by the sync and asyncio flavours: backoff, ids, URLs,
request bodies, and the mapping of transport failures to typed errors."""

from __future__ import annotations

import inspect
import json
import random
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import httpx

from .errors import HeraldError, Unavailable, error_from_response, is_retryable_status

#: A JSON object as the server sends and takes it.
JSON = Dict[str, Any]

USER_AGENT = "herald-client-python/0.1.0"

#: The server refuses an ``error`` text over 16 KiB (422); a long traceback
#: must not turn a failure report into a refused request, so it is cut first.
MAX_ERROR_BYTES = 16 * 1024 - 16

#: The largest chunk of a job output stream Herald takes, as compact JSON.
MAX_CHUNK_BYTES = 64 * 1024
#: Most chunks in one append (and one read).
MAX_CHUNKS_PER_APPEND = 10_000
#: Most bytes of chunks a stream writer puts in one append: well under
#: Herald's default 1 MiB ``--body-limit``, with room for any one chunk.
MAX_BATCH_BYTES = 512 * 1024


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): exponential,
    with "equal jitter" (half fixed, half random) so that many workers that
    lost the same server do not come back in step."""
    base = min(maximum, initial * 2.0 ** min(attempt, 30))
    return base / 2 + random.random() * base / 2


def new_key() -> str:
    """An Idempotency-Key: random, so two logical requests never share one."""
    return uuid.uuid4().hex


def base_url(url: str) -> str:
    if not url:
        raise ValueError("url is required, e.g. http://127.0.0.1:8080")
    return url.rstrip("/")


def seg(value: str) -> str:
    """One path segment (a job or task id), percent-encoded."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"an id must be a non-empty string, not {value!r}")
    return quote(value, safe="")


def error_text(error: object) -> str:
    """The text Herald stores for a failure: an exception's message (or its
    type's name when it has none), cut to what the server accepts."""
    if isinstance(error, BaseException):
        text = str(error) or type(error).__name__
    else:
        text = str(error)
    raw = text.encode("utf-8")
    if len(raw) > MAX_ERROR_BYTES:
        text = raw[:MAX_ERROR_BYTES].decode("utf-8", "ignore") + "…"
    return text


def json_copy(value: Any) -> Any:
    """A deep copy through JSON: checks now (at the caller) that the value can
    be sent, and keeps the queued report safe from later changes to it."""
    return json.loads(json.dumps(value))


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def chunk_json(chunk: Any) -> bytes:
    """One stream chunk as the compact JSON it is sent as. Raises at the
    caller: ``TypeError`` for a value JSON cannot hold, ``ValueError`` for a
    NaN or infinity, or a chunk over 64 KiB (Herald would refuse the whole
    append it travels in)."""
    raw = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(raw) > MAX_CHUNK_BYTES:
        raise ValueError(f"a stream chunk is {len(raw)} bytes as JSON; Herald takes at most {MAX_CHUNK_BYTES}")
    return raw


def stream_path(job_id: str, stream: str) -> str:
    return f"/v1/jobs/{seg(job_id)}/streams/{seg(stream)}"


def append_spec(job_id: str, stream: str, chunks: Sequence[Any]) -> Spec:
    """``append_chunks``: one append of 1 to 10,000 chunks, checked here."""
    if isinstance(chunks, (str, bytes)) or not 1 <= len(chunks) <= MAX_CHUNKS_PER_APPEND:
        raise ValueError(f"chunks: a list of 1 to {MAX_CHUNKS_PER_APPEND} JSON values")
    parts = [chunk_json(c) for c in chunks]
    return Spec(job_id, "POST", stream_path(job_id, stream), {"chunks": [json.loads(p) for p in parts]})


def read_stream_params(offset: int, limit: Optional[int], wait: float) -> Dict[str, str]:
    """The query of ``GET /v1/jobs/{id}/streams/{name}``, checked."""
    if offset < 0:
        raise ValueError("offset: a chunk offset (0 for the oldest kept)")
    if limit is not None and not 1 <= limit <= MAX_CHUNKS_PER_APPEND:
        raise ValueError(f"limit: 1 to {MAX_CHUNKS_PER_APPEND} chunks")
    if not 0 <= wait <= 60:
        raise ValueError("wait: 0 to 60 seconds")
    params = {"offset": str(offset), "wait": repr(float(wait))}
    if limit is not None:
        params["limit"] = str(limit)
    return params


def transport_error(exc: Exception) -> HeraldError:
    """The typed error for a request that got no answer."""
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable("timeout", f"no answer in time: {exc!r}")
    return Unavailable("network", f"Herald unreachable: {exc!r}")


def retry_after(headers: httpx.Headers) -> Optional[float]:
    """A ``Retry-After`` in seconds (the server sends it with a 503), if any."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def parse_json_object(content: bytes) -> JSON:
    if not content:
        return {}
    try:
        value = json.loads(content)
    except ValueError as e:
        raise HeraldError("bad_response", f"answer is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise HeraldError("bad_response", "answer is not a JSON object")
    return value


def put(target: JSON, /, **fields: Any) -> JSON:
    """``target`` with every field that is not None."""
    for k, v in fields.items():
        if v is not None:
            target[k] = v
    return target


#: The plain fields of a job in ``POST /v1/jobs``, in the order they are sent.
JOB_FIELDS = ("kind", "title", "owner", "total", "status")


def job_body(
    job_id: Optional[str],
    *,
    metadata: Optional[Mapping[str, Any]],
    tasks: Optional[Sequence[Mapping[str, Any]]],
    **fields: Any,
) -> JSON:
    """The body of ``POST /v1/jobs``; ``fields``: the other ``create_job``
    keywords (:data:`JOB_FIELDS`), sent as they are."""
    assert fields.keys() == set(JOB_FIELDS), sorted(fields)
    body = put({}, id=job_id, **{k: fields[k] for k in JOB_FIELDS})
    if metadata is not None:
        body["metadata"] = json_copy(metadata)
    if tasks is not None:
        body["tasks"] = json_copy(list(tasks))
    return body


def progress_body(
    *, metadata: Optional[Mapping[str, Any]] = None, error: Optional[object] = None, **fields: Any
) -> JSON:
    """The body of a ``POST /v1/jobs/{id}/progress`` without a status;
    ``fields``: the other keywords of ``progress()`` (counts, ``progress``,
    ``stage``, ``current_item``), sent as they are."""
    return put(
        {},
        **fields,
        metadata=json_copy(metadata) if metadata is not None else None,
        error=error_text(error) if error is not None else None,
    )


def compose_patches(first: JSON, second: JSON) -> Optional[JSON]:
    """One JSON merge patch (RFC 7386) with the effect of applying ``first``
    then ``second``, or None when no single patch has it.

    Later values win key by key and nested objects compose the same way, so
    two coalesced reports change the metadata exactly as the two would have
    one after the other. The one case a single patch cannot express is a key
    that ``first`` sets to a non-object (or deletes) and ``second`` then patches
    as an object: that pair is sent as two requests.
    """
    out = dict(first)
    for k, v in second.items():
        if isinstance(v, dict) and k in out:
            old = out[k]
            if not isinstance(old, dict):
                return None
            sub = compose_patches(old, v)
            if sub is None:
                return None
            out[k] = sub
        else:
            out[k] = v
    return out


def merge_progress(into: JSON, new: JSON) -> bool:
    """Folds the progress report ``new`` into the not-yet-sent ``into``:
    later values win, metadata patches compose. Returns False (and leaves
    ``into`` alone) when they cannot share one request: both carry an
    ``error`` (each error is its own entry in the job's log), or their
    metadata patches do not compose."""
    if "error" in into and "error" in new:
        return False
    meta: Optional[JSON] = None
    if "metadata" in new and "metadata" in into:
        a, b = into["metadata"], new["metadata"]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return False
        meta = compose_patches(a, b)
        if meta is None:
            return False
    into.update(new)
    if meta is not None:
        into["metadata"] = meta
    return True


class Spec:
    """One logical request before it is queued: where it goes, what it
    carries, and for ``job_started`` how to create the job when it is missing."""

    __slots__ = ("lane", "method", "path", "body", "create", "stage_after_create")

    def __init__(
        self,
        lane: str,
        method: str,
        path: str,
        body: JSON,
        create: Optional[JSON] = None,
        stage_after_create: Optional[str] = None,
    ) -> None:
        self.lane = lane
        self.method = method
        self.path = path
        self.body = body
        self.create = create
        self.stage_after_create = stage_after_create


def private_lane(name: str) -> str:
    """A lane that no job id can name (ids never contain NUL)."""
    return "\0" + name


def task_spec(job_id: str, task_id: str, body: JSON) -> Spec:
    return Spec(job_id, "PUT", f"/v1/jobs/{seg(job_id)}/tasks/{seg(task_id)}", body)


def progress_path(job_id: str) -> str:
    return f"/v1/jobs/{seg(job_id)}/progress"


def job_started_spec(
    job_id: str, *, total: Optional[int], stage: Optional[str], metadata: Optional[Mapping[str, Any]], **fields: Any
) -> Spec:
    """``job_started``: a report that moves the job to running and, when the
    job does not exist (404 ``not_found``), the ``POST /v1/jobs`` that creates
    it running (then the stage, which creation does not take)."""
    report = put({"status": "running"}, total=total, stage=stage)
    if metadata is not None:
        report["metadata"] = json_copy(metadata)
    create = job_body(job_id, total=total, status="running", metadata=metadata, **fields)
    return Spec(job_id, "POST", progress_path(job_id), report, create=create, stage_after_create=stage)


def split_token(token: Optional[str], has_getter: bool) -> Optional[str]:
    if token is None and not has_getter:
        raise ValueError("give a token (a JWT or a worker API key) or get_token")
    return token


def headers(token: str, key: Optional[str]) -> Dict[str, str]:
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key is not None:
        h["Idempotency-Key"] = key
    return h


def timeouts(total: float, connect: Optional[float] = None) -> httpx.Timeout:
    return httpx.Timeout(total, connect=connect if connect is not None else min(total, 10.0))


def pair(value: Tuple[float, float], name: str) -> Tuple[float, float]:
    initial, maximum = value
    if initial <= 0 or maximum < initial:
        raise ValueError(f"{name}: expected (initial, maximum) seconds with 0 < initial <= maximum")
    return float(initial), float(maximum)


def create_job_spec(job_id: Optional[str], **fields: Any) -> Spec:
    """``create_job``; ``fields``: its keywords, as :func:`job_body` takes them."""
    # A job without an id gets one from the server: nothing else can be
    # queued behind it, so it has a lane of its own.
    lane = job_id if job_id is not None else private_lane("create:" + new_key())
    return Spec(lane, "POST", "/v1/jobs", job_body(job_id, **fields))


def job_finished_spec(
    job_id: str, status: str, *, error: Optional[object], stage: Optional[str], metadata: Optional[Mapping[str, Any]]
) -> Spec:
    body = progress_body(stage=stage, metadata=metadata, error=error)
    body["status"] = status
    return progress_spec(job_id, body)


def artifact_spec(job_id: str, kind: str, payload: Any) -> Spec:
    if not kind:
        raise ValueError("artifact kind must be a non-empty string (screenshot, ocr, label...)")
    return Spec(job_id, "POST", f"/v1/jobs/{seg(job_id)}/artifacts", {"kind": kind, "payload": json_copy(payload)})


def notify_spec(recipient: str, title: str, *, body: Optional[str], level: Optional[str], link: Optional[str]) -> Spec:
    # Notifications share one lane: they reach a user in the order they were sent.
    return Spec(
        private_lane("notifications"),
        "POST",
        "/v1/notifications",
        put({"recipient": recipient, "title": title}, body=body, level=level, link=link),
    )


def task_status_body(status: str, *, name: Optional[str] = None, error: Optional[object] = None) -> JSON:
    return put({"status": status}, name=name, error=error_text(error) if error is not None else None)


class ReporterStats:
    """What a reporter did so far (a snapshot).

    ``queued``: requests it holds now (queued, in flight, gathering in a
    coalescing window); ``sent``: logical requests Herald accepted;
    ``failed``: logical requests that failed for good; ``attempts``: HTTP
    requests made, retries included; ``retries``: attempts after a failure;
    ``coalesced``: ``progress()`` calls folded into another report.
    """

    __slots__ = ("queued", "sent", "failed", "attempts", "retries", "coalesced")

    def __init__(
        self, queued: int = 0, sent: int = 0, failed: int = 0, attempts: int = 0, retries: int = 0, coalesced: int = 0
    ) -> None:
        self.queued = queued
        self.sent = sent
        self.failed = failed
        self.attempts = attempts
        self.retries = retries
        self.coalesced = coalesced

    def copy(self, queued: int) -> "ReporterStats":
        return ReporterStats(queued, self.sent, self.failed, self.attempts, self.retries, self.coalesced)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__)
        return f"ReporterStats({fields})"


def progress_spec(job_id: str, body: JSON) -> Spec:
    """A progress report (``progress()``, ``job_completed``, ``job_failed``)."""
    return Spec(job_id, "POST", progress_path(job_id), body)


def http_options(url: str, timeout: float, transport: Any, max_in_flight: int) -> Dict[str, Any]:
    """The options of a reporter's ``httpx.Client`` / ``httpx.AsyncClient``."""
    return dict(
        base_url=url,
        timeout=timeouts(timeout),
        transport=transport,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
    )


async def call_token_getter(get_token: Optional[Callable[[], Union[str, Awaitable[str]]]]) -> str:
    """Calls an asyncio flavour's ``get_token``: a plain or a coroutine function."""
    assert get_token is not None
    value = get_token()
    if inspect.isawaitable(value):
        return await value
    return value


class Attempts:
    """The retry policy of one logical request, without I/O: retried under
    one Idempotency-Key on network errors, 5xx, 408 and 429 for up to
    ``retry_timeout``; a first 401 refreshes the token (when there is a
    getter) and retries at once; any other 4xx raises at once."""

    def __init__(self, backoff: Tuple[float, float], retry_timeout: Optional[float], can_refresh: bool) -> None:
        self.backoff = backoff
        self.retry_timeout = retry_timeout
        self.started = time.monotonic()
        self.attempt = 0
        self.refreshed = not can_refresh

    def judge(self, answer: Union[httpx.Response, httpx.TransportError]) -> Union[JSON, float, None]:
        """What one attempt's ``answer`` means: the answer's JSON object on
        success; None to refresh the token and try again at once; else the
        seconds to wait before the next attempt. Raises the error when the
        request must not (or may no longer) be retried."""
        wait: Optional[float] = None
        if isinstance(answer, httpx.TransportError):
            err = transport_error(answer)
        else:
            if answer.is_success:
                return parse_json_object(answer.content)
            err = error_from_response(answer.status_code, answer.content)
            if answer.status_code == 401 and not self.refreshed:
                self.refreshed = True
                return None
            if not is_retryable_status(answer.status_code):
                raise err
            wait = retry_after(answer.headers)
        delay = backoff_delay(self.attempt, *self.backoff)
        if wait is not None:
            delay = max(delay, min(wait, self.backoff[1]))
        self.attempt += 1
        if self.retry_timeout is not None and time.monotonic() + delay - self.started > self.retry_timeout:
            raise err
        return delay
