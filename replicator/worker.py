"""The replicator worker: tasks from RabbitMQ -> copy engine -> ack.

pika is not thread-safe: the main thread owns the connection and does all channel
work (consume, ack, publish); copy threads hand results back through
`add_callback_threadsafe`. Prefetch is twice the number of copy threads, so a worker
never holds more than one waiting message per thread.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import pika
import tenacity

from . import broker, health, metrics, topology
from .message import ATTEMPT, ERROR, FIRST_FAILURE, LAST_FAILURE, now, parse
from .config import Settings
from .copier import Copier, Outcome
from .digest import Digest
from .errors import CopyError, Kind
from .task import MalformedTask, Task

log = logging.getLogger(__name__)

IN_PROCESS_ATTEMPTS = 3
OUTAGE_PROBE_S = (1, 10)  # first and longest wait between probes of a down target
PENDING_EVERY_S = 5  # how often the queue depth is read for the pending gauge


def replication_latency(task: Task) -> float | None:
    """Seconds from the source event to the verified copy (events carry their time)."""
    try:
        event_time = datetime.fromisoformat(task.event_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.now(UTC) - event_time).total_seconds()


@dataclass(frozen=True)
class Result:
    """What to do with one delivery once its copy thread is done."""

    action: str  # "ack" | "retry" | "dead"
    reason: str = ""
    subject: str = ""  # bucket/key, for the Slack digest


class Worker:
    def __init__(self, settings: Settings, *, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.copier = Copier(settings, pool=concurrency * 2 + 2)
        self.stopping = threading.Event()
        self.outage = threading.Lock()  # one thread probes a down target; the rest wait
        self.consuming = threading.Event()  # readiness: connected and consuming
        self.digest = Digest(settings)

    # ---- copy threads -------------------------------------------------------------

    def work(self, body: bytes, attempt: int) -> Result:
        try:
            tasks = parse(body)
        except MalformedTask as exc:
            metrics.FAILURES.labels("malformed").inc()
            return Result("dead", f"malformed task: {exc}")
        reasons = []
        metrics.IN_FLIGHT.inc()
        try:
            for task in tasks:
                started = time.monotonic()
                try:
                    outcome = self._copy_through_outage(task)
                except CopyError as exc:
                    if exc.kind is Kind.MOOT:
                        self._record(task, attempt, Outcome(False, exc.reason))
                        continue
                    self._log(task, attempt, "failed", exc.reason)
                    metrics.FAILURES.labels(exc.kind.value).inc()
                    action = "dead" if exc.kind is Kind.PERMANENT else "retry"
                    return Result(action, exc.reason, f"{task.bucket}/{task.key}")
                self._record(task, attempt, outcome, time.monotonic() - started)
                reasons.append(outcome.reason)
        finally:
            metrics.IN_FLIGHT.dec()
        return Result("ack", ", ".join(reasons))

    def _record(self, task: Task, attempt: int, outcome: Outcome, seconds: float = 0) -> None:
        """Log and count one finished task."""
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

    def _copy_through_outage(self, task: Task) -> Outcome:
        """Retry transient errors a few times; while the target is down, wait for it."""
        while True:
            try:
                return self._copy_with_retries(task)
            except CopyError as exc:
                if not (exc.unreachable and exc.side == "target") or self.stopping.is_set():
                    raise
            self._wait_for_target()

    def _copy_with_retries(self, task: Task) -> Outcome:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, CopyError) and e.kind is Kind.TRANSIENT
            ),
            stop=tenacity.stop_after_attempt(IN_PROCESS_ATTEMPTS),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )
        return retrying(self.copier.copy, task)

    def _wait_for_target(self) -> None:
        with self.outage:
            delay = OUTAGE_PROBE_S[0]
            while not self.stopping.is_set() and not self.copier.probe_target():
                log.warning("target unreachable: holding work, next probe in %ss", delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, OUTAGE_PROBE_S[1])

    def _log(
        self, task: Task, attempt: int, what: str, reason: str, latency: float | None = None
    ) -> None:
        level = logging.WARNING if what == "failed" else logging.INFO
        extra = {"bucket": task.bucket, "key": task.key, "origin": task.origin, "attempt": attempt}
        if latency is not None:
            extra["latency_s"] = round(latency, 3)
        log.log(level, "%s: %s", what, reason, extra={**extra, "outcome": what})

    # ---- the connection thread ----------------------------------------------------

    def run(self) -> None:
        health.serve(self.settings.metrics_address, self.consuming.is_set)
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="copy") as pool:
            delay = 1.0
            while not self.stopping.is_set():
                try:
                    self._consume(pool)
                    delay = 1.0
                except pika.exceptions.AMQPError as exc:
                    log.warning("RabbitMQ connection lost (%r); reconnecting in %.0fs", exc, delay)
                    self.stopping.wait(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, 30)
        self.digest.close()
        log.info("worker stopped")

    def _consume(self, pool: ThreadPoolExecutor) -> None:
        connection = broker.connect(self.settings.rabbitmq_url, name="minio-s3-mirror worker")
        try:
            channel = connection.channel()
            topology.declare(channel)
            channel.confirm_delivery()
            # One waiting message per thread hides the ack/deliver round trip.
            channel.basic_qos(prefetch_count=self.concurrency * 2)
            # This connection's deliveries still being copied. Deliveries of an earlier,
            # lost connection are not waited for: RabbitMQ redelivers them.
            pending: set[Future[Result]] = set()
            on_message = partial(self._on_message, connection, pool, pending)
            tag = channel.basic_consume(topology.WORK_QUEUE, on_message)
            log.info("consuming %s with %d copy threads", topology.WORK_QUEUE, self.concurrency)
            self.consuming.set()
            measured = 0.0
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=1)
                if time.monotonic() - measured > PENDING_EVERY_S:
                    depth = channel.queue_declare(topology.WORK_QUEUE, passive=True)
                    metrics.PENDING.set(depth.method.message_count)
                    measured = time.monotonic()
            # Drain: take no more, let in-flight copies finish and be acked.
            channel.basic_cancel(tag)
            while pending:
                connection.process_data_events(time_limit=0.2)
        finally:
            self.consuming.clear()
            if connection.is_open:
                connection.close()

    def _on_message(self, connection, pool, pending, channel, method, properties, body) -> None:
        attempt = int((properties.headers or {}).get(ATTEMPT, 0))
        future = pool.submit(self.work, body, attempt)
        pending.add(future)

        def done(f: Future[Result]) -> None:
            callback = partial(self._finish, pending, channel, method, properties, body, attempt, f)
            # If the connection is gone, RabbitMQ redelivers the message: nothing to do.
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(callback)

        future.add_done_callback(done)

    def _finish(self, pending, channel, method, properties, body, attempt, future) -> None:
        pending.discard(future)
        try:
            result = future.result()
        except Exception as exc:  # a bug, not a copy failure: keep the message safe
            log.exception("copy thread crashed")
            result = Result("retry", f"worker error: {exc!r}")
        if not channel.is_open:
            return  # the delivery tag died with the channel; RabbitMQ redelivers
        headers = dict(properties.headers or {})
        headers.setdefault(FIRST_FAILURE, now())
        headers.update({ERROR: result.reason[:1000], LAST_FAILURE: now()})
        if result.action == "retry" and attempt < len(topology.RETRY_TIERS_S):
            headers[ATTEMPT] = attempt + 1
            self._republish(
                channel, topology.EXCHANGE, topology.retry_route(attempt + 1), body, headers
            )
        elif result.action != "ack":
            log.error("dead-lettered after %d delayed retries: %s", attempt, result.reason)
            metrics.DEAD_LETTERED.inc()
            self.digest.add(result.subject or "(unreadable message)", result.reason)
            self._republish(channel, topology.DLX, "", body, headers)
        channel.basic_ack(method.delivery_tag)

    @staticmethod
    def _republish(channel, exchange: str, route: str, body: bytes, headers: dict) -> None:
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            headers=headers,
        )
        channel.basic_publish(exchange, route, body, properties, mandatory=True)
