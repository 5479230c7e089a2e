"""The copy engine against the real source MinIO and each kind of target (design 7): the
target MinIO, and the AWS-like server (moto behind deploy/local/aws_like.py), plain and
with Object Lock. A test runs on every kind unless it names some (`on_minio`,
`on_aws_like`).

Request counts are what the servers say they served: MinIO's v3 metrics, moto's access
log (there CopyObject shows as PutObject, and a part is UploadPart, MinIO's
PutObjectPart). Races are made deterministic by a Copier whose source reads let a
second, real copier run at the worst moment: between reading the source and writing.

The Object Lock bucket has a GOVERNANCE default retention (what AWS backup buckets are):
AWS, and moto, refuse a write there that carries neither Content-MD5 nor a checksum
(`MissingUploadObjectWithObjectLockHeaders`), so the tests' own writes to a target carry
one. aws_like.py gives moto AWS's checksum rules (a lone x-amz-checksum-* header counts,
values are verified, Object Lock buckets refuse unchecked PutObject and UploadPart with
AWS's InvalidRequest). Where moto still differs from AWS, the tests say so:
- moto lists and HEADs LastModified to the second, as AWS does (MinIO: milliseconds).
- moto ignores If-Match on CompleteMultipartUpload (AWS honours it; If-None-Match moto
  does honour), so a multipart replace racing another writer is not refused there.
- moto answers 404 to a PUT whose key holds a newline (AWS stores it).
- moto's SSE-KMS answers carry the MD5 as ETag (AWS: not the MD5).
- moto refuses CopyObject into a bucket with default retention, answers
  GetObjectRetention for a default retention with a 500, and ignores encoding-type=url in
  ListObjectVersions (a key with a carriage return comes back with a newline).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import http.client
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import pytest
import stack as local_stack
from prometheus_client.parser import text_string_to_metric_families

from replicator import config
from replicator.copier import SOURCE_ETAG, SOURCE_META, Budget, Copier, Outcome
from replicator.errors import CopyError
from replicator.task import Task
from tests.conftest import Target, base_env

LOCKED = "aws-like object-lock"
on_minio = pytest.mark.parametrize("target", ["minio"], indirect=True)
on_aws_like = pytest.mark.parametrize("target", ["aws-like", LOCKED], indirect=True)


@pytest.fixture(autouse=True)
def near(monkeypatch) -> None:
    """Every target here is on loopback, but the AWS-like one (moto) can take over FAR_S
    to create an upload: the part counts asserted here are a near target's."""
    monkeypatch.setattr("replicator.copier.FAR_S", float("inf"))


@pytest.fixture(params=["minio", "aws-like", LOCKED])
def target(request, stack) -> Iterator[Target]:
    """conftest's two targets, and the AWS-like one again with an Object Lock bucket."""
    aws = request.param.startswith("aws-like")
    kind = Target(request.param, request.getfixturevalue("aws_like") if aws else stack.target)
    yield kind
    kind.cleanup()


@pytest.fixture
def pair(stack, buckets, target) -> tuple[str, str, config.Settings]:
    """(source bucket, target bucket, settings) on this test's kind of target."""
    src = buckets("source")
    dst = target.bucket(retention_days=1 if target.name == LOCKED else 0)
    env = {**base_env(stack), **target.env(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
    return src, dst, config.load(env)


def minio_served(server, side: str) -> collections.Counter[str]:
    """Every S3 request a MinIO has served so far, as "side Operation"."""
    counts: collections.Counter[str] = collections.Counter()
    with urllib.request.urlopen(f"{server.url}/minio/metrics/v3/api/requests") as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "minio_api_requests_total":
                counts[f"{side} {sample.labels['name']}"] += int(sample.value)
    return counts


def served(stack, target: Target | None = None) -> collections.Counter[str]:
    """Every request the source and the target (the target MinIO by default) served."""
    server = target.server if target else stack.target
    if isinstance(server, local_stack.MotoServer):
        moto = collections.Counter({f"target {k}": v for k, v in server.served().items()})
        return minio_served(stack.source, "source") + moto
    return minio_served(stack.source, "source") + minio_served(server, "target")


class Requests:
    """The requests served between construction and `spent()`."""

    def __init__(self, stack, target: Target | None = None) -> None:
        self.stack, self.target = stack, target
        self.before = served(stack, target)

    def spent(self) -> dict[str, int]:
        after = served(self.stack, self.target)
        return {k: after[k] - self.before[k] for k in after if after[k] - self.before[k]}


def part_upload(target: Target) -> str:
    """How the target's request counts name a part upload."""
    moto = isinstance(target.server, local_stack.MotoServer)
    return "target UploadPart" if moto else "target PutObjectPart"


def body(target: Target, bucket: str, key: str) -> bytes:
    return target.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_new_object_costs_a_target_head_a_source_get_and_a_put(stack, target, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="a b+%.txt", Body=b"new", ContentType="x/y")
    copier = Copier(settings)
    requests = Requests(stack, target)

    assert copier.copy(Task(bucket=src, key="a b+%.txt", origin="backfill")).copied
    assert requests.spent() == {
        "target HeadObject": 1,
        "source GetObject": 1,
        "target PutObject": 1,
    }
    head = target.client().head_object(Bucket=dst, Key="a b+%.txt")
    assert head["ContentType"] == "x/y" and body(target, dst, "a b+%.txt") == b"new"


def test_up_to_date_object_costs_two_heads(stack, target, pair):
    src, _, settings = pair
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"same", Metadata={"a": "1"})
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="k", origin="backfill")).copied
    requests = Requests(stack, target)

    assert copier.copy(Task(bucket=src, key="k", origin="backfill")) == Outcome(
        False, "target already current"
    )
    assert requests.spent() == {"target HeadObject": 1, "source HeadObject": 1}


