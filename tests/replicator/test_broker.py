"""The publisher's connection on a real RabbitMQ node: heartbeats while idle, reconnect
and one retry after the connection dies, fail-over across URLs, readiness, one log line
per outage, tasks_published_total for every publisher."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator

import pika
import pytest
import stack as local_stack
from prometheus_client import REGISTRY

from replicator import broker, config, health, topology
from replicator.task import Task

SHORT_HEARTBEAT_S = 2  # RabbitMQ drops a connection after 2 missed heartbeats (~4 s)


@pytest.fixture
def queue(rabbit) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel on the node with the topology declared and the work queue purged."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    topology.declare(channel)
    channel.queue_purge(topology.WORK_QUEUE)
    yield channel
    with contextlib.suppress(pika.exceptions.AMQPError):  # a test may restart the node
        connection.close()


def taken(channel) -> list[dict]:
    found = []
    while True:
        method, _, body = channel.basic_get(topology.WORK_QUEUE, auto_ack=True)
        if method is None:
            return found
        found.append(json.loads(body))


def task(key: str, origin: str = "webhook") -> bytes:
    return Task(bucket="b", key=key, origin=origin).to_json()


def server_side_names(rabbit) -> str:
    """The client properties (with connection names) of every connection the node holds."""
    result = rabbit._ctl("list_connections", "client_properties")
    assert result.returncode == 0, result.stderr
    return result.stdout


def unique(label: str) -> str:
    return f"test {label} {secrets.token_hex(4)}"


def test_an_idle_publisher_keeps_its_connection_alive(rabbit, queue):
    name = unique("idle")
    publisher = broker.Publisher(rabbit.url, name=name, heartbeat=SHORT_HEARTBEAT_S)
    try:
        publisher.publish(task("before"))
        first = publisher.connection
        time.sleep(3 * SHORT_HEARTBEAT_S + 1)  # idle on purpose: 3x the heartbeat interval
        # RabbitMQ still holds the very same connection: heartbeats were serviced.
        assert name in server_side_names(rabbit)
        assert publisher.connection is first and first.is_open
        publisher.publish(task("after"))
        assert publisher.connection is first
        assert [t["key"] for t in taken(queue)] == ["before", "after"]
    finally:
        publisher.close()


def test_a_publish_on_a_killed_connection_is_retried_once_on_a_fresh_one(
    rabbit, queue, caplog, monkeypatch
):
    name = unique("killed")
    # A slow pump does not notice first: the publish itself finds the dead connection.
    monkeypatch.setattr(broker, "PUMP_MAX_S", 3600)
    publisher = broker.Publisher(rabbit.url, name=name, heartbeat=600)
    try:
        publisher.publish(task("one"))
        first = publisher.connection
        result = rabbit._ctl("close_all_connections", "closed by a test")
        assert result.returncode == 0, result.stderr
        local_stack.wait_until(lambda: name not in server_side_names(rabbit), 30, "the close")
        with caplog.at_level(logging.INFO, logger="replicator.broker"):
            publisher.publish(task("two"))
        assert publisher.connection is not first and publisher.connection.is_open
        assert [t["key"] for t in taken(fresh_channel(rabbit))] == ["one", "two"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # pika's too
    finally:
        publisher.close()


def test_an_idle_publisher_notices_a_closed_connection_and_reconnects(rabbit, queue):
    publisher = broker.Publisher(rabbit.url, name=unique("pumped"), heartbeat=SHORT_HEARTBEAT_S)
    try:
        publisher.publish(task("one"))
        assert rabbit._ctl("close_all_connections", "closed by a test").returncode == 0
        local_stack.wait_until(lambda: publisher.connection is None, 30, "the pump to notice")
        publisher.publish(task("two"))
        assert [t["key"] for t in taken(fresh_channel(rabbit))] == ["one", "two"]
    finally:
        publisher.close()


def test_the_first_node_that_answers_is_used(rabbit, queue):
    dead = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"
    url = f"{dead}, {rabbit.url}"
    connection = broker.connect(url, name=unique("failover"))
    assert connection.is_open
    connection.close()
    publisher = broker.Publisher(url, name=unique("failover"))
    try:
        publisher.publish(task("k"))
        assert [t["key"] for t in taken(queue)] == ["k"]
    finally:
        publisher.close()


def test_every_publisher_counts_tasks_published_by_origin(rabbit, queue):
    def count(origin: str) -> float:
        value = REGISTRY.get_sample_value(
            "minio_s3_mirror_tasks_published_total", {"origin": origin}
        )
        return value or 0.0

    before = {o: count(o) for o in ("backfill", "webhook", "other")}
    publisher = broker.Publisher(rabbit.url, name=unique("metrics"))
    try:
        publisher.publish(task("a", origin="backfill"))  # as backfill does: no origin given
        publisher.publish(task("b", origin="backfill"))
        publisher.publish(task("c"), origin="webhook")
        publisher.publish(b"not a task")  # still a message on the work queue
        publisher.publish(b"{}", exchange=topology.DLX, routing_key="x")  # not a task: no count
    finally:
        publisher.close()
    assert count("backfill") - before["backfill"] == 2
    assert count("webhook") - before["webhook"] == 1
    assert count("other") - before["other"] == 1


def test_closing_stops_the_heartbeat_thread(rabbit):
    def pumps() -> int:
        return sum(t.name == "rabbitmq-heartbeats" for t in threading.enumerate())

    before = pumps()
    publisher = broker.Publisher(rabbit.url, name=unique("close"), heartbeat=SHORT_HEARTBEAT_S)
    publisher.publish(task("x"))
    assert pumps() == before + 1
    publisher.close()
    local_stack.wait_until(lambda: pumps() == before, 10, "the pump thread to end")


def test_readiness_is_a_round_trip_and_an_outage_logs_once(rabbit, queue, caplog):
    publisher = broker.Publisher(rabbit.url, name=unique("ready"), heartbeat=SHORT_HEARTBEAT_S)
    server = health.serve(("127.0.0.1", 0), publisher.reachable)
    port = server.server_address[1]

    def readyz() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/readyz")
        return connection.getresponse().status

    try:
        assert readyz() == 200
        rabbit.stop()
        with caplog.at_level(logging.INFO, logger="replicator.broker"):
            assert readyz() == 503
            for key in ("x", "y", "z"):
                with pytest.raises(broker.BrokerUnavailable):
                    publisher.publish(task(key))
            assert readyz() == 503
            rabbit.start()
            assert readyz() == 200
            publisher.publish(task("back"))
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "RabbitMQ unavailable" in warnings[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert [t["key"] for t in taken(fresh_channel(rabbit))] == ["back"]
    finally:
        if rabbit.proc is None:
            rabbit.start()
        server.shutdown()
        server.server_close()
        publisher.close()


def fresh_channel(rabbit):
    return pika.BlockingConnection(pika.URLParameters(rabbit.url)).channel()


GOOD_LIST = "amqp://u:pw-one-1@rabbit-1:5672/%2F, amqp://u:pw-two-2@rabbit-2/%2F?heartbeat=5"


def test_a_node_list_is_parsed_for_every_node():
    first, second = broker.parameters(GOOD_LIST, name="n")
    assert (first.host, first.heartbeat) == ("rabbit-1", broker.HEARTBEAT_S)
    assert (second.host, second.port, second.heartbeat) == ("rabbit-2", 5672, 5)
    assert [p.heartbeat for p in broker.parameters(GOOD_LIST, name="n", heartbeat=3)] == [3, 3]
    env = {
        "MINIO_URL": "http://127.0.0.1:9",
        "MINIO_ACCESS_KEY": "k",
        "MINIO_SECRET_KEY": "secret",
        "BUCKET_PAIR": "minio/aaa:aws/bbb",
        "RABBITMQ_URL": GOOD_LIST,
    }
    settings = config.load(env, need_target=False)
    assert settings.rabbitmq_url == GOOD_LIST
    assert {"pw-one-1", "pw-two-2"} <= set(settings.secrets())  # both scrubbed from logs


@pytest.mark.parametrize(
    "value",
    [
        "amqp://u:s3cret-pw@a:5672/%2F,,amqp://u:s3cret-pw@b:5672/%2F",
        "amqp://u:s3cret-pw@a:5672/%2F,http://u:s3cret-pw@b/",
        "amqp://u:s3cret-pw@a:5672/%2F,amqp://u:s3cret-pw@b:port/%2F",
        "amqp://u:s3cret-pw@a:5672/%2F,amqp://u:s3cret-pw@b/%2F?heartbeat=x",
    ],
)
def test_a_bad_node_list_exits_2_naming_rabbitmq_url_masked(run_cli, value):
    result = run_cli(
        "listen",
        "--mode",
        "webhook",
        env={
            "RABBITMQ_URL": value,
            "WEBHOOK_AUTH_TOKEN": "t" * 20,
            "BUCKET_PAIR": "minio/aaa:aws/bbb",
        },
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "RABBITMQ_URL: " in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_failing_readiness_check_answers_503_and_the_endpoint_lives_on():
    def broken() -> bool:
        raise RuntimeError("a bug in a readiness check")

    server = health.serve(("127.0.0.1", 0), broken)
    try:
        for _ in range(2):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
            connection.request("GET", "/readyz")
            assert connection.getresponse().status == 503
    finally:
        server.shutdown()
        server.server_close()


def test_a_nacked_publish_leaves_the_next_one_a_fresh_channel(rabbit):
    """A channel opened while a quorum queue had no leader (a cluster node had just died)
    was seen nacking every later publish for good; after a nack the publisher reconnects."""
    name = unique("full")
    admin = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = admin.channel()
    channel.exchange_declare(name, "direct", durable=True)
    args = {"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"}
    channel.queue_declare(name, durable=True, arguments=args)
    channel.queue_bind(name, name, name)
    publisher = broker.Publisher(rabbit.url, name="test nack")
    try:
        publisher.publish(b"first", exchange=name, routing_key=name)
        first = publisher.connection
        with pytest.raises(broker.PublishRefused):  # the queue is full: RabbitMQ nacks
            for _ in range(20):  # a quorum queue applies its limit a little late
                publisher.publish(b"more", exchange=name, routing_key=name)
                first = publisher.connection
        channel.queue_purge(name)
        publisher.publish(b"third", exchange=name, routing_key=name)
        assert publisher.connection is not first
    finally:
        publisher.close()
        channel.queue_delete(name)
        channel.exchange_delete(name)
        admin.close()
