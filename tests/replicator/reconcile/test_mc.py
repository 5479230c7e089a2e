"""The mc process: a minimal environment, a deadline, and nothing left running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from replicator import config
from replicator.reconcile.mc import McRun, child_environment

SECRETS = {
    "MINIO_SECRET_KEY": "minio-secret-value",
    "AWS_SECRET_KEY": "aws-secret-value",
    "SLACK_BOT_TOKEN": "xoxb-slack-secret",
    "WEBHOOK_AUTH_TOKEN": "webhook-secret",
    "RABBITMQ_URL": "amqp://mirror:rabbit-secret@rabbitmq:5672/%2F",
    "SOMETHING_ELSE": "unrelated-secret",
}


def settings_from(environ: dict[str, str]) -> config.Settings:
    return config.load(
        {
            "MINIO_URL": "http://minio:9000",
            "MINIO_ACCESS_KEY": "minio-access",
            "AWS_URL": "https://s3.amazonaws.com",
            "AWS_ACCESS_KEY": "aws-access",
            "BUCKET_PAIR": "minio/a-bucket:aws/b-bucket",
            **environ,
        }
    )


def test_mc_gets_its_own_credentials_and_nothing_else_of_ours():
    environ = {
        **SECRETS,
        "PATH": "/usr/bin",
        "HOME": "/home/mirror",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "MC_HOST_other": "http://x:y@elsewhere:9000",
    }

    env = child_environment(settings_from(environ), environ)

    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "HTTPS_PROXY",
        "MC_HOST_minio",
        "MC_HOST_aws",
    }
    assert env["MC_HOST_minio"] == "http://minio-access:minio-secret-value@minio:9000"
    assert env["MC_HOST_aws"] == "https://aws-access:aws-secret-value@s3.amazonaws.com"
    rest = " ".join(v for k, v in env.items() if not k.startswith("MC_HOST_"))
    for secret in ("minio-secret-value", "aws-secret-value", "xoxb-slack-secret"):
        assert secret not in rest
    for secret in ("webhook-secret", "rabbit-secret", "unrelated-secret"):
        assert secret not in " ".join(env.values())


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "fake-mc.sh"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return [str(path)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: read its state.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def wait_gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def hanging(tmp_path: Path) -> tuple[list[str], Path]:
    """A fake mc that starts a child holding its output, prints one line, and hangs."""
    pid_file = tmp_path / "child.pid"
    body = f'sleep 300 &\necho $! > "{pid_file}"\necho \'{{"status":"success"}}\'\nwait\n'
    return script(tmp_path, body), pid_file


@pytest.mark.timeout(60)  # a regression hangs on mc's open pipe
def test_deadline_stops_the_whole_process_group(tmp_path):
    command, pid_file = hanging(tmp_path)

    with McRun(command, {"PATH": os.defpath}, deadline=time.monotonic() + 1) as run:
        lines = list(run.stdout)  # returns only because the group was stopped

    assert lines == ['{"status":"success"}\n']
    assert run.timed_out
    assert run.code is not None and run.code < 0
    assert wait_gone(int(pid_file.read_text()))


@pytest.mark.timeout(60)  # a regression hangs on mc's open pipe
def test_an_error_while_reading_stops_and_reaps_mc(tmp_path):
    command, pid_file = hanging(tmp_path)

    with pytest.raises(RuntimeError), McRun(command, {"PATH": os.defpath}, None) as run:
        next(iter(run.stdout))
        raise RuntimeError("parsing failed")

    assert run.proc.returncode is not None  # reaped
    assert not run.timed_out
    assert wait_gone(int(pid_file.read_text()))


@pytest.mark.timeout(60)  # a regression hangs on mc's open pipe
def test_a_run_that_ends_in_time_keeps_its_exit_code_and_stderr(tmp_path):
    command = script(tmp_path, "echo out\necho 'an error line' >&2\nexit 3\n")

    with McRun(command, {"PATH": os.defpath}, deadline=time.monotonic() + 60) as run:
        assert list(run.stdout) == ["out\n"]

    assert (run.code, run.timed_out, run.stderr) == (3, False, "an error line")
