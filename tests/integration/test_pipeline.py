"""Event-driven replication on the real stack: listener and workers as real processes."""

from __future__ import annotations

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


def stream_connected(source, target, src: str, dst: str, timeout: float, *procs) -> None:
    """Wait until a stream listener (with MIRROR_EXCLUDE=*.pad) gets events through: it
    misses what happens before it connects, so probe until one is copied. The pinned
    MinIO holds its listen answer in a 4 KiB buffer (its trackingResponseWriter does not
    flush): excluded padding objects push the real events out. On a timeout, the tails of
    `procs`' logs say why."""
    pads = iter(range(1_000_000))

    def connected() -> bool:
        source.put_object(Bucket=src, Key=f"probe/{next(pads)}", Body=b"")
        source.put_object(Bucket=src, Key=f"pad/{next(pads)}-{'p' * 200}.pad", Body=b"")
        return any(key.startswith("probe/") for key in target_keys(target, dst))

    try:
        local_stack.wait_until(connected, timeout, "a probe copied (the listener connected)")
    except TimeoutError as error:
        tails = [f"{p.args[0]}: {p.log.read_text(errors='replace')[-1500:]}" for p in procs]
        raise AssertionError("\n".join([str(error), *tails])) from None


def stream_delivered(source, target, src: str, dst: str, keys, timeout: float) -> None:
    """Wait until every key reached the target through a stream listener, pushing the
    last events out of MinIO's listen buffer with excluded padding (`stream_connected`)."""
    pads = iter(range(1_000_000))

    def arrived() -> bool:
        if set(keys) <= target_keys(target, dst):
            return True
        source.put_object(Bucket=src, Key=f"pad/late-{next(pads)}-{'p' * 200}.pad", Body=b"")
        return False

    local_stack.wait_until(arrived, timeout, f"{len(keys)} objects through the stream")


def pair_env(src: str, dst: str, **extra: str) -> dict[str, str]:
    return {"BUCKET_PAIR": f"minio/{src}:aws/{dst}", **extra}


