"""Shopify's toxiproxy (pinned in deploy/versions.env, built by install.sh) for slow and
stalled links: a TCP proxy on a loopback port in front of a server, whose "toxics"
(bandwidth, latency, a stall...) are set through its HTTP API while connections run.

    toxi = Toxiproxy(root).start()
    link = toxi.link("target", stack.target.port)        # 127.0.0.1:link.port -> target
    link.add("slow", "bandwidth", "upstream", rate=125)  # KB/s (1 KB = 1000 bytes)
    link.add("stall", "timeout", "downstream", timeout=0) # no data at all, never closes
    link.bytes("upstream")                               # bytes through it so far

Streams: "upstream" is client -> server (a PUT's body), "downstream" server -> client.
Toxics apply to open connections too. Every link and toxic dies with the server.
"""

from __future__ import annotations

import json
import re
import subprocess
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
        """Bytes this link has passed on in `direction` so far (toxiproxy's own count)."""
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
        try:
            self.api("GET", "/version")
            return True
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
        wait_until(self._live, 60, f"toxiproxy-server on {self.url}")
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
