"""Reconcile that does not re-copy, mc's write flags and mc's credentials (issue 12).

`mc mirror` compares times: a target copy whose LastModified is older than the source's
is "different". AWS (and moto) list LastModified to the second, so a copy the event path
made in the same second as the source write looks older. The same happens on any target
when the source object is uploaded again with identical bytes after it was copied: that
is how these tests make the target copy look older, deterministically, on both targets.
Such a copy must never be written again; a really changed object must be replaced, with
the copy engine's `mirror-source-*` metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import stack as local_stack

from replicator import config
from replicator.copier import SOURCE_ETAG, Copier
from replicator.task import Task
from tests.conftest import base_env

pytestmark = pytest.mark.integration


def objects(count: int) -> dict[str, bytes]:
    found = {f"day/{i:02d}/ünï cødé {i}.txt": f"body {i}".encode() for i in range(count)}
    found["day/big.bin"] = os.urandom(17 * 1024 * 1024)  # multipart on every path
    found["day/100%25 done+1=2 ?&.txt"] = b"mc prints keys in URLs: none of this is escaped"
    return found


def put_all(client, bucket: str, items: dict[str, bytes]) -> None:
    for key, body in items.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"owner": "tests"})


def env_for(stack, target, src: str, dst: str, **extra: str | None) -> dict[str, str | None]:
    return {**target.env(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", **extra}


def copy_with_the_event_path(stack, target, src: str, dst: str, keys) -> None:
    """What `work` does for each event: the copy engine, in this process."""
    env = {**base_env(stack), **env_for(stack, target, src, dst)}
    copier = Copier(config.load(env))
    try:
        for key in keys:
            assert copier.copy(Task(bucket=src, key=key, origin="webhook")).copied
    finally:
        copier.parts.shutdown()


def reconcile(run_cli, env, *args: str) -> dict:
    result = run_cli("reconcile", "--json", *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (counted,) = json.loads(result.stdout)["pairs"]
    return counted


def heads(client, bucket: str, keys) -> dict[str, tuple[str, dict]]:
    found = {}
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        found[key] = (head["ETag"], head["Metadata"])
    return found


def test_copies_that_look_older_are_never_written_again(stack, target, buckets, run_cli):
    src, dst = buckets("source"), target.bucket()
    source = stack.source.client()
    items = objects(12)
    put_all(source, src, items)
    copy_with_the_event_path(stack, target, src, dst, items)
    before = heads(target.client(), dst, items)
    time.sleep(1.1)  # a later second than every copy, on every target
    put_all(source, src, items)  # the same bytes again: each source is now newer than its copy
    env = env_for(stack, target, src, dst)
    served = target.server.served() if hasattr(target.server, "served") else None

    counted = reconcile(run_cli, env)

    assert counted["copied"] == 0, counted
    assert counted["replaced"] == 0, counted
    assert counted["already_current"] == len(items), counted  # mc saw every one as older
    assert heads(target.client(), dst, items) == before  # metadata kept, nothing re-written
    if served is not None:  # the AWS-like server counts requests: no write at all
        writes = ("PutObject", "UploadPart", "CompleteMultipartUpload")
        assert {op: target.server.served()[op] - served[op] for op in writes} == dict.fromkeys(
            writes, 0
        )
    again = reconcile(run_cli, env)
    assert (again["copied"], again["failure_count"]) == (0, 0), again


def test_a_changed_source_object_is_replaced_with_its_metadata(stack, target, buckets, run_cli):
    src, dst = buckets("source"), target.bucket()
    source = stack.source.client()
    items = objects(3)
    put_all(source, src, items)
    copy_with_the_event_path(stack, target, src, dst, items)
    time.sleep(1.1)
    same_size = "day/00/ünï cødé 0.txt"
    source.put_object(Bucket=src, Key=same_size, Body=b"BODY 0", Metadata={"owner": "changed"})
    source.put_object(Bucket=src, Key="day/big.bin", Body=b"now small")
    env = env_for(stack, target, src, dst)

    counted = reconcile(run_cli, env)

    assert (counted["copied"], counted["replaced"]) == (2, 2), counted
    # On MinIO the copies are newer than the unchanged sources; on the AWS-like server mc
    # sees some as older (LastModified to the second) and the copy engine finds them current.
    assert counted["already_current"] <= len(items) - 2, counted
    client = target.client()
    for key, body, owner in (
        (same_size, b"BODY 0", "changed"),
        ("day/big.bin", b"now small", None),  # written again without metadata
    ):
        got = client.get_object(Bucket=dst, Key=key)
        assert got["Body"].read() == body
        source_etag = source.head_object(Bucket=src, Key=key)["ETag"].strip('"')
        assert got["Metadata"][SOURCE_ETAG] == source_etag  # the copy engine's identity
        assert got["Metadata"].get("owner") == owner
    assert reconcile(run_cli, env)["copied"] == 0


def test_dry_run_lists_only_what_really_changed(stack, target, buckets, run_cli):
    src, dst = buckets("source"), target.bucket()
    source = stack.source.client()
    items = objects(4)
    put_all(source, src, items)
    copy_with_the_event_path(stack, target, src, dst, items)
    time.sleep(1.1)
    put_all(source, src, items)  # all look older to mc
    source.put_object(Bucket=src, Key="day/01/ünï cødé 1.txt", Body=b"really changed")
    source.put_object(Bucket=src, Key="day/new.txt", Body=b"missing on the target")
    before = heads(target.client(), dst, items)

    counted = reconcile(run_cli, env_for(stack, target, src, dst), "--dry-run")

    assert sorted(counted["would_copy"]) == ["day/01/ünï cødé 1.txt", "day/new.txt"], counted
    assert counted["already_current"] == len(items) - 1, counted
    assert heads(target.client(), dst, items) == before


def test_pair_paths_map_the_reported_target_key_back_to_the_source(stack, buckets, run_cli):
    """mc names the differing *target* URL; the copy engine needs the source key."""
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    source.put_object(Bucket=src, Key="in/2025/x.txt", Body=b"one")
    env = {"BUCKET_PAIR": f"minio/{src}/in:aws/{dst}/out/put", "MIRROR_PREFIX": "2025"}
    assert reconcile(run_cli, env)["copied"] == 1
    time.sleep(1.1)
    source.put_object(Bucket=src, Key="in/2025/x.txt", Body=b"two")  # same size, newer

    counted = reconcile(run_cli, env)

    assert (counted["replaced"], counted["failure_count"]) == (1, 0), counted
    got = stack.target.client().get_object(Bucket=dst, Key="out/put/2025/x.txt")
    assert got["Body"].read() == b"two"


def test_overwrite_false_replaces_nothing(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    source.put_object(Bucket=src, Key="a.txt", Body=b"one")
    env = {"BUCKET_PAIR": f"minio/{src}:aws/{dst}", "MIRROR_OVERWRITE": "false"}
    assert reconcile(run_cli, env)["copied"] == 1
    source.put_object(Bucket=src, Key="a.txt", Body=b"two, changed")

    counted = reconcile(run_cli, env)

    # Not even asked: the copy engine (which would also refuse) costs two HEADs per object.
    assert (counted["copied"], counted["replaced"], counted["already_current"]) == (0, 0, 0)
    assert counted["left_changed"] == ["a.txt"]
    body = stack.target.client().get_object(Bucket=dst, Key="a.txt")["Body"].read()
    assert body == b"one"


# ---- what mc writes: checksum, storage class, encryption ---------------------------------


def test_storage_class_and_sse_reach_every_mc_write(stack, aws_like, buckets, run_cli):
    """moto records both, as AWS does; MinIO knows neither STANDARD_IA nor SSE-S3 here."""
    src = buckets("source")
    dst = f"sc-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    local_stack.make_bucket(aws_like.client(), dst, retention_days=1)  # needs Content-MD5
    items = objects(2)
    put_all(stack.source.client(), src, items)
    env = {
        **aws_like.env(),
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "AWS_STORAGE_CLASS": "STANDARD_IA",
        "AWS_SSE": "AES256",
    }
    try:
        counted = reconcile(run_cli, env)

        assert counted["copied"] == len(items), counted
        for key, body in items.items():
            got = aws_like.client().get_object(Bucket=dst, Key=key)
            assert got["Body"].read() == body
            assert (got.get("StorageClass"), got.get("ServerSideEncryption")) == (
                "STANDARD_IA",
                "AES256",
            )
    finally:
        local_stack.remove_bucket(aws_like.client(), dst)


@pytest.mark.parametrize("key", [None, "alias/backups", "arn:aws:kms:us-east-1:1:key/abc"])
def test_kms_key_mc_cannot_use_exits_2_naming_the_variable(run_cli, key):
    env = {
        "BUCKET_PAIR": "minio/source:aws/destination",
        "AWS_SSE": "aws:kms",
        "AWS_SSE_KMS_KEY_ID": key,
    }

    result = run_cli("reconcile", env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: AWS_SSE_KMS_KEY_ID:"), result.stderr
    assert "--enc-kms" in result.stderr
    assert "Traceback" not in result.stderr


# ---- mc's credentials ----------------------------------------------------------------------


def mc_admin(stack, *args: str) -> None:
    server = stack.target
    host = server.url.split("//", 1)[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "MC_HOST_t": f"http://{server.access_key}:{server.secret_key}@{host}",
    }
    subprocess.run(
        [str(local_stack.BIN / "mc"), "admin", *args], env=env, check=True, capture_output=True
    )


@pytest.fixture
def awkward_user(stack):
    """A target MinIO user whose secret holds `/`, `+`, `=` and `@`, as AWS secrets may."""
    name = f"awk{os.getpid()}{time.monotonic_ns() % 10**6}"
    secret = "wJalrXUtn/FEMI+K7MDENG=bPxRfi@CYzEXAMPLE"
    mc_admin(stack, "user", "add", "t", name, secret)
    mc_admin(stack, "policy", "attach", "t", "readwrite", "--user", name)
    yield name, secret
    mc_admin(stack, "user", "remove", "t", name)


def test_a_secret_with_url_characters_reaches_mc_unchanged(stack, buckets, run_cli, awkward_user):
    name, secret = awkward_user
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="k.txt", Body=b"k")
    env = {
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "AWS_ACCESS_KEY": name,
        "AWS_SECRET_KEY": secret,
    }

    counted = reconcile(run_cli, env)

    assert counted["copied"] == 1, counted


def temporary_keys(stack, user: str, secret: str) -> dict[str, str]:
    """MinIO STS AssumeRole: an access key, a secret and a session token for `user`."""
    import boto3

    sts = boto3.client(
        "sts",
        endpoint_url=stack.target.url,
        aws_access_key_id=user,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
    found = sts.assume_role(RoleArn="arn:minio:iam:::role/x", RoleSessionName="tests")
    return found["Credentials"]


@pytest.mark.parametrize("how", ["static", "chain"])
def test_session_tokens_reach_mc(stack, buckets, run_cli, awkward_user, how):
    """A temporary key without its token is refused by MinIO: the copy proves mc had it."""
    keys = temporary_keys(stack, *awkward_user)
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="t.txt", Body=b"t")
    env = {"BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
    if how == "static":
        env |= {
            "AWS_ACCESS_KEY": keys["AccessKeyId"],
            "AWS_SECRET_KEY": keys["SecretAccessKey"],
            "AWS_SESSION_TOKEN": keys["SessionToken"],
        }
    else:  # the standard chain: static keys unset, the AWS SDK's variables set
        env |= {
            "AWS_ACCESS_KEY": None,
            "AWS_SECRET_KEY": None,
            "AWS_ACCESS_KEY_ID": keys["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": keys["SecretAccessKey"],
            "AWS_SESSION_TOKEN": keys["SessionToken"],
        }

    counted = reconcile(run_cli, env)

    assert counted["copied"] == 1, counted


def test_the_chain_from_a_profile_file(stack, buckets, run_cli, tmp_path):
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="p.txt", Body=b"p")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[backup]\naws_access_key_id = {stack.target.access_key}\n"
        f"aws_secret_access_key = {stack.target.secret_key}\n"
    )
    env = {
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "AWS_ACCESS_KEY": None,
        "AWS_SECRET_KEY": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_PROFILE": "backup",
    }

    assert reconcile(run_cli, env)["copied"] == 1


def test_no_credentials_anywhere_fails_the_pair_with_the_cause(stack, buckets, run_cli, tmp_path):
    src, dst = buckets("source"), buckets("target")
    env = {
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "AWS_ACCESS_KEY": None,
        "AWS_SECRET_KEY": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    result = run_cli("reconcile", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "cause: No target credentials" in result.stdout
    assert "AWS_ACCESS_KEY_ID, AWS_PROFILE" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_web_identity_is_renewed_by_mc_itself(stack, aws_like, buckets, run_cli, tmp_path):
    """IRSA: mc gets its own STS client (it renews the role's keys; keys handed over once
    would expire in a long run). The AWS-like server answers AssumeRoleWithWebIdentity."""
    src = buckets("source")
    dst = f"wi-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    local_stack.make_bucket(aws_like.client(), dst)
    stack.source.client().put_object(Bucket=src, Key="w.txt", Body=b"w")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")  # moto does not check it
    seen = tmp_path / "mc-env"
    wrapper = tmp_path / "mc"
    wrapper.write_text(
        f'#!/bin/bash\nenv | grep -E "^MC_(HOST|STS|ROLE|WEB)" >>"{seen}"\n'
        f'exec "{local_stack.BIN / "mc"}" "$@"\n'
    )
    wrapper.chmod(0o755)
    before = aws_like.served()
    env = {
        **aws_like.env(),
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "AWS_ACCESS_KEY": None,
        "AWS_SECRET_KEY": None,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/backup",
        "AWS_ENDPOINT_URL_STS": aws_like.url,
        "MC_BINARY": str(wrapper),
    }
    try:
        counted = reconcile(run_cli, env)

        assert counted["copied"] == 1, counted
        got = aws_like.client().get_object(Bucket=dst, Key="w.txt")["Body"].read()
        assert got == b"w"
        mc_env = seen.read_text()
        assert f"MC_HOST_aws={aws_like.url}\n" in mc_env  # no keys: mc asks STS
        assert f"MC_STS_ENDPOINT_aws={aws_like.url}\n" in mc_env
        assert f"MC_WEB_IDENTITY_TOKEN_FILE_aws={token}\n" in mc_env
        # POST / ?Action=AssumeRoleWithWebIdentity: mc's own requests to STS
        assert aws_like.served()["POST bucket"] > before["POST bucket"], aws_like.served()
    finally:
        local_stack.remove_bucket(aws_like.client(), dst)
