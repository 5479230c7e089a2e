"""A hostile source (issue 25, design 7 rule 8): every copy is verified end to end.

The fault proxy (deploy/local/fault_proxy.py) stands in front of the source MinIO and,
for the keys of one case (`add_rule("<case>/", "<case>", methods="GET,HEAD")`), breaks
the framing of its answers: a short body, no Content-Length, bad chunks, two conflicting
Content-Lengths, a forged answer after the body, a flipped bit, a dripped header block,
endless `100 Continue`. Everything else is forwarded byte for byte (signatures verify).

The real `work` process copies through it. For each case: the target keeps the previous
content of a key it had (never 0 bytes, never short or changed bytes) and gets nothing for
a key it lacked, the task is dead-lettered with a reason naming the source, no forged
object or metadata lands anywhere, and the healthy keys published after the hostile ones
all land, identical. A stalled answer is given up within the read timeout
(MIRROR_READ_TIMEOUT, set to READ_TIMEOUT_S here), measured at the proxy.

The first tests check the fixture itself with a raw socket: the bytes on the wire are
exactly the ones each case promises.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest
import stack as local_stack
from fault_proxy import (
    CONFLICTING_SHORTFALL,
    CONTINUE,
    FLIPPED_BIT,
    FORGED_BODY,
    FORGED_META,
    FaultProxy,
)

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import pair_env, publish, target_keys, wait_for_keys

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 3  # MIRROR_READ_TIMEOUT of the workers started here
# A stalled answer (dripped header block, endless 1xx) must be given up within the read
# timeout; the margin is for a loaded 2-core machine, not for a slower design.
STALL_BOUND_S = READ_TIMEOUT_S + 12
TIERS = "1,2"  # MIRROR_RETRY_DELAYS: two short tiers, so a failing key reaches the DLQ soon
# From the first publish until every hostile task is settled (dead-lettered, or copied):
# in-process tries and two tiers, each try up to a read timeout, on a shared machine.
SETTLE_S = 240
HEALTHY = [f"healthy/{i:02d}.bin" for i in range(40)]  # more than one prefetch window
SIZE = 100 * 1024 + 7  # hostile objects: a single PUT, several TCP segments, odd length

FRAMING = ["short", "no_length", "bad_chunks", "two_lengths", "flip_bit"]
STALLS = ["drip", "endless_1xx"]


# ---- helpers -------------------------------------------------------------------------


@pytest.fixture
def clean_queues(rabbit) -> Iterator[None]:
    """Leave no task of these tests in any queue (retry tiers included) for later tests.
    Requested first, so it is torn down after the workers have stopped."""
    yield
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        for name in rabbit.queues():
            if name.startswith("minio-s3-mirror"):
                channel.queue_purge(name)
    finally:
        connection.close()


@pytest.fixture
def front(notifying) -> Iterator[FaultProxy]:
    """The hostile front of the source MinIO the workers read from. Requested after
    `procs`, so it stops first: a stalled answer ends before the worker is stopped."""
    proxy = FaultProxy(notifying.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def raw_front(stack) -> Iterator[FaultProxy]:
    """A hostile front of the plain source MinIO, for the fixture's own tests."""
    proxy = FaultProxy(stack.source.url).start()
    yield proxy
    proxy.stop()


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    """The raw bytes of a request for a presigned URL (only its Host is signed)."""
    parts = urlsplit(url)
    lines = [f"{method} {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def raw(
    url: str, method: str = "GET", *, headers: dict[str, str] | None = None, idle: float = 2.0
) -> tuple[bytes, bool]:
    """Send one request (a presigned URL) on a raw socket; every byte that comes back
    until the server closes (True) or stays silent for `idle` seconds (False)."""
    with connect(url, idle) as sock:
        sock.sendall(request(url, method, headers))
        data = b""
        while True:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                return data, False
            if not piece:
                return data, True
            data += piece


