"""Webhook mode: an HTTP endpoint for MinIO's webhook notification target.

2xx only after RabbitMQ confirmed every record of the request, so MinIO (which keeps
undelivered events in its queue_dir and retries) gives at-least-once end to end.

MinIO's queue_dir retries any non-2xx answer forever, so an event that can never become
a task (not JSON, no Records, an empty or NUL or over-long key, a negative size...) is
not answered 4xx: its raw body is parked in the dead-letter queue with the reason and
answered 200. Nothing is lost (`dlq list` shows it) and nothing is retried forever. Only
a request that is not MinIO's at all (no or wrong token: 401, too large: 413) gets 4xx.

Every connection has a read timeout and their number is capped (beyond it: 503), so
half-sent requests cannot pile up threads; no exception escapes a handler.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import queue
import selectors
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from replicator import health
from replicator.broker import PublishFailed, PublishRefused, describe
from replicator.config import Settings
from replicator.events import read_body

from .publish import TaskSink

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # MinIO sends one event per request (about 1-2 KiB)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 35\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    b"too many connections, retry later\r\n"
)
TURNED_AWAY_LOG_EVERY_S = 10
DRAIN_S = 0.5  # a turned-away client has this long to finish sending its request


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, settings: Settings, sink: TaskSink) -> None:
        if not settings.webhook_token:
            raise ValueError("WEBHOOK_AUTH_TOKEN is required in webhook mode")
        self.token = f"Bearer {settings.webhook_token}".encode()
        self.sink = sink
        self.read_timeout = settings.webhook_read_timeout
        self.max_connections = settings.webhook_max_connections
        self.slots = threading.BoundedSemaphore(self.max_connections)
        self.turned_away = 0
        self.turned_away_logged = 0.0
        self.rejected: queue.Queue[socket.socket | None] = queue.Queue(maxsize=256)
        self.rejecter: threading.Thread | None = None
        super().__init__(settings.webhook_address, Handler)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self.slots.acquire(blocking=False):
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)  # a thread per connection
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _turn_away(self, request: socket.socket) -> None:
        """503, from the accepting thread without blocking it; one thread then reads what
        the client still sends (so it gets the answer, not a reset) and closes."""
        try:
            request.settimeout(0.1)
            request.sendall(BUSY)
            request.shutdown(socket.SHUT_WR)
            self.rejected.put_nowait(request)
        except (OSError, queue.Full):
            self.shutdown_request(request)
        if self.rejecter is None:
            self.rejecter = threading.Thread(target=self._drain, daemon=True, name="webhook-503")
            self.rejecter.start()
        self.turned_away += 1
        now = time.monotonic()
        if now - self.turned_away_logged > TURNED_AWAY_LOG_EVERY_S:
            self.turned_away_logged = now
            log.warning(
                "webhook: %d connection(s) answered 503: already %d open (WEBHOOK_MAX_CONNECTIONS)",
                self.turned_away,
                self.max_connections,
            )
            self.turned_away = 0

    def _drain(self) -> None:
        """Read (and drop) what turned-away clients still send, all at once, each for at
        most DRAIN_S, then close them."""
        selector = selectors.DefaultSelector()
        deadlines: dict[socket.socket, float] = {}
        running = True
        while running or deadlines:
            try:
                while running:  # take every newly turned-away socket
                    request = self.rejected.get(block=not deadlines, timeout=None)
                    if request is None:
                        running = False
                        break
                    request.setblocking(False)
                    selector.register(request, selectors.EVENT_READ)
                    deadlines[request] = time.monotonic() + DRAIN_S
            except queue.Empty:
                pass
            for key, _ in selector.select(timeout=0.05):
                request = key.fileobj
                try:
                    more = request.recv(65536)
                except OSError:
                    more = b""
                if not more:
                    deadlines[request] = 0
            now = time.monotonic()
            for request in [r for r, at in deadlines.items() if at <= now or not running]:
                del deadlines[request]
                selector.unregister(request)
                with contextlib.suppress(OSError):
                    request.close()
        selector.close()

    def server_close(self) -> None:
        super().server_close()
        if self.rejecter is not None:
            self.rejected.put(None)

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A connection that failed outside a request (reset, timeout): one line."""
        exc = sys.exc_info()[1]
        log.info("webhook connection from %s ended: %s", client_address[0], describe(exc))


class Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"  # MinIO keeps its connection open between events
    disable_nagle_algorithm = True  # else each reply waits ~40 ms for a delayed ACK

    def setup(self) -> None:
        # Applied to the socket by StreamRequestHandler.setup: a client that goes quiet
        # mid-request (or idles longer between requests) is disconnected.
        self.timeout = self.server.read_timeout
        super().setup()

    def _reply(self, status: int, message: str) -> None:
        data = (message + "\n").encode()
        self.answered = True
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
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
        self.answered = False
        try:
            self._post()
        except (TimeoutError, ConnectionError) as exc:  # the client went quiet or away
            self.close_connection = True
            log.debug("webhook client %s: %s", self.address_string(), describe(exc))
        except Exception:
            self.close_connection = True
            log.exception("webhook handler failed; answered 500")
            if not self.answered:
                with contextlib.suppress(Exception):  # the connection is closed anyway
                    self._reply(500, "internal error")

    def _post(self) -> None:
        if not self._authorized():
            self.close_connection = True
            return self._reply(401, "missing or wrong bearer token")
        given = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or given is None:
            self.close_connection = True
            return self._reply(411, "a Content-Length is required")
        if not given.strip().isdigit():
            self.close_connection = True
            return self._reply(400, "bad Content-Length")
        length = int(given)
        if length > MAX_BODY:
            self.close_connection = True
            return self._reply(413, f"body must be at most {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if len(body) < length:  # the client closed mid-body: nothing to answer
            self.close_connection = True
            return None
        tasks, problems = read_body(body, origin="webhook")
        sink = self.server.sink
        try:
            for task in tasks:
                if sink.in_scope(task):
                    sink.publish(task)
            if problems:
                sink.park(body, "; ".join(problems), origin="webhook")
        except PublishFailed as exc:
            # The publisher logs an outage once; a refusal (queue full) is worth a line.
            level = logging.WARNING if isinstance(exc, PublishRefused) else logging.DEBUG
            log.log(level, "RabbitMQ did not confirm; answered 503: %s", exc)
            return self._reply(503, "queue unavailable, retry later")
        if problems:
            return self._reply(200, "unreadable event parked in the dead-letter queue")
        return self._reply(200, "queued")

    def log_message(self, format: str, *args: object) -> None:
        log.debug("webhook %s %s", self.address_string(), format % args)


def serve(settings: Settings, stop: threading.Event) -> None:
    sink = TaskSink(settings, name="minio-s3-mirror listener (webhook)")
    health.serve(settings.metrics_address, sink.reachable)
    try:
        server = WebhookServer(settings, sink)
    except OSError as exc:
        where = "{}:{}".format(*settings.webhook_address)
        raise SystemExit(f"WEBHOOK_ADDRESS: cannot listen on {where}: {exc.strerror}") from exc
    host, port = server.server_address[:2]
    log.info("webhook listening on %s:%s", host, port)
    threading.Thread(target=lambda: (stop.wait(), server.shutdown()), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        sink.close()
