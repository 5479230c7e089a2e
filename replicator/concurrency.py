"""How many copies a worker runs at once: fixed (MIRROR_MAX_WORKERS=N) or fitted to the
link (auto).

Auto is a hill climb on measured throughput, one interval at a time. A copy over a
50 ms link spends most of its time waiting, so more copies in flight finish more per
second (latency flat) until something saturates: the CPU (loopback, 2 cores), the
bandwidth, or the endpoint. Past that point more copies only queue: throughput stays
flat and each copy's latency rises. So the limit is raised by trial (doubling at first,
then by a quarter) and a trial is kept only if throughput rose with it; otherwise the
limit goes back and the next trial waits twice as long. A SlowDown (or 503, 429) halves
the limit. The limit never exceeds the hard maximum, nor the memory budget divided by
what a copy held on average (a small object's body is held whole while it is written).
That average only keeps the thread count sensible: the budget itself is enforced per
body by the copy engine (`copier.BODY_BUDGET`), which takes a body's bytes before it is
read and gives them back once it is written, so a burst of large bodies waits instead of
holding more.

`decide` is the whole policy: pure, measurements in, limit out. `Controller` measures
(copies finished, mean in flight, latency, throttling) and applies it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from . import metrics

log = logging.getLogger(__name__)

MiB = 1024 * 1024
START = 8  # auto's first limit: where a loopback run on 2 cores does best (S1)
CEILING = 64  # auto's hard maximum
# Bytes of whole bodies the copies in flight hold at once: enforced per body by the copy
# engine (copier.BODY_BUDGET); `cap` keeps the limit near it on average. Parts have
# their own budget.
MEMORY_BUDGET = 64 * MiB
HELD_FLOOR = 64 * 1024  # a copy holds at least this (buffers, headers, TLS)
SLOW_START = 2.0  # growth per trial until the first one fails
STEP = 1.25  # growth per trial after that
GAIN_SHARE = 0.2  # a trial must bring this share of its proportional gain
LATENCY_CEILING = 4.0  # never grow while copies take this many times their fastest
SATURATED = 0.8  # the limit binds only when this share of it is busy
MIN_DONE = 20  # copies an interval needs before it says anything
# An interval lasts at least MIN_INTERVAL_S and until each allowed copy finished about
# PER_SLOT times: on a shared 2-core machine half-second rates varied by a third from one
# interval to the next.
MIN_INTERVAL_S = 1.0
PER_SLOT = 2
MAX_INTERVAL_S = 5.0
MAX_BACKOFF = 32  # intervals between failed trials, at most


@dataclass(frozen=True)
class Sample:
    """What one interval measured."""

    seconds: float
    done: int  # copies finished
    busy: float  # mean copies in flight
    latency_s: float  # mean seconds per finished copy
    held_bytes: float = 0.0  # mean bytes one copy held in memory
    throttled: bool = False  # an endpoint asked to slow down (SlowDown, 503, 429)


@dataclass(frozen=True)
class State:
    """The limit and what the climb remembers."""

    limit: int
    ceiling: int = CEILING
    trial_from: int = 0  # the limit before the trial under way (0: none)
    base_rate: float = 0.0  # copies/s at the limit the trial started from
    fastest_s: float = 0.0  # lowest mean latency seen while saturated
    wait: int = 0  # intervals before the next trial
    backoff: int = 1  # the wait after the next failed trial
    slow_start: bool = True


def cap(state: State, sample: Sample, budget: int = MEMORY_BUDGET) -> int:
    """The most copies in flight the hard maximum and the memory budget allow: the budget
    over the average a copy held. More copies than that would mostly wait for the copy
    engine's body budget, which bounds the bytes held at every moment."""
    by_memory = int(budget // max(sample.held_bytes, HELD_FLOOR))
    return max(1, min(state.ceiling, by_memory))


def decide(state: State, sample: Sample, budget: int = MEMORY_BUDGET) -> State:
    """The next state from one interval's measurements (pure)."""
    most = cap(state, sample, budget)
    if sample.throttled:  # the endpoint's word beats any measurement
        return replace(
            state,
            limit=max(1, min(most, state.limit // 2)),
            trial_from=0,
            base_rate=0.0,
            wait=state.backoff,
            backoff=min(state.backoff * 2, MAX_BACKOFF),
            slow_start=False,
        )
    if state.limit > most:
        return replace(state, limit=most, trial_from=0, base_rate=0.0)
    if sample.done < MIN_DONE or sample.busy < SATURATED * state.limit:
        # Not enough work to fill the limit: it says nothing about the link. A trial
        # under way stays undecided until the work is back.
        return state
    rate = sample.done / sample.seconds
    fastest = min(state.fastest_s or sample.latency_s, sample.latency_s)
    state = replace(state, fastest_s=fastest)
    if state.trial_from:
        wanted = 1 + GAIN_SHARE * (state.limit / state.trial_from - 1)
        if rate < state.base_rate * wanted:  # more in flight only queued: go back
            return replace(
                state,
                limit=state.trial_from,
                trial_from=0,
                base_rate=0.0,
                wait=state.backoff,
                backoff=min(state.backoff * 2, MAX_BACKOFF),
                slow_start=False,
            )
        state = replace(state, backoff=1)  # kept: try the next step at once
    elif state.wait:
        return replace(state, wait=state.wait - 1)
    if state.limit >= most or sample.latency_s > LATENCY_CEILING * fastest:
        return replace(state, trial_from=0, base_rate=rate)
    growth = SLOW_START if state.slow_start else STEP
    grown = min(most, max(state.limit + 1, math.ceil(state.limit * growth)))
    return replace(state, limit=grown, trial_from=state.limit, base_rate=rate)


class Controller:
    """The copy threads' gate (`slot`) and, in auto mode, the measurements `decide`
    needs. The connection thread calls `tick` from its loop; copy threads take a slot
    around each copy. `throttles` returns a number that grows with every SlowDown the
    endpoints sent (the transports' pacers)."""

    def __init__(
        self,
        fixed: int | None,
        throttles: Callable[[], float] = lambda: 0.0,
        *,
        start: int = START,
        ceiling: int = CEILING,
    ) -> None:
        self.auto = fixed is None
        self.state = State(limit=fixed or min(start, ceiling), ceiling=fixed or ceiling)
        self.threads = self.state.ceiling  # copy threads the worker needs
        self._throttles = throttles
        self._throttled: float | None = None  # read at the first tick
        self._changed = threading.Condition()
        self._in_flight = 0
        self._begin(time.monotonic())
        metrics.CONCURRENCY_LIMIT.set(self.state.limit)

    @property
    def limit(self) -> int:
        return self.state.limit

    def _begin(self, now: float) -> None:
        self._start = self._mark = now
        self._busy_s = 0.0  # in-flight copies integrated over time
        self._done = 0
        self._latency_s = 0.0
        self._held = 0.0

    def _account(self, now: float) -> None:
        self._busy_s += self._in_flight * (now - self._mark)
        self._mark = now

    @contextmanager
    def slot(self, stopping: threading.Event) -> Iterator[Callable[[int], None]]:
        """Wait for room under the limit (raises Stopping if the worker stops first) and
        count the copy made inside; yields a function to report the bytes it held."""
        with self._changed:
            while self._in_flight >= self.state.limit:
                if stopping.is_set():
                    raise Stopping
                self._changed.wait(0.5)
            self._account(time.monotonic())
            self._in_flight += 1
        started, held = time.monotonic(), [0]

        def holding(size: int) -> None:
            held[0] = size

        try:
            yield holding
        finally:
            with self._changed:
                now = time.monotonic()
                self._account(now)
                self._in_flight -= 1
                self._done += 1
                self._latency_s += now - started
                self._held += held[0]
                self._changed.notify()

    def tick(self) -> bool:
        """Close the interval when it is due and apply `decide`; True when the limit
        changed. Fixed mode: never."""
        if not self.auto:
            return False
        throttles = self._throttles()
        throttled = self._throttled is not None and throttles > self._throttled
        self._throttled = throttles
        with self._changed:
            now = time.monotonic()
            elapsed = now - self._start
            due = elapsed >= MAX_INTERVAL_S or (
                elapsed >= MIN_INTERVAL_S
                and self._done >= max(MIN_DONE, PER_SLOT * self.state.limit)
            )
            if not (due or throttled):
                return False
            self._account(now)
            done = self._done
            sample = Sample(
                seconds=elapsed,
                done=done,
                busy=self._busy_s / elapsed if elapsed else 0.0,
                latency_s=self._latency_s / done if done else 0.0,
                held_bytes=self._held / done if done else 0.0,
                throttled=throttled,
            )
            before = self.state.limit
            self.state = decide(self.state, sample)
            self._begin(now)
            self._changed.notify_all()
        if self.state.limit == before:
            return False
        metrics.CONCURRENCY_LIMIT.set(self.state.limit)
        log.info(
            "copies in flight: %d -> %d (%.0f copies/s, %.2f s each, %.1f busy%s)",
            before,
            self.state.limit,
            sample.done / sample.seconds,
            sample.latency_s,
            sample.busy,
            ", endpoint asked to slow down" if throttled else "",
        )
        return True


class Stopping(Exception):
    """The worker stops while a copy waits for a slot."""
