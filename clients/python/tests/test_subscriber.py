"""The subscriber against a live server: events arrive live; a stream cut
by a server restart resumes from its position with no gap and no duplicate
(compared with the event log); ``since`` resumes from an explicit position."""

from __future__ import annotations

import threading
import time
from typing import AsyncIterator, Callable, List

import anyio
import pytest

from herald_client import AsyncEventStream, AsyncReporter, AsyncSubscriber, Event, EventStream, Reporter, Subscriber
from support import Herald, token

TASKS = 12


def report_job(herald: Herald, tok: str, job_id: str, pace: float = 0.0) -> None:
    """A small worker run: TASKS tasks, progress, an artifact, completion."""
    with Reporter(herald.url, tok, coalesce=0.02, backoff=(0.05, 0.5)) as r:
        with r.job(job_id, title="watched", total=TASKS) as job:
            for i in range(TASKS):
                job.task_started(f"t{i}", f"item {i}")
                time.sleep(pace)
                job.task_succeeded(f"t{i}")
                job.progress(stage=f"step {i}")
            job.artifact("label", {"done": True})


def read_until_completed(stream: EventStream, on_event: Callable[[Event], None] = lambda e: None) -> List[Event]:
    out: List[Event] = []
    for e in stream:
        out.append(e)
        on_event(e)
        if e.type == "job.completed":
            break
    return out


def same_as_log(herald: Herald, tok: str, topic: str, got: List[Event], since: int = 0) -> None:
    log = herald.events(topic, tok, since)
    assert [e.position for e in got] == [e["position"] for e in log]
    assert [(e.type, e.topic, e.data) for e in got] == [(e["type"], e["topic"], e["data"]) for e in log]
    assert all(e.time for e in got)


def test_watch_job_live(herald: Herald, worker: str, job_id: str) -> None:
    with Subscriber(herald.url, worker) as sub, sub.watch_job(job_id) as stream:
        # open() returned: the server holds the subscription, nothing can slip by;
        # the stream starts at the newest event of the topic (none yet).
        assert stream.connected and stream.position == 0
        t = threading.Thread(target=report_job, args=(herald, worker, job_id))
        t.start()
        got = read_until_completed(stream)
        t.join(20)
    assert got[0].type == "job.created" and got[0].topic == f"job:{job_id}"
    assert stream.position == got[-1].position
    same_as_log(herald, worker, f"job:{job_id}", got)


def test_watch_job_resumes_after_a_server_restart(herald: Herald, worker: str, job_id: str) -> None:
    """Killed mid-stream, the server comes back on the same port; the stream
    reconnects with Last-Event-ID and the sequence matches the log exactly,
    including what was committed while it was down."""
    cut = threading.Event()
    with Subscriber(herald.url, worker, backoff=(0.05, 0.5), reconnect_timeout=20) as sub:
        with sub.watch_job(job_id) as stream:
            t = threading.Thread(target=report_job, args=(herald, worker, job_id, 0.03))
            t.start()

            def maybe_cut(e: Event) -> None:
                if not cut.is_set() and e.type == "task.updated" and e.data["id"] == "t3":
                    cut.set()
                    herald.restart(pause=1.0)  # the worker keeps reporting (retrying) meanwhile
                    # Let events pile up in the log while this stream is away:
                    # they must come back as a replay, in order.
                    time.sleep(0.5)

            got = read_until_completed(stream, maybe_cut)
            t.join(30)
    assert cut.is_set() and stream.reconnects >= 1
    same_as_log(herald, worker, f"job:{job_id}", got)


