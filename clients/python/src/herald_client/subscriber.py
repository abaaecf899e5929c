"""Watching jobs live: :class:`Subscriber` (sync) and :class:`AsyncSubscriber`.

Both read Herald's server-sent events (``GET /v1/sse``). A stream always
has a cursor: the ``since`` it was given, or (to start "from now") the
position of its topic's newest event, looked up in the log before it first
connects; then the position of each event it delivers. After any cut
(network, a restart of the server, a ``goodbye``) it reconnects with
backoff and sends the cursor as ``Last-Event-ID``, so the server replays
exactly what followed: no event is missed, and an event at or below the
cursor is dropped, so none is delivered twice.

Only topics with a log are watched this way (``job:<id>``, ``jobs``,
``jobs:owner:<sub>``, ``user:<sub>``); room broadcasts and presence need
the WebSocket protocol.

A job's output streams are read with ``read_stream`` (a page of chunks from
an offset, and with ``wait`` a long-poll that follows the stream) and listed
with ``streams``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    Generic,
    Iterator,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import httpx

from ._common import (
    JSON,
    USER_AGENT,
    Attempts,
    backoff_delay,
    base_url,
    call_token_getter,
    pair,
    read_stream_params,
    seg,
    split_token,
    stream_path,
    timeouts,
    transport_error,
)
from .errors import HeraldError, Unauthorized, Unavailable, error_from_response, is_retryable_status
from .events import Event, Goodbye, SseDecoder, SseMessage, interpret

#: A connection that lasted this long was healthy: the next cut starts the
#: backoff from its first step again.
_HEALTHY_AFTER = 30.0

#: How long a read (``read_stream``, ``streams``) is retried when the
#: subscriber has no ``reconnect_timeout``.
_READ_RETRY = 60.0


def job_topic(job_id: str) -> str:
    return f"job:{job_id}"


def jobs_topic(owner: Optional[str]) -> str:
    return "jobs" if owner is None else f"jobs:owner:{owner}"


def _check_topics(topics: Tuple[str, ...]) -> List[str]:
    if not topics:
        raise ValueError("watch: give at least one topic (job:<id>, jobs, jobs:owner:<sub>, user:<sub>)")
    for t in topics:
        if not t or "," in t:
            raise ValueError(f"not a topic: {t!r}")
    return list(topics)


#: /v1/events takes at most 20 topics per request.
_TOPICS_PER_QUERY = 20

#: What the head search sends (since, limit) and is sent back: the positions
#: of the events it got, and the page's ``resync`` and ``next``.
Probe = Tuple[int, int]
Page = Tuple[List[int], bool, int]


def head_search() -> Generator[Probe, Page, int]:
    """The position of the newest event of some topics, found with reads of
    the log (``GET /v1/events``), without doing I/O itself: it yields the
    ``(since, limit)`` of each read and is sent the page back.

    A stream that starts "from now" connects with this as its cursor rather
    than without one, so that a cut before its first event resumes exactly
    too (a live SSE stream does not say where the log stood when it began).
    Usually one read does it (a job's topic holds few events); a long topic
    is searched by position, about 2·log2(position) reads of one event.
    Whatever it returns, no event older than the search is after it and no
    event committed after the search began is before it.
    """
    positions, resync, nxt = yield (0, 100)
    if resync:
        return nxt  # even the oldest event kept is past 0: `next` is the head
    if len(positions) < 100:
        return positions[-1] if positions else 0
    lo, step = positions[-1], 1024
    while True:  # gallop until a since with nothing after it
        positions, resync, nxt = yield (lo + step, 1)
        if resync or not positions:
            hi = lo + step
            break
        lo, step = positions[0], step * 2
    while lo < hi:  # lo is an event, nothing is after hi
        mid = (lo + hi) // 2
        positions, _, _ = yield (mid, 1)
        if positions:
            lo = positions[0]
        else:
            hi = mid
    return lo


def _events_query(topics: List[str], probe: Probe) -> Dict[str, str]:
    return {"topic": ",".join(topics), "since": str(probe[0]), "limit": str(probe[1])}


def _head_queries(topics: List[str]) -> Generator[Dict[str, str], Page, int]:
    """:func:`head_search` over any number of topics (at most 20 a read):
    yields the query of each ``GET /v1/events`` and is sent its page."""
    head = 0
    for i in range(0, len(topics), _TOPICS_PER_QUERY):
        chunk = topics[i : i + _TOPICS_PER_QUERY]
        search = head_search()
        probe = next(search)
        try:
            while True:
                probe = search.send((yield _events_query(chunk, probe)))
        except StopIteration as done:
            head = max(head, int(done.value))
    return head


def _page(resp: httpx.Response) -> Page:
    if not resp.is_success:
        raise error_from_response(resp.status_code, resp.content)
    try:
        body = resp.json()
        positions = [int(e["position"]) for e in body["events"]]
        return positions, bool(body["resync"]), int(body["next"])
    except (ValueError, KeyError, TypeError) as e:
        raise Unavailable("bad_response", f"GET /v1/events: not the expected page: {e!r}") from e


def _http_timeout(connect_timeout: float, idle_timeout: float) -> httpx.Timeout:
    # The read timeout is the idle watchdog: Herald sends a keep-alive comment
    # every 15 s, so a stream silent for longer than idle_timeout is dead.
    return httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=connect_timeout, pool=connect_timeout)


def _request_headers(token: str, position: Optional[int]) -> Dict[str, str]:
    h = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", "Cache-Control": "no-store"}
    if position is not None:
        h["Last-Event-ID"] = str(position)
    return h


def _final(e: HeraldError) -> bool:
    """A refusal that reconnecting cannot fix: bad topic, no access, no such job."""
    return e.status is not None and not is_retryable_status(e.status)


class _Cursor:
    """The part of a stream shared by both flavours: its topics, its
    position, and what each message means for it."""

    def __init__(self, topics: List[str], since: Optional[int]) -> None:
        if since is not None and since < 0:
            raise ValueError("since: a position (0 for the start of the log)")
        self.topics = topics
        self.position = since
        self.attempt = 0
        self.connected_at = 0.0
        self.down_since: Optional[float] = None
        self.refresh_token = False
        self.connections = 0

    def accept(self, msg: SseMessage) -> Union[Event, Goodbye, None]:
        out = interpret(msg, self.topics)
        if isinstance(out, Event):
            if self.position is not None and out.position <= self.position:
                return None  # already delivered before a reconnect
            self.position = out.position
            self.attempt = 0
        elif isinstance(out, Goodbye) and out.reason == "token_expired":
            self.refresh_token = True
        return out

    def cut(self) -> None:
        """The connection ended: note when, for the backoff and the give-up time."""
        now = time.monotonic()
        if self.connected_at and now - self.connected_at >= _HEALTHY_AFTER:
            self.attempt = 0
        self.connected_at = 0.0
        if self.down_since is None:
            self.down_since = now

    def next_delay(self, backoff: Tuple[float, float], give_up_after: Optional[float], last: HeraldError) -> float:
        """Seconds before the next attempt, or raises ``last`` when the stream
        has been down for longer than ``give_up_after``."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        delay = backoff_delay(self.attempt, *backoff)
        self.attempt += 1
        if give_up_after is not None and now + delay - self.down_since > give_up_after:
            raise last
        return delay

    def up(self) -> None:
        self.connected_at = time.monotonic()
        self.down_since = None
        self.connections += 1

    def query(self) -> Dict[str, str]:
        return {"topic": ",".join(self.topics)}


def _bad_stream(resp: httpx.Response) -> Optional[HeraldError]:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        return None
    # A proxy's page, say: the server behind it may be back shortly.
    return Unavailable("bad_response", f"expected an event stream, got {ctype or 'no content type'}")


class _StreamBase:
    """What both flavours of stream share: the cursor, the state of the
    connection, and what each message or failed attempt means."""

    def __init__(self, topics: List[str], since: Optional[int]) -> None:
        self._cur = _Cursor(topics, since)
        self._resp: Optional[httpx.Response] = None
        self._decoder = SseDecoder()
        self._pending: Deque[Event] = deque()
        self._closed = False

    @property
    def topics(self) -> List[str]:
        return list(self._cur.topics)

    @property
    def position(self) -> Optional[int]:
        return self._cur.position

    @property
    def connected(self) -> bool:
        return self._resp is not None

    @property
    def reconnects(self) -> int:
        """How many times the stream connected again after a cut."""
        return max(0, self._cur.connections - 1)

    def _on_message(self, msg: Optional[SseMessage]) -> Tuple[Optional[Event], bool]:
        """A message read (None: the connection ended or broke): the event to
        deliver, if any, and whether to drop the connection."""
        if msg is None:
            return None, True
        out = self._cur.accept(msg)
        if isinstance(out, Event):
            return out, False
        return None, isinstance(out, Goodbye)

    def _on_first(self, first: Optional[SseMessage]) -> Optional[HeraldError]:
        """The first message of a new connection: None when the stream is up,
        else the error to raise once the connection is dropped."""
        # Herald sends `retry:` first, once the subscription is in place:
        # having it means events committed from now on will come.
        if first is None:
            return Unavailable("network", "the event stream ended as it opened")
        out = self._cur.accept(first)
        if isinstance(out, Goodbye):
            return Unavailable("goodbye", f"the server ended the stream: {out.reason}")
        if isinstance(out, Event):
            self._pending.append(out)
        self._cur.up()
        return None

    def _on_failure(self, e: HeraldError, sub: _SubscriberBase[Any], refreshed: bool) -> Optional[float]:
        """After a failed attempt to connect: None to try again at once with
        a new token (a first 401, when there is ``get_token``), else the
        seconds to wait. Raises ``e`` when reconnecting cannot fix it, or the
        stream has been down for longer than the subscriber's
        ``reconnect_timeout``."""
        if isinstance(e, Unauthorized) and sub._can_refresh and not refreshed:
            self._cur.refresh_token = True
            return None
        if _final(e):
            raise e
        return self._cur.next_delay(sub._backoff, sub._reconnect_timeout, e)


S = TypeVar("S")


class _SubscriberBase(Generic[S]):
    """Options and ``watch*`` calls shared by both flavours of subscriber."""

    def _configure(
        self,
        url: str,
        token: Optional[str],
        has_getter: bool,
        backoff: Tuple[float, float],
        reconnect_timeout: Optional[float],
        connect_timeout: float,
        idle_timeout: float,
        transport: Any,
    ) -> Dict[str, Any]:
        """Sets the options; returns those of the httpx client."""
        self.url = base_url(url)
        self._token = split_token(token, has_getter)
        self._can_refresh = has_getter
        self._backoff = pair(backoff, "backoff")
        self._reconnect_timeout = reconnect_timeout
        self._connect_timeout = connect_timeout
        return dict(
            base_url=self.url,
            timeout=_http_timeout(connect_timeout, idle_timeout),
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    def _stream(self, topics: List[str], since: Optional[int]) -> S:
        raise NotImplementedError

    def watch_job(self, job_id: str, since: Optional[int] = None) -> S:
        """The events of one job (``job:<id>``): ``job.*``, ``task.*``,
        ``artifact.created``. ``since``: resume after this position (0: the
        job's whole history); None: from now on (the events that follow the
        topic's newest one when the stream first connects)."""
        return self._stream([job_topic(job_id)], since)

    def watch_jobs(self, since: Optional[int] = None, *, owner: Optional[str] = None) -> S:
        """The ``job.*`` events (a job's own changes; its tasks and artifacts
        stay on ``job:<id>``) of every job of the tenant (``jobs``), or of the
        jobs one customer owns (``jobs:owner:<sub>``) with ``owner``."""
        return self._stream([jobs_topic(owner)], since)

    def watch(self, *topics: str, since: Optional[int] = None) -> S:
        """Several topics as one ordered stream: an event on two of them comes once."""
        return self._stream(_check_topics(topics), since)

    def _read_attempts(self) -> Attempts:
        """The retry policy of one read: network errors, 5xx, 408 and 429
        retried with the backoff for up to ``reconnect_timeout`` (60 s when
        there is none); a first 401 asks ``get_token`` again."""
        limit = self._reconnect_timeout if self._reconnect_timeout is not None else _READ_RETRY
        return Attempts(self._backoff, limit, self._can_refresh)

    def _read_timeout(self, wait: float) -> httpx.Timeout:
        return timeouts(wait + 15.0, self._connect_timeout)


class EventStream(_StreamBase):
    """An iterator of :class:`Event` over one SSE connection that reconnects
    and resumes by itself. ``position`` is the stream's cursor (the last
    delivered position, or where it started): store it, and pass it as
    ``since`` to resume later.

    Iterating connects (or ``open()``/``with`` does, raising refusals at once:
    :class:`Unauthorized`, :class:`Forbidden` (a customer watching ``jobs``),
    :class:`NotFound` (a customer watching a job that is not theirs; staff
    and workers may watch a job before it exists)). A refusal that reconnecting cannot fix raises from
    the iteration; ``Unavailable`` raises when the stream has been down for
    longer than the subscriber's ``reconnect_timeout``.
    """

    def __init__(self, subscriber: Subscriber, topics: List[str], since: Optional[int]) -> None:
        super().__init__(topics, since)
        self._sub = subscriber
        self._lines: Optional[Iterator[str]] = None
        self._stop = threading.Event()

    def open(self) -> EventStream:
        """Connects now, if not connected: on return the server holds the
        subscription (events committed from then on will arrive)."""
        if self._resp is None and not self._closed:
            self._connect()
        return self

    def close(self) -> None:
        """Ends the stream. From another thread it takes effect at the next
        message or keep-alive (the read in progress is not interrupted)."""
        self._closed = True
        self._stop.set()
        resp, self._resp, self._lines = self._resp, None, None
        if resp is not None:
            try:
                resp.close()
            except Exception:  # closing a connection another thread reads from
                pass

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopIteration
            if self._resp is None and not self._connect():
                raise StopIteration
            event, drop = self._on_message(self._read())
            if event is not None:
                return event
            if drop:
                self._drop()

    def __enter__(self) -> EventStream:
        return self.open()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _read(self) -> Optional[SseMessage]:
        """The next message, or None when the connection ended or broke."""
        lines = self._lines
        if lines is None:
            return None
        try:
            for line in lines:
                msg = self._decoder.feed(line)
                if msg is not None:
                    return msg
        except (httpx.HTTPError, httpx.StreamError, OSError):
            # A cut (the server went away) or close() from another thread.
            return None
        return None

    def _drop(self) -> None:
        resp, self._resp, self._lines = self._resp, None, None
        if resp is not None:
            try:
                resp.close()
            except Exception:
                pass
            self._cur.cut()

    def _connect(self) -> bool:
        """Connects, with backoff, until it works (True), the stream is
        closed (False) or a refusal or the give-up time raises."""
        refreshed = False
        while not self._closed:
            try:
                self._open_once()
                return True
            except HeraldError as e:
                delay = self._on_failure(e, self._sub, refreshed)
                if delay is None:
                    refreshed = True
                    continue
            if self._stop.wait(delay):
                return False
        return False

    def _head(self) -> int:
        sub = self._sub
        search = _head_queries(self._cur.topics)
        try:
            query = next(search)
            while True:
                headers = {"Authorization": f"Bearer {sub._token_value()}"}
                try:
                    resp = sub._http.get("/v1/events", params=query, headers=headers)
                except httpx.TransportError as e:
                    raise transport_error(e) from e
                query = search.send(_page(resp))
        except StopIteration as done:
            return int(done.value)

    def _open_once(self) -> None:
        sub = self._sub
        if self._cur.refresh_token:
            self._cur.refresh_token = False
            sub._refresh_token()
        if self._cur.position is None:
            self._cur.position = self._head()
        req = sub._http.build_request(
            "GET", "/v1/sse", params=self._cur.query(), headers=_request_headers(sub._token_value(), self._cur.position)
        )
        try:
            resp = sub._http.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(e) from e
        if not resp.is_success:
            try:
                content = resp.read()
            except httpx.HTTPError:
                content = b""
            resp.close()
            raise error_from_response(resp.status_code, content)
        bad = _bad_stream(resp)
        if bad is not None:
            resp.close()
            raise bad
        self._resp, self._lines, self._decoder = resp, resp.iter_lines(), SseDecoder()
        err = self._on_first(self._read())
        if err is not None:
            self._drop()
            raise err


class Subscriber(_SubscriberBase["EventStream"]):
    """Watches Herald's topics over server-sent events.

    ``token``: a JWT or API key that may read the topics (staff, worker,
    service, admin; a customer for their own jobs), or ``get_token``, called
    for the first token and again after a 401 or a ``token_expired`` goodbye.
    ``backoff``: (first, longest) reconnect delay in seconds, with jitter.
    ``reconnect_timeout``: give up (raise :class:`Unavailable`) after being
    disconnected this long; None (default) keeps trying. ``idle_timeout``: a
    stream that received nothing, not even the 15 s keep-alive, for this long
    is dead and reconnects.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        get_token: Optional[Callable[[], str]] = None,
        backoff: Tuple[float, float] = (0.5, 30.0),
        reconnect_timeout: Optional[float] = None,
        idle_timeout: float = 50.0,
        connect_timeout: float = 10.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        options = self._configure(
            url, token, get_token is not None, backoff, reconnect_timeout, connect_timeout, idle_timeout, transport
        )
        self._get_token = get_token
        self._token_lock = threading.Lock()
        self._http = httpx.Client(**options)

    def _stream(self, topics: List[str], since: Optional[int]) -> EventStream:
        return EventStream(self, topics, since)

    def read_stream(
        self, job_id: str, stream: str, offset: int = 0, *, limit: Optional[int] = None, wait: float = 0.0
    ) -> JSON:
        """A page of the job's output stream ``stream`` from ``offset`` on,
        oldest first: ``{"stream", "offset", "next", "end", "floor",
        "truncated", "chunks"}``. ``limit``: 1 to 10,000 chunks (Herald's
        default 1,000; a page also ends past 1 MiB). ``wait``: seconds (at
        most 60) to wait for an append when there is nothing at ``offset``
        yet, a long-poll: read again from ``next`` to follow the stream.
        ``offset`` in the answer is later than asked (and ``truncated`` true)
        when older chunks were dropped; a stream never written reads empty."""
        params = read_stream_params(offset, limit, wait)
        return self._get(stream_path(job_id, stream), params, wait)

    def streams(self, job_id: str) -> List[JSON]:
        """The job's output streams: ``[{"name", "floor", "next_offset",
        "bytes", "updated_at"}]``."""
        body = self._get(f"/v1/jobs/{seg(job_id)}/streams", {}, 0.0)
        streams: List[JSON] = body["streams"]
        return streams

    def _get(self, path: str, params: Dict[str, str], wait: float) -> JSON:
        attempts = self._read_attempts()
        while True:
            token = self._token_value()
            answer: Any
            try:
                answer = self._http.get(
                    path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=self._read_timeout(wait)
                )
            except httpx.TransportError as e:
                answer = e
            delay = attempts.judge(answer)
            if isinstance(delay, dict):
                return delay
            if delay is None:
                self._refresh_token()
                continue
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _token_value(self) -> str:
        with self._token_lock:
            if self._token is None:
                assert self._get_token is not None
                self._token = self._get_token()
            return self._token

    def _refresh_token(self) -> None:
        if self._get_token is None:
            return
        with self._token_lock:
            self._token = self._get_token()


class AsyncEventStream(_StreamBase):
    """The asyncio twin of :class:`EventStream`: ``async for event in
    stream``, ``async with stream``, ``await stream.close()``."""

    def __init__(self, subscriber: AsyncSubscriber, topics: List[str], since: Optional[int]) -> None:
        super().__init__(topics, since)
        self._sub = subscriber
        self._lines: Optional[AsyncIterator[str]] = None

    async def open(self) -> AsyncEventStream:
        """Connects now, if not connected: on return the server holds the subscription."""
        if self._resp is None and not self._closed:
            await self._connect()
        return self

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    aclose = close

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._resp is None and not await self._connect():
                raise StopAsyncIteration
            event, drop = self._on_message(await self._read())
            if event is not None:
                return event
            if drop:
                await self._drop()

    async def __aenter__(self) -> AsyncEventStream:
        return await self.open()

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    async def _read(self) -> Optional[SseMessage]:
        lines = self._lines
        if lines is None:
            return None
        try:
            async for line in lines:
                msg = self._decoder.feed(line)
                if msg is not None:
                    return msg
        except (httpx.HTTPError, httpx.StreamError, OSError):
            return None
        return None

    async def _drop(self) -> None:
        resp, self._resp, self._lines = self._resp, None, None
        if resp is not None:
            try:
                await resp.aclose()
            except Exception:
                pass
            self._cur.cut()

    async def _connect(self) -> bool:
        refreshed = False
        while not self._closed:
            try:
                await self._open_once()
                return True
            except HeraldError as e:
                delay = self._on_failure(e, self._sub, refreshed)
                if delay is None:
                    refreshed = True
                    continue
            await asyncio.sleep(delay)
        return False

    async def _head(self) -> int:
        sub = self._sub
        search = _head_queries(self._cur.topics)
        try:
            query = next(search)
            while True:
                headers = {"Authorization": f"Bearer {await sub._token_value()}"}
                try:
                    resp = await sub._http.get("/v1/events", params=query, headers=headers)
                except httpx.TransportError as e:
                    raise transport_error(e) from e
                query = search.send(_page(resp))
        except StopIteration as done:
            return int(done.value)

    async def _open_once(self) -> None:
        sub = self._sub
        if self._cur.refresh_token:
            self._cur.refresh_token = False
            await sub._refresh_token()
        if self._cur.position is None:
            self._cur.position = await self._head()
        req = sub._http.build_request(
            "GET",
            "/v1/sse",
            params=self._cur.query(),
            headers=_request_headers(await sub._token_value(), self._cur.position),
        )
        try:
            resp = await sub._http.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(e) from e
        if not resp.is_success:
            try:
                content = await resp.aread()
            except httpx.HTTPError:
                content = b""
            await resp.aclose()
            raise error_from_response(resp.status_code, content)
        bad = _bad_stream(resp)
        if bad is not None:
            await resp.aclose()
            raise bad
        self._resp, self._lines, self._decoder = resp, resp.aiter_lines(), SseDecoder()
        err = self._on_first(await self._read())
        if err is not None:
            await self._drop()
            raise err


AsyncTokenGetter = Callable[[], Union[str, Awaitable[str]]]


class AsyncSubscriber(_SubscriberBase["AsyncEventStream"]):
    """The asyncio twin of :class:`Subscriber` (same options; ``get_token``
    may be a coroutine function)."""

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        get_token: Optional[AsyncTokenGetter] = None,
        backoff: Tuple[float, float] = (0.5, 30.0),
        reconnect_timeout: Optional[float] = None,
        idle_timeout: float = 50.0,
        connect_timeout: float = 10.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        options = self._configure(
            url, token, get_token is not None, backoff, reconnect_timeout, connect_timeout, idle_timeout, transport
        )
        self._get_token = get_token
        self._http = httpx.AsyncClient(**options)

    def _stream(self, topics: List[str], since: Optional[int]) -> AsyncEventStream:
        return AsyncEventStream(self, topics, since)

    async def read_stream(
        self, job_id: str, stream: str, offset: int = 0, *, limit: Optional[int] = None, wait: float = 0.0
    ) -> JSON:
        """See :meth:`herald_client.Subscriber.read_stream`."""
        params = read_stream_params(offset, limit, wait)
        return await self._get(stream_path(job_id, stream), params, wait)

    async def streams(self, job_id: str) -> List[JSON]:
        """See :meth:`herald_client.Subscriber.streams`."""
        body = await self._get(f"/v1/jobs/{seg(job_id)}/streams", {}, 0.0)
        streams: List[JSON] = body["streams"]
        return streams

    async def _get(self, path: str, params: Dict[str, str], wait: float) -> JSON:
        attempts = self._read_attempts()
        while True:
            token = await self._token_value()
            answer: Any
            try:
                answer = await self._http.get(
                    path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=self._read_timeout(wait)
                )
            except httpx.TransportError as e:
                answer = e
            delay = attempts.judge(answer)
            if isinstance(delay, dict):
                return delay
            if delay is None:
                await self._refresh_token()
                continue
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    async def _token_value(self) -> str:
        if self._token is None:
            self._token = await call_token_getter(self._get_token)
        return self._token

    async def _refresh_token(self) -> None:
        if self._get_token is not None:
            self._token = await call_token_getter(self._get_token)
