"""Stream mode's event reader: a malformed notification is parked, never a crash."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pika
import pytest

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


def test_a_silent_notification_stream_fails_within_the_read_timeout(monkeypatch):
    """A connection that went dead without a close (MinIO writes a keep-alive every 0.5 s,
    so silence means the flow is gone) ends the stream, and `follow` reconnects: it
    must not sit on it forever."""
    import threading
    import time

    import urllib3

    from listener.stream import minio_client
    from replicator import config
    from tests.replicator.s3.conftest import Peer, Server

    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    gone = threading.Event()

    def script(peer: Peer) -> None:
        peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n \r\n")
        gone.wait(30)  # then nothing, and no close: a dead flow

    server = Server(script)
    try:
        env = {
            "MINIO_URL": server.url(),
            "MINIO_ACCESS_KEY": "minio",
            "MINIO_SECRET_KEY": "minio-secret",
            "BUCKET_PAIR": "minio/bbb:aws/ccc",
            "MIRROR_READ_TIMEOUT": "2",
        }
        client = minio_client(config.load(env, need_target=False))
        started = time.monotonic()
        with (
            pytest.raises(urllib3.exceptions.HTTPError),
            client.listen_bucket_notification("bbb") as stream,
        ):
            for _ in stream:
                pass
        assert time.monotonic() - started < 20
    finally:
        gone.set()
        server.close()
