"""The dead-letter ("parking") queue: look at it, put tasks back, empty it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

from . import broker, message, topology
from .config import Settings, mask
from .filters import pairs_for
from .task import MalformedTask


class RabbitMQUnavailable(RuntimeError):
    """RabbitMQ could not be reached or refused us: one line, the URL's password masked."""


def _problem(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "login refused (check the user and password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access refused (check the vhost and the user's permissions)"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        # pika wraps the socket error (refused, timed out) in its connector's error
        inner = exc.args[0] if exc.args else None
        root = getattr(inner, "exception", inner)
        if isinstance(root, OSError):
            return f"cannot connect: {root.strerror or root}"
        return f"cannot connect: {root!r}" if root else "cannot connect"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _connection(settings: Settings) -> Iterator[pika.BlockingConnection]:
    """A connection for one tool run; any RabbitMQ failure becomes RabbitMQUnavailable."""
    connection = None
    try:
        connection = broker.connect(settings.rabbitmq_url, name="minio-s3-mirror dlq")
        yield connection
    except (pika.exceptions.AMQPError, OSError) as exc:
        where = mask(settings.rabbitmq_url, url=True)
        raise RabbitMQUnavailable(f"RabbitMQ at {where}: {mask(_problem(exc))}") from exc
    finally:
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()


@dataclass(frozen=True)
class Parked:
    tag: int
    body: bytes
    headers: dict

    def describe(self, settings: Settings) -> dict[str, object]:
        bucket = key = ""
        with contextlib.suppress(MalformedTask):
            tasks = message.parse(self.body)
            if tasks:
                bucket, key = tasks[0].bucket, tasks[0].key
        pairs = pairs_for(settings, bucket, key) if key else []
        deaths = self.headers.get("x-death") or [{}]
        return {
            "bucket": bucket,
            "key": key or self.body[:80].decode(errors="replace"),
            "pair": ", ".join(str(p) for p in pairs) or "-",
            "reason": message.text(self.headers, message.ERROR)
            or f"rejected by RabbitMQ ({deaths[0].get('reason', 'unknown')})",
            "attempts": _attempts(self.headers),
            "first_failure": message.text(self.headers, message.FIRST_FAILURE),
            "last_failure": message.text(self.headers, message.LAST_FAILURE),
        }


def _attempts(headers: dict) -> int | str:
    try:
        return message.attempt(headers) + 1
    except MalformedTask:
        return "unknown"


@contextlib.contextmanager
def browse(settings: Settings) -> Iterator[tuple[BlockingChannel, list[Parked]]]:
    """Every parked message, unacked; what the caller does not ack goes back on close."""
    with _connection(settings) as connection:
        channel = connection.channel()
        topology.declare(channel)
        channel.confirm_delivery()
        waiting = channel.queue_declare(topology.DEAD_QUEUE, passive=True).method.message_count
        parked = []
        for _ in range(waiting):
            method, properties, body = channel.basic_get(topology.DEAD_QUEUE)
            if method is None:
                break
            parked.append(Parked(method.delivery_tag, body, dict(properties.headers or {})))
        yield channel, parked


def replay(settings: Settings, keys: set[str] | None) -> int:
    """Put the chosen (or all) parked tasks back on the work queue with a fresh budget."""
    replayed = 0
    with browse(settings) as (channel, parked):
        for item in parked:
            if keys is not None and item.describe(settings)["key"] not in keys:
                continue
            first = item.headers.get(message.FIRST_FAILURE)
            properties = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                headers={message.FIRST_FAILURE: first} if first else {},
            )
            channel.basic_publish(
                topology.EXCHANGE, topology.TASKS, item.body, properties, mandatory=True
            )
            channel.basic_ack(item.tag)
            replayed += 1
    return replayed


def purge(settings: Settings) -> int:
    with _connection(settings) as connection:
        channel = connection.channel()
        topology.declare(channel)
        return channel.queue_purge(topology.DEAD_QUEUE).method.message_count


def render(rows: list[dict[str, object]], as_json: bool) -> str:
    if as_json:
        return json.dumps(rows, ensure_ascii=False, indent=2)
    if not rows:
        return "the dead-letter queue is empty"
    lines = [f"{len(rows)} dead-lettered task(s):"]
    for row in rows:
        lines.append(f"- {row['key']}  [{row['pair']}]")
        lines.append(f"    reason: {row['reason']}")
        lines.append(
            f"    attempts: {row['attempts']}, first failure: {row['first_failure'] or '-'}, "
            f"last failure: {row['last_failure'] or '-'}"
        )
    return "\n".join(lines)
