"""The Dockerfile, read with a real parser (no Docker engine here), and the seed's
`docker run` examples against its entrypoint and default command."""

from __future__ import annotations

import json
import re
import shlex

from dockerfile_parse import DockerfileParser

from replicator import config
from replicator.config import SECRET_VARIABLES
from tests.deploy.conftest import REPO

# The seed README's `docker run` examples, vendored: the seed README is not in this repository.
SEED_RUNS = REPO / "tests" / "deploy" / "data" / "seed-docker-runs.md"


def parsed() -> DockerfileParser:
    parser = DockerfileParser()
    parser.content = (REPO / "Dockerfile").read_text()
    return parser


def final_stage() -> list[dict]:
    instructions = parsed().structure
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def pins() -> dict[str, str]:
    lines = (REPO / "deploy" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_runs_as_a_non_root_user():
    users = [ins["value"] for ins in final_stage() if ins["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_entrypoint_and_default_command():
    stage = final_stage()
    entrypoint = [ins["value"] for ins in stage if ins["instruction"] == "ENTRYPOINT"][-1]
    command = [ins["value"] for ins in stage if ins["instruction"] == "CMD"][-1]
    assert json.loads(entrypoint) == ["minio-s3-mirror"]
    assert json.loads(command) == ["reconcile"]


def test_mc_is_built_from_the_version_the_tests_use():
    args = dict(
        ins["value"].split("=", 1) for ins in parsed().structure if ins["instruction"] == "ARG"
    )
    assert args["MC_VERSION"] == pins()["MC_VERSION"]
    runs = [ins["value"] for ins in parsed().structure if ins["instruction"] == "RUN"]
    assert any("go install" in run and "github.com/minio/mc@${MC_VERSION}" in run for run in runs)


def test_nothing_secret_is_baked_in():
    secretish = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)
    for ins in parsed().structure:
        if ins["instruction"] in ("ENV", "ARG", "LABEL"):
            name = ins["value"].split("=", 1)[0].split()[0]
            assert name not in SECRET_VARIABLES and not secretish.search(name), ins


def test_dockerignore_keeps_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".cache"):
        assert any(line.strip("/") == entry for line in ignored), entry


def seed_docker_runs() -> list[list[str]]:
    """Every `docker run` command in the seed README's code blocks, continuations joined."""
    text = SEED_RUNS.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)
    runs = []
    for block in blocks:
        # "# ... other variables" lines are the README's shorthand, not shell: drop them.
        lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        for line in joined.splitlines():
            if "docker run" in line:
                runs.append(shlex.split(line[line.index("docker run") :]))
    return runs


def test_seed_docker_runs_use_the_entrypoint_and_default_command(known_variables):
    runs = seed_docker_runs()
    assert len(runs) == 10, f"expected the seed README's 10 docker run examples, found {len(runs)}"
    for argv in runs:
        # The image is the last word: nothing after it, so the default command runs.
        assert argv[-1] == "minio-s3-mirror:latest", argv
        names = [argv[i + 1].split("=", 1)[0] for i, word in enumerate(argv) if word == "-e"]
        assert names, argv
        assert set(names) <= known_variables, set(names) - known_variables


def stage_runs(stage: list[dict]) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == "RUN"]


def test_base_images_are_pinned_by_digest_with_their_tag():
    structure = parsed().structure
    first_from = min(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    bases = dict(
        ins["value"].split("=", 1) for ins in structure[:first_from] if ins["instruction"] == "ARG"
    )
    assert set(bases) == {"GO_IMAGE", "PYTHON_IMAGE"}, bases
    for value in bases.values():
        assert re.fullmatch(r"[a-z0-9.-]+:[\w.-]+@sha256:[0-9a-f]{64}", value), value
    stages = [ins["value"].split() for ins in structure if ins["instruction"] == "FROM"]
    names = {words[2].lower() for words in stages if len(words) == 3}
    for words in stages:  # every stage starts from a pinned base or an earlier stage
        assert words[0] in ("${GO_IMAGE}", "${PYTHON_IMAGE}") or words[0] in names, words


def test_python_dependencies_come_only_from_the_hashed_lock():
    runs = " ".join(run for run in stage_runs(parsed().structure) if "pip install" in run)
    assert "--require-hashes" in runs and "-r /tmp/requirements.lock" in runs, runs
    copies = [ins["value"] for ins in parsed().structure if ins["instruction"] == "COPY"]
    assert "deploy/image/requirements.lock /tmp/requirements.lock" in copies
    # Our own package is installed without resolving anything more.
    for run in stage_runs(parsed().structure):
        for command in run.split("&&"):
            if "pip install" in command:
                assert "--no-deps" in command, command


def test_the_final_stage_installs_nothing_and_keeps_no_wheels():
    stage = final_stage()
    assert not any("pip" in run for run in stage_runs(stage))
    copied = [ins["value"] for ins in stage if ins["instruction"] == "COPY"]
    assert copied == [
        "--from=mc /go/bin/mc /usr/local/bin/mc",
        "--from=app /opt/minio-s3-mirror /opt/minio-s3-mirror",
        "deploy/image/healthcheck.py /opt/minio-s3-mirror/healthcheck.py",
    ]


def test_the_user_and_its_group_10001_are_created_explicitly():
    (run,) = [run for run in stage_runs(final_stage()) if "useradd" in run]
    assert re.search(r"groupadd\b.*--gid 10001\b", run), run
    assert re.search(r"useradd\b.*--uid 10001\b.*--gid 10001\b", run), run
    assert "--user-group" not in run
    users = [ins["value"] for ins in final_stage() if ins["instruction"] == "USER"]
    assert users[-1] == "10001:10001"


def test_ports_and_healthcheck_match_the_configuration():
    stage = final_stage()
    exposed = {ins["value"] for ins in stage if ins["instruction"] == "EXPOSE"}
    settings = config.load(
        {
            "MINIO_URL": "http://minio:9000",
            "MINIO_ACCESS_KEY": "a",
            "MINIO_SECRET_KEY": "b",
            "AWS_URL": "https://s3.amazonaws.com",
            "AWS_ACCESS_KEY": "c",
            "AWS_SECRET_KEY": "d",
            "BUCKET_PAIR": "minio/source:aws/destination",
        }
    )
    ports = f"{settings.webhook_address[1]} {settings.metrics_address[1]}"
    assert exposed == {ports}
    (check,) = [ins["value"] for ins in stage if ins["instruction"] == "HEALTHCHECK"]
    assert "/opt/minio-s3-mirror/healthcheck.py" in check, check


def test_dockerignore_lets_the_image_files_in():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ignored.index("!deploy/image") > ignored.index("deploy")