def test_a_metadata_only_change_replicates(stack, target, pair):
    """CopyObject with REPLACE keeps the bytes (and the ETag) but changes what travels."""
    src, dst, settings = pair
    source = stack.source.client()
    source.put_object(Bucket=src, Key="m", Body=b"same", ContentType="a/b", Metadata={"v": "1"})
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="m", origin="webhook")).copied
    source.copy_object(
        Bucket=src,
        Key="m",
        CopySource={"Bucket": src, "Key": "m"},
        MetadataDirective="REPLACE",
        ContentType="c/d",
        Metadata={"v": "2"},
    )

    assert copier.copy(Task(bucket=src, key="m", origin="webhook")).copied
    head = target.client().head_object(Bucket=dst, Key="m")
    assert head["ContentType"] == "c/d" and head["Metadata"]["v"] == "2"
    assert copier.copy(Task(bucket=src, key="m", origin="webhook")).reason == (
        "target already current"
    )


def test_copies_made_before_fingerprints_count_by_their_bytes(stack, target, pair):
    """An upgrade must not re-copy every object a previous version copied."""
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="old", Body=b"x")
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="old", origin="backfill")).copied
    client = target.client()
    head = client.head_object(Bucket=dst, Key="old")
    metadata = {k: v for k, v in head["Metadata"].items() if k != SOURCE_META}
    # The old copy written again by a PUT (moto refuses every CopyObject into a bucket
    # with default retention).
    client.put_object(
        Bucket=dst, Key="old", Body=b"x", Metadata=metadata, ChecksumAlgorithm="SHA256"
    )
    assert copier.copy(Task(bucket=src, key="old", origin="backfill")).reason == (
        "target already current"
    )


HARD_KEYS = [
    "dir/",
    "sp ace/plus+sign/pct%20/q?x#frag",
    "ünïcødé/😀.txt",
    "tab\tand\nnewline",
    "tab\tand\rcarriage return",
    "back\\slash",
    "x" * 200 + "/" + "y" * 200 + "/" + "z" * 200,
    "trailing.",
]


@pytest.mark.parametrize("key", HARD_KEYS, ids=range(len(HARD_KEYS)))
def test_hard_keys_and_every_kept_header_arrive_exactly(stack, target, pair, key):
    if "\n" in key and target.name != "minio":
        pytest.skip("moto answers 404 to a PUT whose key holds a newline (AWS stores it)")
    src, dst, settings = pair
    expires = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    data = b"" if key.endswith("/") else key.encode()
    stack.source.client().put_object(
        Bucket=src,
        Key=key,
        Body=data,
        ContentType="text/x-hard",
        ContentEncoding="identity",
        ContentDisposition='attachment; filename="h.txt"',
        CacheControl="max-age=60",
        ContentLanguage="ko",
        Expires=expires,
        Metadata={"color": "Blue"},
    )
    assert Copier(settings).copy(Task(bucket=src, key=key, origin="backfill")).copied

    client = target.client()
    listed = client.list_objects_v2(Bucket=dst)["Contents"]
    assert [o["Key"] for o in listed] == [key]
    head = client.head_object(Bucket=dst, Key=key)
    assert head["ContentType"] == "text/x-hard"
    assert head["ContentEncoding"] == "identity"
    assert head["ContentDisposition"] == 'attachment; filename="h.txt"'
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentLanguage"] == "ko"
    assert head["ExpiresString"] == "Tue, 06 May 2031 07:08:09 GMT"
    assert head["Metadata"]["color"] == "Blue"
    assert body(target, dst, key) == data


class Interrupted(Copier):
    """Runs `meanwhile` once, right after this copier has read the source's bytes."""

    def __init__(self, settings, meanwhile: Callable[[], None]) -> None:
        super().__init__(settings)
        self.meanwhile: Callable[[], None] | None = meanwhile
        for name in ("get", "read"):
            real = getattr(self.source, name)

            def hooked(*args, real=real, **kwargs):
                got = real(*args, **kwargs)
                if self.meanwhile:
                    run, self.meanwhile = self.meanwhile, None
                    run()
                return got

            setattr(self.source, name, hooked)


def test_an_older_read_never_lands_over_a_newer_copy(stack, target, pair):
    """New key: v1 is read, then v2 is written to the source and copied by another worker;
    the v1 write (If-None-Match: *) is refused with 412 (moto honours it as AWS does)."""
    src, dst, settings = pair
    source = stack.source.client()
    source.put_object(Bucket=src, Key="k", Body=b"v1")
    task = Task(bucket=src, key="k", origin="webhook")

    def newer_copy_lands():
        source.put_object(Bucket=src, Key="k", Body=b"v2")
        assert Copier(settings).copy(task).copied

    Interrupted(settings, newer_copy_lands).copy(task)
    assert body(target, dst, "k") == b"v2"


