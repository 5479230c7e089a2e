"""`work`, `backfill --direct`, `check` and `reconcile` against both targets (issue 12).

Every test runs on the target MinIO and on the AWS-like server (moto behind
deploy/local/aws_like.py), each with a plain bucket and a bucket with Object Lock and a
GOVERNANCE default retention (1 day): every object must land byte-identical with its
Content-Type and user metadata, nothing dead-lettered.

Where the targets differ (found by experiment):
- MinIO accepts writes without Content-MD5 or a checksum into an Object Lock bucket with
  default retention; AWS (and the AWS-like server) refuse them with InvalidRequest.
- MinIO lists LastModified to the millisecond; AWS and moto to the second, which is what
  makes `mc mirror --overwrite` re-copy event-path copies made in the same second.
- moto ignores If-Match on CompleteMultipartUpload (AWS honours it).
"""

from __future__ import annotations

import json
import time

import pytest
import stack as local_stack

from replicator.task import Task
from tests.conftest import Target
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import (
    assert_identical,
    mixed_objects,
    publish,
    ready,
    target_keys,
    upload,
)

pytestmark = pytest.mark.integration

LOCKS = ["plain", "object-lock"]


def env_for(notifying, target: Target, src: str, dst: str, **extra: str | None) -> dict:
    """The variables of one pair: the notifying source MinIO and this target."""
    return {
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        **target.env(),
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        **extra,
    }


def target_bucket(target: Target, lock: str) -> str:
    return target.bucket(retention_days=1 if lock == "object-lock" else 0)


def landed_or_parked(target: Target, dst: str, keys: set[str], rabbit, timeout=180) -> None:
    """Wait until every key is on the target; fail with the reasons at the first dead letter."""

    def settled():
        return dead_letters(rabbit) or keys <= target_keys(target.client(), dst)

    local_stack.wait_until(settled, timeout, f"{len(keys)} objects on {dst} or a dead letter")
    reasons = [h.get("x-mirror-error") for h, _ in dead_letters(rabbit)]
    assert reasons == [], reasons[:3]


def finished(proc, timeout: float = 600) -> tuple[int, str]:
    code = proc.popen.wait(timeout)
    return code, proc.log.read_text()


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("lock", LOCKS)
def test_work_lands_every_object_byte_identical(
    target, lock, notifying, source_bucket, procs, amqp, rabbit
):
    src, dst = source_bucket(), target_bucket(target, lock)
    objects = mixed_objects(40)  # hard keys, 0 B to 4 KiB, one 12 MiB multipart object
    upload(notifying.client(), src, objects)
    worker = procs("work", **env_for(notifying, target, src, dst, MIRROR_MAX_WORKERS="4"))
    local_stack.wait_until(lambda: ready(worker), 30, "the worker consuming")

    publish(rabbit, *[Task(bucket=src, key=key, origin="backfill").to_json() for key in objects])

    landed_or_parked(target, dst, set(objects), rabbit)
    assert_identical(target.client(), dst, objects)
    no_traceback(worker.log.read_text())


@pytest.mark.parametrize("lock", LOCKS)
def test_backfill_direct_lands_every_object_byte_identical(
    target, lock, notifying, source_bucket, procs
):
    src, dst = source_bucket(), target_bucket(target, lock)
    objects = mixed_objects(40)
    upload(notifying.client(), src, objects)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    run = procs("backfill", "--direct", **env_for(notifying, target, src, dst, RABBITMQ_URL=closed))

    code, out = finished(run)
    assert code == 0, out[-3000:]
    assert f"copied {len(objects)}" in out, out[-3000:]
    assert_identical(target.client(), dst, objects)
    no_traceback(out)


@pytest.mark.parametrize("lock", LOCKS)
def test_check_passes_on_a_target_work_can_write(target, lock, notifying, source_bucket, procs):
    src, dst = source_bucket(), target_bucket(target, lock)
    notifying.client().put_object(Bucket=src, Key="x", Body=b"x")

    code, out = finished(procs("check", **env_for(notifying, target, src, dst)), timeout=120)

    assert code == 0, out[-3000:]
    assert "FAIL" not in out
    no_traceback(out)


