"""The copy engine against the real source and target MinIO (design 7).

Races are made deterministic by a Copier subclass that lets a second, real copier run at
the worst moment: between reading the source and writing the target.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import pytest

from replicator import config
from replicator.copier import Copier, Outcome
from replicator.task import Task
from tests.conftest import base_env


@pytest.fixture
def pair(stack, buckets) -> tuple[str, str, config.Settings]:
    src, dst = buckets("source"), buckets("target")
    settings = config.load({**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"})
    return src, dst, settings


def count_requests(copier: Copier) -> collections.Counter[str]:
    """Every S3 request the copier sends, as "side Operation" (botocore's own event hook)."""
    sent: collections.Counter[str] = collections.Counter()
    for side in ("source", "target"):
        client = getattr(copier, side)

        def count(model, side=side, **_):
            sent[f"{side} {model.name}"] += 1

        client.meta.events.register("before-call.s3", count)
    return sent


def body(stack, bucket: str, key: str) -> bytes:
    return stack.target.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_new_object_costs_a_target_head_a_source_get_and_a_put(stack, pair):
    src, dst, settings = pair
    stack.source.client().put_object(Bucket=src, Key="a b+%.txt", Body=b"new", ContentType="x/y")
    copier = Copier(settings)
    sent = count_requests(copier)

    assert copier.copy(Task(bucket=src, key="a b+%.txt", origin="backfill")).copied
    assert sent == {"target HeadObject": 1, "source GetObject": 1, "target PutObject": 1}
    head = stack.target.client().head_object(Bucket=dst, Key="a b+%.txt")
    assert head["ContentType"] == "x/y" and body(stack, dst, "a b+%.txt") == b"new"


def test_up_to_date_object_costs_two_heads(stack, pair):
    src, _, settings = pair
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"same")
    copier = Copier(settings)
    copier.copy(Task(bucket=src, key="k", origin="backfill"))
    sent = count_requests(copier)

    assert copier.copy(Task(bucket=src, key="k", origin="backfill")) == Outcome(
        False, "target already current"
    )
    assert sent == {"target HeadObject": 1, "source HeadObject": 1}


class Interrupted(Copier):
    """Runs `meanwhile` once, right after this copier has read the source's bytes."""

    def __init__(self, settings, meanwhile: Callable[[], None]) -> None:
        super().__init__(settings)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def _interrupt(self) -> None:
        if self.meanwhile:
            run, self.meanwhile = self.meanwhile, None
            run()

    def _get_source(self, task):
        got = super()._get_source(task)
        self._interrupt()
        return got

    def _read(self, task, source, byte_range=None):
        got = super()._read(task, source, byte_range)
        self._interrupt()
        return got


def test_an_older_read_never_lands_over_a_newer_copy(stack, pair):
    """New key: v1 is read, then v2 is written to the source and copied by another worker."""
    src, dst, settings = pair
    source = stack.source.client()
    source.put_object(Bucket=src, Key="k", Body=b"v1")
    task = Task(bucket=src, key="k", origin="webhook")

    def newer_copy_lands():
        source.put_object(Bucket=src, Key="k", Body=b"v2")
        assert Copier(settings).copy(task).copied

    Interrupted(settings, newer_copy_lands).copy(task)
    assert body(stack, dst, "k") == b"v2"


def test_replacing_rechecks_a_source_that_went_back(stack, pair):
    """Target holds v0; v1 is read; the source goes back to v0, which another worker then
    finds "current". The v1 write must not stay."""
    src, dst, settings = pair
    source = stack.source.client()
    task = Task(bucket=src, key="k", origin="webhook")
    source.put_object(Bucket=src, Key="k", Body=b"v0")
    Copier(settings).copy(task)
    source.put_object(Bucket=src, Key="k", Body=b"v1")

    def source_goes_back():
        source.put_object(Bucket=src, Key="k", Body=b"v0")
        assert Copier(settings).copy(task).reason == "target already current"

    assert Interrupted(settings, source_goes_back).copy(task).copied
    assert body(stack, dst, "k") == b"v0"


def test_large_object_is_read_in_parts_pinned_by_etag(stack, pair):
    """A task without a size still finds out from the GET that the object needs parts."""
    src, dst, settings = pair
    data = bytes(range(256)) * (17 * 4096)  # 17 MiB: above the single-PUT threshold
    stack.source.client().put_object(Bucket=src, Key="big", Body=data)
    copier = Copier(settings)
    sent = count_requests(copier)

    assert copier.copy(Task(bucket=src, key="big", origin="backfill")).bytes == len(data)
    assert sent["target UploadPart"] == 3 and sent["target CompleteMultipartUpload"] == 1
    assert body(stack, dst, "big") == data
