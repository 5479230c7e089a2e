"""The webhook handler in-process against a real RabbitMQ node: answers, parking of bad
events in the dead-letter queue, read timeouts, the connection cap, no crashed handler."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
import stack as local_stack

from listener.publish import TaskSink
from listener.webhook import WebhookServer
from replicator import config, message, topology

TOKEN = "listener-test-token"
CAPTURED = Path(__file__).parents[1] / "replicator" / "data" / "events" / "webhook_put.json"
KEY = "dir one/ä b+c%25#?.txt"


def settings(rabbit_url: str, **env: str) -> config.Settings:
    return config.load(
        {
            "MINIO_URL": "http://127.0.0.1:9",
            "MINIO_ACCESS_KEY": "k",
            "MINIO_SECRET_KEY": "secret",
            "BUCKET_PAIR": "minio/cap:aws/cap-copy",
            "RABBITMQ_URL": rabbit_url,
            "WEBHOOK_AUTH_TOKEN": TOKEN,
            "WEBHOOK_ADDRESS": f"127.0.0.1:{local_stack.free_port()}",
            **env,
        },
        need_target=False,
    )


class Running:
    def __init__(self, server: WebhookServer) -> None:
        self.server = server
        self.port = server.server_address[1]

    def post(self, body: bytes, token: str | None = TOKEN, timeout: float = 30) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request("POST", "/", body, headers)
            return connection.getresponse().status
        finally:
            connection.close()


@pytest.fixture
def webhook(rabbit) -> Iterator[Callable[..., Running]]:
    """start(**env) runs a webhook server in this process; all are stopped after."""
    started: list[WebhookServer] = []

    def start(rabbit_url: str = rabbit.url, **env: str) -> Running:
        chosen = settings(rabbit_url, **env)
        server = WebhookServer(chosen, TaskSink(chosen, name="test webhook"))
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        started.append(server)
        return Running(server)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()
        server.sink.close()


@pytest.fixture
def amqp(rabbit) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    topology.declare(channel)
    for queue in (topology.WORK_QUEUE, topology.DEAD_QUEUE):
        channel.queue_purge(queue)
    yield channel
    with contextlib.suppress(pika.exceptions.AMQPError):
        connection.close()


def drain(channel, queue: str) -> list[tuple[dict, bytes]]:
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return found
        found.append((properties.headers or {}, body))


def event(change: Callable[[dict], object] | None = None) -> bytes:
    body = json.loads(CAPTURED.read_bytes())
    if change:
        change(body["Records"][0])
    return json.dumps(body).encode()


def obj(field: str, value: object) -> Callable[[dict], object]:
    return lambda record: record["s3"]["object"].__setitem__(field, value)


def test_a_good_event_is_queued_with_its_key_decoded(webhook, amqp):
    assert webhook().post(event()) == 200
    ((_, body),) = drain(amqp, topology.WORK_QUEUE)
    task = json.loads(body)
    assert task["key"] == KEY and task["origin"] == "webhook" and task["size"] == 1


BAD = {
    "empty key": (event(obj("key", "")), "key is empty"),
    "NUL in key": (event(obj("key", "a%00b")), "NUL"),
    "1,025-byte key": (event(obj("key", "k" * 1025)), "1025 bytes"),
    "not UTF-8 key": (event(obj("key", "%FF")), "not UTF-8"),
    "negative size": (event(obj("size", -1)), "non-negative integer"),
    "string size": (event(obj("size", "1")), "non-negative integer"),
    "eventName list": (
        event(lambda r: r.__setitem__("eventName", ["s3:ObjectCreated:Put"])),
        "eventName",
    ),
    "record not an object": (b'{"Records": ["x"]}', "not an object"),
    "100k-deep JSON": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    "deep JSON in Records": (
        b'{"Records": [' + b"{" * 1 + b'"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
        "not JSON",
    ),
    "garbage": (b"\x00\xff garbage {", "not JSON"),
    "empty body": (b"", "not JSON"),
    "no Records": (b'{"EventName": "s3:ObjectCreated:Put"}', "no Records"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_an_unreadable_event_is_parked_with_its_reason_and_answered_200(webhook, amqp, case):
    body, reason = BAD[case]
    running = webhook()
    assert running.post(body) == 200
    ((headers, parked),) = drain(amqp, topology.DEAD_QUEUE)
    assert parked == body
    error = message.text(headers, message.ERROR)
    assert error.startswith("webhook event rejected: ") and reason in error
    assert message.text(headers, message.FIRST_FAILURE)
    assert message.text(headers, message.LAST_FAILURE)
    assert drain(amqp, topology.WORK_QUEUE) == []
    assert running.post(event()) == 200  # still serving
    assert len(drain(amqp, topology.WORK_QUEUE)) == 1


def test_good_records_beside_a_bad_one_are_queued_and_the_body_parked(webhook, amqp):
    body = json.loads(event())
    body["Records"].append({"eventName": 1})
    assert webhook().post(json.dumps(body).encode()) == 200
    assert len(drain(amqp, topology.WORK_QUEUE)) == 1
    ((headers, _),) = drain(amqp, topology.DEAD_QUEUE)
    assert "record 1: " in message.text(headers, message.ERROR)


def test_when_parking_fails_the_answer_is_503(webhook, amqp):
    dead = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"
    running = webhook(dead)
    assert running.post(b"garbage") == 503
    assert running.post(event()) == 503


@pytest.mark.parametrize("token", [None, "wrong"])
def test_auth_failures_stay_401(webhook, amqp, token):
    assert webhook().post(b"garbage", token=token) == 401
    assert drain(amqp, topology.DEAD_QUEUE) == []


def oversize_status(port: int, token: str = TOKEN) -> int:
    """Announce a body over the limit and read the answer (sent before any body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {1024 * 1024 + 1}\r\n\r\n".encode()
        )
        return int(sock.makefile("rb").readline().split()[1])


