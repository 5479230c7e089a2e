"""The S3 layer on the real source MinIO: what its raw, self-signed requests give back."""

from __future__ import annotations

import time

import pytest
import stack as local_stack

from replicator import config
from replicator.errors import Kind
from replicator.s3 import S3
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


def test_a_keep_alive_connection_the_server_dropped_is_used_once_more_fresh(source):
    """Servers close idle keep-alive connections; the next GET on it must not count as a
    failure of the key (it is resent once on a new connection: GET and HEAD are safe)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import urlsplit

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
        _, s3 = source
        url = urlsplit(f"http://127.0.0.1:{server.server_address[1]}/b/k?x=1")
        for _ in range(3):
            status, _, body = s3._send("GET", url, {})
            assert (status, body) == (200, b"ok")
    finally:
        server.shutdown()


def test_a_listing_reads_one_page_ahead_and_stops_when_abandoned(stack, buckets):
    """While the caller works through a page, the next one is already requested (the
    server's work overlaps ours), but never more than one: an abandoned listing stops."""
    bucket = buckets("target")
    for i in range(7):
        stack.target.client().put_object(Bucket=bucket, Key=f"k{i}", Body=b"")
    proxy = local_stack.FaultProxy(stack.target.url).start()
    try:
        env = {**base_env(stack), "BUCKET_PAIR": f"minio/unused:aws/{bucket}", "AWS_URL": proxy.url}
        settings = config.load(env)
        s3 = S3(settings.target, settings, "target")
        pages = lambda: proxy.count("", "GET")  # noqa: E731 (a listing has no key)

        listing = s3.list(bucket, "", page=2)
        assert next(listing).key == "k0"
        local_stack.wait_until(lambda: pages() == 2, 10, "the second page requested")
        time.sleep(0.5)  # a listing reading further ahead would ask for page 3 by now
        assert pages() == 2
        listing.close()  # returns once the page in flight is in

        assert [item.key for item in s3.list(bucket, "", page=2)] == [f"k{i}" for i in range(7)]
        assert pages() == 2 + 4
    finally:
        proxy.stop()
