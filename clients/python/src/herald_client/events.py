"""Events of Herald's log, and the server-sent-events wire format they come in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Optional, Union


@dataclass(frozen=True)
class Event:
    """One event of Herald's log.

    ``position``: its place in the log, one integer sequence for the whole
    log, strictly increasing in commit order; a stream's resume cursor.
    ``type``: ``job.created``, ``job.updated``, ``job.completed``,
    ``job.failed``, ``job.cancelled``, ``job.stalled``, ``task.created``,
    ``task.updated``, ``artifact.created``, ``notification.created``...
    ``topic``: the topic it came on (``job:<id>``, ``jobs``...).
    ``data``: the row after the change (a job, a task, an artifact), as the
    HTTP API shows it. ``time``: when it was committed (RFC 3339).

    A ``resync`` event (``type == "resync"``) stands for events that are no
    longer in the log (the cursor was older than the server's retention):
    its ``data`` is ``{"position", "snapshot"}`` with the current state of
    each topic; the stream continues after ``position``.
    """

    position: int
    type: str
    topic: str
    data: Any
    time: Optional[str] = None


@dataclass(frozen=True)
class SseMessage:
    """One message of a ``text/event-stream``: the fields of one block."""

    id: Optional[str]
    event: Optional[str]
    data: Optional[str]
    retry: Optional[int]


class SseDecoder:
    """Turns the lines of a ``text/event-stream`` into messages (the WHATWG
    parsing rules, minus what Herald never sends)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._id: Optional[str] = None
        self._event: Optional[str] = None
        self._data: List[str] = []
        self._retry: Optional[int] = None
        self._seen = False

    def feed(self, line: str) -> Optional[SseMessage]:
        """Takes one line (without its end); returns a message at the blank
        line that ends one."""
        if line == "":
            if not self._seen:
                return None
            msg = SseMessage(self._id, self._event, "\n".join(self._data) if self._data else None, self._retry)
            self._reset()
            return msg
        if line.startswith(":"):  # a comment: Herald's keep-alive
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            return None  # unknown fields are ignored
        self._seen = True
        return None


@dataclass(frozen=True)
class Goodbye:
    """The server is ending the stream (``shutting_down``, ``slow_consumer``,
    ``token_expired``...): reconnect and resume."""

    reason: str


def interpret(msg: SseMessage, topics: List[str]) -> Union[Event, Goodbye, None]:
    """What one message means for a watcher: an event of the log (or a
    resync), a goodbye, or nothing (the ``retry`` preamble, room broadcasts)."""
    if msg.event == "goodbye":
        reason = "goodbye"
        try:
            body = json.loads(msg.data or "{}")
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"]
        except ValueError:
            pass
        return Goodbye(reason)
    if msg.id is None or msg.data is None or not msg.id.isdigit():
        return None  # broadcasts and presence have no position
    position = int(msg.id)
    try:
        body = json.loads(msg.data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if msg.event == "resync":
        return Event(position, "resync", ",".join(topics), body, None)
    time = body.get("time")
    return Event(
        position,
        str(body.get("type") or msg.event or "message"),
        str(body.get("topic") or ""),
        body.get("data"),
        time if isinstance(time, str) else None,
    )
