"""Memory under mixed sizes: one worker's peak RSS copying objects of 1-16 MiB (held whole,
from the 64 MiB body budget) with three 200 MiB ones (parts, from the 48 MiB part budget)
mixed in, at MIRROR_MAX_WORKERS auto, 8 and 64 (auto's hard maximum): the memory a
deployment must allow, whatever the number of copies. `mc mirror` of the same objects is
the peer in the same run."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from harness import MiB, Row, Stack, Worker, drop, mc, publish

SMALL = 300  # objects of 1-16 MiB, sizes drawn from a fixed seed
LARGE = 3  # objects of 200 MiB
COPIES = ("auto", "8", "64")


def load(stack: Stack, bucket: str) -> dict[str, int]:
    client = stack.source.client()
    client.create_bucket(Bucket=bucket)
    draw = random.Random(7)
    sizes = {f"m/{i:04d}": draw.randint(MiB, 16 * MiB) for i in range(SMALL)}
    sizes.update({f"m/large-{i}": 200 * MiB - i for i in range(LARGE)})
    blob = os.urandom(200 * MiB)

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=blob[: sizes[key]])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, sizes))
    return sizes


def bench_memory(stack: Stack) -> list[Row]:
    src = "bench-memory"
    sizes = load(stack, src)
    keys = list(sizes)
    random.Random(7).shuffle(keys)  # the large ones among the small
    total = sum(sizes.values()) / MiB
    rows: list[Row] = []
    for copies in COPIES:
        dst = f"bench-memory-{copies}"
        stack.target.client().create_bucket(Bucket=dst)
        publish(stack, src, keys)
        work = Worker(stack, src, dst, stack.root / f"{dst}.log", MIRROR_MAX_WORKERS=copies)
        try:
            work.ready()
            start = time.perf_counter()
            work.wait_for(len(keys))
            seconds = time.perf_counter() - start
        finally:
            peak = work.stop()
        drop(stack.target, dst)
        rows.append(
            (
                f"memory: {SMALL} × 1-16 MiB and {LARGE} × 200 MiB ({total:,.0f} MiB), "
                f"1 worker process, MIRROR_MAX_WORKERS={copies}",
                "worker peak RSS (VmHWM); MB/s",
                f"**{peak / MiB:.0f} MiB**; {total * MiB / 1e6 / seconds:.0f} MB/s",
                "target: within the worker's 256Mi limit, whatever the copies",
            )
        )
    stack.target.client().create_bucket(Bucket="bench-memory-mc")
    theirs = mc(stack, "mirror", "--json", f"minio/{src}", "aws/bench-memory-mc")
    drop(stack.target, "bench-memory-mc")
    drop(stack.source, src)
    rows.append(
        (
            "memory: the same objects, `mc mirror`",
            "peak RSS (VmHWM); MB/s",
            f"{theirs.peak_rss / MiB:.0f} MiB; {total * MiB / 1e6 / theirs.seconds:.0f} MB/s",
            "peer, same run",
        )
    )
    return rows
