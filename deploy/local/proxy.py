"""A forward HTTP proxy on loopback that logs every request: what HTTP(S)_PROXY points at.

Plain `http://` requests arrive in absolute form (`GET http://host:port/path HTTP/1.1`)
and are forwarded one by one on kept-alive connections, each logged with its method, host
and path; `https://` goes through `CONNECT host:port` tunnels, each logged once (what is
inside is TLS).

Why not Debian's tinyproxy: a real proxy resolves names with the system resolver, so a
client that bypasses it reaches the server anyway and nothing shows it. This one resolves
through its own `hosts` map (name -> loopback port): endpoints addressed by a name that
only the proxy knows (e.g. `mirror-src.test`) are reachable through the proxy and nowhere
else, so a request that skips the proxy fails instead of going unseen. Names are also what
the clients need: Go (mc) never proxies `localhost` or a loopback address, whatever
NO_PROXY says; Python's urllib does unless NO_PROXY names them.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from dataclasses import dataclass
from pathlib import Path

_HOP_HEADERS = {"proxy-connection", "proxy-authorization", "keep-alive"}


@dataclass(frozen=True)
class Seen:
    """One request through the proxy: CONNECT (a tunnel) or an HTTP method."""

    method: str
    authority: str  # host:port as the client named it
    path: str  # "" for CONNECT

    @property
    def host(self) -> str:
        return self.authority.rpartition(":")[0] or self.authority


class _Closed(Exception):
    pass


def _read_head(file) -> tuple[str, list[tuple[str, str]]]:
    line = file.readline(65537)
    while line in (b"\r\n", b"\n"):  # tolerated between kept-alive requests
        line = file.readline(65537)
    if not line:
        raise _Closed
    headers = []
    while True:
        raw = file.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def _get(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def _relay_body(source, sink, headers: list[tuple[str, str]], *, until_close: bool) -> None:
    """Copy one message body with its framing: chunked, Content-Length, or (an answer
    without either) everything until the server closes."""
    if "chunked" in _get(headers, "transfer-encoding").lower():
        while True:
            size_line = source.readline(65537)
            sink.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = source.readline(65537)
                    sink.sendall(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            _copy(source, sink, size + 2)
        return
    length = _get(headers, "content-length")
    if length:
        _copy(source, sink, int(length))
    elif until_close:
        while chunk := source.read1(65536):
            sink.sendall(chunk)


def _copy(source, sink, size: int) -> None:
    while size > 0:
        chunk = source.read1(min(size, 65536))
        if not chunk:
            raise _Closed
        sink.sendall(chunk)
        size -= len(chunk)


class ForwardProxy:
    """The proxy on 127.0.0.1:`port`; `url` is the value for HTTP(S)_PROXY.

    `hosts` maps a name the clients use to the loopback port it stands for; names not in
    it are resolved as usual. `seen()` lists every request so far (also in `log`).
    """

    def __init__(self, root: Path, hosts: dict[str, int] | None = None) -> None:
        self.hosts = dict(hosts or {})
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "proxy.log"
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, host: str | None = None) -> list[Seen]:
        """Every request so far (CONNECT tunnels included), or those to `host`."""
        with self._lock:
            return [s for s in self._seen if host in (None, s.host)]

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)
            with open(self.log, "a") as out:
                out.write(f"{seen.method} {seen.authority} {seen.path}\n")

    def _connect(self, authority: str) -> socket.socket:
        host, _, port = authority.rpartition(":")
        host = host.strip("[]")
        if host in self.hosts:
            return socket.create_connection(("127.0.0.1", self.hosts[host]), timeout=120)
        return socket.create_connection((host, int(port or 80)), timeout=120)

    def _serve(self, client: socket.socket, rfile) -> None:
        upstreams: dict[str, tuple[socket.socket, object]] = {}
        try:
            while True:
                try:
                    line, headers = _read_head(rfile)
                except (_Closed, OSError):
                    return
                method, target, version = [*line.split(" ", 2), "", ""][:3]
                if method == "CONNECT":
                    self._record(Seen("CONNECT", target, ""))
                    self._tunnel(client, rfile, target)
                    return
                if not target.startswith("http://"):
                    client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                authority, _, path = target.removeprefix("http://").partition("/")
                if ":" not in authority:
                    authority += ":80"
                self._record(Seen(method, authority, "/" + path))
                if authority not in upstreams:
                    sock = self._connect(authority)
                    upstreams[authority] = (sock, sock.makefile("rb"))
                sock, upfile = upstreams[authority]
                if not self._exchange(client, rfile, sock, upfile, method, path, version, headers):
                    return
        except (OSError, _Closed, ValueError):
            return
        finally:
            for sock, upfile in upstreams.values():
                upfile.close()  # type: ignore[attr-defined]
                sock.close()

    def _exchange(self, client, rfile, sock, upfile, method, path, version, headers) -> bool:
        """One request and its answer; False when either side closes after it."""
        out = [f"{method} /{path} {version}"]
        out += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_HEADERS]
        sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        body_sent = "100-continue" not in _get(headers, "expect").lower()
        if body_sent:
            _relay_body(rfile, sock, headers, until_close=False)
        while True:
            status_line, answer = _read_head(upfile)
            status = int(status_line.split(" ", 2)[1])
            client.sendall(
                (
                    status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in answer) + "\r\n"
                ).encode("latin-1")
            )
            if status == 100 and not body_sent:
                _relay_body(rfile, sock, headers, until_close=False)
                body_sent = True
            if status >= 200:
                break
        framed = bool(_get(answer, "content-length")) or "chunked" in _get(
            answer, "transfer-encoding"
        )
        bodiless = method == "HEAD" or status in (204, 304)
        if not bodiless:
            _relay_body(upfile, client, answer, until_close=not framed)
        closing = "close" in (_get(answer, "connection") + _get(headers, "connection")).lower()
        return body_sent and (bodiless or framed) and not closing

    def _tunnel(self, client: socket.socket, rfile, authority: str) -> None:
        try:
            upstream = self._connect(authority)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        upstream.settimeout(None)
        client.settimeout(None)

        def pump(source, sink) -> None:
            try:
                while (
                    chunk := source.read1(65536) if hasattr(source, "read1") else source.recv(65536)
                ):
                    sink.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(rfile, upstream)  # whatever the client sent after CONNECT is already buffered
        back.join()
        upstream.close()
