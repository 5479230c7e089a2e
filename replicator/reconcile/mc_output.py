"""Reading mc's `--json` output stream into typed records.

mc prints one JSON object per message (pretty-printed by some versions, so an object
may span lines). For `mc mirror` a "success" record is printed *before* the copy
runs, errors come as separate records, and a totals record ends the run; the caller
must read the whole stream to know what happened. Records are yielded one at a time:
the caller keeps counters, never the stream. A JSON object of an unexpected shape
raises UnreadableRecord (the caller stops mc and fails the pair).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_MAX_OBJECT_CHARS = 4 << 20
_QUOTED = re.compile(r"`([^`]*)`")
_SHOWN_CHARS = 300


class UnreadableRecord(ValueError):
    """mc printed a JSON object this reader cannot understand."""

    def __init__(self, text: str, reason: str) -> None:
        shown = text.strip().replace("\n", " ")
        shown = shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."
        super().__init__(f"mc printed a record this tool cannot read ({reason}): {shown}")


@dataclass(frozen=True)
class Copied:
    """mc announced a copy; only the absence of a later error makes it real."""

    source: str
    target: str
    size: int


@dataclass(frozen=True)
class Failure:
    message: str
    cause: str
    code: str = ""
    bucket: str = ""
    fatal: bool = False

    @property
    def subject(self) -> str | None:
        """The URL or alias path the message names in backquotes, if any."""
        match = _QUOTED.search(self.message)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"{self.message} {self.cause}".strip()


@dataclass(frozen=True)
class Totals:
    transferred: int
    total: int
    duration_s: float


@dataclass(frozen=True)
class Difference:
    """One `mc diff` line: diff is mc's differType (5 only in source, 6 only in target)."""

    first: str
    second: str
    diff: int


ONLY_IN_SOURCE = 5
ONLY_IN_TARGET = 6

Record = Copied | Failure | Totals | Difference


def parse(obj: dict[str, Any]) -> Record | None:
    """One decoded JSON object as a record; None for messages this tool does not use."""
    if obj.get("status") == "error" or "error" in obj:
        error = obj.get("error") or {}
        cause = error.get("cause") or {}
        detail = cause.get("error") if isinstance(cause.get("error"), dict) else {}
        return Failure(
            message=str(error.get("message", "")).strip(),
            cause=str(cause.get("message", "")).strip(),
            code=str(detail.get("Code", "")),
            bucket=str(detail.get("BucketName", "")),
            fatal=error.get("type") == "fatal",
        )
    if "source" in obj and "target" in obj:
        source, target = obj["source"], obj["target"]
        if not isinstance(source, str) or not isinstance(target, str):
            raise TypeError("source and target must be strings")
        return Copied(source=source, target=target, size=_count(obj.get("size", 0)))
    if "transferred" in obj and "duration" in obj:
        return Totals(
            transferred=int(obj["transferred"]),
            total=int(obj.get("total", 0)),
            duration_s=float(obj["duration"]) / 1e9,
        )
    if "diff" in obj:
        first, second = obj.get("first", ""), obj.get("second", "")
        if not isinstance(first, str) or not isinstance(second, str):
            raise TypeError("first and second must be strings")
        return Difference(first=first, second=second, diff=_count(obj["diff"]))
    return None


def _count(value: object) -> int:
    """A non-negative JSON integer (mc prints sizes and codes as numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def read(lines: Iterable[str]) -> Iterator[Record | str]:
    """Records from a stream of lines; text that is not JSON is passed through as str."""
    buffer = ""
    for line in lines:
        if not buffer and not line.lstrip().startswith("{"):
            if line.strip():
                yield line.rstrip("\n")
            continue
        buffer += line
        try:
            obj = json.loads(buffer)
        except json.JSONDecodeError:
            if len(buffer) > _MAX_OBJECT_CHARS:
                yield buffer
                buffer = ""
            continue
        text, buffer = buffer, ""
        try:
            record = parse(obj) if isinstance(obj, dict) else None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UnreadableRecord(text, f"{type(exc).__name__}: {exc}") from None
        if record is not None:
            yield record
    if buffer.strip():
        yield buffer
