"""backfill --direct in-process, against the real source and target MinIO."""

from __future__ import annotations

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
