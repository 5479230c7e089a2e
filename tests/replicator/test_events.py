"""Event parsing on bodies captured from the pinned MinIO server."""

import json
from pathlib import Path

import pytest

from replicator.events import is_event_body, tasks_from_body, tasks_from_records
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
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]}', "no 'bucket'"),
    ],
)
def test_bad_bodies_are_malformed(body, reason):
    with pytest.raises(MalformedTask, match=reason):
        tasks_from_body(body, origin="webhook")
