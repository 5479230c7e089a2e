"""`make bench`: performance as ratios against `mc mirror`, measured in one run.

Usage: run.py [scenario ...]   (default: all). Prints a Markdown table for the README.
The machine is shared and noisy, so each side runs several times, interleaved, and the
ratio of medians is reported; absolute times are printed only as context.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "local"))

from stack import BIN, Stack, free_port  # noqa: E402

CLI = str(Path(sys.executable).with_name("minio-s3-mirror"))
ROUNDS = 3
Row = tuple[str, str, str, str]


def fill(stack: Stack, bucket: str, count: int, size: int) -> None:
    client = stack.source.client()
    client.create_bucket(Bucket=bucket)
    body = os.urandom(size)
    with ThreadPoolExecutor(32) as pool:
        list(
            pool.map(
                lambda i: client.put_object(Bucket=bucket, Key=f"o/{i:06d}", Body=body),
                range(count),
            )
        )


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def env_for(stack: Stack, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **stack.env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SLACK_BOT_TOKEN": "",
        "METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        **extra,
    }


def mc_mirror(stack: Stack, src: str, dst: str) -> None:
    env = env_for(stack)
    env["MC_HOST_minio"] = stack.source.url.replace(
        "://", f"://{stack.source.access_key}:{stack.source.secret_key}@"
    )
    env["MC_HOST_aws"] = stack.target.url.replace(
        "://", f"://{stack.target.access_key}:{stack.target.secret_key}@"
    )
    subprocess.run(
        [str(BIN / "mc"), "mirror", "--json", f"minio/{src}", f"aws/{dst}"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def reconcile(stack: Stack, src: str, dst: str) -> None:
    env = env_for(stack, BUCKET_PAIR=f"minio/{src}:aws/{dst}")
    subprocess.run(
        [CLI, "reconcile"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_reconcile(stack: Stack) -> list[Row]:
    """Reconcile of 2,000 small objects to an empty bucket against bare `mc mirror`."""
    fill(stack, "bench-small", 2000, 1024)
    ours, theirs, requests = [], [], {}
    target = stack.target.client()
    for i in range(ROUNDS):
        for side, run, times in (("mc", mc_mirror, theirs), ("ours", reconcile, ours)):
            dst = f"bench-{side}-{i}"
            target.create_bucket(Bucket=dst)
            before = s3_requests(stack)
            times.append(timed(lambda run=run, dst=dst: run(stack, "bench-small", dst)))
            requests.setdefault(side, spent(before, s3_requests(stack)))
    before = s3_requests(stack)
    reconcile(stack, "bench-small", "bench-ours-0")  # again: nothing to copy
    requests["ours, nothing to copy"] = spent(before, s3_requests(stack))
    ratio = statistics.median(ours) / statistics.median(theirs)
    context = (
        f"median of {ROUNDS}: ours {statistics.median(ours):.2f}s, "
        f"mc {statistics.median(theirs):.2f}s (includes our verify pass)"
    )
    timing = ("reconcile, 2,000 × 1 KiB, empty target", "time ours / mc mirror", f"{ratio:.2f}×")
    return [(*timing, context)] + [
        (f"reconcile, 2,000 × 1 KiB: {side}", "S3 requests in the run", counts, "reported")
        for side, counts in requests.items()
    ]


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


def spent(before: dict[str, float], after: dict[str, float]) -> str:
    """The requests between two readings, e.g. "source GetObject 2000, target PutObject 2000"."""
    delta = {name: n - before.get(name, 0) for name, n in sorted(after.items())}
    return ", ".join(f"{name} {n:.0f}" for name, n in delta.items() if n)


def target_count(stack: Stack, bucket: str) -> int:
    pages = stack.target.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def worker(stack: Stack, src: str, dst: str, log: Path, **extra: str) -> subprocess.Popen:
    env = env_for(
        stack,
        BUCKET_PAIR=f"minio/{src}:aws/{dst}",
        MIRROR_LOG_FORMAT="json",
        **{"MIRROR_MAX_WORKERS": "8", **extra},
    )
    with open(log, "wb") as out:
        return subprocess.Popen([CLI, "work"], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def until(predicate: Callable[[], bool], poll: float = 0.2) -> None:
    while not predicate():
        time.sleep(poll)


def bench_small(stack: Stack) -> list[Row]:
    """S1: 5,000 x 4 KiB already queued; workers start; until the last is on the target."""
    count = 5000
    fill(stack, "bench-s1", count, 4096)
    target = stack.target.client()
    target.create_bucket(Bucket="bench-s1-mc")
    mc_s = timed(lambda: mc_mirror(stack, "bench-s1", "bench-s1-mc"))
    return [small_run(stack, count, mc_s, processes) for processes in (1, 2)]


def small_run(stack: Stack, count: int, mc_s: float, processes: int) -> Row:
    from replicator.broker import Publisher
    from replicator.task import Task

    dst = f"bench-s1-ours-{processes}"
    stack.target.client().create_bucket(Bucket=dst)
    publisher = Publisher(stack.rabbit.url, name="bench")
    for i in range(count):
        publisher.publish(Task(bucket="bench-s1", key=f"o/{i:06d}", origin="backfill").to_json())
    publisher.close()
    start = time.perf_counter()
    procs = [
        worker(stack, "bench-s1", dst, stack.root / f"s1-{processes}-{n}.log")
        for n in range(processes)
    ]
    until(lambda: target_count(stack, dst) >= count, poll=0.5)
    ours_s = time.perf_counter() - start
    cpu = sum(cpu_share(proc, ours_s) for proc in procs)
    for proc in procs:
        stop(proc)
    return (
        f"S1: 5,000 × 4 KiB queued, {processes} worker process(es) × 8 threads",
        "objects/s, ours / mc mirror",
        f"{mc_s / ours_s:.2f}×",
        f"ours {count / ours_s:.0f}/s (incl. worker start), mc {count / mc_s:.0f}/s; "
        f"workers used {cpu:.0%} of one core; target ≥ 1.0×",
    )


def cpu_share(proc: subprocess.Popen, wall_s: float) -> float:
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return (times.user + times.system) / wall_s


def peak_rss(proc: subprocess.Popen, done: Callable[[], bool]) -> int:
    import psutil

    process, peak = psutil.Process(proc.pid), 0
    while not done():
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.1)
    return peak


def bench_large(stack: Stack) -> list[Row]:
    """S2: 4 x 256 MiB, MB/s against mc mirror; worker peak RSS copying a 1 GiB object."""
    from replicator.broker import Publisher
    from replicator.task import Task

    size, count = 256 * 1024 * 1024, 4
    fill(stack, "bench-s2", count, size)
    target = stack.target.client()
    target.create_bucket(Bucket="bench-s2-mc")
    mc_s = timed(lambda: mc_mirror(stack, "bench-s2", "bench-s2-mc"))
    target.create_bucket(Bucket="bench-s2-ours")
    proc = worker(stack, "bench-s2", "bench-s2-ours", stack.root / "s2.log", MIRROR_MAX_WORKERS="4")
    time.sleep(2)  # let the worker connect: the timing is of the copies, not the start
    publisher = Publisher(stack.rabbit.url, name="bench")
    start = time.perf_counter()
    for i in range(count):
        publisher.publish(Task(bucket="bench-s2", key=f"o/{i:06d}", origin="backfill").to_json())
    until(lambda: target_count(stack, "bench-s2-ours") >= count)
    ours_s = time.perf_counter() - start

    source = stack.source.client()
    source.upload_fileobj(io.BytesIO(os.urandom(1024 * 1024 * 1024)), "bench-s2", "one-gib")
    publisher.publish(Task(bucket="bench-s2", key="one-gib", origin="backfill").to_json())
    publisher.close()
    peak = peak_rss(proc, lambda: target_count(stack, "bench-s2-ours") > count)
    stop(proc)
    mb = size * count / 1e6
    return [
        (
            "S2: 4 × 256 MiB",
            "MB/s, ours / mc mirror",
            f"{mc_s / ours_s:.2f}×",
            f"ours {mb / ours_s:.0f} MB/s, mc {mb / mc_s:.0f} MB/s; target ≥ 0.9×",
        ),
        (
            "S2: worker copying a 1 GiB object",
            "peak RSS",
            f"{peak / 2**20:.0f} MiB",
            "4 copy threads, 8 MiB parts; target ≤ 150 MiB",
        ),
    ]


def bench_latency(stack: Stack) -> list[Row]:
    """S3: 50 PUT/s for 60 s through the webhook path; event time to verified copy."""
    return [latency_run(stack, queue_dir) for queue_dir in (True, False)]


def latency_run(stack: Stack, queue_dir: bool) -> Row:
    import json

    from stack import MinioServer

    port, token = free_port(), "bench-token"
    notify = {
        "MINIO_NOTIFY_WEBHOOK_ENABLE_bench": "on",
        "MINIO_NOTIFY_WEBHOOK_ENDPOINT_bench": f"http://127.0.0.1:{port}/",
        "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_bench": token,
    }
    if queue_dir:
        notify["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_bench"] = str(stack.root / "webhook-queue")
    source = MinioServer(f"notifying-{queue_dir}", stack.root, notify).start()
    try:
        client = source.client()
        client.create_bucket(Bucket="bench-s3")
        subprocess.run(
            [
                str(BIN / "mc"),
                "event",
                "add",
                "src/bench-s3",
                "arn:minio:sqs::bench:webhook",
                "--event",
                "put",
            ],
            env=env_for(
                stack,
                MC_HOST_src=source.url.replace(
                    "://", f"://{source.access_key}:{source.secret_key}@"
                ),
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        stack.target.client().create_bucket(Bucket=f"bench-s3-{queue_dir}".lower())
        extra = {
            "MINIO_URL": source.url,
            "MINIO_ACCESS_KEY": source.access_key,
            "MINIO_SECRET_KEY": source.secret_key,
            "WEBHOOK_AUTH_TOKEN": token,
            "WEBHOOK_ADDRESS": f"127.0.0.1:{port}",
        }
        log = stack.root / f"s3-worker-{queue_dir}.log"
        dst = f"bench-s3-{queue_dir}".lower()
        work = worker(stack, "bench-s3", dst, log, **extra)
        env = env_for(stack, BUCKET_PAIR=f"minio/bench-s3:aws/{dst}", **extra)
        with open(stack.root / "s3-listener.log", "wb") as out:
            listen = subprocess.Popen(
                [CLI, "listen", "--mode", "webhook"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        time.sleep(3)  # both processes up before the clock starts
        rate, seconds, body = 50, 60, os.urandom(4096)
        start = time.perf_counter()
        for i in range(rate * seconds):
            client.put_object(Bucket="bench-s3", Key=f"o/{i:06d}", Body=body)
            time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        until(lambda: target_count(stack, dst) >= rate * seconds, poll=0.5)
        stop(listen)
        stop(work)
    finally:
        source.stop()
    latencies = sorted(
        record["latency_s"]
        for record in map(json.loads, log.read_text().splitlines())
        if record.get("outcome") == "copied"
    )
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    how = "with queue_dir (durable)" if queue_dir else "without queue_dir"
    return (
        f"S3: 50 PUT/s × 60 s, webhook {how} → worker",
        "event → verified copy p50 / p99",
        f"{p50:.2f} s / {p99:.2f} s",
        f"{len(latencies)} copies; target p99 ≤ 1 s",
    )


def bench_backfill_listing(stack: Stack) -> list[Row]:
    """Backfill listing of 100,000 keys (dry run): peak RSS and keys/s against mc ls."""
    count = 100_000
    fill(stack, "bench-bf", count, 0)
    stack.target.client().create_bucket(Bucket="bench-bf-target")
    env = env_for(stack)
    env["MC_HOST_minio"] = stack.source.url.replace(
        "://", f"://{stack.source.access_key}:{stack.source.secret_key}@"
    )
    mc_s = timed(
        lambda: subprocess.run(
            [str(BIN / "mc"), "ls", "--recursive", "minio/bench-bf"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    )
    env = env_for(stack, BUCKET_PAIR="minio/bench-bf:aws/bench-bf-target")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [CLI, "backfill", "--prefix", "o", "--dry-run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = peak_rss(proc, lambda: proc.poll() is not None)
    ours_s = time.perf_counter() - start
    return [
        (
            "backfill --dry-run listing 100,000 keys",
            "keys/s, ours / `mc ls --recursive`",
            f"{mc_s / ours_s:.2f}×",
            f"ours {count / ours_s:.0f}/s, mc ls {count / mc_s:.0f}/s",
        ),
        (
            "backfill listing 100,000 keys",
            "peak RSS",
            f"{peak / 2**20:.0f} MiB",
            "target ≤ 100 MiB",
        ),
    ]


SCENARIOS: dict[str, Callable[[Stack], list[Row]]] = {
    "backfill": bench_backfill_listing,
    "latency": bench_latency,
    "reconcile": bench_reconcile,
    "small": bench_small,
    "large": bench_large,
}


def main(names: list[str]) -> None:
    chosen = names or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    stack = Stack(rabbitmq=True)
    for server in (stack.source, stack.target):  # request counts from MinIO's own metrics
        server.extra_env["MINIO_PROMETHEUS_AUTH_TYPE"] = "public"
    stack.start()
    try:
        rows = [row for name in chosen for row in SCENARIOS[name](stack)]
    finally:
        stack.stop()
    print("| benchmark | measure | result | context |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
