"""The replicator worker: tasks from RabbitMQ -> copy engine -> ack.

pika is not thread-safe: the main thread owns the connection and does all channel work
(consume, ack, publish); copy threads hand their decisions back through a queue and one
`add_callback_threadsafe` wake-up at a time. Finished deliveries are acked in batches
(`multiple=True` up to the highest contiguous finished tag, half a prefetch window or
50 ms at a time, at once when nothing else is in flight); a retry or dead letter is
published, confirmed, before its delivery is acked. Every failure goes through
`policy.decide`, the one decision point.
"""

from __future__ import annotations

import contextlib
import itertools
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

from . import broker, health, message, metrics, policy, topology
from .config import Settings
from .copier import Copier, Outcome
from .digest import Digest
from .errors import CopyError, Kind
from .policy import Decision
from .task import MalformedTask, Task

log = logging.getLogger(__name__)

IN_PROCESS_ATTEMPTS = 3
PROBE_EVERY_S = 1.0  # an endpoint is probed at most this often, whatever the thread count
PENDING_EVERY_S = 5  # how often the queue depth is read for the pending gauge
STALLED_S = 30  # tasks ready, room to take them, no delivery this long: reconnect
RECONNECT_S = (0.2, 5.0)  # first and longest wait before reconnecting to RabbitMQ
PREFETCH_PER_THREAD = 4  # waiting messages per copy thread: hide the ack/deliver round trip
# Finished deliveries are acked together, once they fill half the prefetch window: RabbitMQ
# spent 0.13-0.18 CPU-ms per object acking every ~6 of them, 0.04-0.05 acking every ~36
# (S1, 16 threads). A worker with nothing else outstanding acks at once: a trickle of
# events is never held back.
ACK_WAIT_S = 0.05  # the longest a finished delivery otherwise waits for its ack
_TRANSIENT = tenacity.retry_if_exception(
    lambda e: isinstance(e, CopyError) and e.kind is Kind.TRANSIENT
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
    """One side's health as all copy threads see it: probed at most once a second,
    an outage logged once when it starts and once when it ends (rclone's pacer)."""

    def __init__(self, side: str, probe) -> None:
        self.side = side
        self._probe = probe
        self._lock = threading.Lock()
        self._checked = 0.0
        self._up = True
        self._down_since = 0.0

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

    def _set(self, up: bool) -> None:
        if up and not self._up:
            took = time.monotonic() - self._down_since
            log.warning("%s is reachable again after %.0fs; held work resumes", self.side, took)
        elif not up and self._up:
            self._down_since = time.monotonic()
            log.warning("%s unreachable: holding its work until it answers", self.side)
        self._up = up


@dataclass
class Delivery:
    tag: int
    body: bytes
    headers: dict
    redelivered: bool = False  # RabbitMQ delivered it before (to a worker that died)
    decision: Decision | None = None  # set by the copy thread
    subject: str = ""
    settled: bool = False  # set by the connection thread once acted on: may be acked


class Worker:
    def __init__(self, settings: Settings, *, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.limits = policy.Limits(settings.retry_delays, settings.hold_max_s)
        self.copier = Copier(settings, pool=concurrency * 2 + 2)
        self.endpoints = {
            side: Endpoint(side, lambda side=side: self.copier.probe(side))
            for side in ("source", "target")
        }
        self.retrying = tenacity.Retrying(
            retry=_TRANSIENT,
            stop=tenacity.stop_after_attempt(IN_PROCESS_ATTEMPTS - 1),  # after the first
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )
        self.stopping = threading.Event()
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.digest = Digest(settings)
        self._finished: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._wake = threading.Lock()
        self._woken = False

    # ---- copy threads -------------------------------------------------------------

    def handle(self, delivery: Delivery) -> Decision:
        """One delivery to a decision; never raises."""
        if self.stopping.is_set():  # not started before SIGTERM: back to the queue
            return Decision("requeue", "worker stopping")
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
        metrics.IN_FLIGHT.inc()
        try:
            for task in tasks:
                decision = self._one(task, attempt, replay)
                if decision.action != "ack":
                    delivery.subject = f"{task.bucket}/{task.key}"
                    return decision
        finally:
            metrics.IN_FLIGHT.dec()
        return Decision("ack")

    def _one(self, task: Task, attempt: int, replay: bool = False) -> Decision:
        """Copy one task, holding while an endpoint is down; the policy decides failures."""
        started = time.monotonic()
        held_since = 0.0
        while True:
            try:
                outcome = self._copy(task, replay)
            except CopyError as exc:
                kind = exc.kind
                if kind is Kind.DOWN and self.endpoints[exc.side or "target"].up():
                    kind = Kind.TRANSIENT  # the endpoint answers: this key failed
                elif kind is Kind.CONFLICT:
                    kind = Kind.TRANSIENT
                held = time.monotonic() - held_since if held_since else 0.0
                decision = policy.decide(kind, exc.side, exc.reason, attempt, held, self.limits)
                policy.record(decision)
                if decision.action == "hold":
                    if self.stopping.is_set():
                        return Decision("requeue", "worker stopping while an endpoint is down")
                    held_since = held_since or time.monotonic()
                    self.stopping.wait(decision.wait_s * random.uniform(0.8, 1.2))
                    continue
                self._log(task, attempt, decision.action, decision.reason)
                return decision
            for endpoint in self.endpoints.values():
                endpoint.answered()
            self._record(task, attempt, outcome, time.monotonic() - started)
            return Decision("ack", outcome.reason)

    def _copy(self, task: Task, replay: bool) -> Outcome:
        """The copy, with in-process retries of transient failures (tenacity is entered
        only after a first failure: most copies succeed at once)."""
        try:
            return self.copier.copy(task, replay=replay)
        except CopyError as exc:
            if exc.kind is not Kind.TRANSIENT:
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
            metrics.SKIPPED.labels(metrics.skip_reason(outcome.reason)).inc()
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
        self, task: Task, attempt: int, what: str, reason: str, latency: float | None = None
    ) -> None:
        level = (
            logging.DEBUG if what in ("copied", "skipped", "ack", "deleted") else logging.WARNING
        )
        if not log.isEnabledFor(level):
            return
        outcome = {"ack": "skipped", "retry": "failed", "dead": "failed"}.get(what, what)
        extra = {"bucket": task.bucket, "key": task.key, "origin": task.origin, "attempt": attempt}
        if latency is not None:
            extra["latency_s"] = round(latency, 3)
        log.log(level, "%s: %s", what, reason, extra={**extra, "outcome": outcome})

    def _done(self, connection, delivery: Delivery, future) -> None:
        """Hand a finished delivery to the connection thread (one wake-up at a time)."""
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
        health.serve(self.settings.metrics_address, self.consuming.is_set)
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="copy") as pool:
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
        log.info("worker stopped")

    def _consume(self, pool: ThreadPoolExecutor) -> None:
        connection = broker.connect(self.settings.rabbitmq_url, name="minio-s3-mirror worker")
        try:
            channel = connection.channel()
            topology.declare(channel, self.limits.tiers)
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.concurrency * PREFETCH_PER_THREAD)
            # This connection's deliveries in delivery order. Deliveries of an earlier,
            # lost connection are not waited for: RabbitMQ redelivers them.
            self._channel, self._outstanding, self._ack_due = channel, {}, 0.0
            self._finished, self._woken = queue.SimpleQueue(), False

            def on_message(channel, method, properties, body) -> None:
                self._delivered = time.monotonic()
                headers = dict(properties.headers or {})
                delivery = Delivery(method.delivery_tag, body, headers, method.redelivered)
                self._outstanding[delivery.tag] = delivery
                metrics.UNACKED.set(len(self._outstanding))
                future = pool.submit(self.handle, delivery)
                future.add_done_callback(lambda f: self._done(connection, delivery, f))

            tag = channel.basic_consume(topology.WORK_QUEUE, on_message)
            log.info("consuming %s with %d copy threads", topology.WORK_QUEUE, self.concurrency)
            self.consuming.set()
            self._consumed = True
            measured, self._delivered = 0.0, time.monotonic()
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=ACK_WAIT_S if self._ack_due else 1)
                self._settle()
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

    def _check_stalled(self, ready: int) -> None:
        """Tasks wait, this worker has room, yet nothing came for a while: a consumer
        registered while a quorum queue had no leader (a node had just died) can stay
        silent. A new connection and channel consume again."""
        idle = time.monotonic() - self._delivered
        room = len(self._outstanding) < self.concurrency * PREFETCH_PER_THREAD
        if ready and room and idle > STALLED_S:
            log.warning("%d task(s) wait but none came for %.0fs: reconnecting", ready, idle)
            raise pika.exceptions.AMQPError("consumer stalled")

    def _settle(self) -> None:
        """Act on every finished delivery, then ack the contiguous finished prefix."""
        with self._wake:
            self._woken = False
        channel = self._channel
        finished = False
        while True:
            try:
                delivery = self._finished.get_nowait()
            except queue.Empty:
                break
            if self._outstanding.get(delivery.tag) is not delivery or not channel.is_open:
                continue  # of a lost channel (tags restart on a new one): RabbitMQ redelivers
            self._act(channel, delivery)
            delivery.settled = True
            finished = True
        self._ack(channel, finished)

    def _ack(self, channel, finished: bool) -> None:
        """Ack the contiguous finished prefix (`multiple=True`): at once when nothing after
        it is outstanding, else once it fills half the prefetch window or has waited
        ACK_WAIT_S."""
        if not finished and not self._ack_due:
            return
        last = count = 0
        for tag, delivery in self._outstanding.items():
            if not delivery.settled:
                break
            last, count = tag, count + 1
        if not last:
            return
        caught_up = count == len(self._outstanding)  # nothing in flight after it
        now = time.monotonic()
        self._ack_due = self._ack_due or now + ACK_WAIT_S
        half = self.concurrency * PREFETCH_PER_THREAD // 2
        if not caught_up and count < half and now < self._ack_due:
            return
        for tag in list(itertools.islice(self._outstanding, count)):
            del self._outstanding[tag]
        channel.basic_ack(last, multiple=True)
        self._ack_due = 0.0
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
