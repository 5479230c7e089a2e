"""Timeouts by progress, not by total (issue 25): slow links land, stalled ones fail fast.

Shopify's toxiproxy (deploy/local/toxiproxy.py) sits between our commands and a MinIO:
- a 16 MiB object (one PUT: the multipart threshold is 16 MiB, inclusive) over a
  1 Mbit/s uplink (bandwidth toxic, 125 KB/s) takes ~134 s, more than twice the old
  60 s per-request deadline, and must land;
- a stalled link (timeout toxic, no bytes at all and never closed) must fail the copy
  within the read timeout, MIRROR_READ_TIMEOUT=5 here, whether it stalls the answer's
  header block or the body of a PUT or a GET halfway. What the test sees is the worker's
  first "failed" outcome, which comes after the tries of one delivery (at most 3, each
  ended by the read timeout: docs/event-driven.md) and their backoff: ~15-20 s. The bound
  (BOUND_S) leaves room for a loaded 2-core machine and is still under the old 60 s for a
  single try (today: 91 s and 122 s, and a stalled GET never fails).
The slow PUT also runs with MIRROR_READ_TIMEOUT=5: a body sent in one call under one
socket timeout (Python's sendall) would fail it, as the old total deadline did.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
import stack as local_stack
from toxiproxy import CountingRelay, Toxiproxy

from replicator.task import Task
from tests.integration.test_pipeline import publish, ready, target_keys

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ONE_MBIT_KBS = 125  # toxiproxy's bandwidth rate is in KB/s of 1000 bytes
READ_TIMEOUT_S = 5
# 3 tries x (the read timeout + the 1 s a large body waits for 100 Continue), their
# backoff (up to 3 s each), a loaded machine's slack.
BOUND_S = 60


@pytest.fixture(scope="module")
def toxi(tmp_path_factory) -> Iterator[Toxiproxy]:
    server = Toxiproxy(tmp_path_factory.mktemp("toxiproxy")).start()
    yield server
    server.stop()


def pair(stack, src: str, dst: str, **extra: str) -> dict[str, str]:
    return {"BUCKET_PAIR": f"minio/{src}:aws/{dst}", "MIRROR_READ_TIMEOUT": str(READ_TIMEOUT_S),
            **extra}  # fmt: skip


def test_a_16_mib_single_put_at_1_mbit_lands(stack, toxi, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    body = os.urandom(16 * MiB)
    stack.source.client().put_object(Bucket=src, Key="sixteen.bin", Body=body)
    link = toxi.link(f"uplink-{secrets.token_hex(3)}", stack.target.port)
    link.add("one-mbit", "bandwidth", "upstream", rate=ONE_MBIT_KBS)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"
    env = pair(stack, src, dst, AWS_URL=link.url(), RABBITMQ_URL=closed)

    started = time.monotonic()
    try:
        done = run_cli("backfill", "--direct", env=env, timeout=270)
    except subprocess.TimeoutExpired as error:
        out = error.stdout if isinstance(error.stdout, str) else (error.stdout or b"").decode()
        raise AssertionError(f"not landed after 270 s (expected ~134 s):\n{out[-3000:]}") from None
    elapsed = time.monotonic() - started

    out = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, out
    got = stack.target.client().get_object(Bucket=dst, Key="sixteen.bin")
    assert got["Body"].read() == body
    assert "-" not in got["ETag"], "a multipart upload, not one PUT"
    assert elapsed > 60, f"{elapsed:.0f} s: the link was not slower than the old deadline"


def first_failure(worker, since: float, timeout: float = 150) -> tuple[float, dict]:
    """Seconds from `since` to the worker's first failed copy, and its log record."""

    def failed() -> dict | None:
        found = worker.outcomes("failed")
        return found[0] if found else None

    record = local_stack.wait_until(failed, timeout, "the copy to fail", poll=0.2)
    return time.monotonic() - since, record


def timed_out(record: dict) -> None:
    text = " ".join(str(v) for v in record.values())
    assert re.search(r"time", text, re.IGNORECASE), f"not a timeout: {record}"


def test_a_stalled_answer_fails_within_the_read_timeout(
    stack, toxi, buckets, spawn_cli, amqp, rabbit
):
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"stalled")
    link = toxi.link(f"stall-{secrets.token_hex(3)}", stack.target.port)
    worker = spawn_cli("work", **pair(stack, src, dst, AWS_URL=link.url()))
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")
    link.add("stall", "timeout", "downstream", timeout=0)  # open connections too

    started = time.monotonic()
    publish(rabbit, Task(bucket=src, key="k", origin="backfill").to_json())

    elapsed, record = first_failure(worker, started)
    assert elapsed < BOUND_S, f"failed after {elapsed:.0f} s: {record}"
    timed_out(record)
    assert "k" not in target_keys(stack.target.client(), dst)


@pytest.mark.parametrize("side", ["target-put", "source-get"])
def test_a_transfer_stalled_halfway_fails_within_the_read_timeout(
    stack, side, toxi, buckets, spawn_cli, amqp, rabbit
):
    """A 16 MiB body moves at 1 Mbit/s, then stops (after >= 1 MB): the copy fails
    within the read timeout of the stall, on the PUT to the target or the GET from the
    source alike."""
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="big", Body=os.urandom(16 * MiB))
    server, stream = (
        (stack.target, "upstream") if side == "target-put" else (stack.source, "downstream")
    )
    relay = CountingRelay(server.port).start()  # toxiproxy counts only closed connections
    link = toxi.link(f"{side}-{secrets.token_hex(3)}", relay.port)
    url = {"AWS_URL" if side == "target-put" else "MINIO_URL": link.url()}
    worker = spawn_cli("work", **pair(stack, src, dst, **url))
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")
    link.add("one-mbit", "bandwidth", stream, rate=ONE_MBIT_KBS)
    moved = relay.bytes(stream)
    publish(rabbit, Task(bucket=src, key="big", origin="backfill").to_json())
    try:
        local_stack.wait_until(
            lambda: relay.bytes(stream) - moved > 2_000_000, 90, "the body moving", poll=0.2
        )
    except TimeoutError as error:
        relay.stop()
        raise AssertionError(f"{error}: {worker.log.read_text()[-3000:]}") from None

    if side == "target-put":
        # The target stops reading: the body stops moving (toxiproxy's `timeout` toxic
        # would keep reading the client's bytes and drop them: a transfer that moves).
        relay.pause()
    else:
        link.add("stall", "timeout", stream, timeout=0)
    started = time.monotonic()

    try:
        elapsed, record = first_failure(worker, started)
    finally:
        relay.stop()
    assert elapsed < BOUND_S, f"failed {elapsed:.0f} s after the stall: {record}"
    timed_out(record)
    assert "big" not in target_keys(stack.target.client(), dst)
