"""`make demo`: bring up the local stack, load sample data, replicate it end to end.

Runs the nightly reconcile twice (the second run finds nothing to copy), prints what
the fake Slack received, checks the target, and stops the stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack import BIN, Stack

CLI = str(Path(sys.executable).with_name("minio-s3-mirror"))
SAMPLES = {
    "2025/01/22/cat.jpg": ("image/jpeg", os.urandom(256 * 1024)),
    "2025/01/22/notes/회의록 1월.txt": ("text/plain; charset=utf-8", "안녕하세요\n".encode()),
    "2025/01/23/plan+budget 100%.csv": ("text/csv", b"item,cost\nminio,0\n"),
    "2025/01/23/video.mp4": ("video/mp4", os.urandom(8 * 1024 * 1024)),
    "tmp/upload.tmp": ("application/octet-stream", b"excluded by MIRROR_EXCLUDE"),
}


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def reconcile(env: dict[str, str]) -> int:
    return subprocess.run([CLI, "reconcile"], env=env, check=False).returncode


def main() -> int:
    banner("starting the local stack (source MinIO, target MinIO standing in for S3, Slack)")
    stack = Stack().start()
    try:
        source, target = stack.source.client(), stack.target.client()
        source.create_bucket(Bucket="photos")
        target.create_bucket(Bucket="photos-backup")
        for key, (content_type, body) in SAMPLES.items():
            source.put_object(Bucket="photos", Key=key, Body=body, ContentType=content_type)
        print(f"source {stack.source.url}: bucket photos with {len(SAMPLES)} objects")
        print(f"target {stack.target.url}: empty bucket photos-backup")

        env = {
            **os.environ,
            **stack.env(),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "SERVICE": "demo-mirror",
            "BUCKET_PAIR": "minio/photos:aws/photos-backup",
            "MIRROR_EXCLUDE": "*.tmp",
        }
        banner("minio-s3-mirror reconcile  (BUCKET_PAIR=minio/photos:aws/photos-backup)")
        first = reconcile(env)
        banner("the same command again: nothing left to copy")
        second = reconcile(env)

        banner("what the (fake) Slack channel received")
        for message in stack.slack.messages():
            print(f"  {message['text']}")

        landed = {
            obj["Key"] for obj in target.list_objects_v2(Bucket="photos-backup").get("Contents", [])
        }
        expected = {key for key in SAMPLES if not key.endswith(".tmp")}
        ok = first == 0 and second == 0 and landed == expected
        banner("demo " + ("succeeded: every sample object is on the target" if ok else "FAILED"))
        if landed != expected:
            print(f"missing on target: {sorted(expected - landed)}")
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
