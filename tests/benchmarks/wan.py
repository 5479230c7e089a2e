"""S4 and S5: the target ~50 ms away (toxiproxy, 25 ms each way, in front of the target
MinIO), where concurrency and pipelining decide (design 12, issue 23).

- S4 (`wan-small`): 2,000 x 64 KiB, one worker process with the defaults
  (MIRROR_MAX_WORKERS=auto), against `mc mirror` and `rclone copy --transfers 16`; and
  workers at the old fixed 16 and at auto's hard maximum (64) for context.
- S5 (`wan-large`): one 1 GiB object, then four 256 MiB, against `mc mirror`; MB/s and
  the worker's peak RSS.

Every client goes through the same link; each round runs them in turn (interleaved),
and ratios are of medians, as in run.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness import (
    BIN,
    ROUNDS,
    Box,
    GiB,
    MiB,
    Pattern,
    Row,
    Run,
    Stack,
    Worker,
    cpu_ms,
    cpu_s,
    delta,
    drop,
    env_for,
    fill,
    hwm,
    median,
    publish,
    rounds_s,
    run_child,
    s3_requests,
    servers_cpu,
    target_count,
)

from replicator.concurrency import CEILING, START

ONE_WAY_MS = 25  # each way: ~50 ms round trips to the target
S4_COUNT = 2000
S4_SIZE = 64 * 1024
RCLONE_TRANSFERS = 16
OLD_DEFAULT = 16  # MIRROR_MAX_WORKERS before auto fitted it


@contextmanager
def far_target(stack: Stack, name: str) -> Iterator[str]:
    """A toxiproxy link in front of the target MinIO; yields its URL."""
    from toxiproxy import Toxiproxy

    toxiproxy = Toxiproxy(stack.root / f"toxiproxy-{name}").start()
    try:
        link = toxiproxy.link(name, stack.target.port)
        for stream in ("upstream", "downstream"):
            link.add(f"latency-{stream}", "latency", stream, latency=ONE_WAY_MS)
        yield link.url()
    finally:
        toxiproxy.stop()


def mc_far(stack: Stack, url: str, *args: str) -> Run:
    """`mc` with the target alias through the link."""
    env = env_for(stack)
    for alias, server, where in (
        ("minio", stack.source, stack.source.url),
        ("aws", stack.target, url),
    ):
        env[f"MC_HOST_{alias}"] = where.replace(
            "://", f"://{server.access_key}:{server.secret_key}@"
        )
    return run_child([str(BIN / "mc"), *args], env, stack)


def rclone_binary() -> str:
    """Debian's rclone, installed when missing (`apt-get`, as deploy/local/install.sh)."""
    found = shutil.which("rclone")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], check=True)
    return shutil.which("rclone") or "rclone"


def rclone(stack: Stack, url: str, src: str, dst: str) -> Run:
    """`rclone copy --transfers 16` from the source bucket to the target through the link,
    both remotes configured by environment variables only (ours, AWS_* and the CA
    bundles among them, are left out: rclone's AWS SDK would read them)."""
    env = {k: v for k, v in env_for(stack).items() if not k.startswith(("AWS_", "MINIO_"))}
    for remote, server, where in (
        ("SRC", stack.source, stack.source.url),
        ("DST", stack.target, url),
    ):
        env.update(
            {
                f"RCLONE_CONFIG_{remote}_TYPE": "s3",
                f"RCLONE_CONFIG_{remote}_PROVIDER": "Minio",
                f"RCLONE_CONFIG_{remote}_ENDPOINT": where,
                f"RCLONE_CONFIG_{remote}_ACCESS_KEY_ID": server.access_key,
                f"RCLONE_CONFIG_{remote}_SECRET_ACCESS_KEY": server.secret_key,
                f"RCLONE_CONFIG_{remote}_REGION": "us-east-1",
            }
        )
    config = stack.root / "rclone.conf"
    config.touch()
    argv = [rclone_binary(), "--config", str(config), "copy", "--transfers",
            str(RCLONE_TRANSFERS), f"src:{src}", f"dst:{dst}"]  # fmt: skip
    return run_child(argv, env, stack)


