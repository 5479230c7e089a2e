"""Writes dashboard.json (Grafana) and prometheus-rule.yaml (Prometheus Operator).

    .venv/bin/python deploy/monitoring/generate.py

The dashboard's panels are declared below; the PrometheusRule carries rules.yml's groups
unchanged. tests/deploy/test_monitoring.py fails when either file is not what this writes,
and evaluates every panel query against a real Prometheus scraping `listen` and `work`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
P = "minio_s3_mirror_"
BACKLOG = f"max({P}tasks_pending) + sum({P}tasks_unacked)"
FINISHED = (
    f"sum(rate({P}objects_replicated_total[5m]) or vector(0))"
    f" + sum(rate({P}objects_skipped_total[5m]) or vector(0))"
)


def quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({P}{metric}_bucket[5m])))"


# (title, unit, kind, [(legend, query)], description): one row of 3 panels per line below.
PANELS: list[tuple[str, str, str, list[tuple[str, str]], str]] = [
    (
        "Backlog (ready + unacked)",
        "short",
        "timeseries",
        [
            ("ready", f"max({P}tasks_pending)"),
            ("unacked (in workers)", f"sum({P}tasks_unacked)"),
        ],
        "Tasks in the work queue not yet delivered, and delivered but not yet acked. "
        "`minio-s3-mirror status` gives the oldest waiting task's age.",
    ),
    (
        "Backlog age: time to drain at the current rate",
        "s",
        "stat",
        [("time to drain", f"({BACKLOG}) / clamp_min({FINISHED}, 0.001)")],
        "Backlog divided by tasks finished per second over 5 minutes.",
    ),
    (
        "Copies in flight",
        "short",
        "stat",
        [("copies", f"sum({P}copies_in_flight)")],
        "Copies under way in all workers.",
    ),
    (
        "Objects copied per second",
        "ops",
        "timeseries",
        [
            ("copied", f"sum(rate({P}objects_replicated_total[5m]))"),
            ("deleted", f"sum(rate({P}objects_deleted_total[5m]))"),
            ("skipped: {{reason}}", f"sum by (reason) (rate({P}objects_skipped_total[5m]))"),
        ],
        "Verified copies, opt-in deletes, and tasks with nothing to do (by reason).",
    ),
    (
        "Bytes copied per second",
        "Bps",
        "timeseries",
        [("bytes", f"sum(rate({P}bytes_replicated_total[5m]))")],
        "Bytes copied and verified.",
    ),
    (
        "Replication latency (event to verified copy)",
        "s",
        "timeseries",
        [
            ("p50", quantile(0.5, "replication_latency_seconds")),
            ("p99", quantile(0.99, "replication_latency_seconds")),
            ("copy p99", quantile(0.99, "copy_duration_seconds")),
        ],
        "The MinioS3MirrorLagging alert fires when p99 stays above 15 minutes.",
    ),
    (
        "Failures by kind",
        "ops",
        "timeseries",
        [
            ("{{kind}}", f"sum by (kind) (rate({P}copy_failures_total[5m]))"),
            ("sent to a retry tier", f"sum(rate({P}retries_total[5m]))"),
        ],
        "Failed copy attempts by kind (transient, permanent, conflict, malformed).",
    ),
    (
        "Dead-letter queue growth",
        "short",
        "timeseries",
        [("dead-lettered per hour", f"sum(increase({P}dead_lettered_total[1h]))")],
        "Tasks parked in the dead-letter queue; `minio-s3-mirror dlq list` shows why.",
    ),
    (
        "Endpoint holds",
        "ops",
        "timeseries",
        [("{{side}}", f"sum by (side) (rate({P}endpoint_holds_total[5m]))")],
        "Waits for a source or target that does not answer: work is held, not lost.",
    ),
    (
        "Events in, tasks published",
        "ops",
        "timeseries",
        [
            ("events: {{mode}}", f"sum by (mode) (rate({P}events_received_total[5m]))"),
            ("tasks: {{origin}}", f"sum by (origin) (rate({P}tasks_published_total[5m]))"),
        ],
        "Object events the listener accepted, tasks RabbitMQ confirmed (all publishers).",
    ),
    (
        "Last reconcile per pair",
        "short",
        "table",
        [
            ("ok", f"{P}reconcile_success"),
            ("age", f"time() - {P}reconcile_last_run_timestamp_seconds"),
            ("copied", f"{P}reconcile_objects_copied"),
            ("failures", f"{P}reconcile_failures"),
        ],
        "Pushed by `reconcile` to a Pushgateway (MIRROR_PUSHGATEWAY_URL). ok 1 = no failure; "
        "age in seconds since the run ended.",
    ),
    (
        "Reconcile duration per pair",
        "s",
        "bargauge",
        [("{{pair}}", f"{P}reconcile_duration_seconds")],
        "How long each pair's last run took (MIRROR_RECONCILE_TIMEOUT stops it).",
    ),
]


def queries() -> list[str]:
    """Every query the dashboard runs."""
    return [q for _, _, _, targets, _ in PANELS for _, q in targets]


def panel(number: int, spec: tuple) -> dict:
    title, unit, kind, targets, description = spec
    width = 8
    return {
        "id": number + 1,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": (number % 3) * width, "y": (number // 3) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": query,
                "legendFormat": legend,
                "instant": kind == "table",
                "format": "table" if kind == "table" else "time_series",
            }
            for i, (legend, query) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    return {
        "uid": "minio-s3-mirror",
        "title": "minio-s3-mirror",
        "tags": ["minio-s3-mirror", "replication"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [panel(n, spec) for n, spec in enumerate(PANELS)],
    }


def prometheus_rule() -> dict:
    rules = yaml.safe_load((HERE / "rules.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "minio-s3-mirror",
            "labels": {"app.kubernetes.io/name": "minio-s3-mirror"},
        },
        "spec": rules,
    }


def files() -> dict[str, str]:
    header = "# Generated by deploy/monitoring/generate.py from rules.yml: do not edit.\n"
    return {
        "dashboard.json": json.dumps(dashboard(), indent=2) + "\n",
        "prometheus-rule.yaml": header + yaml.safe_dump(prometheus_rule(), sort_keys=False),
    }


if __name__ == "__main__":
    for name, text in files().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
