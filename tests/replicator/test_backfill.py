"""backfill --direct in-process, against the real source and target MinIO."""

from __future__ import annotations

import pytest

from replicator import backfill, config
from tests.conftest import base_env


def test_a_key_deleted_after_the_listing_is_gone_not_failed(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    for key in ("a", "gone", "z"):
        source.put_object(Bucket=src, Key=key, Body=key.encode())
    settings = config.load({**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"})
    run = backfill.Backfill(settings, direct=True, dry_run=False)
    copy = run.copier.copy

    def deleted_meanwhile(task, **kwargs):
        if task.key == "gone":  # listed, then removed before its copy
            source.delete_object(Bucket=src, Key="gone")
        return copy(task, **kwargs)

    run.copier.copy = deleted_meanwhile
    (report,) = run.run(list(settings.pairs))

    assert (report.listed, report.queued, report.gone, report.failed) == (3, 2, 1, 0)
    text = backfill.render([report], direct=True, dry_run=False)
    assert "failed 0, gone from the source since the listing 1" in text


@pytest.mark.parametrize("prefix", ["o/0", "o/0/"])
def test_a_prefix_is_a_folder_listed_as_such(stack, buckets, prefix):
    """Issue 24: `--prefix o/0` means the folder `o/0/` (mc's meaning), with or without the
    slash; its siblings are neither listed nor reported as excluded."""
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    for key in ("o/000001", "o/000002", "o/0-big", "o/0/inside"):
        source.put_object(Bucket=src, Key=key, Body=b"x")
    env = {**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", "MIRROR_PREFIX": prefix}
    settings = config.load(env)
    (report,) = backfill.Backfill(settings, direct=False, dry_run=True).run(list(settings.pairs))
    assert (report.listed, report.excluded, report.queued) == (1, 0, 1)


def test_excluded_counts_what_mirror_exclude_matched_only(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    for key in ("in/a.tmp", "in/b", "in/sub/c.tmp", "inside/d"):
        source.put_object(Bucket=src, Key=key, Body=b"x")
    env = {
        **base_env(stack),
        "BUCKET_PAIR": f"minio/{src}/in:aws/{dst}",  # a pair path is a folder too
        "MIRROR_EXCLUDE": "*.tmp",
    }
    settings = config.load(env)
    (report,) = backfill.Backfill(settings, direct=False, dry_run=True).run(list(settings.pairs))
    assert (report.listed, report.excluded, report.queued) == (3, 2, 1)
