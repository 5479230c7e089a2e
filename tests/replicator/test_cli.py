"""The real console script's exits: 2 and one line for bad configuration, 1 and one line
(or a summary) for runtime failures, never a traceback, never a secret.

No stack needed: every endpoint here is a closed loopback port, or a port this test holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("minio-s3-mirror")
SECRET = "s3cr3t"  # in every password below; must never be printed


def closed_port() -> int:
    """A loopback port nobody listens on (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port this test listens on, so nobody else can bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(REPO),  # the code of this checkout, wherever it is
        "MINIO_URL": f"http://127.0.0.1:{closed_port()}",
        "MINIO_ACCESS_KEY": "minio-user",
        "MINIO_SECRET_KEY": f"minio-{SECRET}",
        "AWS_URL": f"http://127.0.0.1:{closed_port()}",
        "AWS_ACCESS_KEY": "aws-user",
        "AWS_SECRET_KEY": f"aws-{SECRET}",
        "BUCKET_PAIR": "minio/source-bucket:aws/target-bucket",
        "RABBITMQ_URL": f"amqp://guest:rabbit-{SECRET}@127.0.0.1:{closed_port()}/%2F",
        "METRICS_ADDRESS": f"127.0.0.1:{closed_port()}",
        "MC_BINARY": "/nonexistent/mc",
    }


def run(env: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), *args],
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert SECRET not in output, output
    return result


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args",
    [
        ("dlq", "list"),
        ("dlq", "list", "--json"),
        ("dlq", "replay", "--all"),
        ("dlq", "purge", "--yes"),
    ],
)
def test_dlq_commands_with_rabbitmq_down_exit_1_with_one_line(env, args):
    result = run(env, *args)
    assert result.returncode == 1, result.stderr
    masked = env["RABBITMQ_URL"].replace(f"rabbit-{SECRET}", "****")
    assert (
        result.stderr.strip() == f"error: RabbitMQ at {masked}: cannot connect: Connection refused"
    )
    assert result.stdout == ""


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "/abs", "./a", "2025/./01"])
@pytest.mark.parametrize("command", ["backfill", "reconcile"])
def test_prefix_that_can_never_be_a_key_exits_2(env, command, prefix):
    result = run(env, command, "--prefix", prefix)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f'configuration error: --prefix: "{prefix}" is not a folder'), line


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (("work",), "MIRROR_MAX_WORKERS", "40000"),
        (("backfill",), "MIRROR_MAX_WORKERS", "nan"),
        (("reconcile",), "MIRROR_MAX_PAIRS", "1000"),
        (("check",), "MINIO_URL", f"ftp://u:{SECRET}@h"),
        (("check",), "AWS_URL", f"http://u:{SECRET}@s3.example:9000"),
        (("dlq", "list"), "RABBITMQ_URL", f"amqp://u:{SECRET}@rabbit:99999/%2F"),
        (("listen",), "WEBHOOK_ADDRESS", "0.0.0.0:70000"),
        (("listen",), "METRICS_ADDRESS", "127.0.0.1:-1"),
        (("work",), "MIRROR_DIGEST_INTERVAL", "1e10"),
        (("backfill",), "MIRROR_PREFIX", "../x"),
        (("backfill",), "AWS_REGION", "../eu"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(env, args, variable, value):
    result = run(env, *args, **{variable: value})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"configuration error: {variable}: "), line


def test_webhook_address_in_use_exits_1_with_one_line(env, held_port):
    address = f"127.0.0.1:{held_port}"
    result = run(
        env, "listen", "--mode", "webhook", WEBHOOK_ADDRESS=address, WEBHOOK_AUTH_TOKEN="tok"
    )
    assert result.returncode == 1, result.stderr
    assert (
        last_line(result) == f"WEBHOOK_ADDRESS: cannot listen on {address}: Address already in use"
    )


@pytest.mark.parametrize("args", [("work",), ("listen",)])
def test_metrics_address_in_use_exits_1_with_one_line(env, held_port, args):
    address = f"127.0.0.1:{held_port}"
    result = run(env, *args, METRICS_ADDRESS=address)
    assert result.returncode == 1, result.stderr
    assert (
        last_line(result) == f"METRICS_ADDRESS: cannot listen on {address}: Address already in use"
    )


@pytest.mark.parametrize("mode", [(), ("--direct",), ("--dry-run",)])
def test_backfill_with_endpoints_down_summarises_and_exits_1(env, mode):
    result = run(env, "backfill", *mode)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("minio/source-bucket:aws/target-bucket: listed 0"), lines
    assert lines[0].endswith("failed 1"), lines
    assert lines[1].startswith("  failed: pair stopped after 0 listed: "), lines
    assert "target" in lines[1] and "refused" in lines[1].lower(), lines  # side and cause


def test_check_with_everything_down_names_each_part(env):
    result = run(env, "check")
    assert result.returncode == 1, result.stderr
    failed = {line.split()[2] for line in result.stdout.splitlines() if " FAIL " in line}
    assert {"source", "target", "rabbitmq", "mc"} <= failed, result.stdout