def test_oversize_stays_413(webhook, amqp):
    assert oversize_status(webhook().port) == 413
    assert drain(amqp, topology.DEAD_QUEUE) == []


def test_an_unexpected_error_answers_500_and_the_handler_lives_on(webhook, amqp, caplog):
    running = webhook()

    def broken(task):
        raise RuntimeError("a bug")

    running.server.sink.in_scope = broken
    with caplog.at_level(logging.ERROR, logger="listener.webhook"):
        assert running.post(event()) == 500
    assert any("answered 500" in r.getMessage() for r in caplog.records)
    del running.server.sink.in_scope
    assert running.post(event()) == 200


def half_open(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def handler_threads(server: WebhookServer) -> int:
    return server.max_connections - server.slots._value


HALF_SENT = [
    b"POST / HTTP/1.1\r\nHost: x\r\n",  # headers never finished
    (
        f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        'Content-Length: 1000\r\n\r\n{"Records": ['
    ).encode(),  # body never finished
    b"POS",  # request line never finished
    b"",  # nothing at all
]


def test_half_sent_requests_time_out_and_free_their_threads(webhook, amqp):
    running = webhook(WEBHOOK_READ_TIMEOUT="1", WEBHOOK_MAX_CONNECTIONS="400")
    before = threading.active_count()
    sockets = [half_open(running.port, HALF_SENT[i % len(HALF_SENT)]) for i in range(200)]
    try:
        local_stack.wait_until(lambda: handler_threads(running.server) > 0, 10, "handlers")
        # Each is dropped after the read timeout: the server closes its side.
        for sock in sockets:
            assert closed_by_server(sock)
        local_stack.wait_until(
            lambda: threading.active_count() <= before and handler_threads(running.server) == 0,
            30,
            "the handler threads to end",
        )
    finally:
        for sock in sockets:
            sock.close()
    assert running.post(event()) == 200


def test_connections_beyond_the_cap_get_503(webhook, amqp):
    running = webhook(WEBHOOK_MAX_CONNECTIONS="3", WEBHOOK_READ_TIMEOUT="30")
    held = [half_open(running.port, b"POST / HTTP/1.1\r\n") for _ in range(3)]
    try:
        local_stack.wait_until(lambda: handler_threads(running.server) == 3, 10, "3 handlers")
        assert running.post(event(), timeout=10) == 503
    finally:
        for sock in held:
            sock.close()
    local_stack.wait_until(lambda: handler_threads(running.server) == 0, 10, "the slots")
    assert running.post(event()) == 200
