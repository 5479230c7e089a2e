"""The worker's handling of one delivery against the real source and target MinIO (no
RabbitMQ needed: `handle` is the copy thread's whole job)."""

from __future__ import annotations

import queue
import time

import pika
import pytest

from replicator import config, message
from replicator import worker as worker_module
from replicator.policy import Decision
from replicator.task import Task
from replicator.worker import Delivery, Worker
from tests.conftest import base_env
from tests.replicator.test_copier import Requests


@pytest.fixture
def worker(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    settings = config.load({**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}"})
    stack.source.client().put_object(Bucket=src, Key="k", Body=b"copied already")
    work = Worker(settings, concurrency=2)
    first = Delivery(1, Task(bucket=src, key="k", origin="stream").to_json(), {})
    assert work.handle(first).action == "ack"
    return src, work


@pytest.mark.parametrize(
    "delivery",
    [
        {"redelivered": True},
        {"headers": {message.FIRST_FAILURE: "2026-11-25T00:00:00+00:00", message.ATTEMPT: 1}},
        {"headers": {message.FIRST_FAILURE: "2026-11-25T00:00:00+00:00"}},  # dlq replay
    ],
    ids=["redelivered", "retried", "replayed from the dlq"],
)
def test_a_task_seen_before_looks_before_it_writes(stack, worker, delivery):
    """Even while a stream of new keys has the engine writing first, a task RabbitMQ
    delivered before (or a retry, or a DLQ replay) of an up-to-date object costs two
    HEADs (design 7.1), not a GET and a refused PUT."""
    src, work = worker
    body = Task(bucket=src, key="k", origin="stream").to_json()
    work.copier.fresh.share = 1.0  # as after a long stream of new keys

    requests = Requests(stack)
    decision = work.handle(
        Delivery(
            2,
            body,
            delivery.get("headers", {}),
            **{k: v for k, v in delivery.items() if k != "headers"},
        )
    )
    assert decision.action == "ack"
    assert requests.spent() == {"target HeadObject": 1, "source HeadObject": 1}


def test_a_first_delivery_writes_first_while_keys_are_new(stack, worker):
    """The other side of the same switch: a first delivery, in the same state, tries the
    write (and finds the object there)."""
    src, work = worker
    work.copier.fresh.share = 1.0

    requests = Requests(stack)
    again = Delivery(2, Task(bucket=src, key="k", origin="stream").to_json(), {})
    assert work.handle(again).action == "ack"
    spent = requests.spent()
    assert spent["source GetObject"] == 1 and spent["target PutObject"] == 1, spent


def test_a_consumer_that_hears_nothing_while_tasks_wait_reconnects(worker):
    """The stall watchdog: tasks ready, room to take them and no delivery for STALLED_S
    seconds means a silent consumer (a quorum queue without a leader when it registered):
    the connection is dropped so that a new one consumes again. A busy worker (no room)
    or an empty queue is not a stall."""
    _, work = worker
    work._outstanding = {}
    work._delivered = time.monotonic() - worker_module.STALLED_S - 1
    with pytest.raises(pika.exceptions.AMQPError, match="consumer stalled"):
        work._check_stalled(ready=5)

    work._check_stalled(ready=0)  # nothing waits
    prefetch = work.concurrency * worker_module.PREFETCH_PER_THREAD
    work._outstanding = {tag: None for tag in range(prefetch)}
    work._check_stalled(ready=5)  # no room: the worker is busy, not stalled
    work._outstanding = {}
    work._delivered = time.monotonic()
    work._check_stalled(ready=5)  # a delivery just came


class Channel:
    """Records the acks the connection thread sends (the channel is that thread's alone)."""

    is_open = True

    def __init__(self) -> None:
        self.acks: list[int] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        assert multiple
        self.acks.append(tag)


@pytest.fixture
def acking(worker):
    """The worker's connection-thread state with 64 deliveries outstanding (16 threads'
    prefetch window), and `finish(tags)`: those copies end and the thread settles."""
    _, work = worker
    work.concurrency = 16
    work._channel = channel = Channel()
    work._outstanding = {tag: Delivery(tag, b"", {}) for tag in range(1, 65)}
    work._finished, work._ack_due = queue.SimpleQueue(), 0.0

    def finish(*tags: int) -> list[int]:
        for tag in tags:
            delivery = work._outstanding[tag]
            delivery.decision = Decision("ack")
            work._finished.put(delivery)
        work._settle()
        return channel.acks

    return work, finish


def test_finished_deliveries_are_acked_half_a_prefetch_window_at_a_time(acking):
    work, finish = acking
    assert finish(*range(1, 32)) == []  # 31 finished: not yet
    assert finish(32) == [32]  # half the window: one ack for all 32
    assert finish(*range(34, 65)) == [32]  # 33 is still copying: nothing after it goes
    assert finish(33) == [32, 64]
    assert work._outstanding == {}


def test_a_finished_delivery_waits_for_its_ack_at_most_ack_wait_s(acking):
    work, finish = acking
    before = time.monotonic()
    assert finish(1, 2, 3) == []
    wait = worker_module.ACK_WAIT_S
    assert before + wait <= work._ack_due <= time.monotonic() + wait
    work._ack_due = time.monotonic()  # as when ACK_WAIT_S has passed
    assert finish() == [3]  # the main loop settles after each (shortened) wait
    assert work._ack_due == 0.0


def test_a_worker_with_nothing_else_in_flight_acks_at_once(acking):
    """A trickle of events: each copy is acked as soon as it is done."""
    work, finish = acking
    work._outstanding = {7: Delivery(7, b"", {})}
    assert finish(7) == [7]
    work._outstanding = {8: Delivery(8, b"", {}), 9: Delivery(9, b"", {})}
    assert finish(9) == [7]  # 8 still copying
    assert finish(8) == [7, 9]
