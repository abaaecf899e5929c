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
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import httpx

from ._common import (
    JSON,
    Attempts,
    Spec,
    append_spec,
    artifact_spec,
    chunk_json,
    create_job_spec,
    headers,
    http_options,
    job_finished_spec,
    job_started_spec,
    notify_spec,
    progress_body,
    progress_spec,
    task_spec,
    task_status_body,
)
from ._queue import Request, StreamTarget
from ._reporter_base import ReporterBase, StreamWriterBase, delivery
from .errors import HeraldError

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


class Reporter(ReporterBase["Future[JSON]"]):
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

    ``stream_linger``: seconds a batch of stream chunks (:meth:`stream`)
    gathers more before it is sent as one append (0: as soon as a sender is
    free). ``stream_batch``: most chunks in one append (at most 10,000); a
    full batch is sent at once.
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
        stream_linger: float = 0.1,
        stream_batch: int = 1000,
    ) -> None:
        self._configure(
            url, token, get_token is not None, coalesce, max_queue, queue_timeout, retry_timeout, backoff, timeout,
            max_in_flight, on_error, stream_linger, stream_batch
        )
        self._get_token = get_token
        self._http = httpx.Client(**http_options(self.url, timeout, transport, max_in_flight))
        # One lock guards the queue and the counters; `_work` wakes senders
        # (work arrived, a window ended), `_room` wakes callers waiting for
        # room in a full queue.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._token_lock = threading.Lock()
        self._threads: List[threading.Thread] = []
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
            succeeded=succeeded, failed=failed, total=total, progress=progress, stage=stage, current_item=current_item,
            metadata=metadata, error=error,
        )
        spec = progress_spec(job_id, body)
        with self._lock:
            self._check_open()
            deadline: Optional[float] = None
            while True:
                folded, room = self._fold_progress(job_id, spec.body)
                if folded is not None:
                    return folded
                if room:
                    break
                deadline = self._wait_for_room(deadline, spec)
            fut: Future[JSON] = Future()
            self._queue_progress(spec, fut)
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

    def append_chunks(self, job_id: str, stream: str, chunks: Sequence[Any]) -> Future[JSON]:
        """Appends ``chunks`` (1 to 10,000 JSON values of at most 64 KiB each)
        to the job's output stream ``stream`` as one request, queued in order
        with the job's other reports; the answer is ``{"stream",
        "first_offset", "next_offset", "floor"}``. To write chunk by chunk,
        use :meth:`stream`, which batches them."""
        return self._enqueue(append_spec(job_id, stream, chunks))

    def stream(self, job_id: str, name: str) -> StreamWriter:
        """A writer of the job's output stream ``name`` (1–64 characters of
        ``A-Za-z0-9_-.``; created on first append): ``write(chunk)`` queues
        one chunk, and chunks travel in batches, one append per batch."""
        return StreamWriter(self, StreamTarget(job_id, name, self._stream_batch))

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
            pending = self._pending(job_id)
            self._work.notify_all()
        _, not_done = wait_futures(pending, timeout)
        self._raise_flush_timeout(len(not_done), timeout)
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
            pending = self._pending(None)
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
        self._settle_lost(lost)
        for t in self._threads:
            # A request in flight ends within its HTTP timeout.
            t.join(self._timeout + 5.0)
        self._http.close()
        _OPEN.discard(self)
        self._raise_after_close(len(not_done), timeout)

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
            self._log_close_error(e)

    # The queue.

    def _guard(self) -> ContextManager[Any]:
        return self._lock

    def _room_freed(self) -> None:
        self._room.notify_all()

    def _resolve(self, future: Future[JSON], result: JSON, error: Optional[HeraldError]) -> None:
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        except InvalidStateError:  # cancelled by its caller: nobody waits for it
            pass

    def _enqueue(self, spec: Spec) -> Future[JSON]:
        fut: Future[JSON] = Future()
        req: Request[Future[JSON]] = Request(spec, fut)
        with self._lock:
            self._check_open()
            deadline: Optional[float] = None
            while not self._has_room(spec):
                deadline = self._wait_for_room(deadline, spec)
            self._lanes.push(req)
            self._start_senders()
            self._work.notify()
        return fut

    def _write_chunk(self, target: StreamTarget, chunk: Any) -> Future[JSON]:
        part = chunk_json(chunk)
        with self._lock:
            self._check_open()
            deadline: Optional[float] = None
            while True:
                folded, room, wake = self._fold_chunk(target, part)
                if folded is not None:
                    if wake:
                        self._work.notify()
                    return folded
                if room:
                    break
                self._work.notify()  # a batch closed above may be sendable
                deadline = self._wait_for_room(deadline, target.spec)
            fut: Future[JSON] = Future()
            self._queue_chunk(target, part, fut)
            self._start_senders()
            self._work.notify()
        return fut

    def _wait_for_room(self, deadline: Optional[float], spec: Spec) -> float:
        """Waits (lock held) once for room; raises QueueFull past the deadline."""
        deadline, left = self._room_wait(deadline, spec)
        self._room.wait(left)
        self._check_open()
        return deadline

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
            req, stop = self._poll(now)
            if req is not None or stop:
                return req
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
            except Exception as e:
                error = self._unexpected(req, e)
            self._settle(req, result, error)
            with self._lock:
                self._lanes.done(req)
                self._room.notify_all()
                self._work.notify_all()

    # Sending.

    def _execute(self, req: Request[Future[JSON]]) -> JSON:
        """Makes the requests of :func:`delivery`."""
        plan = delivery(req)
        try:
            call = next(plan)
            while True:
                try:
                    answer = self._send(*call)
                except HeraldError as e:
                    call = plan.throw(e)
                else:
                    call = plan.send(answer)
        except StopIteration as done:
            result: JSON = done.value
            return result

    def _send(self, method: str, path: str, content: bytes, key: str) -> JSON:
        """One logical request: retried under one Idempotency-Key on network
        errors, 5xx, 408 and 429 for up to ``retry_timeout``; any other 4xx
        raises at once."""
        attempts = Attempts(self._backoff, self._retry_timeout, self._get_token is not None)
        while True:
            if self._abandoned.is_set():
                raise HeraldError("closed", "the reporter was closed before this report was answered")
            token = self._token_value()
            with self._lock:
                self._stats.attempts += 1
            answer: Any
            try:
                answer = self._http.request(method, path, content=content, headers=headers(token, key))
            except httpx.TransportError as e:
                answer = e
            delay = attempts.judge(answer)
            if isinstance(delay, dict):
                return delay
            if delay is None:
                self._refresh_token(token)
                continue
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

    def stream(self, name: str) -> StreamWriter:
        """See :meth:`Reporter.stream`."""
        return self.reporter.stream(self.id, name)

    def append_chunks(self, stream: str, chunks: Sequence[Any]) -> Future[JSON]:
        return self.reporter.append_chunks(self.id, stream, chunks)

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


