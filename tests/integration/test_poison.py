"""Poisoned keys and endpoint outages against the worker's error policy (design section 6).

A fault proxy in front of the target answers PUTs of some keys with a bare 500, a reset
or SlowDown while every other request goes through: the healthy keys land, each poisoned
key goes through the delay tiers (MIRROR_RETRY_DELAYS=1,2) into the dead-letter queue
with its reason, in bounded time, and the metrics say so; the target is never taken for
down. A source that is down longer than the last tier loses nothing to the DLQ.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime

import pika
import pytest
import stack as local_stack

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_operations import scrape, status
from tests.integration.test_pipeline import pair_env, publish, target_keys, wait_for_keys

pytestmark = pytest.mark.integration

P = "minio_s3_mirror_"
TIERS = "1,2"  # MIRROR_RETRY_DELAYS for these tests: two short tiers
TIER_COUNT = 2
# Neutral key names: a reason that quotes the URL must not match its failure by the key.
POISONED = {
    "poison/k1.txt": "bare500",
    "poison/k2.txt": "bare500",
    "poison/k3.txt": "reset",
    "poison/k4.txt": "slowdown",
    "poison/k5.txt": "slowdown",
}
HEALTHY = [f"healthy/{i:02d}.txt" for i in range(20)]
# The longest a poisoned key may take from its first failure to the DLQ: in-process tries
# (tenacity's jittered waits plus botocore's own retries) three times, plus 1 s + 2 s of
# tiers, with a wide margin for a shared 2-core machine. Generous on purpose: the bug this
# guards against is "never" (issue 11: 2,318 PUTs in 120 s and no dead letter).
PER_KEY_BOUND_S = 150
# Far more PUTs per poisoned key than any sane policy makes, far fewer than a spinning one.
MAX_PUTS_PER_KEY = 60


@pytest.fixture
def clean_queues(rabbit) -> Iterator[None]:
    """Leave no task of these tests in any queue (retry tiers included) for later tests.

    Requested before `procs`, so it is torn down after the workers have stopped.
    """
    yield
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        for name in rabbit.queues():
            if name.startswith("minio-s3-mirror"):
                channel.queue_purge(name)
    finally:
        connection.close()


def failure_reason(headers: dict) -> str:
    value = headers.get("x-mirror-error", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def when(headers: dict, name: str) -> datetime:
    value = headers.get(name)
    assert value, f"{name} is not set: {headers}"
    text = value.decode() if isinstance(value, bytes) else str(value)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_poisoned_keys_go_through_the_tiers_to_the_dlq_and_healthy_keys_land(
    clean_queues, stack, notifying, source_bucket, buckets, procs, amqp, rabbit, fault_proxy
):
    src, dst = source_bucket(), buckets("target")
    source, target = notifying.client(), stack.target.client()
    for key in [*HEALTHY, *POISONED]:
        source.put_object(Bucket=src, Key=key, Body=f"content of {key}".encode())
    for key, fault in POISONED.items():
        fault_proxy.add_rule(key, fault, methods="PUT")
    port = local_stack.free_port()
    worker = procs(
        "work",
        **pair_env(src, dst),
        AWS_URL=fault_proxy.url,
        MIRROR_RETRY_DELAYS=TIERS,
        METRICS_ADDRESS=f"127.0.0.1:{port}",
    )
    local_stack.wait_until(lambda: status(port, "/readyz") == 200, 60, "the worker ready")

    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in POISONED])
    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in HEALTHY])

    wait_for_keys(target, dst, set(HEALTHY), timeout=120)
    local_stack.wait_until(
        lambda: len(dead_letters(rabbit)) >= len(POISONED),
        PER_KEY_BOUND_S + 60,
        f"{len(POISONED)} poisoned keys in the dead-letter queue",
    )

    # Only the healthy keys landed, each with one PUT; nothing else was written.
    assert target_keys(target, dst) == set(HEALTHY)
    for key in HEALTHY:
        got = target.get_object(Bucket=dst, Key=key)["Body"].read()
        assert got == f"content of {key}".encode(), key
        assert fault_proxy.count(key, "PUT") == 1, key

    parked = dead_letters(rabbit)
    by_key = {json.loads(body)["key"]: headers for headers, body in parked}
    assert sorted(by_key) == sorted(POISONED) and len(parked) == len(POISONED)
    for key, fault in POISONED.items():
        headers = by_key[key]
        reason = failure_reason(headers)
        assert "target" in reason.lower(), (key, reason)
        expected = {
            "bare500": r"\b500\b",
            "reset": r"(?i)reset|closed|connection|broken",
            "slowdown": r"SlowDown",
        }[fault]
        assert re.search(expected, reason), (key, reason)
        assert int(headers.get("x-mirror-attempt", -1)) == TIER_COUNT, (key, headers)
        first = when(headers, "x-mirror-first-failure")
        last = when(headers, "x-mirror-last-failure")
        # The tiers really were waited out (1 s + 2 s; the headers have whole seconds).
        assert 2 <= (last - first).total_seconds() <= PER_KEY_BOUND_S, (key, first, last)
        # Tried in process on each delivery: once first, then once per tier at least.
        puts = fault_proxy.count(key, "PUT")
        assert TIER_COUNT + 1 <= puts <= MAX_PUTS_PER_KEY, (key, puts)

    # Dead-lettered means done: no more attempts once the last tier has passed.
    puts_then = {key: fault_proxy.count(key, "PUT") for key in POISONED}
    threading.Event().wait(2 * TIER_COUNT + 2)
    assert {key: fault_proxy.count(key, "PUT") for key in POISONED} == puts_then
    assert len(dead_letters(rabbit)) == len(POISONED)

    metrics = scrape(port)
    assert metrics[f"{P}objects_replicated_total"] == len(HEALTHY)
    assert metrics[f"{P}retries_total"] >= len(POISONED) * TIER_COUNT
    assert metrics[f"{P}dead_lettered_total"] == len(POISONED)
    assert metrics[f"{P}copies_in_flight"] == 0
    # The proxy answered every other request: the target was never taken for down.
    holds = {name: v for name, v in metrics.items() if "hold" in name and "target" in name}
    assert all(value == 0 for value in holds.values()), holds
    down = re.compile(r"(?i)\b(unreachable|down|holding|held)\b")  # not "SlowDown"
    said_down = [
        record["message"]
        for record in worker.records()
        if down.search(record.get("message", ""))
        and re.search(r"(?i)\btarget\b", record.get("message", ""))
    ]
    assert said_down == [], "the target answered, yet the worker said:\n" + "\n".join(said_down)
    assert worker.popen.poll() is None


@pytest.fixture
def lone_source(stack) -> Iterator[local_stack.MinioServer]:
    """A source MinIO of its own, for a test that stops it."""
    server = local_stack.MinioServer(f"lone-source-{local_stack.secrets.token_hex(3)}", stack.root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.parametrize(
    "hold",
    [
        pytest.param({}, id="default-hold"),
        # A hold ceiling shorter than the outage: tasks wait in the delay tiers in turn,
        # which must not spend their retry budget.
        pytest.param({"MIRROR_HOLD_MAX": "5"}, id="hold-max-5s"),
    ],
)
def test_source_down_longer_than_the_last_tier_dead_letters_nothing(
    clean_queues, stack, lone_source, buckets, procs, amqp, rabbit, hold
):
    source, target = lone_source.client(), stack.target.client()
    src, dst = "outage-src", buckets("target")
    source.create_bucket(Bucket=src)
    objects = {f"outage/{i:02d}.bin": f"object {i}".encode() * (i + 1) for i in range(30)}
    for key, body in objects.items():
        source.put_object(Bucket=src, Key=key, Body=body)
    port = local_stack.free_port()
    worker = procs(
        "work",
        **pair_env(src, dst),
        MINIO_URL=lone_source.url,
        MINIO_ACCESS_KEY=lone_source.access_key,
        MINIO_SECRET_KEY=lone_source.secret_key,
        MIRROR_RETRY_DELAYS=TIERS,
        METRICS_ADDRESS=f"127.0.0.1:{port}",
        **hold,
    )
    local_stack.wait_until(lambda: status(port, "/readyz") == 200, 60, "the worker ready")

    lone_source.stop()
    try:
        publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in objects])
        # Down for 15 s: five times the sum of the tiers (1 s + 2 s).
        threading.Event().wait(15)
        assert target_keys(target, dst) == set()  # the outage was real
        assert dead_letters(rabbit) == []
    finally:
        lone_source.start()

    wait_for_keys(target, dst, set(objects), timeout=180)
    for key, body in objects.items():
        assert target.get_object(Bucket=dst, Key=key)["Body"].read() == body, key
    assert dead_letters(rabbit) == []
    metrics = scrape(port)
    assert metrics.get(f"{P}dead_lettered_total", 0) == 0
    assert metrics[f"{P}objects_replicated_total"] == len(objects)
    assert worker.popen.poll() is None
