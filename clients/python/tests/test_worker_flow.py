"""The seed's worker flow end to end, in both flavours: a job of directory
submissions, each a task that starts and succeeds or fails, progress, a
screenshot artifact, completion. Checked against the job as the API shows
it and against its event log."""

from __future__ import annotations

import pytest

from herald_client import AsyncReporter, Reporter
from support import Herald, token

DIRECTORIES = [
    ("gmb", "Google My Business"),
    ("yelp", "Yelp"),
    ("linkedin", "LinkedIn"),
    ("facebook", "Facebook Business"),
    ("bing", "Bing Places"),
    ("apple", "Apple Maps"),
]
FAILS = {"linkedin": "captcha not solved"}


def check_seed_job(herald: Herald, tok: str, job_id: str) -> None:
    job = herald.job(job_id, tok)
    assert job["status"] == "completed"
    assert job["title"] == "Submit to 6 directories"
    assert job["owner"] == "cust-42"
    assert (job["total"], job["succeeded"], job["failed"]) == (6, 5, 1)
    assert job["progress"] == 100.0
    assert job["stage"] == "submitting"
    assert job["current_item"] == "Apple Maps"
    # Six metadata patches, coalesced or not, add up as if sent one by one.
    assert job["metadata"]["directories"] == {d: ("failed" if d in FAILS else "submitted") for d, _ in DIRECTORIES}
    assert job["metadata"]["plan"] == "pro"
    assert job["finished_at"] is not None

    tasks = {t["id"]: t for t in herald.tasks(job_id, tok)}
    assert set(tasks) == {d for d, _ in DIRECTORIES}
    for d, name in DIRECTORIES:
        assert tasks[d]["name"] == name
        assert tasks[d]["status"] == ("failed" if d in FAILS else "succeeded")
    assert tasks["linkedin"]["error"] == FAILS["linkedin"]

    (shot,) = herald.artifacts(job_id, tok)
    assert shot["kind"] == "screenshot"
    assert shot["payload"] == {"url": "https://shots.example/gmb.png"}

    events = herald.events(f"job:{job_id}", tok)
    types = [e["type"] for e in events]
    assert types[0] == "job.created" and types[-1] == "job.completed"
    assert types.count("job.completed") == 1 and "job.failed" not in types
    # Per task, in the order reported: created running, then its outcome, once each.
    for d, _ in DIRECTORIES:
        seen = [e["data"]["status"] for e in events if e["type"].startswith("task.") and e["data"]["id"] == d]
        assert seen == ["running", "failed" if d in FAILS else "succeeded"], (d, seen)
    # Requests of one job go in order: the tasks started in the order of the loop.
    started = [e["data"]["id"] for e in events if e["type"] == "task.created"]
    assert started == [d for d, _ in DIRECTORIES]
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions))


def test_seed_flow_sync(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker, coalesce=0.05) as reporter:
        with reporter.job(job_id, title="Submit to 6 directories", owner="cust-42", total=6, kind="submit") as job:
            job.progress(stage="submitting", metadata={"plan": "pro"})
            for i, (d, name) in enumerate(DIRECTORIES):
                job.task_started(d, name)
                if d in FAILS:
                    job.task_failed(d, RuntimeError(FAILS[d]))
                else:
                    job.task_succeeded(d)
                job.progress(metadata={"directories": {d: "failed" if d in FAILS else "submitted"}})
                if i == 0:
                    job.artifact("screenshot", {"url": "https://shots.example/gmb.png"})
        stats = reporter.stats()
        assert stats.failed == 0 and stats.queued == 0
    check_seed_job(herald, worker, job_id)


@pytest.mark.anyio
async def test_seed_flow_async(herald: Herald, worker: str, job_id: str) -> None:
    async with AsyncReporter(herald.url, worker, coalesce=0.05) as reporter:
        async with reporter.job(job_id, title="Submit to 6 directories", owner="cust-42", total=6) as job:
            await job.progress(stage="submitting", metadata={"plan": "pro"})
            for i, (d, name) in enumerate(DIRECTORIES):
                await job.task_started(d, name)
                if d in FAILS:
                    await job.task_failed(d, FAILS[d])
                else:
                    await job.task_succeeded(d)
                await job.progress(metadata={"directories": {d: "failed" if d in FAILS else "submitted"}})
                if i == 0:
                    answer = await (await job.artifact("screenshot", {"url": "https://shots.example/gmb.png"}))
                    assert answer["kind"] == "screenshot"
        assert reporter.stats().failed == 0
    check_seed_job(herald, worker, job_id)


def test_reporting_calls_without_the_context_manager(herald: Herald, worker: str, job_id: str) -> None:
    """The plain calls, as a worker with its own control flow uses them; the
    futures carry Herald's answers."""
    with Reporter(herald.url, worker, coalesce=0) as r:
        created = r.create_job(job_id, title="Crawl", tasks=[{"id": "p1", "name": "page 1"}, {"id": "p2"}]).result(10)
        assert created["status"] == "queued" and created["total"] == 2
        # A task starting on a queued job makes it running.
        assert r.task_started(job_id, "p1").result(10)["status"] == "running"
        r.task_succeeded(job_id, "p1")
        r.task_started(job_id, "p2", "page 2")
        r.progress(job_id, error="page 2 timed out once")
        r.task_succeeded(job_id, "p2")
        done = r.job_completed(job_id, stage="done").result(10)
        assert done["status"] == "completed" and done["stage"] == "done"
        r.flush()
    job = herald.job(job_id, worker)
    assert (job["succeeded"], job["failed"], job["total"]) == (2, 0, 2)
    assert [e["message"] for e in job["errors"]] == ["page 2 timed out once"]


def test_job_context_marks_failure_with_the_exception_message(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker) as r:
        with pytest.raises(ValueError, match="upstream returned garbage"):
            with r.job(job_id, title="Doomed", total=2) as job:
                job.task_started("a")
                job.task_succeeded("a")
                raise ValueError("upstream returned garbage")
        r.flush()
    job = herald.job(job_id, worker)
    assert job["status"] == "failed"
    assert [e["message"] for e in job["errors"]] == ["upstream returned garbage"]
    types = [e["type"] for e in herald.events(f"job:{job_id}", worker)]
    assert types[-1] == "job.failed" and "job.completed" not in types


@pytest.mark.anyio
async def test_async_job_context_marks_failure(herald: Herald, worker: str, job_id: str) -> None:
    async with AsyncReporter(herald.url, worker) as r:
        with pytest.raises(KeyError):
            async with r.job(job_id, title="Doomed"):
                raise KeyError("missing")
        await r.flush()
    job = herald.job(job_id, worker)
    assert job["status"] == "failed"
    assert job["errors"][0]["message"] == "'missing'"


def test_job_started_on_an_existing_job_and_notify(herald: Herald, worker: str, job_id: str) -> None:
    """job_started on a job created (queued) elsewhere moves it to running
    without creating anything; notify reaches the recipient."""
    admin = token("ops", "admin")
    assert herald.api("POST", "/v1/jobs", admin, {"id": job_id, "owner": "cust-7"})[0] == 201
    with Reporter(herald.url, worker) as r:
        started = r.job_started(job_id, total=3, stage="warming up").result(10)
        assert (started["status"], started["total"], started["stage"]) == ("running", 3, "warming up")
        note = r.notify("cust-7", "Your listing is live", body="Yelp accepted it", level="success").result(10)
        assert note["recipient"] == "cust-7"
    status, inbox = herald.api("GET", "/v1/notifications", token("cust-7", "customer"))
    assert status == 200
    assert [n["title"] for n in inbox["notifications"]] == ["Your listing is live"]
