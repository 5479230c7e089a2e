"""RabbitMQ connections and the confirming publisher (pika).

RABBITMQ_URL may name several nodes of one cluster, comma-separated; a connection goes
to the first node that answers, so a process fails over when a node dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from . import metrics, topology
from .task import ORIGINS

log = logging.getLogger(__name__)

HEARTBEAT_S = 30  # RabbitMQ drops a connection after two missed heartbeats
PUMP_MAX_S = 5.0  # an idle publisher services its connection at least this often
LOCK_WAIT_S = 10.0  # /readyz answers "not ready" rather than queue behind a stuck publish


class PublishFailed(RuntimeError):
    """RabbitMQ did not take responsibility for a message (nack, unroutable, down)."""


class PublishRefused(PublishFailed):
    """RabbitMQ answered and refused the message (nack: queue full; unroutable)."""


class BrokerUnavailable(PublishFailed):
    """No working connection to RabbitMQ, even after one reconnect."""


def urls(value: str) -> list[str]:
    """The AMQP URLs in RABBITMQ_URL (one node, or several nodes separated by commas)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parameters(url: str, *, name: str, heartbeat: int | None = None) -> list[pika.URLParameters]:
    """Connection parameters for every node named in `url`, in order."""
    found = []
    for one in urls(url):
        params = pika.URLParameters(one)
        if heartbeat is not None:
            params.heartbeat = heartbeat
        elif "heartbeat" not in parse_qs(urlsplit(one).query):  # ?heartbeat=N wins
            params.heartbeat = HEARTBEAT_S
        params.blocked_connection_timeout = 60
        params.socket_timeout = 10
        params.connection_attempts = 1
        params.client_properties = {"connection_name": name}
        found.append(params)
    if not found:
        raise ValueError("RABBITMQ_URL names no AMQP URL")
    return found


def connect(url: str, *, name: str, heartbeat: int | None = None) -> BlockingConnection:
    """A connection to the first node of `url` (comma-separated URLs) that answers."""
    quiet_pika()
    return pika.BlockingConnection(parameters(url, name=name, heartbeat=heartbeat))


def quiet_pika() -> None:
    """pika logs several ERROR lines, some with a stack, for every failed connection
    attempt or lost connection; its callers here log one line per outage instead. So
    unless debug logging is on (pika at INFO), only pika's CRITICAL lines pass."""
    pika_log = logging.getLogger("pika")
    if pika_log.getEffectiveLevel() >= logging.WARNING:
        pika_log.setLevel(logging.CRITICAL)


