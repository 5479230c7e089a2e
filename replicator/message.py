"""A delivery as the worker and the DLQ tool read it: its body and its headers.

Anyone who can publish to the exchange (MinIO's AMQP target, a shovel, an operator) can
put anything in a message, so every field is parsed defensively: what cannot be
understood raises MalformedTask, which the worker dead-letters with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from . import events
from .task import MalformedTask, Task, from_dict

ATTEMPT = "x-mirror-attempt"  # delayed retries spent so far
ERROR = "x-mirror-error"  # the last failure's reason
FIRST_FAILURE = "x-mirror-first-failure"
LAST_FAILURE = "x-mirror-last-failure"
MAX_ATTEMPT = 1000  # far above the tiers; anything larger is not ours


def parse(body: bytes) -> list[Task]:
    """Our task, or MinIO's own event body (its AMQP target); else MalformedTask."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedTask(f"message is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise MalformedTask("message is not a JSON object")
    if events.is_event_body(data):
        return events.tasks_from_body(data, origin="amqp")
    return [from_dict(data)]


def attempt(headers: Mapping[str, object] | None) -> int:
    """Delayed retries spent so far; MalformedTask for a value that is not a small count."""
    value = (headers or {}).get(ATTEMPT, 0)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ATTEMPT:
        raise MalformedTask(f"header {ATTEMPT}={str(value)[:40]!r} is not a retry count")
    return value


def text(headers: Mapping[str, object] | None, name: str) -> str:
    """A header as text, whatever type a publisher gave it."""
    value = (headers or {}).get(name, "")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