def limits_logged(log) -> tuple[int, int]:
    """(highest, last) limit of copies in flight auto chose, from the worker's log."""
    found = [
        int(m[1])
        for line in log.read_text().splitlines()
        if (m := re.search(r"copies in flight: \d+ -> (\d+)", line))
    ]
    return (max(found), found[-1]) if found else (0, 0)


def worker_far(stack: Stack, url: str, src: str, dst: str, keys: list[str], workers: str) -> Run:
    """harness.worker_run with the target through the link: tasks queued first, timed from
    /readyz to the last task; `extra` holds auto's highest and last limit."""
    publish(stack, src, keys)
    requests = s3_requests(stack)
    log = stack.root / f"{dst}.log"
    work = Worker(stack, src, dst, log, MIRROR_MAX_WORKERS=workers, AWS_URL=url)
    try:
        work.ready()
        start = time.perf_counter()
        client, servers = cpu_s(work.proc.pid), servers_cpu(stack)
        work.wait_for(len(keys))
        seconds = time.perf_counter() - start
        client = cpu_s(work.proc.pid) - client
        servers = delta(servers, servers_cpu(stack))
        peak = hwm(work.proc.pid)
    finally:
        work.stop()
    highest, last = limits_logged(log)
    extra = {"highest": highest, "last": last}
    return Run(seconds, client, servers, delta(requests, s3_requests(stack)), peak, extra)


def bench_wan_small(stack: Stack) -> list[Row]:
    """S4: 2,000 x 64 KiB to a target ~50 ms away: ours (defaults) against mc mirror and
    rclone copy --transfers 16."""
    count, keys = S4_COUNT, [f"o/{i:06d}" for i in range(S4_COUNT)]
    fill(stack, "bench-s4", count, S4_SIZE)
    target = stack.target.client()
    # Beside the default: the old fixed 16, and the hard maximum (what the machine allows).
    fixed = (str(OLD_DEFAULT), str(CEILING))
    runs: dict[str, list[Run]] = {"mc": [], "rclone": [], "auto": [], **{n: [] for n in fixed}}
    box = Box()
    with far_target(stack, "s4") as url:
        for i in range(ROUNDS):  # interleaved: each client once per round
            for name in runs:
                dst = f"bench-s4-{name}-{i}"
                target.create_bucket(Bucket=dst)
                if name == "mc":
                    runs[name].append(
                        mc_far(stack, url, "mirror", "--json", "minio/bench-s4", f"aws/{dst}")
                    )
                elif name == "rclone":
                    runs[name].append(rclone(stack, url, "bench-s4", dst))
                else:
                    runs[name].append(worker_far(stack, url, "bench-s4", dst, keys, name))
                if target_count(stack, dst) != count:
                    raise RuntimeError(f"{dst}: {target_count(stack, dst)} objects, not {count}")
                drop(stack.target, dst)
    conditions = box.since()
    rate = {name: count / median(r, lambda run: run.seconds) for name, r in runs.items()}
    reached = "/".join(f"{r.extra['highest']:.0f}" for r in runs["auto"])
    settled = "/".join(f"{r.extra['last']:.0f}" for r in runs["auto"])
    each = "; ".join(f"{name} {rounds_s(r)}" for name, r in runs.items())
    others = "".join(
        f"fixed {n}: {rate[n]:.0f}/s ({rate[n] / rate['mc']:.2f}× mc), " for n in fixed
    )
    name = f"S4: {count:,} × 64 KiB, target ~{2 * ONE_WAY_MS} ms away, 1 worker process"
    return [
        (
            f"{name}, defaults (MIRROR_MAX_WORKERS=auto)",
            "objects/s, ours / `mc mirror`; ours / `rclone copy --transfers 16`",
            f"**{rate['auto'] / rate['mc']:.2f}×**; **{rate['auto'] / rate['rclone']:.2f}×**",
            f"ours {rate['auto']:.0f}/s, mc {rate['mc']:.0f}/s, rclone {rate['rclone']:.0f}/s, "
            + others
            + f"medians of {ROUNDS} interleaved ({each}); targets ≥ 4× mc, ≥ 2× rclone; "
            + conditions,
        ),
        (
            f"{name}, defaults",
            "auto's limit of copies in flight: highest / at the end, per round",
            f"{reached} / {settled}",
            f"start {START}, hard maximum {CEILING}",
        ),
        (
            f"{name}, defaults",
            "CPU-ms per object: the client, then each server",
            cpu_ms(runs["auto"], count, "worker"),
            f"{cpu_ms(runs['mc'], count, 'mc')}; {cpu_ms(runs['rclone'], count, 'rclone')}; "
            "medians",
        ),
    ]


