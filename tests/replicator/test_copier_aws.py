"""The copy engine against an AWS-like target (moto's S3 server), plain and Object Lock.

The same scenarios as test_copier.py (which runs them against the target MinIO), with
the source MinIO as source. Target requests are what moto's access log shows it served
(CopyObject shows there as PutObject); source requests what MinIO's metrics say.
Every scenario also runs on a bucket with Object Lock and a GOVERNANCE default retention
(what AWS backup buckets are): AWS, and moto, refuse a write there that carries neither
Content-MD5 nor a checksum (`MissingUploadObjectWithObjectLockHeaders`).

The AWS-like server is moto behind deploy/local/aws_like.py, which gives it AWS's checksum
rules (a lone x-amz-checksum-* header counts, values are verified, Object Lock buckets
refuse unchecked PutObject and UploadPart with AWS's InvalidRequest). Where moto still
differs from AWS, the tests say so:
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
import datetime as dt
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator import config
from replicator.copier import SOURCE_ETAG, SOURCE_META, Copier, Outcome
from replicator.task import Task
from tests.conftest import Target, base_env

LOCKS = ["plain", "object-lock"]


@pytest.fixture(params=LOCKS)
def pair(request, stack, buckets, aws_like) -> Iterator[tuple[str, str, config.Settings]]:
    """(source bucket, AWS-like target bucket, settings); the target plain or locked."""
    src = buckets("source")
    target = Target("aws-like", aws_like)
    dst = target.bucket(retention_days=1 if request.param == "object-lock" else 0)
    env = {**base_env(stack), **aws_like.env(), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
    yield src, dst, config.load(env)
    target.cleanup()


def source_served(stack) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    with urllib.request.urlopen(f"{stack.source.url}/minio/metrics/v3/api/requests") as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "minio_api_requests_total":
                counts[f"source {sample.labels['name']}"] += int(sample.value)
    return counts


class Requests:
    """The requests both sides served between construction and `spent()`."""

    def __init__(self, stack, aws_like) -> None:
        self.stack, self.aws_like = stack, aws_like
        self.before = self._now()

    def _now(self) -> collections.Counter[str]:
        target = collections.Counter({f"target {k}": v for k, v in self.aws_like.served().items()})
        return source_served(self.stack) + target

    def spent(self) -> dict[str, int]:
        after = self._now()
        return {k: after[k] - self.before[k] for k in after if after[k] - self.before[k]}


def body(aws_like, bucket: str, key: str) -> bytes:
    return aws_like.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_new_object_costs_a_target_head_a_source_get_and_a_put(stack, aws_like, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="a b+%.txt", Body=b"new", ContentType="x/y")
    copier = Copier(settings)
    requests = Requests(stack, aws_like)

    assert copier.copy(Task(bucket=src, key="a b+%.txt", origin="backfill")).copied
    assert requests.spent() == {
        "target HeadObject": 1,
        "source GetObject": 1,
        "target PutObject": 1,
    }
    head = aws_like.client().head_object(Bucket=dst, Key="a b+%.txt")
    assert head["ContentType"] == "x/y" and body(aws_like, dst, "a b+%.txt") == b"new"


def test_up_to_date_object_costs_two_heads(stack, aws_like, pair):
    src, _, settings = pair
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"same", Metadata={"a": "1"})
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="k", origin="backfill")).copied
    requests = Requests(stack, aws_like)

    assert copier.copy(Task(bucket=src, key="k", origin="backfill")) == Outcome(
        False, "target already current"
    )
    assert requests.spent() == {"target HeadObject": 1, "source HeadObject": 1}


def test_a_metadata_only_change_replicates(stack, aws_like, pair):
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
    head = aws_like.client().head_object(Bucket=dst, Key="m")
    assert head["ContentType"] == "c/d" and head["Metadata"]["v"] == "2"
    assert copier.copy(Task(bucket=src, key="m", origin="webhook")).reason == (
        "target already current"
    )


def test_copies_made_before_fingerprints_count_by_their_bytes(stack, aws_like, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="old", Body=b"x")
    copier = Copier(settings)
    assert copier.copy(Task(bucket=src, key="old", origin="backfill")).copied
    target = aws_like.client()
    head = target.head_object(Bucket=dst, Key="old")
    metadata = {k: v for k, v in head["Metadata"].items() if k != SOURCE_META}
    # A PUT, not test_copier's CopyObject: moto refuses every CopyObject into a bucket
    # with default retention (it wants x-amz-sdk-checksum-algorithm there).
    target.put_object(
        Bucket=dst, Key="old", Body=b"x", Metadata=metadata, ChecksumAlgorithm="SHA256"
    )
    assert copier.copy(Task(bucket=src, key="old", origin="backfill")).reason == (
        "target already current"
    )


HARD_KEYS = [
    "dir/",
    "sp ace/plus+sign/pct%20/q?x#frag",
    "ünïcødé/😀.txt",
    "tab\tand\rcarriage return",  # a newline: moto answers 404 to the PUT (AWS stores it)
    "back\\slash",
    "x" * 200 + "/" + "y" * 200 + "/" + "z" * 200,
    "trailing.",
]


@pytest.mark.parametrize("key", HARD_KEYS, ids=range(len(HARD_KEYS)))
def test_hard_keys_and_every_kept_header_arrive_exactly(stack, aws_like, pair, key):
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

    target = aws_like.client()
    listed = target.list_objects_v2(Bucket=dst)["Contents"]
    assert [o["Key"] for o in listed] == [key]
    head = target.head_object(Bucket=dst, Key=key)
    assert head["ContentType"] == "text/x-hard"
    assert head["ContentEncoding"] == "identity"
    assert head["ContentDisposition"] == 'attachment; filename="h.txt"'
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentLanguage"] == "ko"
    assert head["ExpiresString"] == "Tue, 06 May 2031 07:08:09 GMT"
    assert head["Metadata"]["color"] == "Blue"
    assert body(aws_like, dst, key) == data


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


def test_an_older_read_never_lands_over_a_newer_copy(stack, aws_like, pair):
    """New key: v1 is read, then v2 is written to the source and copied by another worker;
    the v1 write (If-None-Match: *) is refused with 412, which moto honours as AWS does."""
    src, dst, settings = pair
    source = stack.source.client()
    source.put_object(Bucket=src, Key="k", Body=b"v1")
    task = Task(bucket=src, key="k", origin="webhook")

    def newer_copy_lands():
        source.put_object(Bucket=src, Key="k", Body=b"v2")
        assert Copier(settings).copy(task).copied

    Interrupted(settings, newer_copy_lands).copy(task)
    assert body(aws_like, dst, "k") == b"v2"


def test_replacing_rechecks_a_source_that_went_back(stack, aws_like, pair):
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
    assert body(aws_like, dst, "k") == b"v0"


def test_large_object_is_read_in_parts_pinned_by_etag(stack, aws_like, pair):
    """A task without a size still finds out from the GET that the object needs parts."""
    src, dst, settings = pair
    data = bytes(range(256)) * (17 * 4096)  # 17 MiB: above the single-PUT threshold
    stack.source.client().put_object(Bucket=src, Key="big", Body=data, Metadata={"m": "1"})
    copier = Copier(settings)
    requests = Requests(stack, aws_like)

    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).bytes == len(data)
    spent = requests.spent()
    assert (
        spent["target UploadPart"] == 2 and spent["target CompleteMultipartUpload"] == 1
    )  # 16 + 1 MiB
    assert body(aws_like, dst, "big") == data
    head = aws_like.client().head_object(Bucket=dst, Key="big")
    assert head["Metadata"]["m"] == "1" and head["ETag"].endswith('-2"')
    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).reason == (
        "target already current"
    )


def test_a_source_changing_during_a_multipart_copy_is_chased(stack, aws_like, pair):
    src, dst, settings = pair
    source = stack.source.client()
    old, new = b"a" * (17 * 1024 * 1024), b"b" * (17 * 1024 * 1024)
    source.put_object(Bucket=src, Key="big", Body=old)

    def rewrite():
        source.put_object(Bucket=src, Key="big", Body=new)

    Interrupted(settings, rewrite).copy(Task(bucket=src, key="big", origin="backfill"))
    assert body(aws_like, dst, "big") == new


def test_a_multipart_replace_lands_the_new_content(stack, aws_like, pair):
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
    assert body(aws_like, dst, "big") == new
    head = aws_like.client().head_object(Bucket=dst, Key="big")
    assert head["Metadata"][SOURCE_ETAG] == source.head_object(Bucket=src, Key="big")["ETag"].strip(
        '"'
    )


def test_a_lister_that_saw_no_target_object_saves_the_head(stack, aws_like, pair):
    src, _, settings = pair
    stack.source.client().put_object(Bucket=src, Key="n", Body=b"new")
    copier = Copier(settings)
    requests = Requests(stack, aws_like)

    assert copier.copy(Task(bucket=src, key="n", origin="backfill", target_absent=True)).copied
    assert requests.spent() == {"source GetObject": 1, "target PutObject": 1}


def test_a_stale_absent_hint_never_overwrites_blindly(stack, aws_like, pair):
    """The target got the object after the listing: the write-first PUT is refused (412),
    the engine looks, and MIRROR_OVERWRITE=false keeps the target's object."""
    src, dst, _ = pair
    stack.source.client().put_object(Bucket=src, Key="n", Body=b"source")
    aws_like.client().put_object(
        Bucket=dst, Key="n", Body=b"target's own", ChecksumAlgorithm="SHA256"
    )
    keep = config.load(
        {
            **base_env(stack),
            **aws_like.env(),
            "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
            "MIRROR_OVERWRITE": "false",
        }
    )

    outcome = Copier(keep).copy(Task(bucket=src, key="n", origin="backfill", target_absent=True))
    assert not outcome.copied and "MIRROR_OVERWRITE=false" in outcome.reason
    assert body(aws_like, dst, "n") == b"target's own"


