"""Shopify's toxiproxy (pinned in deploy/versions.env, built by install.sh) for slow and
stalled links: a TCP proxy on a loopback port in front of a server, whose "toxics"
(bandwidth, latency, a stall...) are set through its HTTP API while connections run.

    toxi = Toxiproxy(root).start()
    link = toxi.link("target", stack.target.port)        # 127.0.0.1:link.port -> target
    link.add("slow", "bandwidth", "upstream", rate=125)  # KB/s (1 KB = 1000 bytes)
    link.add("stall", "timeout", "downstream", timeout=0) # no data at all, never closes

Streams: "upstream" is client -> server (a PUT's body), "downstream" server -> client.
Toxics apply to open connections too. Every link and toxic dies with the server.

toxiproxy counts a connection's bytes only when it closes; to see a transfer move, put a
CountingRelay between the link and the server (client -> link -> relay -> server):

    relay = CountingRelay(stack.target.port).start()
    link = toxi.link("target", relay.port)
    relay.bytes("upstream")                              # bytes on their way, live
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

from stack import binary, free_port, wait_until


class Link:
    """One proxied route: clients use 127.0.0.1:`port` instead of the server's port."""

    def __init__(self, toxiproxy: Toxiproxy, name: str, port: int) -> None:
        self.toxiproxy = toxiproxy
        self.name = name
        self.port = port

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def add(self, name: str, kind: str, stream: str = "downstream", **attributes: int) -> None:
        """Add toxic `name` of type `kind` (bandwidth, timeout, latency, limit_data...)."""
        self.toxiproxy.api(
            "POST",
            f"/proxies/{self.name}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
             "attributes": attributes},
        )  # fmt: skip

    def remove(self, name: str) -> None:
        self.toxiproxy.api("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def bytes(self, direction: str = "upstream") -> int:
        """Bytes this link has passed on in `direction` on connections already closed
        (toxiproxy's own count)."""
        return self.toxiproxy.sent_bytes(self.name, direction)


class Toxiproxy:
    """toxiproxy-server with its API on a free loopback port and its log in root."""

    _SENT = re.compile(r"^toxiproxy_proxy_sent_bytes_total\{([^}]*)\} (\S+)$", re.MULTILINE)

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "toxiproxy.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
        return json.loads(raw) if raw.strip() else None

    def _live(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"toxiproxy-server exited:\n{self.log.read_text()[-2000:]}")
        try:  # /version answers plain text
            with urllib.request.urlopen(f"{self.url}/version", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def start(self) -> Toxiproxy:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary("toxiproxy-server"), "-host", "127.0.0.1", "-port", str(self.port),
                 "-proxy-metrics"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            wait_until(self._live, 60, f"toxiproxy-server on {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def link(self, name: str, upstream_port: int) -> Link:
        """A new route 127.0.0.1:<free port> -> 127.0.0.1:upstream_port, without toxics."""
        port = free_port()
        self.api(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{port}",
             "upstream": f"127.0.0.1:{upstream_port}", "enabled": True},
        )  # fmt: skip
        return Link(self, name, port)

    def sent_bytes(self, proxy: str, direction: str) -> int:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        total = 0.0
        for labels, value in self._SENT.findall(text):
            if f'proxy="{proxy}"' in labels and f'direction="{direction}"' in labels:
                total += float(value)
        return int(total)


class CountingRelay:
    """A plain TCP relay 127.0.0.1:`port` -> 127.0.0.1:upstream_port that counts the bytes
    it forwards in each direction as they pass ("upstream": towards the server)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts = {"upstream": 0, "downstream": 0}
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._flowing = threading.Event()  # cleared by `pause`: nothing read, nothing sent
        self._flowing.set()

    def bytes(self, direction: str = "upstream") -> int:
        with self._lock:
            return self.counts[direction]

    def pause(self) -> None:
        """Stop reading in both directions (a stall that pushes back, unlike toxiproxy's
        `timeout` toxic, which keeps reading and drops what it reads)."""
        self._flowing.clear()

    def start(self) -> CountingRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._listener.close()
        self._flowing.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for source, sink, direction in (
                (client, server, "upstream"),
                (server, client, "downstream"),
            ):
                threading.Thread(
                    target=self._pump, args=(source, sink, direction), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while self._flowing.wait() and (chunk := source.recv(65536)):
                sink.sendall(chunk)
                with self._lock:
                    self.counts[direction] += len(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
