"""deploy/monitoring: the alert rules pass promtool's checks and unit tests (every alert
fires when it should and stays silent when it should not), the generated files are
current, every alert has its runbook line, and the kustomization renders."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import yaml

from tests.deploy.conftest import REPO

MONITORING = REPO / "deploy" / "monitoring"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs Debian's prometheus package"
    return found


def generator():
    spec = importlib.util.spec_from_file_location("generate", MONITORING / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alerts() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules():
    done = subprocess.run(
        [promtool(), "check", "rules", "rules.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass():
    done = subprocess.run(
        [promtool(), "test", "rules", "rules.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_silent():
    tests = yaml.safe_load((MONITORING / "rules.test.yml").read_text())["tests"]
    fires, silent = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_every_alert_has_a_runbook_line_in_operations():
    page = (REPO / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in page.splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert anchor in headings, f"docs/operations.md has no heading for {rule['alert']}"
        section = page.split(f"#### {rule['alert']}\n", 1)[1].split("\n#", 1)[0]
        assert len(section.strip()) > 40, f"{rule['alert']}: the runbook line is empty"


def test_the_generated_files_are_current():
    for name, text in generator().files().items():
        assert (MONITORING / name).read_text() == text, (
            f"deploy/monitoring/{name} is stale: run .venv/bin/python deploy/monitoring/generate.py"
        )


def test_the_prometheus_rule_carries_the_rules_file_unchanged():
    rule = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MONITORING / "rules.yml").read_text())


def test_the_dashboard_has_the_views_an_operator_asks_for_first():
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "tasks_pending",  # backlog ready
        "tasks_unacked",  # backlog unacked
        "objects_replicated_total",  # copies/s
        "bytes_replicated_total",  # bytes/s
        "replication_latency_seconds_bucket",  # p50 / p99
        "copy_failures_total",  # failures by kind
        "dead_lettered_total",  # DLQ growth
        "endpoint_holds_total",  # endpoint holds
        "reconcile_success",  # last reconcile per pair
    ):
        assert f"minio_s3_mirror_{metric}" in queries, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_kustomization_renders():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make test` installs Debian's kubectl"
    out = subprocess.run(
        [kubectl, "kustomize", str(MONITORING)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}
    assert set(kinds) == {"PrometheusRule", "PodMonitor", "ConfigMap"}
    board = kinds["ConfigMap"]
    assert board["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(board["data"]["dashboard.json"])["uid"] == "minio-s3-mirror"
