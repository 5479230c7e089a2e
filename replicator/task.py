"""The task: the one small, durable message every event source turns into.

Keys in tasks are always decoded. Object data never travels in the queue.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1
ORIGINS = ("stream", "webhook", "amqp", "backfill", "replay")


class MalformedTask(ValueError):
    """A message that can never become a copy: dead-lettered with this reason."""


@dataclass(frozen=True)
class Task:
    bucket: str
    key: str
    origin: str
    etag: str = ""
    size: int | None = None
    sequencer: str = ""
    event: str = ""
    event_time: str = ""
    target_absent: bool = False  # the lister saw no target object: write first, HEAD on 412
    v: int = VERSION

    @property
    def removal(self) -> bool:
        """The source object was removed (a delete task, acted on only with MIRROR_DELETE)."""
        return self.event.startswith("s3:ObjectRemoved:")

    def to_json(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if v not in ("", None, False)}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def from_dict(body: dict[str, Any]) -> Task:
    if body.get("v") != VERSION:
        version = body.get("v")
        raise MalformedTask(f"unknown task version {version!r} (this worker reads v{VERSION})")
    bucket, key = body.get("bucket"), body.get("key")
    if not isinstance(bucket, str) or not bucket:
        raise MalformedTask("task has no bucket")
    if not isinstance(key, str) or not key:
        raise MalformedTask("task has no key")
    try:
        encoded = key.encode()
    except UnicodeEncodeError as exc:
        raise MalformedTask("task key is not valid Unicode") from exc
    if "\0" in key or len(encoded) > 1024:
        raise MalformedTask("task key has a NUL character or is over 1,024 bytes")
    size = body.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedTask(f"task size {size!r} is not a non-negative integer")
    return Task(
        bucket=bucket,
        key=key,
        origin=str(body.get("origin") or "unknown"),
        etag=str(body.get("etag") or "").strip('"'),
        size=size,
        sequencer=str(body.get("sequencer") or ""),
        event=str(body.get("event") or ""),
        event_time=str(body.get("event_time") or ""),
        target_absent=body.get("target_absent") is True,
    )
