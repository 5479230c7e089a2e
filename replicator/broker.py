"""RabbitMQ connections and the confirming publisher (pika)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from . import topology


class PublishFailed(RuntimeError):
    """RabbitMQ did not take responsibility for a message (nack, unroutable, down)."""


def connect(url: str, *, name: str) -> BlockingConnection:
    params = pika.URLParameters(url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 60
    params.socket_timeout = 10
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


class Publisher:
    """Publishes persistent, mandatory messages and waits for the broker's confirm.

    One connection of its own; a lock makes it usable from several threads (pika is
    not thread-safe). Reconnects on the next publish after a failure.
    """

    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self.name = name
        self.lock = threading.Lock()
        self.connection: BlockingConnection | None = None
        self.channel: BlockingChannel | None = None

    def _open(self) -> BlockingChannel:
        if self.channel is None or not self.channel.is_open:
            self.close()
            self.connection = connect(self.url, name=self.name)
            self.channel = self.connection.channel()
            topology.declare(self.channel)
            self.channel.confirm_delivery()
        return self.channel

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str = topology.TASKS,
        exchange: str = topology.EXCHANGE,
        headers: Mapping[str, object] | None = None,
    ) -> None:
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            headers=dict(headers or {}),
        )
        with self.lock:
            try:
                self._open().basic_publish(exchange, routing_key, body, properties, mandatory=True)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                raise PublishFailed(f"RabbitMQ refused the message: {exc}") from exc
            except pika.exceptions.AMQPError as exc:
                self.close()
                raise PublishFailed(f"RabbitMQ unavailable: {exc!r}") from exc

    def reachable(self) -> bool:
        with self.lock:
            try:
                self._open()
            except pika.exceptions.AMQPError:
                self.close()
                return False
            return True

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
