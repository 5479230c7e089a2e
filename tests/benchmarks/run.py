"""`make bench`: performance as ratios against `mc`, measured side by side in one run.

Usage: run.py [scenario ...]   (default: all). Prints a Markdown table for the README.
The machine is shared and noisy, so each side runs several times, interleaved, and the
ratio of medians is reported; absolute times are printed only as context. CPU time per
object (client process, each MinIO server, RabbitMQ) is read from the kernel's process
accounting: it is steadier than wall time on a shared machine.

Clocks: `mc` is timed from exec to exit (it has no start-up to speak of). The worker is
started with its tasks already queued and timed from the moment its /readyz answers 200
(it is connected and consuming: interpreter start-up and connection are not counted) to
the moment its own /metrics count every object as copied or skipped; its CPU time is
measured over the same window. S3 request counts come from MinIO's v3 metrics and cover
the whole run (start-up probes included).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import growth
from backlog import bench_backlog
from harness import (  # run.py's own folder: on sys.path when run as a script
    BIG,
    BIG_FREE,
    BIN,
    CLI,
    ROUNDS,
    S1_COUNT,
    S1_ROUNDS,
    S1_THREADS,
    S2_SIZE,
    S2_THREADS,
    TIMEOUT_S,
    Box,
    GiB,
    MiB,
    MinioServer,
    Pattern,
    Row,
    Run,
    Stack,
    Worker,
    cpu_ms,
    drop,
    env_for,
    fill,
    free_port,
    main_ms,
    mc,
    median,
    per_object,
    publish,
    rounds_s,
    run_child,
    stack_ms,
    target_count,
    until,
    worker_run,
)
from memory import bench_memory
from wan import bench_wan_large, bench_wan_small

# ---- scenarios ---------------------------------------------------------------------


def bench_small(stack: Stack) -> list[Row]:
    """S1: 5,000 x 4 KiB queued, one worker process, against `mc mirror`; then a replay
    of the same tasks when the target is already current."""
    count = S1_COUNT
    keys = [f"o/{i:06d}" for i in range(count)]
    fill(stack, "bench-s1", count, 4096)
    target = stack.target.client()
    box = Box()
    mcs: list[Run] = []
    ours: dict[int, list[Run]] = {threads: [] for threads in S1_THREADS}
    replay: dict[int, list[Run]] = {threads: [] for threads in S1_THREADS}
    for i in range(S1_ROUNDS):  # interleaved: mc, ours × each setting, mc, ...
        target.create_bucket(Bucket=f"bench-s1-mc-{i}")
        mcs.append(mc(stack, "mirror", "--json", "minio/bench-s1", f"aws/bench-s1-mc-{i}"))
        for threads in S1_THREADS:
            dst = f"bench-s1-w{threads}-{i}"
            target.create_bucket(Bucket=dst)
            ours[threads].append(worker_run(stack, "bench-s1", dst, keys, threads))
            if target_count(stack, dst) != count:
                raise RuntimeError(f"{dst}: {target_count(stack, dst)} objects, not {count}")
            replay[threads].append(worker_run(stack, "bench-s1", dst, keys, threads))
    mc_s = median(mcs, lambda r: r.seconds)
    conditions = box.since()
    name = "S1: 5,000 × 4 KiB"
    rows: list[Row] = [
        (
            f"{name}, `mc mirror`",
            "objects/s; CPU-ms per object",
            f"{count / mc_s:.0f}/s",
            f"median of {S1_ROUNDS} ({rounds_s(mcs)}); CPU-ms/object: {cpu_ms(mcs, count, 'mc')}",
        ),
        (
            f"{name}, `mc mirror`",
            "S3 requests per object",
            per_object(mcs[0].requests, count),
            "round 1",
        ),
    ]
    for threads in S1_THREADS:
        runs, again = ours[threads], replay[threads]
        ours_s = median(runs, lambda r: r.seconds)
        setting = f"1 worker process, MIRROR_MAX_WORKERS={threads}"
        rows += [
            (
                f"{name} queued, {setting}",
                "objects/s, ours / `mc mirror`",
                f"**{mc_s / ours_s:.2f}×**",
                f"ours {count / ours_s:.0f}/s vs mc {count / mc_s:.0f}/s, medians of "
                f"{S1_ROUNDS} interleaved (ours {rounds_s(runs)}); target ≥ 1.0×; "
                f"{conditions}",
            ),
            (
                f"{name} queued, {setting}",
                "stack CPU-ms per object (client + MinIO ×2 + RabbitMQ), ours / `mc mirror`'s",
                f"{stack_ms(runs, count):.2f} / {stack_ms(mcs, count):.2f}",
                f"mc's ÷ ours **{stack_ms(mcs, count) / stack_ms(runs, count):.2f}×**: the "
                "objects/s ratio a CPU-saturated box tends to",
            ),
            (
                f"{name} queued, {setting}",
                "CPU-ms per new object",
                cpu_ms(runs, count, "worker"),
                f"medians; of the worker's, its main thread (pika) {main_ms(runs, count)}; "
                "target: worker ≤ 0.8",
            ),
            (
                f"{name} queued, {setting}",
                "S3 requests per new object",
                per_object(runs[0].requests, count),
                "round 1",
            ),
            (
                f"{name} replayed, target current, {setting}",
                "objects/s; CPU-ms per object",
                f"{count / median(again, lambda r: r.seconds):.0f}/s",
                f"median of {S1_ROUNDS}; CPU-ms/object: {cpu_ms(again, count, 'worker')}",
            ),
            (
                f"{name} replayed, target current, {setting}",
                "S3 requests per object",
                per_object(again[0].requests, count),
                "round 1",
            ),
        ]
    return rows


def bench_large(stack: Stack) -> list[Row]:
    """S2: 4 x 256 MiB against `mc mirror`, and one 6 GiB object against `mc cp` with
    the worker's peak RSS."""
    size, count = S2_SIZE, 4
    keys = [f"o/{i:06d}" for i in range(count)]
    fill(stack, "bench-s2", count, size)
    target = stack.target.client()
    mb = size * count / 1e6
    mcs: list[Run] = []
    ours: list[Run] = []
    for i in range(ROUNDS):
        target.create_bucket(Bucket=f"bench-s2-mc-{i}")
        mcs.append(mc(stack, "mirror", "--json", "minio/bench-s2", f"aws/bench-s2-mc-{i}"))
        drop(stack.target, f"bench-s2-mc-{i}")
        target.create_bucket(Bucket=f"bench-s2-ours-{i}")
        ours.append(worker_run(stack, "bench-s2", f"bench-s2-ours-{i}", keys, S2_THREADS))
        drop(stack.target, f"bench-s2-ours-{i}")
    mc_s, ours_s = median(mcs, lambda r: r.seconds), median(ours, lambda r: r.seconds)
    setting = f"1 worker process, MIRROR_MAX_WORKERS={S2_THREADS}"
    rows: list[Row] = [
        (
            f"S2: 4 × 256 MiB, {setting}",
            "MB/s, ours / `mc mirror`",
            f"**{mc_s / ours_s:.2f}×**",
            f"ours {mb / ours_s:.0f} MB/s vs mc {mb / mc_s:.0f} MB/s, medians of {ROUNDS} "
            f"interleaved (ours {rounds_s(ours)}, mc {rounds_s(mcs)}); target ≥ 1.0×",
        ),
        (
            "S2: 4 × 256 MiB",
            "CPU-ms per MB",
            f"{cpu_ms(ours, int(mb), 'worker')}; {cpu_ms(mcs, int(mb), 'mc')}",
            "medians",
        ),
    ]
    free = shutil.disk_usage(stack.root).free
    if free < BIG_FREE:
        reason = f"skipped: {free / GiB:.1f} GiB free under {stack.root}, needs 20 GiB"
        return [*rows, ("S2: one 6 GiB object", "MB/s, ours / `mc cp`", "n/a", reason)]
    source = stack.source.client()
    from boto3.s3.transfer import TransferConfig

    source.upload_fileobj(
        Pattern(BIG),
        "bench-s2",
        "six-gib",
        Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4),
    )
    target.create_bucket(Bucket="bench-s2-cp")
    theirs = mc(stack, "cp", "--json", "minio/bench-s2/six-gib", "aws/bench-s2-cp/six-gib")
    drop(stack.target, "bench-s2-cp")
    target.create_bucket(Bucket="bench-s2-big")
    mine = worker_run(stack, "bench-s2", "bench-s2-big", ["six-gib"], S2_THREADS)
    drop(stack.target, "bench-s2-big")
    source.delete_object(Bucket="bench-s2", Key="six-gib")
    big_mb = BIG / 1e6
    return [
        *rows,
        (
            f"S2: one 6 GiB object, {setting}",
            "MB/s, ours / `mc cp`",
            f"**{theirs.seconds / mine.seconds:.2f}×**",
            f"ours {big_mb / mine.seconds:.0f} MB/s vs mc cp {big_mb / theirs.seconds:.0f} MB/s "
            f"(one run each); CPU-ms/MB: {cpu_ms([mine], int(big_mb), 'worker')}, "
            f"mc {theirs.client_cpu * 1000 / big_mb:.2f}; target ≥ 1.0×",
        ),
        (
            "S2: one 6 GiB object",
            "peak RSS, worker / `mc cp`",
            f"**{mine.peak_rss / MiB:.0f} MiB** / {theirs.peak_rss / MiB:.0f} MiB",
            "VmHWM of each process; target (worker) ≤ 150 MiB",
        ),
    ]


