"""deploy/compose/compose.yaml: parses, is wired, and uses only real configuration names."""

from __future__ import annotations

import yaml

from tests.deploy.conftest import REPO

COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_minio_webhook_target_points_at_the_listener_with_a_queue_dir():
    minio = services()["minio"]["environment"]
    listener = services()["listener"]
    host_port = listener["environment"]["WEBHOOK_ADDRESS"].rsplit(":", 1)[1]
    assert minio["MINIO_NOTIFY_WEBHOOK_ENABLE_mirror"] == "on"
    assert minio["MINIO_NOTIFY_WEBHOOK_ENDPOINT_mirror"] == f"http://listener:{host_port}/"
    assert minio["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_mirror"]
    assert (
        minio["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_mirror"]
        == listener["environment"]["WEBHOOK_AUTH_TOKEN"]
    )


def test_our_services_use_only_configuration_the_code_reads(known_variables):
    for name in ("listener", "worker", "reconcile"):
        environment = services()[name]["environment"]
        assert set(environment) <= known_variables, (name, set(environment) - known_variables)


def test_our_services_point_at_the_stack_in_the_file():
    names = set(services())
    for name, command in (("listener", ["listen", "--mode", "webhook"]), ("worker", ["work"])):
        service = services()[name]
        assert service["command"] == command
        environment = service["environment"]
        assert environment["MINIO_URL"].split("//")[1].split(":")[0] in names
        assert environment["AWS_URL"].split("//")[1].split(":")[0] in names
        assert "@rabbitmq:5672" in environment["RABBITMQ_URL"]
        assert service["read_only"] is True


def test_no_secret_is_written_into_the_file():
    environment = services()["worker"]["environment"]
    for name in ("MINIO_SECRET_KEY", "AWS_SECRET_KEY"):
        assert environment[name].startswith("${"), name
