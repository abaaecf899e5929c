"""The client's own logic without a server: retry classification under one
Idempotency-Key, ordering per job, the job_started fallback, patch
composition, the SSE decoder, the subscriber's resume and dedupe, and the
batching of stream writers, all against httpx.MockTransport."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from herald_client import (
    AsyncSubscriber,
    Conflict,
    Forbidden,
    HeraldError,
    InvalidRequest,
    NotFound,
    Reporter,
    Subscriber,
    Unavailable,
)
from herald_client._common import compose_patches, merge_progress
from herald_client.subscriber import head_search
from herald_client.events import SseDecoder

URL = "http://herald.test"


CODES = {404: "not_found", 409: "conflict", 503: "unavailable"}


def answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    if status >= 400 and body is None:
        body = {"error": {"code": CODES.get(status, f"code_{status}"), "message": f"status {status}"}}
    return httpx.Response(status, json=body if body is not None else {"ok": True}, headers=headers)


class Script:
    """A fake server: answers each path from a list of statuses, and records
    every attempt (method, path, Idempotency-Key, body)."""

    def __init__(self, plan: Dict[str, List[int]]) -> None:
        self.plan = plan
        self.seen: List[Tuple[str, str, str, object]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        with self.lock:
            self.seen.append((request.method, request.url.path, request.headers.get("idempotency-key", ""), body))
            statuses = self.plan.get(request.url.path, [])
            status = statuses.pop(0) if statuses else 200
        return answer(status)


def reporter(script: Script, **kw: object) -> Reporter:
    opts: Dict[str, object] = dict(backoff=(0.01, 0.02), coalesce=0)
    opts.update(kw)
    return Reporter(URL, "tok", transport=httpx.MockTransport(script), **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_statuses_are_retried_under_one_key(status: int) -> None:
    s = Script({"/v1/jobs/j/artifacts": [status, status, 200]})
    with reporter(s) as r:
        assert r.artifact("j", "label", "x").result(5) == {"ok": True}
        assert r.stats().retries == 2
    keys = {k for _, _, k, _ in s.seen}
    assert len(s.seen) == 3 and len(keys) == 1 and "" not in keys


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 415, 422])
def test_other_client_errors_are_final(status: int) -> None:
    s = Script({"/v1/jobs/j/artifacts": [status]})
    with reporter(s) as r:
        with pytest.raises(HeraldError) as e:
            r.artifact("j", "label", "x").result(5)
        assert e.value.status == status
        assert r.stats().attempts == 1
        with pytest.raises(HeraldError):
            r.flush()


def test_each_logical_request_has_its_own_key() -> None:
    s = Script({})
    with reporter(s) as r:
        for i in range(5):
            r.task_started("j", f"t{i}")
    assert len({k for _, _, k, _ in s.seen}) == 5


def test_retry_after_is_honoured_up_to_the_longest_backoff() -> None:
    calls: List[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return answer(503, **{"Retry-After": "0.3"}) if len(calls) == 1 else answer(200)

    with Reporter(URL, "tok", transport=httpx.MockTransport(handler), backoff=(0.01, 0.5)) as r:
        r.job_completed("j").result(5)
    assert calls[1] - calls[0] >= 0.28


def test_requests_of_one_job_keep_their_order_while_jobs_proceed_in_parallel() -> None:
    order: List[Tuple[str, str]] = []
    in_flight: Dict[str, int] = {}
    overlap = threading.Event()
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        job = request.url.path.split("/")[3]
        with lock:
            in_flight[job] = in_flight.get(job, 0) + 1
            assert in_flight[job] == 1, "two requests of one job in flight"
            if sum(in_flight.values()) > 1:
                overlap.set()
        time.sleep(random.random() * 0.003)
        with lock:
            in_flight[job] -= 1
            order.append((job, json.loads(request.content)["status"]))
        return answer(200)

    with Reporter(URL, "tok", transport=httpx.MockTransport(handler), max_in_flight=4) as r:
        for i in range(30):
            for job in ("a", "b", "c"):
                r.task_started(job, f"t{i}")
                r.task_succeeded(job, f"t{i}")
        r.flush()
    for job in ("a", "b", "c"):
        assert [s for j, s in order if j == job] == ["running", "succeeded"] * 30
    assert overlap.is_set()


def test_job_started_creates_a_missing_job() -> None:
    s = Script({"/v1/jobs/j/progress": [404]})
    with reporter(s) as r:
        r.job_started("j", title="T", owner="o", total=3, stage="warm", metadata={"m": 1}, tasks=[{"id": "x"}]).result(
            5
        )
    assert [(m, p) for m, p, _, _ in s.seen] == [
        ("POST", "/v1/jobs/j/progress"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs/j/progress"),
    ]
    assert s.seen[1][3] == {
        "id": "j",
        "title": "T",
        "owner": "o",
        "total": 3,
        "status": "running",
        "metadata": {"m": 1},
        "tasks": [{"id": "x"}],
    }
    assert s.seen[2][3] == {"stage": "warm"}  # creation takes no stage


def test_job_started_reports_as_planned_when_someone_else_created_the_job() -> None:
    s = Script({"/v1/jobs/j/progress": [404, 200], "/v1/jobs": [409]})
    with reporter(s) as r:
        r.job_started("j").result(5)
    first, _, again = s.seen
    assert first[:3] == again[:3]  # the same request, under the same key


def test_a_404_without_fallback_raises() -> None:
    s = Script({"/v1/jobs/j/tasks/t": [404]})
    with reporter(s) as r:
        with pytest.raises(NotFound):
            r.task_succeeded("j", "t").result(5)
        with pytest.raises(NotFound):
            r.flush()


def test_error_bodies_that_are_not_herald_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text="<html>proxy says no</html>")

    with Reporter(URL, "tok", transport=httpx.MockTransport(handler)) as r:
        with pytest.raises(InvalidRequest) as e:
            r.job_completed("j").result(5)
        assert (e.value.code, e.value.status) == ("http_422", 422)
        with pytest.raises(InvalidRequest):
            r.flush()


def test_ids_are_path_segments() -> None:
    raw: List[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raw.append(request.url.raw_path)
        return answer(200)

    with Reporter(URL, "tok", transport=httpx.MockTransport(handler)) as r:
        r.task_started("job/with slash", "t:1").result(5)
        with pytest.raises(ValueError):
            r.task_started("", "t")
    assert raw == [b"/v1/jobs/job%2Fwith%20slash/tasks/t%3A1"]


def test_compose_patches() -> None:
    assert compose_patches({"a": {"x": 1}, "b": 1}, {"a": {"y": 2}, "c": None}) == {
        "a": {"x": 1, "y": 2},
        "b": 1,
        "c": None,
    }
    assert compose_patches({"a": 1}, {"a": {"y": 2}}) is None  # a scalar then an object: not one patch
    assert compose_patches({"a": None}, {"a": {"y": 2}}) is None
    assert compose_patches({"a": {"x": 1}}, {"a": 5}) == {"a": 5}


def test_merge_progress() -> None:
    into = {"succeeded": 1, "error": "e1", "metadata": {"a": 1}}
    assert merge_progress(into, {"succeeded": 2, "metadata": {"b": 2}, "stage": "s"})
    assert into == {"succeeded": 2, "error": "e1", "metadata": {"a": 1, "b": 2}, "stage": "s"}
    assert not merge_progress(into, {"error": "e2"})
    assert into["error"] == "e1"


def test_sse_decoder() -> None:
    d = SseDecoder()
    lines = ["retry: 2000", "", ": keep-alive", "", "id: 7", "event: job.updated", 'data: {"a":', "data: 1}", ""]
    out = [m for m in (d.feed(line) for line in lines) if m is not None]
    assert [(m.id, m.event, m.data, m.retry) for m in out] == [
        (None, None, None, 2000),
        ("7", "job.updated", '{"a":\n1}', None),
    ]


def sse(*frames: str) -> bytes:
    return ("retry: 2000\n\n" + "".join(frames)).encode()


def ev(position: int, type_: str = "job.updated") -> str:
    body = {"topic": "job:j", "position": position, "type": type_, "data": {"id": "j", "n": position}, "time": "t"}
    return f"id: {position}\nevent: {type_}\ndata: {json.dumps(body)}\n\n"


class SseScript:
    """A fake SSE endpoint: one body per connection; records Last-Event-ID.
    Its log (for a stream that starts from now) is empty."""

    def __init__(self, bodies: List[bytes]) -> None:
        self.bodies = bodies
        self.last_ids: List[Optional[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            return httpx.Response(200, json={"events": [], "next": 0, "resync": False})
        self.last_ids.append(request.headers.get("last-event-id"))
        if not self.bodies:
            return answer(503)
        return httpx.Response(200, content=self.bodies.pop(0), headers={"content-type": "text/event-stream"})


def take(stream: Iterator[object], n: int) -> List[object]:
    return [next(stream) for _ in range(n)]


def test_subscriber_resumes_with_last_event_id_and_drops_repeats() -> None:
    script = SseScript(
        [
            sse(ev(1), ev(2), ev(3)),  # then the connection ends
            sse(ev(3), ev(4), 'event: goodbye\ndata: {"reason":"shutting_down","reconnect":true}\n\n'),
            sse(ev(5, "job.completed")),
        ]
    )
    with Subscriber(URL, "tok", transport=httpx.MockTransport(script), backoff=(0.01, 0.02)) as sub:
        stream = sub.watch_job("j", since=0)
        got = [e.position for e in take(stream, 5)]  # type: ignore[attr-defined]
        assert got == [1, 2, 3, 4, 5]
        assert stream.position == 5 and stream.reconnects == 2
        stream.close()
    assert script.last_ids == ["0", "3", "4"]


def test_subscriber_refusals_raise_and_outages_give_up_after_reconnect_timeout() -> None:
    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": {"code": "forbidden", "message": "no"}})

    with Subscriber(URL, "tok", transport=httpx.MockTransport(forbidden)) as sub:
        with pytest.raises(Forbidden) as e:
            next(iter(sub.watch_jobs()))
        assert e.value.code == "forbidden"

    script = SseScript([])
    with Subscriber(
        URL, "tok", transport=httpx.MockTransport(script), backoff=(0.01, 0.05), reconnect_timeout=0.3
    ) as sub:
        with pytest.raises(Unavailable):
            sub.watch_job("j").open()
    assert len(script.last_ids) >= 3


@pytest.mark.anyio
async def test_async_subscriber_resumes_and_drops_repeats() -> None:
    script = SseScript([sse(ev(1), ev(2)), sse(ev(2), ev(3, "job.completed"))])
    async with AsyncSubscriber(URL, "tok", transport=httpx.MockTransport(script), backoff=(0.01, 0.02)) as sub:
        async with sub.watch_job("j") as stream:
            got = []
            async for e in stream:
                got.append(e.position)
                if e.type == "job.completed":
                    break
    assert got == [1, 2, 3]
    assert script.last_ids == ["0", "2"]


def test_conflict_is_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": {"code": "illegal_transition", "message": "job is completed"}})

    with Reporter(URL, "tok", transport=httpx.MockTransport(handler)) as r:
        with pytest.raises(Conflict) as e:
            r.job_started("j").result(5)
        assert type(e.value).__name__ == "IllegalTransition"
        with pytest.raises(Conflict):
            r.flush()


def search_head(log: List[int], floor: int = 0) -> Tuple[int, int]:
    """Runs head_search over a fake log of one topic; returns (head, reads)."""
    search = head_search()
    since, limit = next(search)
    reads = 0
    while True:
        reads += 1
        if since < floor:
            page: Tuple[List[int], bool, int] = ([], True, max(log + [floor]))
        else:
            after = [p for p in log if p > since][:limit]
            page = (after, False, after[-1] if after else since)
        try:
            since, limit = search.send(page)
        except StopIteration as done:
            return int(done.value), reads


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 5000])
def test_head_search_finds_the_newest_event(size: int) -> None:
    rng = random.Random(size)
    log = sorted(rng.sample(range(1, 10_000_000), size))
    head, reads = search_head(log)
    assert head == (log[-1] if log else 0)
    assert reads <= (1 if size < 100 else 2 * 24 + 2)


def test_head_search_past_retention() -> None:
    # Nothing of the topic is left and the log starts at 500: the head is the cursor.
    assert search_head([], floor=500)[0] == 500


# Stream writers: batches, barriers, retries and failures.


def test_stream_chunks_travel_in_batches_around_the_jobs_other_reports() -> None:
    s = Script({})
    with reporter(s, coalesce=0.05, stream_linger=0.05, stream_batch=3) as r:
        out, err = r.stream("j", "out"), r.stream("j", "err")
        out.write("a")
        out.write("b")
        r.progress("j", stage="one")  # progress and other streams do not split a batch
        err.write("e")
        out.write("c")  # the batch is full: sent now
        out.write("d")
        r.task_started("j", "t")  # a barrier: what came before goes before it
        out.write("f")
        out.flush()
    appends = [(p.rsplit("/", 1)[1], b["chunks"]) for m, p, _, b in s.seen if "/streams/" in p]  # type: ignore[index]
    assert [c for name, c in appends if name == "out"] == [["a", "b", "c"], ["d"], ["f"]]
    assert [c for name, c in appends if name == "err"] == [["e"]]
    paths = [p for _, p, _, _ in s.seen]
    task = paths.index("/v1/jobs/j/tasks/t")
    seen_bodies = [b for _, _, _, b in s.seen]
    assert seen_bodies.index({"chunks": ["d"]}) < task < seen_bodies.index({"chunks": ["f"]})
    assert seen_bodies.index({"chunks": ["e"]}) < task
    assert paths.count("/v1/jobs/j/progress") == 1


def test_an_append_is_retried_under_one_key_and_a_lone_chunk_goes_after_its_linger() -> None:
    s = Script({"/v1/jobs/j/streams/log": [503, 200]})
    with reporter(s, stream_linger=0.2) as r:
        w = r.stream("j", "log")
        started = time.monotonic()
        fut = w.write({"line": 1})
        assert fut.result(5) == {"ok": True}
        assert time.monotonic() - started >= 0.19, "the batch waited out its linger"
        assert w.write({"line": 2}).result(5) == {"ok": True}
    keys = [k for _, p, k, _ in s.seen]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2], "a retry keeps its key; each append has its own"
    assert [b for _, _, _, b in s.seen] == [{"chunks": [{"line": 1}]}] * 2 + [{"chunks": [{"line": 2}]}]


def test_a_failed_append_stops_its_writer_and_bad_chunks_are_refused_at_the_call() -> None:
    s = Script({"/v1/jobs/j/streams/out": [422]})
    with reporter(s, stream_linger=0.01) as r:
        w = r.stream("j", "out")
        w.write("a")
        with pytest.raises(InvalidRequest) as e:
            w.flush()
        assert (e.value.code, e.value.status) == ("code_422", 422)
        with pytest.raises(InvalidRequest):
            w.write("b")  # it would follow a hole
        with pytest.raises(InvalidRequest):
            w.flush()
        # A new writer of the stream starts afresh.
        fresh = r.stream("j", "out")
        fresh.write("c").result(5)
        with pytest.raises(ValueError):
            fresh.write("x" * (64 * 1024))  # 64 KiB and its quotes
        with pytest.raises(ValueError):
            fresh.write(float("nan"))
        with pytest.raises(TypeError):
            fresh.write(object())
        with pytest.raises(ValueError):
            r.append_chunks("j", "out", [])
        fresh.write("x" * (64 * 1024 - 2)).result(5)
        fresh.close()
        with pytest.raises(HeraldError) as closed:
            fresh.write("late")
        assert closed.value.code == "closed"
    bodies = [b["chunks"] for _, p, _, b in s.seen]  # type: ignore[index]
    assert bodies == [["a"], ["c"], ["x" * (64 * 1024 - 2)]]
