"""The one decision point, branch by branch (no I/O: these run in milliseconds)."""

import pytest

from replicator.errors import Kind
from replicator.policy import Decision, Limits, decide, record

LIMITS = Limits(tiers=(5, 30, 120, 600), hold_ceiling_s=300)


def test_moot_is_acked():
    assert decide(Kind.MOOT, "source", "gone", 0, 0, LIMITS).action == "ack"


@pytest.mark.parametrize("kind", [Kind.PERMANENT, Kind.MALFORMED])
@pytest.mark.parametrize("attempt", [0, 3])
def test_permanent_and_malformed_are_dead_lettered_at_once(kind, attempt):
    decision = decide(kind, "target", "target AccessDenied", attempt, 0, LIMITS)
    assert decision.action == "dead" and decision.reason == "target AccessDenied"


@pytest.mark.parametrize("kind", [Kind.TRANSIENT, Kind.CONFLICT])
def test_transient_walks_the_tiers_in_order_then_dead_letters(kind):
    tiers = []
    attempt = 0
    while (decision := decide(kind, "target", "HTTP 502", attempt, 0, LIMITS)).action == "retry":
        assert decision.attempt == attempt + 1
        tiers.append(LIMITS.tiers[decision.tier])
        attempt = decision.attempt
    assert tiers == [5, 30, 120, 600]
    assert decision.action == "dead"
    assert decision.reason == "after 4 delayed retries: HTTP 502"


def test_a_down_endpoint_is_held_with_backoff_up_to_the_ceiling():
    waits = []
    held = 0.0
    while (decision := decide(Kind.DOWN, "source", "refused", 0, held, LIMITS)).action == "hold":
        waits.append(decision.wait_s)
        held += decision.wait_s
    assert waits[:6] == [1, 1, 2, 4, 8, 16] and max(waits) == 30
    assert held == pytest.approx(300)
    # Past the ceiling: a delay queue, with the retry budget untouched.
    assert decision == Decision("retry", "refused", 0, 0, kind=Kind.DOWN, side="source")


@pytest.mark.parametrize("attempt", [0, 2, 4, 9])
def test_an_outage_never_dead_letters(attempt):
    decision = decide(Kind.DOWN, "target", "refused", attempt, 10_000, LIMITS)
    assert decision.action == "retry" and decision.attempt == attempt


def test_without_tiers_transient_is_dead_and_down_holds():
    limits = Limits(tiers=(), hold_ceiling_s=1)
    assert decide(Kind.TRANSIENT, "target", "x", 0, 0, limits).action == "dead"
    assert decide(Kind.DOWN, "target", "x", 0, 5, limits).action == "hold"


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_moves_exactly_one_outcome_counter():
    P = "minio_s3_mirror_"

    def counters() -> dict[str, float]:
        return {
            "retries": sample(f"{P}retries_total"),
            "dead": sample(f"{P}dead_lettered_total"),
            "holds": sample(f"{P}endpoint_holds_total", side="source"),
            "skipped": sample(f"{P}objects_skipped_total", reason="source_gone"),
            "transient": sample(f"{P}copy_failures_total", kind="transient"),
            "permanent": sample(f"{P}copy_failures_total", kind="permanent"),
            "down": sample(f"{P}copy_failures_total", kind="endpoint_down"),
        }

    def moved(decision) -> dict[str, float]:
        before = counters()
        record(decision)
        return {k: v - before[k] for k, v in counters().items() if v != before[k]}

    assert moved(decide(Kind.TRANSIENT, "target", "x", 0, 0, LIMITS)) == {
        "retries": 1,
        "transient": 1,
    }
    assert moved(decide(Kind.PERMANENT, "target", "x", 0, 0, LIMITS)) == {
        "dead": 1,
        "permanent": 1,
    }
    assert moved(decide(Kind.MOOT, "source", "source object is gone", 0, 0, LIMITS)) == {
        "skipped": 1
    }


def test_an_outage_is_no_failed_copy():
    """Issue 24: a hold counts in endpoint_holds_total only, and a task that waits out the
    outage in a delay queue is a retry, not a failed copy."""
    P = "minio_s3_mirror_"
    down = sample(f"{P}copy_failures_total", kind="endpoint_down")
    holds = sample(f"{P}endpoint_holds_total", side="source")
    retries = sample(f"{P}retries_total")
    record(decide(Kind.DOWN, "source", "x", 0, 0, LIMITS))
    record(decide(Kind.DOWN, "source", "x", 0, 10_000, LIMITS))  # past the ceiling
    assert sample(f"{P}copy_failures_total", kind="endpoint_down") == down
    assert sample(f"{P}endpoint_holds_total", side="source") == holds + 1
    assert sample(f"{P}retries_total") == retries + 1
