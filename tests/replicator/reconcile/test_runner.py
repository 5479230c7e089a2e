"""The reconcile runner's own decisions (mc's runs are in tests/integration)."""

from __future__ import annotations

import time
from unittest.mock import patch

import pytest

from replicator.deletes import Deleter
from replicator.reconcile.runner import PairJob, TimedOut
from replicator.reconcile.summary import pair_outcome
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


def test_the_reconcile_json_says_the_deletes_stopped_and_how_many_are_left(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b", "c")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")
    job = PairJob(None, settings, settings.pairs[0], deadline=time.monotonic() + 3600)  # type: ignore[arg-type]
    carry_out = Deleter.carry_out

    def late(deleter, plan):  # the plan is made in time; the deadline passes right after
        deleter.deadline = time.monotonic()
        return carry_out(deleter, plan)

    with patch.object(Deleter, "carry_out", late), pytest.raises(TimedOut):
        job._deletes()
    pair = job.result.as_dict()
    assert (pair["deleted"], pair["delete_left"]) == (0, 2)
    assert "2 of 2 delete(s) not begun" in pair["delete_stopped"]
    assert pair_outcome(job.result).endswith("STOPPED by the deadline with 2 planned left")
    assert target_keys(stack, dst) == {"a", "b", "c"}
