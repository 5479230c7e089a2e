"""Private CAs, per endpoint (issue 25, design 10): every command over TLS.

A TLS source MinIO whose certificate comes from a private CA given to our commands only
by MINIO_CA_BUNDLE, and a TLS target MinIO whose CA is only in the "system" store: a
bundle (the machine's roots plus that CA) given by SSL_CERT_FILE, as an enterprise image
with its CA installed has. `work`, `backfill --direct`, `check`, `reconcile` and
`listen --mode stream` must copy (or pass) with MINIO_CA_BUNDLE set, and refuse without it
with an error that names the certificate problem and the variable to set.

Both CAs are made here by the `openssl` CLI (deploy/local/tls.py). The servers answer on
https://127.0.0.1:<port> (the certificates carry IP:127.0.0.1 and DNS:localhost).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stack as local_stack
import tls
from proxy import ForwardProxy

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import (
    assert_identical,
    publish,
    ready,
    stream_connected,
    stream_delivered,
    target_keys,
    upload,
)

pytestmark = pytest.mark.integration

CERTIFICATE = re.compile(r"certificate", re.IGNORECASE)  # OpenSSL's and Go's words alike
# Names in the certificates too, known only to the forward proxy (see test_proxy.py).
SOURCE_NAME, TARGET_NAME = "mirror-tls-src.test", "mirror-tls-dst.test"


@dataclass
class TlsStack:
    source: local_stack.MinioServer
    target: local_stack.MinioServer
    source_ca: tls.CertificateAuthority
    target_ca: tls.CertificateAuthority
    system: Path  # SSL_CERT_FILE: the machine's roots plus the target's CA
    made: list[tuple[local_stack.MinioServer, str]] = field(default_factory=list)

    def bucket(self, side: str) -> str:
        server = getattr(self, side)
        name = f"tls-{side[:3]}-{secrets.token_hex(4)}"
        server.client().create_bucket(Bucket=name)
        self.made.append((server, name))
        return name

    def env(self, src: str, dst: str, **extra: str | None) -> dict[str, str | None]:
        """The variables of one pair over TLS, with MINIO_CA_BUNDLE and SSL_CERT_FILE."""
        return {
            "MINIO_URL": self.source.url,
            "MINIO_ACCESS_KEY": self.source.access_key,
            "MINIO_SECRET_KEY": self.source.secret_key,
            "AWS_URL": self.target.url,
            "AWS_ACCESS_KEY": self.target.access_key,
            "AWS_SECRET_KEY": self.target.secret_key,
            "AWS_REGION": "us-east-1",
            "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
            "MINIO_CA_BUNDLE": str(self.source_ca.cert),
            "SSL_CERT_FILE": str(self.system),
            **extra,
        }


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory) -> Iterator[TlsStack]:
    root = tmp_path_factory.mktemp("tls")
    source_ca = tls.CertificateAuthority(root, "source-ca")
    target_ca = tls.CertificateAuthority(root, "target-ca")
    hosts = ["127.0.0.1", "localhost"]
    source = local_stack.MinioServer(
        "tls-source",
        root,
        certs_dir=source_ca.issue(root / "source-certs", [*hosts, SOURCE_NAME]),
        ca_file=source_ca.cert,
    )
    target = local_stack.MinioServer(
        "tls-target",
        root,
        certs_dir=target_ca.issue(root / "target-certs", [*hosts, TARGET_NAME]),
        ca_file=target_ca.cert,
    )
    system = tls.system_store(root / "system-roots.pem", target_ca)
    made = TlsStack(source, target, source_ca, target_ca, system)
    try:
        source.start()
        target.start()
        yield made
        for server, name in made.made:
            local_stack.remove_bucket(server.client(), name)
    finally:
        source.stop()
        target.stop()


def objects() -> dict[str, tuple[bytes, str, dict[str, str]]]:
    """A few small objects and one multipart one (above the 16 MiB threshold)."""
    found = {f"small/{i}.txt": (os.urandom(100 * i), "text/plain", {"i": str(i)}) for i in range(4)}
    found["big/twenty.bin"] = (os.urandom(20 * 1024 * 1024), "application/octet-stream", {})
    return found


def names_the_problem(text: str, variable: str) -> None:
    """The refusal names the certificate problem and the variable that fixes it."""
    assert CERTIFICATE.search(text), f"no certificate error in:\n{text[-3000:]}"
    assert variable in text, f"{variable} not named in:\n{text[-3000:]}"


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


# ---- work ------------------------------------------------------------------------------


def test_work_copies_over_tls_with_minio_ca_bundle(tls_stack, spawn_cli, amqp, rabbit):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)
    worker = spawn_cli("work", **tls_stack.env(src, dst, MIRROR_MAX_WORKERS="4"))
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")

    publish(rabbit, *[Task(bucket=src, key=key, origin="backfill").to_json() for key in wanted])

    local_stack.wait_until(
        lambda: dead_letters(rabbit) or set(wanted) <= target_keys(tls_stack.target.client(), dst),
        180,
        "every object on the TLS target or a dead letter",
    )
    assert [h.get("x-mirror-error") for h, _ in dead_letters(rabbit)] == []
    assert_identical(tls_stack.target.client(), dst, wanted)
    no_traceback(worker.log.read_text())


def test_work_without_minio_ca_bundle_names_the_certificate_problem(
    tls_stack, spawn_cli, amqp, rabbit
):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    tls_stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")
    worker = spawn_cli("work", **tls_stack.env(src, dst, MINIO_CA_BUNDLE=None))

    def refused() -> bool:
        """Named, or given up on: dead-lettered, or the worker exited."""
        text = worker.log.read_text(errors="replace")
        named = CERTIFICATE.search(text) and "MINIO_CA_BUNDLE" in text
        return bool(named or dead_letters(rabbit) or worker.popen.poll() is not None)

    if worker.popen.poll() is None:  # a worker that checks at start may have exited
        publish(rabbit, Task(bucket=src, key="k", origin="backfill").to_json())
    with contextlib.suppress(TimeoutError):  # the assertion below shows what was said
        local_stack.wait_until(refused, 120, "a certificate error naming MINIO_CA_BUNDLE")
    text = worker.log.read_text(errors="replace")
    text += "".join(str(h.get("x-mirror-error")) for h, _ in dead_letters(rabbit))
    names_the_problem(text, "MINIO_CA_BUNDLE")
    assert "k" not in target_keys(tls_stack.target.client(), dst)


# ---- backfill --direct -----------------------------------------------------------------


def closed_rabbit() -> str:
    return f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"


def test_backfill_direct_copies_over_tls_with_minio_ca_bundle(tls_stack, run_cli):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)

    done = run_cli(
        "backfill", "--direct", env=tls_stack.env(src, dst, RABBITMQ_URL=closed_rabbit())
    )

    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert f"copied {len(wanted)}" in out, out[-3000:]
    assert_identical(tls_stack.target.client(), dst, wanted)
    no_traceback(out)


def test_backfill_direct_without_minio_ca_bundle_names_the_certificate_problem(tls_stack, run_cli):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    tls_stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")

    done = run_cli(
        "backfill",
        "--direct",
        env=tls_stack.env(src, dst, MINIO_CA_BUNDLE=None, RABBITMQ_URL=closed_rabbit()),
        timeout=240,
    )

    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    names_the_problem(out, "MINIO_CA_BUNDLE")
    assert target_keys(tls_stack.target.client(), dst) == set()


# ---- check -----------------------------------------------------------------------------


def test_check_passes_over_tls_with_minio_ca_bundle(tls_stack, run_cli, rabbit):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    tls_stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")

    done = run_cli("check", env=tls_stack.env(src, dst, RABBITMQ_URL=rabbit.url), timeout=120)

    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert " FAIL " not in out, out[-3000:]
    no_traceback(out)


def test_check_without_minio_ca_bundle_names_the_certificate_problem(tls_stack, run_cli, rabbit):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")

    done = run_cli(
        "check",
        env=tls_stack.env(src, dst, MINIO_CA_BUNDLE=None, RABBITMQ_URL=rabbit.url),
        timeout=120,
    )

    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    names_the_problem(out, "MINIO_CA_BUNDLE")


def test_check_without_the_target_ca_names_aws_ca_bundle(tls_stack, run_cli, rabbit):
    """The target side's variable is AWS_CA_BUNDLE (the AWS convention)."""
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")

    done = run_cli(
        "check",
        env=tls_stack.env(src, dst, SSL_CERT_FILE=None, RABBITMQ_URL=rabbit.url),
        timeout=120,
    )

    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    names_the_problem(out, "AWS_CA_BUNDLE")