S6_COUNT = 2000
S6_SIZE = 64 * 1024
S6_WORKERS = "auto"  # the default: the controller fits the copies in flight to the link
S6_LATENCY_MS = 25  # each way: ~50 ms round trips to the target


def acks_logged(log: Path) -> tuple[int, int, int]:
    """(deliveries, ack frames, single acks behind a longer copy) from the worker's last
    line; zeros from a worker that does not log them."""
    found = re.findall(
        r"(\d+) deliveries acked with (\d+) acks, (\d+) of them alone", log.read_text()
    )
    return tuple(int(n) for n in found[-1]) if found else (0, 0, 0)


def small_rate(
    stack: Stack, src: str, dst: str, keys: list[str], big: str | None, target_url: str
) -> tuple[float, tuple[int, int, int]]:
    """Small objects copied per second by one worker, timed from /readyz, and its acks.
    With `big` queued first, only while that copy runs: until it lands or the small ones
    are done."""
    publish(stack, src, ([big] if big else []) + keys)
    target = stack.target.client()

    def landed() -> bool:
        try:
            target.head_object(Bucket=dst, Key=big)
        except target.exceptions.ClientError:
            return False
        return True

    work = Worker(
        stack,
        src,
        dst,
        stack.root / f"{dst}.log",
        MIRROR_MAX_WORKERS=S6_WORKERS,
        AWS_URL=target_url,
    )
    try:
        work.ready()
        start = time.perf_counter()
        while True:
            big_done = bool(big) and landed()  # before the count: it may include the big one
            small = work.finished() - big_done
            if big_done or small >= len(keys):
                rate = small / (time.perf_counter() - start)
                break
            if time.perf_counter() - start > TIMEOUT_S:
                raise TimeoutError(f"S6: {small:.0f} small objects copied in {TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        # Every task done before the next round (its leftovers would count there), and
        # no copy in flight for SIGTERM to wait for.
        work.wait_for(len(keys) + bool(big))
    finally:
        work.stop()
    return rate, acks_logged(work.log)


def bench_head_of_line(stack: Stack) -> list[Row]:
    """S6: a 1 GiB task queued first, then 2,000 x 64 KiB, one worker, the target ~50 ms
    away (toxiproxy, 25 ms each way, as in issue 23: on loopback the 1 GiB copy is over in
    about a second): the small objects' rate while the large copy runs, against the same
    2,000 alone."""
    from toxiproxy import Toxiproxy

    toxiproxy = Toxiproxy(stack.root / "toxiproxy-s6").start()
    try:
        wan = toxiproxy.link("s6-target", stack.target.port)
        for stream in ("upstream", "downstream"):
            wan.add(f"latency-{stream}", "latency", stream, latency=S6_LATENCY_MS)
        return head_of_line(stack, wan.url())
    finally:
        toxiproxy.stop()


def head_of_line(stack: Stack, target_url: str) -> list[Row]:
    keys = [f"o/{i:06d}" for i in range(S6_COUNT)]
    fill(stack, "bench-s6", S6_COUNT, S6_SIZE)
    from boto3.s3.transfer import TransferConfig

    stack.source.client().upload_fileobj(
        Pattern(GiB),
        "bench-s6",
        "big",
        Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4),
    )
    target = stack.target.client()
    box = Box()
    alone: list[tuple[float, tuple[int, int, int]]] = []
    behind: list[tuple[float, tuple[int, int, int]]] = []
    for i in range(ROUNDS):  # interleaved
        for rates, big in ((alone, None), (behind, "big")):
            dst = f"bench-s6-{'big' if big else 'alone'}-{i}"
            target.create_bucket(Bucket=dst)
            rates.append(small_rate(stack, "bench-s6", dst, keys, big, target_url))
            drop(stack.target, dst)
    with_big = statistics.median(rate for rate, _ in behind)
    without = statistics.median(rate for rate, _ in alone)
    each = " vs ".join("/".join(f"{rate:.0f}" for rate, _ in runs) for runs in (behind, alone))
    delivered, frames, single = (sum(run[1][i] for run in alone) for i in range(3))
    acks = (
        f"ack frames per task, alone: {frames / delivered:.3f} ({single} single acks of "
        f"{delivered} tasks)"
        if delivered
        else "ack frames not logged by this worker"
    )
    return [
        (
            f"S6: 1 GiB queued first, then {S6_COUNT:,} × 64 KiB, target "
            f"~{2 * S6_LATENCY_MS} ms away, 1 worker process, MIRROR_MAX_WORKERS={S6_WORKERS}",
            "small objects/s while the 1 GiB copy runs / alone",
            f"**{with_big / without:.2f}×**",
            f"{with_big:.0f}/s vs {without:.0f}/s, medians of {ROUNDS} interleaved "
            f"({each} obj/s); target ≥ 0.90×; {acks}; {box.since()}",
        )
    ]


