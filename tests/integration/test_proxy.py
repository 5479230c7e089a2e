"""An egress proxy (issue 25, design 10): HTTP(S)_PROXY and NO_PROXY for every command.

The endpoints are addressed by names that only the proxy resolves
(`mirror-src-<id>.test`, `mirror-dst-<id>.test`, mapped by deploy/local/proxy.py to the
session's source and target MinIO): a request that does not go through the proxy fails
to resolve, so a command that succeeds sent every request through it, and the proxy's
log shows them. Why names and not 127.0.0.1: Go's net/http (mc) never proxies
`localhost` or a loopback address, whatever NO_PROXY says, while Python's urllib does
unless NO_PROXY names them; a name (or the machine's non-loopback address) is proxied by
both. For NO_PROXY, the source's name is also put in /etc/hosts (127.0.0.1, removed
after): named by NO_PROXY, the source is reached directly and its requests are absent
from the proxy's log, while the target's still go through it.

Routes: "proxy" (HTTP_PROXY/HTTPS_PROXY, nothing exempt), "no_proxy" (the same plus
NO_PROXY=<source name>), "lower-case" (http_proxy/https_proxy/no_proxy, the source exempt).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import stack as local_stack
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

RUN = secrets.token_hex(3)
SOURCE_NAME = f"mirror-src-{RUN}.test"
TARGET_NAME = f"mirror-dst-{RUN}.test"
ROUTES = ["proxy", "no_proxy", "lower-case"]
HOSTS = Path("/etc/hosts")


@pytest.fixture
def source_in_etc_hosts() -> Iterator[str]:
    """SOURCE_NAME -> 127.0.0.1 in /etc/hosts for one test (root; the line is removed
    after, other lines are left as they are)."""
    line = f"127.0.0.1 {SOURCE_NAME}  # minio-s3-mirror test_proxy {os.getpid()}\n"
    with open(HOSTS, "a") as hosts:
        hosts.write(line)
    try:
        yield SOURCE_NAME
    finally:
        kept = [kept for kept in HOSTS.read_text().splitlines(True) if kept != line]
        HOSTS.write_text("".join(kept))


@pytest.fixture
def forward_proxy(stack, tmp_path) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(
        tmp_path / "proxy", {SOURCE_NAME: stack.source.port, TARGET_NAME: stack.target.port}
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def route(request) -> str:
    """The route under test; the exempt source is resolvable (/etc/hosts) only when
    NO_PROXY names it, so on "proxy" a request that skips the proxy cannot succeed."""
    if request.param != "proxy":
        request.getfixturevalue("source_in_etc_hosts")
    return request.param


def proxy_env(stack, proxy: ForwardProxy, route: str, src: str, dst: str, **extra) -> dict:
    """The pair's variables with the endpoints named as only the proxy knows them."""
    env = {
        "MINIO_URL": f"http://{SOURCE_NAME}:{stack.source.port}",
        "AWS_URL": f"http://{TARGET_NAME}:{stack.target.port}",
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
    }
    if route == "lower-case":
        env.update(http_proxy=proxy.url, https_proxy=proxy.url, no_proxy=SOURCE_NAME)
    else:
        env.update(HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url)
        if route == "no_proxy":
            env["NO_PROXY"] = SOURCE_NAME
    return {**env, **extra}


def through_the_proxy(proxy: ForwardProxy, route: str) -> None:
    """The target's requests went through the proxy; the source's too unless exempt."""
    to_source, to_target = proxy.seen(SOURCE_NAME), proxy.seen(TARGET_NAME)
    assert to_target, f"no request to the target through the proxy: {proxy.seen()[:20]}"
    if route == "proxy":
        assert to_source, f"no request to the source through the proxy: {proxy.seen()[:20]}"
    else:
        assert to_source == [], f"NO_PROXY names the source, yet: {to_source[:10]}"


def objects() -> dict[str, tuple[bytes, str, dict[str, str]]]:
    found = {f"small/{i}.txt": (os.urandom(100 * i), "text/plain", {"i": str(i)}) for i in range(4)}
    found["big/twenty.bin"] = (os.urandom(20 * 1024 * 1024), "application/octet-stream", {})
    return found


