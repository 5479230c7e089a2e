"""deploy/kubernetes: every overlay renders with `kubectl kustomize`, every object
validates offline against the Kubernetes schemas, and the invariants hold."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from replicator import config
from tests.deploy.conftest import REPO

KUBE = REPO / "deploy" / "kubernetes"
TARGETS = ["base", "overlays/rabbitmq-cluster", "overlays/keda", "overlays/irsa"]
CUSTOM_KINDS = {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication"}  # no built-in schema


def render(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make test` installs Debian's kubectl"
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / target)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"].get("name", ""): o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    """Every pod template, by owner name: Deployments, CronJobs and Jobs."""
    specs = {}
    for o in objects:
        if o["kind"] == "Deployment":
            specs[o["metadata"]["name"]] = o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            specs[o["metadata"]["name"]] = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "Job":
            specs[o["metadata"].get("name") or "job"] = o["spec"]["template"]["spec"]
    return specs


def backfill_job() -> list[dict]:
    return [yaml.safe_load((KUBE / "jobs" / "backfill.yaml").read_text())]


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_offline(target):
    objects = render(target)
    assert objects
    version = kubernetes_validate.latest_version()
    for obj in objects + backfill_job():
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target):
    for owner, spec in pod_specs(render(target) + backfill_job()).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] != 0, owner
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, owner
            assert security["allowPrivilegeEscalation"] is False, owner
            assert security["capabilities"]["drop"] == ["ALL"], owner
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), owner
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{owner}: mc and Python need a writable /tmp"


def test_reconcile_cronjob_is_the_seed_nightly_job():
    (cron,) = by_kind(render("base"), "CronJob").values()
    assert cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["reconcile"]


def test_reconcile_deadline_is_a_little_above_the_run_timeout():
    """MIRROR_RECONCILE_TIMEOUT stops mc and reports; activeDeadlineSeconds ends a run that
    could not, so a hung run never blocks later nights (concurrencyPolicy: Forbid)."""
    objects = render("base")
    (cron,) = by_kind(objects, "CronJob").values()
    (configmap,) = by_kind(objects, "ConfigMap").values()
    job = cron["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    given = {e["name"]: e["value"] for e in container.get("env", [])}
    value = given.get("MIRROR_RECONCILE_TIMEOUT", configmap["data"].get("MIRROR_RECONCILE_TIMEOUT"))
    parse = config.parse_duration(1, config.MAX_RECONCILE_TIMEOUT_S, "6h")
    timeout = parse("MIRROR_RECONCILE_TIMEOUT", value) if value else config.RECONCILE_TIMEOUT_S

    deadline = job["activeDeadlineSeconds"]

    assert timeout + 60 <= deadline <= timeout + 3600, (timeout, deadline)
    assert deadline < 24 * 3600, "a run must end before the next night's"


def test_worker_probes_and_grace_period():
    worker = by_kind(render("base"), "Deployment")["minio-s3-mirror-worker"]
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["work"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == 9100
    # Longer than the longest copy: a SIGTERMed worker finishes what it holds.
    assert spec["terminationGracePeriodSeconds"] >= 600


def test_listener_runs_webhook_mode_twice_behind_a_service():
    objects = render("base")
    listener = by_kind(objects, "Deployment")["minio-s3-mirror-listener"]
    assert listener["spec"]["replicas"] == 2
    (container,) = listener["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["listen", "--mode", "webhook"]
    service = by_kind(objects, "Service")["minio-s3-mirror-listener"]
    assert service["spec"]["selector"] == listener["spec"]["selector"]["matchLabels"]
    assert 8080 in {p["port"] for p in service["spec"]["ports"]}


def test_disruption_budgets_cover_listener_and_workers():
    budgets = by_kind(render("base"), "PodDisruptionBudget")
    deployments = by_kind(render("base"), "Deployment")
    selectors = [b["spec"]["selector"]["matchLabels"] for b in budgets.values()]
    for deployment in deployments.values():
        assert deployment["spec"]["selector"]["matchLabels"] in selectors


def test_configuration_names_are_ones_the_code_reads(known_variables):
    objects = render("base")
    (configmap,) = by_kind(objects, "ConfigMap").values()
    (secret,) = by_kind(objects, "Secret").values()
    assert set(configmap["data"]) <= known_variables
    assert set(secret["stringData"]) <= known_variables
    # The example Secret carries placeholders only.
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())


def test_overlays_add_the_rabbitmq_cluster_and_keda_scaling():
    (cluster,) = by_kind(render("overlays/rabbitmq-cluster"), "RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3
    keda = render("overlays/keda")
    (scaled,) = by_kind(keda, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "minio-s3-mirror-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "minio-s3-mirror.tasks"
    (auth,) = by_kind(keda, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0]["key"] == "RABBITMQ_URL"
