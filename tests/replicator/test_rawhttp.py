"""rawhttp against real loopback servers that send exactly the bytes each test scripts
(plain and TLS), and the raw path of S3.head/S3.get on the real source MinIO."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from replicator import rawhttp

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
WAIT = 10  # seconds to wait for a server-side event (never reached when all is well)


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(self, server: Server, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index  # 0 for the first connection the server accepted
        self.file = sock.makefile("rb")
        self.heads: list[str] = []  # the requests that came on this connection
        self.closed = threading.Event()  # set when the client closed its side

    def request(self) -> str | None:
        """The next request's head, as the client sent it; None once the client closed."""
        lines: list[bytes] = []
        while True:
            try:
                line = self.file.readline()
            except OSError:
                line = b""
            if not line:
                self.closed.set()
                return None
            if line == b"\r\n":
                head = b"".join(lines).decode("latin-1")
                self.server.heads.append(head)
                self.heads.append(head)
                return head
            lines.append(line)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self, reset: bool = False) -> None:
        if reset:  # an RST instead of a FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.file.close()
        self.sock.close()

    def wait_closed(self) -> bool:
        """Block until the client closes this connection (reading what else it sends)."""
        while self.request() is not None:
            pass
        return True


class Server:
    """A loopback TCP (or TLS) server: `script(peer)` runs for each accepted connection."""

    def __init__(self, script: Callable[[Peer], None], tls: ssl.SSLContext | None = None):
        self.script = script
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepts = 0
        self.heads: list[str] = []
        self.peers: list[Peer] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def url(self, path: str = "/b/k?x=1", host: str = "127.0.0.1"):
        scheme = "https" if self.tls else "http"
        return urlsplit(f"{scheme}://{host}:{self.port}{path}")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepts += 1
            thread = threading.Thread(target=self._run, args=(sock, self.accepts - 1))
            thread.daemon = True
            self.threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket, index: int) -> None:
        try:
            if self.tls:
                sock.settimeout(WAIT)
                sock = self.tls.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            peer = Peer(self, sock, index)
            self.peers.append(peer)
            self.script(peer)
        except OSError:
            pass  # the client went away (or refused our certificate): its side is tested
        finally:
            sock.close()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        for peer in list(self.peers):
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked readline()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(script: Callable[[Peer], None], tls: ssl.SSLContext | None = None) -> Server:
        made.append(Server(script, tls))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def client() -> rawhttp.Client:
    return rawhttp.Client(None, 2, 5)


def answers(*replies: bytes) -> Callable[[Peer], None]:
    """A keep-alive server: its n-th request (on whichever connection) gets replies[n],
    the last reply from then on."""
    count = iter(range(1 << 30))

    def script(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(replies[min(next(count), len(replies) - 1)])

    return script


def ok(answer: rawhttp.Answer) -> bool:
    return (answer.status, answer.reason, answer.body) == (200, "OK", b"ok")


# ---- keep-alive, resends, closes ------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given(serve, client):
    server = serve(answers(OK))
    url = server.url("/bucket/a%20b?partNumber=1&x-id=GetObject")
    for _ in range(3):
        assert ok(client.request("GET", url, {"Range": "bytes=0-1", "X-Amz-Foo": "bar"}))
    assert ok(client.request("GET", server.url(""), {}))
    assert server.accepts == 1
    first = server.heads[0].split("\r\n")
    assert first[0] == "GET /bucket/a%20b?partNumber=1&x-id=GetObject HTTP/1.1"
    assert first[1:] == [f"Host: 127.0.0.1:{server.port}", "Range: bytes=0-1", "X-Amz-Foo: bar", ""]
    assert server.heads[3].startswith("GET / HTTP/1.1\r\n")  # an empty path asks for /


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_a_connection_the_server_closed_while_idle_is_resent_once_fresh(serve, client, close):
    dropped = threading.Event()

    def script(peer: Peer) -> None:
        if peer.index == 0:  # one answer, then the server drops the idle connection
            peer.request()
            peer.send(OK)
            peer.close(reset=close == "rst")
            dropped.set()
        else:
            answers(OK)(peer)

    server = serve(script)
    assert ok(client.request("GET", server.url(), {}))
    assert dropped.wait(WAIT)
    for method in ("GET", "HEAD"):
        assert client.request(method, server.url(), {}).status == 200
    assert server.accepts == 2


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_resent(serve, client, method):
    def script(peer: Peer) -> None:
        peer.request()
        peer.close()

    server = serve(script)
    with pytest.raises(rawhttp.ProtocolError):
        client.request(method, server.url(), {})
    assert server.accepts == 1


def test_a_reused_connection_is_resent_only_once(serve, client):
    def script(peer: Peer) -> None:
        if peer.index == 0:
            peer.request()
            peer.send(OK)
        peer.request()  # then every connection closes without answering
        peer.close()

    server = serve(script)
    assert ok(client.request("GET", server.url(), {}))
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})
    assert server.accepts == 2


