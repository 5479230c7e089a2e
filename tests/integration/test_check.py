"""`check` tests what `work` needs of the target, through the S3 layer, on the real stack:
a conditional write (a second If-None-Match: * PUT of the probe must be refused), a probe
with a checksum (kept, and said so, under Object Lock default retention), the storage
class and encryption configured, and one line for a wrong region. S3 failures are told by
the S3 layer's reason, never by mc's "Mirror process closed with code: 1"."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import stack as local_stack
from fault_proxy import split_path

from replicator.check import PROBE_PREFIX
from tests.conftest import REPO
from tests.integration.test_iam import readme_policies, user_with_policy

pytestmark = pytest.mark.integration


@pytest.fixture
def check(run_cli, rabbit):
    """check(src, dst, *args, **env): the real `minio-s3-mirror check` against the stack."""

    def run(src: str, dst: str, *args: str, **env: str | None):
        env = {"BUCKET_PAIR": f"minio/{src}:aws/{dst}", "RABBITMQ_URL": rabbit.url, **env}
        result = run_cli("check", *args, env=env, timeout=180)
        out = result.stdout + result.stderr
        assert "Traceback" not in out, out
        return result.returncode, out

    return run


def line_of(out: str, part: str) -> str:
    (line,) = [line for line in out.splitlines() if line.split()[2:3] == [part]]
    return line


def probes(client, bucket: str) -> list[dict]:
    """Every version of a probe object in the bucket (a versioned bucket keeps them)."""
    found = client.list_object_versions(Bucket=bucket, Prefix=PROBE_PREFIX)
    return found.get("Versions", [])


@pytest.fixture
def locked_bucket(stack):
    """A target MinIO bucket with Object Lock and a GOVERNANCE default retention of a day."""
    client = stack.target.client()
    name = f"lck-{local_stack.secrets.token_hex(4)}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    yield name
    for version in probes(client, name):
        client.delete_object(
            Bucket=name,
            Key=version["Key"],
            VersionId=version["VersionId"],
            BypassGovernanceRetention=True,
        )
    for marker in client.list_object_versions(Bucket=name).get("DeleteMarkers", []):
        client.delete_object(Bucket=name, Key=marker["Key"], VersionId=marker["VersionId"])
    client.delete_bucket(Bucket=name)


class WithoutConditionalWrites(local_stack.FaultProxy):
    """The target MinIO behind a proxy that behaves like a server without conditional
    writes: a PUT of a key already PUT through it is answered 200, as such a server answers
    when it overwrites, whatever If-None-Match says (the request is not forwarded: its
    signature covers the header, so the proxy cannot strip it)."""

    def _handler(self):
        base = super()._handler()
        proxy = self

        class Handler(base):
            def do_PUT(self) -> None:
                _, key = split_path(self.path)
                if key.startswith(PROBE_PREFIX) and proxy.count(key, "PUT"):
                    body = self._read_body() or b""
                    proxy._decide(key, "PUT")  # counted like any request
                    self.send_response(200)
                    self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                base.do_PUT(self)

        return Handler


def test_check_probes_conditional_writes_and_deletes_its_probe(stack, buckets, check):
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="a.txt", Body=b"a")

    code, out = check(src, dst)

    assert code == 0, out
    assert line_of(out, "source").endswith("listed and read an object"), out
    line = line_of(out, "target")
    assert "wrote a probe (SHA-256 checksum)" in line, out
    assert "a second If-None-Match: * PUT was refused: conditional writes work" in line, out
    assert line.endswith("probe deleted"), out
    assert probes(stack.target.client(), dst) == []


def test_check_fails_on_a_target_that_accepts_a_second_conditional_put(stack, buckets, check):
    src, dst = buckets("source"), buckets("target")
    proxy = WithoutConditionalWrites(stack.target.url).start()
    try:
        code, out = check(src, dst, AWS_URL=proxy.url)
    finally:
        proxy.stop()

    assert code == 1, out
    line = line_of(out, "target")
    assert " FAIL " in line, out
    assert "accepted a second If-None-Match: * PUT of the probe" in line, out
    assert "conditional writes" in line and "probe deleted" in line, out
    assert "hint: use AWS S3 or a server release with conditional writes" in out, out
    assert probes(stack.target.client(), dst) == []


def test_check_keeps_the_probe_of_an_object_lock_bucket_and_says_so(stack, buckets, check,
                                                                  locked_bucket):  # fmt: skip
    src = buckets("source")

    code, out = check(src, locked_bucket)

    assert code == 0, out
    line = line_of(out, "target")
    assert "conditional writes work" in line, out
    assert "Object Lock default retention (GOVERNANCE 1 days) forbids deleting it" in line, out
    assert f"a lifecycle rule on {PROBE_PREFIX} expires it" in line, out
    client = stack.target.client()
    (version,) = probes(client, locked_bucket)  # one version: the second PUT was refused
    assert version["Key"] in line, out
    head = client.head_object(Bucket=locked_bucket, Key=version["Key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"], head  # the checksum Object Lock buckets require
    assert head["ObjectLockMode"] == "GOVERNANCE", head


def test_a_wrong_region_is_one_line_naming_the_bucket_region(buckets, check):
    src = buckets("source")
    redirect = local_stack.RedirectServer("ap-northeast-2").start()
    try:
        code, out = check(src, "backup-in-seoul", AWS_URL=redirect.url)
    finally:
        redirect.stop()

    assert code == 1, out
    naming = [line for line in out.splitlines() if "ap-northeast-2" in line]
    assert naming == [line_of(out, "target")], out
    assert " FAIL " in naming[0] and "PermanentRedirect" in naming[0], out
    assert "set AWS_REGION=ap-northeast-2" in naming[0], out
    assert "Mirror process closed" not in out, out
    assert " FAIL " not in line_of(out, "source"), out


def test_an_unreachable_endpoint_is_told_by_the_s3_layer_not_by_mc(buckets, check):
    src, dst = buckets("source"), buckets("target")
    closed = f"http://127.0.0.1:{local_stack.free_port()}"

    code, out = check(src, dst, MINIO_URL=closed, AWS_URL=closed)

    assert code == 1, out
    for side, variable in (("source", "MINIO_URL"), ("target", "AWS_URL")):
        line = line_of(out, side)
        assert f" FAIL {side} " in line and f"{side} unreachable" in line, out
        assert f"hint: check {variable} (it must include http:// or https://)" in out, out
    assert "Mirror process closed" not in out, out
    assert "the mc command failed" not in out, out


def test_a_storage_class_the_target_refuses_is_named(stack, buckets, check):
    # MinIO knows STANDARD and REDUCED_REDUNDANCY only (without tiers): InvalidStorageClass.
    src, dst = buckets("source"), buckets("target")

    code, out = check(src, dst, AWS_STORAGE_CLASS="STANDARD_IA")

    assert code == 1, out
    line = line_of(out, "target")
    assert "InvalidStorageClass" in line, out
    assert "the target refuses AWS_STORAGE_CLASS=STANDARD_IA" in line, out
    assert "hint: set AWS_STORAGE_CLASS to a class this target offers" in out, out
    assert probes(stack.target.client(), dst) == []


def test_an_access_denied_probe_names_aws_sse(stack, buckets, check):
    # A key that may list but not write: AWS answers the same AccessDenied when a bucket
    # policy requires x-amz-server-side-encryption, so the line names both causes.
    src, dst = buckets("source"), buckets("target")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{dst}"]}
        ],
    }
    user, secret = user_with_policy(stack.target, json.dumps(policy))

    code, out = check(src, dst, AWS_ACCESS_KEY=user, AWS_SECRET_KEY=secret)

    assert code == 1, out
    line = line_of(out, "target")
    assert "AccessDenied" in line, out
    assert "may require x-amz-server-side-encryption: then set AWS_SSE" in line, out
    assert "hint: check the bucket's permissions and the IAM policy" in out, out


def test_read_only_writes_nothing(stack, buckets, check):
    src, dst = buckets("source"), buckets("target")
    proxy = local_stack.FaultProxy(stack.target.url).start()
    try:
        # A storage class MinIO refuses: only a write would find out.
        code, out = check(src, dst, "--read-only", AWS_URL=proxy.url,
                          AWS_STORAGE_CLASS="STANDARD_IA")  # fmt: skip
        methods = {method for (_, method) in proxy.requests}
    finally:
        proxy.stop()

    assert code == 0, out
    assert "listed (write not probed: --read-only)" in line_of(out, "target"), out
    assert methods == {"GET"}, methods  # the listing of the probe prefix, nothing else


def test_the_aws_like_target_gets_the_probe_with_storage_class_and_encryption(
    aws_like, buckets, check
):
    # An Object Lock bucket keeps the probe: what it was written with can be seen.
    src = buckets("source")
    client = aws_like.client()
    dst = f"lck-aws-{local_stack.secrets.token_hex(4)}"
    local_stack.make_bucket(client, dst, retention_days=1)
    try:
        code, out = check(src, dst, **aws_like.env(), AWS_STORAGE_CLASS="STANDARD_IA",
                          AWS_SSE="AES256")  # fmt: skip

        assert code == 0, out
        line = line_of(out, "target")
        written = "wrote a probe (SHA-256 checksum, storage class STANDARD_IA, encryption AES256)"
        assert written in line, out
        assert "conditional writes work" in line and "kept: Object Lock" in line, out
        (version,) = probes(client, dst)
        head = client.head_object(Bucket=dst, Key=version["Key"], ChecksumMode="ENABLED")
        assert head["StorageClass"] == "STANDARD_IA", head
        assert head["ServerSideEncryption"] == "AES256", head
        assert head["ChecksumSHA256"], head
    finally:
        local_stack.remove_bucket(client, dst)


def readme_lifecycle_rule() -> dict:
    section = (
        REPO.joinpath("docs", "operations.md")
        .read_text()
        .split("### `check`")[1]
        .split("\n### ")[0]
    )
    (block,) = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    return json.loads(block)


def test_the_readme_policy_sees_object_lock_and_its_lifecycle_rule_applies(
    stack, buckets, check, locked_bucket
):
    # With exactly the README's target policy, check still finds the default retention
    # (else it would delete: on a versioned bucket that only hides the locked probe).
    src = buckets("source")
    target_policy, _ = readme_policies()
    user, secret = user_with_policy(
        stack.target, target_policy.replace("photos-backup", locked_bucket)
    )

    code, out = check(src, locked_bucket, AWS_ACCESS_KEY=user, AWS_SECRET_KEY=secret)

    assert code == 0, out
    assert "kept: Object Lock default retention" in line_of(out, "target"), out
    client = stack.target.client()
    rule = readme_lifecycle_rule()
    client.put_bucket_lifecycle_configuration(Bucket=locked_bucket, LifecycleConfiguration=rule)
    (got,) = client.get_bucket_lifecycle_configuration(Bucket=locked_bucket)["Rules"]
    assert got["Filter"] == {"Prefix": PROBE_PREFIX}, got
    assert got["Expiration"]["Days"] == 1, got


def test_an_unreadable_object_lock_configuration_is_said(stack, buckets, check, locked_bucket):
    # Without GetBucketObjectLockConfiguration the DELETE succeeds (a delete marker on a
    # versioned bucket) while the locked version stays: the line must not hide it.
    src = buckets("source")
    target_policy, _ = readme_policies()
    target_policy = target_policy.replace(',\n        "s3:GetBucketObjectLockConfiguration"', "")
    assert "ObjectLock" not in target_policy
    user, secret = user_with_policy(
        stack.target, target_policy.replace("photos-backup", locked_bucket)
    )

    code, out = check(src, locked_bucket, AWS_ACCESS_KEY=user, AWS_SECRET_KEY=secret)

    assert code == 0, out
    line = line_of(out, "target")
    assert "probe deleted, but the Object Lock configuration is not readable" in line, out
    assert "AccessDenied" in line and "grant s3:GetBucketObjectLockConfiguration" in line, out
    assert len(probes(stack.target.client(), locked_bucket)) == 1  # the locked version


def test_encryption_the_target_cannot_do_names_aws_sse_not_conditional_writes(buckets, check):
    # MinIO without a KMS answers SSE-S3 with 501 NotImplemented, the code a server
    # without conditional writes gives too: the line must blame the setting.
    src, dst = buckets("source"), buckets("target")

    code, out = check(src, dst, AWS_SSE="AES256")

    assert code == 1, out
    line = line_of(out, "target")
    assert "NotImplemented" in line and "the target refuses AWS_SSE=AES256" in line, out
    assert "conditional writes" not in out, out
