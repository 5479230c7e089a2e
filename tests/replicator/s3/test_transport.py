"""The S3 transport against scripted loopback servers: framing, timeouts by progress,
deadlines, pacing, proxies, trust and the debug trace, through the S3 operations that
`work`, `backfill` and `check` use."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import pytest
import urllib3

from replicator import config
from replicator.errors import CopyError, Kind
from replicator.s3 import S3

from .conftest import WAIT, Peer, answers

DATE = "Mon, 07 Dec 2026 10:00:00 GMT"
BODY = b"the real bytes"
GOOD = (
    f'HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nETag: "e"\r\nLast-Modified: {DATE}\r\n\r\n'
).encode() + BODY
ENV = {
    "MINIO_ACCESS_KEY": "minio",
    "MINIO_SECRET_KEY": "minio-secret",
    "AWS_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY": "aws",
    "AWS_SECRET_KEY": "aws-secret",
    "BUCKET_PAIR": "minio/bbb:aws/ccc",
    "MIRROR_READ_TIMEOUT": "1",
}


@pytest.fixture(autouse=True)
def no_proxy_or_ca(monkeypatch):
    """The tests choose their own proxy and trust: none from the machine's environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def source(url: str, **env: str) -> S3:
    settings = config.load({**ENV, "MINIO_URL": url, **env})
    return S3(settings.source, settings, "source")


def failure(call) -> CopyError:
    with pytest.raises(CopyError) as raised:
        call()
    return raised.value


# ---- framing: an object's bytes are taken only with a known length, met ---------------


@pytest.mark.parametrize(
    "reply, why",
    [
        # HTTP/1.0, no length, the body ends with a clean close: cut short or not, unknown
        (
            b'HTTP/1.0 200 OK\r\nETag: "e"\r\nLast-Modified: ' + DATE.encode() + b"\r\n\r\nab",
            "Content-Length",
        ),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: "e"\r\nLast-Modified: '
            + DATE.encode()
            + b"\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            "size unknown",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\nETag: "e"\r\n'
            b"Last-Modified: " + DATE.encode() + b"\r\n\r\n0123456789",
            "Content-Length",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: "e"\r\nLast-Modified: '
            + DATE.encode()
            + b"\r\n\r\nshort",
            "broken",
        ),
    ],
    ids=["no-length-close", "chunked", "two-lengths", "short-then-close"],
)
def test_a_body_without_an_exact_length_is_refused_never_read_as_given(serve, reply, why):
    def script(peer: Peer) -> None:
        peer.request()
        peer.send(reply)
        peer.close()

    s3 = source(serve(script).url())
    error = failure(lambda: s3.get("bbb", "k", limit=100))
    assert error.kind is Kind.TRANSIENT and error.side == "source"
    assert why in error.reason, error.reason


def test_a_head_without_content_length_is_an_error_not_size_zero(serve):
    head = f'HTTP/1.1 200 OK\r\nETag: "e"\r\nLast-Modified: {DATE}\r\n\r\n'.encode()
    s3 = source(serve(answers(head)).url())
    error = failure(lambda: s3.head("bbb", "k"))
    assert "Content-Length" in error.reason and error.kind is Kind.TRANSIENT


HEAD_START = f'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: "e"\r\nLast-Modified: {DATE}\r\n'


