"""The errors this package raises.

Every error is a :class:`HeraldError` with the server's stable ``code`` (see
docs/API.md), the HTTP ``status`` when there was an answer, and the server's
``message``. Subclasses group the codes a caller handles alike, so
``except NotFound`` works without comparing strings.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Type


class HeraldError(Exception):
    """An error answered by Herald, or one the client met on its way there.

    ``code`` is the server's code (``illegal_transition``, ``not_found``...) or
    one of the client's own: ``network`` (no connection), ``timeout`` (no answer
    in time), ``queue_full``, ``closed`` (the reporter was closed),
    ``flush_timeout``, ``bad_response`` (a 2xx that is not the expected JSON).
    ``status`` is the HTTP status, or ``None`` when no answer came.
    """

    code: str
    status: Optional[int]
    message: str
    #: For a queued report that failed: which request (``"POST /v1/jobs/7/progress"``).
    request: Optional[str]

    def __init__(self, code: str, message: Optional[str] = None, status: Optional[int] = None) -> None:
        self.code = code
        self.message = message or code
        self.status = status
        self.request = None
        super().__init__(self.message)

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class Unauthorized(HeraldError):
    """401: no credentials (``unauthorized``), a token that does not verify
    (``invalid_token``) or one past its ``exp`` (``token_expired``)."""


class Forbidden(HeraldError):
    """403 ``forbidden``: the token's role may not do this."""


class NotFound(HeraldError):
    """404 ``not_found``: no such job (or one the caller may not see), no such route."""


class Conflict(HeraldError):
    """409: ``conflict`` (a job id reused with another body), ``job_finished``
    (a task change on a finished job)."""


class IllegalTransition(Conflict):
    """409 ``illegal_transition``: e.g. reporting ``running`` on a completed job."""


class InvalidRequest(HeraldError):
    """400, 413, 415 or 422: the request itself is wrong (``invalid_field``,
    ``invalid_id``, ``job_too_large``, ``idempotency_key_reused``...). Retrying
    the same request cannot succeed."""


class Unavailable(HeraldError):
    """Herald could not be reached or could not answer: network errors,
    timeouts, 5xx, and 408/429 once retries are used up. The request may be
    retried later; with an Idempotency-Key a retry never counts twice."""


class QueueFull(HeraldError):
    """The reporter's queue stayed full for ``queue_timeout`` seconds (Herald
    unreachable for long, or slower than the worker): the report was not queued."""

    def __init__(self, message: str) -> None:
        super().__init__("queue_full", message)


_BY_CODE: Dict[str, Type[HeraldError]] = {
    "unauthorized": Unauthorized,
    "invalid_token": Unauthorized,
    "token_expired": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "job_finished": Conflict,
    "illegal_transition": IllegalTransition,
    "unavailable": Unavailable,
    "too_many_connections": Unavailable,
}


def _class_for_status(status: int) -> Type[HeraldError]:
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status in (408, 429) or status >= 500:
        return Unavailable
    return InvalidRequest


def error_from_response(status: int, content: bytes) -> HeraldError:
    """The typed error for a non-2xx answer: the server's ``{"error": {"code",
    "message"}}`` when the body is one, else ``http_<status>`` (a proxy's page)."""
    code = f"http_{status}"
    message = code
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        if isinstance(err.get("code"), str) and err["code"]:
            code = err["code"]
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"]
    cls = _BY_CODE.get(code) or _class_for_status(status)
    return cls(code, message, status)


def is_retryable_status(status: int) -> bool:
    """Whether a request answered with ``status`` may succeed if sent again:
    5xx, 408 (timeout) and 429 (limit). Any other 4xx is final."""
    return status >= 500 or status in (408, 429)
