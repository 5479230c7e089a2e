"""Faults during replication: each ends with target == source and nothing dead-lettered."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import stack as local_stack

from replicator import topology
from tests.integration.conftest import AMQP_ARN, WEBHOOK_ARN, dead_letters
from tests.integration.test_pipeline import (
    assert_identical,
    mixed_objects,
    pair_env,
    upload,
    wait_for_keys,
)

pytestmark = pytest.mark.integration


def load_in_background(client, bucket: str, objects) -> threading.Thread:
    thread = threading.Thread(target=upload, args=(client, bucket, objects))
    thread.start()
    return thread


def test_sigkill_of_a_worker_in_the_middle_of_a_large_copy(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    env = pair_env(src, dst)
    first = procs("work", **env)
    big = {"large/object.bin": (os.urandom(192 * 1024 * 1024), "video/mp4", {"camera": "7"})}
    target = stack.target.client()

    upload(notifying.client(), src, big)
    # The copy takes about a second: look often, or it may be over between two looks.
    local_stack.wait_until(
        lambda: target.list_multipart_uploads(Bucket=dst).get("Uploads"),
        120,
        "a copy under way",
        poll=0.01,
    )
    first.stop(signal.SIGKILL)
    procs("work", **env)

    wait_for_keys(target, dst, set(big), timeout=300)
    assert_identical(target, dst, big)
    assert dead_letters(rabbit) == []


def test_rabbitmq_restart_during_a_load(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    procs("listen", "--mode", "webhook", **env)
    worker = procs("work", **env)
    objects = mixed_objects(300)
    del objects["big/twelve.bin"]
    target = stack.target.client()

    loading = load_in_background(notifying.client(), src, objects)
    local_stack.wait_until(lambda: target.list_objects_v2(Bucket=dst).get("KeyCount"), 60, "load")
    rabbit.restart()
    loading.join()

    wait_for_keys(target, dst, set(objects), timeout=300)
    assert_identical(target, dst, objects)
    assert dead_letters(rabbit) == []
    # Deliveries lost with the old connection must not keep SIGTERM from draining.
    assert worker.stop(timeout=60) == 0


def test_target_down_for_30_seconds_during_a_load(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    worker = procs("work", **pair_env(src, dst))
    objects = mixed_objects(200)
    target = stack.target.client()

    loading = load_in_background(notifying.client(), src, objects)
    local_stack.wait_until(lambda: target.list_objects_v2(Bucket=dst).get("KeyCount"), 60, "load")
    stack.target.stop()
    try:
        local_stack.wait_until(
            lambda: "target unreachable" in worker.log.read_text(), 60, "the worker to notice"
        )
        threading.Event().wait(30)  # the outage itself is what this test is about
    finally:
        stack.target.start()
    loading.join()

    wait_for_keys(target, dst, set(objects), timeout=300)
    assert_identical(target, dst, objects)
    assert dead_letters(rabbit) == []


def test_webhook_listener_restart_during_a_load(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    listener = procs("listen", "--mode", "webhook", **env)
    procs("work", **env)
    objects = mixed_objects(300)
    del objects["big/twelve.bin"]
    target = stack.target.client()

    loading = load_in_background(notifying.client(), src, objects)
    local_stack.wait_until(lambda: target.list_objects_v2(Bucket=dst).get("KeyCount"), 60, "load")
    listener.stop(signal.SIGKILL)
    threading.Event().wait(3)  # events arriving now must wait in MinIO's queue_dir
    procs("listen", "--mode", "webhook", **env)
    loading.join()

    wait_for_keys(target, dst, set(objects), timeout=300)
    assert_identical(target, dst, objects)
    assert dead_letters(rabbit) == []


def test_sigterm_drains_the_copy_in_flight(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    worker = procs("work", **pair_env(src, dst))
    big = {"large/drained.bin": (os.urandom(192 * 1024 * 1024), "application/zip", {})}
    target = stack.target.client()

    upload(notifying.client(), src, big)
    # The copy takes about a second: look often, or it may be over between two looks.
    local_stack.wait_until(
        lambda: target.list_multipart_uploads(Bucket=dst).get("Uploads"),
        120,
        "a copy under way",
        poll=0.01,
    )

    assert worker.stop(signal.SIGTERM, timeout=120) == 0
    assert_identical(target, dst, big)  # finished, not abandoned
    assert amqp.queue_declare(topology.WORK_QUEUE, passive=True).method.message_count == 0
    assert dead_letters(rabbit) == []