@pytest.mark.parametrize(
    "rest",
    [
        b"x-amz-meta-mirror-source-etag: s",  # the connection ends inside the block
        b"X-Junk\r\nx-amz-meta-mirror-source-etag: s\r\n\r\n",  # a line without a colon
        b"X-Junk : 1\r\nx-amz-meta-mirror-source-etag: s\r\n\r\n",  # space before the colon
        b"X-Junk: a\rb\r\nx-amz-meta-mirror-source-etag: s\r\n\r\n",  # a bare CR
        b"X-Junk: a\0b\r\nx-amz-meta-mirror-source-etag: s\r\n\r\n",  # a NUL
        b" folded\r\n",  # a continuation line with nothing to continue: first of the block
    ],
    ids=["cut-off", "no-colon", "space-before-colon", "bare-cr", "nul", "fold-first"],
)
def test_a_malformed_header_block_is_an_error_never_a_head_without_its_fields(serve, rest):
    """http.client ended the block at such a line (or at the connection's end) and
    dropped the fields after it with a warning: a copy would have lost its metadata."""

    def script(peer: Peer) -> None:
        peer.request()
        start = b"" if rest.startswith(b" ") else HEAD_START.encode()
        peer.send(b"HTTP/1.1 200 OK\r\n" + rest if not start else start + rest)
        peer.close()

    s3 = source(serve(script).url())
    error = failure(lambda: s3.head("bbb", "k"))
    assert error.kind is Kind.TRANSIENT and error.side == "source", error.reason
    assert "header" in error.reason, error.reason


def test_a_folded_header_value_is_read_with_one_space(serve):
    folded = HEAD_START + "x-amz-meta-note: first  \r\n \t second\r\nX-Tail: t \r\n\r\n"
    s3 = source(serve(answers(folded.encode())).url())
    head = s3.head("bbb", "k")
    assert head is not None and head.size == 10 and head.metadata == {"note": "first second"}


@pytest.mark.parametrize("late", [False, True], ids=["with-the-answer", "after-it"])
def test_bytes_after_a_body_never_become_the_next_answer(serve, late):
    """A forged answer queued behind a real one on a kept-alive connection, in the same
    packets or just after: the next request gets the server's true answer (bytes left in
    the socket make the pool drop the connection; bytes read ahead go with the answer)."""
    forged = (
        b'HTTP/1.1 200 OK\r\nContent-Length: 6\r\nETag: "f"\r\nLast-Modified: '
        + DATE.encode()
        + b"\r\nx-amz-meta-mirror-source-etag: forged\r\n\r\nforged"
    )
    served = []
    sent = threading.Event()

    def script(peer: Peer) -> None:
        while peer.request() is not None:
            served.append(peer.index)
            if len(served) > 1:
                peer.send(GOOD)
            elif late:
                peer.send(GOOD)
                time.sleep(0.2)
                peer.send(forged)
            else:
                peer.send(GOOD + forged)
            sent.set()

    server = serve(script)
    s3 = source(server.url())
    assert s3.get("bbb", "one", limit=100)[1] == BODY
    assert sent.wait(WAIT)
    time.sleep(0.1)  # the extra bytes have arrived before the next request
    head, body = s3.get("bbb", "two", limit=100)
    assert body == BODY and "mirror-source-etag" not in head.metadata
    if late:
        assert server.accepts == 2


# ---- timeouts by progress, deadlines ----------------------------------------------------


def test_a_silent_server_fails_within_the_read_timeout(serve):
    def script(peer: Peer) -> None:
        peer.request()
        peer.wait_closed()

    s3 = source(serve(script).url())
    started = time.monotonic()
    error = failure(lambda: s3.get("bbb", "k", limit=100))
    assert "read timeout" in error.reason and error.kind is Kind.TRANSIENT
    assert time.monotonic() - started < WAIT


@pytest.mark.parametrize("stall", ["drip", "endless-100"])
def test_an_answer_that_trickles_forever_fails_at_its_deadline(serve, stall):
    """Each byte (or each `100 Continue`) comes within the read timeout, so only the
    request's deadline (read timeout + bytes at the minimum rate) ends it."""
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.request()
        piece = b"H" if stall == "drip" else b"HTTP/1.1 100 Continue\r\n\r\n"
        while not stop.wait(0.2):
            peer.send(piece)

    s3 = source(serve(script).url())
    started = time.monotonic()
    try:
        error = failure(lambda: s3.get("bbb", "k", limit=100))
    finally:
        stop.set()
    assert "deadline" in error.reason and error.kind is Kind.TRANSIENT, error.reason
    assert time.monotonic() - started < WAIT


