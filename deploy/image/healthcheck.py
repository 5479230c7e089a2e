"""The image's HEALTHCHECK: `listen` and `work` must answer /healthz on METRICS_ADDRESS;
any other command (reconcile, backfill, check: one-shot) is healthy while it runs.

Standard library only; reads the container's processes, so it holds whatever the
container's command is and whether or not an init process is PID 1.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

SERVING = {"listen", "work"}


def serving() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked
            continue
        names = [Path(word).name for word in argv]
        if "minio-s3-mirror" in names:
            after = argv[names.index("minio-s3-mirror") + 1 :]
            command = next((word for word in after if not word.startswith("-")), "")
            if command in SERVING:
                return True
    return False


def main() -> int:
    if not serving():
        return 0
    host, _, port = os.environ.get("METRICS_ADDRESS", "0.0.0.0:9100").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