def test_aws_ca_bundle_trusts_the_target_without_the_system_store(tls_stack, run_cli, rabbit):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)
    env = tls_stack.env(src, dst, SSL_CERT_FILE=None, AWS_CA_BUNDLE=str(tls_stack.target_ca.cert))

    check = run_cli("check", env={**env, "RABBITMQ_URL": rabbit.url}, timeout=120)
    backfill = run_cli("backfill", "--direct", env={**env, "RABBITMQ_URL": closed_rabbit()})

    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
    assert backfill.returncode == 0, (backfill.stdout + backfill.stderr)[-3000:]
    assert_identical(tls_stack.target.client(), dst, wanted)


def test_mirror_ca_bundle_adds_to_the_system_store_for_both_sides(tls_stack, run_cli, rabbit):
    """MIRROR_CA_BUNDLE (the source's CA) adds: the target's CA, only in the system store
    (SSL_CERT_FILE), stays trusted."""
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)
    env = tls_stack.env(
        src, dst, MINIO_CA_BUNDLE=None, MIRROR_CA_BUNDLE=str(tls_stack.source_ca.cert)
    )

    check = run_cli("check", env={**env, "RABBITMQ_URL": rabbit.url}, timeout=120)
    backfill = run_cli("backfill", "--direct", env={**env, "RABBITMQ_URL": closed_rabbit()})

    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
    assert backfill.returncode == 0, (backfill.stdout + backfill.stderr)[-3000:]
    assert_identical(tls_stack.target.client(), dst, wanted)


