"""Fixtures on the real local stack (deploy/local/stack.py): no mocks on the replication path."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy" / "local"))

import stack as local_stack  # noqa: E402

CLI = str(Path(sys.executable).with_name("minio-s3-mirror"))
_names = itertools.count()
# Fixtures that start part of the local stack (MinIO, RabbitMQ, moto): a test using any
# of them, directly or through another fixture, is marked `stack`, so
# `pytest -m "not stack"` runs the unit tests alone (docs/development.md).
STACK_FIXTURES = frozenset({"stack", "rabbit", "aws_like"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: starts part of the local stack (automatic)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack() -> Iterator[local_stack.Stack]:
    """Source and target MinIO plus the fake Slack, for the whole session."""
    running = local_stack.Stack().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def rabbit(stack: local_stack.Stack) -> Iterator[local_stack.RabbitNode]:
    """A private RabbitMQ node (started once, only for tests that ask for it)."""
    node = local_stack.RabbitNode(stack.root).start()
    stack.rabbit = node
    yield node
    node.stop()
    stack.rabbit = None


@pytest.fixture
def slack(stack: local_stack.Stack) -> local_stack.FakeSlack:
    stack.slack.reset()
    return stack.slack


def empty_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


@pytest.fixture
def buckets(stack: local_stack.Stack) -> Iterator[Callable[[str], str]]:
    """make(side) creates a fresh bucket on "source" or "target"; all are removed after."""
    made: list[tuple[object, str]] = []

    def make(side: str) -> str:
        client = getattr(stack, side).client()
        name = f"{side[:3]}-{os.getpid()}-{next(_names)}"
        client.create_bucket(Bucket=name)
        made.append((client, name))
        return name

    yield make
    for client, name in made:
        empty_bucket(client, name)
        client.delete_bucket(Bucket=name)


def base_env(stack: local_stack.Stack) -> dict[str, str]:
    """A clean environment: the stack's variables, mc on PATH, nothing from the caller."""
    env = {
        "PATH": f"{local_stack.BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    return {**env, **stack.env()}


@pytest.fixture
def run_cli(stack: local_stack.Stack) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli(*args, env={...}) runs the real console script; None in env unsets a variable."""

    def run(*args: str, env: dict[str, str | None], timeout: float = 300):
        full = base_env(stack)
        full.update(env)
        full = {k: v for k, v in full.items() if v is not None}
        return subprocess.run(
            [CLI, *args], env=full, capture_output=True, text=True, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def aws_like(tmp_path_factory) -> Iterator[local_stack.MotoServer]:
    """moto's S3 server, the AWS-like target (started once, only for tests that ask for it)."""
    server = local_stack.MotoServer(tmp_path_factory.mktemp("aws-like")).start()
    yield server
    server.stop()


class Target:
    """One kind of target for tests that run against both: the target MinIO or the
    AWS-like server. `bucket()` makes a fresh bucket (with `retention_days`, an Object Lock
    bucket with that GOVERNANCE default retention); all are removed after the test."""

    def __init__(self, name: str, server) -> None:
        self.name = name
        self.server = server
        self.made: list[str] = []

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **kwargs):
        return self.server.client(**kwargs)

    def env(self) -> dict[str, str]:
        """AWS_URL, AWS_ACCESS_KEY, AWS_SECRET_KEY and AWS_REGION for our CLI."""
        server = self.server
        if isinstance(server, local_stack.MotoServer):
            return server.env()
        return {
            "AWS_URL": server.url,
            "AWS_ACCESS_KEY": server.access_key,
            "AWS_SECRET_KEY": server.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def bucket(self, *, retention_days: int = 0) -> str:
        kind = "lck" if retention_days else "dst"
        name = f"{kind}-{self.name[:3]}-{os.getpid()}-{next(_names)}"
        local_stack.make_bucket(self.client(), name, retention_days=retention_days)
        self.made.append(name)
        return name

    def cleanup(self) -> None:
        from botocore.exceptions import ClientError

        for name in self.made:
            try:
                local_stack.remove_bucket(self.client(), name)
            except ClientError:
                # moto lists versions without encoding-type=url: a key holding a carriage
                # return comes back with a newline and cannot be deleted. Its state dies
                # with the server.
                if not isinstance(self.server, local_stack.MotoServer):
                    raise
        self.made.clear()


@pytest.fixture(params=["minio", "aws-like"])
def target(request, stack) -> Iterator[Target]:
    """The target kind the test runs against; the AWS-like server starts only when asked."""
    server = stack.target if request.param == "minio" else request.getfixturevalue("aws_like")
    made = Target(request.param, server)
    yield made
    made.cleanup()
