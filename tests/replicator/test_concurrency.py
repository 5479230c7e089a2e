"""The auto concurrency policy on synthetic measurements: `decide` is pure, so every
branch is driven by a made-up interval (no network, no clock)."""

from __future__ import annotations

import threading

import pytest

from replicator import concurrency
from replicator.concurrency import Controller, MiB, Sample, State, decide


def link(limit: int, rtt_s: float = 0.05, cpu_bound: float = 1e9) -> Sample:
    """One saturated interval of 1 s over a link where a copy takes `rtt_s` alone and the
    machine finishes at most `cpu_bound` copies/s (Little's law: rate = limit / latency)."""
    rate = min(limit / rtt_s, cpu_bound)
    return Sample(seconds=1.0, done=int(rate), busy=limit, latency_s=limit / rate)


def climb(state: State, intervals: int, **link_args) -> list[int]:
    """The limits `decide` chooses over `intervals` intervals of the same link."""
    limits = []
    for _ in range(intervals):
        state = decide(state, link(state.limit, **link_args))
        limits.append(state.limit)
    return limits


def test_over_a_long_link_the_limit_doubles_while_throughput_follows():
    """Latency flat, throughput proportional: slow start doubles up to the hard maximum."""
    assert climb(State(limit=8), 4) == [16, 32, 64, 64]


def test_where_the_cpu_saturates_the_limit_goes_back_and_waits_longer_each_time():
    """Loopback on 2 cores: 8 copies already fill the CPU (more only queue, latency rises
    with the limit): the trial at 16 fails, the limit returns to 8, and the next trials
    come after 1, 2, 4... quiet intervals, a quarter up each."""
    limits = climb(State(limit=8), 16, rtt_s=0.01, cpu_bound=800)
    assert limits[:2] == [16, 8]
    trials = [i for i, limit in enumerate(limits) if limit > 8]
    assert trials == [0, 3, 7, 13]  # after 1, 2 and 4 quiet intervals; then by a quarter
    assert [limits[i] for i in trials] == [16, 10, 10, 10]
    assert limits[-1] == 8


def test_a_trial_is_kept_only_for_its_share_of_the_proportional_gain():
    """From 32 to 40 (a quarter more) throughput must rise by GAIN_SHARE of a quarter."""
    state = State(limit=40, trial_from=32, base_rate=1000.0, slow_start=False)
    wanted = 1000 * (1 + concurrency.GAIN_SHARE * 0.25)
    kept = decide(state, Sample(1.0, int(wanted) + 1, 40, 0.04))
    assert (kept.limit, kept.trial_from) == (50, 40)  # and the next step is tried at once
    back = decide(state, Sample(1.0, int(wanted) - 1, 40, 0.04))
    assert (back.limit, back.trial_from, back.wait) == (32, 0, 1)


def test_a_slow_down_halves_the_limit_and_ends_slow_start():
    state = decide(State(limit=32), Sample(1.0, 500, 32, 0.06, throttled=True))
    assert (state.limit, state.slow_start, state.wait) == (16, False, 1)
    # A trial under way is abandoned too, whatever the throughput said.
    trial = State(limit=40, trial_from=32, base_rate=10.0, slow_start=False)
    assert decide(trial, Sample(1.0, 5000, 40, 0.01, throttled=True)).limit == 20
    assert decide(State(limit=1), Sample(1.0, 50, 1, 0.02, throttled=True)).limit == 1


def test_an_interval_that_does_not_fill_the_limit_changes_nothing():
    """Few tasks (an idle queue, the end of a backlog): no signal about the link."""
    state = State(limit=16)
    assert decide(state, Sample(1.0, 500, busy=10, latency_s=0.02)) == state
    assert decide(state, Sample(1.0, concurrency.MIN_DONE - 1, 16, 0.02)) == state


def test_the_memory_budget_caps_the_limit():
    """16 MiB objects are held whole while written: 64 MiB of budget allows 4 at once."""
    big = Sample(1.0, 100, 8, 0.08, held_bytes=16 * MiB)
    assert decide(State(limit=8), big).limit == 4
    assert climb(State(limit=8), 3) == [16, 32, 64]  # small objects: the hard maximum
    assert concurrency.cap(State(limit=8), big) == concurrency.MEMORY_BUDGET // (16 * MiB)
    # The cap is an average; every body is held within the same budget by the copy engine
    # (tests/replicator/test_copier.py: test_bodies_held_at_once_never_exceed_...).
    from replicator import copier

    assert copier.BODY_BUDGET == concurrency.MEMORY_BUDGET


def test_no_growth_while_copies_take_far_longer_than_their_fastest():
    state = State(limit=16, fastest_s=0.05)
    slow = Sample(1.0, 100, 16, latency_s=0.05 * concurrency.LATENCY_CEILING + 0.01)
    assert decide(state, slow).limit == 16


def test_a_fixed_limit_never_moves():
    controller = Controller(12)
    assert (controller.limit, controller.threads, controller.auto) == (12, 12, False)
    assert controller.tick() is False


def test_the_gate_holds_copies_to_the_limit():
    controller = Controller(2)
    stopping = threading.Event()
    entered, release = threading.Semaphore(0), threading.Event()

    def copy() -> None:
        with controller.slot(stopping):
            entered.release()
            release.wait(10)

    threads = [threading.Thread(target=copy) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert entered.acquire(timeout=5) and entered.acquire(timeout=5)
    assert not entered.acquire(timeout=0.3)  # the third waits for a slot
    release.set()
    assert entered.acquire(timeout=5)
    for thread in threads:
        thread.join(5)


def test_a_copy_waiting_for_a_slot_gives_up_when_the_worker_stops():
    controller = Controller(1)
    stopping = threading.Event()
    with controller.slot(stopping):
        stopping.set()
        with pytest.raises(concurrency.Stopping), controller.slot(stopping):
            pass


def test_a_slow_down_seen_by_the_pacers_shrinks_the_limit_at_once():
    pacers = [0.0]
    controller = Controller(None, lambda: pacers[0], start=16)
    assert controller.tick() is False  # the first tick only reads the pacers
    pacers[0] = 123.0  # a SlowDown pushed a pacer's `until` later
    assert controller.tick() is True
    assert controller.limit == 8