def split_answer(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers in order, the rest) of the first answer in `data`."""
    block, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete header block in {data[:200]!r}"
    status, *lines = block.decode("latin-1").split("\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]
    return status, headers, rest


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def presign(client, bucket: str, key: str, method: str = "GET") -> str:
    operation = "head_object" if method == "HEAD" else "get_object"
    return client.generate_presigned_url(
        operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=600, HttpMethod=method
    )


def etag(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def reason_of(headers: dict) -> str:
    value = headers.get("x-mirror-error", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def parked(rabbit) -> dict[str, dict]:
    """key -> headers of every dead-lettered task."""
    return {json.loads(body)["key"]: headers for headers, body in dead_letters(rabbit)}


def copied(worker) -> set[str]:
    return {r.get("key") for r in worker.outcomes("copied")}


def forged_on_target(target, bucket: str) -> list[str]:
    """Keys on the target holding the forged answer's bytes or metadata."""
    found = []
    for key in sorted(target_keys(target, bucket)):
        got = target.get_object(Bucket=bucket, Key=key)
        body, metadata = got["Body"].read(), got["Metadata"]
        forged = any(metadata.get(k) == v for k, v in FORGED_META.items())
        if body == FORGED_BODY or forged or metadata.get("mirror-source-mtime") == "forged":
            found.append(key)
    return found


def mismatched(source, target, src: str, dst: str, keys) -> list[str]:
    """Keys (present on the target) whose target bytes or user metadata differ from the source."""
    wrong = []
    present = target_keys(target, dst)
    for key in keys:
        if key not in present:
            continue
        want = source.get_object(Bucket=src, Key=key)
        got = target.get_object(Bucket=dst, Key=key)
        user = {k: v for k, v in got["Metadata"].items() if not k.startswith("mirror-")}
        if got["Body"].read() != want["Body"].read() or user != want["Metadata"]:
            wrong.append(key)
    return wrong


# ---- the fixture itself: the exact bytes on the wire ---------------------------------


@pytest.fixture
def fixture_object(stack, buckets, raw_front) -> tuple[object, str, bytes]:
    """(a source client signing for the front, bucket, body) with the body under every
    case's key ("<case>/obj.bin") and "plain/obj.bin"."""
    bucket = buckets("source")
    body = os.urandom(SIZE)
    direct = stack.source.client()
    for case in [*FRAMING, "extra_bytes", *STALLS, "plain"]:
        direct.put_object(Bucket=bucket, Key=f"{case}/obj.bin", Body=body)
        if case != "plain":
            raw_front.add_rule(f"{case}/", case, methods="GET,HEAD")
    return stack.source.client(url=raw_front.url), bucket, body


