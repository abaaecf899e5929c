"""The bounded queue while Herald is unreachable: progress folds into the
job's newest unsent report, anything else waits ``queue_timeout`` for room
and then raises QueueFull; once Herald is back everything held is
delivered, in order. And what happens when Herald stays away."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from herald_client import AsyncReporter, HeraldError, QueueFull, Reporter, Unavailable
from support import Herald, token


@pytest.fixture
def down() -> Iterator[Herald]:
    """A server that is not running yet: its port refuses connections."""
    h = Herald()
    try:
        yield h
    finally:
        h.stop()


def test_queue_full_policy(down: Herald, job_id: str) -> None:
    tok = token()
    r = Reporter(down.url, tok, coalesce=0, max_queue=4, queue_timeout=0.3, backoff=(0.05, 0.2), retry_timeout=30)
    try:
        r.job_started(job_id, total=10)
        r.task_started(job_id, "a")
        r.task_started(job_id, "b")
        first = r.progress(job_id, succeeded=1)
        assert r.stats().queued == 4  # full

        # Progress folds into the job's newest report that is not sent yet.
        assert r.progress(job_id, succeeded=2, metadata={"seen": 2}) is first
        assert r.progress(job_id, error="first error") is first
        assert r.stats().coalesced == 2 and r.stats().queued == 4

        # A status change waits queue_timeout for room, then is refused.
        t0 = time.monotonic()
        with pytest.raises(QueueFull) as e:
            r.task_succeeded(job_id, "a")
        assert 0.25 <= time.monotonic() - t0 < 3
        assert e.value.code == "queue_full"
        # So is progress that cannot fold (a second error needs its own request).
        with pytest.raises(QueueFull):
            r.progress(job_id, error="second error")
        assert r.stats().queued == 4

        # Herald comes up: what was held is delivered, in order, once.
        down.start()
        r.flush(timeout=20)
        assert first.result(0)["succeeded"] == 2
        # There is room again.
        r.task_succeeded(job_id, "a").result(10)
        r.close()
    finally:
        r.close(timeout=1)
    job = down.job(job_id, tok)
    assert (job["status"], job["succeeded"], job["metadata"]) == ("running", 2, {"seen": 2})
    assert [x["message"] for x in job["errors"]] == ["first error"]
    assert {t["id"]: t["status"] for t in down.tasks(job_id, tok)} == {"a": "succeeded", "b": "running"}
    types = [e["type"] for e in down.events(f"job:{job_id}", tok)]
    assert types[:2] == ["job.created", "task.created"]


@pytest.mark.anyio
async def test_queue_full_policy_async(down: Herald, job_id: str) -> None:
    tok = token()
    r = AsyncReporter(down.url, tok, coalesce=0.05, max_queue=2, queue_timeout=0.3, backoff=(0.05, 0.2))
    async with r:
        await r.job_started(job_id)
        first = await r.progress(job_id, stage="one")
        # With coalescing on, progress folds into its window's report as usual.
        assert await r.progress(job_id, stage="two") is first
        t0 = time.monotonic()
        with pytest.raises(QueueFull):
            await r.artifact(job_id, "label", "x")
        assert time.monotonic() - t0 >= 0.25
        down.start()
        await r.flush(timeout=20)
        assert (await first)["stage"] == "two"


def test_when_herald_stays_away_reports_fail_after_retry_timeout(down: Herald, job_id: str) -> None:
    failures = []
    r = Reporter(down.url, token(), retry_timeout=0.5, backoff=(0.05, 0.1), on_error=failures.append)
    fut = r.job_started(job_id)
    with pytest.raises(Unavailable) as e:
        fut.result(10)
    assert e.value.code == "network" and e.value.status is None
    assert r.stats().retries >= 2
    assert failures == [e.value]
    with pytest.raises(Unavailable):
        r.close()


def test_close_gives_up_after_its_timeout(down: Herald, job_id: str) -> None:
    r = Reporter(down.url, token(), retry_timeout=None, backoff=(0.05, 0.1))
    queued = [r.job_started(job_id), r.task_started(job_id, "a"), r.task_succeeded(job_id, "a")]
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as e:
        r.close(timeout=0.5)
    assert e.value.code == "closed"
    assert time.monotonic() - t0 < 5
    for f in queued:
        with pytest.raises(HeraldError) as fe:
            f.result(0)
        assert fe.value.code == "closed"
    with pytest.raises(HeraldError) as late:
        r.progress(job_id, stage="too late")
    assert late.value.code == "closed"