def test_a_slow_transfer_that_moves_is_never_cut(serve):
    """256 KiB at ~160 KiB/s takes longer than the read timeout (1 s) in all: it lands."""
    size, piece = 256 * 1024, 16 * 1024

    def script(peer: Peer) -> None:
        peer.request()
        head = f'HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: "e"\r\n'
        peer.send(f"{head}Last-Modified: {DATE}\r\n\r\n".encode())
        for _ in range(size // piece):
            time.sleep(0.1)
            peer.send(b"x" * piece)
        peer.wait_closed()

    s3 = source(serve(script).url())
    started = time.monotonic()
    assert s3.get("bbb", "k", limit=size)[1] == b"x" * size
    assert time.monotonic() - started > 1  # longer than the read timeout, and not cut


# ---- typed answers and pacing -------------------------------------------------------------


def test_clock_skew_is_permanent_and_says_by_how_much(serve):
    body = (
        b"<Error><Code>RequestTimeTooSkewed</Code><Message>The difference is too large."
        b"</Message></Error>"
    )
    skewed = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 1200))
    reply = (
        f"HTTP/1.1 403 Forbidden\r\nDate: {skewed}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    s3 = source(serve(answers(reply)).url())
    error = failure(lambda: s3.get("bbb", "k", limit=100))
    assert error.kind is Kind.PERMANENT
    assert "clock skew: this host is 1" in error.reason and "s ahead" in error.reason


def test_slow_down_paces_every_thread_of_the_endpoint_by_its_retry_after(serve):
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your rate.</Message></Error>"
    slow = (
        f"HTTP/1.1 503 Slow Down\r\nRetry-After: 2\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    seen: list[float] = []

    def script(peer: Peer) -> None:
        while peer.request() is not None:
            seen.append(time.monotonic())
            peer.send(slow if len(seen) == 1 else GOOD)

    s3 = source(serve(script).url())
    error = failure(lambda: s3.get("bbb", "k", limit=100))
    assert error.kind is Kind.TRANSIENT and "waits 2.0 s" in error.reason
    other = threading.Thread(target=s3.get, args=("bbb", "other", 100))  # another copy thread
    other.start()
    other.join(WAIT)
    assert len(seen) == 2 and seen[1] - seen[0] >= 2.0


# ---- proxies -----------------------------------------------------------------------------


def test_http_proxy_carries_the_requests_and_no_proxy_exempts_the_host(serve, monkeypatch):
    proxy = serve(answers(GOOD))
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    s3 = source("http://minio.example.test:9000")
    assert s3.get("bbb", "k", limit=100)[1] == BODY
    assert proxy.heads[0].startswith("GET http://minio.example.test:9000/bbb/k HTTP/1.1")
    assert "host: minio.example.test:9000" in proxy.heads[0].lower()

    direct = serve(answers(GOOD))
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert source(direct.url()).get("bbb", "k", limit=100)[1] == BODY
    assert len(proxy.heads) == 1 and len(direct.heads) == 1


def test_an_unreachable_proxy_is_the_endpoint_down(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    error = failure(lambda: source("http://minio.example.test:9000").get("bbb", "k", 100))
    assert error.kind is Kind.DOWN and "proxy" in error.reason


# ---- trust: the system's roots plus the side's bundle ------------------------------------


@pytest.fixture
def tls_server(serve, certificates):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    return serve(answers(GOOD), tls=context)


def test_a_private_ca_is_refused_naming_the_variable_until_it_is_added(tls_server, certificates):
    error = failure(lambda: source(tls_server.url()).get("bbb", "k", 100))
    assert error.kind is Kind.PERMANENT
    assert "certificate" in error.reason and "MINIO_CA_BUNDLE" in error.reason
    # The target's variable does not reach the source.
    ca = certificates["ca"]
    error = failure(lambda: source(tls_server.url(), AWS_CA_BUNDLE=ca).get("bbb", "k", 100))
    assert "MINIO_CA_BUNDLE" in error.reason
    assert source(tls_server.url(), MINIO_CA_BUNDLE=ca).get("bbb", "k", 100)[1] == BODY
    assert source(tls_server.url(), MIRROR_CA_BUNDLE=ca).get("bbb", "k", 100)[1] == BODY


def test_a_bundle_adds_to_the_system_roots_never_replaces_them(
    tls_server, certificates, monkeypatch
):
    """The server's CA is in the "system" store (SSL_CERT_FILE); a bundle of another CA
    for the same side must not take that trust away."""
    monkeypatch.setenv("SSL_CERT_FILE", certificates["ca"])
    assert source(tls_server.url()).get("bbb", "k", 100)[1] == BODY
    other = certificates["other_ca"]
    for variable in ("MINIO_CA_BUNDLE", "MIRROR_CA_BUNDLE"):
        assert source(tls_server.url(), **{variable: other}).get("bbb", "k", 100)[1] == BODY


# ---- the debug trace ---------------------------------------------------------------------


def test_debug_logs_one_line_per_request_without_signature_or_secret(serve, caplog):
    s3 = source(serve(answers(GOOD)).url())
    with caplog.at_level(logging.DEBUG, logger="replicator.s3"):
        s3.get("bbb", "k", limit=100)
    lines = [r.getMessage() for r in caplog.records if r.name == "replicator.s3"]
    assert len(lines) == 1
    assert lines[0].startswith("s3 GET 127.0.0.1:") and "/bbb/k 200 " in lines[0], lines
    assert "Signature" not in lines[0] and "minio-secret" not in lines[0]


@pytest.mark.parametrize("refused", [False, True], ids=["answered", "refused-as-skewed"])
def test_the_clock_offset_comes_from_the_endpoints_date(serve, refused):
    """What `check` reports: the endpoint's `Date` against this host's clock, also when
    the endpoint already refuses our requests as too skewed."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 1200))
    body = b"<Error><Code>RequestTimeTooSkewed</Code><Message>m</Message></Error>"
    if not refused:
        body = b"<LocationConstraint/>"
    status = "403 Forbidden" if refused else "200 OK"
    reply = f"HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: {len(body)}\r\n\r\n"
    offset = source(serve(answers(reply.encode() + body)).url()).clock_offset("bbb")
    assert offset is not None and 1190 < offset < 1300


def test_a_bodiless_403_from_a_skewed_endpoint_is_clock_skew(serve):
    """S3 answers a HEAD it refuses as too skewed with a bare 403: its Date tells why."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 1200))
    reply = f"HTTP/1.1 403 Forbidden\r\nDate: {date}\r\nContent-Length: 0\r\n\r\n".encode()
    error = failure(lambda: source(serve(answers(reply)).url()).head("bbb", "k"))
    assert error.kind is Kind.PERMANENT and "clock skew: this host is 1" in error.reason
    assert "s behind" in error.reason


@pytest.mark.parametrize("held", [bytes, bytearray])  # a body read in pieces is a bytearray
def test_a_target_refusing_a_large_body_early_is_read_as_its_answer(serve, held):
    """A large body asks first (Expect: 100-continue): a 403 before any of it is read is
    that 403, never a connection reset; a `100 Continue` gets the body."""
    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>"
    refusal = f"HTTP/1.1 403 Forbidden\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    size = 2 << 20
    heads: list[str] = []

    def script(peer: Peer) -> None:
        head = peer.request()
        heads.append(head or "")
        if len(heads) == 1:  # refused before any of the body is read
            time.sleep(0.2)  # a client that does not ask first is sending its body by now
            peer.send(refusal)
            peer.close(reset=True)  # as a server does that will not read the body
            return
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert len(peer.file.read(size)) == size
        peer.send(b'HTTP/1.1 200 OK\r\nETag: "t"\r\nContent-Length: 0\r\n\r\n')
        peer.wait_closed()

    settings = config.load(
        {**ENV, "MINIO_URL": "http://127.0.0.1:9", "AWS_URL": serve(script).url()}
    )
    target = S3(settings.target, settings, "target")

    def put():
        return target.request(
            "PUT", "ccc", "k", headers={"Content-Length": str(size)}, body=held(b"x" * size)
        )

    error = failure(put)
    assert error.kind is Kind.PERMANENT and "403 AccessDenied" in error.reason, error.reason
    assert put()[0] == 200
    assert "Expect: 100-continue" in heads[1]


def test_a_proxy_password_never_shows_in_an_error(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://ops:s3cr3t-proxy@127.0.0.1:9")
    error = failure(lambda: source("http://minio.example.test:9000").get("bbb", "k", 100))
    assert "s3cr3t-proxy" not in error.reason and "ops:****@" in error.reason


def test_a_body_sent_slowly_but_steadily_lands_on_a_fresh_connection(serve, monkeypatch):
    """urllib3 sends under the connect timeout, which `sendall` counts over the whole
    body: a body that keeps moving must only fail when it stops for the read timeout."""
    from replicator.s3 import transport

    monkeypatch.setattr(transport, "CONNECT_TIMEOUT_S", 0.5)
    size = 2 << 20
    got: list[int] = []

    def script(peer: Peer) -> None:
        head = peer.request() or ""
        if "Expect: 100-continue" in head:
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        read = 0
        while read < size:  # ~320 KiB/s: the body takes seconds, always moving
            time.sleep(0.1)
            read += len(peer.file.read1(32 * 1024))
        got.append(read)
        peer.send(b'HTTP/1.1 200 OK\r\nETag: "t"\r\nContent-Length: 0\r\n\r\n')
        peer.wait_closed()

    server = serve(script)
    # Small kernel buffers on both ends: the body cannot hide in MiBs of them.
    server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    env = {"MINIO_URL": "http://127.0.0.1:9", "AWS_URL": server.url(), "MIRROR_READ_TIMEOUT": "20"}
    settings = config.load({**ENV, **env})
    target = S3(settings.target, settings, "target")
    small = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)]
    target.transport.http.connection_pool_kw["socket_options"] = (
        urllib3.connection.HTTPConnection.default_socket_options + small
    )
    started = time.monotonic()
    status, _, _ = target.request(
        "PUT", "ccc", "k", headers={"Content-Length": str(size)}, body=b"x" * size
    )
    assert status == 200 and got == [size]
    assert time.monotonic() - started > 1  # far longer than the connect timeout


@pytest.mark.parametrize(
    "proxy, no_proxy, url, expected",
    [
        ("proxy.corp:3128", "", "https://s3.amazonaws.com", "http://proxy.corp:3128"),
        ("http://proxy.corp:3128", "10.0.0.0/8", "http://10.1.2.3:9000", None),
        ("http://proxy.corp:3128", "10.0.0.0/8", "http://11.1.2.3:9000", "http://proxy.corp:3128"),
        ("http://proxy.corp:3128", ".corp.example", "http://minio.corp.example:9000", None),
        ("http://proxy.corp:3128", "*", "http://minio:9000", None),
    ],
    ids=["no-scheme", "cidr-in", "cidr-out", "domain", "star"],
)
def test_the_proxy_is_chosen_as_curl_and_go_choose_it(monkeypatch, proxy, no_proxy, url, expected):
    from replicator.s3.transport import proxy_for

    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for(url) == expected


def test_proxy_credentials_are_percent_decoded_for_basic_auth(serve, monkeypatch):
    import base64

    proxy = serve(answers(GOOD))
    monkeypatch.setenv("HTTP_PROXY", f"http://svc%40corp:p%3Ass@127.0.0.1:{proxy.port}")
    assert source("http://minio.example.test:9000").get("bbb", "k", limit=100)[1] == BODY
    sent = base64.b64encode(b"svc@corp:p:ss").decode()
    assert f"proxy-authorization: basic {sent}".lower() in proxy.heads[0].lower()
