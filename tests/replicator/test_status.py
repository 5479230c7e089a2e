"""`status`: what makes a report degraded, how it reads, what reconcile records."""

from __future__ import annotations

import json
import socket
import time

import pytest

from replicator import config, status
from replicator.reconcile import record
from replicator.reconcile.result import PairResult, Problem, RunResult
from replicator.reconcile.troubleshoot import FAILED_TO_ACCESS_ALIAS

NOW = 1_800_000_000.0


def healthy() -> status.Report:
    return status.Report(
        work=status.Queue("minio-s3-mirror.tasks", 0, 2),
        retries=[status.Queue("minio-s3-mirror.tasks.retry.5s", 0, 0)],
        dead=status.Queue("minio-s3-mirror.dead", 0, 0),
        endpoints=[
            status.Side("source", "http://minio:9000", True),
            status.Side("target", "https://s3.amazonaws.com", True),
        ],
        reconcile={"minio/a:aws/b": {"pair": "minio/a:aws/b", "ok": True, "finished_at": NOW}},
    )


def judged(report: status.Report) -> status.Report:
    status.judge(report)
    return report


def test_a_quiet_pipeline_is_healthy():
    report = judged(healthy())
    assert report.healthy and report.problems == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: setattr(r.endpoints[1], "answers", False), "target https://s3.amazonaws.com"),
        (lambda r: setattr(r.endpoints[0], "answers", False), "source http://minio:9000"),
        (lambda r: setattr(r.dead, "ready", 3), "3 task(s) in the dead-letter queue"),
        (lambda r: setattr(r, "work", status.Queue("q", 7, 0)), "7 task(s) waiting and no worker"),
        (lambda r: setattr(r, "oldest_waiting_s", 901.0), "the oldest waiting task is 15m old"),
        (lambda r: r.reconcile["minio/a:aws/b"].update(ok=False), "reconcile of minio/a:aws/b"),
    ],
    ids=["target-down", "source-down", "dead-letters", "no-worker", "old-task", "reconcile"],
)
def test_each_degradation_is_named(change, problem):
    report = healthy()
    change(report)
    report = judged(report)
    assert not report.healthy
    assert len(report.problems) == 1 and problem in report.problems[0], report.problems


def test_a_backlog_with_workers_and_young_tasks_is_healthy():
    report = healthy()
    report.work = status.Queue("minio-s3-mirror.tasks", 5000, 4)
    report.oldest_waiting_s = 899.0
    assert judged(report).healthy


def test_the_text_report_gives_every_part():
    report = healthy()
    report.work = status.Queue("minio-s3-mirror.tasks", 12, 0)
    report.dead = status.Queue("minio-s3-mirror.dead", 4, 0)
    report.dead_reasons = [("target 403 AccessDenied", 3), ("bucket 'x' is in no pair", 1)]
    report.oldest_waiting_s, report.oldest_key = 1500.0, "photos/cat.jpg"
    report.oldest_deliveries = 3
    report.endpoints[1].answers, report.endpoints[1].detail = False, "no answer within 15s"
    report.reconcile["minio/a:aws/b"].update(copied=3, finished_at=NOW - 3600)
    text = status.render(judged(report), as_json=False, now=NOW)
    assert text.splitlines()[0] == "minio-s3-mirror status: DEGRADED"
    for part in (
        "work    12 ready, ? unacked, 0 consumer(s)",
        "retry.5s 0 waiting to retry",
        "dead    4 dead-lettered",
        "3 x target 403 AccessDenied",
        "oldest waiting task: 25m since its event (photos/cat.jpg), delivered 3 time(s) "
        "before (RabbitMQ dead-letters it at 20)",
        "target  https://s3.amazonaws.com: DOWN (no answer within 15s)",
        "minio/a:aws/b: ok, copied 3 object(s), finished 2027-01-15 07:00:00Z (60m ago)",
        "- 4 task(s) in the dead-letter queue",
        "- 12 task(s) waiting and no worker consuming",
    ):
        assert part in text, f"{part!r} not in:\n{text}"


def test_the_json_report_is_machine_readable():
    report = judged(healthy())
    report.dead_reasons = [("why", 2)]
    data = json.loads(status.render(report, as_json=True))
    assert data["healthy"] is True
    assert data["work"] == {
        "name": "minio-s3-mirror.tasks",
        "ready": 0,
        "consumers": 2,
        "unacked": None,
    }
    assert data["dead_reasons"] == [{"reason": "why", "count": 2}]
    assert data["endpoints"][1]["answers"] is True


