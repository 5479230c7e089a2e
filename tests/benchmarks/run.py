"""`make bench`: performance as ratios against `mc mirror`, measured in one run.

Usage: run.py [scenario ...]   (default: all). Prints a Markdown table for the README.
The machine is shared and noisy, so each side runs several times, interleaved, and the
ratio of medians is reported; absolute times are printed only as context.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "local"))

from stack import BIN, Stack  # noqa: E402

CLI = str(Path(sys.executable).with_name("minio-s3-mirror"))
ROUNDS = 3
Row = tuple[str, str, str, str]


def fill(stack: Stack, bucket: str, count: int, size: int) -> None:
    client = stack.source.client()
    client.create_bucket(Bucket=bucket)
    body = os.urandom(size)
    with ThreadPoolExecutor(16) as pool:
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
    ours, theirs = [], []
    target = stack.target.client()
    for i in range(ROUNDS):
        for side, run, times in (("mc", mc_mirror, theirs), ("ours", reconcile, ours)):
            dst = f"bench-{side}-{i}"
            target.create_bucket(Bucket=dst)
            times.append(timed(lambda run=run, dst=dst: run(stack, "bench-small", dst)))
    ratio = statistics.median(ours) / statistics.median(theirs)
    context = (
        f"median of {ROUNDS}: ours {statistics.median(ours):.2f}s, "
        f"mc {statistics.median(theirs):.2f}s (includes our verify pass)"
    )
    return [
        (
            "reconcile, 2,000 × 1 KiB, empty target",
            "time ours / mc mirror",
            f"{ratio:.2f}×",
            context,
        )
    ]


SCENARIOS: dict[str, Callable[[Stack], list[Row]]] = {"reconcile": bench_reconcile}


def main(names: list[str]) -> None:
    chosen = names or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    stack = Stack().start()
    try:
        rows = [row for name in chosen for row in SCENARIOS[name](stack)]
    finally:
        stack.stop()
    print("| benchmark | measure | result | context |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
