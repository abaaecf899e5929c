"""What :class:`Reporter` and :class:`AsyncReporter` share: their options,
the bookkeeping around the queue (coalescing, room, failures, counters).
Each flavour adds its own locking, waiting and I/O:
``_guard()`` is the threaded flavour's lock (nothing for asyncio), and the
hooks ``_room_freed`` and ``_resolve`` wake waiters and settle futures."""

from __future__ import annotations

import logging
import time
from typing import Any, ContextManager, Dict, Generator, Generic, Hashable, List, Optional, Tuple, TypeVar

from ._common import (
    JSON,
    MAX_CHUNKS_PER_APPEND,
    ReporterStats,
    Spec,
    base_url,
    dumps,
    new_key,
    pair,
    split_token,
)
from ._queue import Batch, Lanes, Request, StreamTarget
from .errors import Conflict, HeraldError, NotFound, QueueFull, Unavailable

log = logging.getLogger("herald_client")

F = TypeVar("F")

#: One HTTP request: method, path, body, Idempotency-Key.
Call = Tuple[str, str, bytes, str]


def delivery(req: Request[Any]) -> Generator[Call, JSON, JSON]:
    """The HTTP requests that deliver ``req``, without doing them: yields
    each one and is sent its answer, or thrown its :class:`HeraldError`;
    returns the answer for ``req``'s future."""
    spec = req.spec
    if req.batch is not None and req.batch.target.failure is not None:
        # An earlier append of this writer failed for good: this one would
        # leave a hole in the stream.
        raise req.batch.target.failure
    try:
        return (yield (spec.method, spec.path, req.content(), req.key))
    except NotFound as e:
        if spec.create is None or e.code != "not_found":
            raise
    # job_started on a job that does not exist yet: create it running.
    try:
        job = yield ("POST", "/v1/jobs", dumps(spec.create), new_key())
    except Conflict as e:
        if e.code != "conflict":
            raise
        # Created meanwhile with other fields (another worker): the report
        # applies to it as planned. A refused request wrote nothing, so
        # its key is still free.
        return (yield (spec.method, spec.path, req.content(), req.key))
    if spec.stage_after_create is not None:
        job = yield ("POST", spec.path, dumps({"stage": spec.stage_after_create}), new_key())
    return job