def test_a_stream_from_now_cut_before_its_first_event_misses_nothing(herald: Herald, worker: str, job_id: str) -> None:
    """Without ``since`` a stream starts at the newest event of its topic (so
    the job's history is not replayed), and that is already a cursor: events
    committed while it is cut before delivering anything come back too."""
    report_job(herald, worker, job_id)
    history = herald.events(f"job:{job_id}", worker)
    with Subscriber(herald.url, worker, backoff=(0.05, 0.5), reconnect_timeout=20) as sub:
        with sub.watch_job(job_id) as stream:
            assert stream.position == history[-1]["position"]
            herald.restart(pause=0.2)
            # Committed while the stream is away (it has not noticed yet).
            for i in range(3):
                status, _ = herald.api("POST", f"/v1/jobs/{job_id}/artifacts", worker, {"kind": "late", "payload": i})
                assert status == 201
            got = [next(stream) for _ in range(3)]
            assert stream.reconnects == 1
    assert [e.type for e in got] == ["artifact.created"] * 3
    same_as_log(herald, worker, f"job:{job_id}", got, since=history[-1]["position"])


def test_resume_from_an_explicit_since(herald: Herald, worker: str, job_id: str) -> None:
    report_job(herald, worker, job_id)
    log = herald.events(f"job:{job_id}", worker)
    middle = log[len(log) // 2]["position"]
    with Subscriber(herald.url, worker) as sub:
        with sub.watch_job(job_id, since=middle) as stream:
            got = read_until_completed(stream)
        same_as_log(herald, worker, f"job:{job_id}", got, since=middle)
        assert got[0].position > middle
        # since=0: the job's whole history.
        with sub.watch_job(job_id, since=0) as stream:
            assert len(read_until_completed(stream)) == len(log)


def test_watch_jobs_sees_every_job_of_the_tenant_in_order(herald: Herald, worker: str, job_id: str) -> None:
    """``jobs`` carries the job.* events of every job of the tenant (tasks
    and artifacts stay on each job's own topic), as one ordered stream."""
    with Subscriber(herald.url, token("watcher", "staff")) as sub, sub.watch_jobs() as stream:
        a, b = f"{job_id}-a", f"{job_id}-b"
        threads = [threading.Thread(target=report_job, args=(herald, worker, j)) for j in (a, b)]
        for t in threads:
            t.start()
        got: List[Event] = []
        for e in stream:
            got.append(e)
            if {x.data["id"] for x in got if x.type == "job.completed"} >= {a, b}:
                break
        for t in threads:
            t.join(20)
    assert {e.topic for e in got} == {"jobs"}
    positions = [e.position for e in got]
    assert positions == sorted(set(positions))
    for j in (a, b):
        log = [e for e in herald.events(f"job:{j}", worker) if e["type"].startswith("job.")]
        assert [e.position for e in got if e.data["id"] == j] == [e["position"] for e in log]


@pytest.mark.anyio
async def test_async_watch_live_cut_and_since(herald: Herald, worker: str, job_id: str) -> None:
    async with AsyncSubscriber(herald.url, worker, backoff=(0.05, 0.5), reconnect_timeout=20) as sub:
        got: List[Event] = []
        async with sub.watch_job(job_id) as stream:
            async with AsyncReporter(herald.url, worker, coalesce=0.02, backoff=(0.05, 0.5)) as r:

                async def work() -> None:
                    async with r.job(job_id, total=TASKS) as job:
                        for i in range(TASKS):
                            await job.task_started(f"t{i}")
                            await anyio.sleep(0.03)
                            await job.task_succeeded(f"t{i}")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(work)
                    cut = False
                    async for e in stream:
                        got.append(e)
                        if not cut and len(got) == 8:
                            cut = True
                            await anyio.to_thread.run_sync(herald.restart)
                            await anyio.sleep(0.5)
                        if e.type == "job.completed":
                            break
        assert stream.reconnects >= 1
        same_as_log(herald, worker, f"job:{job_id}", got)

        middle = got[len(got) // 2].position
        async with sub.watch_job(job_id, since=middle) as stream:
            rest = [e async for e in _until_completed(stream)]
        assert [e.position for e in rest] == [e.position for e in got if e.position > middle]


async def _until_completed(stream: AsyncEventStream) -> AsyncIterator[Event]:
    async for e in stream:
        yield e
        if e.type == "job.completed":
            return