def test_replacing_rechecks_a_source_that_went_back(stack, target, pair):
    """Target holds v0; v1 is read; the source goes back to v0, which another worker then
    finds "current". The v1 write must not stay."""
    src, dst, settings = pair
    source = stack.source.client()
    task = Task(bucket=src, key="k", origin="webhook")
    source.put_object(Bucket=src, Key="k", Body=b"v0")
    assert Copier(settings).copy(task).copied
    source.put_object(Bucket=src, Key="k", Body=b"v1")

    def source_goes_back():
        source.put_object(Bucket=src, Key="k", Body=b"v0")
        assert Copier(settings).copy(task).reason == "target already current"

    assert Interrupted(settings, source_goes_back).copy(task).copied
    assert body(target, dst, "k") == b"v0"


def test_large_object_is_read_in_parts_pinned_by_etag(stack, target, pair):
    """A task without a size still finds out from the GET that the object needs parts."""
    src, dst, settings = pair
    data = bytes(range(256)) * (17 * 4096)  # 17 MiB: above the single-PUT threshold
    stack.source.client().put_object(Bucket=src, Key="big", Body=data, Metadata={"m": "1"})
    copier = Copier(settings)
    requests = Requests(stack, target)

    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).bytes == len(data)
    spent = requests.spent()
    assert spent[part_upload(target)] == 2 and spent["target CompleteMultipartUpload"] == 1
    assert body(target, dst, "big") == data  # 16 + 1 MiB
    head = target.client().head_object(Bucket=dst, Key="big")
    assert head["Metadata"]["m"] == "1" and head["ETag"].endswith('-2"')
    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).reason == (
        "target already current"
    )


def test_a_source_changing_during_a_multipart_copy_is_chased(stack, target, pair):
    src, dst, settings = pair
    source = stack.source.client()
    old, new = b"a" * (17 * 1024 * 1024), b"b" * (17 * 1024 * 1024)
    source.put_object(Bucket=src, Key="big", Body=old)

    def rewrite():
        source.put_object(Bucket=src, Key="big", Body=new)

    Interrupted(settings, rewrite).copy(Task(bucket=src, key="big", origin="backfill"))
    assert body(target, dst, "big") == new


@on_aws_like
def test_a_multipart_replace_lands_the_new_content(stack, target, pair):
    """Replacing a large copy: CompleteMultipartUpload carries If-Match (the target's ETag
    as seen). moto ignores If-Match there (AWS honours it), so only the outcome is checked."""
    src, dst, settings = pair
    source = stack.source.client()
    source.put_object(Bucket=src, Key="big", Body=b"1" * (17 * 1024 * 1024))
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).copied
    new = b"2" * (18 * 1024 * 1024)
    source.put_object(Bucket=src, Key="big", Body=new)

    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).copied
    assert body(target, dst, "big") == new
    head = target.client().head_object(Bucket=dst, Key="big")
    etag = source.head_object(Bucket=src, Key="big")["ETag"].strip('"')
    assert head["Metadata"][SOURCE_ETAG] == etag


def test_a_lister_that_saw_no_target_object_saves_the_head(stack, target, pair):
    src, _, settings = pair
    stack.source.client().put_object(Bucket=src, Key="n", Body=b"new")
    copier = Copier(settings)
    requests = Requests(stack, target)

    assert copier.copy(Task(bucket=src, key="n", origin="backfill", target_absent=True)).copied
    assert requests.spent() == {"source GetObject": 1, "target PutObject": 1}


@on_minio
def test_a_stream_of_new_keys_is_written_first_until_keys_exist(stack, target, pair):
    """After mostly new keys the engine skips the target HEAD; a key the target already
    has then costs a refused PUT, is left as it is, and a few such keys bring the HEAD
    back."""
    src, dst, settings = pair
    source = stack.source.client()
    for i in range(120):
        source.put_object(Bucket=src, Key=f"n/{i}", Body=b"new %d" % i)
    copier = Copier(settings)
    for i in range(100):
        assert copier.copy(Task(bucket=src, key=f"n/{i}", origin="stream")).copied

    requests = Requests(stack, target)
    assert copier.copy(Task(bucket=src, key="n/100", origin="stream")).copied
    assert requests.spent() == {"source GetObject": 1, "target PutObject": 1}
    assert body(target, dst, "n/100") == b"new 100"

    target.client().put_object(Bucket=dst, Key="n/101", Body=b"target's own")
    requests = Requests(stack, target)
    outcome = copier.copy(Task(bucket=src, key="n/101", origin="stream"))
    assert outcome.copied and body(target, dst, "n/101") == b"new 101"
    spent = requests.spent()
    assert spent["target PutObject"] == 2 and spent["target HeadObject"] == 1, spent

    for i in range(3):  # replays of current keys
        copier.copy(Task(bucket=src, key=f"n/{i}", origin="stream"))
    requests = Requests(stack, target)
    assert not copier.copy(Task(bucket=src, key="n/3", origin="stream")).copied
    assert requests.spent() == {"target HeadObject": 1, "source HeadObject": 1}


