"""Event-driven replication on the real stack: listener and workers as real processes."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest
import stack as local_stack

from replicator import topology
from replicator.task import Task
from tests.integration.conftest import AMQP_ARN, WEBHOOK_ARN, dead_letters

pytestmark = pytest.mark.integration

HARD_KEYS = [
    "ünïcødé/파일 이름.txt",
    "with space/a b.txt",
    "plus+sign+.txt",
    "percent%25/100%.txt",
    "hash#and?question.txt",
    "dir/",
    # A 1,024-byte key (MinIO on a filesystem allows 255 bytes per path segment).
    "long/" + "/".join(["é" * 100] * 4) + "/" + "x" * 215,
]
assert len(HARD_KEYS[-1].encode()) == 1024


def mixed_objects(count: int) -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """key -> (body, Content-Type, user metadata): 0 B, 1 B, 4 KiB and one 12 MiB object."""
    objects = {key: (b"", "application/x-directory", {}) for key in HARD_KEYS if key.endswith("/")}
    for key in HARD_KEYS:
        objects.setdefault(key, (os.urandom(1), "text/plain; charset=utf-8", {"lang": "ko"}))
    objects["big/twelve.bin"] = (os.urandom(12 * 1024 * 1024), "application/octet-stream", {})
    sizes = (0, 1, 4096)
    for i in range(count - len(objects)):
        objects[f"many/{i:04d}.dat"] = (
            os.urandom(sizes[i % 3]),
            "application/x-data",
            {"n": str(i)},
        )
    return objects


def upload(client, bucket: str, objects) -> None:
    def put(item):
        key, (body, content_type, metadata) = item
        if len(body) > 8 * 1024 * 1024:  # a real multipart upload on the source
            import io

            from boto3.s3.transfer import TransferConfig

            client.upload_fileobj(
                io.BytesIO(body),
                bucket,
                key,
                ExtraArgs={"ContentType": content_type, "Metadata": metadata},
                Config=TransferConfig(multipart_threshold=5 * 1024 * 1024),
            )
        else:
            client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objects.items()))


def target_keys(client, bucket: str) -> set[str]:
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def wait_for_keys(client, bucket: str, keys: set[str], timeout: float = 180) -> None:
    local_stack.wait_until(
        lambda: keys <= target_keys(client, bucket), timeout, f"{len(keys)} objects on {bucket}"
    )


def assert_identical(target, bucket: str, objects, ignore: str = "\0") -> None:
    keys = {key for key in target_keys(target, bucket) if not key.startswith(ignore)}
    assert keys == set(objects)
    for key, (body, content_type, metadata) in objects.items():
        got = target.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body, key
        assert got["ContentType"] == content_type, key
        user = {k: v for k, v in got["Metadata"].items() if not k.startswith("mirror-")}
        assert user == metadata, key


def pair_env(src: str, dst: str, **extra: str) -> dict[str, str]:
    return {"BUCKET_PAIR": f"minio/{src}:aws/{dst}", **extra}


def publish(rabbit, *bodies: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(
            topology.EXCHANGE,
            topology.TASKS,
            body,
            pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
    connection.close()


def test_webhook_mode_replicates_hard_keys_and_metadata(
    stack, notifying, source_bucket, buckets, procs, amqp, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    procs("listen", "--mode", "webhook", **env)
    procs("work", **env, MIRROR_MAX_WORKERS="8")
    objects = mixed_objects(500)

    upload(notifying.client(), src, objects)

    wait_for_keys(stack.target.client(), dst, set(objects))
    assert_identical(stack.target.client(), dst, objects)


def test_amqp_target_replicates_without_a_listener(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    worker = procs("work", **pair_env(src, dst))
    objects = {k: v for k, v in mixed_objects(40).items()}

    upload(notifying.client(), src, objects)

    wait_for_keys(stack.target.client(), dst, set(objects))
    assert_identical(stack.target.client(), dst, objects)
    assert {r["origin"] for r in worker.outcomes("copied")} == {"amqp"}


def test_poison_messages_are_dead_lettered_and_the_worker_carries_on(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="good.txt", Body=b"good")
    procs("work", **pair_env(src, dst))
    stranger = Task(bucket="not-in-any-pair", key="x", origin="backfill").to_json()

    publish(rabbit, b"{not json", b'{"v": 99, "bucket": "b", "key": "k"}', stranger)
    publish(rabbit, Task(bucket=src, key="good.txt", origin="backfill").to_json())

    wait_for_keys(stack.target.client(), dst, {"good.txt"}, timeout=60)
    local_stack.wait_until(lambda: len(dead_letters(rabbit)) == 3, 60, "3 dead letters")
    reasons = sorted(h["x-mirror-error"] for h, _ in dead_letters(rabbit))
    assert "not JSON" in reasons[0] or "not JSON" in " ".join(reasons)
    assert any("unknown task version 99" in r for r in reasons)
    assert any("'not-in-any-pair' is in no configured pair" in r for r in reasons)


def test_wrong_target_credentials_dead_letter_quickly(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="a.txt", Body=b"a")
    procs("work", **pair_env(src, dst, AWS_SECRET_KEY="definitely-wrong"))

    publish(rabbit, Task(bucket=src, key="a.txt", origin="backfill").to_json())

    local_stack.wait_until(lambda: dead_letters(rabbit), 30, "the task in the DLQ")
    ((headers, _),) = dead_letters(rabbit)
    assert headers["x-mirror-error"].startswith("target 403")
    assert headers.get("x-mirror-attempt", 0) == 0  # no delayed retries for a permanent error


def test_source_deleted_before_its_task_runs_is_acked_as_skipped(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    worker = procs("work", **pair_env(src, dst))

    publish(rabbit, Task(bucket=src, key="gone.txt", origin="backfill").to_json())

    local_stack.wait_until(lambda: worker.outcomes("skipped"), 30, "the skip")
    assert "gone" in worker.outcomes("skipped")[0]["message"]
    assert dead_letters(rabbit) == []
    assert target_keys(stack.target.client(), dst) == set()


def test_same_task_ten_times_uploads_once(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="dup.txt", Body=b"once")
    worker = procs("work", **pair_env(src, dst, MIRROR_MAX_WORKERS="4"))

    publish(rabbit, *[Task(bucket=src, key="dup.txt", origin="backfill").to_json()] * 10)

    local_stack.wait_until(
        lambda: len(worker.outcomes("copied")) + len(worker.outcomes("skipped")) == 10,
        60,
        "10 outcomes",
    )
    assert len(worker.outcomes("copied")) == 1


def test_concurrent_overwrites_end_with_the_final_source_content(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    worker = procs("work", **pair_env(src, dst, MIRROR_MAX_WORKERS="4"))
    client = notifying.client()

    def overwrite(i: int) -> None:
        client.put_object(Bucket=src, Key="hot.txt", Body=f"version {i}".encode() * (i + 1))

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(overwrite, range(20)))
    final = client.get_object(Bucket=src, Key="hot.txt")["Body"].read()

    def settled() -> bool:
        outcomes = worker.outcomes("copied") + worker.outcomes("skipped")
        return len(outcomes) >= 20

    local_stack.wait_until(settled, 120, "20 overwrite tasks handled")
    got = stack.target.client().get_object(Bucket=dst, Key="hot.txt")["Body"].read()
    assert got == final
    assert json.loads("[]") == []


def test_stream_mode_replicates_hard_keys_and_metadata(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(), buckets("target")
    env = pair_env(src, dst, MIRROR_EXCLUDE="*.pad")
    procs("listen", "--mode", "stream", **env)
    procs("work", **env, MIRROR_MAX_WORKERS="8")
    source, target = notifying.client(), stack.target.client()
    pads = iter(range(1_000_000))

    def arrived(keys: set[str]) -> bool:
        # The pinned MinIO holds its listen response in a 4 KiB buffer (its
        # trackingResponseWriter does not flush), so a quiet stream stalls: excluded
        # padding objects push the last real events out.
        if keys <= target_keys(target, dst):
            return True
        source.put_object(Bucket=src, Key=f"pad/{next(pads)}-{'p' * 200}.pad", Body=b"")
        return False

    def connected() -> bool:
        # Stream mode misses what happens before it connects: probe until one arrives.
        source.put_object(Bucket=src, Key=f"probe/{next(pads)}", Body=b"")
        return any(key.startswith("probe/") for key in target_keys(target, dst))

    local_stack.wait_until(connected, 120, "the listener to connect")
    objects = mixed_objects(500)

    upload(source, src, objects)

    local_stack.wait_until(lambda: arrived(set(objects)), 180, "500 objects")
    assert_identical(target, dst, objects, ignore="probe/")


def test_overwrite_false_leaves_a_differing_target_object(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="doc.txt", Body=b"new on the source")
    notifying.client().put_object(Bucket=src, Key="fresh.txt", Body=b"only on the source")
    stack.target.client().put_object(Bucket=dst, Key="doc.txt", Body=b"older on the target")
    worker = procs("work", **pair_env(src, dst, MIRROR_OVERWRITE="false"))

    tasks = [Task(bucket=src, key=k, origin="backfill") for k in ("doc.txt", "fresh.txt")]
    publish(rabbit, *[task.to_json() for task in tasks])

    wait_for_keys(stack.target.client(), dst, {"doc.txt", "fresh.txt"}, timeout=60)
    local_stack.wait_until(lambda: worker.outcomes("skipped"), 30, "the skip")
    body = stack.target.client().get_object(Bucket=dst, Key="doc.txt")["Body"].read()
    assert body == b"older on the target"
    assert "MIRROR_OVERWRITE=false" in worker.outcomes("skipped")[0]["message"]
