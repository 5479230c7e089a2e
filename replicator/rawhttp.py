"""A lean HTTP/1.1 client for presigned S3 requests: keep-alive, one connection per
thread and host, every response header as sent.

`http.client` parses each answer's headers with the `email` package, which cost more CPU
than the rest of a small object's copy (the README's profile). S3's answers need none of
it: a status line, `Name: value` lines, a body sized by Content-Length (or chunked).
Only idempotent requests come here (GET, HEAD), so a reused connection that the server
closed while idle is resent once on a fresh one.
"""

from __future__ import annotations

import io
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple
from urllib.parse import SplitResult

_LINE_MAX = 65536
_BUFFER = 64 * 1024
_HEAD_MAX = 1 << 20  # a whole header section
_PIECE = 1 << 20  # bodies are read in pieces: a Content-Length is only a claim


class Answer(NamedTuple):
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; values decoded as ISO-8859-1
    body: bytes | None  # None: a body above the caller's limit was left unread


class Unreachable(OSError):
    """No connection could be made (refused, unknown host, connect timeout)."""


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.1 as this client reads it, or was cut short."""


class _Idle(ProtocolError):
    """The server closed a kept-alive connection before answering."""


class Client:
    def __init__(
        self, context: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
    ) -> None:
        self.context = context
        self.timeouts = (connect_timeout, read_timeout)
        self._local = threading.local()

    def request(
        self,
        method: str,
        url: SplitResult,
        headers: dict[str, str],
        limit: int = -1,
        body: bytes | Iterable[bytes] = b"",
    ) -> Answer:
        """One request; a body above `limit` (when >= 0) of a successful answer is not
        read (the connection is closed instead: the caller reads it in parts). A bytes
        body must be safe to send twice (a conditional PUT is); a streamed body (an
        iterable of pieces) goes out once, on a fresh connection."""
        target = _target(url)
        if not isinstance(body, bytes):
            self._drop(url)  # a fresh connection: no idle close to resend after
        for resend in (False, True):
            connection = self._connection(url)
            reused = connection.used
            try:
                return connection.exchange(method, target, headers, limit, body)
            except (_Idle, BrokenPipeError, ConnectionResetError):
                self._drop(url)
                if not reused or resend or not isinstance(body, bytes):
                    raise
            except BaseException:
                self._drop(url)
                raise
        raise AssertionError("unreachable")

    def pieces(
        self, url: SplitResult, headers: dict[str, str], size: int
    ) -> tuple[Answer, Iterator[bytes]]:
        """A GET whose successful body (`size` bytes) the caller reads piece by piece, on
        a connection of its own (kept afterwards only if read whole). Any other answer
        comes back whole, with no pieces."""
        target = _target(url)
        connection = _Connection(url, self.context, self.timeouts)  # ours until read
        try:
            status, reason, answer = connection.start("GET", target, headers, b"")
            if not (200 <= status < 300 and answer.get("content-length") == str(size)):
                whole = connection.finish("GET", status, reason, answer, -1)
                connection.close()
                return whole, iter(())
        except BaseException:
            connection.close()
            raise
        return Answer(status, reason, answer, None), self._read(url, connection, size)

    def _read(self, url: SplitResult, connection: _Connection, size: int) -> Iterator[bytes]:
        whole = False
        try:
            got = 0
            while got < size:
                piece = connection.file.read(min(size - got, _PIECE))
                if not piece:
                    raise ProtocolError(f"connection closed after {got} of {size} body bytes")
                got += len(piece)
                yield piece
            whole = True
        finally:
            conns = self._local.__dict__.setdefault("conns", {})
            if whole and url.netloc not in conns:
                conns[url.netloc] = connection
            else:
                connection.close()

    def _connection(self, url: SplitResult) -> _Connection:
        conns: dict[str, _Connection] = self._local.__dict__.setdefault("conns", {})
        connection = conns.get(url.netloc)
        if connection is None or not connection.open:  # none yet, or closed after its answer
            connection = conns[url.netloc] = _Connection(url, self.context, self.timeouts)
        return connection

    def _drop(self, url: SplitResult) -> None:
        connection = self._local.__dict__.get("conns", {}).pop(url.netloc, None)
        if connection is not None:
            connection.close()


class _Connection:
    def __init__(
        self, url: SplitResult, context: ssl.SSLContext | None, timeouts: tuple[float, float]
    ) -> None:
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            sock = socket.create_connection((host, port), timeout=timeouts[0])
        except OSError as exc:  # no connection could be made, whatever the reason
            raise Unreachable(f"cannot connect to {url.netloc}: {exc!r}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeouts[1])
        self.plain = url.scheme != "https"  # blocking, with the kernel's timeouts
        if not self.plain:
            try:
                sock = (context or ssl.create_default_context()).wrap_socket(
                    sock, server_hostname=host
                )
            except BaseException:
                sock.close()
                raise
            self.file = sock.makefile("rb", buffering=_BUFFER)
        else:
            _kernel_timeouts(sock, timeouts[1])
            self.file = io.BufferedReader(_Reader(sock), _BUFFER)
        self.sock = sock
        self.timeout = timeouts[1]
        self.host = url.netloc
        self.used = False
        self.open = True

    def exchange(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        limit: int,
        body: bytes | Iterable[bytes],
    ) -> Answer:
        status, reason, answer = self.start(method, target, headers, body)
        return self.finish(method, status, reason, answer, limit)

    def start(
        self, method: str, target: str, headers: dict[str, str], body: bytes | Iterable[bytes]
    ) -> tuple[int, str, dict[str, str]]:
        """Send the request; read the answer's status and headers."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        # Values are text: sent as UTF-8, as they were signed (ASCII for all but a few).
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if isinstance(body, bytes) and len(body) < _BUFFER:
            self._sendall(head + body)  # a small object goes out in one write
        else:
            self._sendall(head)
            for piece in [body] if isinstance(body, bytes) else body:
                self._sendall(piece)
        self.used = True
        status, reason, answer = self._head()
        while 100 <= status < 200:  # an interim answer (we send no Expect): skip it
            status, reason, answer = self._head()
        return status, reason, answer

    def _sendall(self, data: bytes) -> None:
        """All of `data` within one read timeout, as Python's own timeout gives. The
        kernel's is per call: `sendall` would wait it again after each part sent, so the
        rest of a partial send (rare: a full socket buffer) goes under Python's timeout."""
        if not self.plain:
            self.sock.sendall(data)
            return
        started = time.monotonic()
        try:
            sent = self.sock.send(data)  # nearly always all of it
        except BlockingIOError:  # the kernel's send timeout (see _kernel_timeouts)
            raise TimeoutError("timed out sending the request") from None
        if sent == len(data):
            return
        left = self.timeout - (time.monotonic() - started)
        if left <= 0:
            raise TimeoutError("timed out sending the request")
        self.sock.settimeout(left)
        try:
            self.sock.sendall(memoryview(data)[sent:])
        finally:
            self.sock.settimeout(None)  # blocking again; the kernel's timeouts stay set

    def finish(
        self, method: str, status: int, reason: str, answer: dict[str, str], limit: int
    ) -> Answer:
        """Read the body as `exchange` promises."""
        keep = answer.get("connection", "").lower() != "close"
        length = answer.get("content-length")
        if status >= 300:
            limit = -1  # error bodies are read (they are small; _exactly reads in pieces)
        if method == "HEAD" or status in (204, 304):
            body: bytes | None = b""
        elif "chunked" in answer.get("transfer-encoding", "").lower():
            body = self._chunked(limit)
        elif length is not None:
            size = _int(length)
            if 0 <= limit < size:
                self.close()
                return Answer(status, reason, answer, None)
            body = self._exactly(size, max(limit, _PIECE))
        else:  # the body ends when the server closes the connection
            body = self.file.read() if limit < 0 else self.file.read(limit + 1)
            keep = False
            if body is not None and 0 <= limit < len(body):
                body = None
        if body is None:
            self.close()
            return Answer(status, reason, answer, None)
        if not keep:
            self.close()
        return Answer(status, reason, answer, body)

    def _head(self) -> tuple[int, str, dict[str, str]]:
        line = self.file.readline(_LINE_MAX)
        if not line:
            raise _Idle("the server closed the connection without answering")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if (
            not version.startswith("HTTP/1.")
            or not line.endswith(b"\n")
            or not (len(code) == 3 and code.isascii() and code.isdigit())
        ):
            raise ProtocolError(f"not an HTTP/1.1 status line: {line[:100]!r}")
        headers: dict[str, str] = {}
        size = 0
        while True:
            line = self.file.readline(_LINE_MAX)
            if line in (b"\r\n", b"\n"):
                return int(code), reason.strip(" \t"), headers
            size += len(line)
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not line.endswith(b"\n") or size > _HEAD_MAX:
                raise ProtocolError(f"bad header line: {line[:100]!r}")
            headers[name.strip(" \t").lower()] = value.strip(" \t\r\n")

    def _exactly(self, size: int, trusted: int = _PIECE) -> bytes:
        """`size` body bytes. Up to `trusted` bytes are read at once; a larger length is
        only a claim, read in pieces so that a bogus one cannot reserve the memory."""
        if size <= trusted:
            data = self.file.read(size)
            if len(data) != size:
                raise ProtocolError(f"connection closed after {len(data)} of {size} body bytes")
            return data
        pieces, got = [], 0
        while got < size:
            piece = self.file.read(min(size - got, _PIECE))
            if not piece:
                raise ProtocolError(f"connection closed after {got} of {size} body bytes")
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def _chunked(self, limit: int) -> bytes | None:
        chunks, got = [], 0
        while True:
            line = self.file.readline(_LINE_MAX)
            size = _int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.file.readline(_LINE_MAX) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: none we need
                return b"".join(chunks)
            got += size
            if 0 <= limit < got:
                return None
            chunks.append(self._exactly(size))
            if self.file.readline(3) not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk longer than its size")

    def close(self) -> None:
        self.open = False
        self.file.close()
        self.sock.close()


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make a plain socket blocking, its timeouts the kernel's (SO_RCVTIMEO/SO_SNDTIMEO).
    Python's own timeout costs a poll() before every send and recv, each releasing and
    retaking the GIL: twice the system calls of a small object's copy. (Not for TLS:
    `ssl` waits without limit after a kernel timeout on a blocking socket.)"""
    whole, micros = divmod(max(1, round(seconds * 1_000_000)), 1_000_000)  # 0 = never
    interval = struct.pack("ll", whole, micros)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)


class _Reader(io.RawIOBase):
    """A blocking socket's bytes for a BufferedReader. `socket.makefile` would turn the
    kernel's timeout (EAGAIN) into "no data yet", read as a closed connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            return self.sock.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("timed out waiting for the answer") from None


def _target(url: SplitResult) -> str:
    """The request line's target: the path (`/` when empty) and the query."""
    path = url.path or "/"
    return f"{path}?{url.query}" if url.query else path


def _int(text: str | bytes, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise ProtocolError(f"not a length: {text[:40]!r}") from None
    if value < 0:
        raise ProtocolError(f"negative length {value}")
    return value
