"""A target whose clock is 20 minutes off (issue 25, design 6): `RequestTimeTooSkewed` is
permanent and says so.

A small fake S3 endpoint answers every request as AWS does to a host whose clock is
skewed: 403, `<Error><Code>RequestTimeTooSkewed</Code>...` (no body for a HEAD, as for any
HEAD) and its own `Date`, SKEW_S ahead of ours. The real `work` process dead-letters the
task at the first try with "clock skew" and the size of the skew in the reason (whether
its first target request is the PUT or the HEAD), and `check` exits non-zero naming it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stack as local_stack
from fault_proxy import split_path

from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import pair_env, publish

pytestmark = pytest.mark.integration

SKEW_S = 20 * 60  # the endpoint's clock is this far ahead of ours


class SkewedTarget:
    """An S3 endpoint on a loopback port refusing every request as RequestTimeTooSkewed."""

    def __init__(self, skew_s: float = SKEW_S) -> None:
        self.skew_s = skew_s
        self.lock = threading.Lock()
        self.seen: Counter[tuple[str, str]] = Counter()  # (method, key) -> requests
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> SkewedTarget:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, key: str, method: str | None = None) -> int:
        with self.lock:
            return sum(n for (m, k), n in self.seen.items() if k == key and method in (None, m))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def handle_expect_100(self) -> bool:
                return True  # S3 refuses before it asks for the body: no 100 Continue

            def do_any(self) -> None:
                _, key = split_path(self.path)
                with target.lock:
                    target.seen[(self.command, key)] += 1
                expecting = (self.headers.get("Expect") or "").lower() == "100-continue"
                if not expecting and not self._drain():
                    self.close_connection = True
                    return
                now = time.time()
                sent = self.headers.get("x-amz-date") or time.strftime(
                    "%Y%m%dT%H%M%SZ", time.gmtime(now)
                )
                ours = now + target.skew_s
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    "<Error><Code>RequestTimeTooSkewed</Code>"
                    "<Message>The difference between the request time and the current time "
                    "is too large.</Message>"
                    f"<RequestTime>{sent}</RequestTime>"
                    f"<ServerTime>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ours))}"
                    "</ServerTime><MaxAllowedSkewMilliseconds>900000"
                    "</MaxAllowedSkewMilliseconds><RequestId>SKEWED0001</RequestId>"
                    "<HostId>skewed-target</HostId></Error>"
                ).encode()
                self.send_response_only(403, "Forbidden")  # no automatic Date: ours is off
                self.send_header("Date", formatdate(ours, usegmt=True))
                self.send_header("Server", "AmazonS3")
                self.send_header("x-amz-request-id", "SKEWED0001")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                if expecting:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(xml)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_any

            def _drain(self) -> bool:
                """Read the request body (Content-Length or chunked); False if cut off."""
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    while True:
                        line = self.rfile.readline(65537)
                        if not line:
                            return False
                        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                                pass
                            return True
                        if len(self.rfile.read(size + 2)) < size + 2:
                            return False
                length = int(self.headers.get("Content-Length") or 0)
                return len(self.rfile.read(length)) == length if length else True

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def skewed() -> Iterator[SkewedTarget]:
    server = SkewedTarget().start()
    yield server
    server.stop()


def names_the_skew(text: str) -> bool:
    """Whether `text` says "clock skew" and the skew in seconds (within a minute)."""
    if "clock skew" not in text.lower():
        return False
    return any(abs(int(n) - SKEW_S) <= 60 for n in re.findall(r"\d+", text))


@pytest.mark.parametrize("first", ["PUT", "HEAD"])
def test_a_skewed_target_dead_letters_the_task_at_the_first_try(
    first, stack, notifying, source_bucket, procs, amqp, rabbit, skewed
):
    """PUT: a task saying the target has no such key is written first; HEAD: a plain task
    looks at the target first (a 403 without a body: only the Date tells)."""
    src = source_bucket()
    notifying.client().put_object(Bucket=src, Key="skewed.txt", Body=b"on time")
    procs("work", **pair_env(src, "far-away"), AWS_URL=skewed.url, MIRROR_RETRY_DELAYS="1,2")

    task = Task(bucket=src, key="skewed.txt", origin="backfill", target_absent=first == "PUT")
    publish(rabbit, task.to_json())

    local_stack.wait_until(lambda: dead_letters(rabbit), 120, "the task in the DLQ")
    ((headers, body),) = dead_letters(rabbit)
    assert json.loads(body)["key"] == "skewed.txt"
    reason = headers.get("x-mirror-error", "")
    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
    assert names_the_skew(reason), reason
    assert headers.get("x-mirror-attempt", 0) == 0, "went through the delay tiers"
    # Permanent: no in-process retries either (a HEAD, a PUT, and no second round).
    assert skewed.count("skewed.txt") <= 2, skewed.seen
    assert skewed.count("skewed.txt", first) >= 1, skewed.seen


def test_check_exits_non_zero_naming_the_clock_skew(stack, buckets, run_cli, rabbit, skewed):
    src = buckets("source")
    result = run_cli(
        "check",
        env={
            "BUCKET_PAIR": f"minio/{src}:aws/far-away",
            "RABBITMQ_URL": rabbit.url,
            "AWS_URL": skewed.url,
        },
        timeout=180,
    )
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode != 0, out
    assert names_the_skew(out), out