def bench_latency(stack: Stack) -> list[Row]:
    """S3: 50 PUT/s for 60 s through the webhook path; event time to verified copy."""
    return [latency_run(stack, queue_dir) for queue_dir in (True, False)]


def latency_run(stack: Stack, queue_dir: bool) -> Row:
    import json

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
        # Per-object lines (with latency_s) are debug-level: this scenario reads them.
        work = Worker(stack, "bench-s3", dst, log, MIRROR_DEBUG="true", **extra)
        env = env_for(stack, BUCKET_PAIR=f"minio/bench-s3:aws/{dst}", **extra)
        with open(stack.root / "s3-listener.log", "wb") as out:
            listen = subprocess.Popen(
                [CLI, "listen", "--mode", "webhook"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        work.ready()
        time.sleep(3)  # the listener up too before the clock starts
        rate, seconds, body = 50, 60, os.urandom(4096)
        start = time.perf_counter()
        for i in range(rate * seconds):
            client.put_object(Bucket="bench-s3", Key=f"o/{i:06d}", Body=body)
            time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        until(lambda: target_count(stack, dst) >= rate * seconds, poll=0.5)
        listen.terminate()
        listen.wait(60)
        work.stop()
    finally:
        source.stop()
    latencies = sorted(
        record["latency_s"]
        for record in map(json.loads, log.read_text().splitlines())
        if record.get("outcome") == "copied" and "latency_s" in record
    )
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    how = "with queue_dir (durable)" if queue_dir else "without queue_dir"
    return (
        f"S3: 50 PUT/s × 60 s, webhook {how} → worker",
        "event → verified copy p50 / p99",
        f"{p50:.2f} s / {p99:.2f} s",
        f"{len(latencies)} copies; MIRROR_DEBUG=true for the per-object lines; target p99 ≤ 1 s",
    )


def bench_backfill_listing(stack: Stack) -> list[Row]:
    """Backfill listing of 100,000 keys (dry run) against mc ls: keys/s, CPU, peak RSS.

    Twice: to an empty target (its listing is one page) and to a target that already
    holds every key (a re-run: both listings are full, twice the keys mc lists)."""
    count = 100_000
    fill(stack, "bench-bf", count, 0)
    stack.target.client().create_bucket(Bucket="bench-bf-empty")
    fill(stack, "bench-bf-full", count, 0, stack.target)
    targets = {"empty target": "bench-bf-empty", "target holding every key": "bench-bf-full"}
    theirs: list[Run] = []
    ours: dict[str, list[Run]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        theirs.append(mc(stack, "ls", "--recursive", "minio/bench-bf"))
        for name, bucket in targets.items():
            env = env_for(stack, BUCKET_PAIR=f"minio/bench-bf:aws/{bucket}")
            ours[name].append(
                run_child([CLI, "backfill", "--prefix", "o", "--dry-run"], env, stack)
            )
    mc_s = median(theirs, lambda r: r.seconds)
    mc_cpu = median(theirs, lambda r: r.client_cpu) * 1000 / count
    rows: list[Row] = []
    for name, runs in ours.items():
        mine = median(runs, lambda r: r.seconds)
        rows += [
            (
                f"backfill --dry-run listing 100,000 keys, {name}",
                "keys/s, ours / `mc ls --recursive`",
                f"{mc_s / mine:.2f}×",
                f"median of {ROUNDS}: ours {count / mine:.0f}/s (both sides listed, process "
                f"start included), mc ls {count / mc_s:.0f}/s (one side); "
                f"{rounds_s(runs)} vs {rounds_s(theirs)}",
            ),
            (
                f"backfill listing 100,000 keys, {name}",
                "CPU-ms per source key",
                f"{cpu_ms(runs, count, 'ours', 3)}; mc ls {mc_cpu:.3f}",
                "ours includes interpreter start-up",
            ),
            (
                f"backfill listing 100,000 keys, {name}",
                "peak RSS",
                f"{max(r.peak_rss for r in runs) / MiB:.0f} MiB",
                "target ≤ 100 MiB",
            ),
        ]
    return rows


def bench_reconcile(stack: Stack) -> list[Row]:
    """Reconcile of 2,000 small objects against bare `mc mirror`: to an empty bucket, then
    again with nothing to copy (S7's nightly case), ROUNDS of each interleaved."""
    fill(stack, "bench-small", 2000, 1024)
    ours: list[Run] = []
    theirs: list[Run] = []
    target = stack.target.client()
    box = Box()
    for i in range(ROUNDS):
        target.create_bucket(Bucket=f"bench-mc-{i}")
        theirs.append(mc(stack, "mirror", "--json", "minio/bench-small", f"aws/bench-mc-{i}"))
        target.create_bucket(Bucket=f"bench-ours-{i}")
        ours.append(growth.reconcile(stack, "bench-small", f"bench-ours-{i}"))
    copied = box.since()
    box = Box()
    again: list[Run] = []
    again_mc: list[Run] = []
    for i in range(ROUNDS):  # nothing to copy
        again_mc.append(mc(stack, "mirror", "--json", "minio/bench-small", f"aws/bench-mc-{i}"))
        again.append(growth.reconcile(stack, "bench-small", f"bench-ours-{i}"))
    name = "reconcile, 2,000 × 1 KiB"
    mirror = "bare `mc mirror`"
    return [
        *growth.compared(f"{name}, empty target", mirror, ours, theirs, copied),
        *growth.compared(f"{name}, nothing to copy", mirror, again, again_mc, box.since()),
    ]


SCENARIOS: dict[str, Callable[[Stack], list[Row]]] = {
    "backfill": bench_backfill_listing,
    "latency": bench_latency,
    "reconcile": bench_reconcile,
    "growth": growth.bench_growth,
    "small": bench_small,
    "large": bench_large,
    "head-of-line": bench_head_of_line,
    "wan-small": bench_wan_small,
    "wan-large": bench_wan_large,
    "backlog": bench_backlog,
    "memory": bench_memory,
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
    rows: list[Row] = []
    try:
        for name in chosen:
            rows += SCENARIOS[name](stack)
            print(f"[bench] {name} done", file=sys.stderr, flush=True)
    finally:
        stack.stop()
        print("| benchmark | measure | result | context |\n|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
