"""MinIO bucket notifications -> tasks.

One parser for every ingest mode. The stream API sends keys as they are; the webhook
and AMQP targets send them URL-encoded (`+` for space, `%2F` for `/`).

Anyone who can reach an ingest path can send anything, so every field is checked:
a record that cannot become a valid task raises MalformedTask with the reason (the
callers park it in the dead-letter queue), and nothing here raises anything else.
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
# Removals become delete tasks; whether they delete anything is MIRROR_DELETE's call.
REMOVED_EVENTS = frozenset({"s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated"})
MAX_KEY_BYTES = 1024  # S3's limit on an object key (UTF-8)


def _short(value: object) -> str:
    return repr(value)[:80]


def check_key(key: object, *, encoded: bool) -> str:
    """The decoded key, or MalformedTask: non-empty UTF-8 without NUL, <= 1,024 bytes."""
    if not isinstance(key, str):
        raise MalformedTask(f"event record's object key {_short(key)} is not a string")
    if encoded:
        try:
            key = unquote_plus(key, errors="strict")
        except UnicodeDecodeError as exc:
            raise MalformedTask(f"object key {_short(key)} is not UTF-8 once decoded") from exc
    if not key:
        raise MalformedTask("event record's object key is empty")
    if "\x00" in key:
        raise MalformedTask(f"object key {_short(key)} contains a NUL character")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates from a JSON \\ud800 escape
        raise MalformedTask(f"object key {_short(key)} is not valid Unicode") from exc
    if size > MAX_KEY_BYTES:
        raise MalformedTask(f"object key is {size} bytes (S3 allows at most {MAX_KEY_BYTES})")
    return key


def _text(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedTask(f"event record's {name} {_short(value)} is not a string")
    return value


def task_from_record(record: object, *, origin: str, encoded: bool) -> Task | None:
    """The task for one record; None for events that change neither content nor presence."""
    if not isinstance(record, dict):
        raise MalformedTask("event record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedTask(f"event record's eventName {_short(name)} is not a string")
    if name not in CONTENT_EVENTS and name not in REMOVED_EVENTS:
        return None
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise MalformedTask("event record has no 's3' object")
    bucket = s3.get("bucket")
    bucket = bucket.get("name") if isinstance(bucket, dict) else None
    if not isinstance(bucket, str) or not bucket:
        raise MalformedTask(f"event record's bucket name {_short(bucket)} is not a name")
    obj = s3.get("object")
    if not isinstance(obj, dict):
        raise MalformedTask("event record has no 's3.object' object")
    if "key" not in obj:
        raise MalformedTask("event record has no object key")
    key = check_key(obj["key"], encoded=encoded)
    size = obj.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedTask(f"object size {_short(size)} is not a non-negative integer")
    return Task(
        bucket=bucket,
        key=key,
        origin=origin,
        etag=_text("eTag", obj.get("eTag")).strip('"'),
        size=size,
        sequencer=_text("sequencer", obj.get("sequencer")),
        event=name,
        event_time=_text("eventTime", record.get("eventTime")),
    )


def tasks_from_records(records: Iterable[object], *, origin: str, encoded: bool) -> Iterator[Task]:
    """Tasks for the content-changing records; other events are dropped.

    The first malformed record raises MalformedTask.
    """
    for record in records:
        task = task_from_record(record, origin=origin, encoded=encoded)
        if task is not None:
            yield task


def records_of(body: bytes | dict[str, Any]) -> list[object]:
    """The Records list of a webhook or AMQP-target body, or MalformedTask."""
    if not isinstance(body, dict):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MalformedTask(f"event body is not JSON: {str(exc)[:200]}") from exc
    records = body.get("Records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise MalformedTask("event body has no Records list")
    return records


def tasks_from_body(body: bytes | dict[str, Any], *, origin: str) -> list[Task]:
    """Tasks from a webhook or AMQP-target body (`{"EventName","Key","Records"}`)."""
    return list(tasks_from_records(records_of(body), origin=origin, encoded=True))


def read_body(body: bytes, *, origin: str) -> tuple[list[Task], list[str]]:
    """Tasks of every good record and the reasons of the bad ones (never raises).

    A body that is not an event at all gives ([], [reason]).
    """
    try:
        records = records_of(body)
    except MalformedTask as exc:
        return [], [str(exc)]
    tasks, problems = [], []
    for number, record in enumerate(records):
        try:
            task = task_from_record(record, origin=origin, encoded=True)
        except MalformedTask as exc:
            problems.append(f"record {number}: {exc}" if len(records) > 1 else str(exc))
            continue
        if task is not None:
            tasks.append(task)
    return tasks, problems


def is_event_body(body: dict[str, Any]) -> bool:
    """MinIO's own event body (AMQP target) rather than one of our tasks."""
    return "Records" in body and "v" not in body
