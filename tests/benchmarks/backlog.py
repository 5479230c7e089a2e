"""S8: the backlog after an outage. Tasks queued while the target is down, one worker
waiting them out, then the target back: nothing lost, nothing dead-lettered, how soon
copying resumes, the drain rate, and the memory of the worker and of RabbitMQ.

S8_TASKS (default 200,000) and S8_OUTAGE_S (default 300) scale it down for a quick try;
the figures reported name the scale they were measured at.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
from harness import TIMEOUT_S, Box, Row, Stack, Worker, fill, hwm, publish, target_count

TASKS = int(os.environ.get("S8_TASKS", "200000"))
OUTAGE_S = float(os.environ.get("S8_OUTAGE_S", "300"))
PUBLISHERS = 4  # a confirm per message: a few connections keep the queueing short
MiB = 1024 * 1024


def counters(work: Worker) -> dict[str, float]:
    """The worker's own totals by metric name (labels summed)."""
    _, text = work._get("/metrics")
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"minio_s3_mirror_(\w+?)_total(?:\{[^}]*\})? (\S+)$", line)
        if match:
            totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
    return totals


def rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (RabbitMQ: script + Erlang VM)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


class Peak:
    """The highest RSS of a process tree, sampled every second on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(1.0):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def publish_all(stack: Stack, bucket: str, keys: list[str]) -> None:
    shares = [keys[i::PUBLISHERS] for i in range(PUBLISHERS)]
    with ThreadPoolExecutor(PUBLISHERS) as pool:
        list(pool.map(lambda share: publish(stack, bucket, share), shares))


def wait(predicate, what: str, timeout: float = TIMEOUT_S, poll: float = 0.05) -> float:
    """Poll until `predicate()`; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"S8: {what} not within {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic()


def bench_backlog(stack: Stack) -> list[Row]:
    src, dst = "bench-s8", "bench-s8-copy"
    keys = [f"o/{i:06d}" for i in range(TASKS)]
    fill(stack, src, TASKS, 1024)
    stack.target.client().create_bucket(Bucket=dst)
    box = Box()
    stack.target.stop()
    down_at = time.monotonic()
    publish_all(stack, src, keys)
    rabbit = Peak(stack.rabbit.proc.pid)
    work = Worker(stack, src, dst, stack.root / f"{dst}.log", MIRROR_MAX_WORKERS="auto")
    try:
        # /readyz is 503 while an endpoint is down: wait for the process to consume.
        wait(lambda: counters(work).get("endpoint_holds", 0) > 0, "a held task")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        held = counters(work)
        stack.target.start()
        back_at = time.monotonic()
        first = wait(lambda: counters(work).get("objects_replicated", 0) > 0, "a first copy")
        done = wait(  # the drain's bound scales with the backlog: 50 objects/s at worst
            lambda: counters(work).get("objects_replicated", 0) >= TASKS,
            "the drain",
            timeout=max(TIMEOUT_S, TASKS / 50),
            poll=0.5,
        )
        final = counters(work)
    finally:
        worker_peak = hwm(work.proc.pid)
        work.stop()
        rabbit_peak = rabbit.stop()
    landed = target_count(stack, dst)
    dead = stack.rabbit.queues().get("minio-s3-mirror.dead", {}).get("messages", 0)
    scale = f"{TASKS:,} × 1 KiB, target down {OUTAGE_S:.0f} s"
    return [
        (
            f"S8: {scale}",
            "lost / dead-lettered",
            f"{TASKS - landed} / {dead}",
            f"{landed:,} on the target; worker dead_lettered_total "
            f"{final.get('dead_lettered', 0):.0f}, retries {final.get('retries', 0):.0f}, "
            f"holds during the outage {held.get('endpoint_holds', 0):.0f}",
        ),
        (
            f"S8: {scale}",
            "first copy after the target answers; drain rate",
            f"{first - back_at:.2f} s; {TASKS / (done - back_at):.0f} objects/s",
            f"MIRROR_MAX_WORKERS=auto; {box.since()}",
        ),
        (
            f"S8: {scale}",
            "peak RSS: worker (VmHWM); RabbitMQ (sampled, whole tree)",
            f"{worker_peak / MiB:.0f} MiB; {rabbit_peak / MiB:.0f} MiB",
            "targets: worker ≤ 100 MiB, drain ≥ 200 objects/s, first copy ≤ 2 s",
        ),
    ]
