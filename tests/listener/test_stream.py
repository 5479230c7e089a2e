"""Stream mode's event reader: a malformed notification is parked, never a crash."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pika

from listener.publish import TaskSink
from listener.stream import _tasks
from replicator import message, topology
from tests.listener.test_webhook import settings

STREAM_PUT = Path(__file__).parents[1] / "replicator" / "data" / "events" / "stream_put.json"


def test_a_malformed_stream_event_is_parked_and_a_good_one_read(rabbit):
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    topology.declare(channel)
    channel.queue_purge(topology.DEAD_QUEUE)
    sink = TaskSink(settings(rabbit.url), name="test stream")
    try:
        event = json.loads(STREAM_PUT.read_text())
        (task,) = _tasks(event, sink)
        assert task.key == "dir one/ä b+c%25#?.txt"
        event["Records"][0]["s3"]["object"]["key"] = "a\x00b"
        assert _tasks(event, sink) == []
        assert _tasks(["not", "an", "event"], sink) == []
        _, properties, body = channel.basic_get(topology.DEAD_QUEUE, auto_ack=True)
        assert "NUL" in message.text(properties.headers, message.ERROR)
        assert json.loads(body)["Records"][0]["s3"]["object"]["key"] == "a\x00b"
        _, properties, _ = channel.basic_get(topology.DEAD_QUEUE, auto_ack=True)
        assert "stream event rejected" in message.text(properties.headers, message.ERROR)
    finally:
        sink.close()
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