@pytest.mark.parametrize(
    ("reply", "server_closes"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\n\r\nok", True),  # no length: the body ends at the close
    ],
    ids=["with-length", "until-close", "no-length-no-close-header"],
)
def test_an_answer_that_closes_the_connection_is_not_followed_on_it(
    serve, client, reply, server_closes
):
    reused = []

    def script(peer: Peer) -> None:
        peer.request()
        peer.send(reply)
        if server_closes:
            peer.close()
        elif peer.request() is not None:  # the server said close: nothing may follow
            reused.append(peer.index)
            peer.send(OK)

    server = serve(script)
    for _ in range(2):
        assert ok(client.request("GET", server.url(), {}))
    assert (server.accepts, reused) == (2, [])


# ---- bodies -------------------------------------------------------------------------


def test_a_chunked_body_with_extensions_and_trailers_keeps_the_connection(serve, client):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value;other\r\nWiki\r\n5\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n"
        b"0;last\r\nX-Trailer: t\r\nChecksum: abc\r\n\r\n"
    )
    server = serve(answers(chunked, OK))
    answer = client.request("GET", server.url(), {})
    assert answer.body == b"Wikipedia in\r\n\r\nchunks."
    assert "x-trailer" not in answer.headers
    assert ok(client.request("GET", server.url(), {}))  # the trailers were all read
    assert server.accepts == 1


def test_chunked_wins_over_a_content_length(serve, client):
    both = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\n"
    )
    server = serve(answers(both, OK))
    assert client.request("GET", server.url(), {}).body == b"ab"
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # headers cut short
    ],
    ids=["content-length", "in-a-chunk", "before-the-last-chunk", "in-the-headers"],
)
def test_an_answer_cut_short_is_a_protocol_error_and_the_next_request_is_fresh(
    serve, client, reply
):
    def script(peer: Peer) -> None:
        peer.request()
        if peer.index == 0:
            peer.send(reply)
            peer.close()
        else:
            peer.send(OK)

    server = serve(script)
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 2


def test_head_204_and_304_have_no_body_whatever_their_length_says(serve, client):
    server = serve(
        answers(
            b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "e"\r\n\r\n',
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            OK,
        )
    )
    head = client.request("HEAD", server.url(), {}, limit=10)
    assert (head.status, head.headers["content-length"], head.body) == (200, "1000", b"")
    assert client.request("GET", server.url(), {}).body == b""
    assert client.request("GET", server.url(), {}).body == b""
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


def test_interim_1xx_answers_are_skipped_with_their_headers(serve, client):
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK
    )
    server = serve(answers(interim, OK))
    answer = client.request("GET", server.url(), {})
    assert ok(answer) and "link" not in answer.headers
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


def test_a_success_above_the_limit_is_left_unread_and_its_connection_closed(serve, client):
    big = b'HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nETag: "e"\r\n\r\n' + b"x" * 1000

    def script(peer: Peer) -> None:
        if peer.index == 0:
            peer.request()
            peer.send(big)
            peer.wait_closed()
        else:
            answers(OK)(peer)

    server = serve(script)
    answer = client.request("GET", server.url(), {}, limit=999_999)
    assert (answer.status, answer.headers["etag"], answer.body) == (200, '"e"', None)
    assert server.peers[0].closed.wait(WAIT)  # closed, not drained
    assert ok(client.request("GET", server.url(), {}, limit=2))  # = limit: read
    assert server.accepts == 2


