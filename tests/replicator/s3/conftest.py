"""Scripted loopback servers (plain and TLS) that send exactly the bytes a test gives:
the hostile answers real networks produce, for the S3 layer's own tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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

    def url(self, host: str = "127.0.0.1") -> str:
        """The endpoint URL to give as MINIO_URL / AWS_URL."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}"

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


def answers(*replies: bytes) -> Callable[[Peer], None]:
    """A keep-alive server: its n-th request (on whichever connection) gets replies[n],
    the last reply from then on."""
    count = iter(range(1 << 30))

    def script(peer: Peer) -> None:
        while peer.request() is not None:
            peer.send(replies[min(next(count), len(replies) - 1)])

    return script


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> dict[str, str]:
    """Two private CAs; a server certificate (localhost, 127.0.0.1) signed by the first."""
    directory = tmp_path_factory.mktemp("tls")
    return _certificates(directory)


def _certificates(directory: Path) -> dict[str, str]:
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
        build("s3 test CA", "s3 test CA", ca_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        build("localhost", "s3 test CA", key, ca_key)
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (
        build("other test CA", "other test CA", other_key, other_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), True)
        .sign(other_key, hashes.SHA256())
    )
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "other_ca": other.public_bytes(serialization.Encoding.PEM),
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    for name, data in files.items():
        (directory / f"{name}.pem").write_bytes(data)
    return {name: str(directory / f"{name}.pem") for name in files}