@pytest.mark.parametrize("size", [5, 17 * 1024 * 1024], ids=["single", "multipart"])
def test_storage_class_encryption_and_tags_are_written(stack, aws_like, pair, size):
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
                **aws_like.env(),
                "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
                "AWS_STORAGE_CLASS": "STANDARD_IA",
                "AWS_SSE": sse,
                **({"AWS_SSE_KMS_KEY_ID": key_id} if key_id else {}),
            }
        )
        target = aws_like.client()
        for version in target.list_object_versions(Bucket=dst).get("Versions", []):
            target.delete_object(
                Bucket=dst,
                Key=version["Key"],
                VersionId=version["VersionId"],
                BypassGovernanceRetention=True,
            )

        assert Copier(settings).copy(Task(bucket=src, key="tagged", origin="backfill")).copied

        head = target.head_object(Bucket=dst, Key="tagged")
        assert head.get("StorageClass") == "STANDARD_IA", sse
        assert head.get("ServerSideEncryption") == sse
        if key_id:
            assert head.get("SSEKMSKeyId") == key_id
        assert head["ContentType"] == "x/tagged" and head["Metadata"]["owner"] == "ops"
        tags = target.get_object_tagging(Bucket=dst, Key="tagged")["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"team": "backup", "tier": "cold"}
        assert body(aws_like, dst, "tagged") == data


@pytest.mark.parametrize("pair", ["object-lock"], indirect=True)
def test_object_lock_copies_are_retained(stack, aws_like, pair):
    """On the locked bucket the copy gets the default retention (it cannot be deleted)."""
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="kept", Body=b"immutable")
    assert Copier(settings).copy(Task(bucket=src, key="kept", origin="backfill")).copied

    # HEAD, not GetObjectRetention: moto answers that with a 500 for a default retention.
    head = aws_like.client().head_object(Bucket=dst, Key="kept")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]
    assert body(aws_like, dst, "kept") == b"immutable"


def test_a_part_larger_than_the_buffer_budget_is_streamed_never_held(stack, aws_like, pair):
    """The streamed part (UNSIGNED-PAYLOAD, x-amz-checksum-crc32) on the AWS-like target,
    Object Lock buckets included."""
    from replicator.copier import Budget

    src, dst, settings = pair
    data = bytes(range(256)) * (17 * 4096)
    stack.source.client().put_object(Bucket=src, Key="huge", Body=data)
    copier = Copier(settings)
    copier.buffers = Budget(4 * 1024 * 1024)
    requests = Requests(stack, aws_like)

    assert copier.copy(Task(bucket=src, key="huge", origin="backfill")).copied
    assert requests.spent()["target UploadPart"] == 2
    assert body(aws_like, dst, "huge") == data