def describe(exc: BaseException) -> str:
    """One short line for a connection failure (pika's own reprs can be long)."""
    if isinstance(exc, pika.exceptions.AMQPError):  # pika's repr holds the cause, str not
        return repr(exc)[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


class Publisher:
    """Publishes persistent, mandatory messages and waits for the broker's confirm.

    One connection of its own; a lock makes it usable from several threads (pika is
    not thread-safe). pika's BlockingConnection only does I/O when called, so a small
    pump thread services heartbeats while the publisher is idle; a connection found
    dead is replaced and the publish retried once on the fresh one. An outage is
    logged once when it starts and once when it ends.
    """

    def __init__(self, url: str, *, name: str, heartbeat: int | None = None) -> None:
        self.url = url
        self.name = name
        self.heartbeat = heartbeat
        self.lock = threading.Lock()
        self.connection: BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.down_since: float | None = None  # monotonic time an outage started
        self.closed = threading.Event()

    # -- connection ----------------------------------------------------------------

    def _open(self) -> BlockingChannel:
        """The open channel, connecting first if needed (call with the lock held)."""
        if (
            self.channel is not None
            and self.channel.is_open
            and self.connection is not None
            and self.connection.is_open
        ):
            return self.channel
        self._drop()
        connection = connect(self.url, name=self.name, heartbeat=self.heartbeat)
        try:
            channel = connection.channel()
            topology.declare(channel)
            channel.confirm_delivery()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        self.connection, self.channel = connection, channel
        self.closed.clear()
        if self.down_since is not None:
            log.info(
                "RabbitMQ reachable again after %.1fs (%s)",
                time.monotonic() - self.down_since,
                self.name,
            )
            self.down_since = None
        threading.Thread(
            target=self._pump, args=(connection,), daemon=True, name="rabbitmq-heartbeats"
        ).start()
        return channel

    def _pump(self, connection: BlockingConnection) -> None:
        """Service heartbeats and notice a dead connection while nobody publishes."""
        beat = parameters(self.url, name=self.name, heartbeat=self.heartbeat)[0].heartbeat
        beat = beat if isinstance(beat, int) else HEARTBEAT_S
        interval = max(min(PUMP_MAX_S, beat / 4), 0.1) if beat else PUMP_MAX_S
        while not self.closed.wait(interval):
            with self.lock:
                if self.connection is not connection:
                    return  # replaced or closed: its successor has its own pump
                try:
                    connection.process_data_events(0)
                except Exception as exc:  # any failure means: the connection is gone
                    self._lost(exc)
                    self._drop()
                    return

    def _lost(self, exc: BaseException) -> None:
        """Log the start of an outage once; later failures in it stay at debug."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "RabbitMQ unavailable (%s): %s; reconnecting on demand", self.name, describe(exc)
            )
        else:
            log.debug("RabbitMQ still unavailable (%s): %s", self.name, describe(exc))

    def _drop(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    # -- API -----------------------------------------------------------------------

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str = topology.TASKS,
        exchange: str = topology.EXCHANGE,
        headers: Mapping[str, object] | None = None,
        origin: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Publish and wait for the confirm; PublishRefused or BrokerUnavailable else.

        A task for the work queue counts in tasks_published_total under its origin
        (given, or read from the task body).
        """
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type=content_type,
            headers=dict(headers or {}),
        )
        with self.lock:
            for attempt in (1, 2):
                try:
                    self._open().basic_publish(
                        exchange, routing_key, body, properties, mandatory=True
                    )
                    break
                except pika.exceptions.UnroutableError as exc:
                    raise PublishRefused(f"RabbitMQ refused the message: {exc!r}") from exc
                except pika.exceptions.NackError as exc:
                    # A channel opened while a quorum queue had no leader (a node just
                    # died) may nack every later publish: the next one gets a fresh one.
                    self._drop()
                    raise PublishRefused(f"RabbitMQ refused the message: {exc!r}") from exc
                except (pika.exceptions.AMQPError, OSError) as exc:
                    # A dead connection (idle too long, node restarted, failed over):
                    # retry once on a fresh one; a duplicate is harmless (idempotent copy).
                    self._drop()
                    if attempt == 2 or self.down_since is not None:
                        self._lost(exc)
                        raise BrokerUnavailable(f"RabbitMQ unavailable: {describe(exc)}") from exc
                    log.debug("RabbitMQ connection failed a publish (%s); retrying once", exc)
        if exchange == topology.EXCHANGE and routing_key == topology.TASKS:
            metrics.TASKS_PUBLISHED.labels(origin or _origin(body)).inc()

    def reachable(self) -> bool:
        """A real round-trip to RabbitMQ (for /readyz): connect if needed, then ask."""
        if not self.lock.acquire(timeout=LOCK_WAIT_S):
            return False  # a publish has been stuck that long (blocked connection)
        try:
            self._open().queue_declare(topology.WORK_QUEUE, passive=True)
            return True
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._lost(exc)
            self._drop()
            return False
        finally:
            self.lock.release()

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            self._drop()


def _origin(body: bytes) -> str:
    """The origin field of a task body, as a bounded metric label."""
    try:
        origin = json.loads(body).get("origin")
    except (ValueError, AttributeError, RecursionError):
        return "other"
    return origin if origin in ORIGINS else "other"