def put_raw(server, bucket: str, key: str, headers: dict[str, bytes], data: bytes) -> None:
    """A PUT whose header values go out as these exact bytes (boto3 would re-encode)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        "PUT",
        f"{server.url}/{bucket}/{quote(key)}",
        data=data,
        headers={k: v.decode() for k, v in headers.items()},  # signed as UTF-8
    )
    credentials = Credentials(server.access_key, server.secret_key)
    S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    url = urlsplit(request.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:  # bytes values go out as they are
        connection.putrequest("PUT", url.path, skip_accept_encoding=True)
        for name, value in request.headers.items():
            connection.putheader(name, value.encode() if isinstance(value, str) else value)
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


@on_minio
@pytest.mark.parametrize("key", ["small", "dir/", "big"])
def test_raw_utf8_header_values_arrive_byte_for_byte(stack, target, pair, key):
    """MinIO keeps a UTF-8 Content-Disposition as its raw bytes; both write paths (the
    single PUT, multipart) must send those bytes, signed as they are sent."""
    src, dst, settings = pair
    headers = {
        "Content-Disposition": "inline; filename=voilà".encode(),
        "Content-Language": "Å".encode(),
    }
    data = b"x" * (17 * 1024 * 1024) if key == "big" else b"" if key == "dir/" else b"abc"
    put_raw(stack.source, src, key, headers, data)

    assert Copier(settings).copy(Task(bucket=src, key=key, origin="stream")).copied
    got = target.client().head_object(Bucket=dst, Key=key)["ResponseMetadata"]
    raw = {name: got["HTTPHeaders"][name.lower()].encode("latin-1") for name in headers}
    assert raw == headers


def test_a_stale_absent_hint_never_overwrites_blindly(stack, target, pair):
    """The target got the object after the listing: the write-first PUT is refused (412),
    the engine looks, and MIRROR_OVERWRITE=false keeps the target's object."""
    src, dst, _ = pair
    stack.source.client().put_object(Bucket=src, Key="n", Body=b"source")
    target.client().put_object(
        Bucket=dst, Key="n", Body=b"target's own", ChecksumAlgorithm="SHA256"
    )
    env = {**base_env(stack), **target.env(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
    keep = config.load({**env, "MIRROR_OVERWRITE": "false"})

    outcome = Copier(keep).copy(Task(bucket=src, key="n", origin="backfill", target_absent=True))
    assert not outcome.copied and "MIRROR_OVERWRITE=false" in outcome.reason
    assert body(target, dst, "n") == b"target's own"


@on_aws_like
@pytest.mark.parametrize("size", [5, 17 * 1024 * 1024], ids=["single", "multipart"])
def test_storage_class_encryption_and_tags_are_written(stack, target, pair, size):
    """Issue 12: AWS_STORAGE_CLASS and AWS_SSE on every write, source tags copied
    (MIRROR_COPY_TAGS defaults to true), user metadata and kept headers kept."""
    src, dst, _ = pair
    data = b"t" * size
    stack.source.client().put_object(
        Bucket=src,
        Key="tagged",
        Body=data,
        ContentType="x/tagged",
        Metadata={"owner": "ops"},
        Tagging="team=backup&tier=cold",
    )
    for sse, key_id in (("AES256", None), ("aws:kms", "arn:aws:kms:us-east-1:000000000000:key/k1")):
        settings = config.load(
            {
                **base_env(stack),
                **target.env(),
                "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
                "AWS_STORAGE_CLASS": "STANDARD_IA",
                "AWS_SSE": sse,
                **({"AWS_SSE_KMS_KEY_ID": key_id} if key_id else {}),
            }
        )
        client = target.client()
        for version in client.list_object_versions(Bucket=dst).get("Versions", []):
            client.delete_object(
                Bucket=dst,
                Key=version["Key"],
                VersionId=version["VersionId"],
                BypassGovernanceRetention=True,
            )

        assert Copier(settings).copy(Task(bucket=src, key="tagged", origin="backfill")).copied

        head = client.head_object(Bucket=dst, Key="tagged")
        assert head.get("StorageClass") == "STANDARD_IA", sse
        assert head.get("ServerSideEncryption") == sse
        if key_id:
            assert head.get("SSEKMSKeyId") == key_id
        assert head["ContentType"] == "x/tagged" and head["Metadata"]["owner"] == "ops"
        tags = client.get_object_tagging(Bucket=dst, Key="tagged")["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"team": "backup", "tier": "cold"}
        assert body(target, dst, "tagged") == data


@pytest.mark.parametrize("target", [LOCKED], indirect=True)
def test_object_lock_copies_are_retained(stack, target, pair):
    """On the locked bucket the copy gets the default retention (it cannot be deleted)."""
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="kept", Body=b"immutable")
    assert Copier(settings).copy(Task(bucket=src, key="kept", origin="backfill")).copied

    # HEAD, not GetObjectRetention: moto answers that with a 500 for a default retention.
    head = target.client().head_object(Bucket=dst, Key="kept")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]
    assert body(target, dst, "kept") == b"immutable"


@on_minio
@pytest.mark.parametrize("key", ["plain.txt", "dir/", "big.bin"])
def test_writes_carry_a_checksum_tags_and_the_storage_class(stack, target, pair, key):
    """Every write path sends a checksum the target checks (the single PUT a SHA-256,
    multipart a CRC32 per part), the source's tags and AWS_STORAGE_CLASS."""
    src, dst, _ = pair
    data = b"" if key.endswith("/") else (b"x" * (17 * 1024 * 1024) if key == "big.bin" else b"hi")
    stack.source.client().put_object(Bucket=src, Key=key, Body=data, Tagging="team=a%20b&n=1")
    settings = config.load(
        {
            **base_env(stack),
            "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
            "AWS_STORAGE_CLASS": "reduced_redundancy",
        }
    )

    assert Copier(settings).copy(Task(bucket=src, key=key, origin="backfill")).copied
    target = target.client()
    head = target.head_object(Bucket=dst, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32" if key == "big.bin" else "ChecksumSHA256"), head
    assert head.get("StorageClass") == "REDUCED_REDUNDANCY"
    tags = target.get_object_tagging(Bucket=dst, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "a b", "n": "1"}


@on_minio
def test_tags_stay_behind_when_mirror_copy_tags_is_false(stack, target, pair):
    src, dst, _ = pair
    stack.source.client().put_object(Bucket=src, Key="t", Body=b"x", Tagging="a=1")
    settings = config.load(
        {**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", "MIRROR_COPY_TAGS": "false"}
    )
    requests = Requests(stack, target)
    assert Copier(settings).copy(Task(bucket=src, key="t", origin="backfill")).copied
    assert target.client().get_object_tagging(Bucket=dst, Key="t")["TagSet"] == []
    assert "source GetObjectTagging" not in requests.spent()


def removal(bucket: str, key: str) -> Task:
    return Task(bucket=bucket, key=key, origin="webhook", event="s3:ObjectRemoved:Delete")


def with_deletes(stack, src: str, dst: str) -> config.Settings:
    env = {**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", "MIRROR_DELETE": "true"}
    return config.load(env)


@on_minio
def test_deletes_are_off_by_default(stack, target, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")
    Copier(settings).copy(Task(bucket=src, key="k", origin="backfill"))
    stack.source.client().delete_object(Bucket=src, Key="k")

    outcome = Copier(settings).copy(removal(src, "k"))
    assert not outcome.deleted and "MIRROR_DELETE=false" in outcome.reason
    assert body(target, dst, "k") == b"x"


@on_minio
def test_a_removed_source_object_is_deleted_on_the_target(stack, target, pair):
    src, dst, _ = pair
    settings = with_deletes(stack, src, dst)
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")
    Copier(settings).copy(Task(bucket=src, key="k", origin="backfill"))
    stack.source.client().delete_object(Bucket=src, Key="k")

    assert Copier(settings).copy(removal(src, "k")).deleted
    assert target.client().list_objects_v2(Bucket=dst)["KeyCount"] == 0
    again = Copier(settings).copy(removal(src, "k"))
    assert not again.deleted and again.reason == "target copy already gone"


@on_minio
def test_a_removal_of_a_key_the_source_still_has_deletes_nothing(stack, target, pair):
    src, dst, _ = pair
    settings = with_deletes(stack, src, dst)
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")
    Copier(settings).copy(Task(bucket=src, key="k", origin="backfill"))

    outcome = Copier(settings).copy(removal(src, "k"))
    assert not outcome.deleted and outcome.reason.startswith("source still has")
    assert body(target, dst, "k") == b"x"


class DeleteInterrupted(Copier):
    """Runs `meanwhile` once, right after this copier has looked at the target."""

    def __init__(self, settings, meanwhile: Callable[[], None]) -> None:
        super().__init__(settings)
        real = self.target.head

        def hooked(*args, **kwargs):
            got = real(*args, **kwargs)
            if self.meanwhile:
                run, self.meanwhile = self.meanwhile, None
                run()
            return got

        self.meanwhile: Callable[[], None] | None = meanwhile
        self.target.head = hooked


@on_minio
def test_a_re_create_racing_a_delete_always_wins(stack, target, pair):
    """The key is re-created and copied between the delete's look and its DELETE: MinIO
    ignores If-Match on DELETE, so the engine's re-check must bring the new copy back."""
    src, dst, _ = pair
    settings = with_deletes(stack, src, dst)
    source = stack.source.client()
    source.put_object(Bucket=src, Key="k", Body=b"old")
    Copier(settings).copy(Task(bucket=src, key="k", origin="backfill"))
    source.delete_object(Bucket=src, Key="k")

    def re_created():
        source.put_object(Bucket=src, Key="k", Body=b"new")
        assert Copier(settings).copy(Task(bucket=src, key="k", origin="webhook")).copied

    outcome = DeleteInterrupted(settings, re_created).copy(removal(src, "k"))
    assert not outcome.deleted
    assert body(target, dst, "k") == b"new"


def test_the_part_budget_bounds_bytes_in_memory_and_lets_a_huge_part_through_alone():
    import threading
    import time

    from replicator.copier import Budget

    budget, peak, lock = Budget(100), [0], threading.Lock()
    live = [0]

    def part(size: int) -> None:
        with budget.hold(size):
            with lock:
                live[0] += size
                peak[0] = max(peak[0], live[0])
            time.sleep(0.01)
            with lock:
                live[0] -= size

    sizes = [30] * 20 + [250] + [30] * 5
    threads = [threading.Thread(target=part, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == 250  # the huge part ran alone; otherwise at most 90 (3 x 30)


def test_the_budget_serves_in_order_so_a_large_body_is_not_overtaken():
    """A large body waiting for room is not overtaken by small ones that would fit: they
    queue behind it. A try without waiting fails while anyone waits."""
    budget, order = Budget(4), []
    budget.take(3)

    def ask(name: str, size: int) -> None:
        budget.take(size)
        order.append(name)

    large = threading.Thread(target=ask, args=("large", 4))
    large.start()
    while budget.issued == budget.served:
        time.sleep(0.01)
    small = threading.Thread(target=ask, args=("small", 1))
    small.start()
    time.sleep(0.2)
    assert order == [] and not budget.take(1, wait=False)  # 3 + 1 fits, but large is first
    budget.give(3)
    large.join(5)
    assert order == ["large"]
    budget.give(4)
    small.join(5)
    assert order == ["large", "small"] and budget.used == 1
    assert budget.take(3, wait=False) and not budget.take(1, wait=False)


class Watched(Budget):
    """A body budget that records the sizes asked of it, in order."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.asked: list[int] = []

    def take(self, size: int, wait: bool = True) -> bool:
        self.asked.append(size)
        return super().take(size, wait)


class HeldBodies:
    """The bytes of whole bodies a copier really holds at once: a body counts from the
    moment its GET (or ranged read) returned it until the PUT that sends it returned,
    success or failure. Each PUT waits `pause` first, so that copies overlap."""

    def __init__(self, copier: Copier, pause: float) -> None:
        self.lock, self.live, self.peak = threading.Lock(), 0, 0
        get, read, put = copier.source.get, copier.source.read, copier.target.put

        def getting(*args, **kwargs):
            head, data = get(*args, **kwargs)
            if data is not None:
                self.count(len(data))
            return head, data

        def reading(*args, **kwargs):
            data = read(*args, **kwargs)
            self.count(len(data))
            return data

        def putting(bucket, key, data, *args, **kwargs):
            try:
                time.sleep(pause)
                return put(bucket, key, data, *args, **kwargs)
            finally:
                self.count(-len(data))

        copier.source.get, copier.source.read, copier.target.put = getting, reading, putting

    def count(self, size: int) -> None:
        with self.lock:
            self.live += size
            self.peak = max(self.peak, self.live)


@on_minio
@pytest.mark.parametrize("case", ["new", "replaced"])
def test_bodies_held_at_once_never_exceed_the_body_budget(stack, target, pair, case):
    """A burst of single-PUT copies: each body's bytes come from the body budget before
    it is read and go back once its PUT is done, so the bodies held at once stay within
    it at every moment (not only on average), new keys (one GET) and replacements (HEAD
    first, then a ranged read) alike. Without the budget all eight are held at once."""
    src, dst, settings = pair
    size, copies = 200 * 1024, 8
    keys = [f"burst/{i}" for i in range(copies)]
    source = stack.source.client()
    if case == "replaced":
        for key in keys:
            source.put_object(Bucket=src, Key=key, Body=b"old")
            assert Copier(settings).copy(Task(bucket=src, key=key, origin="backfill")).copied
    data = {key: os.urandom(size) for key in keys}
    for key in keys:
        source.put_object(Bucket=src, Key=key, Body=data[key])
    copier = Copier(settings)
    copier.bodies = Budget(2 * size + size // 2)  # room for two bodies, not three
    held = HeldBodies(copier, pause=0.1)

    def copy(key: str) -> Outcome:
        return copier.copy(Task(bucket=src, key=key, origin="webhook"))

    with ThreadPoolExecutor(copies) as pool:
        outcomes = list(pool.map(copy, keys))
    assert all(o.copied for o in outcomes), outcomes
    assert held.peak <= copier.bodies.total, f"{held.peak} bytes held at once"
    assert held.peak >= 2 * size  # the copies did overlap: the bound was tested
    assert held.live == copier.bodies.used == 0
    for key in keys:
        assert body(target, dst, key) == data[key], key


@on_minio
@pytest.mark.parametrize("case", ["new", "replaced"])
def test_a_body_is_not_read_until_the_body_budget_has_room(stack, target, pair, case):
    """The size is known before the body is read (the GET's headers, or the HEAD): with
    the body budget full, the copy asks it for exactly that size and waits with no body
    read (a GET that found no room is dropped unread, not kept open while waiting); once
    room is given back it reads and copies."""
    src, dst, settings = pair
    data = os.urandom(300 * 1024)
    source = stack.source.client()
    if case == "replaced":
        source.put_object(Bucket=src, Key="k", Body=b"old")
        assert Copier(settings).copy(Task(bucket=src, key="k", origin="backfill")).copied
    source.put_object(Bucket=src, Key="k", Body=data)
    copier = Copier(settings)
    copier.bodies = Watched(len(data))
    reads = threading.Event()
    real = copier.source.transport.read

    def reading(answer, size):
        reads.set()
        return real(answer, size)

    copier.source.transport.read = reading
    outcome: list[Outcome] = []
    copying = threading.Thread(
        target=lambda: outcome.append(copier.copy(Task(bucket=src, key="k", origin="webhook")))
    )
    with copier.bodies.hold(1):  # another copy's body: this one no longer fits
        copying.start()
        deadline = time.monotonic() + 10
        while copier.bodies.issued == copier.bodies.served and time.monotonic() < deadline:
            time.sleep(0.01)
        assert copier.bodies.issued == copier.bodies.served + 1  # the copy waits its turn
        assert set(copier.bodies.asked[1:]) == {len(data)}  # asked for the size
        assert not reads.wait(0.5), "the body was read before the budget had room for it"
        assert copying.is_alive()
    copying.join(10)
    assert reads.is_set() and outcome and outcome[0].copied
    assert copier.bodies.used == 0
    assert body(target, dst, "k") == data


@on_minio
def test_a_small_copy_never_waits_for_the_part_budget(stack, target, pair):
    """Bodies have a budget of their own: with every part buffer taken (large objects
    copying), a small object still copies at once."""
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="small", Body=b"s" * 1000)
    copier = Copier(settings)
    assert copier.bodies is not copier.buffers
    done = threading.Event()

    def copy() -> None:
        assert copier.copy(Task(bucket=src, key="small", origin="webhook")).copied
        done.set()

    with copier.buffers.hold(copier.buffers.total):
        threading.Thread(target=copy, daemon=True).start()
        assert done.wait(10), "a small copy waited behind the parts' budget"
    assert body(target, dst, "small") == b"s" * 1000


@on_minio
def test_a_failed_put_gives_its_body_back_to_the_budget(stack, target, pair):
    """The target refuses the write (its bucket is gone): the body's bytes are given back
    all the same."""
    src = pair[0]
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x" * 1000)
    env = {**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/no-such-bucket-here"}
    copier = Copier(config.load(env))
    copier.bodies = Watched(copier.bodies.total)
    with pytest.raises(CopyError):
        copier.copy(Task(bucket=src, key="k", origin="webhook"))
    assert copier.bodies.asked == [1000] and copier.bodies.used == 0


def test_a_removal_never_deletes_a_key_another_pair_writes(stack, buckets):
    """Two pairs write into one target bucket; the second covers all of it. A removal on
    the first pair's source cannot speak for the second pair's source."""
    src, other, dst = buckets("source"), buckets("source"), buckets("target")
    env = {
        **base_env(stack),
        "BUCKET_PAIRS": f"minio/{src}:aws/{dst}/one;minio/{other}:aws/{dst}",
        "MIRROR_DELETE": "true",
    }
    settings = config.load(env)
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")
    Copier(settings).copy(Task(bucket=src, key="k", origin="backfill"))
    stack.source.client().delete_object(Bucket=src, Key="k")

    outcome = Copier(settings).copy(removal(src, "k"))
    assert not outcome.deleted and "another pair" in outcome.reason
    got = stack.target.client().get_object(Bucket=dst, Key="one/k")["Body"].read()
    assert got == b"x"


def test_a_part_larger_than_the_buffer_budget_is_streamed_never_held(stack, target, pair):
    """Objects above ~470 GiB have parts above the whole budget: such a part is read
    twice as a stream (its CRC32, then an UNSIGNED-PAYLOAD upload carrying it, which the
    target checks: Object Lock buckets take it)."""
    from replicator.copier import Budget

    src, dst, settings = pair
    data = bytes(range(256)) * (17 * 4096)  # 17 MiB: a 16 MiB part and a 1 MiB one
    stack.source.client().put_object(Bucket=src, Key="huge", Body=data)
    copier = Copier(settings)
    copier.buffers = Budget(4 * 1024 * 1024)  # as if the parts were hundreds of MiB
    requests = Requests(stack, target)

    assert copier.copy(Task(bucket=src, key="huge", origin="backfill")).copied
    spent = requests.spent()
    # the size GET, the 16 MiB part twice (streamed), the 1 MiB part once (held)
    assert spent["source GetObject"] == 4 and spent[part_upload(target)] == 2, spent
    assert body(target, dst, "huge") == data
    head = target.client().head_object(Bucket=dst, Key="huge", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32"), head


def test_a_failing_part_is_sent_part_tries_times_and_the_worker_adds_none(stack, buckets):
    """Retries do not nest: each part of a multipart copy into a target answering 500 to
    every part is sent PART_TRIES times, and the worker's in-process retries (the same
    predicate the worker uses) add no more sends in that delivery."""
    import tenacity

    from replicator import copier as engine
    from replicator import worker
    from replicator.errors import CopyError, Kind

    src, dst = buckets("source"), buckets("target")
    key = "parts-fail.bin"
    stack.source.client().put_object(Bucket=src, Key=key, Body=b"p" * (17 * 1024 * 1024))
    proxy = local_stack.FaultProxy(stack.target.url).start()
    try:
        proxy.add_rule(key, "bare500", "PUT")
        env = {**base_env(stack), "AWS_URL": proxy.url, "BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
        copier = Copier(config.load(env))
        retrying = tenacity.Retrying(
            retry=worker._TRANSIENT, stop=tenacity.stop_after_attempt(3), reraise=True
        )
        with pytest.raises(CopyError) as raised:
            retrying(copier.copy, Task(bucket=src, key=key, origin="backfill"))
        assert raised.value.kind is Kind.TRANSIENT and raised.value.retried
        # Two parts, each at most PART_TRIES (one failing for good ends the other's tries
        # early): the worker's in-process retries would have doubled or tripled this.
        assert engine.PART_TRIES <= proxy.count(key, "PUT") <= 2 * engine.PART_TRIES
    finally:
        proxy.stop()


def parts_at_once(copier: Copier) -> list[int]:
    """Wraps the copier's part uploads: each waits 0.2 s so parts in flight overlap;
    returns the list the most parts uploading at once is appended to."""
    send, lock, state, most = copier.target.upload_part, threading.Lock(), [0], []

    def upload_part(*args, **kwargs):
        with lock:
            state[0] += 1
            most.append(state[0])
        try:
            time.sleep(0.2)
            return send(*args, **kwargs)
        finally:
            with lock:
                state[0] -= 1

    copier.target.upload_part = upload_part
    return most


@on_minio
@pytest.mark.parametrize("small_running", [False, True])
def test_a_large_copy_sends_one_part_at_a_time_while_small_copies_run(
    stack, target, pair, monkeypatch, small_running
):
    """Issue 23's S6: small objects keep their rate while a large one copies, because the
    large copy yields (one part in flight) while single PUTs are running, and takes all
    its parts in flight when they are not."""
    from replicator.copier import PARTS_PER_UPLOAD

    monkeypatch.setattr("replicator.copier.PART_SIZE", 5 * 1024 * 1024)  # 4 parts
    src, dst, settings = pair
    data = os.urandom(17 * 1024 * 1024)
    stack.source.client().put_object(Bucket=src, Key="big", Body=data)
    copier = Copier(settings)
    most = parts_at_once(copier)
    with copier.small.put() if small_running else contextlib.nullcontext():
        assert copier.copy(Task(bucket=src, key="big", origin="backfill")).copied
    assert max(most) == (1 if small_running else PARTS_PER_UPLOAD), most
    assert body(target, dst, "big") == data


@on_minio
def test_a_single_put_counts_as_a_small_copy_running(stack, target, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="small", Body=b"s" * 1000)
    copier = Copier(settings)
    send, seen = copier.target.put, []

    def put(*args, **kwargs):
        seen.append(copier.small.running)
        return send(*args, **kwargs)

    copier.target.put = put
    assert not copier.small.busy()
    assert copier.copy(Task(bucket=src, key="small", origin="webhook")).copied
    assert seen == [1] and copier.small.running == 0 and copier.small.busy()
    assert body(target, dst, "small") == b"s" * 1000


def test_parts_in_flight_widen_once_small_copies_have_been_quiet(monkeypatch):
    """Yielding ends SMALL_QUIET_S after the last small PUT: a waiting part goes then."""
    from replicator.copier import PartsInFlight, SmallFirst

    monkeypatch.setattr("replicator.copier.SMALL_QUIET_S", 0.2)
    small = SmallFirst()
    gate = PartsInFlight(3, small)
    with small.put():
        gate.take()
        second = threading.Thread(target=gate.take, daemon=True)
        second.start()
        second.join(0.3)
        assert second.is_alive(), "a second part went while a small copy ran"
    second.join(2)  # the small PUT ended: 0.2 s later the part may go
    assert not second.is_alive() and gate.count == 2
    gate.take()  # quiet now: up to 3 at once
    assert gate.count == 3
    gate.give(), gate.give(), gate.give()
    assert gate.count == 0


def test_a_far_target_gets_twice_the_parts_in_flight_of_half_the_size(monkeypatch):
    """Issue 23: a part's PUT idles two round trips holding its buffer; far away, more
    parts keep the link busy in the same memory. Always at most 10,000 parts."""
    from replicator.copier import MAX_PARTS, PART_SIZE, PARTS_PER_UPLOAD, layout

    monkeypatch.setattr("replicator.copier.FAR_S", 0.03)  # the `near` fixture hid it
    gib = 1024**3
    near, far = layout(gib, 0.002), layout(gib, 0.03)
    assert near == (PART_SIZE, PARTS_PER_UPLOAD)
    assert far == (PART_SIZE // 2, 2 * PARTS_PER_UPLOAD)
    assert near[0] * near[1] == far[0] * far[1]  # the same buffer memory
    huge = 5 * 1024**4
    assert layout(huge, 0.03)[0] == layout(huge, 0.002)[0] == -(-huge // MAX_PARTS)


def test_part_buffers_go_back_to_the_system_once_freed(stack, buckets):
    """Issue 23: glibc keeps freed blocks below its (self-raising) mmap threshold in its
    heaps wherever a live block sits above them; a copier has every buffer of 1 MiB or
    more unmapped when freed, so peak RSS stays near the part budget (4 multipart copies
    to a far target: 171 MiB without, 100 MiB with)."""
    import threading

    env = {**base_env(stack), "BUCKET_PAIR": f"minio/{buckets('source')}:aws/{buckets('target')}"}
    Copier(config.load(env))

    def rss() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

    mib, grown, kept = 1024 * 1024, {}, []

    def parts() -> None:  # in a thread of its own, as the part threads
        freed = b"x" * (16 * mib)  # a large free raises glibc's default threshold
        del freed
        before = rss()
        held = []
        for _ in range(6):  # six 8 MiB parts at once, each followed by a live block
            held.append(b"p" * (8 * mib))
            kept.append(b"k" * (64 * 1024))
        grown["held"] = rss() - before
        del held
        grown["freed"] = rss() - before

    thread = threading.Thread(target=parts)
    thread.start()
    thread.join(30)
    assert grown["held"] >= 40 * mib
    assert grown["freed"] < 8 * mib, f"{grown['freed'] // mib} MiB of freed parts stayed"
