"""`make demo`: bring up the local stack, load sample data, replicate it end to end.

Part 1, the nightly job: reconcile twice (the second run finds nothing to copy) and
show what the fake Slack received. Part 2, near-real-time: start a worker and the
webhook listener, upload new objects and watch them arrive. Then stop everything.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from stack import BIN, MinioServer, Stack, free_port, wait_until

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


def keys_on(client, bucket: str) -> set[str]:
    return {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def event_pipeline(stack: Stack, env: dict[str, str], webhook: str) -> bool:
    """Worker + webhook listener: new uploads arrive on the target within seconds."""
    source, target = stack.source.client(), stack.target.client()
    source.put_bucket_notification_configuration(
        Bucket="photos",
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": "arn:minio:sqs::demo:webhook", "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    logs = stack.root / "demo-logs"
    logs.mkdir()
    procs = []
    for name, args in (("worker", ["work"]), ("listener", ["listen", "--mode", "webhook"])):
        port = free_port()
        with open(logs / f"{name}.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [CLI, *args],
                    env={**env, "WEBHOOK_ADDRESS": webhook, "METRICS_ADDRESS": f"127.0.0.1:{port}"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        print(f"started `minio-s3-mirror {' '.join(args)}` (health on 127.0.0.1:{port})")
    try:
        time.sleep(2)  # let both connect
        new = {f"2025/01/24/new photo {i}.jpg": os.urandom(64 * 1024) for i in range(3)}
        start = time.monotonic()
        for key, body in new.items():
            source.put_object(Bucket="photos", Key=key, Body=body, ContentType="image/jpeg")
            print(f"uploaded {key!r} to the source")
        wait_until(lambda: set(new) <= keys_on(target, "photos-backup"), 60, "the new objects")
        print(f"all {len(new)} arrived on the target {time.monotonic() - start:.1f}s after upload")
        return all(
            target.get_object(Bucket="photos-backup", Key=k)["Body"].read() == b
            for k, b in new.items()
        )
    except TimeoutError as exc:
        print(f"{exc}; logs in {logs}")
        return False
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)


def main() -> int:
    banner("starting the local stack: source MinIO, target MinIO (for S3), RabbitMQ, Slack")
    stack = Stack(rabbitmq=True)
    webhook, token = f"127.0.0.1:{free_port()}", secrets.token_hex(16)
    stack.source = MinioServer(
        "source",
        stack.root,
        {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_demo": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_demo": f"http://{webhook}/",
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_demo": token,
            "MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_demo": str(stack.root / "events"),
        },
    )
    stack.start()
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
            "WEBHOOK_AUTH_TOKEN": token,
        }
        banner("minio-s3-mirror reconcile  (BUCKET_PAIR=minio/photos:aws/photos-backup)")
        first = reconcile(env)
        banner("the same command again: nothing left to copy")
        second = reconcile(env)

        banner("what the (fake) Slack channel received")
        for message in stack.slack.messages():
            print(f"  {message['text']}")

        landed = keys_on(target, "photos-backup")
        expected = {key for key in SAMPLES if not key.endswith(".tmp")}
        if landed != expected:
            print(f"missing on target: {sorted(expected - landed)}")

        banner("near-real-time: MinIO webhook -> listener -> RabbitMQ -> worker -> target")
        live = event_pipeline(stack, env, webhook)

        ok = first == 0 and second == 0 and landed == expected and live
        banner("demo " + ("succeeded: every sample object is on the target" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