def reconcile(run_cli, notifying, target, src, dst, **extra):
    result = run_cli("reconcile", "--json", env=env_for(notifying, target, src, dst, **extra))
    no_traceback(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (counted,) = json.loads(result.stdout)["pairs"]
    return counted


@pytest.mark.parametrize("lock", LOCKS)
def test_reconcile_lands_every_object_byte_identical(
    target, lock, notifying, source_bucket, run_cli
):
    src, dst = source_bucket(), target_bucket(target, lock)
    objects = mixed_objects(30)
    upload(notifying.client(), src, objects)

    counted = reconcile(run_cli, notifying, target, src, dst)

    assert counted["copied"] == len(objects)
    assert_identical(target.client(), dst, objects)


def test_reconcile_after_the_event_path_copies_nothing_then_replaces_a_changed_object(
    target, notifying, source_bucket, procs, amqp, rabbit, run_cli
):
    """Issue 12 acceptance: the event path copies N objects (in the same seconds as the
    source writes: AWS and moto list LastModified to the second), then reconcile copies 0
    and reports 0; a source object changed afterwards is replaced by the next reconcile."""
    src, dst = source_bucket(), target.bucket()
    source = notifying.client()
    keys = [f"ev/{i:02d}.txt" for i in range(20)]
    worker = procs("work", **env_for(notifying, target, src, dst, MIRROR_MAX_WORKERS="4"))
    local_stack.wait_until(lambda: ready(worker), 30, "the worker consuming")
    for key in keys:
        source.put_object(Bucket=src, Key=key, Body=key.encode(), Metadata={"k": key[-6:-4]})
        publish(rabbit, Task(bucket=src, key=key, origin="webhook").to_json())
    landed_or_parked(target, dst, set(keys), rabbit, timeout=60)
    worker.stop()
    before = {k: target.client().head_object(Bucket=dst, Key=k)["Metadata"] for k in keys}

    counted = reconcile(run_cli, notifying, target, src, dst)

    assert counted["copied"] == 0, counted
    after = {k: target.client().head_object(Bucket=dst, Key=k)["Metadata"] for k in keys}
    assert after == before  # nothing re-copied: the mirror-source-* metadata kept

    time.sleep(1.1)  # a later second than the copies, on every target
    source.put_object(Bucket=src, Key=keys[3], Body=b"changed afterwards")

    counted = reconcile(run_cli, notifying, target, src, dst)

    assert counted["copied"] == 1, counted
    got = target.client().get_object(Bucket=dst, Key=keys[3])["Body"].read()
    assert got == b"changed afterwards"


def chain_env(target: Target) -> dict[str, str | None]:
    """Static keys unset; the standard AWS chain finds them in AWS_ACCESS_KEY_ID/..."""
    static = target.env()
    return {
        "AWS_ACCESS_KEY": None,
        "AWS_SECRET_KEY": None,
        "AWS_ACCESS_KEY_ID": static["AWS_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": static["AWS_SECRET_KEY"],
    }


def test_the_standard_aws_chain_serves_check_backfill_and_reconcile(
    target, notifying, source_bucket, run_cli
):
    """On MinIO the signature is checked, so the chain's keys really are the ones used."""
    src, dst = source_bucket(), target.bucket()
    objects = mixed_objects(12)
    first = dict(list(objects.items())[:6])
    upload(notifying.client(), src, first)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"
    env = {**env_for(notifying, target, src, dst), **chain_env(target), "RABBITMQ_URL": closed}

    check = run_cli("check", env=env)
    backfill = run_cli("backfill", "--direct", env=env)
    assert backfill.returncode == 0, (backfill.stdout + backfill.stderr)[-3000:]
    assert_identical(target.client(), dst, first)
    upload(notifying.client(), src, objects)
    result = run_cli("reconcile", env=env)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_identical(target.client(), dst, objects)
    failing = [line for line in check.stdout.splitlines() if " FAIL " in line]
    assert [line for line in failing if "rabbitmq" not in line] == [], check.stdout
    for done in (check, backfill, result):
        no_traceback(done.stdout + done.stderr)


def test_the_aws_like_target_keeps_aws_checksum_rules(aws_like):
    """The stack's own guard: without these rules the Object Lock tests above would pass
    on moto for writes AWS refuses (aws_like.py in front of moto)."""
    import base64
    import hashlib

    from botocore.exceptions import ClientError

    client = aws_like.client(attempts=1)
    target = Target("aws-like", aws_like)
    locked = target.bucket(retention_days=1)
    sha = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    try:
        client.put_object(Bucket=locked, Key="lone-header", Body=b"x", ChecksumSHA256=sha)
        with pytest.raises(ClientError, match="InvalidRequest"):
            client.put_object(Bucket=locked, Key="unchecked", Body=b"x")
        upload = client.create_multipart_upload(Bucket=locked, Key="mp")["UploadId"]
        with pytest.raises(ClientError, match="InvalidRequest"):
            client.upload_part(Bucket=locked, Key="mp", UploadId=upload, PartNumber=1, Body=b"x")
        with pytest.raises(ClientError, match="BadDigest"):
            client.put_object(Bucket=locked, Key="corrupt", Body=b"y", ChecksumSHA256=sha)
        client.abort_multipart_upload(Bucket=locked, Key="mp", UploadId=upload)
    finally:
        target.cleanup()
