"""The reconcile runner's own decisions (mc's runs are in tests/integration)."""

from __future__ import annotations

import time

import pytest

from replicator.reconcile.runner import PairJob, TimedOut
from tests.replicator.test_deletes import put, settings_for, target_keys


def test_deletes_cut_short_by_the_deadline_fail_the_pair_as_timed_out(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")
    no_mc = None  # the deletes phase runs no mc
    job = PairJob(no_mc, settings, settings.pairs[0], deadline=time.monotonic())  # type: ignore[arg-type]
    with pytest.raises(TimedOut, match=r"deletes stopped: .*MIRROR_RECONCILE_TIMEOUT"):
        job._deletes()
    assert job.result.deleted == 0
    assert target_keys(stack, dst) == {"a", "b"}
