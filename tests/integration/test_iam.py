"""The least-privilege policies of docs/kubernetes.md, on real MinIO users: enough, and no more."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile

import pytest
import stack as local_stack
from botocore.exceptions import ClientError

from replicator.task import Task
from tests.conftest import REPO
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import pair_env, publish, wait_for_keys

pytestmark = pytest.mark.integration


def readme_policies() -> tuple[str, str]:
    """The target and source policy JSON blocks, in the page's order."""
    section = (
        REPO.joinpath("docs", "kubernetes.md").read_text().split("### Least-privilege policies")[1]
    )
    target, source = re.findall(r"```json\n(.*?)```", section, re.DOTALL)[:2]
    return target, source


def user_with_policy(server: local_stack.MinioServer, policy: str) -> tuple[str, str]:
    """A new MinIO user holding exactly `policy`; returns its access and secret key."""
    user, secret = f"mirror-{secrets.token_hex(4)}", secrets.token_hex(16)
    name = f"policy-{user}"
    with tempfile.TemporaryDirectory() as private:
        env = {
            **os.environ,
            "MC_HOST_admin": server.url.replace(
                "://", f"://{server.access_key}:{server.secret_key}@"
            ),
        }

        def mc(*args: str) -> None:
            subprocess.run(
                [str(local_stack.BIN / "mc"), "--config-dir", private, *args],
                env=env,
                check=True,
                capture_output=True,
            )

        path = os.path.join(private, "policy.json")
        with open(path, "w") as file:
            file.write(policy)
        mc("admin", "user", "add", "admin", user, secret)
        mc("admin", "policy", "create", "admin", name, path)
        mc("admin", "policy", "attach", "admin", name, "--user", user)
    return user, secret


@pytest.fixture
def least_privilege(stack, notifying, source_bucket, buckets):
    src, dst = source_bucket(), buckets("target")
    target_policy, source_policy = readme_policies()
    target_policy = target_policy.replace("photos-backup", dst)
    source_policy = source_policy.replace("photos", src)
    json.loads(target_policy), json.loads(source_policy)  # the README's JSON is valid
    source_user = user_with_policy(notifying, source_policy)
    target_user = user_with_policy(stack.target, target_policy)
    env = pair_env(
        src,
        dst,
        MINIO_ACCESS_KEY=source_user[0],
        MINIO_SECRET_KEY=source_user[1],
        AWS_ACCESS_KEY=target_user[0],
        AWS_SECRET_KEY=target_user[1],
    )
    return src, dst, env, source_user, target_user


def test_reconcile_work_backfill_and_check_run_with_exactly_the_readme_policies(
    stack, notifying, least_privilege, procs, amqp, rabbit
):
    src, dst, env, _, _ = least_privilege
    source = notifying.client()
    source.put_object(Bucket=src, Key="by-reconcile.txt", Body=b"r")
    big = os.urandom(20 * 1024 * 1024)  # multipart on the work path

    reconcile = procs("reconcile", **env)
    assert reconcile.popen.wait(120) == 0, reconcile.log.read_text()
    source.put_object(Bucket=src, Key="by-work.bin", Body=big)
    procs("work", **env)
    publish(rabbit, Task(bucket=src, key="by-work.bin", origin="backfill").to_json())

    source.put_object(Bucket=src, Key="by-backfill.txt", Body=b"b")
    backfill = procs("backfill", **env)
    assert backfill.popen.wait(120) == 0, backfill.log.read_text()
    check = procs("check", **env)
    assert check.popen.wait(120) == 0, check.log.read_text()

    target = stack.target.client()
    wait_for_keys(target, dst, {"by-reconcile.txt", "by-work.bin", "by-backfill.txt"}, 120)
    assert target.get_object(Bucket=dst, Key="by-work.bin")["Body"].read() == big
    assert dead_letters(rabbit) == []


def test_the_policies_refuse_what_they_do_not_grant(stack, notifying, least_privilege):
    src, dst, _, source_user, target_user = least_privilege
    target = stack.target.client(*target_user)
    target.put_object(Bucket=dst, Key="allowed.txt", Body=b"ok")
    with pytest.raises(ClientError, match="AccessDenied"):
        target.delete_object(Bucket=dst, Key="allowed.txt")
    source = notifying.client(*source_user)
    with pytest.raises(ClientError, match="AccessDenied"):
        source.put_object(Bucket=src, Key="nope.txt", Body=b"no")


def readme_delete_statement() -> str:
    """The opt-in `s3:DeleteObject` statement (the section's third JSON block)."""
    section = (
        REPO.joinpath("docs", "kubernetes.md").read_text().split("### Least-privilege policies")[1]
    )
    return re.findall(r"```json\n(.*?)```", section, re.DOTALL)[2]


@pytest.mark.parametrize("opt_in", [True, False], ids=["with-opt-in", "without"])
def test_deletes_need_the_opt_in_statement_and_nothing_more(stack, buckets, run_cli, opt_in):
    src, dst = buckets("source"), buckets("target")
    target_policy, source_policy = readme_policies()
    policy = json.loads(target_policy.replace("photos-backup", dst))
    if opt_in:
        statement = readme_delete_statement().replace("photos-backup", dst)
        policy["Statement"].append(json.loads(statement))
    source_user = user_with_policy(stack.source, source_policy.replace("photos", src))
    target_user = user_with_policy(stack.target, json.dumps(policy))
    env = {
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "MINIO_ACCESS_KEY": source_user[0],
        "MINIO_SECRET_KEY": source_user[1],
        "AWS_ACCESS_KEY": target_user[0],
        "AWS_SECRET_KEY": target_user[1],
        "MIRROR_DELETE": "true",
        "MIRROR_MAX_DELETE_PERCENT": "100",
    }
    source = stack.source.client()
    for key in ("kept", "gone"):
        source.put_object(Bucket=src, Key=key, Body=key.encode())
    first = run_cli("reconcile", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    source.delete_object(Bucket=src, Key="gone")
    check = run_cli("check", env=env)
    (probe,) = [line for line in check.stdout.splitlines() if f" deletes {dst} " in line]

    result = run_cli("reconcile", "--json", env=env)

    listed = stack.target.client().list_objects_v2(Bucket=dst).get("Contents", [])
    (pair,) = json.loads(result.stdout)["pairs"]
    if opt_in:
        assert result.returncode == 0, result.stdout + result.stderr
        assert [o["Key"] for o in listed] == ["kept"]
        assert pair["deleted"] == 1
        assert "ok" in probe and "the target credentials may delete" in probe
    else:
        assert "FAIL" in probe and "may not delete" in probe and "AccessDenied" in probe
        assert result.returncode == 1, result.stdout + result.stderr
        assert [o["Key"] for o in listed] == ["gone", "kept"]
        (failure,) = pair["failures"]
        assert failure["cause"] == "Delete failed" and "AccessDenied" in failure["error"]
