"""Job output streams against the real server: thousands of chunks written
through a reporter's stream writer (across a SIGKILL and restart) arrive
once and in order in a few appends, a long-poll reader follows them live,
and refusals are typed errors with Herald's codes."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional

import anyio
import pytest

from herald_client import (
    AsyncReporter,
    AsyncSubscriber,
    Forbidden,
    HeraldError,
    InvalidRequest,
    NotFound,
    Reporter,
    Subscriber,
)
from support import Herald, token


def tok(i: int) -> Any:
    return {"i": i, "t": f"tok{i}"}


def read_all(sub: Subscriber, job_id: str, stream: str) -> List[Any]:
    """Every chunk of a stream from offset 0, page by page."""
    got: List[Any] = []
    while True:
        page = sub.read_stream(job_id, stream, len(got), limit=700)
        assert page["offset"] == len(got) and not page["truncated"], page
        if not page["chunks"]:
            assert page["next"] == page["end"]
            return got
        got.extend(page["chunks"])


def test_5000_chunks_through_a_stream_writer_across_a_restart(herald: Herald, worker: str, job_id: str) -> None:
    n = 5000
    reporter = Reporter(herald.url, worker, backoff=(0.05, 0.5), retry_timeout=30)
    restart: Optional[threading.Thread] = None
    try:
        with reporter.job(job_id, title="generate") as job:
            with job.stream("tokens") as out:
                for i in range(n):
                    out.write(tok(i))
                    if i % 25 == 24:
                        time.sleep(0.002)  # tokens come at a pace, not all at once
                    if i == 2000:
                        # Herald dies (appends in flight or queued) and comes back while tokens keep coming.
                        restart = threading.Thread(target=herald.restart, kwargs={"pause": 0.5})
                        restart.start()
                    if i % 500 == 0:
                        # Progress and another stream go along without splitting the batches.
                        job.progress(stage=f"token {i}")
                        job.stream("log").write(f"at {i}")
        stats = reporter.stats()
        assert stats.failed == 0 and stats.retries > 0, stats
        # 5,000 tokens, 10 log lines, a start, progress and the end: a few dozen requests, not thousands.
        assert stats.sent < 150, stats
    finally:
        if restart is not None:
            restart.join(30)
        reporter.close()

    with Subscriber(herald.url, token("sam", "staff")) as sub:
        assert read_all(sub, job_id, "tokens") == [tok(i) for i in range(n)]
        assert read_all(sub, job_id, "log") == [f"at {i}" for i in range(0, n, 500)]
        streams = sorted(sub.streams(job_id), key=lambda s: str(s["name"]))
        assert [(s["name"], s["floor"], s["next_offset"]) for s in streams] == [("log", 0, 10), ("tokens", 0, n)]
        assert all(s["bytes"] > 0 and s["updated_at"] for s in streams), streams
    assert herald.job(job_id, worker)["status"] == "completed"


@pytest.mark.anyio
async def test_async_writer_batches_and_a_long_poll_reader_follows_live(
    herald: Herald, worker: str, job_id: str
) -> None:
    n = 3000
    alice = token("alice", "customer")
    async with AsyncReporter(herald.url, worker) as reporter:
        await (await reporter.create_job(job_id, owner="alice", status="running"))
        got: List[Any] = []
        first_at: List[float] = []

        async def follow() -> None:
            async with AsyncSubscriber(herald.url, alice) as sub:
                while len(got) < n + 1:
                    page = await sub.read_stream(job_id, "tokens", len(got), limit=10_000, wait=10)
                    assert page["chunks"], "a long-poll answers when chunks come"
                    if not first_at:
                        first_at.append(time.monotonic())
                    got.extend(page["chunks"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            out = reporter.stream(job_id, "tokens")
            sent_before = reporter.stats().sent
            wrote = time.monotonic()
            await out.write(tok(0))  # alone, not flushed: it goes out after its linger (0.1 s)
            await anyio.sleep(0.4)
            for i in range(1, n):
                await out.write(tok(i))
                if i % 10 == 0:
                    await anyio.sleep(0.001)
            last = await out.write("the end")
            answer = await last
            assert answer["stream"] == "tokens" and answer["next_offset"] == n + 1, answer
            await out.close()
            appends = reporter.stats().sent - sent_before
            assert 2 <= appends <= 60, f"{n} chunks in {appends} appends"
            with anyio.fail_after(20):
                while len(got) < n + 1:
                    await anyio.sleep(0.02)

        assert first_at[0] - wrote < 0.39, "a lone chunk is sent after its linger, not at the next write"
        assert got == [tok(i) for i in range(n)] + ["the end"]
        with pytest.raises(HeraldError) as e:
            await out.write("after close")
        assert e.value.code == "closed"


def test_refusals_are_typed_errors_with_heralds_codes(herald: Herald, worker: str, job_id: str) -> None:
    staff = token("sam", "staff")
    bob = token("bob", "customer")
    with Reporter(herald.url, worker, retry_timeout=5) as reporter, Subscriber(herald.url, worker) as sub:
        reporter.create_job(job_id, owner="alice").result(10)

        # A bad stream name: Herald's 422 invalid_field, from the writer's flush and every later write.
        bad = reporter.stream(job_id, "bad:name")
        bad.write("a")
        with pytest.raises(InvalidRequest) as e:
            bad.flush()
        assert (e.value.code, e.value.status) == ("invalid_field", 422), e.value
        assert e.value.request == f"POST /v1/jobs/{job_id}/streams/bad%3Aname"
        with pytest.raises(InvalidRequest):
            bad.write("b")
        with pytest.raises(InvalidRequest) as e:
            reporter.append_chunks(job_id, "bad name", ["a"]).result(10)
        assert e.value.code == "invalid_field"
        with pytest.raises(InvalidRequest) as e:
            sub.read_stream(job_id, "bad:name")
        assert (e.value.code, e.value.status) == ("invalid_field", 422)

        # No such job; a role that may not append; a customer reading a job not theirs.
        with pytest.raises(NotFound):
            reporter.append_chunks("no-such-job", "log", ["a"]).result(10)
        with pytest.raises(NotFound):
            sub.read_stream("no-such-job", "log")
        as_staff = Reporter(herald.url, staff)
        with pytest.raises(Forbidden) as f:
            as_staff.append_chunks(job_id, "log", ["a"]).result(10)
        assert f.value.code == "forbidden"
        with pytest.raises(Forbidden):
            as_staff.close()  # close raises the failure no flush raised yet
        with Subscriber(herald.url, bob) as other:
            with pytest.raises(NotFound):
                other.read_stream(job_id, "log")
            with pytest.raises(NotFound):
                other.streams(job_id)
        with pytest.raises(ValueError):
            sub.read_stream(job_id, "log", limit=0)
        with pytest.raises(ValueError):
            sub.read_stream(job_id, "log", wait=61)
        # The reporter keeps each failure for its next flush, as for any report.
        with pytest.raises(HeraldError):
            reporter.flush()

    # Nothing of the refused appends was written; what is accepted reads back.
    with Reporter(herald.url, worker) as reporter, Subscriber(herald.url, token("alice", "customer")) as alice:
        assert alice.streams(job_id) == []
        with reporter.stream(job_id, "log") as log:
            log.write_many(["one", "two"])
        answer = reporter.append_chunks(job_id, "log", [3, {"k": [1]}]).result(10)
        assert (answer["stream"], answer["first_offset"], answer["next_offset"]) == ("log", 2, 4)
        page = alice.read_stream(job_id, "log", 1, limit=2)
        assert (page["offset"], page["next"], page["end"], page["truncated"]) == (1, 3, 4, False)
        assert page["chunks"] == ["two", 3]
        never = alice.read_stream(job_id, "never")
        assert (never["end"], never["chunks"]) == (0, [])
