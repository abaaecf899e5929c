"""The worker side, asyncio flavour: :class:`AsyncReporter`.

The same queue, policies and calls as :class:`herald_client.Reporter`, with
sender tasks on the running event loop instead of threads. ``await
reporter.progress(...)`` returns as soon as the report is queued (it waits
only for room in a full queue) with an :class:`asyncio.Future` for Herald's
answer: ``await`` that future, or ``await reporter.flush()``, to wait for it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from types import TracebackType
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

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

TokenGetter = Callable[[], Union[str, Awaitable[str]]]


def _consume(f: asyncio.Future[JSON]) -> None:
    # A failure is logged (or handed to on_error) and raised by flush(); an
    # unawaited future must not also print "exception was never retrieved".
    if not f.cancelled():
        f.exception()


class _Loop:
    """What binds a reporter to the event loop it is used from. Made on
    first use: asyncio primitives must be created inside the running loop
    (Python 3.9 binds them at creation)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.work = asyncio.Event()  # work arrived, a window ended
        self.room = asyncio.Event()  # a request left the queue
        self.abandoned = asyncio.Event()  # close() gave up on what is left
        self.token_lock = asyncio.Lock()
        self.tasks: List[asyncio.Task[None]] = []


async def _wait(event: asyncio.Event, timeout: Optional[float]) -> bool:
    """Waits for ``event`` up to ``timeout`` seconds; True if it was set."""
    if timeout is not None and timeout <= 0:
        return event.is_set()
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


