"""Coalescing of progress bursts, on and off, against a live server: the
number of requests and of events, and that the final state is right."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest

from herald_client import AsyncReporter, Reporter
from support import Herald

CALLS = 1000


def updates(herald: Herald, tok: str, job_id: str) -> List[Dict[str, Any]]:
    return [e for e in herald.events(f"job:{job_id}", tok) if e["type"] == "job.updated"]


def check_final(herald: Herald, tok: str, job_id: str) -> None:
    job = herald.job(job_id, tok)
    assert job["succeeded"] == CALLS and job["total"] == CALLS
    assert job["progress"] == 100.0
    assert job["metadata"]["last"] == CALLS
    # Each call patched one of ten keys: all ten hold their latest value.
    assert {k: v for k, v in job["metadata"].items() if k.startswith("k")} == {
        f"k{d}": CALLS - (CALLS - d) % 10 for d in range(10)
    }


def test_a_burst_with_coalescing_is_a_handful_of_requests(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker, coalesce=0.25) as r:
        r.job_started(job_id, total=CALLS).result(10)
        before = r.stats()
        futures = [r.progress(job_id, succeeded=i, metadata={"last": i, f"k{i % 10}": i}) for i in range(1, CALLS + 1)]
        r.flush()
        after = r.stats()
    requests = after.sent - before.sent
    assert 1 <= requests <= 20, after
    assert after.coalesced - before.coalesced == CALLS - requests
    assert len({id(f) for f in futures}) == requests  # calls folded together share one future
    assert all(f.result(0)["id"] == job_id for f in futures)
    assert len(updates(herald, worker, job_id)) == requests
    check_final(herald, worker, job_id)


def test_without_coalescing_every_call_is_a_request(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker, coalesce=0) as r:
        r.job_started(job_id, total=CALLS).result(10)
        before = r.stats()
        for i in range(1, CALLS + 1):
            r.progress(job_id, succeeded=i, metadata={"last": i, f"k{i % 10}": i})
        r.flush()
        after = r.stats()
    assert after.sent - before.sent == CALLS and after.coalesced == 0
    # One event per request, in the order called.
    ups = updates(herald, worker, job_id)
    assert [e["data"]["succeeded"] for e in ups] == list(range(1, CALLS + 1))
    check_final(herald, worker, job_id)


@pytest.mark.anyio
async def test_async_burst_with_coalescing(herald: Herald, worker: str, job_id: str) -> None:
    async with AsyncReporter(herald.url, worker, coalesce=0.25) as r:
        await (await r.job_started(job_id, total=CALLS))
        before = r.stats()
        for i in range(1, CALLS + 1):
            await r.progress(job_id, succeeded=i, metadata={"last": i, f"k{i % 10}": i})
        await r.flush()
        requests = r.stats().sent - before.sent
    assert 1 <= requests <= 20
    assert len(updates(herald, worker, job_id)) == requests
    check_final(herald, worker, job_id)


def test_errors_are_never_merged_and_metadata_patches_compose(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker, coalesce=0.5) as r:
        r.job_started(job_id).result(10)
        before = r.stats().sent
        r.progress(job_id, error="first", metadata={"a": {"x": 1}, "gone": True})
        r.progress(job_id, metadata={"a": {"y": 2}, "gone": None})
        r.progress(job_id, error="second")
        r.progress(job_id, error="third", stage="late")
        r.progress(job_id, metadata={"a": {"x": 3}})
        r.flush()
        # Three errors, three requests: each batch carries one of them.
        assert r.stats().sent - before == 3
    job = herald.job(job_id, worker)
    assert [e["message"] for e in job["errors"]] == ["first", "second", "third"]
    assert job["metadata"] == {"a": {"x": 3, "y": 2}}
    assert job["stage"] == "late"


def test_a_status_change_sends_pending_progress_first(herald: Herald, worker: str, job_id: str) -> None:
    """Progress waiting in its window goes out before a status change of the
    same job: here it would otherwise arrive after completion and be refused."""
    with Reporter(herald.url, worker, coalesce=5.0) as r:
        r.job_started(job_id)
        r.task_started(job_id, "only")
        r.progress(job_id, stage="wrapping up", metadata={"pages": 12})
        r.task_succeeded(job_id, "only")
        r.progress(job_id, current_item="final check")
        r.job_completed(job_id).result(10)
        r.flush()
    events = herald.events(f"job:{job_id}", worker)
    assert events[-1]["type"] == "job.completed"
    job = events[-1]["data"]
    assert (job["stage"], job["current_item"], job["metadata"]) == ("wrapping up", "final check", {"pages": 12})
    kinds = [(e["type"], e["data"].get("status")) for e in events]
    # The task's success came after the first progress and before the second.
    done = kinds.index(("task.updated", "succeeded"))
    assert any(e["data"].get("stage") == "wrapping up" for e in events[:done] if e["type"] == "job.updated")
    assert all(e["data"].get("current_item") != "final check" for e in events[:done] if e["type"] == "job.updated")


@pytest.fixture(scope="module")
def herald() -> Iterator[Herald]:
    # A thousand requests one after the other: skip the fsync of every commit
    # (what is measured here is the client, not the disk).
    h = Herald(["--durability", "normal"])
    h.start()
    try:
        yield h
    finally:
        h.stop()