def bench_wan_large(stack: Stack) -> list[Row]:
    """S5: one 1 GiB object, then four 256 MiB, to a target ~50 ms away, against mc mirror;
    the worker's peak RSS."""
    source = stack.source.client()
    from boto3.s3.transfer import TransferConfig

    source.create_bucket(Bucket="bench-s5-one")
    chunks = TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4)
    source.upload_fileobj(Pattern(GiB), "bench-s5-one", "one-gib", Config=chunks)
    fill(stack, "bench-s5-four", 4, 256 * MiB)
    cases = {
        "bench-s5-one": (["one-gib"], GiB),
        "bench-s5-four": ([f"o/{i:06d}" for i in range(4)], GiB),
    }
    target = stack.target.client()
    runs: dict[tuple[str, str], list[Run]] = {
        (case, who): [] for case in cases for who in ("mc", "ours")
    }
    box = Box()
    with far_target(stack, "s5") as url:
        for i in range(ROUNDS):
            for case, (keys, _) in cases.items():
                for who in ("mc", "ours"):
                    dst = f"{case}-{who}-{i}"
                    target.create_bucket(Bucket=dst)
                    if who == "mc":
                        run = mc_far(stack, url, "mirror", "--json", f"minio/{case}", f"aws/{dst}")
                    else:
                        run = worker_far(stack, url, case, dst, keys, "auto")
                    runs[(case, who)].append(run)
                    drop(stack.target, dst)
    conditions = box.since()
    rows: list[Row] = []
    for case, (_, size) in cases.items():
        mb = size / 1e6
        mc_s = median(runs[(case, "mc")], lambda r: r.seconds)
        ours = runs[(case, "ours")]
        ours_s = median(ours, lambda r: r.seconds)
        size_one = case.endswith("one")
        what = "one 1 GiB object" if size_one else "4 × 256 MiB"
        rows += [
            (
                f"S5: {what}, target ~{2 * ONE_WAY_MS} ms away, 1 worker process, defaults",
                "MB/s, ours / `mc mirror`",
                f"**{mc_s / ours_s:.2f}×**",
                f"ours {mb / ours_s:.0f} MB/s vs mc {mb / mc_s:.0f} MB/s, medians of {ROUNDS} "
                f"interleaved (ours {rounds_s(ours)}, mc {rounds_s(runs[(case, 'mc')])}); "
                f"target {'≥ 2×' if size_one else 'reported'}; {conditions}",
            ),
            (
                f"S5: {what}",
                "worker peak RSS (VmHWM); CPU-ms per MB",
                f"**{max(r.peak_rss for r in ours) / MiB:.0f} MiB**; worker "
                f"{median(ours, lambda r: r.client_cpu) * 1000 / mb:.2f}, mc "
                f"{median(runs[(case, 'mc')], lambda r: r.client_cpu) * 1000 / mb:.2f}",
                "highest of the rounds; target ≤ 150 MiB",
            ),
        ]
    return rows
