"""Scale-out on a 3-node RabbitMQ cluster (three nodes on loopback): the node leading the
work queue is SIGKILLed under load; the listener and workers fail over to the other nodes
(RABBITMQ_URL lists all three) and the target ends equal to the source, nothing parked."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest
import stack as local_stack

from replicator import topology
from tests.integration.conftest import WEBHOOK_ARN, dead_letters
from tests.integration.test_pipeline import (
    assert_identical,
    mixed_objects,
    pair_env,
    target_keys,
    wait_for_keys,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[local_stack.RabbitCluster]:
    """Three clustered RabbitMQ nodes with the topology declared (only this module pays)."""
    nodes = local_stack.RabbitCluster(size=3).start()
    try:
        connection = pika.BlockingConnection(pika.URLParameters(nodes.nodes[0].url))
        topology.declare(connection.channel())
        connection.close()
        yield nodes
    finally:
        nodes.stop()


def urls(first: local_stack.RabbitNode, cluster: local_stack.RabbitCluster) -> str:
    """RABBITMQ_URL naming every node, `first` first (clients connect to the first that answers)."""
    return ",".join(n.url for n in [first, *(n for n in cluster.nodes if n is not first)])


def paced_upload(client, bucket: str, objects, per_put_s: float = 0.1) -> threading.Thread:
    """Upload in the background, spread over some seconds so a fault lands mid-run."""

    def put(item) -> None:
        key, (body, content_type, metadata) = item
        client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata
        )
        time.sleep(per_put_s)

    def run() -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, objects.items()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_quorum_queues_have_a_replica_on_every_node(cluster):
    queues = cluster.queues()
    assert {topology.WORK_QUEUE, topology.DEAD_QUEUE} <= set(queues)
    assert any(".retry." in name for name in queues)
    for name, queue in queues.items():
        assert queue["type"] == "quorum", name
        assert sorted(queue["members"]) == sorted(n.node for n in cluster.nodes), name
        assert sorted(queue["online"]) == sorted(queue["members"]), name


def test_sigkill_of_the_work_queue_leader_under_load_loses_nothing(
    cluster, stack, notifying, source_bucket, buckets, procs, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN), buckets("target")
    leader = cluster.leader(topology.WORK_QUEUE)
    follower = next(node for node in cluster.nodes if node is not leader)
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    # The listener and one worker are connected to the leader, so they must fail over;
    # the other worker is connected to a follower and sees only the leader change.
    listener = procs("listen", "--mode", "webhook", **env, RABBITMQ_URL=urls(leader, cluster))
    workers = [
        procs("work", **env, RABBITMQ_URL=urls(leader, cluster)),
        procs("work", **env, RABBITMQ_URL=urls(follower, cluster)),
    ]
    objects = mixed_objects(300)
    del objects["big/twelve.bin"]
    target = stack.target.client()

    loading = paced_upload(notifying.client(), src, objects)
    try:
        local_stack.wait_until(
            lambda: len(target_keys(target, dst)) >= 30, 120, "the load to be under way"
        )
        leader.kill()
        landed_at_kill = len(target_keys(target, dst))
    finally:
        loading.join()
    assert landed_at_kill < len(objects), "the kill came after the run: nothing was tested"

    survivor = cluster.running()[0]
    new_leader = local_stack.wait_until(
        lambda: (
            cluster.queues(survivor)[topology.WORK_QUEUE]["leader"] != leader.node
            and cluster.queues(survivor)[topology.WORK_QUEUE]["leader"]
        ),
        60,
        "a new leader for the work queue",
    )
    assert new_leader in {n.node for n in cluster.running()}

    # A loaded 2-core machine is slow, not lossy; pytest-timeout stops the test at 600 s.
    wait_for_keys(target, dst, set(objects), timeout=400)
    assert_identical(target, dst, objects)
    assert dead_letters(survivor) == []
    local_stack.wait_until(
        lambda: cluster.queues(survivor)[topology.WORK_QUEUE].get("messages", 0) == 0,
        60,
        "an empty work queue",
    )
    for proc in (listener, *workers):
        assert proc.popen.poll() is None, f"{proc.args[0]} exited: {proc.log.read_text()[-2000:]}"
