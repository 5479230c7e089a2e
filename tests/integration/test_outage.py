"""A worker through an endpoint outage and behind a long copy, on the real stack.

- Target down longer than MIRROR_HOLD_MAX under a backlog: once it is back, copies resume
  within 2 s, nothing is lost or dead-lettered, RabbitMQ is not reconnected, and the log
  says "down" once and "back" once.
- A copy stuck at the head of the prefetch window (its source read stalls) holds one slot:
  every later task is copied and acked meanwhile.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

import pytest
import stack as local_stack

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_operations import scrape
from tests.integration.test_pipeline import pair_env, publish, target_keys, upload

pytestmark = pytest.mark.integration
P = "minio_s3_mirror_"


class Link:
    """A TCP forwarder to a server, cut and restored on the same port: cut, every open
    connection is reset and new ones are refused (an endpoint that is down)."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname, parts.port)
        self.port = local_stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.open: set[socket.socket] = set()

    def restore(self) -> Link:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on Linux
        with self.lock:
            self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            sockets, self.open = self.open, set()
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
            listener.close()
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    server.close()
                    return
                self.open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def link(stack):
    link = Link(stack.target.url).restore()
    yield link
    link.cut()


def tasks(bucket: str, keys) -> list[bytes]:
    return [Task(bucket=bucket, key=key, origin="backfill").to_json() for key in keys]


def metric(port: int, name: str) -> float:
    return scrape(port).get(name, 0.0)


def test_after_an_outage_longer_than_the_hold_ceiling_copies_resume_at_once(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, link
):
    src, dst = source_bucket(None), buckets("target")
    keys = [f"backlog/{i:04d}" for i in range(240)]
    upload(notifying.client(), src, {k: (k.encode(), "text/plain", {}) for k in keys})
    port = local_stack.free_port()
    threads = 4
    worker = procs(
        "work",
        **pair_env(src, dst),
        AWS_URL=link.url,
        MIRROR_HOLD_MAX="20s",  # back-offs of 1, 1, 2, 4, 8 and 4 s, then a delay queue
        MIRROR_MAX_WORKERS=str(threads),
        METRICS_ADDRESS=f"127.0.0.1:{port}",
    )
    target = stack.target.client()
    publish(rabbit, *tasks(src, keys[:20]))
    local_stack.wait_until(lambda: len(target_keys(target, dst)) >= 20, 60, "the first copies")

    link.cut()
    publish(rabbit, *tasks(src, keys[20:]))  # the backlog builds while the target is down
    # The first tasks held pass MIRROR_HOLD_MAX into a delay queue; the next ones are held.
    local_stack.wait_until(
        lambda: metric(port, f"{P}retries_total") >= threads, 90, "tasks past MIRROR_HOLD_MAX"
    )
    local_stack.wait_until(
        lambda: metric(port, f"{P}endpoint_holds_total{{side=target}}") >= 2 * threads,
        30,
        "the next tasks held",
    )
    # Into their 8 s back-off: a worker that let them sleep it out would resume ~7 s late.
    threading.Event().wait(9)
    copied = metric(port, f"{P}objects_replicated_total")
    link.restore()
    back = time.monotonic()
    local_stack.wait_until(
        lambda: metric(port, f"{P}objects_replicated_total") > copied,
        30,
        "a copy after the outage",
        poll=0.02,
    )
    resumed = time.monotonic() - back
    print(f"copies resumed {resumed:.2f}s after the target was back")  # shown with -rP
    # The worker probes a down endpoint every 0.5 s and wakes its held tasks the moment one
    # answers; a copy of 1 KiB is milliseconds. 2 s (the bound) leaves > 1 s for a
    # loaded machine; held tasks sleeping out their back-off (up to 30 s) miss it.
    assert resumed < 2.0, f"copies resumed {resumed:.1f}s after the target was back"

    local_stack.wait_until(lambda: len(target_keys(target, dst)) == len(keys), 120, "the rest")
    assert dead_letters(rabbit) == []
    samples = scrape(port)
    assert samples.get(f"{P}copy_failures_total{{kind=endpoint_down}}", 0) == 0
    holds = samples[f"{P}endpoint_holds_total{{side=target}}"]
    assert 1 <= holds <= len(keys) - 20  # at most once per task for the one outage
    text = worker.log.read_text()
    assert len(re.findall(r"target unreachable: holding", text)) == 1, text[-3000:]
    assert len(re.findall(r"target is reachable again", text)) == 1, text[-3000:]
    assert "reconnecting" not in text
    # Tasks held or moved to a delay queue are counted, not logged one by one.
    per_task = [r for r in worker.records() if r.get("level") == "warning" and "key" in r]
    assert per_task == []


def test_a_stuck_copy_at_the_head_of_the_window_does_not_hold_back_the_rest(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(None), buckets("target")
    small = [f"small/{i:03d}" for i in range(60)]
    objects = {k: (k.encode(), "text/plain", {}) for k in ["slow/head", *small]}
    upload(notifying.client(), src, objects)
    # The source behind a proxy that answers the head object's GET only when released.
    proxy = local_stack.FaultProxy(notifying.url).start()
    proxy.add_rule("slow/head", "stall", "GET")
    port = local_stack.free_port()
    try:
        procs(
            "work",
            **pair_env(src, dst),
            MINIO_URL=proxy.url,
            MIRROR_MAX_WORKERS="2",  # a prefetch window of 8: 60 tasks fill it 7 times over
            METRICS_ADDRESS=f"127.0.0.1:{port}",
        )
        publish(rabbit, *tasks(src, ["slow/head"]))
        local_stack.wait_until(lambda: proxy.fault_count("slow/head", "stall"), 60, "the stall")
        publish(rabbit, *tasks(src, small))
        target = stack.target.client()
        local_stack.wait_until(
            lambda: set(small) <= target_keys(target, dst), 60, "the small copies"
        )
        # All acked but the stuck one (RabbitMQ holds one unacked task for this worker).
        local_stack.wait_until(
            lambda: metric(port, f"{P}tasks_unacked") == 1, 10, "the small tasks acked"
        )
        assert "slow/head" not in target_keys(target, dst)
    finally:
        proxy.stop()  # releases the stalled GET
    local_stack.wait_until(lambda: "slow/head" in target_keys(target, dst), 60, "the head copy")
    assert dead_letters(rabbit) == []
