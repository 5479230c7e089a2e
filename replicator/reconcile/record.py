"""Where a reconcile run leaves its result for the operator's tools.

- RabbitMQ: one small message per pair on `minio-s3-mirror.reconcile` (a classic queue
  holding the last RESULTS_KEPT), which `minio-s3-mirror status` reads;
- a Prometheus Pushgateway (MIRROR_PUSHGATEWAY_URL): the per-pair gauges of
  `metrics.reconcile_registry`, which the dashboard and the alerts read.

Both are best effort: a run's exit code and its Slack report never depend on them. Dry
runs are not recorded (they copy nothing, so they say nothing of the target's state).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings, mask
from .result import PairResult, RunResult

log = logging.getLogger(__name__)

RESULTS_QUEUE = "minio-s3-mirror.reconcile"
RESULTS_KEPT = 512  # messages; the oldest are dropped first
PUSH_JOB = "minio-s3-mirror-reconcile"
DEFAULT_RABBITMQ_URL = Settings.__dataclass_fields__["rabbitmq_url"].default


def declare(channel: Any) -> None:
    channel.queue_declare(RESULTS_QUEUE, durable=True, arguments={"x-max-length": RESULTS_KEPT})


def pair_record(pair: PairResult, finished_at: float) -> dict[str, object]:
    """What is kept of one pair's run: counts and the first failure, no key lists."""
    first = pair.problems.items[0] if pair.problems.items else None
    return {
        "v": 1,
        "pair": pair.pair,
        "ok": pair.ok,
        "finished_at": round(finished_at, 3),
        "duration_s": round(pair.duration_s, 3),
        "copied": pair.copied,
        "bytes": pair.bytes,
        "failures": pair.problems.count,
        "deleted": pair.deleted,
        "first_failure": f"{first.cause.title}: {first.text}"[:300] if first else "",
    }


def save(settings: Settings, run: RunResult, now: float | None = None) -> None:
    """Record a finished run where the operator's tools look (best effort, logged)."""
    if run.dry_run:
        return
    finished_at = time.time() if now is None else now
    records = [pair_record(p, finished_at) for p in run.pairs]
    _publish(settings, records)
    if settings.pushgateway_url:
        _push(settings.pushgateway_url, run, finished_at)


def _publish(settings: Settings, records: list[dict[str, object]]) -> None:
    if settings.rabbitmq_url == DEFAULT_RABBITMQ_URL and not _listening(DEFAULT_RABBITMQ_URL):
        # Without RABBITMQ_URL (the nightly job alone) there is usually nothing to record
        # to: said without loading the AMQP client.
        log.debug("reconcile result not recorded: RABBITMQ_URL is unset, none on localhost")
        return
    import pika  # loaded only for a RabbitMQ to record to

    from .. import broker

    try:
        connection = broker.connect(settings.rabbitmq_url, name="minio-s3-mirror reconcile")
    except (pika.exceptions.AMQPError, OSError) as exc:
        # Without RABBITMQ_URL (the nightly job alone) there is nothing to record to.
        quiet = settings.rabbitmq_url == DEFAULT_RABBITMQ_URL
        (log.debug if quiet else log.warning)(
            "reconcile result not recorded in RabbitMQ: %s", mask(broker.describe(exc))
        )
        return
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        declare(channel)
        for record in records:
            channel.basic_publish(
                "",
                RESULTS_QUEUE,
                json.dumps(record).encode(),
                pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                ),
            )
    except (pika.exceptions.AMQPError, OSError) as exc:
        log.warning("reconcile result not recorded in RabbitMQ: %s", broker.describe(exc))
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


def _listening(url: str) -> bool:
    """Whether anything accepts a TCP connection at the URL's host and port."""
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=1),
    ):
        return True
    return False


def _push(url: str, run: RunResult, finished_at: float) -> None:
    from prometheus_client import push_to_gateway

    from .. import metrics

    registry, gauges = metrics.reconcile_registry()
    for pair in run.pairs:
        gauges["success"].labels(pair.pair).set(1 if pair.ok else 0)
        gauges["finished"].labels(pair.pair).set(finished_at)
        gauges["copied"].labels(pair.pair).set(pair.copied)
        gauges["bytes"].labels(pair.pair).set(pair.bytes)
        gauges["failures"].labels(pair.pair).set(pair.problems.count)
        gauges["duration"].labels(pair.pair).set(pair.duration_s)
    try:
        push_to_gateway(url.rstrip("/"), job=PUSH_JOB, registry=registry, timeout=10)
    except Exception as exc:  # urllib's errors, a refused connection, a 4xx/5xx
        log.warning("reconcile result not pushed to %s: %s", mask(url, url=True), exc)


def latest(channel: Any) -> dict[str, dict[str, object]]:
    """pair -> its most recent record, read without taking anything off the queue."""
    declare(channel)
    waiting = channel.queue_declare(RESULTS_QUEUE, passive=True).method.message_count
    found: dict[str, dict[str, object]] = {}
    for _ in range(waiting):
        method, _, body = channel.basic_get(RESULTS_QUEUE)
        if method is None:
            break
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            record = json.loads(body)
            pair = str(record["pair"])
            if record.get("finished_at", 0) >= found.get(pair, {}).get("finished_at", 0):
                found[pair] = record
    return found  # unacked: closing the channel puts them back, in order
