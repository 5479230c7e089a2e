"""Pipeline fixtures: a source MinIO that notifies (webhook + AMQP targets), RabbitMQ,
and the listener and workers as real processes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
import stack as local_stack

from replicator import topology
from tests.conftest import CLI, base_env, empty_bucket

WEBHOOK_TOKEN = "hook-token-for-tests"
WEBHOOK_ARN = "arn:minio:sqs::mirror:webhook"
AMQP_ARN = "arn:minio:sqs::mirror:amqp"
TEST_DELAYS = (1, 2)  # delay tiers of the workers the tests start (MIRROR_RETRY_DELAYS)


@pytest.fixture(scope="session")
def webhook_port() -> int:
    return local_stack.free_port()


@pytest.fixture(scope="session")
def notifying(stack, rabbit, webhook_port) -> Iterator[local_stack.MinioServer]:
    """A source MinIO with a webhook target (our listener) and an AMQP target (our exchange)."""
    queues = stack.root / "notify-queues"
    server = local_stack.MinioServer(
        "notifying",
        stack.root,
        {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_mirror": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_mirror": f"http://127.0.0.1:{webhook_port}/",
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_mirror": WEBHOOK_TOKEN,
            "MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_mirror": str(queues / "webhook"),
            "MINIO_NOTIFY_AMQP_ENABLE_mirror": "on",
            "MINIO_NOTIFY_AMQP_URL_mirror": rabbit.url.removesuffix("/%2F"),
            "MINIO_NOTIFY_AMQP_EXCHANGE_mirror": topology.EXCHANGE,
            "MINIO_NOTIFY_AMQP_EXCHANGE_TYPE_mirror": "direct",
            "MINIO_NOTIFY_AMQP_ROUTING_KEY_mirror": topology.TASKS,
            "MINIO_NOTIFY_AMQP_DURABLE_mirror": "on",
            "MINIO_NOTIFY_AMQP_DELIVERY_MODE_mirror": "2",
            "MINIO_NOTIFY_AMQP_QUEUE_DIR_mirror": str(queues / "amqp"),
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture
def source_bucket(notifying) -> Iterator[Callable[[str | None], str]]:
    """make(arn, events) creates a bucket on the notifying source, wired to that target (or
    none) for those events."""
    from minio import Minio
    from minio.notificationconfig import NotificationConfig, QueueConfig

    client = notifying.client()
    minio = Minio(
        notifying.url.split("//")[1], notifying.access_key, notifying.secret_key, secure=False
    )
    made = []

    def make(arn: str | None = None, events: tuple[str, ...] = ("s3:ObjectCreated:*",)) -> str:
        name = f"nsrc-{len(made)}-{local_stack.secrets.token_hex(3)}"
        client.create_bucket(Bucket=name)
        made.append(name)
        if arn:
            config = QueueConfig(queue=arn, events=list(events))
            minio.set_bucket_notification(name, NotificationConfig(queue_config_list=[config]))
        return name

    yield make
    for name in made:
        # Unwired first: emptying a bucket wired for removals would publish an event per
        # key, which MinIO's queue_dir store may deliver during a later test.
        minio.delete_bucket_notification(name)
        empty_bucket(client, name)
        client.delete_bucket(Bucket=name)


@pytest.fixture
def fault_proxy(stack) -> Iterator[local_stack.FaultProxy]:
    """A fault-injecting proxy in front of the target MinIO; tests add the rules."""
    proxy = local_stack.FaultProxy(stack.target.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def amqp(rabbit) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel with the topology declared and every queue purged before the test."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    topology.declare(channel)
    topology.declare(channel, TEST_DELAYS)
    for queue in queue_names():
        channel.queue_purge(queue)
    yield channel
    with contextlib.suppress(pika.exceptions.AMQPError):  # a test may restart RabbitMQ
        connection.close()


def queue_names() -> list[str]:
    delays = (*topology.RETRY_TIERS_S, *TEST_DELAYS)
    tiers = [f"{topology.WORK_QUEUE}.{topology.retry_route(s)}" for s in delays]
    return [topology.WORK_QUEUE, topology.DEAD_QUEUE, *tiers]


def dead_letters(rabbit) -> list[tuple[dict, bytes]]:
    """Every parked message (headers, body), left in place."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(topology.DEAD_QUEUE)
            if method is None:
                break
            found.append((properties.headers or {}, body))
        return found  # closing the channel without acks puts them back
    finally:
        connection.close()


class Proc:
    """A CLI process with its JSON log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                [CLI, *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode if self.popen else None

    def records(self) -> list[dict]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def outcomes(self, what: str) -> list[dict]:
        return [r for r in self.records() if r.get("outcome") == what]


@pytest.fixture
def spawn_cli(stack, rabbit, tmp_path) -> Iterator[Callable[..., Proc]]:
    """spawn(*args, **env) starts `minio-s3-mirror <args>` with the session stack's
    variables and RabbitMQ, and the pipeline tests' settings; `env` overrides them (None
    unsets one). For tests that bring their own endpoints (TLS, proxies, slow links)."""
    started: list[Proc] = []

    def spawn(*args: str, **env: str | None) -> Proc:
        full = {
            **base_env(stack),
            "RABBITMQ_URL": rabbit.url,
            "MIRROR_LOG_FORMAT": "json",
            "MIRROR_DEBUG": "true",
            "MIRROR_RETRY_DELAYS": ",".join(map(str, TEST_DELAYS)),
            "METRICS_ADDRESS": f"127.0.0.1:{local_stack.free_port()}",
            **env,
        }
        full = {k: v for k, v in full.items() if v is not None}
        proc = Proc(list(args), full, tmp_path / f"{args[0]}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.stop()


@pytest.fixture
def procs(stack, rabbit, notifying, tmp_path) -> Iterator[Callable[..., Proc]]:
    """spawn(*args, **env) starts `minio-s3-mirror <args>` against the pipeline stack."""
    started: list[Proc] = []

    def spawn(*args: str, **env: str) -> Proc:
        full = {
            **base_env(stack),
            "MINIO_URL": notifying.url,
            "MINIO_ACCESS_KEY": notifying.access_key,
            "MINIO_SECRET_KEY": notifying.secret_key,
            "RABBITMQ_URL": rabbit.url,
            "MIRROR_LOG_FORMAT": "json",
            "MIRROR_DEBUG": "true",  # per-object outcome lines are debug
            "MIRROR_RETRY_DELAYS": ",".join(map(str, TEST_DELAYS)),
            "WEBHOOK_AUTH_TOKEN": WEBHOOK_TOKEN,
            "METRICS_ADDRESS": f"127.0.0.1:{local_stack.free_port()}",
            **env,
        }
        proc = Proc(list(args), full, tmp_path / f"{args[0]}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.stop()
