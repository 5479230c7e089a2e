"""The bench harness: the local stack, clocks, CPU and RSS readings, and the clients
(`mc`, a `work` process) each scenario runs side by side. Scenarios live in run.py and
its sibling modules; see run.py for how figures are measured."""

from __future__ import annotations

import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "local"))

from stack import BIN, MinioServer, Stack, free_port  # noqa: E402

CLI = str(Path(sys.executable).with_name("minio-s3-mirror"))
ROUNDS = 3
S1_ROUNDS = 5  # S1 rounds are short and its margin is narrow: more rounds, steadier median
S1_THREADS = ("auto", 8)  # MIRROR_MAX_WORKERS tried: the default, and the best fixed
S2_THREADS = 16
MiB = 1024 * 1024
GiB = 1024 * MiB
BIG = 6 * GiB
BIG_FREE = 20 * GiB  # free disk needed for the 6 GiB case (source + two copies)
TIMEOUT_S = 900.0
S1_COUNT = 5000
S2_SIZE = 256 * MiB
Row = tuple[str, str, str, str]


# ---- the stack ---------------------------------------------------------------------


def fill(
    stack: Stack, bucket: str, count: int, size: int, server: MinioServer | None = None
) -> None:
    client = (server or stack.source).client()
    client.create_bucket(Bucket=bucket)
    body = os.urandom(size)
    with ThreadPoolExecutor(32) as pool:
        list(
            pool.map(
                lambda i: client.put_object(Bucket=bucket, Key=f"o/{i:06d}", Body=body),
                range(count),
            )
        )