def test_fixture_forwards_other_keys_unchanged(fixture_object, raw_front):
    client, bucket, body = fixture_object
    got = client.get_object(Bucket=bucket, Key="plain/obj.bin")
    assert got["Body"].read() == body and got["ETag"] == f'"{etag(body)}"'
    data, closed = raw(presign(client, bucket, "plain/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 200 OK" and values(headers, "content-length") == [str(SIZE)]
    assert rest == body and not closed
    # A HEAD of the "short" case is the truthful one.
    assert client.head_object(Bucket=bucket, Key="short/obj.bin")["ContentLength"] == SIZE
    assert raw_front.fault_count("plain/obj.bin") == 0


def test_fixture_short_body_then_a_clean_close(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "short/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 200 OK" and values(headers, "content-length") == [str(SIZE)]
    assert rest == body[: SIZE // 2] and closed
    # A ranged GET (how a worker reads an object it replaces) is cut the same way.
    ranged = {"Range": f"bytes=0-{SIZE - 1}"}
    data, closed = raw(presign(client, bucket, "short/obj.bin"), headers=ranged)
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 206 Partial Content"
    assert values(headers, "content-length") == [str(SIZE)]
    assert rest == body[: SIZE // 2] and closed


def test_fixture_no_length_is_close_delimited_and_cut(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "no_length/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.0 200 OK" and values(headers, "content-length") == []
    assert values(headers, "connection") == ["close"] and values(headers, "etag")
    assert rest == body[: SIZE // 2] and closed
    data, closed = raw(presign(client, bucket, "no_length/obj.bin", "HEAD"), "HEAD")
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.0 200 OK" and values(headers, "content-length") == []
    assert rest == b"" and closed


def test_fixture_bad_chunks_end_without_a_last_chunk(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "bad_chunks/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 200 OK" and values(headers, "content-length") == []
    assert values(headers, "transfer-encoding") == ["chunked"]
    half = body[: SIZE // 2]
    assert rest == b"%x\r\n%s\r\n" % (len(half), half) and closed
    data, closed = raw(presign(client, bucket, "bad_chunks/obj.bin", "HEAD"), "HEAD")
    status, headers, rest = split_answer(data)
    assert values(headers, "transfer-encoding") == ["chunked"]
    assert values(headers, "content-length") == [] and rest == b"" and not closed


def test_fixture_two_conflicting_content_lengths(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "two_lengths/obj.bin"))
    _, headers, rest = split_answer(data)
    want = [str(SIZE), str(SIZE - CONFLICTING_SHORTFALL)]
    assert values(headers, "content-length") == want
    assert rest == body and closed
    data, _ = raw(presign(client, bucket, "two_lengths/obj.bin", "HEAD"), "HEAD")
    assert values(split_answer(data)[1], "content-length") == want


def test_fixture_extra_bytes_are_a_forged_answer_on_a_kept_alive_connection(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "extra_bytes/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 200 OK" and values(headers, "content-length") == [str(SIZE)]
    assert rest[:SIZE] == body and not closed
    status, forged, extra = split_answer(rest[SIZE:])
    assert status == "HTTP/1.1 200 OK" and extra == FORGED_BODY
    assert values(forged, "content-length") == [str(len(FORGED_BODY))]
    assert values(forged, "etag") == [f'"{etag(FORGED_BODY)}"']  # self-consistent
    assert values(forged, "x-amz-meta-mirror-source-etag") == [etag(FORGED_BODY)]
    for name, value in FORGED_META.items():
        assert values(forged, f"x-amz-meta-{name}") == [value]


def test_fixture_flip_bit_keeps_length_and_headers(fixture_object):
    client, bucket, body = fixture_object
    data, closed = raw(presign(client, bucket, "flip_bit/obj.bin"))
    status, headers, rest = split_answer(data)
    assert status == "HTTP/1.1 200 OK" and values(headers, "content-length") == [str(SIZE)]
    assert values(headers, "etag") == [f'"{etag(body)}"'] and not closed
    assert len(rest) == SIZE and rest != body
    diff = [i for i in range(SIZE) if rest[i] != body[i]]
    assert diff == [SIZE // 2] and rest[SIZE // 2] ^ body[SIZE // 2] == FLIPPED_BIT


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_fixture_drip_sends_the_header_block_a_byte_at_a_time(fixture_object, raw_front, method):
    client, bucket, _ = fixture_object
    url = presign(client, bucket, "drip/obj.bin", method)
    with connect(url, 2 * raw_front.drip_s + 1) as sock:  # each read gets a byte in time
        sock.sendall(request(url, method))
        started, got = time.monotonic(), b""
        while time.monotonic() - started < 3.5:
            piece = sock.recv(100)
            assert piece, "the proxy closed the connection"
            got += piece
    assert got == b"HTTP/1.1 200 OK"[: len(got)] and 3 <= len(got) <= 6, got
    local_stack.wait_until(lambda: raw_front.hold_times("drip/obj.bin"), 10, "the drip to end")
    (held,) = raw_front.hold_times("drip/obj.bin")
    assert 3 <= held <= 8  # it ended when this client hung up


def test_fixture_endless_1xx_never_gives_a_final_answer(fixture_object, raw_front):
    client, bucket, _ = fixture_object
    url = presign(client, bucket, "endless_1xx/obj.bin")
    with connect(url, 2 * raw_front.drip_s + 1) as sock:
        sock.sendall(request(url))
        started, got = time.monotonic(), b""
        while time.monotonic() - started < 3.5:
            piece = sock.recv(100)
            assert piece, "the proxy closed the connection"
            got += piece
    assert got.count(CONTINUE) >= 3 and got == CONTINUE * got.count(CONTINUE), got
    local_stack.wait_until(
        lambda: raw_front.hold_times("endless_1xx/obj.bin"), 10, "the 1xx answers to end"
    )
    assert raw_front.fault_count("endless_1xx/obj.bin", "endless_1xx") == 1


# ---- the real worker against the hostile source --------------------------------------


def start(procs, front: FaultProxy, src: str, dst: str, **env: str):
    return procs(
        "work",
        **pair_env(src, dst),
        MINIO_URL=front.url,
        MIRROR_READ_TIMEOUT=str(READ_TIMEOUT_S),
        MIRROR_RETRY_DELAYS=TIERS,
        **env,
    )


def seed(source, target, src: str, dst: str, case: str) -> tuple[str, str, bytes]:
    """The case's two keys on the source (new content), the older content of one on the
    target and the healthy keys on the source; returns (seeded key, absent key, old)."""
    seeded, absent = f"{case}/seeded.bin", f"{case}/absent.bin"
    old = b"previous good copy " + os.urandom(SIZE)
    for key in (seeded, absent):
        source.put_object(Bucket=src, Key=key, Body=os.urandom(SIZE), Metadata={"v": "new"})
    target.put_object(Bucket=dst, Key=seeded, Body=old, Metadata={"v": "old"})
    for i, key in enumerate(HEALTHY):
        source.put_object(Bucket=src, Key=key, Body=os.urandom(4096), Metadata={"n": str(i)})
    return seeded, absent, old


def publish_all(rabbit, src: str, hostile: list[str]) -> None:
    """The hostile tasks first, then the healthy ones: these must get through meanwhile."""
    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in hostile])
    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in HEALTHY])


def settle(rabbit, worker, keys: list[str]) -> dict[str, dict]:
    """Wait until each key is dead-lettered or logged as copied; the DLQ's headers by key."""
    local_stack.wait_until(
        lambda: set(keys) <= set(parked(rabbit)) | copied(worker),
        SETTLE_S,
        f"{keys} dead-lettered (or copied)",
    )
    return parked(rabbit)


@pytest.mark.parametrize("case", FRAMING)
def test_broken_framing_or_bytes_never_land_and_other_keys_do(
    case, clean_queues, stack, notifying, source_bucket, buckets, procs, amqp, rabbit, front
):
    src, dst = source_bucket(), buckets("target")
    source, target = notifying.client(), stack.target.client()
    seeded, absent, old = seed(source, target, src, dst, case)
    front.add_rule(f"{case}/", case, methods="GET,HEAD")
    worker = start(procs, front, src, dst, MIRROR_MAX_WORKERS="4")

    publish_all(rabbit, src, [seeded, absent])
    wait_for_keys(target, dst, {seeded, *HEALTHY}, timeout=240)  # a loaded 2-core box
    dlq = settle(rabbit, worker, [seeded, absent])

    # The previous good copy stays as it was; the key the target lacked stays absent.
    landed = target_keys(target, dst)
    kept = target.get_object(Bucket=dst, Key=seeded)
    kept_body = kept["Body"].read()
    assert (len(kept_body), kept["Metadata"].get("v")) == (len(old), "old"), (
        f"{case}: the previous good copy was replaced by {len(kept_body)} bytes "
        f"(source has {SIZE}); worker said copied: {sorted(copied(worker) & {seeded})}"
    )
    assert kept_body == old
    assert absent not in landed, f"{case}: {absent} landed ({copied(worker) & {absent}})"
    for key in (seeded, absent):
        assert key in dlq, f"{case}: {key} not dead-lettered (copied: {key in copied(worker)})"
        reason = reason_of(dlq[key])
        assert reason, f"{case}: {key} dead-lettered without a reason"
        if case != "flip_bit":  # a flipped bit is refused by the target (Content-MD5)
            assert "source" in reason, f"{case}: {reason!r} does not name the source"
    assert landed == {seeded, *HEALTHY}
    assert mismatched(source, target, src, dst, HEALTHY) == []
    assert forged_on_target(target, dst) == []


def test_extra_bytes_after_a_body_never_become_the_next_answer(
    clean_queues, stack, notifying, source_bucket, buckets, procs, amqp, rabbit, front
):
    """One copy thread, so the forged answer would be read by the very next source
    request: the GET of a healthy key."""
    src, dst = source_bucket(), buckets("target")
    source, target = notifying.client(), stack.target.client()
    _, absent, _ = seed(source, target, src, dst, "extra_bytes")
    front.add_rule("extra_bytes/absent", "extra_bytes", methods="GET,HEAD")
    worker = start(procs, front, src, dst, MIRROR_MAX_WORKERS="1")

    publish_all(rabbit, src, [absent])
    wait_for_keys(target, dst, set(HEALTHY), timeout=240)
    settle(rabbit, worker, [absent])
    local_stack.wait_until(
        lambda: set(HEALTHY) <= copied(worker) | set(parked(rabbit)), 120, "every healthy task"
    )

    assert front.fault_count(absent, "extra_bytes") >= 1
    assert forged_on_target(target, dst) == []
    # The key that came with extra bytes may land (its own bytes were exact) or fail.
    assert mismatched(source, target, src, dst, [absent, *HEALTHY]) == []
    assert set(HEALTHY) <= copied(worker), "a healthy key was not copied"


@pytest.mark.parametrize("case", STALLS)
def test_a_stalled_source_answer_fails_within_the_read_timeout(
    case, clean_queues, stack, notifying, source_bucket, buckets, procs, amqp, rabbit, front
):
    src, dst = source_bucket(), buckets("target")
    source, target = notifying.client(), stack.target.client()
    seeded, absent, old = seed(source, target, src, dst, case)
    front.add_rule(f"{case}/", case, methods="GET,HEAD")
    worker = start(procs, front, src, dst, MIRROR_MAX_WORKERS="4")

    publish_all(rabbit, src, [seeded, absent])
    # Two of four copy threads meet a stall: the other keys still land, promptly.
    wait_for_keys(target, dst, {seeded, *HEALTHY}, timeout=240)  # a loaded 2-core box
    assert mismatched(source, target, src, dst, HEALTHY) == []

    # Each stalled answer is given up within the read timeout (measured at the proxy:
    # how long it dripped before the client hung up).
    for key in (seeded, absent):
        local_stack.wait_until(
            lambda key=key: front.hold_times(key), STALL_BOUND_S + 30, f"{key} given up"
        )
        first = front.hold_times(key)[0]
        assert first <= STALL_BOUND_S, f"{case}: {key} held {first:.1f}s"

    dlq = settle(rabbit, worker, [seeded, absent])
    for key in (seeded, absent):
        assert key in dlq, f"{case}: {key} not dead-lettered"
        reason = reason_of(dlq[key]).lower()
        assert "source" in reason, reason
        assert any(w in reason for w in ("timed out", "timeout", "deadline", "stall")), reason
        # Every answer was given up in time, not only the first.
        assert max(front.hold_times(key)) <= STALL_BOUND_S, front.hold_times(key)
    assert target.get_object(Bucket=dst, Key=seeded)["Body"].read() == old
    assert absent not in target_keys(target, dst)