@pytest.mark.parametrize("limit", [-1, 10])
def test_an_error_above_the_limit_is_read_and_keeps_the_connection(serve, client, limit):
    text = b"<Error><Code>SlowDown</Code>" + b" " * 100 + b"</Error>"
    error = b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
    partial = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 20\r\n\r\n" + b"y" * 20
    server = serve(answers(error, partial, OK))
    answer = client.request("GET", server.url(), {}, limit=limit)
    assert (answer.status, answer.reason, answer.body) == (503, "Slow Down", text)
    assert client.request("GET", server.url(), {}, limit=limit).body == (
        b"y" * 20 if limit < 0 else None  # a 206 is a success: above the limit, unread
    )
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == (1 if limit < 0 else 2)


def test_an_answer_sent_before_the_request_was_read_is_taken(serve, client):
    def script(peer: Peer) -> None:
        peer.send(OK)  # answers at once, reads the request afterwards
        answers(OK)(peer)

    server = serve(script)
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


# ---- what the client refuses -----------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=[
        "ssh",
        "http2",
        "code",
        "icy",
        "no-colon",
        "long-header",
        "length-text",
        "length-negative",
        "chunk-size",
    ],
)
def test_garbage_is_a_protocol_error_and_the_next_request_is_fresh(serve, client, reply):
    def script(peer: Peer) -> None:
        peer.request()
        peer.send(reply if peer.index == 0 else OK)
        peer.wait_closed()

    server = serve(script)
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})
    assert server.peers[0].closed.wait(WAIT)  # the client dropped the connection
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 2


