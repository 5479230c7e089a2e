"""The image as users run it, on the real stack over the host's network: the seed's way
(`docker run -e ... minio-s3-mirror:latest`) and hardened, the way the manifests run it.

Variables reach the container as `-e NAME` (the value from podman's environment), so no
secret is on podman's command line either.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import pytest
import stack as local_stack

from tests.integration.conftest import WEBHOOK_ARN, WEBHOOK_TOKEN
from tests.integration.test_reconcile import HARD_KEYS, put, snapshot

from .podman import IMAGE, Podman

# The first test builds the image: on a cold cache (a fresh clone, as CI has) that takes
# ~11 min on this 2-core machine under load, past the suite's 600 s per test.
pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(2400)]

# The README's hardened `docker run` (podman's --read-only adds writable /tmp, /var/tmp
# and /run by itself: --read-only-tmpfs=false keeps only the --tmpfs the line asks for).
HARDENED = [
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "12345:0",
]  # fmt: skip
BIG = "big/seventy.bin"


def variables(stack, pair: str, **extra: str) -> dict[str, str]:
    """The seed's variables for this stack and pair."""
    env = {k: v for k, v in stack.env().items() if not k.startswith("SLACK_")}
    return {**env, "BUCKET_PAIR": pair, **extra}


# podman runs the HEALTHCHECK from systemd timers, which this machine has not: off here,
# `podman healthcheck run` runs it on demand.
NO_TIMER = ["--health-interval", "disable"]


