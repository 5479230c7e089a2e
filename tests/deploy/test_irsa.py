"""The IRSA overlay: pods run as an IAM-role service account, with no static AWS keys."""

from __future__ import annotations

from replicator import config
from tests.deploy.test_kubernetes import by_kind, pod_specs, render


def test_every_pod_runs_as_the_role_annotated_service_account():
    objects = render("overlays/irsa")
    account = by_kind(objects, "ServiceAccount")["minio-s3-mirror"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    specs = pod_specs(objects)
    assert specs and all(s.get("serviceAccountName") == "minio-s3-mirror" for s in specs.values())


def test_without_static_keys_the_configuration_uses_the_aws_chain():
    objects = render("overlays/irsa")
    secret = by_kind(objects, "Secret")["minio-s3-mirror"]["stringData"]
    assert "AWS_ACCESS_KEY" not in secret and "AWS_SECRET_KEY" not in secret
    settings = config.load({**by_kind(objects, "ConfigMap")["minio-s3-mirror"]["data"], **secret})
    assert settings.target is not None and not settings.target.static