class AsyncReporter:
    """Reports jobs to Herald from asyncio code. Options as for
    :class:`herald_client.Reporter`; ``get_token`` may be a coroutine
    function. Use it from one event loop, and close it (``async with`` or
    ``await reporter.close()``): queued reports are delivered by tasks of
    that loop."""

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        get_token: Optional[TokenGetter] = None,
        coalesce: float = 0.25,
        max_queue: int = 10_000,
        queue_timeout: float = 30.0,
        retry_timeout: Optional[float] = 60.0,
        backoff: Tuple[float, float] = (0.2, 5.0),
        timeout: float = 15.0,
        max_in_flight: int = 4,
        on_error: Optional[Callable[[HeraldError], None]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
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
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeouts(timeout),
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
        )
        self._lanes: Lanes[asyncio.Future[JSON]] = Lanes()
        self._failures: Dict[str, List[HeraldError]] = {}
        self._stats = ReporterStats()
        self._loop_state: Optional[_Loop] = None
        self._closed = False
        self._stopping = False

    @property
    def _ev(self) -> _Loop:
        st = self._loop_state
        if st is None:
            st = self._loop_state = _Loop()
        elif st.loop is not asyncio.get_running_loop():
            raise RuntimeError("an AsyncReporter is bound to the event loop it was first used from")
        return st

    # Reporting calls: each queues one request and returns its future.

    async def create_job(
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
    ) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.create_job`."""
        return await self._enqueue(
            create_job_spec(
                job_id, title=title, kind=kind, owner=owner, total=total, status=status, metadata=metadata, tasks=tasks
            )
        )

    async def job_started(
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
    ) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.job_started`."""
        return await self._enqueue(
            job_started_spec(
                job_id, title=title, kind=kind, owner=owner, total=total, stage=stage, metadata=metadata, tasks=tasks
            )
        )

    async def task_started(self, job_id: str, task_id: str, name: Optional[str] = None) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.task_started`."""
        fut = await self._enqueue(task_spec(job_id, task_id, task_status_body("running", name=name)))
        if name is not None:
            await self.progress(job_id, current_item=name)
        return fut

    async def task_succeeded(self, job_id: str, task_id: str) -> asyncio.Future[JSON]:
        return await self._enqueue(task_spec(job_id, task_id, task_status_body("succeeded")))

    async def task_failed(self, job_id: str, task_id: str, error: Optional[object] = None) -> asyncio.Future[JSON]:
        return await self._enqueue(task_spec(job_id, task_id, task_status_body("failed", error=error)))

    async def progress(
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
    ) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.progress`."""
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
        self._check_open()
        ev = self._ev
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
            deadline = await self._wait_for_room(deadline, spec)
        fut = self._new_future()
        req = Request(spec, fut, progress=True)
        if self._coalesce > 0:
            self._lanes.open_buffer(req, time.monotonic() + self._coalesce)
        else:
            self._lanes.push(req)
        self._start_senders()
        ev.work.set()
        return fut

    async def artifact(self, job_id: str, kind: str, payload: Any) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.artifact`."""
        return await self._enqueue(artifact_spec(job_id, kind, payload))

    async def job_completed(
        self, job_id: str, *, stage: Optional[str] = None, metadata: Optional[Mapping[str, Any]] = None
    ) -> asyncio.Future[JSON]:
        return await self._enqueue(job_finished_spec(job_id, "completed", error=None, stage=stage, metadata=metadata))

    async def job_failed(
        self,
        job_id: str,
        error: Optional[object] = None,
        *,
        stage: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> asyncio.Future[JSON]:
        return await self._enqueue(job_finished_spec(job_id, "failed", error=error, stage=stage, metadata=metadata))

    async def notify(
        self,
        recipient: str,
        title: str,
        *,
        body: Optional[str] = None,
        level: Optional[str] = None,
        link: Optional[str] = None,
    ) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.notify`."""
        return await self._enqueue(notify_spec(recipient, title, body=body, level=level, link=link))

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
    ) -> AsyncJobReporter:
        """``async with reporter.job("id", title=...) as job:`` — see
        :meth:`herald_client.Reporter.job`."""
        start: Dict[str, Any] = dict(
            title=title, kind=kind, owner=owner, total=total, stage=stage, metadata=metadata, tasks=tasks
        )
        return AsyncJobReporter(self, job_id, start)

    # Waiting and closing.

    async def flush(self, job_id: Optional[str] = None, timeout: Optional[float] = None) -> None:
        """See :meth:`herald_client.Reporter.flush`."""
        for lane in [job_id] if job_id is not None else self._lanes.buffered_lanes():
            self._close_buffer(lane)
        pending = [r.future for r in self._lanes.outstanding(job_id)]
        if pending:
            self._ev.work.set()
            _, not_done = await asyncio.wait(pending, timeout=timeout)
            if not_done:
                raise Unavailable("flush_timeout", f"{len(not_done)} reports still unanswered after {timeout} s")
        self._raise_failures(job_id)

    async def close(self, timeout: Optional[float] = 30.0) -> None:
        """See :meth:`herald_client.Reporter.close`."""
        if self._closed:
            return
        self._closed = True
        st = self._loop_state
        not_done: List[asyncio.Future[JSON]] = []
        if st is not None:
            for lane in self._lanes.buffered_lanes():
                self._close_buffer(lane)
            pending = [r.future for r in self._lanes.outstanding()]
            st.work.set()
            st.room.set()
            if pending:
                _, left = await asyncio.wait(pending, timeout=timeout)
                not_done = list(left)
            self._stopping = True
            if not_done:
                st.abandoned.set()
                for req in self._lanes.abandon():
                    self._settle(
                        req, None, HeraldError("closed", "the reporter was closed before this report was sent")
                    )
            st.work.set()
            if st.tasks:
                # A request in flight ends within its HTTP timeout.
                _, stuck = await asyncio.wait(st.tasks, timeout=self._timeout + 5.0)
                for t in stuck:
                    t.cancel()
        await self._http.aclose()
        if not_done:
            self._failures.clear()
            raise Unavailable("closed", f"{len(not_done)} reports were not delivered within {timeout} s")
        self._raise_failures(None)

    aclose = close

    def stats(self) -> ReporterStats:
        return self._stats.copy(self._lanes.size)

    async def __aenter__(self) -> AsyncReporter:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:
            await self.close()
        except HeraldError as e:  # the exception in flight matters more
            log.warning("herald: closing the reporter: %s", e)

    # The queue.

    def _check_open(self) -> None:
        if self._closed:
            raise HeraldError("closed", "the reporter is closed")

    def _new_future(self) -> asyncio.Future[JSON]:
        fut: asyncio.Future[JSON] = self._ev.loop.create_future()
        fut.add_done_callback(_consume)
        return fut

    async def _enqueue(self, spec: Spec) -> asyncio.Future[JSON]:
        self._check_open()
        ev = self._ev
        deadline: Optional[float] = None
        while True:
            # A status change never overtakes the progress reported before it.
            self._close_buffer(spec.lane)
            if self._lanes.size < self._max_queue:
                break
            deadline = await self._wait_for_room(deadline, spec)
        fut = self._new_future()
        self._lanes.push(Request(spec, fut))
        self._start_senders()
        ev.work.set()
        return fut

    async def _wait_for_room(self, deadline: Optional[float], spec: Spec) -> float:
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._queue_timeout
        if now >= deadline:
            raise QueueFull(
                f"{self._lanes.size} reports are waiting for Herald (max_queue {self._max_queue}); "
                f"{spec.method} {spec.path} was not queued after {self._queue_timeout} s"
            )
        room = self._ev.room
        room.clear()
        await _wait(room, deadline - now)
        self._check_open()
        return deadline

    def _close_buffer(self, lane: str) -> None:
        merged = self._lanes.close_buffer(lane)
        self._stats.coalesced += merged
        if merged and self._loop_state is not None:
            self._loop_state.room.set()

    def _start_senders(self) -> None:
        st = self._ev
        if st.tasks:
            return
        for _ in range(self._max_in_flight):
            st.tasks.append(st.loop.create_task(self._sender()))

    async def _next_request(self) -> Optional[Request[asyncio.Future[JSON]]]:
        st = self._ev
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
            # No await between the checks above and clear(): no wake-up is lost.
            st.work.clear()
            await _wait(st.work, None if deadline is None else max(0.001, deadline - now))

    async def _sender(self) -> None:
        st = self._ev
        while True:
            req = await self._next_request()
            if req is None:
                return
            result: Optional[JSON] = None
            error: Optional[HeraldError] = None
            try:
                result = await self._execute(req)
            except HeraldError as e:
                error = e
            except Exception as e:  # a bug here or in a library: fail this report, keep the sender
                log.exception("herald: unexpected error sending %s", req.describe())
                error = HeraldError("internal", f"{type(e).__name__}: {e}")
            self._settle(req, result, error)
            self._lanes.done(req)
            st.room.set()
            st.work.set()

    def _settle(self, req: Request[asyncio.Future[JSON]], result: Optional[JSON], error: Optional[HeraldError]) -> None:
        if error is not None:
            error.request = req.describe()
            self._failures.setdefault(req.lane, []).append(error)
            self._stats.failed += 1
        else:
            self._stats.sent += 1
        for f in req.futures():
            if f.done():  # cancelled by its caller: nobody waits for it
                continue
            if error is not None:
                f.set_exception(error)
            else:
                f.set_result(result if result is not None else {})
        if error is not None:
            if self._on_error is not None:
                try:
                    self._on_error(error)
                except Exception:
                    log.exception("herald: on_error raised")
            else:
                log.warning("herald: %s failed: %s", req.describe(), error)

    def _raise_failures(self, job_id: Optional[str]) -> None:
        if job_id is not None:
            failures = self._failures.pop(job_id, [])
        else:
            failures = [e for errs in self._failures.values() for e in errs]
            self._failures.clear()
        if failures:
            raise failures[0]

    # Sending.

    async def _execute(self, req: Request[asyncio.Future[JSON]]) -> JSON:
        spec = req.spec
        try:
            return await self._send(spec.method, spec.path, req.content(), req.key)
        except NotFound as e:
            if spec.create is None or e.code != "not_found":
                raise
        # job_started on a job that does not exist yet: create it running.
        try:
            job = await self._send("POST", "/v1/jobs", dumps(spec.create), new_key())
        except Conflict as e:
            if e.code != "conflict":
                raise
            # Created meanwhile with other fields: report to it as planned.
            return await self._send(spec.method, spec.path, req.content(), req.key)
        if spec.stage_after_create is not None:
            job = await self._send("POST", spec.path, dumps({"stage": spec.stage_after_create}), new_key())
        return job

    async def _send(self, method: str, path: str, content: bytes, key: str) -> JSON:
        """See :meth:`herald_client.Reporter._send`."""
        st = self._ev
        started = time.monotonic()
        attempt = 0
        refreshed = False
        while True:
            if st.abandoned.is_set():
                raise HeraldError("closed", "the reporter was closed before this report was answered")
            token = await self._token_value()
            self._stats.attempts += 1
            wait: Optional[float] = None
            try:
                resp = await self._http.request(method, path, content=content, headers=headers(token, key))
            except httpx.TransportError as e:
                err = transport_error(e)
            else:
                if resp.is_success:
                    return parse_json_object(resp.content)
                err = error_from_response(resp.status_code, resp.content)
                if resp.status_code == 401 and self._get_token is not None and not refreshed:
                    refreshed = True
                    await self._refresh_token(token)
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
            self._stats.retries += 1
            if await _wait(st.abandoned, delay):
                raise HeraldError("closed", "the reporter was closed before this report was answered")

    async def _call_get_token(self) -> str:
        assert self._get_token is not None
        value = self._get_token()
        if inspect.isawaitable(value):
            return await value
        return value

    async def _token_value(self) -> str:
        if self._token is not None:
            return self._token
        async with self._ev.token_lock:
            if self._token is None:
                self._token = await self._call_get_token()
            return self._token

    async def _refresh_token(self, stale: str) -> None:
        async with self._ev.token_lock:
            if self._token == stale:
                self._token = await self._call_get_token()


