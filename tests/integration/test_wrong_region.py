"""A target bucket in another region (issue 12): one clear permanent failure naming the
bucket's region, no retries, no traceback.

The target is deploy/local/stack.py's RedirectServer, which answers every request as AWS
answers a request signed for the wrong region: 301 PermanentRedirect, the region only in
the `x-amz-bucket-region` header (the XML body names the endpoint, not the region; a HEAD
answer has no body at all), no Location header.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stack as local_stack

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import publish

pytestmark = pytest.mark.integration

REGION = "ap-northeast-2"


@pytest.fixture
def redirect() -> Iterator[local_stack.RedirectServer]:
    server = local_stack.RedirectServer(REGION).start()
    yield server
    server.stop()


def wrong_region_env(notifying, redirect, src: str, **extra: str) -> dict[str, str]:
    return {
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        "AWS_URL": redirect.url,
        "AWS_ACCESS_KEY": "AKIAWRONGREGION1",
        "AWS_SECRET_KEY": "wrong-region-secret",
        "AWS_REGION": "us-east-1",  # the bucket is in ap-northeast-2
        "BUCKET_PAIR": f"minio/{src}:aws/seoul-backups",
        **extra,
    }


def naming_the_region(text: str) -> list[str]:
    return [line for line in text.splitlines() if REGION in line]


def test_work_dead_letters_the_task_at_once_naming_the_region(
    notifying, source_bucket, redirect, procs, amqp, rabbit
):
    src = source_bucket()
    notifying.client().put_object(Bucket=src, Key="photo.jpg", Body=b"jpeg")
    worker = procs("work", **wrong_region_env(notifying, redirect, src))

    publish(rabbit, Task(bucket=src, key="photo.jpg", origin="backfill").to_json())

    local_stack.wait_until(lambda: dead_letters(rabbit), 60, "the task in the DLQ")
    ((headers, _),) = dead_letters(rabbit)
    reason = headers["x-mirror-error"]
    # Permanent at once: no delayed retries.
    assert headers.get("x-mirror-attempt", 0) == 0, reason
    assert REGION in reason and "PermanentRedirect" in reason, reason
    assert redirect.count() <= 3, redirect.requests  # no retry loop against the endpoint
    worker.stop()
    log = worker.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert naming_the_region(log), log[-3000:]


def test_backfill_direct_stops_with_one_line_naming_the_region(
    notifying, source_bucket, redirect, run_cli
):
    src = source_bucket()
    for i in range(5):
        notifying.client().put_object(Bucket=src, Key=f"p/{i}.jpg", Body=b"jpeg")
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    result = run_cli(
        "backfill",
        "--direct",
        env=wrong_region_env(notifying, redirect, src, RABBITMQ_URL=closed),
        timeout=120,
    )

    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # One line of the summary (stdout); the log (stderr) may say it once more.
    lines = naming_the_region(result.stdout)
    assert len(lines) == 1, out[-3000:]
    assert "PermanentRedirect" in lines[0] or "region" in lines[0]
    assert len(naming_the_region(out)) <= 2, out[-3000:]
    assert redirect.count() <= 6, redirect.requests  # not one retry loop per key


def test_check_fails_the_target_with_one_line_naming_the_region(
    notifying, source_bucket, redirect, run_cli
):
    src = source_bucket()

    result = run_cli("check", env=wrong_region_env(notifying, redirect, src), timeout=120)

    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    failing = [line for line in out.splitlines() if " FAIL " in line and "target" in line]
    assert len(failing) == 1 and REGION in failing[0], out
    assert "Mirror process closed" not in out  # mc is not involved in the target probe