class StreamWriter(StreamWriterBase):
    """Writes one job output stream through a :class:`Reporter` (from
    :meth:`Reporter.stream`). Chunks are queued in call order and travel in
    batches: a batch is sent as one append once it holds ``stream_batch``
    chunks (or 512 KiB), or ``stream_linger`` seconds after its first chunk,
    or at ``flush()``. Each append is retried under its own Idempotency-Key,
    so every chunk lands once and in order, across restarts of Herald.

    The job's progress and its other streams do not split a batch; any
    other report of the job (a task, an artifact, a status change) is sent
    after the chunks written before it. When an append fails for good, its
    error is raised by ``flush()``/``close()`` and by every later ``write()``:
    the writer's later chunks are not sent past the hole. As a context
    manager it is closed on exit.
    """

    reporter: Reporter

    def write(self, chunk: Any) -> Future[JSON]:
        """Queues one chunk: any JSON value (a string for a line or a token,
        an object for a record) of at most 64 KiB as JSON, or ``ValueError``
        / ``TypeError`` now. Returns the future of the append it travels in
        (shared by the batch's chunks), Herald's ``{"stream", "first_offset",
        "next_offset", "floor"}``. Waits for room like every report when the
        queue is full; raises the error of an earlier failed append."""
        return self.reporter._write_chunk(self._target, chunk)

    def write_many(self, chunks: Iterable[Any]) -> Optional[Future[JSON]]:
        """Queues chunks in order; the future of the last one (None for none)."""
        fut: Optional[Future[JSON]] = None
        for c in chunks:
            fut = self.write(c)
        return fut

    def flush(self, timeout: Optional[float] = None) -> None:
        """Sends the batch now and waits until Herald answered every report
        of the job queued so far (see :meth:`Reporter.flush`); raises the
        first failure, and this writer's failed append if there was one."""
        self.reporter.flush(self.job_id, timeout)
        self._raise_failure()

    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes; later writes raise ``HeraldError("closed")``."""
        self._target.closed = True
        self.flush(timeout)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except HeraldError as e:
            self._log_close_error(e)