def test_the_age_of_a_task_is_taken_from_its_event_time():
    body = json.dumps(
        {"v": 1, "bucket": "b", "key": "k 1", "event_time": "2027-01-15T07:30:00.000Z"}
    ).encode()
    age, key = status._event_age(body, NOW)
    assert (age, key) == (1800.0, "k 1")
    no_time = json.dumps({"v": 1, "bucket": "b", "key": "k"}).encode()
    assert status._event_age(no_time, NOW) == (None, "k")
    assert status._event_age(b"not json", NOW) == (None, "")


def run_result(ok: bool, dry_run: bool = False) -> RunResult:
    pair = PairResult("minio/a:aws/b", "minio/a", "aws/b", copied=5, bytes=50, duration_s=1.5)
    if not ok:
        pair.problems.add(
            Problem("Bucket `b` does not exist", FAILED_TO_ACCESS_ALIAS, side="target")
        )
    return RunResult("svc", dry_run, [pair], 2.0)


def test_a_pair_record_keeps_counts_and_the_first_failure_only():
    rec = record.pair_record(run_result(False).pairs[0], NOW)
    assert rec["ok"] is False and rec["failures"] == 1 and rec["copied"] == 5
    assert rec["first_failure"].endswith("Bucket `b` does not exist")
    assert rec["finished_at"] == NOW
    assert record.pair_record(run_result(True).pairs[0], NOW)["first_failure"] == ""


