"""Concurrency that fits the link (issue 23), over a latency-injected target (Shopify's
toxiproxy, deploy/local/toxiproxy.py):
- a worker on auto (MIRROR_MAX_WORKERS unset) raises its limit of copies in flight above
  where it starts while round trips are long, and copies everything: asserted on the
  limit it reports (`minio_s3_mirror_copies_allowed`), never on timings;
- a large object to a far target goes in more, smaller parts (the same buffer memory).
"""

from __future__ import annotations

import re
import secrets
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import stack as local_stack
from toxiproxy import Link, Toxiproxy

from replicator import concurrency, config
from replicator.copier import Copier
from replicator.task import Task
from tests.conftest import base_env
from tests.integration.test_pipeline import publish, ready, target_keys, wait_for_keys

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
COUNT = 600  # small objects: enough intervals for a few decisions
ONE_WAY_MS = 50  # a 100 ms round trip: 8 copies in flight are far from busy on 2 cores


@pytest.fixture(scope="module")
def toxi(tmp_path_factory) -> Iterator[Toxiproxy]:
    server = Toxiproxy(tmp_path_factory.mktemp("toxiproxy")).start()
    yield server
    server.stop()


def far(toxi: Toxiproxy, port: int, one_way_ms: int) -> Link:
    link = toxi.link(f"far-{secrets.token_hex(3)}", port)
    for stream in ("upstream", "downstream"):
        link.add(f"latency-{stream}", "latency", stream, latency=one_way_ms)
    return link


def allowed(address: str) -> int:
    """The worker's limit of copies in flight, from its /metrics (0: not answering)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    found = re.search(r"^minio_s3_mirror_copies_allowed (\S+)$", text, re.MULTILINE)
    return int(float(found[1])) if found else 0


def test_auto_raises_its_limit_over_a_long_link_and_copies_everything(
    stack, toxi, buckets, spawn_cli, amqp, rabbit
):
    src, dst = buckets("source"), buckets("target")
    keys = {f"o/{i:05d}" for i in range(COUNT)}
    client = stack.source.client()
    for key in keys:
        client.put_object(Bucket=src, Key=key, Body=b"s" * 4096)
    link = far(toxi, stack.target.port, ONE_WAY_MS)
    worker = spawn_cli(
        "work",
        BUCKET_PAIR=f"minio/{src}:aws/{dst}",
        AWS_URL=link.url(),
        MIRROR_MAX_WORKERS=None,  # the default: auto
        MIRROR_DEBUG="false",  # no line per request: the CPU goes to the copies
    )
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")
    address = worker.env["METRICS_ADDRESS"]
    assert allowed(address) == concurrency.START

    seen, done = [0], threading.Event()

    def watch() -> None:  # the highest limit the worker reported while copying
        while not done.wait(0.05):
            seen[0] = max(seen[0], allowed(address))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        publish(rabbit, *(Task(bucket=src, key=k, origin="backfill").to_json() for k in keys))
        wait_for_keys(stack.target.client(), dst, keys, timeout=300)
    finally:
        done.set()
        watcher.join(10)
    log = worker.log.read_text()
    assert seen[0] > concurrency.START, f"the limit never rose: {log[-3000:]}"
    assert "copies in flight: 8 -> 16" in log
    assert target_keys(stack.target.client(), dst) == keys


def test_a_far_target_gets_more_smaller_parts_in_the_same_memory(stack, toxi, buckets):
    """17 MiB near: a 16 MiB part and a 1 MiB one (test_copier.py); 25 ms away: 8 + 8 + 1."""
    src, dst = buckets("source"), buckets("target")
    data = bytes(range(256)) * (17 * 4096)
    stack.source.client().put_object(Bucket=src, Key="big", Body=data)
    link = far(toxi, stack.target.port, 25)
    env = {**base_env(stack), "AWS_URL": link.url(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"}

    assert Copier(config.load(env)).copy(Task(bucket=src, key="big", origin="backfill")).copied
    target = stack.target.client()
    assert target.head_object(Bucket=dst, Key="big")["ETag"].endswith('-3"')
    assert target.get_object(Bucket=dst, Key="big")["Body"].read() == data
