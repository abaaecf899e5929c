"""Typed errors from a live server: bad tokens, an illegal transition,
unknown jobs, refusals that are never retried, and an answer lost on the
way back that is retried under the same Idempotency-Key and counted once."""

from __future__ import annotations

import json
from typing import List, Tuple

import httpx
import pytest

from herald_client import (
    AsyncReporter,
    Conflict,
    Forbidden,
    HeraldError,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    Reporter,
    Subscriber,
    Unauthorized,
)
from support import Herald, sign, token

BAD_TOKENS = {
    "garbage": ("not-a-jwt", "invalid_token"),
    "wrong-secret": (token(secret="not-the-server-secret"), "invalid_token"),
    "expired": (token(ttl=-120), "token_expired"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_tokens_raise_unauthorized_with_the_server_code(herald: Herald, case: str, job_id: str) -> None:
    bad, code = BAD_TOKENS[case]
    with Reporter(herald.url, bad) as r:
        fut = r.job_started(job_id, title="never")
        with pytest.raises(Unauthorized) as e:
            fut.result(10)
        assert (e.value.code, e.value.status) == (code, 401)
        assert e.value.request == f"POST /v1/jobs/{job_id}/progress"
        assert r.stats().attempts == 1  # a refusal is not retried
        with pytest.raises(Unauthorized):
            r.flush()
    with Subscriber(herald.url, bad) as sub:
        with pytest.raises(Unauthorized) as e:
            sub.watch_jobs().open()
        assert e.value.code == code


@pytest.mark.anyio
async def test_bad_token_async(herald: Herald, job_id: str) -> None:
    async with AsyncReporter(herald.url, token(ttl=-60)) as r:
        fut = await r.task_started(job_id, "t1")
        with pytest.raises(Unauthorized) as e:
            await fut
        assert e.value.code == "token_expired"
        with pytest.raises(Unauthorized):
            await r.flush()


def test_get_token_is_asked_again_after_a_401(herald: Herald, worker: str, job_id: str) -> None:
    handed: List[str] = []

    def get_token() -> str:
        # The first token has expired by the time it is used; the next works.
        tok = token(ttl=-60) if not handed else worker
        handed.append(tok)
        return tok

    with Reporter(herald.url, get_token=get_token) as r:
        assert r.job_started(job_id).result(10)["status"] == "running"
    assert len(handed) == 2


def test_illegal_transition(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker) as r:
        with r.job(job_id, title="done soon"):
            pass
        running_again = r.job_started(job_id)
        with pytest.raises(IllegalTransition) as e:
            running_again.result(10)
        assert isinstance(e.value, Conflict)
        assert (e.value.code, e.value.status) == ("illegal_transition", 409)
        assert "completed" in e.value.message
        # Counts on a finished job would rewrite history: refused the same way.
        with pytest.raises(IllegalTransition):
            r.progress(job_id, succeeded=3).result(10)
        # A task change on a finished job has its own code.
        with pytest.raises(Conflict) as e2:
            r.task_started(job_id, "late").result(10)
        assert e2.value.code == "job_finished"
        # flush() raises each failure once, then has nothing more to say.
        with pytest.raises(IllegalTransition):
            r.flush()
        r.flush()
        assert r.stats().failed == 3


def test_unknown_job_raises_not_found(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker) as r:
        for fut in (
            r.task_started(job_id, "t1"),
            r.artifact(job_id, "label", "x"),
            r.progress(job_id, stage="nowhere"),
            r.job_completed(job_id),
        ):
            with pytest.raises(NotFound) as e:
                fut.result(10)
            assert (e.value.code, e.value.status) == ("not_found", 404)
        with pytest.raises(NotFound):
            r.flush()
    # Staff and workers may watch a job before it exists; a customer gets
    # not_found for a job that is not theirs (existence does not leak), and
    # may not watch the whole tenant.
    with Subscriber(herald.url, token("cust-1", "customer")) as sub:
        with pytest.raises(NotFound):
            sub.watch_job(job_id).open()
        with pytest.raises(Forbidden) as e:
            sub.watch_jobs().open()
        assert e.value.code == "forbidden"


def test_other_refusals(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker) as r:
        r.create_job(job_id, title="first").result(10)
        with pytest.raises(Conflict) as e:
            r.create_job(job_id, title="second").result(10)
        assert e.value.code == "conflict"
        with pytest.raises(InvalidRequest) as e3:
            r.progress(job_id, progress=150).result(10)
        assert (e3.value.code, e3.value.status) == ("invalid_field", 422)
        with pytest.raises(HeraldError):
            r.flush()
        assert r.stats().retries == 0
    with Reporter(herald.url, token("cust-1", "customer")) as r:
        with pytest.raises(Forbidden) as e4:
            r.job_started(job_id).result(10)
        assert e4.value.code == "forbidden"
        with pytest.raises(Forbidden):
            r.flush()


class LoseFirstAnswer(httpx.BaseTransport):
    """Sends every request to the real server, but loses the first answer
    for each of the given paths, as a connection cut after the server
    committed would."""

    def __init__(self, paths: List[str]) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = set(paths)
        self.seen: List[Tuple[str, str]] = []  # (path, Idempotency-Key) of every attempt

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.get("idempotency-key", "")))
        resp = self.inner.handle_request(request)
        resp.read()
        if request.url.path in self.lose:
            self.lose.discard(request.url.path)
            raise httpx.ReadError("connection reset (simulated)", request=request)
        return resp

    def close(self) -> None:
        self.inner.close()