def publish(rabbit, *bodies: bytes, headers: dict | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(
            topology.EXCHANGE,
            topology.TASKS,
            body,
            pika.BasicProperties(delivery_mode=2, headers=headers),
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


def test_same_task_ten_times_in_two_processes_uploads_once(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    """Two worker processes: no in-process key lock hides whether writes are conditional."""
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="dup.txt", Body=b"once")
    workers = [procs("work", **pair_env(src, dst, MIRROR_MAX_WORKERS="4")) for _ in range(2)]
    local_stack.wait_until(lambda: all(ready(w) for w in workers), 30, "both workers consuming")

    publish(rabbit, *[Task(bucket=src, key="dup.txt", origin="backfill").to_json()] * 10)

    def outcomes(what: str) -> list[dict]:
        return [r for w in workers for r in w.outcomes(what)]

    local_stack.wait_until(
        lambda: len(outcomes("copied")) + len(outcomes("skipped")) == 10, 60, "10 outcomes"
    )
    assert len(outcomes("copied")) == 1
    assert all(w.outcomes("skipped") or w.outcomes("copied") for w in workers)


def test_concurrent_overwrites_in_two_processes_end_with_the_final_source_content(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    workers = [procs("work", **pair_env(src, dst, MIRROR_MAX_WORKERS="4")) for _ in range(2)]
    local_stack.wait_until(lambda: all(ready(w) for w in workers), 30, "both workers consuming")
    client = notifying.client()
    finals = []

    for round_ in range(5):
        key = f"hot-{round_}.txt"

        def overwrite(i: int, key=key) -> None:
            client.put_object(Bucket=src, Key=key, Body=f"version {i}".encode() * (i + 1))

        with ThreadPoolExecutor(20) as pool:
            list(pool.map(overwrite, range(20)))
        finals.append((key, client.get_object(Bucket=src, Key=key)["Body"].read()))

    def handled() -> int:
        return sum(len(w.outcomes("copied")) + len(w.outcomes("skipped")) for w in workers)

    local_stack.wait_until(lambda: handled() >= 100, 180, "100 overwrite tasks handled")
    for key, final in finals:
        got = stack.target.client().get_object(Bucket=dst, Key=key)["Body"].read()
        assert got == final, key
    assert sum(len(w.outcomes("copied")) for w in workers) >= 5


def ready(proc) -> bool:
    """The worker says it is consuming (its log line), so both share the deliveries."""
    return any("consuming" in r.get("message", "") for r in proc.records())


GARBAGE_HEADERS = [
    {"x-mirror-attempt": "two"},
    {"x-mirror-attempt": -1},
    {"x-mirror-attempt": 10**12},
    {"x-mirror-attempt": b"\xff"},
    {"x-mirror-attempt": [1, 2]},
    {"x-mirror-attempt": {"a": 1}},
    {"x-mirror-attempt": True},
]
GARBAGE_BODIES = [
    b"",
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"v": 1, "bucket": "b", "key": ""}',
    b'{"v": 1, "bucket": "b", "key": 5}',
    b'{"v": 1, "bucket": ["b"], "key": "k"}',
    b'{"v": 1, "bucket": "b", "key": "k", "size": -3}',
    b'{"v": "1", "bucket": "b", "key": "k"}',
    b'{"Records": 7}',
    b'{"Records": [{"eventName": ["s3:ObjectCreated:Put"], "s3": 1}]}',
    b"null",
    b"123",
]


def test_garbage_headers_and_bodies_are_dead_lettered_and_good_tasks_land(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    source = notifying.client()
    worker = procs("work", **pair_env(src, dst, MIRROR_MAX_WORKERS="4"))
    good = [f"good-{i}.txt" for i in range(10)]
    for key in good:
        source.put_object(Bucket=src, Key=key, Body=key.encode())

    for headers in GARBAGE_HEADERS:
        publish(rabbit, Task(bucket=src, key="good-0.txt", origin="backfill").to_json(),
                headers=headers)  # fmt: skip
    publish(rabbit, *GARBAGE_BODIES)
    publish(rabbit, *[Task(bucket=src, key=key, origin="backfill").to_json() for key in good])

    wait_for_keys(stack.target.client(), dst, set(good), timeout=60)
    expected = len(GARBAGE_HEADERS) + len(GARBAGE_BODIES)
    local_stack.wait_until(
        lambda: len(dead_letters(rabbit)) >= expected, 60, f"{expected} dead letters"
    )
    parked = dead_letters(rabbit)
    assert len(parked) == expected
    reasons = [h["x-mirror-error"] for h, _ in parked]
    assert all(r.startswith("malformed task") for r in reasons), reasons
    assert sum("x-mirror-attempt" in r for r in reasons) == len(GARBAGE_HEADERS)
    assert worker.popen.poll() is None  # still running
    assert not any("Traceback" in r.get("message", "") for r in worker.records())


def test_a_metadata_only_change_replicates_through_the_event_path(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(AMQP_ARN), buckets("target")
    procs("work", **pair_env(src, dst))
    source, target = notifying.client(), stack.target.client()
    source.put_object(Bucket=src, Key="doc", Body=b"same", ContentType="a/b", Metadata={"v": "1"})
    wait_for_keys(target, dst, {"doc"}, timeout=60)

    source.copy_object(
        Bucket=src,
        Key="doc",
        CopySource={"Bucket": src, "Key": "doc"},
        MetadataDirective="REPLACE",
        ContentType="c/d",
        Metadata={"v": "2"},
    )

    def replaced() -> bool:
        head = target.head_object(Bucket=dst, Key="doc")
        return head["ContentType"] == "c/d" and head["Metadata"].get("v") == "2"

    local_stack.wait_until(replaced, 60, "the new metadata on the target")


def test_stream_mode_replicates_hard_keys_and_metadata(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(), buckets("target")
    env = pair_env(src, dst, MIRROR_EXCLUDE="*.pad")
    procs("listen", "--mode", "stream", **env)
    procs("work", **env, MIRROR_MAX_WORKERS="8")
    source, target = notifying.client(), stack.target.client()
    stream_connected(source, target, src, dst, 120)
    objects = mixed_objects(500)

    upload(source, src, objects)

    stream_delivered(source, target, src, dst, objects, 180)
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
