"""The replicator worker: tasks from RabbitMQ -> copy engine -> ack.

pika is not thread-safe: the main thread owns the connection and does all channel work
(consume, ack, publish); copy threads hand their decisions back through a queue and one
`add_callback_threadsafe` wake-up at a time. Finished deliveries are acked in batches
without head-of-line blocking (see `_ack`); a retry or dead letter is published,
confirmed, before its delivery is acked. Every failure goes through `policy.decide`, the
one decision point. How many copies run at once is the controller's to say
(`replicator/concurrency.py`); the prefetch window follows it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pika
import tenacity

from . import broker, filters, health, message, metrics, policy, topology
from .concurrency import Controller, Stopping
from .config import Settings
from .copier import MULTIPART_THRESHOLD, Copier, Outcome
from .digest import Digest
from .errors import CopyError, Kind
from .policy import Decision
from .s3.transport import MIN_RATE
from .task import MalformedTask, Task

log = logging.getLogger(__name__)

IN_PROCESS_ATTEMPTS = 3
PROBE_EVERY_S = 0.5  # an endpoint is probed at most this often, whatever the thread count
PENDING_EVERY_S = 5  # how often the queue depth is read for the pending gauge
STALLED_S = 30  # tasks ready, room to take them, no delivery this long: reconnect
RECONNECT_S = (0.2, 5.0)  # first and longest wait before reconnecting to RabbitMQ
PREFETCH_PER_THREAD = 4  # messages per allowed copy: hide the ack/deliver round trip
# Finished deliveries are acked together, once they fill half the prefetch window: RabbitMQ
# spent 0.13-0.18 CPU-ms per object acking every ~6 of them, 0.04-0.05 acking every ~36
# (S1, 16 threads). A worker with nothing else outstanding acks at once: a trickle of
# events is never held back.
ACK_WAIT_S = 0.05  # the longest a finished delivery otherwise waits for its ack
# Finished deliveries behind an unfinished one are acked one by one (a `multiple` ack
# cannot skip it) only once that copy is long: it has run LONG_COPY_S and LONG_TIMES its
# usual time, or half the window waits. Copies of a similar size finish slightly out of
# order all the time, and one batch ack a moment later is cheaper for RabbitMQ than many
# single ones (S6 alone, 50 ms from the target: 43% of the ack frames were single ones
# with 0.05 s, 31% with 0.25 s counted from the delivery).
LONG_COPY_S = 0.25
LONG_TIMES = 4
# A task moved to a delay queue during an outage carries the (wall-clock) time it was
# first held in it, so that it is counted once per outage, however often it comes back.
HELD_SINCE = "x-mirror-held-since"
_TRANSIENT = tenacity.retry_if_exception(  # a failed part has had its tries: no more here
    lambda e: isinstance(e, CopyError) and e.kind is Kind.TRANSIENT and not e.retried
)


def replication_latency(task: Task) -> float | None:
    """Seconds from the source event to the verified copy (events carry their time)."""
    try:
        event_time = datetime.fromisoformat(task.event_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if event_time.tzinfo is None:
        return None
    return (datetime.now(UTC) - event_time).total_seconds()


class Endpoint:
    """One side's health as all copy threads see it (rclone's pacer): probed at most every
    PROBE_EVERY_S. While it is down a watcher thread keeps probing it and, the moment it
    answers, wakes every task held for it; an outage is logged once when it starts and once
    when it ends, with the number of tasks that waited."""

    def __init__(self, side: str, probe, stopping: threading.Event) -> None:
        self.side = side
        self._probe = probe
        self._stopping = stopping
        self._lock = threading.Lock()
        self._checked = 0.0
        self._up = True
        self._back = threading.Event()  # set while up (and on stop): holders wait on it
        self._back.set()
        self.down_since = 0.0  # monotonic
        self.down_since_wall = 0.0  # time.time(), compared with HELD_SINCE headers
        self.came_back = 0.0  # monotonic time the last outage ended
        self._held = 0  # tasks held in this outage
        metrics.ENDPOINT_UP.labels(side).set(1)

    @property
    def down(self) -> bool:
        return not self._up

    def up(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked >= PROBE_EVERY_S:
                self._checked = time.monotonic()
                self._set(self._probe())
            return self._up

    def answered(self) -> None:
        """A copy reached this side: the outage, if any, is over."""
        if not self._up:
            with self._lock:
                self._set(True)

    def hold(self, seconds: float) -> None:
        """Wait up to `seconds`, or until the endpoint is seen back or the worker stops."""
        self._back.wait(seconds)

    def held(self) -> None:
        """One more task waits for this outage (reported when it ends)."""
        with self._lock:
            self._held += 1

    def wake(self) -> None:
        """Release every holder (the worker is stopping); safe from a signal handler."""
        self._back.set()

    def _set(self, up: bool) -> None:
        if up and not self._up:
            took = time.monotonic() - self.down_since
            log.warning(
                "%s is reachable again after %.0fs; %d task(s) waited for it; held work resumes",
                self.side,
                took,
                self._held,
            )
            self.came_back, self._held = time.monotonic(), 0
            self._up = True
            self._back.set()
            metrics.ENDPOINT_UP.labels(self.side).set(1)
        elif not up and self._up:
            self.down_since, self.down_since_wall = time.monotonic(), time.time()
            log.warning("%s unreachable: holding its work until it answers", self.side)
            self._up = False
            self._back.clear()
            metrics.ENDPOINT_UP.labels(self.side).set(0)
            threading.Thread(target=self._watch, daemon=True, name=f"watch-{self.side}").start()

    def _watch(self) -> None:
        """Probe every PROBE_EVERY_S while down (whoever probed last), so that held work
        resumes within a probe interval of the endpoint's return, not after its back-off."""
        while self._up is False:
            wait = self._checked + PROBE_EVERY_S - time.monotonic()
            if self._stopping.wait(max(wait, 0.0)):
                return
            self.up()


