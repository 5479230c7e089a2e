"""MinIO bucket notifications -> tasks.

One parser for every ingest mode. The stream API sends keys as they are; the webhook
and AMQP targets send them URL-encoded (`+` for space, `%2F` for `/`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote_plus

from .task import MalformedTask, Task

# Events that change content; PutTagging, PutRetention, PutLegalHold... do not.
CONTENT_EVENTS = frozenset(
    {
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
    }
)


def tasks_from_records(
    records: Iterable[dict[str, Any]], *, origin: str, encoded: bool
) -> Iterator[Task]:
    """Tasks for the content-changing records; other events are dropped."""
    for record in records:
        if not isinstance(record, dict):
            raise MalformedTask("event record is not an object")
        name = record.get("eventName")
        if name not in CONTENT_EVENTS:
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = obj["key"]
        except (KeyError, TypeError) as exc:
            raise MalformedTask(f"event record has no {exc}") from exc
        if not isinstance(key, str) or not isinstance(bucket, str):
            raise MalformedTask("event record's bucket or key is not a string")
        yield Task(
            bucket=bucket,
            key=unquote_plus(key) if encoded else key,
            origin=origin,
            etag=str(obj.get("eTag") or "").strip('"'),
            size=obj.get("size") if isinstance(obj.get("size"), int) else None,
            sequencer=str(obj.get("sequencer") or ""),
            event=name,
            event_time=str(record.get("eventTime") or ""),
        )


def tasks_from_body(body: bytes | dict[str, Any], *, origin: str) -> list[Task]:
    """Tasks from a webhook or AMQP-target body (`{"EventName","Key","Records"}`)."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedTask(f"event body is not JSON: {exc}") from exc
    records = body.get("Records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise MalformedTask("event body has no Records list")
    return list(tasks_from_records(records, origin=origin, encoded=True))


def is_event_body(body: dict[str, Any]) -> bool:
    """MinIO's own event body (AMQP target) rather than one of our tasks."""
    return "Records" in body and "v" not in body