def drop(server, bucket: str) -> None:
    """Delete a bucket and everything in it (frees the disk between large runs)."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


def env_for(stack: Stack, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **stack.env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SLACK_BOT_TOKEN": "",
        "METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        **extra,
    }


def mc_env(stack: Stack) -> dict[str, str]:
    env = env_for(stack)
    for alias, server in (("minio", stack.source), ("aws", stack.target)):
        env[f"MC_HOST_{alias}"] = server.url.replace(
            "://", f"://{server.access_key}:{server.secret_key}@"
        )
    return env


def target_count(stack: Stack, bucket: str) -> int:
    pages = stack.target.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def until(predicate: Callable[[], bool], poll: float = 0.2, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark step did not finish within {timeout:.0f}s")
        time.sleep(poll)


# ---- measuring ---------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds of a process: all its threads, plus children it has reaped."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (the worker's: pika's connection thread)."""
    import psutil

    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return thread.user_time + thread.system_time
    return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (RabbitMQ's script + Erlang VM)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += cpu_s(process.pid)
    return total


def servers_cpu(stack: Stack) -> dict[str, float]:
    assert stack.source.proc and stack.target.proc
    cpu = {
        "source MinIO": cpu_s(stack.source.proc.pid),
        "target MinIO": cpu_s(stack.target.proc.pid),
    }
    if stack.rabbit and stack.rabbit.proc:
        cpu["RabbitMQ"] = tree_cpu_s(stack.rabbit.proc.pid)
    return cpu


def s3_requests(stack: Stack) -> dict[str, float]:
    """S3 requests each MinIO has served so far, by API (MinIO's v3 metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for side, server in (("source", stack.source), ("target", stack.target)):
        with urllib.request.urlopen(f"{server.url}/minio/metrics/v3/api/requests") as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "minio_api_requests_total":
                    name = f"{side} {sample.labels['name']}"
                    counts[name] = counts.get(name, 0) + sample.value
    return counts


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: n - before.get(name, 0) for name, n in sorted(after.items())}


def spent(before: dict[str, float], after: dict[str, float]) -> str:
    """The requests between two readings, e.g. "source GetObject 2000, target PutObject 2000"."""
    return ", ".join(f"{name} {n:.0f}" for name, n in delta(before, after).items() if n)


@dataclass
class Run:
    """One measured run of one client."""

    seconds: float
    client_cpu: float  # CPU seconds of the client process over the timed window
    servers: dict[str, float]  # CPU seconds of each server over the same window
    requests: dict[str, float]  # S3 requests served during the run, by side and API
    peak_rss: int = 0  # bytes, the client process's VmHWM (0: not measured)
    extra: dict[str, float] = field(default_factory=dict)


def hwm(pid: int) -> int:
    """Peak RSS of a live process in bytes (VmHWM: its own address space since exec).

    Not wait4's ru_maxrss: that keeps the high-water mark of the parent that forked
    the child (vfork + exec), i.e. this benchmark's own memory.
    """
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(argv: list[str], env: dict[str, str], stack: Stack) -> Run:
    """Run a command to its exit: wall time, its CPU (wait4) and peak RSS, servers' CPU."""
    requests = s3_requests(stack)
    servers = servers_cpu(stack)
    errors = stack.root / "child.err"
    peak, exited = [0], threading.Event()
    start = time.perf_counter()
    with open(errors, "wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)

        def sample() -> None:  # the high-water mark only grows: the last reading counts
            while not exited.wait(0.02):
                peak[0] = max(peak[0], hwm(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    exited.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = errors.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[:2])} exited {proc.returncode}: {tail}")
    return Run(
        seconds,
        usage.ru_utime + usage.ru_stime,
        delta(servers, servers_cpu(stack)),
        delta(requests, s3_requests(stack)),
        peak[0],
    )


def mc(stack: Stack, *args: str) -> Run:
    return run_child([str(BIN / "mc"), *args], mc_env(stack), stack)


class Worker:
    """One `minio-s3-mirror work` process, its readiness and its own counters."""

    def __init__(self, stack: Stack, src: str, dst: str, log: Path, **extra: str) -> None:
        env = env_for(
            stack,
            BUCKET_PAIR=f"minio/{src}:aws/{dst}",
            MIRROR_LOG_FORMAT="json",
            **{"MIRROR_MAX_WORKERS": "8", **extra},
        )
        self.address = env["METRICS_ADDRESS"]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [CLI, "work"], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def ready(self) -> None:
        """Return the moment /readyz answers 200 (connected and consuming)."""
        deadline = time.monotonic() + 120
        while self._get("/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker never became ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.005)

    def finished(self) -> float:
        """Tasks this process has finished (copied or nothing to do); raises on failures."""
        _, text = self._get("/metrics")
        done = failed = 0.0
        for line in text.splitlines():
            match = re.match(r"minio_s3_mirror_(\w+?)_total(?:\{[^}]*\})? (\S+)$", line)
            if not match:
                continue
            if match[1] in ("objects_replicated", "objects_skipped"):
                done += float(match[2])
            elif match[1] in ("dead_lettered", "retries"):
                failed += float(match[2])
        if failed:
            raise RuntimeError(f"worker failed tasks: {self.log.read_text()[-2000:]}")
        return done

    def wait_for(self, total: float) -> None:
        """Until `total` tasks are finished. A scrape of /metrics costs the worker ~1.5 ms
        of CPU: poll every 0.5 s, every 20 ms only for the last 3% of the tasks."""
        deadline = time.monotonic() + TIMEOUT_S
        while (done := self.finished()) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker finished {done:.0f} of {total:.0f} tasks in time")
            time.sleep(0.02 if done >= total * 0.97 else 0.5)

    def stop(self) -> int:
        """SIGTERM, wait, and return the process's peak RSS in bytes (read before the end)."""
        peak = hwm(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(60)
        return peak


def publish(stack: Stack, bucket: str, keys: list[str]) -> None:
    from replicator.broker import Publisher
    from replicator.task import Task

    publisher = Publisher(stack.rabbit.url, name="bench")
    try:
        for key in keys:
            publisher.publish(Task(bucket=bucket, key=key, origin="backfill").to_json())
    finally:
        publisher.close()


def worker_run(stack: Stack, src: str, dst: str, keys: list[str], threads: int) -> Run:
    """Queue the tasks, start one worker, time it from /readyz to its last task."""
    publish(stack, src, keys)
    requests = s3_requests(stack)
    work = Worker(stack, src, dst, stack.root / f"{dst}.log", MIRROR_MAX_WORKERS=str(threads))
    try:
        work.ready()
        start = time.perf_counter()
        client, servers = cpu_s(work.proc.pid), servers_cpu(stack)
        main = main_thread_cpu_s(work.proc.pid)
        work.wait_for(len(keys))
        seconds = time.perf_counter() - start
        client = cpu_s(work.proc.pid) - client
        main = main_thread_cpu_s(work.proc.pid) - main
        servers = delta(servers, servers_cpu(stack))
    finally:
        peak = work.stop()
    requests = delta(requests, s3_requests(stack))
    return Run(seconds, client, servers, requests, peak, {"main thread": main})


# ---- reporting ---------------------------------------------------------------------


def median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


def cpu_ms(runs: list[Run], count: int, client: str, digits: int = 2) -> str:
    """Median CPU-ms per object of the client and each server, e.g. "worker 0.61, ..."."""
    parts = [f"{client} {median(runs, lambda r: r.client_cpu) * 1000 / count:.{digits}f}"]
    for name in runs[0].servers:
        ms = median(runs, lambda r, n=name: r.servers[n]) * 1000 / count
        parts.append(f"{name} {ms:.{digits}f}")
    return ", ".join(parts)


def main_ms(runs: list[Run], count: int) -> str:
    """Median CPU-ms per object of the worker's main thread (the rest: copy threads)."""
    return f"{median(runs, lambda r: r.extra['main thread']) * 1000 / count:.2f}"


def per_object(requests: dict[str, float], count: int) -> str:
    """Requests per object; the ones that are not per object as plain counts."""
    each = [f"{name} {n / count:.2f}" for name, n in requests.items() if n / count >= 0.05]
    fixed = [f"{name} {n:.0f}" for name, n in requests.items() if 0 < n / count < 0.05]
    return ", ".join(each) + (f" (+ in all: {', '.join(fixed)})" if fixed else "")


def stack_ms(runs: list[Run], count: int) -> float:
    """Median CPU-ms per object of the whole stack: the client and every server."""
    return median(runs, lambda r: r.client_cpu + sum(r.servers.values())) * 1000 / count


class Box:
    """How busy the machine was during a scenario: its load average (the scenario's own
    processes included) and the share of CPU time the hypervisor gave to other guests
    (steal), from /proc."""

    def __init__(self) -> None:
        self.load = os.getloadavg()[0]
        self.ticks = self._ticks()

    @staticmethod
    def _ticks() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:]]

    def since(self) -> str:
        ticks = [b - a for a, b in zip(self.ticks, self._ticks(), strict=True)]
        steal = ticks[7] / max(1, sum(ticks)) if len(ticks) > 7 else 0.0
        load = f"{self.load:.1f}-{os.getloadavg()[0]:.1f}"
        return f"load average {load} (start-end, ours included), CPU steal {steal:.0%}"


def rounds_s(runs: list[Run]) -> str:
    return "/".join(f"{run.seconds:.2f}" for run in runs) + " s"


class Pattern(io.RawIOBase):
    """`size` bytes of a repeated random block, produced as read (never all in memory)."""

    def __init__(self, size: int) -> None:
        self.size, self.pos, self.block = size, 0, os.urandom(16 * MiB + 4099)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.pos)
        view, done = memoryview(buffer), 0
        while done < n:
            offset = (self.pos + done) % len(self.block)
            take = min(n - done, len(self.block) - offset)
            view[done : done + take] = self.block[offset : offset + take]
            done += take
        self.pos += n
        return n
