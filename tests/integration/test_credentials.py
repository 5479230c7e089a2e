"""The AWS credential chain: with AWS_ACCESS_KEY/AWS_SECRET_KEY unset, every command finds
the target's credentials the standard way (here: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
or a profile file)."""

from __future__ import annotations

import subprocess

import pytest
import stack as local_stack

from replicator.task import Task
from tests.conftest import CLI, base_env
from tests.integration.test_pipeline import publish, target_keys

pytestmark = pytest.mark.integration


def chain_env(stack, tmp_path, how: str, **extra: str) -> dict[str, str]:
    env = {**base_env(stack), **extra}
    key, secret = env.pop("AWS_ACCESS_KEY"), env.pop("AWS_SECRET_KEY")
    if how == "environment":
        env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    else:
        profile = tmp_path / "credentials"
        profile.write_text(
            f"[backup]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
        )
        profile.chmod(0o600)
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(profile), AWS_PROFILE="backup")
    return env


@pytest.mark.parametrize("how", ["environment", "profile"])
def test_check_backfill_and_work_run_on_the_aws_chain(stack, rabbit, amqp, buckets, tmp_path, how):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    for i in range(5):
        source.put_object(Bucket=src, Key=f"b/{i}", Body=b"backfilled")
    env = chain_env(
        stack,
        tmp_path,
        how,
        BUCKET_PAIR=f"minio/{src}:aws/{dst}",
        RABBITMQ_URL=rabbit.url,
        METRICS_ADDRESS=f"127.0.0.1:{local_stack.free_port()}",
        MIRROR_LOG_FORMAT="json",
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)

    checked = run("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    filled = run("backfill", "--direct")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert target_keys(stack.target.client(), dst) == {f"b/{i}" for i in range(5)}

    source.put_object(Bucket=src, Key="w/0", Body=b"worked")
    with open(tmp_path / "work.log", "wb") as log:
        worker = subprocess.Popen([CLI, "work"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        publish(rabbit, Task(bucket=src, key="w/0", origin="backfill").to_json())
        local_stack.wait_until(
            lambda: "w/0" in target_keys(stack.target.client(), dst), 60, "the worker's copy"
        )
    finally:
        worker.terminate()
        worker.wait(60)