def test_a_lost_answer_is_retried_under_the_same_key_and_counts_once(herald: Herald, worker: str, job_id: str) -> None:
    art = f"/v1/jobs/{job_id}/artifacts"
    prog = f"/v1/jobs/{job_id}/progress"
    with Reporter(herald.url, worker) as r:
        r.job_started(job_id).result(10)
    lossy = LoseFirstAnswer([art, prog])
    with Reporter(herald.url, worker, transport=lossy, backoff=(0.05, 0.2), coalesce=0) as r:
        first = r.artifact(job_id, "ocr", {"text": "hello"})
        r.progress(job_id, error="one error, reported once")
        assert first.result(10)["kind"] == "ocr"
        r.flush()
        assert r.stats().retries == 2
    # Both attempts of each request carried the same key; the two requests had different keys.
    art_keys = [k for p, k in lossy.seen if p == art]
    prog_keys = [k for p, k in lossy.seen if p == prog]
    assert len(art_keys) == 2 and len(set(art_keys)) == 1
    assert len(prog_keys) == 2 and len(set(prog_keys)) == 1
    assert art_keys[0] != prog_keys[0]
    # The server replayed its first answer: one artifact, one error entry.
    assert len(herald.artifacts(job_id, worker)) == 1
    assert [e["message"] for e in herald.job(job_id, worker)["errors"]] == ["one error, reported once"]
    assert [e["type"] for e in herald.events(f"job:{job_id}", worker)].count("artifact.created") == 1


def test_unserialisable_values_fail_at_the_call(herald: Herald, worker: str, job_id: str) -> None:
    with Reporter(herald.url, worker) as r:
        with pytest.raises(TypeError):
            r.artifact(job_id, "blob", {"data": object()})
        with pytest.raises(TypeError):
            r.progress(job_id, metadata={"when": json})
        assert r.stats().queued == 0


def test_a_token_without_claims_is_invalid(herald: Herald, job_id: str) -> None:
    with Reporter(herald.url, sign({"sub": "x"})) as r:
        with pytest.raises(Unauthorized) as e:
            r.job_started(job_id).result(10)
        assert e.value.code == "invalid_token"
        with pytest.raises(Unauthorized):
            r.flush()
