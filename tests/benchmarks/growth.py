"""S7 growth: the nightly reconcile and `backfill --dry-run` as the key count grows,
each against its mc reference in the same run (time ratio, peak RSS, S3 requests).

Key counts: GROWTH_KEYS (default "10000,100000"; 1,000,000 works too, not in the default:
about 9 minutes to load, 20 to measure and 15 to remove the stack's directory here). The
first LOADED keys are real uploads: tars of 1 KiB objects that MinIO unpacks itself
("snowball"). Keys beyond them are made on disk: each a new object directory holding a
hard link to a loaded key's `xl.meta`, the one file MinIO's single-drive backend wrote
for that key (a 1 KiB object lives inline in it, and it names no key); MinIO lists and
serves them as it does any object, with the loaded key's bytes, ETag and time.
Above GROWTH_COPY_UP_TO keys (default 100000) the copy-everything case is not run (at a
million keys each of its four runs takes over half an hour): both targets are made the
same way instead, as full copies of the source for the nothing-to-copy case.

Per key count, on one source bucket:
- copy everything: bare `mc mirror` into one empty bucket, `reconcile` into another, twice
  each in the order mc, ours, ours, mc (a copy of 100,000 objects takes minutes);
- nothing to copy: the same two again, ROUNDS times interleaved (the nightly common case);
- `backfill --dry-run` against the target holding every key, and `mc ls --recursive` of
  the source, ROUNDS times interleaved.
Ours runs with the seed's variables only (MINIO_*, AWS_*, BUCKET_PAIR): no Slack, no
RabbitMQ, and none of the machine's CA bundles (the endpoints are plain http).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import (
    CLI,
    ROUNDS,
    Box,
    MiB,
    MinioServer,
    Row,
    Run,
    Stack,
    drop,
    env_for,
    mc,
    median,
    rounds_s,
    run_child,
    target_count,
)

COUNTS = tuple(int(n) for n in os.environ.get("GROWTH_KEYS", "10000,100000").split(","))
SIZE = 1024
BATCH = 5000  # objects per tar
LOADERS = 4  # tars unpacked at once
LOADED = 100_000  # keys uploaded; the rest are linked on disk
COPY_UP_TO = int(os.environ.get("GROWTH_COPY_UP_TO", "100000"))
NOT_OURS = ("RABBITMQ_URL", "SLACK_BOT_TOKEN", "SLACK_CHANNEL_ID", "SLACK_API_URL")
CA_BUNDLES = ("AWS_CA_BUNDLE", "MINIO_CA_BUNDLE", "MIRROR_CA_BUNDLE")


def load(stack: Stack, bucket: str, count: int) -> None:
    """`count` objects of SIZE bytes (o/0000000 ...): up to LOADED from tars that MinIO
    unpacks itself, the rest linked on disk (the module's docstring)."""
    client = stack.source.client()
    client.create_bucket(Bucket=bucket)
    body = os.urandom(SIZE)
    loaded = min(count, LOADED)

    def one(start: int) -> None:
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w") as tar:
            for i in range(start, min(start + BATCH, loaded)):
                entry = tarfile.TarInfo(f"o/{i:07d}")
                entry.size = SIZE
                tar.addfile(entry, io.BytesIO(body))
        client.put_object(
            Bucket=bucket,
            Key=f"batch-{start}.tar",
            Body=packed.getvalue(),
            Metadata={"snowball-auto-extract": "true"},
        )

    with ThreadPoolExecutor(LOADERS) as pool:
        list(pool.map(one, range(0, loaded, BATCH)))
    keys = on_disk(stack.source, bucket)
    if count > loaded and os.listdir(keys / f"{0:07d}") != ["xl.meta"]:
        raise RuntimeError(f"{keys}: an object is more than its xl.meta; cannot link keys")
    for i in range(loaded, count):
        (keys / f"{i:07d}").mkdir()
        os.link(keys / f"{i % loaded:07d}" / "xl.meta", keys / f"{i:07d}" / "xl.meta")


def on_disk(server: MinioServer, bucket: str) -> Path:
    """Where MinIO's single-drive backend keeps the bucket's o/ keys: one directory each."""
    return server.dir / "data" / bucket / "o"


def clone(stack: Stack, src: str, dst: str) -> None:
    """`dst` on the target holding the source's objects as they are: nothing to copy.
    Linked before the bucket is first listed, so no listing cache predates them."""
    stack.target.client().create_bucket(Bucket=dst)
    keys = on_disk(stack.source, src)
    subprocess.run(["cp", "-al", str(keys), str(on_disk(stack.target, dst))], check=True)


def nightly_env(stack: Stack, src: str, dst: str) -> dict[str, str]:
    env = env_for(stack, BUCKET_PAIR=f"minio/{src}:aws/{dst}")
    for name in NOT_OURS + CA_BUNDLES:
        env.pop(name, None)
    return env


def reconcile(stack: Stack, src: str, dst: str) -> Run:
    return run_child([CLI, "reconcile"], nightly_env(stack, src, dst), stack)


def requests_text(run: Run) -> str:
    return ", ".join(f"{name} {n:.0f}" for name, n in run.requests.items() if n)


def compared(name: str, peer: str, ours: list[Run], theirs: list[Run], context: str) -> list[Row]:
    """Time ratio (medians), peak RSS and round 1's S3 requests, ours against `peer`'s."""
    mine, its = median(ours, lambda r: r.seconds), median(theirs, lambda r: r.seconds)
    rss = [max(r.peak_rss for r in runs) / MiB for runs in (ours, theirs)]
    return [
        (
            name,
            f"time, ours / {peer}",
            f"**{mine / its:.2f}×**",
            f"medians of {len(ours)} (ours {rounds_s(ours)}, {peer} {rounds_s(theirs)}); {context}",
        ),
        (name, f"peak RSS (VmHWM), ours / {peer}", f"{rss[0]:.0f} MiB / {rss[1]:.0f} MiB", ""),
        (name, "S3 requests, ours", requests_text(ours[0]), f"{peer}: {requests_text(theirs[0])}"),
    ]


def copy_everything(
    stack: Stack, src: str, by_mc: str, by_us: str, count: int
) -> tuple[list[Run], list[Run], str]:
    """Both into empty buckets, twice each in the order mc, ours, ours, mc: a later run
    writes to a target that already holds the earlier runs' objects, so the second pair
    starts from empty buckets again. Leaves both targets full."""
    target = stack.target.client()
    box = Box()
    copy_mc: list[Run] = []
    copy_us: list[Run] = []
    for turn, ours in enumerate((False, True, True, False)):
        if turn == 2:
            for full in (by_mc, by_us):
                drop(stack.target, full)
        bucket = by_us if ours else by_mc
        target.create_bucket(Bucket=bucket)
        if not ours:
            copy_mc.append(mc(stack, "mirror", "--json", f"minio/{src}", f"aws/{bucket}"))
            continue
        copy_us.append(reconcile(stack, src, bucket))
        if target_count(stack, bucket) != count:
            raise RuntimeError(f"{bucket}: {target_count(stack, bucket)} objects, not {count}")
    return copy_mc, copy_us, box.since()


def growth(stack: Stack, count: int) -> list[Row]:
    src, by_mc, by_us = f"growth-{count}", f"growth-{count}-mc", f"growth-{count}-ours"
    load(stack, src, count)
    if count > COPY_UP_TO:
        for bucket in (by_mc, by_us):
            clone(stack, src, bucket)
        copy_mc, copy_us, copied = [], [], ""
    else:
        copy_mc, copy_us, copied = copy_everything(stack, src, by_mc, by_us, count)
    box = Box()
    again_mc: list[Run] = []
    again_us: list[Run] = []
    listed_mc: list[Run] = []
    listed_us: list[Run] = []
    for _ in range(ROUNDS):
        again_mc.append(mc(stack, "mirror", "--json", f"minio/{src}", f"aws/{by_mc}"))
        again_us.append(reconcile(stack, src, by_us))
        listed_mc.append(mc(stack, "ls", "--recursive", f"minio/{src}"))
        env = nightly_env(stack, src, by_us)
        listed_us.append(run_child([CLI, "backfill", "--prefix", "o", "--dry-run"], env, stack))
    repeated = box.since()
    if count <= COPY_UP_TO:  # linked keys go with the stack's directory, all at once
        for bucket in (by_mc, by_us):
            drop(stack.target, bucket)
        drop(stack.source, src)
    keys = f"{count:,} × 1 KiB"
    nothing = f"S7: reconcile, {keys}, nothing to copy"
    everything = f"S7: reconcile, {keys}, copy everything"
    backfill = f"S7: backfill --dry-run, {keys}, target holding every key"
    mirror = "bare `mc mirror`"
    return [
        *compared(nothing, mirror, again_us, again_mc, f"target ≤ 1.2×; {repeated}"),
        *(
            compared(everything, mirror, copy_us, copy_mc, f"target ≤ 1.0×; {copied}")
            if copy_us
            else [(everything, "time", "not run", f"above GROWTH_COPY_UP_TO={COPY_UP_TO}")]
        ),
        *compared(backfill, "`mc ls --recursive`", listed_us, listed_mc, repeated),
    ]


def bench_growth(stack: Stack) -> list[Row]:
    """S7: see the module's docstring."""
    rows: list[Row] = []
    for count in COUNTS:
        rows += growth(stack, count)
    return rows