# ---- reconcile (mc) --------------------------------------------------------------------


def test_reconcile_copies_over_tls_with_minio_ca_bundle(tls_stack, run_cli):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)

    done = run_cli("reconcile", "--json", env=tls_stack.env(src, dst), timeout=300)

    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert_identical(tls_stack.target.client(), dst, wanted)
    no_traceback(out)


def test_reconcile_without_minio_ca_bundle_names_the_certificate_problem(tls_stack, run_cli):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    tls_stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")

    done = run_cli("reconcile", "--json", env=tls_stack.env(src, dst, MINIO_CA_BUNDLE=None))

    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    names_the_problem(out, "MINIO_CA_BUNDLE")
    assert target_keys(tls_stack.target.client(), dst) == set()


# ---- listen --mode stream --------------------------------------------------------------


def test_stream_listener_copies_over_tls_with_minio_ca_bundle(tls_stack, spawn_cli, amqp):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    env = tls_stack.env(src, dst, MIRROR_EXCLUDE="*.pad")
    listener = spawn_cli("listen", "--mode", "stream", **env)
    worker = spawn_cli("work", **env, MIRROR_MAX_WORKERS="4")
    source, target = tls_stack.source.client(), tls_stack.target.client()
    stream_connected(source, target, src, dst, 120, listener, worker)
    wanted = objects()
    upload(source, src, wanted)
    stream_delivered(source, target, src, dst, wanted, 180)
    assert_identical(target, dst, wanted, ignore="probe/")


def test_stream_listener_without_minio_ca_bundle_names_the_certificate_problem(
    tls_stack, spawn_cli, amqp
):
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    listener = spawn_cli(
        "listen", "--mode", "stream", **tls_stack.env(src, dst, MINIO_CA_BUNDLE=None)
    )

    def refused() -> bool:
        """Named, or given up on (exited), or failing again without naming it."""
        text = listener.log.read_text(errors="replace")
        named = CERTIFICATE.search(text) and "MINIO_CA_BUNDLE" in text
        again = len(CERTIFICATE.findall(text)) >= 2
        return bool(named or again or listener.popen.poll() is not None)

    with contextlib.suppress(TimeoutError):  # the assertion below shows what was said
        local_stack.wait_until(refused, 90, "a certificate error naming MINIO_CA_BUNDLE")
    names_the_problem(listener.log.read_text(errors="replace"), "MINIO_CA_BUNDLE")


def test_https_proxy_tunnels_every_command_over_tls(tls_stack, run_cli, rabbit, tmp_path):
    """HTTPS_PROXY: CONNECT tunnels to both endpoints, named so that only the proxy
    resolves them (a connection that skips the proxy fails), for check, backfill --direct
    and reconcile; the private CAs still verify through the tunnel."""
    src, dst = tls_stack.bucket("source"), tls_stack.bucket("target")
    wanted = objects()
    upload(tls_stack.source.client(), src, wanted)
    proxy = ForwardProxy(
        tmp_path / "proxy",
        {SOURCE_NAME: tls_stack.source.port, TARGET_NAME: tls_stack.target.port},
    ).start()
    env = tls_stack.env(
        src,
        dst,
        MINIO_URL=f"https://{SOURCE_NAME}:{tls_stack.source.port}",
        AWS_URL=f"https://{TARGET_NAME}:{tls_stack.target.port}",
        HTTPS_PROXY=proxy.url,
    )
    try:
        check = run_cli("check", env={**env, "RABBITMQ_URL": rabbit.url}, timeout=120)
        backfill = run_cli("backfill", "--direct", env={**env, "RABBITMQ_URL": closed_rabbit()})
        tunnels = {s.host for s in proxy.seen() if s.method == "CONNECT"}
        proxy.clear()
        reconcile = run_cli("reconcile", "--json", env=env, timeout=300)
        by_mc = {s.host for s in proxy.seen() if s.method == "CONNECT"}
    finally:
        proxy.stop()

    for done in (check, backfill, reconcile):
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert_identical(tls_stack.target.client(), dst, wanted)
    assert tunnels == {SOURCE_NAME, TARGET_NAME}
    assert by_mc == {SOURCE_NAME, TARGET_NAME}


def test_the_tls_fixture_serves_tls_only_with_the_private_ca(tls_stack):
    """The stack's own guard: both servers answer TLS, trusted by their CA and not by the
    machine's roots (so the tests above cannot pass by accident)."""
    import ssl
    import urllib.request

    for server, ca in (
        (tls_stack.source, tls_stack.source_ca),
        (tls_stack.target, tls_stack.target_ca),
    ):
        url = f"{server.url}/minio/health/live"
        assert url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(ca.cert))
        with urllib.request.urlopen(url, timeout=10, context=trusting) as answer:
            assert answer.status == 200
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())
