"""The one decision point (design section 6): what a failed task becomes.

`decide` is pure: (error kind, side, delayed retries spent, seconds held) -> a Decision,
table-tested branch by branch. `record` counts the decision, so no metric can be forgotten
by a caller. Holds wait out an endpoint outage with backoff up to a ceiling; past it the
task waits in a delay queue without spending its budget, so an outage never drains work
into the dead-letter queue, and no thread waits forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import metrics
from .errors import Kind

HOLD_FIRST_S = 1.0  # first wait of a hold; doubles while the endpoint stays down
HOLD_LONGEST_S = 30.0


@dataclass(frozen=True)
class Limits:
    tiers: tuple[int, ...] = (5, 30, 120, 600)  # delayed-retry tiers, seconds
    hold_ceiling_s: float = 300.0  # longest a thread holds one task for a down endpoint


@dataclass(frozen=True)
class Decision:
    action: str  # "ack" | "retry" | "dead" | "hold"
    reason: str = ""
    attempt: int = 0  # for retry: the attempt header the task carries next
    tier: int = 0  # for retry: index into Limits.tiers
    wait_s: float = 0.0  # for hold: how long to wait before trying again
    kind: Kind | None = None
    side: str = ""


def decide(
    kind: Kind, side: str, reason: str, attempt: int, held_s: float, limits: Limits
) -> Decision:
    """What to do with a task whose copy failed with this kind of error."""
    last = len(limits.tiers)
    if kind is Kind.MOOT:
        return Decision("ack", reason, kind=kind, side=side)
    if kind in (Kind.PERMANENT, Kind.MALFORMED):
        return Decision("dead", reason, attempt, kind=kind, side=side)
    if kind is Kind.DOWN:
        if held_s < limits.hold_ceiling_s:
            wait = min(max(HOLD_FIRST_S, held_s), HOLD_LONGEST_S, limits.hold_ceiling_s - held_s)
            return Decision("hold", reason, attempt, wait_s=wait, kind=kind, side=side)
        # Held long enough in this thread: wait in a delay queue, budget untouched.
        tier = min(attempt, last - 1) if last else 0
        if last:
            return Decision("retry", reason, attempt, tier, kind=kind, side=side)
        return Decision("hold", reason, attempt, wait_s=HOLD_LONGEST_S, kind=kind, side=side)
    # TRANSIENT, or CONFLICT that kept recurring: the next tier, then the dead-letter queue.
    if attempt < last:
        return Decision("retry", reason, attempt + 1, attempt, kind=kind, side=side)
    spent = f"after {attempt} delayed retries: {reason}" if attempt else reason
    return Decision("dead", spent, attempt, kind=kind, side=side)


def record(decision: Decision) -> None:
    """Count a decision (the only place these counters move). A hold is not a failed copy:
    the caller records it once per task per outage (`endpoint_holds_total`), and a task
    that then waits out the outage in a delay queue counts as a retry, not a failure."""
    kind = decision.kind.value if decision.kind else "unknown"
    if decision.action == "ack":
        metrics.SKIPPED.labels(metrics.skip_reason(decision.reason)).inc()
        return
    if decision.action == "hold":
        metrics.HOLDS.labels(decision.side or "unknown").inc()
        return
    if decision.kind is not Kind.DOWN:
        metrics.FAILURES.labels(kind).inc()
    if decision.action == "retry":
        metrics.RETRIES.inc()
    elif decision.action == "dead":
        metrics.DEAD_LETTERED.inc()
