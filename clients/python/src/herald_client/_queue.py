"""The reporter's queue, without any threads or event loop: both flavours
wrap this same bookkeeping in their own locking.

Requests wait in *lanes*, one per job (plus private lanes for notifications
and jobs without an id). A lane sends one request at a time, oldest first,
which is what keeps a job's reports in order; different lanes proceed in
parallel. Progress reports first gather in a per-job *buffer* for the
coalescing window, then join their lane; so do the chunks of each stream
writer, in a buffer of their own (a *batch*, sent as one append). A lane's
buffers commute with each other; any other request of the job closes them
first, so it is sent after what was reported before it.

``size`` counts every request the reporter still holds: queued, in flight,
and open buffers. It is what ``max_queue`` bounds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Deque, Dict, Generic, Hashable, List, Optional, Set, Tuple, TypeVar

from ._common import JSON, MAX_BATCH_BYTES, Spec, dumps, merge_progress, new_key, stream_path
from .errors import HeraldError

F = TypeVar("F")


class StreamTarget:
    """What the handles of one stream writer share: where its chunks go, its
    batch's buffer key, and the first failure of its appends (after which
    its later chunks are refused rather than sent past a hole)."""

    __slots__ = ("job_id", "name", "spec", "key", "max_chunks", "failure", "closed")

    def __init__(self, job_id: str, name: str, max_chunks: int) -> None:
        self.job_id = job_id
        self.name = name
        self.spec = Spec(job_id, "POST", stream_path(job_id, name), {})
        self.key: Hashable = (job_id, id(self))
        self.max_chunks = max_chunks
        self.failure: Optional[HeraldError] = None
        self.closed = False

    def check(self) -> None:
        """Raises what keeps this writer from taking a chunk."""
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise HeraldError("closed", f"the writer of stream {self.name!r} is closed")


class Batch:
    """Chunks gathered for one append, already serialized."""

    __slots__ = ("target", "parts", "size")

    def __init__(self, target: StreamTarget, part: bytes) -> None:
        self.target = target
        self.parts = [part]
        self.size = len(part)

    def fits(self, size: int, count: int = 1) -> bool:
        return (
            len(self.parts) + count <= self.target.max_chunks
            and self.size + size + len(self.parts) + count <= MAX_BATCH_BYTES
        )

    @property
    def full(self) -> bool:
        return not self.fits(0)

    def add(self, part: bytes) -> None:
        self.parts.append(part)
        self.size += len(part)

    def content(self) -> bytes:
        return b'{"chunks":[' + b",".join(self.parts) + b"]}"


class Request(Generic[F]):
    """One logical request: its Idempotency-Key is chosen once and kept for
    every retry, so a retry whose first answer was lost never counts twice.
    ``future`` gets the answer; ``followers`` are the futures of requests that
    were merged into this one and so share its answer."""

    __slots__ = ("spec", "progress", "batch", "key", "started", "future", "followers", "_content")

    def __init__(self, spec: Spec, future: F, progress: bool = False, batch: Optional[Batch] = None) -> None:
        self.spec = spec
        self.progress = progress
        self.batch = batch
        self.key = new_key()
        self.started = False
        self.future = future
        self.followers: List[F] = []
        self._content: Optional[bytes] = None

    @property
    def lane(self) -> str:
        return self.spec.lane

    @property
    def buffer_key(self) -> Hashable:
        """Which buffer it gathers in: the job's progress, or its writer's batch."""
        return self.batch.target.key if self.batch is not None else self.spec.lane

    @property
    def mergeable(self) -> bool:
        """A progress report nobody has sent yet may still take more values.
        Once sent, its body is fixed: a retry must repeat it byte for byte."""
        return self.progress and not self.started

    def merge(self, body: JSON) -> bool:
        return self.mergeable and merge_progress(self.spec.body, body)

    def absorb(self, other: Request[F]) -> bool:
        """Takes in the chunks of ``other``, a later batch of the same writer,
        when this batch is not sent yet and has room for all of them."""
        mine, theirs = self.batch, other.batch
        if mine is None or theirs is None or self.started or mine.target is not theirs.target:
            return False
        if not mine.fits(theirs.size, len(theirs.parts)):
            return False
        for part in theirs.parts:
            mine.add(part)
        self.followers.extend(other.futures())
        return True

    def content(self) -> bytes:
        if self._content is None:
            self._content = self.batch.content() if self.batch is not None else dumps(self.spec.body)
        return self._content

    def futures(self) -> List[F]:
        return [self.future, *self.followers]

    def describe(self) -> str:
        return f"{self.spec.method} {self.spec.path}"


class Lanes(Generic[F]):
    def __init__(self) -> None:
        self._lanes: Dict[str, Deque[Request[F]]] = {}
        self._busy: Set[str] = set()
        self._ready: Deque[str] = deque()
        self._buffers: Dict[Hashable, Request[F]] = {}
        self._due: List[Tuple[float, int, Hashable, Request[F]]] = []
        self._seq = itertools.count()
        self.size = 0

    # Buffers: progress gathering for the coalescing window (keyed by lane),
    # and stream chunks gathering for one append (keyed by writer).

    def buffer(self, key: Hashable) -> Optional[Request[F]]:
        return self._buffers.get(key)

    def open_buffer(self, req: Request[F], deadline: float) -> None:
        key = req.buffer_key
        self._buffers[key] = req
        self.size += 1
        heapq.heappush(self._due, (deadline, next(self._seq), key, req))

    def close_buffer(self, key: Hashable) -> int:
        """Moves a buffer, if there is one, to the end of its lane: into the
        lane's last request when that is a progress report (or a batch of the
        same writer with room) not sent yet, so a lane that backs up during
        an outage holds one growing report, not one per window. Returns how
        many requests were merged away."""
        req = self._buffers.pop(key, None)
        if req is None:
            return 0
        tail = self.tail(req.lane)
        if tail is not None:
            if req.batch is not None:
                merged = tail.absorb(req)
            else:
                merged = tail.merge(req.spec.body)
                if merged:
                    tail.followers.extend(req.futures())
            if merged:
                self.size -= 1
                return 1
        self._append(req)
        return 0

    def due(self, now: float) -> List[Hashable]:
        """Buffers whose window has passed."""
        out = []
        while self._due and self._due[0][0] <= now:
            _, _, key, req = heapq.heappop(self._due)
            if self._buffers.get(key) is req:
                out.append(key)
        return out

    def next_deadline(self) -> Optional[float]:
        while self._due:
            _, _, key, req = self._due[0]
            if self._buffers.get(key) is req:
                return self._due[0][0]
            heapq.heappop(self._due)  # that buffer was closed early
        return None

    def buffered_keys(self, lane: Optional[str] = None) -> List[Hashable]:
        """The open buffers, of one lane or all."""
        return [k for k, r in self._buffers.items() if lane is None or r.lane == lane]

    # Lanes.

    def tail(self, lane: str) -> Optional[Request[F]]:
        q = self._lanes.get(lane)
        return q[-1] if q else None

    def push(self, req: Request[F]) -> None:
        self.size += 1
        self._append(req)

    def _append(self, req: Request[F]) -> None:
        q = self._lanes.get(req.lane)
        if q is None:
            q = self._lanes[req.lane] = deque()
        q.append(req)
        if len(q) == 1 and req.lane not in self._busy:
            self._ready.append(req.lane)

    def take(self) -> Optional[Request[F]]:
        """The oldest request of a lane that has nothing in flight, now in flight."""
        while self._ready:
            lane = self._ready.popleft()
            q = self._lanes.get(lane)
            if not q or lane in self._busy:
                continue
            self._busy.add(lane)
            req = q[0]
            req.started = True
            return req
        return None

    def done(self, req: Request[F]) -> None:
        """The request got its final answer (or gave up): its lane may send the next."""
        q = self._lanes[req.lane]
        q.popleft()
        self._busy.discard(req.lane)
        self.size -= 1
        if q:
            self._ready.append(req.lane)
        else:
            del self._lanes[req.lane]

    def outstanding(self, lane: Optional[str] = None) -> List[Request[F]]:
        """Requests in lanes (queued or in flight), of one lane or all."""
        if lane is not None:
            return list(self._lanes.get(lane, ()))
        return [r for q in self._lanes.values() for r in q]

    def abandon(self) -> List[Request[F]]:
        """Takes every request not in flight out of the queue (closing
        without waiting): buffers and queued requests."""
        out = list(self._buffers.values())
        self._buffers.clear()
        self._due.clear()
        for lane, q in list(self._lanes.items()):
            keep = [r for r in q if r.started]
            out.extend(r for r in q if not r.started)
            if keep:
                self._lanes[lane] = deque(keep)
            else:
                del self._lanes[lane]
        self.size = sum(len(q) for q in self._lanes.values())
        self._ready = deque(lane for lane in self._ready if lane in self._lanes)
        return out
