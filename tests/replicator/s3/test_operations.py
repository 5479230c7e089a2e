"""The S3 layer on the real source MinIO: what its raw, self-signed requests give back."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stack as local_stack

from replicator import config
from replicator.errors import Kind
from replicator.s3 import S3
from replicator.s3.operations import gathered
from tests.conftest import base_env

KEYS = [
    "dir/",
    "a b+c%20d?e#f",
    "ünïcødé/파일 😀.txt",
    "tab\there",
    "amp&lt;<tag>\"quote'",
    "./dot",
    "x/../y",
    "plus+",
]


@pytest.fixture
def source(stack, buckets):
    bucket = buckets("source")
    settings = config.load({**base_env(stack), "BUCKET_PAIR": f"minio/{bucket}:aws/unused"})
    return bucket, S3(settings.source, settings, "source")


def test_every_hard_key_is_read_exactly(stack, source):
    """Keys a path type would change (`dir/`, `./dot`, a tab) are signed and sent as
    they are: HEAD and GET find exactly the object written."""
    bucket, s3 = source
    client = stack.source.client()
    refused = set()
    for i, key in enumerate(KEYS):
        data = b"x" * (i + 1)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data)
        except client.exceptions.ClientError:
            refused.add(key)  # MinIO refuses `.` and `..` segments
            continue
        assert s3.head(bucket, key).size == len(data), key
        assert s3.get(bucket, key, limit=100)[1] == data, key
    assert refused <= {"./dot", "x/../y"}


def test_listing_gives_every_key_exactly_across_pages(stack, source):
    bucket, s3 = source
    client = stack.source.client()
    written = {}
    for i, key in enumerate(KEYS):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"x" * i)
            written[key] = i
        except client.exceptions.ClientError:
            pass  # MinIO refuses some names (`..` segments); the listing is what matters
    for i in range(1005):
        client.put_object(Bucket=bucket, Key=f"many/{i:05d}", Body=b"")
    assert "dir/" in written and "tab\there" in written

    listed = list(s3.list(bucket, ""))
    names = [item.key for item in listed]
    assert names == sorted(names, key=lambda k: k.encode())
    assert set(written) <= set(names) and len(names) == len(written) + 1005
    sizes = {item.key: item.size for item in listed}
    assert all(sizes[key] == size for key, size in written.items())
    assert [i.key for i in s3.list(bucket, "many/0000")] == [f"many/{i:05d}" for i in range(10)]


def test_head_and_get_see_every_header_and_a_missing_key(stack, source):
    bucket, s3 = source
    stack.source.client().put_object(
        Bucket=bucket, Key="k", Body=b"abc", ContentType="t/x", Metadata={"Color": "Red"}
    )
    head = s3.head(bucket, "k")
    assert (head.size, head.headers["Content-Type"], head.metadata) == (3, "t/x", {"color": "Red"})
    got, body = s3.get(bucket, "k", limit=10)
    assert body == b"abc" and got == head
    assert s3.head(bucket, "missing") is None


def test_get_reserves_the_size_after_the_headers_and_before_the_body(stack, source):
    """`reserve(size)` comes once the headers say the size and before a byte of the body
    is read; not at all above the limit. When it says no room (or raises), the answer is
    closed unread and the next GET works."""
    bucket, s3 = source
    stack.source.client().put_object(Bucket=bucket, Key="k", Body=b"abcde")
    events: list[str] = []
    real = s3.transport.read

    def reading(answer, size):
        events.append(f"read {size}")
        return real(answer, size)

    s3.transport.read = reading

    def room(size: int) -> bool:
        events.append(f"reserve {size}")
        return True

    head, data = s3.get(bucket, "k", 10, room)
    assert (head.size, data, events) == (5, b"abcde", ["reserve 5", "read 5"])

    events.clear()
    head, data = s3.get(bucket, "k", 10, lambda size: events.append("no room") is not None)
    assert (head.size, data, events) == (5, None, ["no room"])

    events.clear()
    assert s3.get(bucket, "k", 4, room)[1] is None
    assert events == []

    def refused(size: int) -> None:
        raise RuntimeError("no room")

    with pytest.raises(RuntimeError):
        s3.get(bucket, "k", 10, refused)
    assert events == []
    assert s3.get(bucket, "k", 10)[1] == b"abcde"


def test_a_body_in_many_pieces_is_held_once_not_twice(stack, source):
    """A body read in 1 MiB pieces goes into one buffer of its size as it arrives: the
    pieces and a joined copy are never held together (twice the size), for a whole GET
    and a ranged read alike, and the bytes are exactly the object's."""
    bucket, s3 = source
    data = os.urandom(12 * 1024 * 1024 + 3)
    etag = stack.source.client().put_object(Bucket=bucket, Key="big", Body=data)["ETag"]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _, body = s3.get(bucket, "big", limit=len(data))
        whole = tracemalloc.get_traced_memory()[1]
        del body  # compared below, once measured
        tracemalloc.reset_peak()
        ranged = s3.read(bucket, "big", etag.strip('"'), 5, len(data) - 1)
        part = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole < 1.5 * len(data), f"{whole} bytes at peak for a body of {len(data)}"
    assert part < 1.5 * len(data), f"{part} bytes at peak for a range of {len(data) - 5}"
    assert ranged == data[5:]
    assert s3.get(bucket, "big", limit=len(data))[1] == data


def test_a_body_in_one_piece_is_that_piece():
    """No copy of a small body: it stays the bytes read (sent with its header block)."""
    piece = b"x" * 4096
    assert gathered(iter([piece]), len(piece)) is piece
    assert gathered(iter([b"ab", b"c", b"de"]), 5) == bytearray(b"abcde")


