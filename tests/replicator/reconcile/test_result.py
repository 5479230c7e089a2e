"""Bounded results: counters for everything, the first KEPT keys and failures kept."""

from replicator.reconcile.result import KEPT, PairResult, Problem, Sample
from replicator.reconcile.troubleshoot import MC_FAILED, TIMED_OUT


def test_sample_keeps_the_first_items_and_counts_all():
    sample: Sample[int] = Sample(keep=3)
    for i in range(1000):
        sample.add(i)
    assert sample.items == [0, 1, 2]
    assert (sample.count, sample.more) == (1000, 997)


def test_an_item_added_first_is_kept_ahead_of_a_full_sample():
    sample: Sample[str] = Sample(keep=2)
    for key in ("a", "b", "c"):
        sample.add(key)
    sample.add("stopped", first=True)
    assert sample.items == ["stopped", "a"]
    assert sample.count == 4


def test_pair_result_holds_at_most_kept_failures_and_keys_but_counts_them():
    result = PairResult("minio/a:aws/b", "minio/a", "aws/b")
    for i in range(10 * KEPT):
        result.problems.add(Problem(text=f"Failed to copy `{i}`", cause=MC_FAILED))
        result.would_copy.add(f"key-{i}")
    result.problems.add(Problem(text="stopped", cause=TIMED_OUT), first=True)

    shown = result.as_dict()

    assert not result.ok
    assert len(shown["failures"]) == KEPT and shown["failure_count"] == 10 * KEPT + 1
    assert shown["failures"][0]["cause"] == "Run timed out"
    assert len(shown["would_copy"]) == KEPT and shown["would_copy_count"] == 10 * KEPT