def copy_deadline_s(settings: Settings, size: int | None) -> float:
    """How long one task's copy may take, in-process tries included: each try's requests
    end within the read timeout plus their bytes at the transport's minimum rate. A task
    without a size (rare: events and listings give one) has none."""
    if size is None:
        return float("inf")
    per_try = settings.read_timeout_s + size / MIN_RATE
    return IN_PROCESS_ATTEMPTS * per_try + 10  # + the tries' jittered waits


@dataclass
class Delivery:
    tag: int
    body: bytes
    headers: dict
    redelivered: bool = False  # RabbitMQ delivered it before (to a worker that died)
    decision: Decision | None = None  # set by the copy thread
    subject: str = ""
    started_at: float = 0.0  # monotonic, set by the copy thread (0: not started)
    copy_s: float = 0.0  # how long its copy took, set by the copy thread
    settled_at: float = 0.0  # when the connection thread acted on it: may be acked since
    held_at: float = 0.0  # time.time() it was first held in the current outage, if it was


class Worker:
    def __init__(self, settings: Settings, *, concurrency: int | None) -> None:
        """`concurrency`: copies at once, or None (auto) for the controller to fit."""
        self.settings = settings
        self.limits = policy.Limits(settings.retry_delays, settings.hold_max_s)
        self.controller = Controller(concurrency, self._throttles)
        self.threads = self.controller.threads
        self.copier = Copier(settings, pool=self.threads * 2 + 2)
        self._prefetch = self.controller.limit * PREFETCH_PER_THREAD  # the consumer's
        self.stopping = threading.Event()
        self.endpoints = {
            side: Endpoint(side, lambda side=side: self.copier.probe(side), self.stopping)
            for side in ("source", "target")
        }
        self.retrying = tenacity.Retrying(
            retry=_TRANSIENT,
            stop=tenacity.stop_after_attempt(IN_PROCESS_ATTEMPTS - 1),  # after the first
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.digest = Digest(settings)
        self._finished: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        # Ack frames sent: batches (`multiple`) and single acks behind a longer copy.
        self.acks = {"deliveries": 0, "batches": 0, "alone": 0}
        self._usual_s = 0.0  # a copy's usual duration (moving average), for LONG_TIMES
        self._wake = threading.Lock()
        self._woken = False
        self._copying: dict[int, float] = {}  # copy thread -> its copy's deadline
        self._copying_lock = threading.Lock()

    # ---- copy threads -------------------------------------------------------------

    def handle(self, delivery: Delivery) -> Decision:
        """One delivery to a decision, once the controller allows one more copy; never
        raises."""
        if self.stopping.is_set():  # not started before SIGTERM: back to the queue
            return Decision("requeue", "worker stopping")
        try:
            with self.controller.slot(self.stopping) as holding:
                delivery.started_at = time.monotonic()  # waiting for a slot is not copying
                metrics.IN_FLIGHT.inc()
                try:
                    return self._tasks(delivery, holding)
                finally:
                    metrics.IN_FLIGHT.dec()
        except Stopping:
            return Decision("requeue", "worker stopping")

    def _tasks(self, delivery: Delivery, holding) -> Decision:
        try:
            attempt = message.attempt(delivery.headers)
            tasks = message.parse(delivery.body)
        except MalformedTask as exc:
            decision = policy.decide(
                Kind.MALFORMED, "", f"malformed task: {exc}", 0, 0, self.limits
            )
            policy.record(decision)
            log.warning("dead-lettering a malformed message: %s", exc)
            return decision
        # Seen before (redelivered, retried, replayed from the DLQ): likely copied already.
        replay = delivery.redelivered or message.FIRST_FAILURE in delivery.headers
        for task in tasks:
            decision = self._one(task, attempt, replay, delivery, holding)
            if decision.action != "ack":
                delivery.subject = f"{task.bucket}/{task.key}"
                return decision
        return Decision("ack")

    def _throttles(self) -> float:
        """Grows with every SlowDown (503, 429, Retry-After) either endpoint sent: the
        transports' pacers set a later `until` each time."""
        return sum(s3.transport.pacer.until for s3 in (self.copier.source, self.copier.target))

    def _one(
        self,
        task: Task,
        attempt: int,
        replay: bool = False,
        delivery: Delivery | None = None,
        holding=lambda size: None,
    ) -> Decision:
        """Copy one task, holding while an endpoint is down; the policy decides failures."""
        started = time.monotonic()
        held_since = 0.0
        while True:
            try:
                outcome = self._copy(task, replay)
            except CopyError as exc:
                kind = exc.kind
                endpoint = self.endpoints[exc.side or "target"]
                if kind is Kind.DOWN and endpoint.up():
                    kind = Kind.TRANSIENT  # the endpoint answers: this key failed
                elif kind is Kind.CONFLICT:
                    kind = Kind.TRANSIENT
                held = time.monotonic() - held_since if held_since else 0.0
                decision = policy.decide(kind, exc.side, exc.reason, attempt, held, self.limits)
                if decision.action == "hold":
                    if self.stopping.is_set():
                        return Decision("requeue", "worker stopping while an endpoint is down")
                    if not held_since:
                        held_since = time.monotonic()
                        self._count_hold(decision, endpoint, delivery)
                    endpoint.hold(decision.wait_s * random.uniform(0.8, 1.2))
                    continue
                policy.record(decision)
                # An outage is logged by its endpoint, once: not once per task it moves.
                self._log(task, attempt, decision.action, decision.reason, quiet=bool(held_since))
                return decision
            for endpoint in self.endpoints.values():
                endpoint.answered()
            if outcome.bytes <= MULTIPART_THRESHOLD:  # held whole (parts have their budget)
                holding(outcome.bytes)
            self._record(task, attempt, outcome, time.monotonic() - started)
            return Decision("ack", outcome.reason)

    @staticmethod
    def _count_hold(decision: Decision, endpoint: Endpoint, delivery: Delivery | None) -> None:
        """Count a task's hold once per outage: not again when it comes back from a delay
        queue (HELD_SINCE) while the same outage lasts."""
        try:
            before = float(message.text(delivery.headers if delivery else {}, HELD_SINCE) or 0)
        except ValueError:
            before = 0.0
        if before and before >= endpoint.down_since_wall:
            if delivery:
                delivery.held_at = before
            return
        if delivery:
            delivery.held_at = time.time()
        policy.record(decision)
        endpoint.held()

    def ready(self) -> bool:
        """/readyz: consuming, and no copy running past its deadline (a stuck copy must
        not hide behind a 200 while the work waits)."""
        now = time.monotonic()
        with self._copying_lock:
            stuck = any(deadline < now for deadline in self._copying.values())
        return self.consuming.is_set() and not stuck

    def _copy(self, task: Task, replay: bool) -> Outcome:
        """The copy, with in-process retries of transient failures (tenacity is entered
        only after a first failure: most copies succeed at once), under its deadline."""
        me = threading.get_ident()
        with self._copying_lock:
            self._copying[me] = time.monotonic() + copy_deadline_s(self.settings, task.size)
        try:
            return self._tries(task, replay)
        finally:
            with self._copying_lock:
                self._copying.pop(me, None)

    def _tries(self, task: Task, replay: bool) -> Outcome:
        try:
            return self.copier.copy(task, replay=replay)
        except CopyError as exc:
            if exc.kind is not Kind.TRANSIENT or exc.retried:  # retried where it failed
                raise
        self.stopping.wait(random.uniform(0, 0.4))
        return self.retrying(self.copier.copy, task, replay=True)

    def _record(self, task: Task, attempt: int, outcome: Outcome, seconds: float) -> None:
        """Count one finished task (per-object lines are debug: the counters carry it)."""
        if outcome.deleted and not outcome.copied:
            metrics.OBJECTS_DELETED.inc()
            self._log(task, attempt, "deleted", outcome.reason)
            return
        if not outcome.copied:
            reason = metrics.skip_reason(outcome.reason)
            if reason == "excluded" and not filters.excluded(self.settings, task.bucket, task.key):
                reason = "out_of_scope"  # outside MIRROR_PREFIX or the pair's path
            metrics.SKIPPED.labels(reason).inc()
            self._log(task, attempt, "skipped", outcome.reason)
            return
        # The object count goes last: who sees it can trust the bytes and duration.
        metrics.BYTES_REPLICATED.inc(outcome.bytes)
        metrics.COPY_SECONDS.observe(seconds)
        metrics.OBJECTS_REPLICATED.inc()
        latency = replication_latency(task)
        if latency is not None:
            metrics.LATENCY.observe(max(latency, 0.0))
        self._log(task, attempt, "copied", outcome.reason, latency)

    def _log(
        self,
        task: Task,
        attempt: int,
        what: str,
        reason: str,
        latency: float | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        quiet = quiet or what in ("copied", "skipped", "ack", "deleted")
        level = logging.DEBUG if quiet else logging.WARNING
        if not log.isEnabledFor(level):
            return
        outcome = {"ack": "skipped", "retry": "failed", "dead": "failed"}.get(what, what)
        extra = {"bucket": task.bucket, "key": task.key, "origin": task.origin, "attempt": attempt}
        if latency is not None:
            extra["latency_s"] = round(latency, 3)
        log.log(level, "%s: %s", what, reason, extra={**extra, "outcome": outcome})

    def _done(self, connection, delivery: Delivery, future) -> None:
        """Hand a finished delivery to the connection thread (one wake-up at a time)."""
        if delivery.started_at:
            delivery.copy_s = time.monotonic() - delivery.started_at
        try:
            delivery.decision = future.result()
        except Exception as exc:  # a bug, not a copy failure: keep the message safe
            log.exception("copy thread crashed")
            delivery.decision = Decision("requeue", f"worker error: {exc!r}")
        with self._wake:
            self._finished.put(delivery)
            if self._woken:
                return
            self._woken = True
        try:
            connection.add_callback_threadsafe(self._settle)
        except Exception:  # the connection is gone: RabbitMQ redelivers its messages
            with self._wake:
                self._woken = False

    # ---- the connection thread ----------------------------------------------------

    def run(self) -> None:
        health.serve(self.settings.metrics_address, self.ready)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        with ThreadPoolExecutor(self.threads, thread_name_prefix="copy") as pool:
            delay, down = RECONNECT_S[0], False
            while not self.stopping.is_set():
                self._consumed = False
                try:
                    self._consume(pool)
                except pika.exceptions.AMQPError as exc:
                    if self._consumed:  # this connection worked: a new outage begins
                        delay, down = RECONNECT_S[0], False
                    if not down:
                        down = True
                        log.warning("RabbitMQ connection lost (%r); reconnecting", exc)
                    self.stopping.wait(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, RECONNECT_S[1])
        self.digest.close()
        acks = self.acks
        log.info(
            "worker stopped; %d deliveries acked with %d acks, %d of them alone behind a "
            "longer copy",
            acks["deliveries"],
            acks["batches"] + acks["alone"],
            acks["alone"],
        )

    def stop(self) -> None:
        """Take no more work; held tasks go back to the queue at once."""
        self.stopping.set()
        for endpoint in self.endpoints.values():
            endpoint.wake()

    def _consume(self, pool: ThreadPoolExecutor) -> None:
        connection = broker.connect(self.settings.rabbitmq_url, name="minio-s3-mirror worker")
        try:
            channel = connection.channel()
            topology.declare(channel, self.limits.tiers)
            channel.confirm_delivery()
            # This connection's deliveries in delivery order. Deliveries of an earlier,
            # lost connection are not waited for: RabbitMQ redelivers them.
            self._channel, self._outstanding, self._ack_due, self._unacked = channel, {}, 0.0, 0
            self._finished, self._woken = queue.SimpleQueue(), False

            def on_message(channel, method, properties, body) -> None:
                self._delivered = time.monotonic()
                headers = dict(properties.headers or {})
                delivery = Delivery(method.delivery_tag, body, headers, method.redelivered)
                self._outstanding[delivery.tag] = delivery
                metrics.UNACKED.set(len(self._outstanding))
                future = pool.submit(self.handle, delivery)
                future.add_done_callback(lambda f: self._done(connection, delivery, f))

            tag = self._subscribe(channel, on_message)
            how = "fitted to the link (auto)" if self.controller.auto else "fixed"
            log.info(
                "consuming %s, %d copies at once, %s",
                topology.WORK_QUEUE,
                self.controller.limit,
                how,
            )
            self.consuming.set()
            self._consumed = True
            measured, self._delivered = 0.0, time.monotonic()
            while not self.stopping.is_set():
                due = self._ack_due - time.monotonic() if self._ack_due else 1.0
                connection.process_data_events(time_limit=min(max(due, 0.0), 1.0))
                self._settle()
                if self.controller.tick() and self._follow(self.controller.limit):
                    tag = self._subscribe(channel, on_message, tag)
                if time.monotonic() - measured > PENDING_EVERY_S:
                    depth = channel.queue_declare(topology.WORK_QUEUE, passive=True)
                    metrics.PENDING.set(depth.method.message_count)
                    measured = time.monotonic()
                    self._check_stalled(depth.method.message_count)
            # Drain: take no more, let in-flight copies finish and be acked.
            channel.basic_cancel(tag)
            while self._outstanding:
                connection.process_data_events(time_limit=0.2)
                self._settle()
        finally:
            self.consuming.clear()
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    @staticmethod
    def _follow_prefetch(limit: int, prefetch: int) -> int:
        """The prefetch window for `limit` copies, or `prefetch` (the current one) while it
        fits: from one to two times PREFETCH_PER_THREAD per copy. A raised limit gets its
        full window at once (with less, its copies would not all be busy and its trial
        would go unjudged); a lowered one keeps a window up to twice its own."""
        if limit * PREFETCH_PER_THREAD <= prefetch <= limit * PREFETCH_PER_THREAD * 2:
            return prefetch
        return limit * PREFETCH_PER_THREAD

    def _follow(self, limit: int) -> bool:
        """Whether the consumer needs a new prefetch window for `limit` copies."""
        return self._follow_prefetch(limit, self._prefetch) != self._prefetch

    def _subscribe(self, channel, on_message, old: str | None = None) -> str:
        """Consume with a prefetch window fitted to the limit. RabbitMQ applies a prefetch
        count to consumers registered after it, so a new window means a new consumer (on
        the same channel: delivery tags, and so acks, go on); then the old one goes."""
        self._prefetch = self._follow_prefetch(self.controller.limit, self._prefetch)
        channel.basic_qos(prefetch_count=self._prefetch)
        tag = channel.basic_consume(topology.WORK_QUEUE, on_message)
        if old:
            # Deliveries received but not yet handed over would be requeued by the cancel.
            channel.connection.process_data_events(time_limit=0)
            channel.basic_cancel(old)
        return tag

    def _check_stalled(self, ready: int) -> None:
        """Tasks wait, this worker has room, yet nothing came for a while: a consumer
        registered while a quorum queue had no leader (a node had just died) can stay
        silent. A new connection and channel consume again. A window of tasks held for a
        down endpoint is not silence: nothing is checked while one is down, and the quiet
        is counted from its return at the earliest."""
        if any(endpoint.down for endpoint in self.endpoints.values()):
            return
        since = max(self._delivered, *(e.came_back for e in self.endpoints.values()))
        idle = time.monotonic() - since
        room = len(self._outstanding) < self._prefetch
        if ready and room and idle > STALLED_S:
            log.warning("%d task(s) wait but none came for %.0fs: reconnecting", ready, idle)
            raise pika.exceptions.AMQPError("consumer stalled")

    def _settle(self) -> None:
        """Act on every finished delivery, then ack what is due."""
        with self._wake:
            self._woken = False
        channel = self._channel
        while True:
            try:
                delivery = self._finished.get_nowait()
            except queue.Empty:
                break
            if self._outstanding.get(delivery.tag) is not delivery or not channel.is_open:
                continue  # of a lost channel (tags restart on a new one): RabbitMQ redelivers
            self._act(channel, delivery)
            if delivery.tag in self._outstanding:  # not rejected back to the queue
                delivery.settled_at = time.monotonic()
                self._unacked += 1
                # A moving average; one outlier (a held task, a huge object) moves it little.
                sample = min(delivery.copy_s, LONG_TIMES * max(self._usual_s, LONG_COPY_S))
                self._usual_s += (sample - self._usual_s) / 16
        self._ack(channel)

    def _ack(self, channel) -> None:
        """Ack finished deliveries in batches, never behind an unfinished one for long.

        `multiple=True` acks every tag up to the one given, so it covers only the run of
        finished deliveries at the head of the window: at once when nothing else is
        outstanding, else once the run fills half the prefetch window or its oldest has
        waited ACK_WAIT_S. Finished deliveries behind a copy still under way are acked one
        by one, after ACK_WAIT_S, once that copy is long (a large object, a slow source)
        or half the window waits: a long copy holds one slot of the window, never the
        window.
        """
        if not self._unacked:
            return
        now = time.monotonic()
        run: list[Delivery] = []  # the finished run at the head of the window
        first = None  # the first unfinished delivery
        behind: list[Delivery] = []  # finished after it
        for delivery in self._outstanding.values():
            if not delivery.settled_at:
                first = first or delivery
            elif first is None:
                run.append(delivery)
            else:
                behind.append(delivery)
        half = self._prefetch // 2
        dues = []  # when to look again
        if run:
            due = min(d.settled_at for d in run) + ACK_WAIT_S
            if first is None or len(run) >= half or now >= due:
                for delivery in run:
                    del self._outstanding[delivery.tag]
                channel.basic_ack(run[-1].tag, multiple=True)
                self.acks["batches"] += 1
                self.acks["deliveries"] += len(run)
                self._unacked -= len(run)
            else:
                dues.append(due)
        if behind:
            # first is set: a long copy (or a crowd behind it) makes them go one by one.
            long_s = max(LONG_COPY_S, LONG_TIMES * self._usual_s)
            long_at = first.started_at + long_s if first.started_at else float("inf")
            blocked = now >= long_at or len(behind) >= half
            for delivery in behind:
                due = delivery.settled_at + ACK_WAIT_S
                if blocked and now >= due:
                    del self._outstanding[delivery.tag]
                    channel.basic_ack(delivery.tag)
                    self.acks["alone"] += 1
                    self.acks["deliveries"] += 1
                    self._unacked -= 1
                else:
                    dues.append(due if blocked else max(due, long_at))
        self._ack_due = min(dues) if dues else 0.0
        metrics.UNACKED.set(len(self._outstanding))

    def _act(self, channel, delivery: Delivery) -> None:
        """Publish a retry or a dead letter (confirmed) before the delivery is acked."""
        decision = delivery.decision
        assert decision is not None
        if decision.action == "requeue":
            del self._outstanding[delivery.tag]
            channel.basic_reject(delivery.tag, requeue=True)
            return
        if decision.action not in ("retry", "dead"):
            return
        headers = dict(delivery.headers)
        headers.setdefault(message.FIRST_FAILURE, message.now())
        headers[message.ERROR] = decision.reason[:1000]
        headers[message.LAST_FAILURE] = message.now()
        if decision.action == "retry":
            headers[message.ATTEMPT] = decision.attempt
            if delivery.held_at and decision.kind is Kind.DOWN:  # counted once per outage
                headers[HELD_SINCE] = repr(delivery.held_at)
            else:
                headers.pop(HELD_SINCE, None)
            route = topology.retry_route(self.limits.tiers[decision.tier])
            self._republish(channel, topology.EXCHANGE, route, delivery.body, headers)
            return
        log.error("dead-lettered: %s", decision.reason)
        self.digest.add(delivery.subject or "(unreadable message)", decision.reason)
        self._republish(channel, topology.DLX, "", delivery.body, headers)

    @staticmethod
    def _republish(channel, exchange: str, route: str, body: bytes, headers: dict) -> None:
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            headers=headers,
        )
        channel.basic_publish(exchange, route, body, properties, mandatory=True)
