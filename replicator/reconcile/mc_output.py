"""Reading mc's `--json` output stream into typed records.

mc prints one JSON object per message (pretty-printed by some versions, so an object
may span lines). For `mc mirror` a "success" record is printed *before* the copy
runs, errors come as separate records, and a totals record ends the run; the caller
must read the whole stream to know what happened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_MAX_OBJECT_CHARS = 4 << 20
_QUOTED = re.compile(r"`([^`]*)`")


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
        return Copied(source=obj["source"], target=obj["target"], size=int(obj.get("size", 0)))
    if "transferred" in obj and "duration" in obj:
        return Totals(
            transferred=int(obj["transferred"]),
            total=int(obj.get("total", 0)),
            duration_s=float(obj["duration"]) / 1e9,
        )
    if "diff" in obj:
        return Difference(
            first=obj.get("first", ""), second=obj.get("second", ""), diff=int(obj["diff"])
        )
    return None


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
        buffer = ""
        record = parse(obj) if isinstance(obj, dict) else None
        if record is not None:
            yield record
    if buffer.strip():
        yield buffer
