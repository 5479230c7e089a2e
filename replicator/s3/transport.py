"""One HTTP transport per S3 endpoint, on urllib3: every S3 request of every command
(copies, listings, deletes, `check`, the stream listener) goes through it, so the
network's conventions are honoured in one place (rclone's `fs/fshttp` is the model).

- Trust: the system store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured) plus the side's own
  CA bundle (`MINIO_CA_BUNDLE` for the source, `AWS_CA_BUNDLE` for the target) and
  `MIRROR_CA_BUNDLE` for both: bundles add to the trusted roots, never replace them.
- Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (either case), as curl and Go read them.
- Timeouts by progress: a connect timeout, and a read timeout per socket operation, so a
  slow transfer that moves never fails. urllib3's timeouts cannot bound a server that
  drips its answer a byte at a time, or sends `100 Continue` forever: each request also
  has a deadline (the read timeout plus its bytes at a minimum rate), and a watchdog
  shuts the socket of a request that passes it.
- Pacing: a `SlowDown`, 503 or `Retry-After` from the endpoint slows every thread of the
  process for that endpoint together (rclone's `lib/pacer`).
- Framing is urllib3's (exact Content-Length, chunk framing, conflicting lengths refused);
  a connection with bytes left over is dropped before reuse. Nothing here retries: the
  policy is the one place that decides (`replicator/policy.py`).
- `MIRROR_DEBUG=true` logs one line per request: method, host, path, status, ms, bytes.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.wait import wait_for_read

from .headers import Response

log = logging.getLogger("replicator.s3")

CONNECT_TIMEOUT_S = 5
MIN_RATE = 32 * 1024  # bytes/s a request must average beyond its read timeout (deadline)
POOL_BLOCK_S = 60  # longest wait for a free connection of a full pool
PACE_MIN_S = 0.5  # the first pause after a SlowDown; doubled on each one after
PACE_MAX_S = 4.0  # the longest pause of SlowDowns in a row (rclone's S3 pacer: 2 s)
RETRY_AFTER_MAX_S = 30.0  # the longest pause a Retry-After imposes
WATCH_EVERY_S = 0.25
EXPECT_WAIT_S = 1.0  # how long a large body waits for `100 Continue` before it goes anyway
EXPECT_FROM = 1 << 20  # bodies from this size ask first (Expect: 100-continue)
SEND_SLICE = 256 * 1024  # bytes sent per call, each within the read timeout
WITH_HEAD_UP_TO = 64 * 1024  # bodies up to this size go in one send with their header block


@dataclass(frozen=True)
class Network:
    """How one endpoint is reached: its trust, proxy and timeouts."""

    verify: bool
    bundles: tuple[str, ...]  # extra CA files, added to the system store
    bundle_variable: str  # the variable that adds CAs for this side, named in errors
    read_timeout: float
    proxy: str | None  # the proxy URL for this endpoint, None for a direct connection


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url`, or None: `NO_PROXY` honoured as curl
    and Go read it (names, `.domain`, `*`, and IP ranges like `10.0.0.0/8`), and a proxy
    given without a scheme taken as `http://`."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return None
    if _in_ranges(parts.hostname or "", proxies.get("no", "")):
        return None
    proxy = proxies.get(parts.scheme)
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    return proxy


def _in_ranges(host: str, no_proxy: str) -> bool:
    """Whether `host` is an IP address inside a CIDR range of NO_PROXY."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        with contextlib.suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
    return False


