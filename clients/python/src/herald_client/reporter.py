"""The worker side, synchronous flavour: :class:`Reporter`.

Every reporting call queues its request and returns at once with a
:class:`concurrent.futures.Future` for Herald's answer; a few sender threads
deliver the queue. See the package README for the policies (retries,
ordering, coalescing, the bounded queue) that this module implements.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as wait_futures
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import httpx

from ._common import (
    JSON,
    USER_AGENT,
    ReporterStats,
    Spec,
    artifact_spec,
    backoff_delay,
    base_url,
    create_job_spec,
    dumps,
    headers,
    job_finished_spec,
    job_started_spec,
    new_key,
    notify_spec,
    pair,
    parse_json_object,
    progress_body,
    progress_path,
    retry_after,
    split_token,
    task_spec,
    task_status_body,
    timeouts,
    transport_error,
)
from ._queue import Lanes, Request
from .errors import Conflict, HeraldError, NotFound, QueueFull, Unavailable, error_from_response, is_retryable_status

log = logging.getLogger("herald_client")

#: Reporters not closed yet; closed (briefly) at interpreter exit so that a
#: script that forgot ``close()`` still delivers what it reported.
_OPEN: "weakref.WeakSet[Reporter]" = weakref.WeakSet()


def _close_at_exit() -> None:
    for r in list(_OPEN):
        try:
            r.close(timeout=5.0)
        except HeraldError as e:
            log.warning("herald: closing a reporter at exit: %s", e)


atexit.register(_close_at_exit)


class Reporter:
    """Reports jobs to Herald over its HTTP API, from any number of threads.

    ``url``: Herald's base URL. ``token``: a JWT (role worker, service or
    admin) or a worker API key; or ``get_token``, called for the first token
    and again once when Herald answers 401 (a token that expired).

    ``coalesce``: seconds during which ``progress()`` calls for one job fold
    into one request (0 sends each). ``max_queue``: requests held at most
    (queued, in flight, coalescing); when it is reached ``progress()`` folds
    into the job's newest unsent report, and everything else waits up to
    ``queue_timeout`` seconds for room, then raises :class:`QueueFull`.
    ``retry_timeout``: how long one request is retried (network errors, 5xx,
    408, 429) before it fails with the last error (None: for ever).
    ``backoff``: (first, longest) delay between retries, in seconds.
    ``timeout``: seconds for one HTTP attempt. ``max_in_flight``: requests sent
    at once (never two of one job). ``on_error``: called with each
    :class:`HeraldError` of a report that failed for good (from a sender
    thread); without it such errors are logged. ``transport``: an httpx
    transport (tests, proxies).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        get_token: Optional[Callable[[], str]] = None,
        coalesce: float = 0.25,
        max_queue: int = 10_000,
        queue_timeout: float = 30.0,
        retry_timeout: Optional[float] = 60.0,
        backoff: Tuple[float, float] = (0.2, 5.0),
        timeout: float = 15.0,
        max_in_flight: int = 4,
        on_error: Optional[Callable[[HeraldError], None]] = None,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        if coalesce < 0:
            raise ValueError("coalesce: seconds, 0 to send every progress report")
        if max_queue < 1 or max_in_flight < 1:
            raise ValueError("max_queue and max_in_flight must be at least 1")
        self.url = base_url(url)
        self._token = split_token(token, get_token is not None)
        self._get_token = get_token
        self._coalesce = float(coalesce)
        self._max_queue = max_queue
        self._queue_timeout = float(queue_timeout)
        self._retry_timeout = retry_timeout
        self._backoff = pair(backoff, "backoff")
        self._timeout = float(timeout)
        self._max_in_flight = max_in_flight
        self._on_error = on_error
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeouts(timeout),
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
        )
        # One lock guards the queue and the counters; `_work` wakes senders
        # (work arrived, a window ended), `_room` wakes callers waiting for
        # room in a full queue.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._token_lock = threading.Lock()
        self._lanes: Lanes[Future[JSON]] = Lanes()
        self._failures: Dict[str, List[HeraldError]] = {}
        self._stats = ReporterStats()
        self._threads: List[threading.Thread] = []
        self._closed = False  # no new reports
        self._stopping = False  # senders exit once idle
        self._abandoned = threading.Event()  # give up on what is left (close timed out)
        _OPEN.add(self)

    # Reporting calls. Each queues one request and returns its future.

    def create_job(
        self,
        job_id: Optional[str] = None,
        *,
        title: Optional[str] = None,
        kind: Optional[str] = None,
        owner: Optional[str] = None,
        total: Optional[int] = None,
        status: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        tasks: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> Future[JSON]:
        """Creates a job (``queued`` unless ``status="running"``). The same
        id with the same fields again answers the existing job; different
        fields fail with :class:`Conflict`. ``tasks``: ``[{"id", "name"}]``.
        ``owner``: the ``sub`` of the customer who may watch it."""
        return self._enqueue(
            create_job_spec(
                job_id, title=title, kind=kind, owner=owner, total=total, status=status, metadata=metadata, tasks=tasks
            )
        )

    def job_started(
        self,
        job_id: str,
        *,
        title: Optional[str] = None,
        kind: Optional[str] = None,
        owner: Optional[str] = None,
        total: Optional[int] = None,
        stage: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        tasks: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> Future[JSON]:
        """Marks the job running, creating it (with ``title``, ``kind``,
        ``owner``, ``tasks``) when it does not exist yet."""
        return self._enqueue(
            job_started_spec(
                job_id, title=title, kind=kind, owner=owner, total=total, stage=stage, metadata=metadata, tasks=tasks
            )
        )

    def task_started(self, job_id: str, task_id: str, name: Optional[str] = None) -> Future[JSON]:
        """A task (a directory submission, a page, an agent step) started.
        With a ``name``, the job's ``current_item`` follows it (a coalesced
        progress report)."""
        fut = self._enqueue(task_spec(job_id, task_id, task_status_body("running", name=name)))
        if name is not None:
            self.progress(job_id, current_item=name)
        return fut

    def task_succeeded(self, job_id: str, task_id: str) -> Future[JSON]:
        return self._enqueue(task_spec(job_id, task_id, task_status_body("succeeded")))

    def task_failed(self, job_id: str, task_id: str, error: Optional[object] = None) -> Future[JSON]:
        """A task failed; ``error`` (an exception or a text) is kept on the task."""
        return self._enqueue(task_spec(job_id, task_id, task_status_body("failed", error=error)))

    def progress(
        self,
        job_id: str,
        *,
        succeeded: Optional[int] = None,
        failed: Optional[int] = None,
        total: Optional[int] = None,
        progress: Optional[float] = None,
        stage: Optional[str] = None,
        current_item: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        error: Optional[object] = None,
    ) -> Future[JSON]:
        """Reports progress. ``succeeded``/``failed``/``total`` are absolute
        counts (once reported, they replace the counts derived from tasks);
        ``progress`` an explicit percent; ``metadata`` a JSON merge patch;
        ``error`` is appended to the job's error log.

        Calls for one job within the coalescing window fold into one request:
        later values win, metadata patches compose, two errors are never
        folded into one. The future is shared by the calls folded together.
        """
        body = progress_body(
            succeeded=succeeded,
            failed=failed,
            total=total,
            progress=progress,
            stage=stage,
            current_item=current_item,
            metadata=metadata,
            error=error,
        )
        spec = Spec(job_id, "POST", progress_path(job_id), body)
        with self._lock:
            self._check_open()
            deadline: Optional[float] = None
            while True:
                buf = self._lanes.buffer(job_id)
                if buf is not None:
                    if buf.merge(body):
                        self._stats.coalesced += 1
                        return buf.future
                    self._close_buffer(job_id)  # cannot share a request: send that one first
                if self._lanes.size < self._max_queue:
                    break
                # Full: fold into this job's newest report that is not sent yet.
                tail = self._lanes.tail(job_id)
                if tail is not None and tail.merge(body):
                    self._stats.coalesced += 1
                    return tail.future
                deadline = self._wait_for_room(deadline, spec)
            fut: Future[JSON] = Future()
            req = Request(spec, fut, progress=True)
            if self._coalesce > 0:
                self._lanes.open_buffer(req, time.monotonic() + self._coalesce)
            else:
                self._lanes.push(req)
            self._start_senders()
            self._work.notify()
        return fut

    def artifact(self, job_id: str, kind: str, payload: Any) -> Future[JSON]:
        """Records something the job produced: ``kind`` (``screenshot``,
        ``ocr``, ``label``...) and any JSON ``payload`` (a URL, a text...)."""
        return self._enqueue(artifact_spec(job_id, kind, payload))

    def job_completed(
        self, job_id: str, *, stage: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None
    ) -> Future[JSON]:
        return self._enqueue(job_finished_spec(job_id, "completed", error=None, stage=stage, metadata=metadata))

    def job_failed(
        self,
        job_id: str,
        error: Optional[object] = None,
        *,
        stage: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Future[JSON]:
        """Marks the job failed; ``error`` (an exception or a text) goes to its error log."""
        return self._enqueue(job_finished_spec(job_id, "failed", error=error, stage=stage, metadata=metadata))

    def notify(
        self,
        recipient: str,
        title: str,
        *,
        body: Optional[str] = None,
        level: Optional[str] = None,
        link: Optional[str] = None,
    ) -> Future[JSON]:
        """Sends a notification to the user whose ``sub`` is ``recipient``
        (``level``: info, success, warning or error)."""
        return self._enqueue(notify_spec(recipient, title, body=body, level=level, link=link))

    def job(
        self,
        job_id: str,
        *,
        title: Optional[str] = None,
        kind: Optional[str] = None,
        owner: Optional[str] = None,
        total: Optional[int] = None,
        stage: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        tasks: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> JobReporter:
        """One job's reports, as a context manager: started on entry,
        completed on a clean exit (then flushed: errors of its reports
        raise there), failed with the exception's message otherwise (the
        exception propagates; the report is delivered in the background)."""
        start: Dict[str, Any] = dict(
            title=title, kind=kind, owner=owner, total=total, stage=stage, metadata=metadata, tasks=tasks
        )
        return JobReporter(self, job_id, start)

    # Waiting and closing.

    def flush(self, job_id: Optional[str] = None, timeout: Optional[float] = None) -> None:
        """Sends coalesced progress now and waits until every report queued
        so far (of one job, or all) has Herald's answer. Raises the first
        failure since the previous ``flush`` (each failure is raised once),
        or :class:`Unavailable` (``flush_timeout``) after ``timeout`` seconds."""
        with self._lock:
            for lane in [job_id] if job_id is not None else self._lanes.buffered_lanes():
                self._close_buffer(lane)
            pending = [r.future for r in self._lanes.outstanding(job_id)]
            self._work.notify_all()
        _, not_done = wait_futures(pending, timeout)
        if not_done:
            raise Unavailable("flush_timeout", f"{len(not_done)} reports still unanswered after {timeout} s")
        self._raise_failures(job_id)

    def close(self, timeout: Optional[float] = 30.0) -> None:
        """Delivers what is queued (waiting up to ``timeout`` seconds), then
        stops the senders. Reports still undelivered then are dropped and
        close raises :class:`Unavailable` (``closed``); otherwise it raises
        the first failure not yet raised by ``flush``. Later reporting
        calls raise ``HeraldError("closed")``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for lane in self._lanes.buffered_lanes():
                self._close_buffer(lane)
            pending = [r.future for r in self._lanes.outstanding()]
            self._work.notify_all()
            self._room.notify_all()
        _, not_done = wait_futures(pending, timeout)
        lost: List[Request[Future[JSON]]] = []
        with self._lock:
            self._stopping = True
            if not_done:
                self._abandoned.set()
                lost = self._lanes.abandon()
            self._work.notify_all()
        for req in lost:
            self._settle(req, None, HeraldError("closed", "the reporter was closed before this report was sent"))
        for t in self._threads:
            # A request in flight ends within its HTTP timeout.
            t.join(self._timeout + 5.0)
        self._http.close()
        _OPEN.discard(self)
        if not_done:
            err = Unavailable("closed", f"{len(not_done)} reports were not delivered within {timeout} s")
            self._failures.clear()
            raise err
        self._raise_failures(None)

    def stats(self) -> ReporterStats:
        with self._lock:
            return self._stats.copy(self._lanes.size)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except HeraldError as e:  # the exception in flight matters more
            log.warning("herald: closing the reporter: %s", e)

    # The queue.

    def _check_open(self) -> None:
        if self._closed:
            raise HeraldError("closed", "the reporter is closed")

    def _enqueue(self, spec: Spec) -> Future[JSON]:
        fut: Future[JSON] = Future()
        req: Request[Future[JSON]] = Request(spec, fut)
        with self._lock:
            self._check_open()
            deadline: Optional[float] = None
            while True:
                # A status change never overtakes the progress reported before it.
                self._close_buffer(spec.lane)
                if self._lanes.size < self._max_queue:
                    break
                deadline = self._wait_for_room(deadline, spec)
            self._lanes.push(req)
            self._start_senders()
            self._work.notify()
        return fut

    def _wait_for_room(self, deadline: Optional[float], spec: Spec) -> float:
        """Waits (lock held) once for room; raises QueueFull past the deadline."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._queue_timeout
        if now >= deadline:
            raise QueueFull(
                f"{self._lanes.size} reports are waiting for Herald (max_queue {self._max_queue}); "
                f"{spec.method} {spec.path} was not queued after {self._queue_timeout} s"
            )
        self._room.wait(deadline - now)
        self._check_open()
        return deadline

    def _close_buffer(self, lane: str) -> None:
        merged = self._lanes.close_buffer(lane)
        self._stats.coalesced += merged
        if merged:
            self._room.notify_all()

    def _start_senders(self) -> None:
        if self._threads:
            return
        for i in range(self._max_in_flight):
            t = threading.Thread(target=self._sender, name=f"herald-reporter-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _next_request(self) -> Optional[Request[Future[JSON]]]:
        """The next request to send (lock held), or None when stopping and idle."""
        while True:
            now = time.monotonic()
            for lane in self._lanes.due(now):
                self._close_buffer(lane)
            req = self._lanes.take()
            if req is not None:
                return req
            if self._stopping and self._lanes.size == 0:
                return None
            deadline = self._lanes.next_deadline()
            self._work.wait(None if deadline is None else max(0.0, deadline - now))

    def _sender(self) -> None:
        while True:
            with self._lock:
                req = self._next_request()
            if req is None:
                return
            result: Optional[JSON] = None
            error: Optional[HeraldError] = None
            try:
                result = self._execute(req)
            except HeraldError as e:
                error = e
            except Exception as e:  # a bug here or in a library: fail this report, keep the sender
                log.exception("herald: unexpected error sending %s", req.describe())
                error = HeraldError("internal", f"{type(e).__name__}: {e}")
            self._settle(req, result, error)
            with self._lock:
                self._lanes.done(req)
                self._room.notify_all()
                self._work.notify_all()

    def _settle(self, req: Request[Future[JSON]], result: Optional[JSON], error: Optional[HeraldError]) -> None:
        # The failure is on record before any future resolves, so a flush()
        # that wakes on the futures finds it.
        with self._lock:
            if error is not None:
                error.request = req.describe()
                self._failures.setdefault(req.lane, []).append(error)
                self._stats.failed += 1
            else:
                self._stats.sent += 1
        for f in req.futures():
            try:
                if error is not None:
                    f.set_exception(error)
                else:
                    f.set_result(result if result is not None else {})
            except InvalidStateError:  # cancelled by its caller: nobody waits for it
                pass
        if error is not None:
            if self._on_error is not None:
                try:
                    self._on_error(error)
                except Exception:
                    log.exception("herald: on_error raised")
            else:
                log.warning("herald: %s failed: %s", req.describe(), error)

    def _raise_failures(self, job_id: Optional[str]) -> None:
        with self._lock:
            if job_id is not None:
                failures = self._failures.pop(job_id, [])
            else:
                failures = [e for errs in self._failures.values() for e in errs]
                self._failures.clear()
        if failures:
            raise failures[0]

    # Sending.

    def _execute(self, req: Request[Future[JSON]]) -> JSON:
        spec = req.spec
        try:
            return self._send(spec.method, spec.path, req.content(), req.key)
        except NotFound as e:
            if spec.create is None or e.code != "not_found":
                raise
        # job_started on a job that does not exist yet: create it running.
        try:
            job = self._send("POST", "/v1/jobs", dumps(spec.create), new_key())
        except Conflict as e:
            if e.code != "conflict":
                raise
            # Created meanwhile with other fields (another worker): the report
            # applies to it as planned. A refused request wrote nothing, so
            # its key is still free.
            return self._send(spec.method, spec.path, req.content(), req.key)
        if spec.stage_after_create is not None:
            job = self._send("POST", spec.path, dumps({"stage": spec.stage_after_create}), new_key())
        return job

    def _send(self, method: str, path: str, content: bytes, key: str) -> JSON:
        """One logical request: retried under one Idempotency-Key on network
        errors, 5xx, 408 and 429 for up to ``retry_timeout``; any other 4xx
        raises at once."""
        started = time.monotonic()
        attempt = 0
        refreshed = False
        while True:
            if self._abandoned.is_set():
                raise HeraldError("closed", "the reporter was closed before this report was answered")
            token = self._token_value()
            with self._lock:
                self._stats.attempts += 1
            wait: Optional[float] = None
            try:
                resp = self._http.request(method, path, content=content, headers=headers(token, key))
            except httpx.TransportError as e:
                err = transport_error(e)
            else:
                if resp.is_success:
                    return parse_json_object(resp.content)
                err = error_from_response(resp.status_code, resp.content)
                if resp.status_code == 401 and self._get_token is not None and not refreshed:
                    refreshed = True
                    self._refresh_token(token)
                    continue
                if not is_retryable_status(resp.status_code):
                    raise err
                wait = retry_after(resp.headers)
            delay = backoff_delay(attempt, *self._backoff)
            if wait is not None:
                delay = max(delay, min(wait, self._backoff[1]))
            attempt += 1
            if self._retry_timeout is not None and time.monotonic() + delay - started > self._retry_timeout:
                raise err
            with self._lock:
                self._stats.retries += 1
            if self._abandoned.wait(delay):
                raise HeraldError("closed", "the reporter was closed before this report was answered")

    def _token_value(self) -> str:
        token = self._token
        if token is not None:
            return token
        with self._token_lock:
            if self._token is None:
                assert self._get_token is not None
                self._token = self._get_token()
            return self._token

    def _refresh_token(self, stale: str) -> None:
        with self._token_lock:
            # Several senders may see the same 401: one refresh serves them.
            if self._token == stale and self._get_token is not None:
                self._token = self._get_token()


class JobReporter:
    """The reporting calls of one job, without repeating its id. As a
    context manager (``with reporter.job("id", title=...) as job:``) the job
    is started on entry and completed or failed on exit."""

    def __init__(self, reporter: Reporter, job_id: str, start: Dict[str, Any]) -> None:
        self.reporter = reporter
        self.id = job_id
        self._start = start

    def task_started(self, task_id: str, name: Optional[str] = None) -> Future[JSON]:
        return self.reporter.task_started(self.id, task_id, name)

    def task_succeeded(self, task_id: str) -> Future[JSON]:
        return self.reporter.task_succeeded(self.id, task_id)

    def task_failed(self, task_id: str, error: Optional[object] = None) -> Future[JSON]:
        return self.reporter.task_failed(self.id, task_id, error)

    def progress(self, **fields: Any) -> Future[JSON]:
        """See :meth:`Reporter.progress`."""
        return self.reporter.progress(self.id, **fields)

    def artifact(self, kind: str, payload: Any) -> Future[JSON]:
        return self.reporter.artifact(self.id, kind, payload)

    def flush(self, timeout: Optional[float] = None) -> None:
        self.reporter.flush(self.id, timeout)

    def __enter__(self) -> JobReporter:
        self.reporter.job_started(self.id, **self._start)
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            self.reporter.job_completed(self.id)
            self.reporter.flush(self.id)
            return
        try:
            self.reporter.job_failed(self.id, exc)
        except HeraldError as e:  # the worker's own exception matters more
            log.warning("herald: reporting job %s failed: %s", self.id, e)
