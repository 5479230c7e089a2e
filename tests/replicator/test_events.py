"""Event parsing on bodies captured from the pinned MinIO server."""

import json
from pathlib import Path

import pytest

from replicator.events import (
    MAX_KEY_BYTES,
    is_event_body,
    read_body,
    tasks_from_body,
    tasks_from_records,
)
from replicator.task import MalformedTask

DATA = Path(__file__).parent / "data" / "events"
KEY = "dir one/ä b+c%25#?.txt"


def captured(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_webhook_keys_are_decoded():
    (task,) = tasks_from_body(json.dumps(captured("webhook_put.json")).encode(), origin="webhook")
    assert task.key == KEY
    assert task.bucket == "cap"
    assert task.event == "s3:ObjectCreated:Put"
    assert task.etag and task.size == 1 and task.sequencer and task.event_time


def test_copy_events_count_and_metadata_only_events_do_not():
    assert len(tasks_from_body(captured("webhook_copy.json"), origin="amqp")) == 1
    assert tasks_from_body(captured("webhook_put_tagging.json"), origin="webhook") == []


def test_stream_keys_are_taken_as_they_are():
    records = captured("stream_put.json")["Records"]
    (task,) = tasks_from_records(records, origin="stream", encoded=False)
    assert task.key == KEY


def test_amqp_bodies_are_told_apart_from_tasks():
    assert is_event_body(captured("webhook_put.json"))
    assert not is_event_body({"v": 1, "bucket": "b", "key": "k"})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{oops", "not JSON"),
        (b'{"EventName": "x"}', "no Records"),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]}', "bucket name"),
        (b"[1, 2]", "no Records"),
        (b'{"Records": "x"}', "no Records"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_bad_bodies_are_malformed(body, reason):
    with pytest.raises(MalformedTask, match=reason):
        tasks_from_body(body, origin="webhook")


def with_record(change) -> bytes:
    """The captured webhook body with one field of its record changed."""
    body = captured("webhook_put.json")
    change(body["Records"][0])
    return json.dumps(body).encode()


def set_key(key):
    return lambda record: record["s3"]["object"].__setitem__("key", key)


def set_size(size):
    return lambda record: record["s3"]["object"].__setitem__("size", size)


def set_name(name):
    return lambda record: record.__setitem__("eventName", name)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (set_key(""), "key is empty"),
        (set_key("a%00b"), "NUL"),
        (set_key("%FF%FE"), "not UTF-8"),
        (set_key("k" * (MAX_KEY_BYTES + 1)), "1025 bytes"),
        (set_key("%C3%A4" * 513), "1026 bytes"),  # 513 x 2-byte UTF-8 characters
        (set_key(None), "not a string"),
        (set_key(["a"]), "not a string"),
        (set_size(-1), "not a non-negative integer"),
        (set_size("12"), "not a non-negative integer"),
        (set_size(1.5), "not a non-negative integer"),
        (set_size(True), "not a non-negative integer"),
        (set_name(["s3:ObjectCreated:Put"]), "eventName"),
        (set_name({"a": 1}), "eventName"),
        (set_name(None), "eventName"),
        (lambda r: r["s3"].__setitem__("bucket", "cap"), "bucket name"),
        (lambda r: r["s3"].__setitem__("object", []), "s3.object"),
        (lambda r: r["s3"]["object"].pop("key"), "no object key"),
        (lambda r: r["s3"]["object"].__setitem__("eTag", {"x": 1}), "eTag"),
    ],
)
def test_bad_records_are_malformed_with_the_reason(change, reason):
    body = with_record(change)
    with pytest.raises(MalformedTask, match=reason):
        tasks_from_body(body, origin="webhook")
    tasks, problems = read_body(body, origin="webhook")
    assert tasks == [] and len(problems) == 1 and reason in problems[0]


def test_the_longest_key_s3_allows_is_accepted():
    key = "ä" * (MAX_KEY_BYTES // 2)  # 1,024 bytes in UTF-8
    encoded = key.encode().hex("%").upper()
    (task,) = tasks_from_body(with_record(set_key("%" + encoded)), origin="webhook")
    assert task.key == key
    (task,) = tasks_from_body(with_record(set_size(None)), origin="webhook")
    assert task.size is None


def test_stream_keys_are_checked_too():
    record = captured("stream_put.json")["Records"][0]
    record["s3"]["object"]["key"] = "a\x00b"
    with pytest.raises(MalformedTask, match="NUL"):
        list(tasks_from_records([record], origin="stream", encoded=False))
    record["s3"]["object"]["key"] = "\ud800"  # a lone surrogate (JSON "\\ud800")
    with pytest.raises(MalformedTask, match="not valid Unicode"):
        list(tasks_from_records([record], origin="stream", encoded=False))


def test_deeply_nested_json_is_malformed_not_a_crash():
    body = b'{"Records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(MalformedTask, match="not JSON"):
        tasks_from_body(body, origin="webhook")
    assert read_body(body, origin="webhook")[0] == []


def test_read_body_keeps_the_good_records_and_names_the_bad_ones():
    body = captured("webhook_put.json")
    good = body["Records"][0]
    body["Records"] = [good, "not a record", good, {"eventName": 7}]
    tasks, problems = read_body(json.dumps(body).encode(), origin="webhook")
    assert [t.key for t in tasks] == [KEY, KEY]
    assert problems == [
        "record 1: event record is not an object",
        "record 3: event record's eventName 7 is not a string",
    ]


def test_read_body_drops_metadata_only_events_without_problems():
    tagging = (DATA / "webhook_put_tagging.json").read_bytes()
    assert read_body(tagging, origin="webhook") == ([], [])