def tls_context(verify: bool, bundles: Iterable[str]) -> ssl.SSLContext:
    """The system's trusted roots plus `bundles`; no checks at all when not `verify`."""
    context = ssl.create_default_context()  # honours SSL_CERT_FILE and SSL_CERT_DIR
    for bundle in bundles:
        context.load_verify_locations(cafile=bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _quiet_insecure_warnings() -> None:
    """MIRROR_TLS_VERIFY=false: said once here, not by urllib3 on every request."""
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    log.warning("MIRROR_TLS_VERIFY=false: TLS certificates are not verified")


class DeadlineExceeded(OSError):
    """The watchdog closed a request that ran past its deadline."""


class _Bound:
    """One `bound` block: its deadline, the connections watched under it, and whether
    the watchdog had to end it. A plain context manager (one per request, contextlib's
    generator machinery costs more than the block's own work)."""

    def __init__(self, watchdog: _Watchdog, seconds: float, connection: Any) -> None:
        self.watchdog = watchdog
        self.deadline = time.monotonic() + seconds
        self.late = False
        self.connections: list[HTTPConnection] = []
        self.first = connection

    def __enter__(self) -> _Bound:
        self.watchdog.local.__dict__.setdefault("stack", []).append(self)
        if self.first is not None:
            self.watchdog.watch(self.first)
        return self

    def __exit__(self, *_: object) -> None:
        self.watchdog.release(self)


class _Watchdog:
    """Shuts the socket of every request past its deadline (one thread per process).
    Blocks nest on a thread (a source GET streamed into a target PUT): each connection
    is watched under the innermost block open when its request went out."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: dict[HTTPConnection, _Bound] = {}
        self.local = threading.local()
        self.thread: threading.Thread | None = None

    def bound(self, seconds: float, connection: HTTPConnection | None = None) -> _Bound:
        """Requests this thread sends inside the block (and `connection`'s answer) must
        end within `seconds`."""
        return _Bound(self, seconds, connection)

    def release(self, block: _Bound) -> None:
        """The block has ended: its connections are no longer watched."""
        self.local.stack.remove(block)
        with self.lock:
            for known in block.connections:
                if self.watched.get(known) is block:
                    del self.watched[known]

    def watch(self, connection: HTTPConnection) -> None:
        """Called as a request goes out on `connection`, on the requesting thread."""
        stack = getattr(self.local, "stack", None)
        if not stack:
            return
        block = stack[-1]
        block.connections.append(connection)
        with self.lock:
            self.watched[connection] = block
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="s3-watchdog", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            with self.lock:
                late = [(c, b) for c, b in self.watched.items() if b.deadline < now]
                for connection, block in late:
                    del self.watched[connection]
                    block.late = True
            for connection, _ in late:
                sock = connection.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = _Watchdog()


class _Connection:
    """What urllib3's connections lack for S3 on real links (a mixin over them):

    - the watchdog sees each request go out (`request`);
    - bodies go in slices under the read timeout, not under the connect timeout (`send`);
    - `Expect: 100-continue` for large bodies (http.client sends a body at once, and a
      target refusing it early, say with a 403, would read as a connection reset): after
      the header block, the first body send waits up to EXPECT_WAIT_S for the server's
      word. `100 Continue` (consumed here) sends the body; a final answer sends none of
      it, is handed to the response reader as it came, and the connection is shut for
      writing so that it is never used again; silence sends the body anyway (RFC 9110);
    - the wait for the answer to a body allows for bytes still in buffers (`_drain_s`).
    """

    sock: Any
    response_class = Response  # header blocks read without the email package (headers.py)
    send_timeout: float | None = None  # the read timeout, set per transport
    _expect = 0  # 1: header block next, 2: body next (wait first), 3: refused
    _early = b""  # a final answer read while waiting, for the response reader
    _head = b""  # the header block, held to go out with a small body
    _with_head = False  # a small body follows: send the header block with it
    _spent = False  # refused early: its body was promised and never sent, never reuse it

    @property
    def is_connected(self) -> bool:
        return not self._spent and super().is_connected  # type: ignore[misc]

    def connect(self) -> None:
        self._spent = False
        super().connect()  # type: ignore[misc]

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any):
        WATCHDOG.watch(self)  # type: ignore[arg-type]
        expect = bool(headers) and "Expect" in headers  # only Transport.send adds it
        self._expect, self._early = (1 if expect else 0), b""
        # One send (one packet, one wake-up of the server) for a small body and its head.
        self._with_head = (
            not expect and isinstance(body, bytes) and 0 < len(body) <= WITH_HEAD_UP_TO
        )
        self._head = b""
        self._sent: list[tuple[float, int]] = []  # (time, body bytes sent) per slice
        super().request(method, url, body, headers, **kw)  # type: ignore[misc]

    def putheader(self, header: str, *values: Any) -> None:
        # http.client's checks, without urllib3's scan of each value for its SKIP_HEADER
        # marker (never sent here): a tenth of the request side's CPU for a small copy.
        http.client.HTTPConnection.putheader(self, header, *values)  # type: ignore[arg-type]

    def send(self, data: Any) -> None:
        if self._with_head:
            if not self._head:  # the header block: held for the body
                self._head = bytes(data)
                return
            data, self._head, self._with_head = self._head + data, b"", False
        if self._expect == 1:  # the header block
            self._expect = 2
        elif self._expect == 2:
            self._expect = 0 if self._continue() else 3
        if self._expect == 3:
            return
        # urllib3 sends with the connect timeout, and `sendall` counts its timeout over the
        # whole call: a 16 MiB body would have to go in 5 s. Sent in slices under the read
        # timeout, a body fails only when no slice moves for that long.
        if self.sock is not None and self.send_timeout:
            self.sock.settimeout(self.send_timeout)
        if not isinstance(data, bytes | bytearray | memoryview):
            super().send(data)  # type: ignore[misc]
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_SLICE):
            piece = view[start : start + SEND_SLICE]
            super().send(piece)  # type: ignore[misc]
            if self._expect == 0 and len(piece) == SEND_SLICE:  # body slices: the pace
                total = self._sent[-1][1] if self._sent else 0
                self._sent.append((time.monotonic(), total + len(piece)))

    def _continue(self) -> bool:
        if not wait_for_read(self.sock, timeout=EXPECT_WAIT_S):
            return True  # a server that ignores Expect
        head = b""
        while not head.endswith(b"\r\n\r\n") and len(head) < 65536:
            byte = self.sock.recv(1)
            if not byte:
                break
            head += byte
        if head.split(b" ", 2)[1:2] == [b"100"]:
            return True
        self._early, self._spent = head, True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        return False

    def getresponse(self) -> Any:
        if self._early:
            self.response_class = _early_response(self._early)  # type: ignore[misc]
        drain = _drain_s(getattr(self, "_sent", []))
        if drain and self.timeout is not None:
            self.timeout = self.timeout + drain  # type: ignore[has-type]
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            self._early = b""
            self.__dict__.pop("response_class", None)


def _drain_s(sent: list[tuple[float, int]]) -> float:
    """How long the bytes of a body still held in buffers on the way (ours, a proxy's)
    may take to reach the server, which answers only once it has them all: the server
    is silent meanwhile, and that silence is not a stall. Estimated from the pace the
    path took the body's last half at (once buffers were full) against the bytes sent."""
    if len(sent) < 4:
        return 0.0
    (t0, _), (tm, bm), (t1, b1) = sent[0], sent[len(sent) // 2], sent[-1]
    if t1 - tm < 1.0:
        return 0.0  # taken at once: nothing waits in buffers for long
    pace = (b1 - bm) / (t1 - tm)  # bytes/s the path accepts
    held = b1 - pace * (t1 - t0)  # what went faster than that pace: still in buffers
    return max(held, 0.0) / pace


def _early_response(early: bytes) -> Any:
    """The response class reading `early` before the socket's bytes."""

    class Early(Response):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp = io.BufferedReader(_Prefixed(early, self.fp))  # type: ignore[arg-type]

    return Early


class _Prefixed(io.RawIOBase):
    def __init__(self, first: bytes, rest: Any) -> None:
        self.first, self.rest = first, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.first:
            n = min(len(buffer), len(self.first))
            buffer[:n], self.first = self.first[:n], self.first[n:]
            return n
        data = self.rest.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.rest.close()
        super().close()


class _Watched(_Connection, HTTPConnection):
    pass


class _WatchedTLS(_Connection, HTTPSConnection):
    pass


def _pools(send_timeout: float) -> dict[str, type]:
    """Pool classes whose connections send under `send_timeout`."""
    plain = type("_Sending", (_Watched,), {"send_timeout": send_timeout})
    tls = type("_SendingTLS", (_WatchedTLS,), {"send_timeout": send_timeout})
    return {
        "http": type("_Pool", (_Pool,), {"ConnectionCls": plain}),
        "https": type("_TLSPool", (_TLSPool,), {"ConnectionCls": tls}),
    }


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Watched


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedTLS


class Pacer:
    """One pace for all threads that talk to an endpoint: after a SlowDown (or 503, or a
    Retry-After) every request waits out the pause, which doubles while the endpoint keeps
    asking and halves with each request it takes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.until = 0.0
        self.pause = 0.0

    def wait(self) -> None:
        delay = self.until - time.monotonic()
        if delay > 0:
            time.sleep(delay * random.uniform(1.0, 1.2))  # spread the threads' restarts

    def slow_down(self, retry_after: float | None) -> float:
        """Pause every thread; returns the pause."""
        with self.lock:
            self.pause = min(max(self.pause * 2, PACE_MIN_S), PACE_MAX_S)
            pause = max(self.pause, min(retry_after or 0.0, RETRY_AFTER_MAX_S))
            self.until = max(self.until, time.monotonic() + pause)
            return pause

    def went_well(self) -> None:
        if self.pause:
            with self.lock:
                self.pause = self.pause / 2 if self.pause > PACE_MIN_S / 4 else 0.0


class Transport:
    """The connection pools of one endpoint, through its proxy if the environment names
    one. Thread-safe: every copy thread shares it."""

    def __init__(self, url: str, network: Network, pool: int = 10) -> None:
        self.url = urlsplit(url)
        self.network = network
        self.pacer = Pacer()
        self.timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=network.read_timeout)
        options: dict[str, Any] = {
            "num_pools": 16,  # one per host: AWS names each bucket's own host
            "maxsize": pool,
            "block": False,
            "retries": False,
            "timeout": self.timeout,
        }
        trust = tls_context(network.verify, network.bundles)
        if self.url.scheme == "https":
            options["ssl_context"] = trust
            if not network.verify:
                options.update(cert_reqs="CERT_NONE", assert_hostname=False)
        if not network.verify:
            _quiet_insecure_warnings()
        if network.proxy:
            proxy = urlsplit(network.proxy)
            headers = None
            if proxy.username:  # credentials in the proxy URL: Basic auth, decoded as curl does
                auth = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
                headers = urllib3.make_headers(proxy_basic_auth=auth)
            self.http: urllib3.PoolManager = urllib3.ProxyManager(
                network.proxy, proxy_headers=headers, proxy_ssl_context=trust, **options
            )
        else:
            self.http = urllib3.PoolManager(**options)
        self.http.pool_classes_by_scheme = _pools(network.read_timeout)
        self.pools: dict[tuple[str, str], HTTPConnectionPool] = {}

    def _pool(self, url: str) -> tuple[Any, str]:
        """What to call urlopen on for `url`, and the URL to give it. A direct connection
        goes to the host's pool with the request target, as the PoolManager sends it, with
        the pool found once per host: the manager parses and normalises every URL, a tenth
        of a small copy's CPU. Through a proxy, the manager (it adds the proxy's headers)."""
        scheme, _, rest = url.partition("://")
        base, slash, path = rest.partition("/")
        if self.network.proxy or not slash or "@" in base or "?" in base:
            return self.http, url
        pool = self.pools.get((scheme, base))
        if pool is None or pool.pool is None:  # new, or closed by the manager since
            pool = self.http.connection_from_url(url)
            if len(self.pools) >= 64:
                self.pools.clear()
            self.pools[scheme, base] = pool
        return pool, slash + path

    def deadline(self, size: int = 0) -> float:
        """Seconds a request moving `size` bytes may take in all."""
        return self.network.read_timeout + size / MIN_RATE

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None = None,
        *,
        size: int = 0,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request; the answer's body is read unless `stream`. Raises urllib3's and
        the socket's exceptions as they are (the caller types them) and DeadlineExceeded."""
        self.pacer.wait()
        if body is not None and size >= EXPECT_FROM:
            headers = {**headers, "Expect": "100-continue"}
        started = time.monotonic()
        status: int | str = "-"
        received = "-"
        try:
            with WATCHDOG.bound(self.deadline(size)) as block:
                opener, target = self._pool(url)
                try:
                    answer = opener.urlopen(
                        method,
                        target,
                        body=body,
                        headers=headers,
                        redirect=False,
                        preload_content=not stream,
                        decode_content=False,
                        assert_same_host=False,
                    )
                except Exception as exc:
                    if block.late:
                        raise DeadlineExceeded(
                            f"timed out: no complete answer within its deadline of "
                            f"{self.deadline(size):.0f} s"
                        ) from exc
                    raise
            status = answer.status
            received = answer.headers.get("content-length", "-")
            return answer
        finally:
            if log.isEnabledFor(logging.DEBUG):
                parts = urlsplit(url)
                log.debug(
                    "s3 %s %s%s %s %.1f ms %d bytes sent, %s received",
                    method,
                    parts.netloc,
                    parts.path,
                    status,
                    (time.monotonic() - started) * 1000,
                    size,
                    received,
                )

    def read(self, answer: urllib3.BaseHTTPResponse, size: int) -> Iterator[bytes]:
        """The streamed answer's body in pieces, within a deadline for `size` bytes."""
        connection = getattr(answer, "connection", None)
        with WATCHDOG.bound(self.deadline(size), connection) as block:
            try:
                yield from answer.stream(1 << 20)
            except Exception as exc:
                if block.late:
                    raise DeadlineExceeded(
                        "timed out: body not read within its deadline of "
                        f"{self.deadline(size):.0f} s"
                    ) from exc
                raise

    def clear(self) -> None:
        self.http.clear()
