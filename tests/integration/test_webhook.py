"""The webhook endpoint's answers, against the real listener process and RabbitMQ."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import stack as local_stack
from minio import Minio
from minio.notificationconfig import NotificationConfig, QueueConfig

from replicator import message, topology
from tests.conftest import empty_bucket
from tests.integration.conftest import WEBHOOK_TOKEN, dead_letters

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

    send.port = port
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
def test_without_the_token_401_and_nothing_queued(post, amqp, rabbit, token):
    assert post(CAPTURED.read_bytes(), token=token) == 401
    assert post(b"garbage", token=token) == 401
    assert queued(amqp) == []
    assert dead_letters(rabbit) == []


def test_bad_bodies_are_parked_answered_200_and_the_listener_carries_on(post, amqp, rabbit):
    # MinIO's queue_dir retries any 4xx forever: an unreadable event is parked instead.
    assert post(b"{not json") == 200
    assert post(b'{"EventName": "s3:ObjectCreated:Put"}') == 200
    assert post(CAPTURED.read_bytes()) == 200
    assert len(queued(amqp)) == 1
    reasons = [message.text(h, message.ERROR) for h, _ in dead_letters(rabbit)]
    assert len(reasons) == 2 and "not JSON" in reasons[0] and "no Records" in reasons[1]


def with_record(change) -> bytes:
    body = json.loads(CAPTURED.read_bytes())
    change(body["Records"][0])
    return json.dumps(body).encode()


def obj(field: str, value: object):
    return lambda record: record["s3"]["object"].__setitem__(field, value)


BAD_INPUT = [
    (with_record(obj("key", "")), "key is empty"),
    (with_record(obj("key", "nul%00key")), "NUL"),
    (with_record(obj("key", "k" * 1025)), "1025 bytes"),
    (with_record(obj("size", -5)), "non-negative integer"),
    (with_record(lambda r: r.__setitem__("eventName", ["s3:ObjectCreated:Put"])), "eventName"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (bytes(range(256)) * 4, "not JSON"),
]


def test_bad_input_is_parked_with_its_reason_and_the_listener_keeps_serving(post, amqp, rabbit):
    for body, _ in BAD_INPUT:
        assert post(body) == 200
    parked = dead_letters(rabbit)
    assert [body for _, body in parked] == [body for body, _ in BAD_INPUT]
    for (headers, _), (_, reason) in zip(parked, BAD_INPUT, strict=True):
        error = message.text(headers, message.ERROR)
        assert error.startswith("webhook event rejected: ") and reason in error, error
        assert message.text(headers, message.FIRST_FAILURE)
    assert queued(amqp) == []
    assert post(CAPTURED.read_bytes()) == 200
    assert len(queued(amqp)) == 1


def test_oversized_bodies_get_413(post, amqp, rabbit):
    from tests.listener.test_webhook import oversize_status

    assert oversize_status(post.port, WEBHOOK_TOKEN) == 413
    assert queued(amqp) == []
    assert dead_letters(rabbit) == []


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


# -- a source MinIO whose webhook target has no queue_dir: a failed delivery is lost ----

DIRECT_ARN = "arn:minio:sqs::direct:webhook"
DIRECT_BUCKET = "direct-src"
HEARTBEAT_S = 2  # the listener's RabbitMQ heartbeat (?heartbeat= in RABBITMQ_URL)


@pytest.fixture(scope="module")
def direct_port() -> int:
    return local_stack.free_port()


@pytest.fixture(scope="module")
def direct_minio(stack, direct_port) -> Iterator[local_stack.MinioServer]:
    """A source MinIO notifying our webhook without queue_dir (no retry, no disk queue)."""
    server = local_stack.MinioServer(
        "direct-notify",
        stack.root,
        {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_direct": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_direct": f"http://127.0.0.1:{direct_port}/",
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_direct": WEBHOOK_TOKEN,
        },
    ).start()
    client = server.client()
    client.create_bucket(Bucket=DIRECT_BUCKET)
    minio = Minio(server.url.split("//")[1], server.access_key, server.secret_key, secure=False)
    config = QueueConfig(queue=DIRECT_ARN, events=["s3:ObjectCreated:*"])
    minio.set_bucket_notification(DIRECT_BUCKET, NotificationConfig(queue_config_list=[config]))
    yield server
    empty_bucket(client, DIRECT_BUCKET)
    client.delete_bucket(Bucket=DIRECT_BUCKET)
    server.stop()


def listener_connections(rabbit) -> set[str]:
    """RabbitMQ's names (client and server address) of the webhook listener's connections."""
    result = rabbit._ctl("list_connections", "name", "client_properties")
    assert result.returncode == 0, result.stderr
    return {
        line.split("\t", 1)[0]
        for line in result.stdout.splitlines()
        if "listener (webhook)" in line
    }


def status(port: int, path: str) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None


def test_after_idling_3x_the_heartbeat_every_minio_event_lands(
    procs, amqp, rabbit, direct_minio, direct_port
):
    metrics = local_stack.free_port()
    listener = procs(
        "listen",
        "--mode",
        "webhook",
        BUCKET_PAIR=f"minio/{DIRECT_BUCKET}:aws/direct-copy",
        WEBHOOK_ADDRESS=f"127.0.0.1:{direct_port}",
        METRICS_ADDRESS=f"127.0.0.1:{metrics}",
        RABBITMQ_URL=f"{rabbit.url}?heartbeat={HEARTBEAT_S}",
        MIRROR_DEBUG="true",
    )
    local_stack.wait_until(lambda: status(metrics, "/readyz") == 200, 60, "the listener")
    before = listener_connections(rabbit)
    assert len(before) == 1
    time.sleep(3 * HEARTBEAT_S + 1)  # idle on purpose: RabbitMQ drops a silent connection

    client = direct_minio.client()
    keys = [f"idle/{n:02d}.txt" for n in range(20)]
    for key in keys:
        client.put_object(Bucket=DIRECT_BUCKET, Key=key, Body=b"x")

    found: list[dict] = []
    local_stack.wait_until(
        lambda: found.extend(queued(amqp)) or len(found) >= len(keys), 60, "every event"
    )
    assert sorted(t["key"] for t in found) == keys
    # The same connection carried them: its heartbeats were serviced while idle.
    assert listener_connections(rabbit) == before
    log = listener.log.read_text(errors="replace")
    assert "answered 503" not in log and "RabbitMQ unavailable" not in log


def test_half_sent_requests_time_out_and_free_their_threads(procs, amqp):
    port = local_stack.free_port()
    listener = procs(
        "listen",
        "--mode",
        "webhook",
        BUCKET_PAIR="minio/cap:aws/cap-copy",
        WEBHOOK_ADDRESS=f"127.0.0.1:{port}",
        WEBHOOK_READ_TIMEOUT="2",
        WEBHOOK_MAX_CONNECTIONS="100",
    )
    send = poster(port)
    local_stack.wait_until(lambda: send(CAPTURED.read_bytes()) == 200, 60, "the listener")
    process = psutil.Process(listener.popen.pid)
    idle = process.num_threads()
    half_sent = [
        b"POST / HTTP/1.1\r\nHost: x\r\n",
        f"POST / HTTP/1.1\r\nAuthorization: Bearer {WEBHOOK_TOKEN}\r\n"
        "Content-Length: 500\r\n\r\n{".encode(),
        b"POS",
    ]
    sockets = []
    try:
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(half_sent[n % len(half_sent)])
            sockets.append(sock)
        peak = process.num_threads()
        assert peak <= idle + 100 + 5  # the cap held: beyond it, 503 and closed
        local_stack.wait_until(
            lambda: process.num_threads() <= idle + 2, 60, "the handler threads to end"
        )
    finally:
        for sock in sockets:
            sock.close()
    assert send(CAPTURED.read_bytes()) == 200
    assert len(queued(amqp)) == 2


def poster(port: int):
    def send(body: bytes) -> int | None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        try:
            connection.request("POST", "/", body, headers)
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    return send