class ReporterBase(Generic[F]):
    url: str
    _token: Optional[str]
    _lanes: Lanes[F]

    def _configure(
        self,
        url: str,
        token: Optional[str],
        has_getter: bool,
        coalesce: float,
        max_queue: int,
        queue_timeout: float,
        retry_timeout: Optional[float],
        backoff: Tuple[float, float],
        timeout: float,
        max_in_flight: int,
        on_error: Optional[Any],
        stream_linger: float = 0.1,
        stream_batch: int = 1000,
    ) -> None:
        if coalesce < 0:
            raise ValueError("coalesce: seconds, 0 to send every progress report")
        if stream_linger < 0 or not 1 <= stream_batch <= MAX_CHUNKS_PER_APPEND:
            raise ValueError(f"stream_linger: seconds >= 0; stream_batch: 1 to {MAX_CHUNKS_PER_APPEND} chunks")
        self._stream_linger = float(stream_linger)
        self._stream_batch = stream_batch
        if max_queue < 1 or max_in_flight < 1:
            raise ValueError("max_queue and max_in_flight must be at least 1")
        self.url = base_url(url)
        self._token = split_token(token, has_getter)
        self._coalesce = float(coalesce)
        self._max_queue = max_queue
        self._queue_timeout = float(queue_timeout)
        self._retry_timeout = retry_timeout
        self._backoff = pair(backoff, "backoff")
        self._timeout = float(timeout)
        self._max_in_flight = max_in_flight
        self._on_error = on_error
        self._lanes = Lanes()
        self._failures: Dict[str, List[HeraldError]] = {}
        self._stats = ReporterStats()
        self._closed = False  # no new reports
        self._stopping = False  # senders exit once idle

    # What each flavour provides.

    def _guard(self) -> ContextManager[Any]:
        """Held around the shared state where other threads may touch it."""
        raise NotImplementedError

    def _room_freed(self) -> None:
        """Wakes callers waiting for room in a full queue (guard held)."""
        raise NotImplementedError

    def _resolve(self, future: F, result: JSON, error: Optional[HeraldError]) -> None:
        """Settles one future, unless its caller cancelled it."""
        raise NotImplementedError

    def stats(self) -> ReporterStats:
        with self._guard():
            return self._stats.copy(self._lanes.size)

    # The queue (guard held).

    def _check_open(self) -> None:
        if self._closed:
            raise HeraldError("closed", "the reporter is closed")

    def _close_buffer(self, key: Hashable) -> None:
        merged = self._lanes.close_buffer(key)
        if isinstance(key, str):  # a progress buffer (a batch's key is a tuple)
            self._stats.coalesced += merged
        if merged:
            self._room_freed()

    def _close_lane_buffers(self, lane: str) -> None:
        """Sends the job's progress and stream batches that are gathering now."""
        for key in self._lanes.buffered_keys(lane):
            self._close_buffer(key)

    def _fold_progress(self, job_id: str, body: JSON) -> Tuple[Optional[F], bool]:
        """Places a progress report without waiting: ``(future, _)`` when it
        folded into an unsent report of the job, ``(None, True)`` when there
        is room to queue it, ``(None, False)`` when the caller must wait for
        room and try again."""
        buf = self._lanes.buffer(job_id)
        if buf is not None:
            if buf.merge(body):
                self._stats.coalesced += 1
                return buf.future, True
            self._close_buffer(job_id)  # cannot share a request: send that one first
        if self._lanes.size < self._max_queue:
            return None, True
        # Full: fold into this job's newest report that is not sent yet.
        tail = self._lanes.tail(job_id)
        if tail is not None and tail.merge(body):
            self._stats.coalesced += 1
            return tail.future, True
        return None, False

    def _queue_progress(self, spec: Spec, future: F) -> None:
        """Queues a progress report, in a coalescing window when there is one."""
        req = Request(spec, future, progress=True)
        if self._coalesce > 0:
            self._lanes.open_buffer(req, time.monotonic() + self._coalesce)
        else:
            self._lanes.push(req)

    def _has_room(self, spec: Spec) -> bool:
        # A status change never overtakes the progress (nor the stream
        # chunks) reported before it.
        self._close_lane_buffers(spec.lane)
        return self._lanes.size < self._max_queue

    def _fold_chunk(self, target: StreamTarget, part: bytes) -> Tuple[Optional[F], bool, bool]:
        """Places one chunk without waiting: ``(future, _, wake)`` when it
        joined its writer's batch (``wake``: the batch is full, send it now);
        ``(None, True, _)`` when there is room for a new batch; ``(None,
        False, _)`` when the caller must wait for room and try again."""
        target.check()
        key = target.key
        buf = self._lanes.buffer(key)
        if buf is not None:
            assert buf.batch is not None
            if buf.batch.fits(len(part)):
                buf.batch.add(part)
                wake = buf.batch.full
                if wake:
                    self._close_buffer(key)
                return buf.future, True, wake
            self._close_buffer(key)
        if self._lanes.size < self._max_queue:
            return None, True, False
        # Full: join the writer's batch at the end of its lane, if not sent yet.
        tail = self._lanes.tail(target.job_id)
        if tail is not None and tail.batch is not None and tail.batch.target is target and not tail.started:
            if tail.batch.fits(len(part)):
                tail.batch.add(part)
                return tail.future, True, False
        return None, False, False

    def _queue_chunk(self, target: StreamTarget, part: bytes, future: F) -> None:
        """Opens a new batch for the writer, sent after its linger."""
        req = Request(target.spec, future, batch=Batch(target, part))
        self._lanes.open_buffer(req, time.monotonic() + self._stream_linger)

    def _room_wait(self, deadline: Optional[float], spec: Spec) -> Tuple[float, float]:
        """The deadline for room (set on the first wait) and the seconds left
        until it; raises QueueFull past it."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._queue_timeout
        if now >= deadline:
            raise QueueFull(
                f"{self._lanes.size} reports are waiting for Herald (max_queue {self._max_queue}); "
                f"{spec.method} {spec.path} was not queued after {self._queue_timeout} s"
            )
        return deadline, deadline - now

    def _poll(self, now: float) -> Tuple[Optional[Request[F]], bool]:
        """The next request to send, if any, and whether a sender with
        nothing to send should stop (closing and nothing left)."""
        for lane in self._lanes.due(now):
            self._close_buffer(lane)
        req = self._lanes.take()
        return req, req is None and self._stopping and self._lanes.size == 0

    def _pending(self, job_id: Optional[str]) -> List[F]:
        """Sends the coalescing windows now (of one job, or all) and returns
        the futures of every request held for it."""
        for key in self._lanes.buffered_keys(job_id):
            self._close_buffer(key)
        return [r.future for r in self._lanes.outstanding(job_id)]

    # Answers and failures.

    def _unexpected(self, req: Request[F], e: Exception) -> HeraldError:
        # A bug here or in a library: fail this report, keep the sender.
        log.exception("herald: unexpected error sending %s", req.describe())
        return HeraldError("internal", f"{type(e).__name__}: {e}")

    def _settle(self, req: Request[F], result: Optional[JSON], error: Optional[HeraldError]) -> None:
        # The failure is on record before any future resolves, so a flush()
        # that wakes on the futures finds it.
        with self._guard():
            if error is not None:
                error.request = req.describe()
                if req.batch is not None and req.batch.target.failure is None:
                    req.batch.target.failure = error
                self._failures.setdefault(req.lane, []).append(error)
                self._stats.failed += 1
            else:
                self._stats.sent += 1
        for f in req.futures():
            self._resolve(f, result if result is not None else {}, error)
        if error is not None:
            if self._on_error is not None:
                try:
                    self._on_error(error)
                except Exception:
                    log.exception("herald: on_error raised")
            else:
                log.warning("herald: %s failed: %s", req.describe(), error)

    def _settle_lost(self, lost: List[Request[F]]) -> None:
        for req in lost:
            self._settle(req, None, HeraldError("closed", "the reporter was closed before this report was sent"))

    def _raise_failures(self, job_id: Optional[str]) -> None:
        with self._guard():
            if job_id is not None:
                failures = self._failures.pop(job_id, [])
            else:
                failures = [e for errs in self._failures.values() for e in errs]
                self._failures.clear()
        if failures:
            raise failures[0]

    def _raise_flush_timeout(self, not_done: int, timeout: Optional[float]) -> None:
        if not_done:
            raise Unavailable("flush_timeout", f"{not_done} reports still unanswered after {timeout} s")

    def _raise_after_close(self, not_done: int, timeout: Optional[float]) -> None:
        """Close's verdict: reports dropped undelivered, else the first failure
        not yet raised."""
        if not_done:
            err = Unavailable("closed", f"{not_done} reports were not delivered within {timeout} s")
            self._failures.clear()
            raise err
        self._raise_failures(None)

    def _log_close_error(self, e: HeraldError) -> None:
        log.warning("herald: closing the reporter: %s", e)


class StreamWriterBase:
    """What the sync and asyncio stream writers share: the stream they write
    (its job and name) and the failure check after a flush."""

    def __init__(self, reporter: Any, target: StreamTarget) -> None:
        self.reporter = reporter
        self._target = target

    @property
    def job_id(self) -> str:
        return self._target.job_id

    @property
    def name(self) -> str:
        return self._target.name

    def _raise_failure(self) -> None:
        """Raises this writer's failed append, if there was one."""
        if self._target.failure is not None:
            raise self._target.failure

    def _log_close_error(self, e: HeraldError) -> None:
        # The exception in flight matters more than a close that failed under it.
        log.warning("herald: closing stream %s of job %s: %s", self.name, self.job_id, e)

