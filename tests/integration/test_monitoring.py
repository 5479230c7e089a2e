"""The shipped dashboard and alert rules against a real Prometheus scraping the pipeline.

The pipeline runs (webhook listener, a worker, a dead letter, a replayed task, a reconcile
pushing its result to a stand-in Pushgateway); Debian's Prometheus scrapes `listen`, `work`
and the pushed result with the shipped rules loaded; then every dashboard query is
evaluated through Prometheus's HTTP API. A query that errors, or that names a metric no
scraped process exports, fails the test; so does a rule that does not evaluate cleanly.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import stack as local_stack
import yaml

from replicator.task import Task
from tests.conftest import REPO
from tests.integration.conftest import WEBHOOK_ARN, dead_letters
from tests.integration.test_pipeline import pair_env, publish, wait_for_keys

pytestmark = pytest.mark.integration

MONITORING = REPO / "deploy" / "monitoring"
# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "rate", "increase", "by", "le", "histogram_quantile", "clamp_min",
    "vector", "or", "and", "on", "time", "absent", "kind", "side", "reason", "mode",
    "origin", "pair", "m", "h", "s",
}  # fmt: skip


def dashboard_queries() -> list[str]:
    spec = importlib.util.spec_from_file_location("generate", MONITORING / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.queries()


def metric_names(query: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", query)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    return {w for w in words if w not in PROMQL_WORDS}


class Pushgateway:
    """A stand-in Pushgateway: keeps the last body PUT to /metrics/job/..., serves it."""

    def __init__(self) -> None:
        self.body = b""
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                outer.paths.append(self.path)
                outer.body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.end_headers()

            do_POST = do_PUT

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    """Debian's Prometheus on a free port, scraping the given targets every second."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
        self.port = local_stack.free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": True,
                    "static_configs": [{"targets": [address]}],
                }
                for job, address in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        local_stack.wait_until(self._ready, 60, "Prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "Prometheus exited: see prometheus.log"
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> dict:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30).json()
        return answer

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def exported(address: str) -> set[str]:
    """Metric names a process declares on its /metrics (HELP lines; series names too)."""
    text = requests.get(f"http://{address}/metrics", timeout=10).text
    names = set(re.findall(r"^# HELP (\S+)", text, re.MULTILINE))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    return names


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    gateway = Pushgateway()
    yield gateway
    gateway.stop()


def test_every_dashboard_query_and_rule_evaluates_on_the_scraped_pipeline(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, run_cli, webhook_port,
    pushgateway, tmp_path,
):  # fmt: skip
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    listen_at, work_at = (f"127.0.0.1:{local_stack.free_port()}" for _ in range(2))
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    procs("listen", "--mode", "webhook", **env, METRICS_ADDRESS=listen_at)
    procs("work", **env, METRICS_ADDRESS=work_at)
    prometheus = Prometheus(
        tmp_path,
        {
            "minio-s3-mirror-listener": listen_at,
            "minio-s3-mirror-worker": work_at,
            "pushgateway": pushgateway.address,
        },
    )
    try:
        # Counters seen at 0 before anything happens, so increase() and rate() see it.
        local_stack.wait_until(
            lambda: len(prometheus.api("query", query="up == 1")["data"]["result"]) >= 2,
            60,
            "listen and work scraped",
        )
        # Copies (events through the webhook), a skip (a replayed task), a dead letter.
        client = notifying.client()
        keys = {f"dash/{i}.txt" for i in range(20)}
        for key in keys:
            client.put_object(Bucket=src, Key=key, Body=key.encode())
        wait_for_keys(stack.target.client(), dst, keys, timeout=120)
        publish(rabbit, Task(bucket=src, key="dash/0.txt", origin="backfill").to_json())
        publish(rabbit, Task(bucket="not-in-any-pair", key="x", origin="backfill").to_json())
        local_stack.wait_until(lambda: dead_letters(rabbit), 60, "the dead letter")
        # The nightly job's result, pushed as a CronJob would push it.
        reconcile_env = {
            "MINIO_URL": notifying.url,
            "MINIO_ACCESS_KEY": notifying.access_key,
            "MINIO_SECRET_KEY": notifying.secret_key,
            "RABBITMQ_URL": rabbit.url,
            "MIRROR_PUSHGATEWAY_URL": f"http://{pushgateway.address}/",
            **pair_env(src, dst),
        }
        done = run_cli("reconcile", env=reconcile_env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert pushgateway.paths == ["/metrics/job/minio-s3-mirror-reconcile"]

        def scraped_everything() -> bool:
            targets = prometheus.api("targets")["data"]["activeTargets"]
            healthy = len(targets) == 3 and all(t["health"] == "up" for t in targets)
            names = set(prometheus.api("label/__name__/values")["data"])
            return (
                healthy
                and "minio_s3_mirror_reconcile_success" in names
                and ("minio_s3_mirror_dead_lettered_total" in names)
            )

        local_stack.wait_until(scraped_everything, 60, "Prometheus scraping all three")
        time.sleep(4)  # several samples of every series, so rate() has points

        products = exported(listen_at) | exported(work_at) | exported(pushgateway.address)
        failures, empty = [], []
        for query in dashboard_queries():
            answer = prometheus.api("query", query=query)
            if answer.get("status") != "success":
                failures.append(f"{query}: {answer.get('errorType')}: {answer.get('error')}")
                continue
            unknown = metric_names(query) - products
            if unknown:
                failures.append(f"{query}: names metrics no process exports: {unknown}")
            if not answer["data"]["result"]:
                empty.append(query)
        assert not failures, "\n".join(failures)
        # The views that must show this run: backlog, copies, latency, DLQ, reconcile.
        for must in (
            "max(minio_s3_mirror_tasks_pending)",
            "sum(rate(minio_s3_mirror_objects_replicated_total[5m]))",
            "histogram_quantile(0.99, sum by (le) "
            "(rate(minio_s3_mirror_replication_latency_seconds_bucket[5m])))",
            "sum(increase(minio_s3_mirror_dead_lettered_total[1h]))",
            "minio_s3_mirror_reconcile_success",
        ):
            assert must not in empty, f"{must} returned nothing"

        # The shipped rules evaluate cleanly on the real series.
        local_stack.wait_until(
            lambda: all(
                rule.get("lastEvaluation", "").startswith("20")
                for group in prometheus.api("rules")["data"]["groups"]
                for rule in group["rules"]
            ),
            30,
            "every rule evaluated",
        )
        groups = prometheus.api("rules")["data"]["groups"]
        bad = [
            f"{rule['name']}: {rule.get('lastError')}"
            for group in groups
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        assert not bad, bad
        firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["data"]["alerts"]}
        assert "MinioS3MirrorDeadLetters" in firing  # the dead letter of this run
        assert "MinioS3MirrorWorkersAbsent" not in firing
    finally:
        prometheus.stop()
