"""`minio-s3-mirror status` on the real stack: a backlog, a dead letter, a down target, and
the last reconcile per pair, then the same pipeline healthy."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator

import pika
import pytest
import stack as local_stack

from replicator import topology
from replicator.reconcile import record
from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_pipeline import pair_env, publish

pytestmark = pytest.mark.integration


def purge_results(rabbit) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    record.declare(channel)
    channel.queue_purge(record.RESULTS_QUEUE)
    connection.close()


def status(run_cli, env: dict[str, str], *args: str) -> tuple[int, dict, str]:
    done = run_cli("status", "--json", "--peek", *args, env=env, timeout=120)
    assert done.stdout.startswith("{"), done.stderr
    text = run_cli("status", *args, env=env, timeout=120)
    return done.returncode, json.loads(done.stdout), text.stdout + done.stderr + text.stderr


def test_status_shows_a_backlog_a_dead_letter_a_down_target_and_the_last_reconcile(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, run_cli
):
    purge_results(rabbit)
    src, dst = source_bucket(), buckets("target")
    gone = "nosuch-source-bucket"
    env = {
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        "RABBITMQ_URL": rabbit.url,
        "BUCKET_PAIRS": f"minio/{src}:aws/{dst};minio/{gone}:aws/{dst}",
    }
    notifying.client().put_object(Bucket=src, Key="nightly.txt", Body=b"n")
    # Reconcile records one result per pair: one copied, one failed (no such bucket).
    done = run_cli("reconcile", env=env, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr

    # A dead letter: a worker parks a task for a bucket in no pair, then stops.
    worker = procs("work", **pair_env(src, dst))
    publish(rabbit, Task(bucket="not-in-any-pair", key="x", origin="backfill").to_json())
    local_stack.wait_until(lambda: len(dead_letters(rabbit)) == 1, 60, "the dead letter")
    worker.stop()

    # A backlog with no worker: 3 tasks, the oldest from an event 20 minutes ago.
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    stamp = old.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    publish(
        rabbit, Task(bucket=src, key="old one.txt", event_time=stamp, origin="webhook").to_json()
    )
    publish(rabbit, *(Task(bucket=src, key=f"k{i}", origin="backfill").to_json() for i in (1, 2)))

    # The target down: AWS_URL on a port where nothing listens.
    down = {**env, "AWS_URL": f"http://127.0.0.1:{local_stack.free_port()}"}
    code, report, text = status(run_cli, down)

    assert code == 1, text
    assert report["healthy"] is False
    assert report["work"]["ready"] == 3 and report["work"]["consumers"] == 0
    assert report["dead"]["ready"] == 1
    ((reason, count),) = [(r["reason"], r["count"]) for r in report["dead_reasons"]]
    assert "'not-in-any-pair' is in no configured pair" in reason and count == 1
    assert report["oldest_key"] == "old one.txt"
    assert 19 * 60 <= report["oldest_waiting_s"] <= 25 * 60
    sides = {s["side"]: s["answers"] for s in report["endpoints"]}
    assert sides == {"source": True, "target": False}
    assert report["reconcile"][f"minio/{src}:aws/{dst}"]["ok"] is True
    assert report["reconcile"][f"minio/{src}:aws/{dst}"]["copied"] == 1
    assert report["reconcile"][f"minio/{gone}:aws/{dst}"]["ok"] is False
    problems = "\n".join(report["problems"])
    for expected in (
        "target http://127.0.0.1:",
        "1 task(s) in the dead-letter queue",
        "3 task(s) waiting and no worker consuming",
        "the oldest waiting task is 20m old",
        f"the last reconcile of minio/{gone}:aws/{dst} failed",
    ):
        assert expected in problems, problems
    assert "minio-s3-mirror status: DEGRADED" in text
    assert "dead    1 dead-lettered" in text
    for secret in (notifying.secret_key, stack.target.secret_key, stack.slack.token):
        assert secret not in text and secret not in json.dumps(report)
    # Nothing was taken off a queue: the backlog and the dead letter are still there.
    assert len(dead_letters(rabbit)) == 1
    waiting = amqp.queue_declare(topology.WORK_QUEUE, passive=True).method.message_count
    assert waiting == 3


def test_status_is_healthy_when_everything_answers_and_nothing_waits(
    stack, notifying, source_bucket, buckets, amqp, rabbit, run_cli
):
    purge_results(rabbit)
    src, dst = source_bucket(), buckets("target")
    env = {
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        "RABBITMQ_URL": rabbit.url,
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
    }
    assert run_cli("reconcile", env=env, timeout=300).returncode == 0
    code, report, text = status(run_cli, env)
    assert code == 0, text
    assert report["healthy"] is True and report["problems"] == []
    assert report["reconcile"][f"minio/{src}:aws/{dst}"]["ok"] is True
    assert "minio-s3-mirror status: healthy" in text


@pytest.fixture
def managed_rabbit(stack) -> Iterator[tuple[local_stack.RabbitNode, str]]:
    """A RabbitMQ node of its own with the management plugin (and its HTTP API) on."""
    node = local_stack.RabbitNode(stack.root, f"rabbit-management-{local_stack.free_port()}")
    port = local_stack.free_port()
    (node.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
    with open(node.dir / "rabbitmq.conf", "a") as conf:
        conf.write(f"management.tcp.port = {port}\nmanagement.tcp.ip = 127.0.0.1\n")
    node.start()
    yield node, f"http://127.0.0.1:{port}/"
    node.stop()


def test_status_counts_the_tasks_workers_hold_unacked(
    stack, notifying, buckets, procs, managed_rabbit, run_cli
):
    node, management = managed_rabbit
    src, dst = buckets("source"), buckets("target")
    down = f"http://127.0.0.1:{local_stack.free_port()}"
    env = {"RABBITMQ_URL": node.url, "AWS_URL": down, **pair_env(src, dst)}
    # One worker, one copy thread, a target that does not answer: it holds what it takes.
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    topology.declare(connection.channel())
    connection.close()
    worker = procs("work", **env, MIRROR_MAX_WORKERS="1")
    publish(node, *(Task(bucket=src, key=f"k{i}", origin="backfill").to_json() for i in range(8)))
    status_env = {
        "MINIO_URL": notifying.url,
        "MINIO_ACCESS_KEY": notifying.access_key,
        "MINIO_SECRET_KEY": notifying.secret_key,
        "RABBITMQ_MANAGEMENT_URL": management,
        **env,
    }

    def held() -> dict | None:
        done = run_cli("status", "--json", env=status_env, timeout=120)
        report = json.loads(done.stdout)
        work = report["work"]
        # The API's counts are sampled (every 5 s): wait until they add up.
        return (
            report if (work["unacked"] or 0) > 0 and work["ready"] + work["unacked"] == 8 else None
        )

    report = local_stack.wait_until(held, 60, "tasks held unacked by the worker")
    assert report["work"]["consumers"] == 1
    assert report["notes"] == []
    text = run_cli("status", env=status_env, timeout=120).stdout
    unacked = report["work"]["unacked"]
    assert f"{unacked} unacked, 1 consumer(s)" in text or "unacked, 1 consumer(s)" in text
    worker.stop()
