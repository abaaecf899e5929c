"""The reporter's queue, without any threads or event loop: both flavours
wrap this same bookkeeping in their own locking.

Requests wait in *lanes*, one per job (plus private lanes for notifications
and jobs without an id). A lane sends one request at a time, oldest first,
which is what keeps a job's reports in order; different lanes proceed in
parallel. Progress reports first gather in a per-job *buffer* for the
coalescing window, then join their lane.

``size`` counts every request the reporter still holds: queued, in flight,
and open buffers. It is what ``max_queue`` bounds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Deque, Dict, Generic, List, Optional, Set, Tuple, TypeVar

from ._common import JSON, Spec, dumps, merge_progress, new_key

F = TypeVar("F")


class Request(Generic[F]):
    """One logical request: its Idempotency-Key is chosen once and kept for
    every retry, so a retry whose first answer was lost never counts twice.
    ``future`` gets the answer; ``followers`` are the futures of requests that
    were merged into this one and so share its answer."""

    __slots__ = ("spec", "progress", "key", "started", "future", "followers", "_content")

    def __init__(self, spec: Spec, future: F, progress: bool = False) -> None:
        self.spec = spec
        self.progress = progress
        self.key = new_key()
        self.started = False
        self.future = future
        self.followers: List[F] = []
        self._content: Optional[bytes] = None

    @property
    def lane(self) -> str:
        return self.spec.lane

    @property
    def mergeable(self) -> bool:
        """A progress report nobody has sent yet may still take more values.
        Once sent, its body is fixed: a retry must repeat it byte for byte."""
        return self.progress and not self.started

    def merge(self, body: JSON) -> bool:
        return self.mergeable and merge_progress(self.spec.body, body)

    def content(self) -> bytes:
        if self._content is None:
            self._content = dumps(self.spec.body)
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
        self._buffers: Dict[str, Request[F]] = {}
        self._due: List[Tuple[float, int, str, Request[F]]] = []
        self._seq = itertools.count()
        self.size = 0

    # Buffers: progress gathering for the coalescing window.

    def buffer(self, lane: str) -> Optional[Request[F]]:
        return self._buffers.get(lane)

    def open_buffer(self, req: Request[F], deadline: float) -> None:
        self._buffers[req.lane] = req
        self.size += 1
        heapq.heappush(self._due, (deadline, next(self._seq), req.lane, req))

    def close_buffer(self, lane: str) -> int:
        """Moves the lane's buffer, if any, to the end of its lane: into the
        lane's last request when that is a progress report not sent yet (a
        lane that backs up during an outage then holds one growing report,
        not one per window). Returns how many reports were merged away."""
        req = self._buffers.pop(lane, None)
        if req is None:
            return 0
        tail = self.tail(lane)
        if tail is not None and tail.merge(req.spec.body):
            tail.followers.extend(req.futures())
            self.size -= 1
            return 1
        self._append(req)
        return 0

    def due(self, now: float) -> List[str]:
        """Lanes whose buffer's window has passed."""
        out = []
        while self._due and self._due[0][0] <= now:
            _, _, lane, req = heapq.heappop(self._due)
            if self._buffers.get(lane) is req:
                out.append(lane)
        return out

    def next_deadline(self) -> Optional[float]:
        while self._due:
            _, _, lane, req = self._due[0]
            if self._buffers.get(lane) is req:
                return self._due[0][0]
            heapq.heappop(self._due)  # that buffer was closed early
        return None

    def buffered_lanes(self) -> List[str]:
        return list(self._buffers)

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
