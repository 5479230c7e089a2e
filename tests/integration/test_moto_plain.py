"""Plain moto, without the local stack's aws_like.py shim, as the target (issue 25).

moto refuses a write into a bucket with Object Lock unless it names its checksum the way
every AWS SDK does (`x-amz-sdk-checksum-algorithm` beside `x-amz-checksum-*`) or carries
Content-MD5; the shim hides that by adding the header. Strict S3-compatible targets
behave like plain moto, so every write of every command must be accepted by it: small,
empty and multipart objects into a bucket with a GOVERNANCE default retention.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import stack as local_stack

from replicator.task import Task
from tests.conftest import Target
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import assert_identical, publish, ready, target_keys, upload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plain_moto(tmp_path_factory) -> Iterator[local_stack.MotoServer]:
    server = local_stack.MotoServer(
        tmp_path_factory.mktemp("plain-moto"), "plain-moto", shim=False
    ).start()
    yield server
    server.stop()


@pytest.fixture
def locked(plain_moto) -> Iterator[tuple[Target, str]]:
    """A bucket with Object Lock and a 1-day GOVERNANCE default retention on plain moto."""
    target = Target("plain-moto", plain_moto)
    yield target, target.bucket(retention_days=1)
    target.cleanup()


def objects() -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """Empty, small, and a multipart object (above the 16 MiB threshold: two parts)."""
    found = {
        "empty.txt": (b"", "text/plain", {}),
        "small/a.txt": (os.urandom(10), "text/plain", {"k": "v"}),
        "small/b.bin": (os.urandom(64 * 1024), "application/octet-stream", {}),
    }
    found["big/twenty.bin"] = (os.urandom(20 * 1024 * 1024), "application/octet-stream", {})
    return found


def pair_env(target: Target, src: str, dst: str, **extra: str) -> dict[str, str]:
    return {**target.env(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", **extra}


def output(done) -> str:
    return (done.stdout + done.stderr)[-3000:]


def test_plain_moto_refuses_an_unchecked_write_into_object_lock(locked):
    """The fixture's own guard: this is moto without the shim's help (a write naming no
    checksum is refused), and a write as the SDKs send it is accepted."""
    from botocore.exceptions import ClientError

    target, bucket = locked
    client = target.client(attempts=1)
    with pytest.raises(ClientError):
        client.put_object(Bucket=bucket, Key="unchecked", Body=b"x")
    client.put_object(Bucket=bucket, Key="sdk", Body=b"x", ChecksumAlgorithm="CRC32")


def test_backfill_direct_writes_into_object_lock_on_plain_moto(stack, locked, buckets, run_cli):
    target, dst = locked
    src = buckets("source")
    wanted = objects()
    upload(stack.source.client(), src, wanted)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    done = run_cli("backfill", "--direct", env=pair_env(target, src, dst, RABBITMQ_URL=closed))

    assert done.returncode == 0, output(done)
    assert_identical(target.client(), dst, wanted)


def test_work_writes_into_object_lock_on_plain_moto(
    stack, locked, buckets, spawn_cli, amqp, rabbit
):
    target, dst = locked
    src = buckets("source")
    wanted = objects()
    upload(stack.source.client(), src, wanted)
    worker = spawn_cli("work", **pair_env(target, src, dst, MIRROR_MAX_WORKERS="4"))
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")

    publish(rabbit, *[Task(bucket=src, key=key, origin="backfill").to_json() for key in wanted])

    local_stack.wait_until(
        lambda: dead_letters(rabbit) or set(wanted) <= target_keys(target.client(), dst),
        120,
        "every object on plain moto or a dead letter",
    )
    assert [h.get("x-mirror-error") for h, _ in dead_letters(rabbit)] == []
    assert_identical(target.client(), dst, wanted)


def test_check_passes_on_an_object_lock_bucket_of_plain_moto(
    stack, locked, buckets, run_cli, rabbit
):
    target, dst = locked
    src = buckets("source")
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")

    done = run_cli("check", env=pair_env(target, src, dst, RABBITMQ_URL=rabbit.url))

    assert done.returncode == 0, output(done)
    assert " FAIL " not in done.stdout, output(done)


def test_reconcile_writes_into_object_lock_on_plain_moto(stack, locked, buckets, run_cli):
    target, dst = locked
    src = buckets("source")
    wanted = objects()
    upload(stack.source.client(), src, wanted)

    done = run_cli("reconcile", "--json", env=pair_env(target, src, dst), timeout=300)

    assert done.returncode == 0, output(done)
    assert_identical(target.client(), dst, wanted)