class FakeChannel:
    """basic_get over a list of bodies, as RabbitMQ hands out a queue's messages."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = list(bodies)

    def queue_declare(self, name, passive=False, **_):
        count = len(self.bodies)
        return type("Ok", (), {"method": type("M", (), {"message_count": count})})()

    def basic_get(self, name):
        if not self.bodies:
            return None, None, None
        return object(), None, self.bodies.pop(0)


def test_the_latest_record_per_pair_wins_and_junk_is_ignored():
    older = {"pair": "minio/a:aws/b", "ok": False, "finished_at": NOW - 86400}
    newer = {"pair": "minio/a:aws/b", "ok": True, "finished_at": NOW}
    other = {"pair": "minio/c:aws/d", "ok": True, "finished_at": NOW - 5}
    bodies = [json.dumps(r).encode() for r in (older, other, newer)] + [b"junk", b"{}"]
    found = record.latest(FakeChannel(bodies))
    assert found == {"minio/a:aws/b": newer, "minio/c:aws/d": other}


def test_a_dry_run_is_not_recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(record, "_publish", lambda *a: calls.append(a))
    settings = config.load(
        {
            "MINIO_URL": "http://127.0.0.1:1",
            "MINIO_ACCESS_KEY": "a",
            "MINIO_SECRET_KEY": "s",
            "AWS_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY": "a",
            "AWS_SECRET_KEY": "s",
            "BUCKET_PAIR": "minio/aaa:aws/bbb",
        }
    )
    record.save(settings, run_result(True, dry_run=True))
    assert calls == []
    record.save(settings, run_result(True))
    assert len(calls) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_answering_is_degraded_and_no_secret_is_shown():
    port = closed_port()
    settings = config.load(
        {
            "MINIO_URL": f"http://127.0.0.1:{port}",
            "MINIO_ACCESS_KEY": "minio-access",
            "MINIO_SECRET_KEY": "minio-secret-value",
            "AWS_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY": "aws-access",
            "AWS_SECRET_KEY": "aws-secret-value",
            "BUCKET_PAIR": "minio/aaa:aws/bbb",
            "RABBITMQ_URL": f"amqp://mirror:rabbit-password@127.0.0.1:{port}/%2F",
        }
    )
    started = time.monotonic()
    report = status.collect(settings)
    assert time.monotonic() - started < status.PROBE_TIMEOUT_S + 10
    assert not report.healthy
    assert report.problems[0].startswith(f"RabbitMQ at amqp://mirror:****@127.0.0.1:{port}")
    assert [s.answers for s in report.endpoints] == [False, False]
    for as_json in (False, True):
        out = status.render(report, as_json)
        for secret in ("minio-secret-value", "aws-secret-value", "rabbit-password"):
            assert secret not in out


class FakeManagement:
    """RabbitMQ's management API, as far as `status` asks it: GET /api/queues/<vhost>."""

    def __init__(self, queues: list[dict]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.asked: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.asked.append((self.path, self.headers.get("Authorization", "")))
                body = json.dumps(queues).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def management_settings(url: str, rabbitmq: str) -> config.Settings:
    return config.load(
        {
            "MINIO_URL": "http://127.0.0.1:1",
            "MINIO_ACCESS_KEY": "a",
            "MINIO_SECRET_KEY": "s",
            "AWS_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY": "a",
            "AWS_SECRET_KEY": "s",
            "BUCKET_PAIR": "minio/aaa:aws/bbb",
            "RABBITMQ_URL": rabbitmq,
            "RABBITMQ_MANAGEMENT_URL": url,
        }
    )


def test_unacked_counts_come_from_the_management_api_with_rabbitmqs_login():
    import base64

    api = FakeManagement(
        [
            {"name": "minio-s3-mirror.tasks", "messages_unacknowledged": 64},
            {"name": "minio-s3-mirror.tasks.retry.5s", "messages_unacknowledged": 0},
            {"name": "other", "messages_unacknowledged": 9},
        ]
    )
    try:
        settings = management_settings(api.url, "amqp://mirror:p%40ss@127.0.0.1:1/prod%2Fa")
        report = healthy()
        status.read_unacked(settings, report)
    finally:
        api.stop()
    assert report.work.unacked == 64 and report.retries[0].unacked == 0
    assert report.dead.unacked is None  # not in the answer: unknown, not 0
    ((path, auth),) = api.asked
    assert path.startswith("/api/queues/prod%2Fa?")
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"mirror:p@ss"
    assert report.notes == []


def test_without_the_management_api_unacked_is_unknown_and_said_so():
    port = closed_port()
    unset = config.load(
        {
            "MINIO_URL": "http://127.0.0.1:1",
            "MINIO_ACCESS_KEY": "a",
            "MINIO_SECRET_KEY": "s",
            "AWS_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY": "a",
            "AWS_SECRET_KEY": "s",
            "BUCKET_PAIR": "minio/aaa:aws/bbb",
        }
    )
    report = healthy()
    status.read_unacked(unset, report)
    assert report.work.unacked is None
    assert "set RABBITMQ_MANAGEMENT_URL" in report.notes[0]
    down = management_settings(f"http://127.0.0.1:{port}", "amqp://u:secret-pw@127.0.0.1:1/")
    report = healthy()
    status.read_unacked(down, report)
    assert report.work.unacked is None and report.healthy
    assert report.notes[0].startswith(f"unacked counts unknown: http://127.0.0.1:{port}")
    assert "secret-pw" not in status.render(report, as_json=False)


def test_a_management_url_with_a_login_is_refused():
    with pytest.raises(config.ConfigError, match="RABBITMQ_MANAGEMENT_URL"):
        management_settings("http://u:p@rabbit:15672/", "amqp://u:p@rabbit:5672/")


def test_a_silent_target_is_down_within_the_probe_time_and_never_holds_the_exit():
    """A target that takes the connection and never answers: status says so after
    PROBE_TIMEOUT_S and the process exits, though the probe waits on (read timeout)."""
    import subprocess
    import sys

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody ever reads or answers
        port = silent.getsockname()[1]
        script = f"""
import sys
from replicator import config, status
status.PROBE_TIMEOUT_S = 1.0
settings = config.load({{
    "MINIO_URL": "http://127.0.0.1:{closed_port()}", "MINIO_ACCESS_KEY": "a",
    "MINIO_SECRET_KEY": "s", "AWS_URL": "http://127.0.0.1:{port}", "AWS_ACCESS_KEY": "a",
    "AWS_SECRET_KEY": "s", "BUCKET_PAIR": "minio/aaa:aws/bbb",
    "RABBITMQ_URL": "amqp://u:p@127.0.0.1:{closed_port()}/%2F", "MIRROR_READ_TIMEOUT": "60",
}})
print([s.detail for s in status.probe_endpoints(settings)])
"""
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert "no answer within 1s" in done.stdout
    assert time.monotonic() - started < 15  # not the 60 s read timeout
