"""A server killed (SIGKILL) and restarted in the middle of a run: the
reporter keeps going through the outage, retrying under each request's
Idempotency-Key, and afterwards nothing is lost and nothing counted twice."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional

import anyio
import pytest

from herald_client import AsyncReporter, Reporter
from support import Herald, wait_until

N = 30
OUTCOME: Dict[str, str] = {f"t{i:02d}": ("failed" if i % 7 == 3 else "succeeded") for i in range(N)}


def check_after_outage(herald: Herald, tok: str, job_id: str) -> None:
    job = herald.job(job_id, tok)
    assert job["status"] == "completed"
    failed = sum(1 for v in OUTCOME.values() if v == "failed")
    assert (job["total"], job["succeeded"], job["failed"]) == (N, N - failed, failed)
    assert job["metadata"] == {"done": N}
    events = herald.events(f"job:{job_id}", tok)
    for t, result in OUTCOME.items():
        seen = [e["data"]["status"] for e in events if e["type"].startswith("task.") and e["data"]["id"] == t]
        assert seen == ["running", result], (t, seen)
    # A task started twice would count an attempt more.
    assert {t["id"]: t["attempts"] for t in herald.tasks(job_id, tok)} == {t: 1 for t in OUTCOME}
    # Artifacts are appended, never merged: a retry counted twice would show here.
    assert len(herald.artifacts(job_id, tok)) == N
    assert [e["type"] for e in events].count("artifact.created") == N
    assert [e["type"] for e in events].count("job.completed") == 1


def test_restart_mid_run_sync(herald: Herald, worker: str, job_id: str) -> None:
    failure: List[BaseException] = []
    reporter = Reporter(herald.url, worker, coalesce=0.05, backoff=(0.05, 0.5), retry_timeout=30)

    def work() -> None:
        try:
            with reporter.job(job_id, title="through an outage", total=N) as job:
                for i, (t, result) in enumerate(OUTCOME.items()):
                    job.task_started(t, f"item {i}")
                    time.sleep(0.03)  # the work itself
                    if result == "failed":
                        job.task_failed(t, "rejected")
                    else:
                        job.task_succeeded(t)
                    job.artifact("label", {"task": t})
                    job.progress(metadata={"done": i + 1})
        except BaseException as e:  # handed to the test thread
            failure.append(e)

    worker_thread = threading.Thread(target=work)
    worker_thread.start()
    try:
        wait_until(lambda: reporter.stats().sent >= 15, what="the first reports")
        herald.restart(pause=1.0)
        worker_thread.join(45)
        assert not worker_thread.is_alive()
        assert not failure, failure
        stats = reporter.stats()
        assert stats.retries > 0, stats  # the outage was felt, and ridden out
        assert stats.failed == 0, stats
    finally:
        reporter.close()
    check_after_outage(herald, worker, job_id)


@pytest.mark.anyio
async def test_restart_mid_run_async(herald: Herald, worker: str, job_id: str) -> None:
    reporter = AsyncReporter(herald.url, worker, coalesce=0.05, backoff=(0.05, 0.5), retry_timeout=30)

    async def work() -> None:
        async with reporter.job(job_id, title="through an outage", total=N) as job:
            for i, (t, result) in enumerate(OUTCOME.items()):
                await job.task_started(t, f"item {i}")
                await anyio.sleep(0.03)
                if result == "failed":
                    await job.task_failed(t, "rejected")
                else:
                    await job.task_succeeded(t)
                await job.artifact("label", {"task": t})
                await job.progress(metadata={"done": i + 1})

    failure: Optional[BaseException] = None
    async with reporter:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal failure
                try:
                    await work()
                except BaseException as e:
                    failure = e

            tg.start_soon(run)
            with anyio.fail_after(10):
                while reporter.stats().sent < 15:
                    await anyio.sleep(0.02)
            # The restart blocks for a while: off the event loop, so the reporter keeps going.
            await anyio.to_thread.run_sync(herald.restart)
        assert failure is None, failure
        assert reporter.stats().retries > 0
    check_after_outage(herald, worker, job_id)