def test_a_refused_connection_is_unreachable(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(rawhttp.Unreachable) as raised:
            client.request("GET", urlsplit(f"http://127.0.0.1:{port}/b/k"), {})
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


def test_a_connect_timeout_is_unreachable():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # a full accept queue: Linux drops the next SYNs
        port = listener.getsockname()[1]
        held = []
        for _ in range(2):
            sock = socket.socket()
            sock.settimeout(0.2)
            held.append(sock)
            with contextlib.suppress(OSError):
                sock.connect(("127.0.0.1", port))
        try:
            with pytest.raises(rawhttp.Unreachable):
                rawhttp.Client(None, 0.2, 5).request(
                    "GET", urlsplit(f"http://127.0.0.1:{port}/"), {}
                )
        finally:
            for sock in held:
                sock.close()


def test_a_read_timeout_is_an_oserror_but_not_unreachable_and_drops_the_connection(serve):
    def script(peer: Peer) -> None:
        peer.request()
        if peer.index == 0:
            peer.wait_closed()  # never answers
        else:
            peer.send(OK)

    server = serve(script)
    client = rawhttp.Client(None, 2, 0.2)
    with pytest.raises(OSError) as raised:
        client.request("GET", server.url(), {})
    assert isinstance(raised.value, TimeoutError)
    assert not isinstance(raised.value, rawhttp.Unreachable)
    assert server.peers[0].closed.wait(WAIT)
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 2


def test_a_server_that_stops_reading_the_body_times_out_the_send(serve):
    """Plain sockets block with the kernel's timeouts (no poll() per call): a send that
    the server stops reading must still end, as a timeout."""
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.request()
        stop.wait(WAIT)  # reads nothing of the body

    server = serve(script)
    pieces = (b"x" * (1 << 20) for _ in range(256))  # far more than the socket buffers
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            rawhttp.Client(None, 2, 0.2).request("PUT", server.url(), {}, body=pieces)
    finally:
        stop.set()
    assert time.monotonic() - started < WAIT


def test_a_stalled_send_times_out_after_one_timeout_not_one_per_part_sent(serve):
    """The kernel's send timeout is per call, and a call that times out having sent a
    part returns it: `sendall` then waited the whole timeout again (3x seen on loopback)."""
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.request()
        stop.wait(WAIT)  # reads nothing of the body

    server = serve(script)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            rawhttp.Client(None, 2, 1).request("PUT", server.url(), {}, body=b"x" * (16 << 20))
    finally:
        stop.set()
    assert time.monotonic() - started < 1.9  # one timeout (1 s), not two or more


def test_an_https_answer_that_never_comes_times_out(serve, tls, tls_files):
    """TLS keeps Python's own timeout: with the kernel's, `ssl` would wait forever."""
    context, _ = tls
    ca = ssl.create_default_context(cafile=tls_files[0])
    stop = threading.Event()

    def script(peer: Peer) -> None:
        peer.request()
        stop.wait(WAIT)  # never answers

    server = serve(script, tls=context)
    raised: list[BaseException] = []

    def ask() -> None:
        try:
            rawhttp.Client(ca, 2, 0.2).request("GET", server.url(), {})
        except BaseException as exc:  # the test inspects it
            raised.append(exc)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(WAIT / 2)
    stop.set()
    assert not asker.is_alive(), "the request did not time out"
    assert raised and isinstance(raised[0], TimeoutError)


# ---- headers ------------------------------------------------------------------------


def test_header_names_are_lower_case_and_values_kept_as_iso_8859_1(serve, client):
    reply = (
        b"HTTP/1.1 206 Partial Content\r\n"
        b"Content-Length: 2\r\n"
        b'ETag: "d41d8cd9"\r\n'
        b"X-Amz-Meta-Mixed-Case: Value With  Spaces\r\n"
        b"Location: http://h:1/p?q=a:b\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"Content-Disposition: attachment; filename=\xc3\xa9t\xc3\xa9\r\n"
        b"X-Empty:\r\n"
        b"X-Padded: \t padded value \t\r\n"
        b"Vary: Origin\r\n"
        b"Vary: Accept-Encoding\r\n"
        b"\r\nok"
    )
    server = serve(answers(reply))
    answer = client.request("GET", server.url(), {})
    assert (answer.status, answer.reason, answer.body) == (206, "Partial Content", b"ok")
    assert answer.headers == {
        "content-length": "2",
        "etag": '"d41d8cd9"',
        "x-amz-meta-mixed-case": "Value With  Spaces",
        "location": "http://h:1/p?q=a:b",
        "x-latin": "café",
        "content-disposition": "attachment; filename=été".encode().decode("latin-1"),
        "x-empty": "",
        "x-padded": "padded value",
        "vary": "Accept-Encoding",  # a repeated header: the last one counts
    }
    # the same bytes as http.client reads them (what s3.py used before rawhttp)
    assert answer.headers["content-disposition"] == http.client.parse_headers(
        io.BytesIO(reply.split(b"\r\n", 1)[1])
    ).get("Content-Disposition")


def test_bare_lf_line_ends_are_read(serve, client):
    server = serve(answers(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok", OK))
    answer = client.request("GET", server.url(), {})
    assert ok(answer) and answer.headers["x-a"] == "b"
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


# ---- threads ------------------------------------------------------------------------


def test_each_thread_has_its_own_connection(serve, client):
    server = serve(answers(OK))
    both = threading.Barrier(2)
    results: list[bool] = []

    def work(name: str) -> None:
        for _ in range(2):
            results.append(ok(client.request("GET", server.url(), {"X-Thread": name})))
            both.wait(WAIT)  # both connections are open at the same time

    threads = [threading.Thread(target=work, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [True] * 4
    assert server.accepts == 2
    seen = sorted(tuple(head.split("X-Thread: ")[1][0] for head in p.heads) for p in server.peers)
    assert seen == [("a", "a"), ("b", "b")]


# ---- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str, str]:
    """(CA file, server certificate, server key) made for this test run."""
    directory = tmp_path_factory.mktemp("tls")
    try:
        return _certificates_with_cryptography(directory)
    except ImportError:
        openssl = shutil.which("openssl")
        if not openssl:
            pytest.skip("neither the cryptography package nor the openssl command")
        cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
                *("-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, cert, key


def _certificates_with_cryptography(directory: Path) -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: str, key, signer) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    ca = (
        build("rawhttp test CA", "rawhttp test CA", ca_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        build("localhost", "rawhttp test CA", key, ca_key)
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = [directory / name for name in ("ca.pem", "cert.pem", "key.pem")]
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture
def tls(tls_files) -> tuple[ssl.SSLContext, rawhttp.Client]:
    """The server's TLS context, and a client trusting the test CA file."""
    ca, cert, key = tls_files
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, rawhttp.Client(ssl.create_default_context(cafile=ca), 2, 5)


def test_https_keeps_alive_and_resends_after_an_idle_close(serve, tls):
    context, client = tls
    dropped = threading.Event()

    def script(peer: Peer) -> None:
        if peer.index == 0:
            for _ in range(2):
                peer.request()
                peer.send(OK)
            peer.close()
            dropped.set()
        else:
            answers(OK)(peer)

    server = serve(script, tls=context)
    for _ in range(2):
        assert ok(client.request("GET", server.url(), {}))
    assert dropped.wait(WAIT)
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 2
    assert ok(client.request("GET", server.url(host="localhost"), {}))  # a DNS name in SAN
    assert server.accepts == 3


def test_https_with_an_unknown_ca_is_a_tls_error_not_unreachable(serve, tls):
    context, _ = tls
    server = serve(answers(OK), tls=context)
    with pytest.raises(ssl.SSLCertVerificationError):
        rawhttp.Client(ssl.create_default_context(), 2, 5).request("GET", server.url(), {})


# ---- the raw path of S3.head / S3.get on the real source MinIO --------------------------


@pytest.fixture
def minio(stack, buckets):
    from replicator import config
    from replicator.s3 import S3
    from tests.conftest import base_env

    bucket = buckets("source")
    settings = config.load({**base_env(stack), "BUCKET_PAIR": f"minio/{bucket}:aws/unused"})
    return bucket, S3(settings.source, settings, "source")


def test_s3_head_get_and_read_carry_every_kept_header_and_the_metadata(stack, minio):
    from replicator.s3 import Head

    bucket, s3 = minio
    key = "ünï cødé/😀 a+b%20.txt"
    client = stack.source.client()
    put = client.put_object(
        Bucket=bucket,
        Key=key,
        Body=b"hello raw",
        ContentType="text/plain; charset=utf-8",
        ContentEncoding="gzip",
        ContentDisposition='attachment; filename="a b.txt"',
        CacheControl="max-age=60, private",
        ContentLanguage="fr-CA",
        Expires=dt.datetime(2031, 10, 21, 7, 28, tzinfo=dt.UTC),
        Metadata={"Color": "Red", "Spaced-Out": "a  b", "Quoted": '"x": y, =?z?='},
        Tagging="a=1&b=2",
    )
    seen = client.head_object(Bucket=bucket, Key=key)
    expected = Head(
        etag=put["ETag"].strip('"'),
        size=9,
        mtime=seen["LastModified"].isoformat(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Encoding": "gzip",
            "Content-Disposition": 'attachment; filename="a b.txt"',
            "Cache-Control": "max-age=60, private",
            "Content-Language": "fr-CA",
            "Expires": "Tue, 21 Oct 2031 07:28:00 GMT",
        },
        metadata={"color": "Red", "spaced-out": "a  b", "quoted": '"x": y, =?z?='},
        tag_count=2,
    )
    assert s3.head(bucket, key) == expected
    assert s3.get(bucket, key, limit=9) == (expected, b"hello raw")
    assert s3.get(bucket, key, limit=8) == (expected, None)  # left unread, then closed
    assert s3.read(bucket, key, expected.etag, 2, 5) == b"llo "
    assert s3.get(bucket, key, limit=100)[1] == b"hello raw"


def test_s3_head_reads_a_raw_utf8_content_disposition_as_text(stack, minio):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    bucket, s3 = minio
    source = stack.source
    kept = {"Content-Disposition": "inline; filename=voilà", "Content-Language": "Å"}
    request = AWSRequest("PUT", f"{source.url}/{bucket}/utf8", data=b"abc", headers=kept)
    S3SigV4Auth(Credentials(source.access_key, source.secret_key), "s3", "us-east-1").add_auth(
        request
    )
    url = urlsplit(request.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=WAIT)
    try:  # http.client sends bytes values as they are: here the UTF-8 botocore signed
        connection.putrequest("PUT", url.path, skip_accept_encoding=True)
        for name, value in request.headers.items():
            connection.putheader(name, value.encode() if isinstance(value, str) else value)
        connection.putheader("Content-Length", "3")
        connection.endheaders(b"abc")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    headers = s3.head(bucket, "utf8").headers  # the raw UTF-8 bytes, decoded as text
    assert {n: headers[n] for n in kept} == kept


# ---- bugs a hostile review found (each test failed before its fix) ----------------------


def test_a_value_ending_in_a_utf8_a_grave_keeps_every_byte(serve, client):
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b"Content-Disposition: inline; filename=voil\xc3\xa0\r\n"
        b"Content-Language: \xc3\x85\r\n\r\nok"
    )
    server = serve(answers(reply))
    headers = client.request("GET", server.url(), {}).headers
    assert headers["content-disposition"].encode("latin-1") == b"inline; filename=voil\xc3\xa0"
    assert headers["content-language"].encode("latin-1") == b"\xc3\x85"


@pytest.mark.parametrize("length", [2**62, 10**20])
def test_an_absurd_content_length_is_a_protocol_error(serve, client, length):
    reply = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n<Error/>" % length

    def script(peer: Peer) -> None:
        peer.request()
        peer.send(reply)
        peer.close()

    server = serve(script)
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})


def test_a_status_code_with_a_superscript_digit_is_a_protocol_error(serve, client):
    server = serve(answers(b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n"))
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})


def test_a_status_line_without_a_reason_phrase_is_read(serve, client):
    server = serve(answers(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"))
    answer = client.request("GET", server.url(), {})
    assert (answer.status, answer.reason, answer.body) == (200, "", b"ok")


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
def test_a_success_without_content_length_above_the_limit_is_not_read_whole(serve, client, framing):
    body = b"z" * 100_000
    if framing == "chunked":
        reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        reply += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body

    def script(peer: Peer) -> None:
        peer.request()
        peer.send(reply)
        peer.close()

    server = serve(script)
    assert client.request("GET", server.url(), {}, limit=1000).body is None


def test_a_url_with_a_query_and_no_path_asks_for_the_root(serve, client):
    server = serve(answers(OK))
    client.request("GET", urlsplit(f"http://127.0.0.1:{server.port}?list-type=2"), {})
    assert server.heads[0].startswith("GET /?list-type=2 HTTP/1.1\r\n")


def test_a_chunk_longer_than_its_size_is_a_protocol_error(serve, client):
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX5\r\nhello\r\n0\r\n\r\n"
    )
    server = serve(answers(reply))
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})


def test_an_endless_header_section_is_a_protocol_error(serve, client):
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(40_000))  # ~4.5 MB
    server = serve(answers(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(rawhttp.ProtocolError):
        client.request("GET", server.url(), {})


def test_a_network_that_cannot_be_reached_is_unreachable(client):
    # Linux refuses a TCP connect to a broadcast address with ENETUNREACH, at once
    with pytest.raises(rawhttp.Unreachable):
        client.request("GET", urlsplit("http://255.255.255.255:80/b/k"), {})


# ---- streamed bodies (a part too large to hold) --------------------------------------


def test_a_streamed_body_comes_in_pieces_and_the_connection_is_kept_once_read_whole(serve, client):
    data = bytes(range(256)) * 9000  # above one piece
    reply = b"HTTP/1.1 206 Partial\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    server = serve(answers(reply, OK))
    answer, pieces = client.pieces(server.url(), {"Range": "bytes=0-1"}, len(data))
    assert answer.status == 206 and answer.body is None
    got = list(pieces)
    assert b"".join(got) == data and len(got) > 1
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 1


def test_a_stream_left_half_read_closes_its_connection(serve, client):
    data = b"x" * (3 * 1024 * 1024)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    server = serve(answers(reply, OK))
    _, pieces = client.pieces(server.url(), {}, len(data))
    next(pieces)
    pieces.close()  # the caller gave up (its upload failed)
    assert ok(client.request("GET", server.url(), {}))
    assert server.accepts == 2


def test_a_stream_answered_otherwise_comes_back_whole_without_pieces(serve, client):
    error = b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 7\r\n\r\n<Error>"
    server = serve(answers(error))
    answer, pieces = client.pieces(server.url(), {}, 10)
    assert (answer.status, answer.body, list(pieces)) == (412, b"<Error>", [])


def test_a_stream_cut_short_is_a_protocol_error(serve, client):
    def script(peer: Peer) -> None:
        peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        peer.close()

    server = serve(script)
    _, pieces = client.pieces(server.url(), {}, 10)
    with pytest.raises(rawhttp.ProtocolError):
        list(pieces)


def test_a_streamed_request_body_is_sent_whole_on_a_fresh_connection(serve, client):
    received: list[bytes] = []

    def script(peer: Peer) -> None:
        while (head := peer.request()) is not None:
            length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
            received.append(peer.file.read(length) if length else b"")
            peer.send(OK)

    server = serve(script)
    assert ok(client.request("GET", server.url(), {"Content-Length": "0"}))
    pieces = (b"%d," % i * 1000 for i in range(50))
    answer = client.request(
        "PUT",
        server.url(),
        {"Content-Length": str(sum(len(b"%d," % i * 1000) for i in range(50)))},
        body=pieces,
    )
    assert ok(answer)
    assert received[1] == b"".join(b"%d," % i * 1000 for i in range(50))
    assert server.accepts == 2  # never sent on a connection the server may have closed