def test_a_missing_bucket_is_permanent_not_a_missing_key(stack, source):
    _, s3 = source
    for call in (
        lambda: s3.get("no-such-bucket-here", "k", limit=10),
        lambda: s3.head("no-such-bucket-here", "k"),  # a HEAD's 404 has no error code
        lambda: s3.head("no-such-bucket-here", "dir/"),
        lambda: list(s3.list("no-such-bucket-here", "")),
    ):
        with pytest.raises(Exception) as raised:
            call()
        assert raised.value.kind is Kind.PERMANENT, raised.value
        assert "source bucket does not exist" in raised.value.reason


def test_a_down_endpoint_is_typed_down(stack):
    settings = config.load(
        {**base_env(stack), "MINIO_URL": "http://127.0.0.1:9", "BUCKET_PAIR": "minio/abc:aws/ddd"}
    )
    s3 = S3(settings.source, settings, "source")
    for call in (lambda: s3.get("abc", "k", 10), lambda: list(s3.list("abc", ""))):
        with pytest.raises(Exception) as raised:
            call()
        assert raised.value.kind is Kind.DOWN


def test_a_keep_alive_connection_the_server_dropped_is_not_used_again(stack):
    """Servers close idle keep-alive connections; the next GET must not count as a failure
    of the key: a pooled connection whose close has arrived is dropped before it is used.
    (A close that arrives after that check fails the request as transient: the policy's
    in-process retry sends it again.)"""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class DropsAfterEachAnswer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # promises keep-alive, then hangs up

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), DropsAfterEachAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {**base_env(stack), "MINIO_URL": url, "BUCKET_PAIR": "minio/bbb:aws/ccc"}
        settings = config.load(env)
        s3 = S3(settings.source, settings, "source")
        for _ in range(3):
            status, _, body = s3.request("GET", "bbb", "k")
            assert (status, body) == (200, b"ok")
            time.sleep(0.2)  # the server's close has arrived before the next request
    finally:
        server.shutdown()


def test_a_listing_reads_one_page_ahead_and_never_waits_for_it_when_given_up(stack, buckets):
    """Once the caller reads on past a page's first key, the next page is requested
    meanwhile (the server's work overlaps ours), never more than one ahead. A probe that
    takes one key costs one request, and a listing given up while the next page is stuck
    on a dead endpoint returns at once (Ctrl-C in a backfill must not hang)."""
    bucket = buckets("target")
    for i in range(7):
        stack.target.client().put_object(Bucket=bucket, Key=f"k{i}", Body=b"")
    proxy = local_stack.FaultProxy(stack.target.url).start()
    try:
        env = {**base_env(stack), "BUCKET_PAIR": f"minio/unused:aws/{bucket}", "AWS_URL": proxy.url}
        settings = config.load(env)
        s3 = S3(settings.target, settings, "target")
        pages = lambda: proxy.count("", "GET")  # noqa: E731 (a listing has no key)

        assert next(iter(s3.list(bucket, "", page=1))).key == "k0"
        assert pages() == 1  # a probe: nothing fetched ahead

        assert [item.key for item in s3.list(bucket, "", page=2)] == [f"k{i}" for i in range(7)]
        assert pages() == 1 + 4

        listing = s3.list(bucket, "", page=2)
        assert [next(listing).key, next(listing).key] == ["k0", "k1"]
        local_stack.wait_until(lambda: pages() == 1 + 4 + 2, 10, "the second page requested")
        time.sleep(0.5)  # a listing reading further ahead would ask for page 3 by now
        assert pages() == 1 + 4 + 2
        assert next(listing).key == "k2"

        proxy.add_rule("continuation-token", "stall", listing=True)  # page 3 never comes back
        assert next(listing).key == "k3"  # and asks for page 3
        local_stack.wait_until(lambda: pages() == 1 + 4 + 3, 10, "the third page requested")
        closing = threading.Thread(target=listing.close, daemon=True)
        closing.start()
        closing.join(30)  # the stall lasts until the proxy stops (120 s at most)
        assert not closing.is_alive(), "closing the listing waited for the stuck page"
    finally:
        proxy.stop()


def test_keys_from_a_role_are_fetched_once_not_by_every_copy_thread(monkeypatch):
    """With the AWS chain (here the container provider: ECS, EKS Pod Identity), the 16
    copy threads' first requests at once must not each ask for the role's keys: one
    fetch per process, as botocore does not lock its first load."""
    fetches = []

    class Credentials(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            time.sleep(0.2)  # a round trip to the credentials endpoint
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            body = json.dumps(
                {
                    "AccessKeyId": "AKIAROLE",
                    "SecretAccessKey": "role-secret",
                    "Token": "role-token",
                    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/role")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    try:
        settings = config.load(
            {
                "MINIO_URL": "http://127.0.0.1:1",
                "MINIO_ACCESS_KEY": "minio",
                "MINIO_SECRET_KEY": "minio-secret",
                "AWS_URL": "http://127.0.0.1:2",
                "AWS_REGION": "us-east-1",
                "BUCKET_PAIR": "minio/src:aws/dst",
            }
        )
        s3 = S3(settings.target, settings, "target", 18)
        gate, keys = threading.Barrier(16), []
        threads = [
            threading.Thread(target=lambda: (gate.wait(), keys.append(s3._keys())))
            for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.shutdown()
    assert keys == [("AKIAROLE", "role-secret", "role-token")] * 16
    assert len(fetches) == 1, fetches