def run(
    image: Podman, env: dict[str, str], *flags: str, command: tuple[str, ...] = (), timeout=300
):
    names = [arg for name in env for arg in ("-e", name)]
    return image(
        "run", "--rm", "--network", "host", *NO_TIMER, *flags, *names, IMAGE, *command,
        check=False, timeout=timeout, env={**image.env, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def hard_keys() -> dict[str, tuple[str, bytes]]:
    return {**HARD_KEYS, BIG: ("application/octet-stream", os.urandom(70 * 1024 * 1024))}


def test_seed_run_copies_everything_byte_identical_then_nothing(image, stack, buckets, hard_keys):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, hard_keys)
    env = variables(stack, f"minio/{src}:aws/{dst}")

    first = run(image, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert snapshot(stack.target.client(), dst) == hard_keys

    second = run(image, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to copy: the target is up to date" in second.stdout, second.stdout
    assert "0 object(s) copied" in second.stdout, second.stdout


def test_seed_dry_run_copies_nothing(image, stack, buckets):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, {"a.txt": ("text/plain", b"a")})

    result = run(image, variables(stack, f"minio/{src}:aws/{dst}", MIRROR_DRY_RUN="true"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: would copy 1 object(s), copied nothing" in result.stdout, result.stdout
    assert snapshot(stack.target.client(), dst) == {}


def test_a_bad_variable_exits_2_naming_it(image, stack):
    env = variables(stack, "minio/src-b:aws/dst-b", MIRROR_MAX_WORKERS="many")

    result = run(image, env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "MIRROR_MAX_WORKERS" in result.stderr, result.stderr


def test_hardened_reconcile_copies(image, stack, buckets, hard_keys):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, hard_keys)

    result = run(image, variables(stack, f"minio/{src}:aws/{dst}"), *HARDENED)

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(stack.target.client(), dst) == hard_keys


def test_without_a_writable_tmp_reconcile_says_so_in_one_line(image, stack, buckets):
    src, dst = buckets("source"), buckets("target")
    no_tmp = [flag for flag in HARDENED if flag not in ("--tmpfs", "/tmp")]

    result = run(image, variables(stack, f"minio/{src}:aws/{dst}"), *no_tmp)

    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot create mc's private config directory (No usable "
                           "temporary directory found in ['/tmp', "), last  # fmt: skip
    assert last.endswith("mount a writable /tmp (an emptyDir or tmpfs) or set TMPDIR to a "
                         "writable directory"), last  # fmt: skip
    for noise in ("Traceback", "interrupted"):
        assert noise not in result.stderr, result.stderr


def test_hardened_listener_and_worker_replicate_and_stop_promptly(
    image, stack, rabbit, notifying, source_bucket, buckets, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    env = {
        **variables(stack, f"minio/{src}:aws/{dst}"),
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        "RABBITMQ_URL": rabbit.url,
        "WEBHOOK_AUTH_TOKEN": WEBHOOK_TOKEN,
        "WEBHOOK_ADDRESS": f"127.0.0.1:{webhook_port}",
    }
    names = {}
    for command in (("listen", "--mode", "webhook"), ("work",)):
        name = f"mirror-{command[0]}-{secrets.token_hex(3)}"
        own = {**env, "METRICS_ADDRESS": f"127.0.0.1:{local_stack.free_port()}"}
        flags = [arg for key in own for arg in ("-e", key)]
        image(
            "run", "--detach", "--name", name, "--network", "host", *NO_TIMER, *HARDENED, *flags,
            IMAGE, *command, env={**image.env, **own},
        )  # fmt: skip
        names[command[0]] = name
    try:
        body = os.urandom(3 * 1024 * 1024)
        notifying.client().put_object(Bucket=src, Key="via/webhook.bin", Body=body)

        def arrived() -> bytes | None:
            try:
                got = stack.target.client().get_object(Bucket=dst, Key="via/webhook.bin")
            except Exception:
                return None
            return got["Body"].read()

        assert local_stack.wait_until(arrived, 90, "the object on the target") == body, logs(
            image, names
        )
        for name in names.values():  # the image's HEALTHCHECK: /healthz answers
            health = image("healthcheck", "run", name, check=False)
            assert health.returncode == 0, health.stdout + health.stderr + logs(image, names)
        for command, name in names.items():
            started = time.monotonic()
            image("stop", "--time", "30", name, timeout=60)
            took = time.monotonic() - started
            state = json.loads(image("inspect", name).stdout)[0]["State"]
            assert took < 10, f"{command}: podman stop took {took:.1f}s"
            assert state["ExitCode"] != 137, f"{command} was killed: {logs(image, names)}"
    finally:
        for name in names.values():
            image("rm", "--force", name, check=False)


def logs(image: Podman, names: dict[str, str]) -> str:
    return "\n".join(
        f"--- {command}:\n{image('logs', name, check=False).stderr[-3000:]}"
        for command, name in names.items()
    )


def test_the_dockerfiles_hardened_line_is_the_one_run_here():
    text = (Path(__file__).parents[2] / "Dockerfile").read_text()
    documented = re.search(r"#\s+docker run (.*?) \\\n#\s+(.*?) -e \.\.\.", text)
    assert documented, "the Dockerfile's header lost its hardened `docker run` line"
    flags = f"{documented[1]} {documented[2]}".split()
    assert flags == [flag for flag in HARDENED if flag != "--read-only-tmpfs=false"]


def test_stopping_a_hardened_reconcile_mid_copy_ends_it_within_seconds(image, stack, buckets):
    """A target that never answers the PUT: mc is mid-copy when podman stop's SIGTERM
    comes; reconcile stops mc and exits 143 well before podman's SIGKILL."""
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, {"stall/me.bin": ("application/octet-stream", b"x" * 1024)})
    proxy = local_stack.FaultProxy(stack.target.url).start()
    proxy.add_rule("stall/me.bin", "stall", "PUT")
    env = variables(stack, f"minio/{src}:aws/{dst}", AWS_URL=proxy.url)
    name = f"mirror-reconcile-{secrets.token_hex(3)}"
    flags = [arg for key in env for arg in ("-e", key)]
    try:
        image(
            "run", "--detach", "--name", name, "--network", "host", *NO_TIMER, *HARDENED,
            *flags, IMAGE, env={**image.env, **env},
        )  # fmt: skip
        local_stack.wait_until(
            lambda: proxy.fault_count("stall/me.bin", "stall"), 60, "mc's PUT at the target"
        )
        started = time.monotonic()
        image("stop", "--time", "30", name, timeout=60)
        took = time.monotonic() - started
        state = json.loads(image("inspect", name).stdout)[0]["State"]
        assert took < 10, f"podman stop took {took:.1f}s"
        assert state["ExitCode"] == 143, logs(image, {"reconcile": name})
    finally:
        image("rm", "--force", name, check=False)
        proxy.stop()
