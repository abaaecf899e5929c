"""Herald's Python client.

- :class:`Reporter` / :class:`AsyncReporter`: a worker reports its jobs
  (``job_started``, ``task_started``, ``progress``...) through a bounded
  queue, retried under one Idempotency-Key per report, in order per job,
  with bursts of progress coalesced.
- :class:`Subscriber` / :class:`AsyncSubscriber`: watch a job or all jobs
  live over server-sent events, resuming after any cut without missing or
  repeating an event; read a job's output streams (``read_stream``,
  ``streams``).
- :class:`StreamWriter` / :class:`AsyncStreamWriter` (``reporter.stream(job,
  name)``): write a job's output stream (log lines, LLM tokens) chunk by
  chunk; chunks travel in batches, one append each.
- Errors: :class:`HeraldError` and its subclasses.
"""

from ._common import ReporterStats
from .async_reporter import AsyncJobReporter, AsyncReporter, AsyncStreamWriter
from .errors import (
    Conflict,
    Forbidden,
    HeraldError,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    QueueFull,
    Unauthorized,
    Unavailable,
)
from .events import Event
from .reporter import JobReporter, Reporter, StreamWriter
from .subscriber import AsyncEventStream, AsyncSubscriber, EventStream, Subscriber

__version__ = "0.1.0"

__all__ = [
    "AsyncEventStream",
    "AsyncJobReporter",
    "AsyncReporter",
    "AsyncStreamWriter",
    "AsyncSubscriber",
    "Conflict",
    "Event",
    "EventStream",
    "Forbidden",
    "HeraldError",
    "IllegalTransition",
    "InvalidRequest",
    "JobReporter",
    "NotFound",
    "QueueFull",
    "Reporter",
    "ReporterStats",
    "StreamWriter",
    "Subscriber",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