def output(done) -> str:
    return (done.stdout + done.stderr)[-3000:]


def test_the_names_resolve_only_through_the_proxy(stack, forward_proxy):
    """The fixture's own guard: without the proxy the target's name does not resolve (so
    a command that succeeds used the proxy), and the proxy forwards to the right server."""
    import urllib.request

    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(TARGET_NAME, stack.target.port)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": forward_proxy.url}))
    url = f"http://{TARGET_NAME}:{stack.target.port}/minio/health/live"
    with opener.open(url, timeout=10) as answer:
        assert answer.status == 200
    assert [s.path for s in forward_proxy.seen(TARGET_NAME)] == ["/minio/health/live"]


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_work_goes_through_the_proxy(stack, route, forward_proxy, buckets, spawn_cli, amqp, rabbit):
    src, dst = buckets("source"), buckets("target")
    wanted = objects()
    upload(stack.source.client(), src, wanted)
    worker = spawn_cli(
        "work", **proxy_env(stack, forward_proxy, route, src, dst, MIRROR_MAX_WORKERS="4")
    )
    local_stack.wait_until(lambda: ready(worker), 60, "the worker consuming")

    publish(rabbit, *[Task(bucket=src, key=key, origin="backfill").to_json() for key in wanted])

    local_stack.wait_until(
        lambda: dead_letters(rabbit) or set(wanted) <= target_keys(stack.target.client(), dst),
        120,
        "every object on the target or a dead letter",
    )
    assert [h.get("x-mirror-error") for h, _ in dead_letters(rabbit)] == []
    assert_identical(stack.target.client(), dst, wanted)
    through_the_proxy(forward_proxy, route)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_backfill_direct_goes_through_the_proxy(stack, route, forward_proxy, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    wanted = objects()
    upload(stack.source.client(), src, wanted)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    done = run_cli(
        "backfill",
        "--direct",
        env=proxy_env(stack, forward_proxy, route, src, dst, RABBITMQ_URL=closed),
        timeout=240,
    )

    assert done.returncode == 0, output(done)
    assert_identical(stack.target.client(), dst, wanted)
    through_the_proxy(forward_proxy, route)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_check_goes_through_the_proxy(stack, route, forward_proxy, buckets, run_cli, rabbit):
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"x")

    done = run_cli(
        "check",
        env=proxy_env(stack, forward_proxy, route, src, dst, RABBITMQ_URL=rabbit.url),
        timeout=120,
    )

    assert done.returncode == 0, output(done)
    assert " FAIL " not in done.stdout, output(done)
    through_the_proxy(forward_proxy, route)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_reconcile_goes_through_the_proxy(stack, route, forward_proxy, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    wanted = objects()
    upload(stack.source.client(), src, wanted)

    done = run_cli(
        "reconcile",
        "--json",
        env=proxy_env(stack, forward_proxy, route, src, dst),
        timeout=300,
    )

    assert done.returncode == 0, output(done)
    assert_identical(stack.target.client(), dst, wanted)
    through_the_proxy(forward_proxy, route)


@pytest.mark.parametrize("route", ROUTES, indirect=True)
def test_stream_listener_goes_through_the_proxy(
    stack, route, forward_proxy, buckets, spawn_cli, amqp
):
    src, dst = buckets("source"), buckets("target")
    env = proxy_env(stack, forward_proxy, route, src, dst, MIRROR_EXCLUDE="*.pad")
    listener = spawn_cli("listen", "--mode", "stream", **env)
    worker = spawn_cli("work", **env, MIRROR_MAX_WORKERS="4")
    source, target = stack.source.client(), stack.target.client()
    stream_connected(source, target, src, dst, 90, listener, worker)
    wanted = {k: v for k, v in objects().items() if k.startswith("small/")}
    upload(source, src, wanted)
    stream_delivered(source, target, src, dst, wanted, 120)
    assert_identical(target, dst, wanted, ignore="probe/")
    through_the_proxy(forward_proxy, route)
    if route == "proxy":  # the listener's own long request is among them
        listening = [s for s in forward_proxy.seen(SOURCE_NAME) if "events=" in s.path]
        assert listening, forward_proxy.seen(SOURCE_NAME)[:20]