class AsyncJobReporter:
    """The reporting calls of one job; ``async with reporter.job(...) as
    job:`` starts it on entry and completes or fails it on exit (see
    :class:`herald_client.JobReporter`)."""

    def __init__(self, reporter: AsyncReporter, job_id: str, start: Dict[str, Any]) -> None:
        self.reporter = reporter
        self.id = job_id
        self._start = start

    async def task_started(self, task_id: str, name: Optional[str] = None) -> asyncio.Future[JSON]:
        return await self.reporter.task_started(self.id, task_id, name)

    async def task_succeeded(self, task_id: str) -> asyncio.Future[JSON]:
        return await self.reporter.task_succeeded(self.id, task_id)

    async def task_failed(self, task_id: str, error: Optional[object] = None) -> asyncio.Future[JSON]:
        return await self.reporter.task_failed(self.id, task_id, error)

    async def progress(self, **fields: Any) -> asyncio.Future[JSON]:
        return await self.reporter.progress(self.id, **fields)

    async def artifact(self, kind: str, payload: Any) -> asyncio.Future[JSON]:
        return await self.reporter.artifact(self.id, kind, payload)

    async def flush(self, timeout: Optional[float] = None) -> None:
        await self.reporter.flush(self.id, timeout)

    async def __aenter__(self) -> AsyncJobReporter:
        await self.reporter.job_started(self.id, **self._start)
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            await self.reporter.job_completed(self.id)
            await self.reporter.flush(self.id)
            return
        try:
            await self.reporter.job_failed(self.id, exc)
        except HeraldError as e:
            log.warning("herald: reporting job %s failed: %s", self.id, e)
