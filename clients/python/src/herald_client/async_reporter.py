"""The worker side, asyncio flavour: :class:`AsyncReporter`.

The same queue, policies and calls as :class:`herald_client.Reporter`, with
sender tasks on the running event loop instead of threads. ``await
reporter.progress(...)`` returns as soon as the report is queued (it waits
only for room in a full queue) with an :class:`asyncio.Future` for Herald's
answer: ``await`` that future, or ``await reporter.flush()``, to wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from contextlib import nullcontext
from typing import (
    Any,
    Awaitable,
    Callable,
    ContextManager,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

import httpx

from ._common import (
    JSON,
    Attempts,
    Spec,
    append_spec,
    artifact_spec,
    call_token_getter,
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


class AsyncReporter(ReporterBase["asyncio.Future[JSON]"]):
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
        stream_linger: float = 0.1,
        stream_batch: int = 1000,
    ) -> None:
        self._configure(
            url, token, get_token is not None, coalesce, max_queue, queue_timeout, retry_timeout, backoff, timeout,
            max_in_flight, on_error, stream_linger, stream_batch
        )
        self._get_token = get_token
        self._http = httpx.AsyncClient(**http_options(self.url, timeout, transport, max_in_flight))
        self._loop_state: Optional[_Loop] = None

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
            succeeded=succeeded, failed=failed, total=total, progress=progress, stage=stage, current_item=current_item,
            metadata=metadata, error=error,
        )
        spec = progress_spec(job_id, body)
        self._check_open()
        ev = self._ev
        deadline: Optional[float] = None
        while True:
            folded, room = self._fold_progress(job_id, spec.body)
            if folded is not None:
                return folded
            if room:
                break
            deadline = await self._wait_for_room(deadline, spec)
        fut = self._new_future()
        self._queue_progress(spec, fut)
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

    async def append_chunks(self, job_id: str, stream: str, chunks: Sequence[Any]) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.Reporter.append_chunks`."""
        return await self._enqueue(append_spec(job_id, stream, chunks))

    def stream(self, job_id: str, name: str) -> AsyncStreamWriter:
        """See :meth:`herald_client.Reporter.stream`."""
        return AsyncStreamWriter(self, StreamTarget(job_id, name, self._stream_batch))

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
        pending = self._pending(job_id)
        if pending:
            self._ev.work.set()
            _, not_done = await asyncio.wait(pending, timeout=timeout)
            self._raise_flush_timeout(len(not_done), timeout)
        self._raise_failures(job_id)

    async def close(self, timeout: Optional[float] = 30.0) -> None:
        """See :meth:`herald_client.Reporter.close`."""
        if self._closed:
            return
        self._closed = True
        st = self._loop_state
        not_done: List[asyncio.Future[JSON]] = []
        if st is not None:
            pending = self._pending(None)
            st.work.set()
            st.room.set()
            if pending:
                _, left = await asyncio.wait(pending, timeout=timeout)
                not_done = list(left)
            self._stopping = True
            if not_done:
                st.abandoned.set()
                self._settle_lost(self._lanes.abandon())
            st.work.set()
            if st.tasks:
                # A request in flight ends within its HTTP timeout.
                _, stuck = await asyncio.wait(st.tasks, timeout=self._timeout + 5.0)
                for t in stuck:
                    t.cancel()
        await self._http.aclose()
        self._raise_after_close(len(not_done), timeout)

    aclose = close

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
            self._log_close_error(e)

    # The queue.

    def _guard(self) -> ContextManager[Any]:
        return nullcontext()  # one event loop: nothing runs between two awaits

    def _room_freed(self) -> None:
        if self._loop_state is not None:
            self._loop_state.room.set()

    def _resolve(self, future: asyncio.Future[JSON], result: JSON, error: Optional[HeraldError]) -> None:
        if future.done():  # cancelled by its caller: nobody waits for it
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _new_future(self) -> asyncio.Future[JSON]:
        fut: asyncio.Future[JSON] = self._ev.loop.create_future()
        fut.add_done_callback(_consume)
        return fut

    async def _enqueue(self, spec: Spec) -> asyncio.Future[JSON]:
        self._check_open()
        ev = self._ev
        deadline: Optional[float] = None
        while not self._has_room(spec):
            deadline = await self._wait_for_room(deadline, spec)
        fut = self._new_future()
        self._lanes.push(Request(spec, fut))
        self._start_senders()
        ev.work.set()
        return fut

    async def _write_chunk(self, target: StreamTarget, chunk: Any) -> asyncio.Future[JSON]:
        part = chunk_json(chunk)
        self._check_open()
        ev = self._ev
        deadline: Optional[float] = None
        while True:
            folded, room, wake = self._fold_chunk(target, part)
            if folded is not None:
                if wake:
                    ev.work.set()
                return folded
            if room:
                break
            ev.work.set()  # a batch closed above may be sendable
            deadline = await self._wait_for_room(deadline, target.spec)
        fut = self._new_future()
        self._queue_chunk(target, part, fut)
        self._start_senders()
        ev.work.set()
        return fut

    async def _wait_for_room(self, deadline: Optional[float], spec: Spec) -> float:
        deadline, left = self._room_wait(deadline, spec)
        room = self._ev.room
        room.clear()
        await _wait(room, left)
        self._check_open()
        return deadline

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
            req, stop = self._poll(now)
            if req is not None or stop:
                return req
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
            except Exception as e:
                error = self._unexpected(req, e)
            self._settle(req, result, error)
            self._lanes.done(req)
            st.room.set()
            st.work.set()

    # Sending.

    async def _execute(self, req: Request[asyncio.Future[JSON]]) -> JSON:
        """Makes the requests of :func:`delivery`."""
        plan = delivery(req)
        try:
            call = next(plan)
            while True:
                try:
                    answer = await self._send(*call)
                except HeraldError as e:
                    call = plan.throw(e)
                else:
                    call = plan.send(answer)
        except StopIteration as done:
            result: JSON = done.value
            return result

    async def _send(self, method: str, path: str, content: bytes, key: str) -> JSON:
        """See :meth:`herald_client.Reporter._send`."""
        st = self._ev
        attempts = Attempts(self._backoff, self._retry_timeout, self._get_token is not None)
        while True:
            if st.abandoned.is_set():
                raise HeraldError("closed", "the reporter was closed before this report was answered")
            token = await self._token_value()
            self._stats.attempts += 1
            answer: Any
            try:
                answer = await self._http.request(method, path, content=content, headers=headers(token, key))
            except httpx.TransportError as e:
                answer = e
            delay = attempts.judge(answer)
            if isinstance(delay, dict):
                return delay
            if delay is None:
                await self._refresh_token(token)
                continue
            self._stats.retries += 1
            if await _wait(st.abandoned, delay):
                raise HeraldError("closed", "the reporter was closed before this report was answered")

    async def _token_value(self) -> str:
        if self._token is not None:
            return self._token
        async with self._ev.token_lock:
            if self._token is None:
                self._token = await call_token_getter(self._get_token)
            return self._token

    async def _refresh_token(self, stale: str) -> None:
        async with self._ev.token_lock:
            if self._token == stale:
                self._token = await call_token_getter(self._get_token)


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

    def stream(self, name: str) -> AsyncStreamWriter:
        return self.reporter.stream(self.id, name)

    async def append_chunks(self, stream: str, chunks: Sequence[Any]) -> asyncio.Future[JSON]:
        return await self.reporter.append_chunks(self.id, stream, chunks)

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


