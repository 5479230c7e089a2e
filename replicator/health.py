"""`/healthz`, `/readyz` and `/metrics` on METRICS_ADDRESS, for probes and Prometheus.

/healthz answers while the process runs (no dependency checks, so a RabbitMQ outage
never gets pods restarted); /readyz answers 200 only while `ready()` is true.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)


def serve(address: tuple[str, int], ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; returns the server (for its port)."""

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                try:
                    ok = ready()
                except Exception:  # a readiness check must answer, never kill the thread
                    log.exception("readiness check failed")
                    ok = False
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    try:
        server = ThreadingHTTPServer(address, Handler)
    except OSError as exc:
        where = "{}:{}".format(*address)
        raise SystemExit(f"METRICS_ADDRESS: cannot listen on {where}: {exc.strerror}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    log.info("health and metrics on %s:%s", *server.server_address[:2])
    return server
