"""From tasks to RabbitMQ: scope filtering, confirmed publishing and parking of events
that cannot become tasks, shared by both modes."""

from __future__ import annotations

import logging
import random
import threading

from replicator import message, metrics, topology
from replicator.broker import Publisher, PublishFailed, PublishRefused
from replicator.config import Settings
from replicator.filters import pairs_for
from replicator.task import Task

log = logging.getLogger(__name__)


class TaskSink:
    def __init__(self, settings: Settings, *, name: str) -> None:
        self.settings = settings
        self.publisher = Publisher(settings.rabbitmq_url, name=name)

    def reachable(self) -> bool:
        """Readiness: a round-trip to RabbitMQ on the publisher's connection."""
        return self.publisher.reachable()

    def in_scope(self, task: Task) -> bool:
        metrics.EVENTS_RECEIVED.labels(task.origin).inc()
        if task.removal and not self.settings.delete:
            return False  # deletes are off: a removal is not work
        return bool(pairs_for(self.settings, task.bucket, task.key))

    def publish(self, task: Task) -> None:
        """Publish and wait for the broker's confirm; raises PublishFailed.

        The publisher counts it in tasks_published_total.
        """
        self.publisher.publish(task.to_json(), origin=task.origin)
        log.info("queued", extra={"bucket": task.bucket, "key": task.key, "origin": task.origin})

    def park(self, body: bytes, reason: str, *, origin: str) -> None:
        """Put an event that cannot become a task in the dead-letter queue, with the reason.

        Confirmed like a task; raises PublishFailed. `minio-s3-mirror dlq list` shows it.
        """
        now = message.now()
        self.publisher.publish(
            body,
            exchange=topology.DLX,
            routing_key=origin,
            headers={
                message.ERROR: f"{origin} event rejected: {reason}"[:1000],
                message.FIRST_FAILURE: now,
                message.LAST_FAILURE: now,
            },
            content_type="application/octet-stream",
        )
        metrics.DEAD_LETTERED.inc()
        log.warning("parked an unreadable %s event in the dead-letter queue: %s", origin, reason)

    def publish_patiently(self, task: Task, stop: threading.Event) -> bool:
        """Publish, waiting out a RabbitMQ outage (the caller stops reading meanwhile).

        The publisher logs the outage once; the retries here stay at debug level.
        """
        delay = 0.5
        while not stop.is_set():
            try:
                self.publish(task)
                return True
            except PublishRefused as exc:  # e.g. the work queue is full: wait for it to drain
                log.warning("RabbitMQ refused a task (%s); retrying in %.1fs", exc, delay)
            except PublishFailed as exc:
                log.debug("cannot publish yet (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 15)
        return False

    def close(self) -> None:
        self.publisher.close()
