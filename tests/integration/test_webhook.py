"""The webhook endpoint's answers, against the real listener process and RabbitMQ."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import stack as local_stack

from replicator import topology
from tests.integration.conftest import WEBHOOK_TOKEN

pytestmark = pytest.mark.integration

CAPTURED = Path(__file__).parents[1] / "replicator" / "data" / "events" / "webhook_put.json"


@pytest.fixture
def post(procs, amqp):
    port = local_stack.free_port()
    procs(
        "listen",
        "--mode",
        "webhook",
        BUCKET_PAIR="minio/cap:aws/cap-copy",
        WEBHOOK_ADDRESS=f"127.0.0.1:{port}",
    )

    def up() -> bool:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return True
        except OSError:
            return False

    local_stack.wait_until(up, 30, "the webhook listener")

    def send(body: bytes, token: str | None = WEBHOOK_TOKEN) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request("POST", "/", body, headers)
        return connection.getresponse().status

    return send


def queued(amqp) -> list[dict]:
    found = []
    while True:
        method, _, body = amqp.basic_get(topology.WORK_QUEUE, auto_ack=True)
        if method is None:
            return found
        found.append(json.loads(body))


def test_a_confirmed_event_answers_200_with_the_key_decoded(post, amqp):
    assert post(CAPTURED.read_bytes()) == 200
    (task,) = queued(amqp)
    assert task["key"] == "dir one/ä b+c%25#?.txt"
    assert task["origin"] == "webhook" and task["bucket"] == "cap"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_without_the_token_401_and_nothing_queued(post, amqp, token):
    assert post(CAPTURED.read_bytes(), token=token) == 401
    assert queued(amqp) == []


def test_bad_bodies_get_400_and_the_listener_carries_on(post, amqp):
    assert post(b"{not json") == 400
    assert post(b'{"EventName": "s3:ObjectCreated:Put"}') == 400
    assert post(CAPTURED.read_bytes()) == 200
    assert len(queued(amqp)) == 1


def test_oversized_bodies_get_413(post, amqp):
    assert post(b" " * (1024 * 1024 + 1)) == 413
    assert queued(amqp) == []


def test_metadata_only_events_are_accepted_and_dropped(post, amqp):
    tagging = CAPTURED.with_name("webhook_put_tagging.json").read_bytes()
    assert post(tagging) == 200
    assert queued(amqp) == []


def test_health_endpoints_of_a_running_listener(procs, amqp):
    metrics = local_stack.free_port()
    procs(
        "listen",
        "--mode",
        "webhook",
        BUCKET_PAIR="minio/cap:aws/cap-copy",
        WEBHOOK_ADDRESS=f"127.0.0.1:{local_stack.free_port()}",
        METRICS_ADDRESS=f"127.0.0.1:{metrics}",
    )

    def status(path: str) -> int | None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", metrics, timeout=5)
            connection.request("GET", path)
            return connection.getresponse().status
        except OSError:
            return None

    local_stack.wait_until(lambda: status("/healthz") == 200, 30, "/healthz")
    local_stack.wait_until(lambda: status("/readyz") == 200, 30, "/readyz")
    assert status("/metrics") == 200
