"""`check`: is this setup able to replicate? One line per part, with the seed's hint."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from . import broker, slack, topology
from .config import Settings
from .reconcile import troubleshoot
from .reconcile.mc import McMissing, find_binary, plain_environment
from .s3 import client

PROBE_PREFIX = ".minio-s3-mirror-check/"


@dataclass
class Check:
    name: str
    status: str  # "ok" | "FAIL" | "skip"
    detail: str
    hints: tuple[str, ...] = field(default_factory=tuple)


def s3_failure(name: str, exc: Exception) -> Check:
    text, code = str(exc), ""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code"))
        text = f"{code}: {text}"
    cause, detail = troubleshoot.diagnose(text)
    if code in ("NoSuchBucket", "404"):  # HEAD answers carry no error code, only 404
        cause, detail = troubleshoot.FAILED_TO_ACCESS_ALIAS, "bucket does not exist"
    summary = f"{cause.title} ({detail or cause.meaning}): {text[:200]}"
    return Check(name, "FAIL", summary, cause.hints)


def attempt(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, "ok", probe())
    except Exception as exc:
        return s3_failure(name, exc)


def source_checks(settings: Settings) -> list[Check]:
    s3 = client(settings.source, settings, 4)

    def readable(bucket: str) -> str:
        found = s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
        if found:
            s3.get_object(Bucket=bucket, Key=found[0]["Key"], Range="bytes=0-0")["Body"].read()
            return "listed and read an object"
        return "listed (empty bucket)"

    buckets = sorted({p.source_bucket for p in settings.pairs})
    return [attempt(f"source {b}", lambda b=b: readable(b)) for b in buckets]


def target_checks(settings: Settings, read_only: bool) -> list[Check]:
    s3 = client(settings.target, settings, 4)

    def writable(bucket: str) -> str:
        s3.head_bucket(Bucket=bucket)
        if read_only:
            return "reachable (write not probed: --read-only)"
        key = f"{PROBE_PREFIX}{uuid.uuid4()}"
        s3.put_object(Bucket=bucket, Key=key, Body=b"minio-s3-mirror check")
        s3.delete_object(Bucket=bucket, Key=key)
        return "wrote and deleted a probe object"

    buckets = sorted({p.target_bucket for p in settings.pairs})
    return [attempt(f"target {b}", lambda b=b: writable(b)) for b in buckets]


def rabbitmq_check(settings: Settings) -> Check:
    try:
        connection = broker.connect(settings.rabbitmq_url, name="minio-s3-mirror check")
        try:
            topology.declare(connection.channel())
        finally:
            connection.close()
    except Exception as exc:
        return Check(
            "rabbitmq",
            "FAIL",
            f"cannot connect and declare: {exc!r}"[:300],
            ("check RABBITMQ_URL (host, port, user, password, vhost)", "is RabbitMQ running?"),
        )
    return Check("rabbitmq", "ok", "connected, topology declared")


def slack_check(settings: Settings) -> Check:
    if not (settings.slack_token or settings.slack_channel):
        return Check("slack", "skip", "not configured (reports off)")
    web = slack.client(settings)
    if web is None:
        missing = "SLACK_CHANNEL_ID" if settings.slack_token else "SLACK_BOT_TOKEN"
        return Check("slack", "FAIL", f"{missing} is not set", ("set both Slack variables",))
    try:
        answer = web.auth_test()
    except Exception as exc:
        error = getattr(getattr(exc, "response", None), "get", lambda *_: None)("error")
        return Check(
            "slack",
            "FAIL",
            f"auth.test failed: {error or exc}",
            ("check SLACK_BOT_TOKEN (a bot token, xoxb-...)", "the app needs chat:write"),
        )
    return Check("slack", "ok", f"authenticated as {answer.get('user', '?')}")


def mc_check() -> Check:
    try:
        path = find_binary()
        out = subprocess.run(
            [path, "--version"],
            env=plain_environment(os.environ),  # no secret of ours for mc
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (McMissing, OSError, subprocess.TimeoutExpired) as exc:
        return Check("mc", "FAIL", str(exc), ("install mc (the image has it) or set MC_BINARY",))
    version = (out.stdout.strip().splitlines() or ["?"])[0]
    return Check("mc", "ok", f"{path}: {version}")


def run(settings: Settings, *, read_only: bool) -> list[Check]:
    config = Check("configuration", "ok", f"{len(settings.pairs)} pair(s)")
    return [
        config,
        *source_checks(settings),
        *target_checks(settings, read_only),
        rabbitmq_check(settings),
        slack_check(settings),
        mc_check(),
    ]


def render(checks: list[Check]) -> str:
    marks = {"ok": "✔", "FAIL": "✘", "skip": "-"}
    lines = []
    for check in checks:
        lines.append(f"{marks[check.status]} {check.status:4} {check.name:24} {check.detail}")
        lines += [f"{'':31} hint: {hint}" for hint in check.hints]
    return "\n".join(lines)