class AsyncStreamWriter(StreamWriterBase):
    """The asyncio twin of :class:`herald_client.StreamWriter` (from
    :meth:`AsyncReporter.stream`): ``await writer.write(chunk)`` returns
    once the chunk is queued (it waits only for room in a full queue), with
    the future of the append it travels in; ``await writer.flush()``,
    ``await writer.close()``, ``async with``."""

    reporter: AsyncReporter

    async def write(self, chunk: Any) -> asyncio.Future[JSON]:
        """See :meth:`herald_client.StreamWriter.write`."""
        return await self.reporter._write_chunk(self._target, chunk)

    async def write_many(self, chunks: Iterable[Any]) -> Optional[asyncio.Future[JSON]]:
        fut: Optional[asyncio.Future[JSON]] = None
        for c in chunks:
            fut = await self.write(c)
        return fut

    async def flush(self, timeout: Optional[float] = None) -> None:
        """See :meth:`herald_client.StreamWriter.flush`."""
        await self.reporter.flush(self.job_id, timeout)
        self._raise_failure()

    async def close(self, timeout: Optional[float] = None) -> None:
        self._target.closed = True
        await self.flush(timeout)

    async def __aenter__(self) -> AsyncStreamWriter:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:
            await self.close()
        except HeraldError as e:
            self._log_close_error(e)
