"""Webhook mode: an HTTP endpoint for MinIO's webhook notification target.

2xx only after RabbitMQ confirmed every record of the request, so MinIO (which keeps
undelivered events in its queue_dir and retries) gives at-least-once end to end.
"""

from __future__ import annotations

import hmac
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from replicator import health
from replicator.broker import PublishFailed
from replicator.config import Settings
from replicator.events import tasks_from_body
from replicator.task import MalformedTask

from .publish import TaskSink

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # MinIO sends one event per request (about 1-2 KiB)


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: Settings, sink: TaskSink) -> None:
        if not settings.webhook_token:
            raise ValueError("WEBHOOK_AUTH_TOKEN is required in webhook mode")
        self.token = f"Bearer {settings.webhook_token}".encode()
        self.sink = sink
        super().__init__(settings.webhook_address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"  # MinIO keeps its connection open between events
    disable_nagle_algorithm = True  # else each reply waits ~40 ms for a delayed ACK

    def _reply(self, status: int, message: str) -> None:
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, self.server.token)

    def do_HEAD(self) -> None:  # MinIO probes the endpoint before it sends
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not self._authorized():
            self.close_connection = True
            return self._reply(401, "missing or wrong bearer token")
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return self._reply(413, f"body must be at most {MAX_BODY} bytes")
        body = self.rfile.read(length)
        try:
            tasks = tasks_from_body(body, origin="webhook")
        except MalformedTask as exc:
            return self._reply(400, f"bad event: {exc}")
        try:
            for task in tasks:
                if self.server.sink.in_scope(task):
                    self.server.sink.publish(task)
        except PublishFailed as exc:
            log.warning("RabbitMQ did not confirm; MinIO will redeliver: %s", exc)
            return self._reply(503, "queue unavailable, retry later")
        self._reply(200, "queued")

    def log_message(self, format: str, *args: object) -> None:
        log.debug("webhook %s %s", self.address_string(), format % args)


def serve(settings: Settings, stop: threading.Event) -> None:
    sink = TaskSink(settings, name="minio-s3-mirror listener (webhook)")
    health.serve(settings.metrics_address, sink.reachable)
    server = WebhookServer(settings, sink)
    host, port = server.server_address[:2]
    log.info("webhook listening on %s:%s", host, port)
    threading.Thread(target=lambda: (stop.wait(), server.shutdown()), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        sink.close()
