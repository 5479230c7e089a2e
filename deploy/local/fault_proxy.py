"""A fault-injecting HTTP reverse proxy for the test stack (in front of a MinIO server).

Clients point their endpoint at the proxy and sign for the proxy's host:port; the proxy
forwards each request as it came (method, path with query, every header in order
including Host and Authorization, the body bytes) to the upstream server, which checks
the signature against the same Host header. Responses are relayed the same way.

A rule table, matched by substring of the object key (optionally for some methods only;
a listing rule by substring of a bucket request's query string, e.g.
"continuation-token" for a listing's later pages), replaces the upstream's answer with a
fault:

- ``bare500``:  500 with an HTML page and no S3 error code (a load balancer's error page)
- ``reset``:    the connection is closed abruptly (TCP RST via SO_LINGER 0)
- ``slowdown``: 503 with S3's ``<Error><Code>SlowDown</Code>...`` XML
- ``stall``:    held (no answer) until the proxy stops or ``STALL_S`` pass, then forwarded

Hostile answers (for a proxy in front of the *source*): the request is forwarded, the
upstream's answer read whole, and then written back broken on the raw socket. They apply
to 2xx answers only (an error answer is relayed faithfully), and each says what it does to
GET; a HEAD gets the same header block without a body:

- ``short``:       the real header block (its Content-Length) with the first half of the
                   body, then a clean close (FIN). HEAD: relayed unchanged.
- ``no_length``:   an ``HTTP/1.0`` status line, no Content-Length, ``Connection: close``,
                   the first half of the body, a clean close (a close-delimited body cut
                   short). HEAD: the header block without Content-Length, then a close.
- ``bad_chunks``:  ``Transfer-Encoding: chunked`` instead of Content-Length, the first half
                   of the body as one well-formed chunk, then a clean close with no
                   last-chunk. HEAD: chunked, no Content-Length (kept alive).
- ``two_lengths``: two Content-Length headers, the real one then one 10 bytes smaller
                   (``CONFLICTING_SHORTFALL``), the whole body, then a clean close.
- ``extra_bytes``: the real answer exactly, followed on the kept-alive connection by a
                   forged, self-consistent second answer (200, ``FORGED_BODY`` with its MD5
                   as ETag, forged ``x-amz-meta-mirror-source-*`` and ``FORGED_META``
                   metadata) that the client never asked for.
- ``flip_bit``:    the real answer with one bit of the body flipped (``FLIPPED_BIT`` of the
                   byte at len // 2): same length, same headers, ETag included.
- ``drip``:        the real answer, its header block dripped one byte every ``drip_s``
                   seconds (1 s: each read gets a byte long before a 3 s read timeout, the
                   block as a whole would take minutes), then the body at once.
- ``endless_1xx``: ``HTTP/1.1 100 Continue`` interim answers, one every ``drip_s`` seconds,
                   forever (no final answer; the request is not forwarded).

``drip`` and ``endless_1xx`` end when the client hangs up (or the proxy stops); how long
each was held before the client gave up is recorded (``held``).

Every request is counted by (key, method). Request bodies are read whole before
forwarding (test objects are small), so a stale upstream connection can be retried.
If the upstream cannot be reached at all, the client's connection is reset too, as if
the endpoint were down.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

HOSTILE = (
    "short",
    "no_length",
    "bad_chunks",
    "two_lengths",
    "extra_bytes",
    "flip_bit",
    "drip",
    "endless_1xx",
)
ACTIONS = ("bare500", "reset", "slowdown", "stall", *HOSTILE)
STALL_S = 120
DRIP_S = 1.0  # seconds between dripped bytes / interim answers (FaultProxy.drip_s)
CONFLICTING_SHORTFALL = 10  # two_lengths: the second Content-Length is this much smaller
FLIPPED_BIT = 0x01
FORGED_BODY = b"FORGED by the hostile source: never asked for, never to be copied\n"
FORGED_META = {"forged": "yes"}  # user metadata of the forged answer (beside mirror-source-*)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BARE_500 = (
    b"<html><head><title>500 Internal Server Error</title></head>\r\n"
    b"<body><center><h1>500 Internal Server Error</h1></center></body></html>\r\n"
)
HOP_BY_HOP = frozenset({"transfer-encoding"})  # re-framed by the proxy on the way back


@dataclass(frozen=True)
class Rule:
    substring: str  # matched against the decoded object key (a listing rule: the query)
    action: str  # one of ACTIONS
    methods: frozenset[str] | None = None  # None: every method
    listing: bool = False  # matches requests without a key (listings), by query

    def matches(self, key: str, method: str, query: str = "") -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.listing:
            return not key and self.substring in query
        return bool(key) and self.substring in key


def split_path(path: str) -> tuple[str, str]:
    """(bucket, key) of a path-style S3 request path, both decoded."""
    parts = urlsplit(path).path.lstrip("/").split("/", 1)
    bucket = unquote(parts[0])
    key = unquote(parts[1]) if len(parts) > 1 else ""
    return bucket, key


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive clients must not hold stop() up
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # A client or upstream that went away mid-request is part of the game here.
        log.debug("fault proxy: request from %s failed", client_address, exc_info=True)


class FaultProxy:
    """A threaded reverse proxy on a loopback port with a fault rule table."""

    def __init__(self, upstream_url: str, *, port: int = 0) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname or not upstream.port:
            raise ValueError(f"upstream {upstream_url!r} is not http://host:port")
        self.upstream = (upstream.hostname, upstream.port)
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.requests: Counter[tuple[str, str]] = Counter()  # (key, method) -> count
        self.faults: Counter[tuple[str, str, str]] = Counter()  # (key, method, action)
        self.held: dict[str, list[float]] = {}  # key -> seconds each drip/1xx answer lasted
        self.drip_s = DRIP_S
        self.released = threading.Event()  # set on stop: stalled requests go on
        self.server = _Server(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="fault-proxy", daemon=True
        )

    # ---- control ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def add_rule(
        self, substring: str, action: str, methods: str | None = None, *, listing: bool = False
    ) -> None:
        """Answer requests for keys containing `substring` with a fault.

        `methods` is e.g. "PUT" or "PUT,POST"; None means every method. The first
        matching rule wins.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r} (expected one of {', '.join(ACTIONS)})")
        allowed = (
            None if methods is None else frozenset(m.strip().upper() for m in methods.split(","))
        )
        with self.lock:
            self.rules.append(Rule(substring, action, allowed, listing))

    def clear(self) -> None:
        """Drop every rule and reset the counters."""
        with self.lock:
            self.rules.clear()
            self.requests.clear()
            self.faults.clear()
            self.held.clear()

    def count(self, key: str, method: str | None = None) -> int:
        """Requests seen for exactly this key (any method, or one)."""
        with self.lock:
            return sum(n for (k, m), n in self.requests.items() if k == key and method in (None, m))

    def fault_count(self, key: str, action: str | None = None) -> int:
        with self.lock:
            return sum(
                n for (k, _, a), n in self.faults.items() if k == key and action in (None, a)
            )

    def hold_times(self, key: str) -> list[float]:
        """Seconds each ``drip``/``endless_1xx`` answer for this key lasted before the
        client hung up (or the proxy stopped), in the order they ended."""
        with self.lock:
            return list(self.held.get(key, ()))

    def _held(self, key: str, seconds: float) -> None:
        with self.lock:
            self.held.setdefault(key, []).append(seconds)

    def _decide(self, key: str, method: str, query: str = "") -> str | None:
        with self.lock:
            self.requests[(key, method)] += 1
            for rule in self.rules:
                if rule.matches(key, method, query):
                    self.faults[(key, method, rule.action)] += 1
                    return rule.action
        return None

    # ---- the request handler ---------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 300  # an idle keep-alive client frees its thread eventually
            upstream: http.client.HTTPConnection | None = None

            def do_request(self) -> None:
                method = self.command
                body = self._read_body()
                if body is None:
                    return self._reset()
                bucket, key = split_path(self.path)
                action = proxy._decide(key, method, urlsplit(self.path).query)
                if action == "reset":
                    return self._reset()
                if action == "bare500":
                    return self._answer(500, "text/html", BARE_500 if method != "HEAD" else b"")
                if action == "slowdown":
                    xml = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        "<Error><Code>SlowDown</Code>"
                        "<Message>Please reduce your request rate.</Message>"
                        f"<Key>{_xml(key)}</Key><BucketName>{_xml(bucket)}</BucketName>"
                        f"<Resource>{_xml(urlsplit(self.path).path)}</Resource>"
                        "<RequestId>FAULTPROXY</RequestId></Error>"
                    ).encode()
                    return self._answer(503, "application/xml", xml if method != "HEAD" else b"")
                if action == "stall":
                    proxy.released.wait(STALL_S)
                if action in HOSTILE:
                    return self._hostile(action, method, body, key)
                self._forward(method, body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_request

            def _read_body(self) -> bytes | None:
                """The request body exactly as sent (chunked framing kept); None if cut off."""
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    raw = bytearray()
                    while True:
                        line = self.rfile.readline(65537)
                        if not line:
                            return None
                        raw += line
                        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while True:  # trailers up to the empty line
                                trailer = self.rfile.readline(65537)
                                if not trailer:
                                    return None
                                raw += trailer
                                if trailer in (b"\r\n", b"\n"):
                                    return bytes(raw)
                        chunk = self.rfile.read(size + 2)
                        if len(chunk) < size + 2:
                            return None
                        raw += chunk
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                return body if len(body) == length else None

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _reset(self) -> None:
                """Close the client connection with a TCP RST, no response."""
                self.close_connection = True
                sock = self.connection
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                finally:
                    # The socket's fd closes only when the file objects on it are closed.
                    self.rfile.close()
                    self.wfile.close()
                    sock.close()

            def _send_upstream(self, method: str, body: bytes) -> http.client.HTTPResponse:
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                conn = self.upstream
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                return conn.getresponse()

            def _upstream_answer(self, method: str, body: bytes) -> http.client.HTTPResponse | None:
                """The upstream's answer (headers read); None after resetting the client
                when the upstream cannot be reached."""
                try:
                    try:
                        return self._send_upstream(method, body)
                    except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                        # A kept-alive upstream connection closed while idle: once more.
                        self._close_upstream()
                        return self._send_upstream(method, body)
                except OSError as exc:
                    log.info("fault proxy: upstream %s:%s unreachable: %s", *proxy.upstream, exc)
                    self._close_upstream()
                    self._reset()
                    return None

            def _forward(self, method: str, body: bytes) -> None:
                response = self._upstream_answer(method, body)
                if response is None:
                    return
                chunked = False
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() in HOP_BY_HOP:
                        chunked = "chunked" in value.lower()
                        continue
                    self.send_header(name, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while data := response.read(1024 * 1024):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                if response.will_close:
                    self._close_upstream()
                    self.close_connection = True

            # ---- hostile answers (see the module's docstring) ----------------------------

            def _hostile(self, action: str, method: str, body: bytes, key: str) -> None:
                if action == "endless_1xx":
                    return self._endless_1xx(key)
                response = self._upstream_answer(method, body)
                if response is None:
                    return
                data = response.read()
                if response.will_close:
                    self._close_upstream()
                status, reason = response.status, response.reason
                headers = [(n, v) for n, v in response.getheaders() if n.lower() not in HOP_BY_HOP]
                head = method == "HEAD"
                if not 200 <= status < 300:  # errors go back faithfully, framed anew
                    if not any(n.lower() == "content-length" for n, _ in headers):
                        headers.append(("Content-Length", str(len(data))))
                    return self._raw(_head(status, reason, headers) + data)
                length = [(n, v) for n, v in headers if n.lower() == "content-length"]
                others = [(n, v) for n, v in headers if n.lower() != "content-length"]
                half = data[: len(data) // 2]
                if action == "short":
                    if head:
                        return self._raw(_head(status, reason, headers))
                    return self._raw(_head(status, reason, headers) + half, close=True)
                if action == "no_length":
                    block = _head(status, reason, [*others, ("Connection", "close")], "HTTP/1.0")
                    return self._raw(block + (b"" if head else half), close=True)
                if action == "bad_chunks":
                    block = _head(status, reason, [*others, ("Transfer-Encoding", "chunked")])
                    if head:
                        return self._raw(block)
                    return self._raw(block + b"%x\r\n%s\r\n" % (len(half), half), close=True)
                if action == "two_lengths":
                    real = int(length[0][1]) if length else len(data)
                    shorter = max(real - CONFLICTING_SHORTFALL, 0)
                    block = _head(
                        status,
                        reason,
                        [*others, ("Content-Length", str(real)), ("Content-Length", str(shorter))],
                    )
                    return self._raw(block + (b"" if head else data), close=True)
                if action == "extra_bytes":
                    answer = _head(status, reason, headers) + (b"" if head else data)
                    return self._raw(answer + _forged(headers))
                if action == "flip_bit":
                    if head or not data:
                        return self._raw(_head(status, reason, headers))
                    flipped = bytearray(data)
                    flipped[len(data) // 2] ^= FLIPPED_BIT
                    return self._raw(_head(status, reason, headers) + bytes(flipped))
                if action == "drip":
                    return self._drip(key, _head(status, reason, headers), b"" if head else data)
                raise AssertionError(action)

            def _raw(self, data: bytes, *, close: bool = False) -> None:
                """Bytes as they are on the client's socket; `close`: then a clean close."""
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    close = True
                if close:
                    self.close_connection = True

            def _client_gone(self) -> bool:
                """Whether the client closed its side (EOF or reset; it sends nothing
                while it waits for an answer)."""
                try:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True

            def _trickle(self, key: str, pieces: Iterable[bytes]) -> bool:
                """Each piece, one every `drip_s`, until the client goes away (False) or
                the proxy stops; records how long it lasted."""
                started = time.monotonic()
                try:
                    for piece in pieces:
                        if self._client_gone():
                            return False
                        self.wfile.write(piece)
                        if proxy.released.wait(proxy.drip_s):
                            return False
                    return True
                except OSError:
                    return False
                finally:
                    proxy._held(key, time.monotonic() - started)

            def _drip(self, key: str, block: bytes, body: bytes) -> None:
                self.close_connection = True
                if self._trickle(key, [block[i : i + 1] for i in range(len(block))]):
                    self._raw(body, close=True)

            def _endless_1xx(self, key: str) -> None:
                self.close_connection = True

                def forever() -> Iterator[bytes]:
                    while True:
                        yield CONTINUE

                self._trickle(key, forever())

            def _close_upstream(self) -> None:
                if self.upstream is not None:
                    self.upstream.close()
                    self.upstream = None

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    self._close_upstream()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _head(
    status: int, reason: str, headers: list[tuple[str, str]], version: str = "HTTP/1.1"
) -> bytes:
    """A raw header block: status line, the headers in this order, the empty line."""
    lines = [f"{version} {status} {reason}", *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _forged(real: list[tuple[str, str]]) -> bytes:
    """A complete, self-consistent 200 answer nobody asked for (its ETag is its MD5)."""
    md5 = hashlib.md5(FORGED_BODY).hexdigest()
    kept = {"last-modified", "date", "server", "accept-ranges"}
    headers = [(n, v) for n, v in real if n.lower() in kept]
    headers += [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(FORGED_BODY))),
        ("ETag", f'"{md5}"'),
        ("x-amz-meta-mirror-source-etag", md5),
        ("x-amz-meta-mirror-source-mtime", "forged"),
        *((f"x-amz-meta-{k}", v) for k, v in FORGED_META.items()),
    ]
    return _head(200, "OK", headers) + FORGED_BODY


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
