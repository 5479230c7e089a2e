"""From tasks to RabbitMQ: scope filtering and confirmed publishing, shared by both modes."""

from __future__ import annotations

import logging
import random
import threading

from replicator import metrics
from replicator.broker import Publisher, PublishFailed
from replicator.config import Settings
from replicator.filters import pairs_for
from replicator.task import Task

log = logging.getLogger(__name__)


class TaskSink:
    def __init__(self, settings: Settings, *, name: str) -> None:
        self.settings = settings
        self.publisher = Publisher(settings.rabbitmq_url, name=name)

    def reachable(self) -> bool:
        """Readiness: RabbitMQ takes our connection (checked at most every few seconds)."""
        return self.publisher.reachable()

    def in_scope(self, task: Task) -> bool:
        metrics.EVENTS_RECEIVED.labels(task.origin).inc()
        return bool(pairs_for(self.settings, task.bucket, task.key))

    def publish(self, task: Task) -> None:
        """Publish and wait for the broker's confirm; raises PublishFailed."""
        self.publisher.publish(task.to_json())
        metrics.TASKS_PUBLISHED.labels(task.origin).inc()
        log.info("queued", extra={"bucket": task.bucket, "key": task.key, "origin": task.origin})

    def publish_patiently(self, task: Task, stop: threading.Event) -> bool:
        """Publish, waiting out a RabbitMQ outage (the caller stops reading meanwhile)."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.publish(task)
                return True
            except PublishFailed as exc:
                log.warning("cannot publish yet (%s); retrying in %.1fs", exc, delay)
                stop.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 15)
        return False

    def close(self) -> None:
        self.publisher.close()
