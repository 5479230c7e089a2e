"""Reading deliveries defensively: anything a publisher can put in a message."""

import pytest

from replicator import message
from replicator.task import MalformedTask


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [(None, 0), ({}, 0), ({"x-mirror-attempt": 3}, 3), ({"x-mirror-attempt": "2"}, 2),
     ({"x-mirror-attempt": b"1"}, 1)],
)  # fmt: skip
def test_attempts_that_are_counts(headers, attempt):
    assert message.attempt(headers) == attempt


@pytest.mark.parametrize(
    "value", ["two", -1, 10**12, 1.5, [1], {"a": 1}, True, None, b"\xff", "", " 1 2 "]
)
def test_attempts_that_are_not_counts_are_malformed(value):
    with pytest.raises(MalformedTask, match="x-mirror-attempt"):
        message.attempt({"x-mirror-attempt": value})


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff", b"[" * 100_000, b"null", b"[]", b'"s"', b'{"v": 2, "bucket": "b", "key": "k"}',
     b'{"v": 1, "bucket": "b"}', b'{"v": 1, "bucket": "b", "key": "a\\u0000b"}',
     b'{"v": 1, "bucket": "b", "key": "k", "size": true}', b'{"Records": {}}'],
)  # fmt: skip
def test_bodies_that_are_not_tasks_are_malformed(body):
    with pytest.raises(MalformedTask):
        message.parse(body)


def test_a_task_and_a_minio_event_body_are_read():
    (task,) = message.parse(b'{"v": 1, "bucket": "b", "key": "k", "origin": "backfill"}')
    assert (task.bucket, task.key) == ("b", "k")
    assert message.parse(b'{"EventName": "s3:ObjectCreated:Put", "Records": []}') == []


def test_header_text_whatever_its_type():
    assert message.text({"x": b"a\xff"}, "x") == "a\ufffd"
    assert message.text({"x": None}, "x") == "" and message.text(None, "x") == ""
