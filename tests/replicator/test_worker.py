"""The worker's handling of one delivery against the real source and target MinIO (no
RabbitMQ needed: `handle` is the copy thread's whole job)."""

from __future__ import annotations

import queue
import threading
import time

import pika
import pytest
from prometheus_client import REGISTRY

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
    work._outstanding = {tag: None for tag in range(work._prefetch)}
    work._check_stalled(ready=5)  # no room: the worker is busy, not stalled
    work._outstanding = {}
    work._delivered = time.monotonic()
    work._check_stalled(ready=5)  # a delivery just came


def test_a_window_held_for_a_down_endpoint_is_not_a_stalled_consumer(worker):
    """Issue 24: tasks held for a down endpoint take no deliveries; that is not a silent
    consumer, and neither is the moment after the endpoint is back."""
    _, work = worker
    work._outstanding = {}
    work._delivered = time.monotonic() - worker_module.STALLED_S - 1
    target = work.endpoints["target"]
    target._up = False
    work._check_stalled(ready=5)  # down: held, not stalled
    target._up, target.came_back = True, time.monotonic()
    work._check_stalled(ready=5)  # just back: the quiet counts from now
    target.came_back = time.monotonic() - worker_module.STALLED_S - 1
    with pytest.raises(pika.exceptions.AMQPError, match="consumer stalled"):
        work._check_stalled(ready=5)


def test_held_tasks_resume_the_moment_their_endpoint_answers_and_it_is_said_once(caplog):
    """Issue 24: a probe that finds the endpoint back wakes every holder at once (not
    after its back-off), and the outage is one "unreachable" and one "back" line."""
    answers = threading.Event()
    stopping = threading.Event()
    endpoint = worker_module.Endpoint("target", answers.is_set, stopping)
    assert not endpoint.up()  # down: a watcher probes it from now on
    up = "minio_s3_mirror_endpoint_up"
    assert REGISTRY.get_sample_value(up, {"side": "target"}) == 0  # an alert's signal
    woke = []

    def hold() -> None:
        endpoint.held()
        endpoint.hold(60)  # a back-off far longer than the test
        woke.append(time.monotonic())

    holders = [threading.Thread(target=hold) for _ in range(3)]
    for thread in holders:
        thread.start()
    time.sleep(0.3)  # the outage goes on a little: nobody wakes
    assert woke == []
    answers.set()
    back = time.monotonic()
    for thread in holders:
        thread.join(10)
    stopping.set()
    assert len(woke) == 3
    # Woken within a probe interval; 5 s is only a bound for a loaded machine, the
    # back-off they would otherwise sleep out is 60 s.
    assert max(woke) - back < 5
    lines = [r.getMessage() for r in caplog.records if r.name == "replicator.worker"]
    assert [line.split(":")[0].split(" after")[0] for line in lines] == [
        "target unreachable",
        "target is reachable again",
    ]
    assert "3 task(s) waited for it" in lines[1]
    assert REGISTRY.get_sample_value(up, {"side": "target"}) == 1


def test_stopping_releases_held_tasks():
    stopping = threading.Event()
    endpoint = worker_module.Endpoint("source", lambda: False, stopping)
    assert not endpoint.up()
    released = threading.Event()
    thread = threading.Thread(target=lambda: (endpoint.hold(60), released.set()))
    thread.start()
    stopping.set()
    endpoint.wake()
    assert released.wait(10)


class Channel:
    """Records the acks the connection thread sends (the channel is that thread's alone):
    `(tag, True)` for a multiple ack up to the tag, `tag` for one delivery."""

    is_open = True

    def __init__(self) -> None:
        self.acks: list[int | tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, True) if multiple else tag)


@pytest.fixture
def acking(worker):
    """The worker's connection-thread state with 64 deliveries outstanding (16 threads'
    prefetch window), and `finish(tags)`: those copies end and the thread settles."""
    _, work = worker
    work._prefetch = 16 * worker_module.PREFETCH_PER_THREAD
    work._channel = channel = Channel()
    # Every copy started long ago (a test that needs a young one says so).
    work._outstanding = {tag: Delivery(tag, b"", {}, started_at=1.0) for tag in range(1, 65)}
    work._finished, work._ack_due, work._unacked = queue.SimpleQueue(), 0.0, 0

    def finish(*tags: int) -> list[int | tuple[int, bool]]:
        for tag in tags:
            delivery = work._outstanding[tag]
            delivery.decision = Decision("ack")
            work._finished.put(delivery)
        work._settle()
        return channel.acks

    return work, finish


def waited(work) -> None:
    """As when ACK_WAIT_S has passed since every finished delivery was settled."""
    for delivery in work._outstanding.values():
        if delivery.settled_at:
            delivery.settled_at -= worker_module.ACK_WAIT_S
    work._ack_due -= worker_module.ACK_WAIT_S


def test_finished_deliveries_are_acked_half_a_prefetch_window_at_a_time(acking):
    work, finish = acking
    assert finish(*range(1, 32)) == []  # 31 finished: not yet
    assert finish(32) == [(32, True)]  # half the window: one ack for all 32
    assert finish(*range(34, 65)) == [(32, True)]  # just finished, 33 still copying
    assert finish(33) == [(32, True), (64, True)]  # the run is whole again: one ack
    assert work._outstanding == {} and work._unacked == 0


def test_a_long_copy_at_the_head_holds_one_slot_not_the_window(acking):
    """Issue 23: deliveries finished behind a copy still under way (a 1 GiB object, a
    stalled source) are acked on their own once they have waited ACK_WAIT_S, so RabbitMQ
    keeps the window full for the other threads."""
    work, finish = acking
    assert finish(*range(2, 65)) == []  # within ACK_WAIT_S: maybe 1 ends and one ack does
    waited(work)
    assert finish() == list(range(2, 65))
    assert list(work._outstanding) == [1]
    assert finish(1) == [*range(2, 65), (1, True)]
    assert work.acks == {"deliveries": 64, "batches": 1, "alone": 63}


def test_copies_finishing_a_little_out_of_order_still_share_one_ack(acking):
    """Behind a copy that has not run LONG_COPY_S yet, finished deliveries wait for it:
    one batch ack when it ends, not a single ack each."""
    work, finish = acking
    for delivery in work._outstanding.values():
        delivery.started_at = time.monotonic()  # all just started
    assert finish(2, 3, 4) == []
    waited(work)
    assert finish() == []  # 1 is young: it will likely end soon
    assert work._ack_due >= work._outstanding[1].started_at + worker_module.LONG_COPY_S
    assert finish(1) == [(4, True)]


def test_behind_a_copy_that_runs_long_they_go_one_by_one(acking):
    work, finish = acking
    for delivery in work._outstanding.values():
        delivery.started_at = time.monotonic()
    assert finish(2, 3, 4) == []
    waited(work)
    work._outstanding[1].started_at -= worker_module.LONG_COPY_S  # 1 has run long now
    assert finish() == [2, 3, 4]


def test_long_means_long_for_this_worker(acking):
    """Over a 50 ms link a usual copy takes a few round trips: LONG_TIMES that, not a
    fixed LONG_COPY_S, makes a copy long."""
    work, finish = acking
    work._usual_s = 0.5
    assert worker_module.LONG_TIMES * 0.5 == 2.0
    for delivery in work._outstanding.values():
        delivery.started_at = time.monotonic() - 1.0  # past LONG_COPY_S, not 4 x 0.5
    assert finish(2, 3, 4) == []
    waited(work)
    assert finish() == []
    work._outstanding[1].started_at -= 1.5  # 2.5 s: over four times the usual now
    assert finish() == [2, 3, 4]


def test_half_a_window_behind_a_young_copy_goes_one_by_one(acking):
    """However young the copy ahead, it never holds half the window."""
    work, finish = acking
    for delivery in work._outstanding.values():
        delivery.started_at = time.monotonic()
    assert finish(*range(2, 34)) == []
    waited(work)
    assert finish() == list(range(2, 34))


def test_a_finished_delivery_waits_for_its_ack_at_most_ack_wait_s(acking):
    work, finish = acking
    before = time.monotonic()
    assert finish(1, 2, 3) == []
    wait = worker_module.ACK_WAIT_S
    assert before + wait <= work._ack_due <= time.monotonic() + wait
    waited(work)
    assert finish() == [(3, True)]  # the main loop settles after each (shortened) wait
    assert work._ack_due == 0.0


def test_a_worker_with_nothing_else_in_flight_acks_at_once(acking):
    """A trickle of events: each copy is acked as soon as it is done."""
    work, finish = acking
    work._outstanding = {7: Delivery(7, b"", {})}
    assert finish(7) == [(7, True)]
    work._outstanding = {8: Delivery(8, b"", {}), 9: Delivery(9, b"", {})}
    assert finish(9) == [(7, True)]  # 8 still copying
    assert finish(8) == [(7, True), (9, True)]


def test_a_rejected_delivery_is_not_acked(acking):
    """A copy thread that finds the worker stopping puts its delivery back (reject,
    requeue); the finished ones around it are acked, it is not."""
    work, finish = acking
    work._outstanding = {tag: Delivery(tag, b"", {}) for tag in (1, 2, 3)}
    rejected = []
    work._channel.basic_reject = lambda tag, requeue: rejected.append((tag, requeue))
    work._outstanding[2].decision = Decision("requeue", "worker stopping")
    work._finished.put(work._outstanding[2])
    assert finish(1, 3) == [(3, True)] and rejected == [(2, True)]
    assert work._outstanding == {} and work._unacked == 0


def test_only_what_mirror_exclude_matched_counts_as_excluded(stack, buckets):
    """Issue 24: a key outside MIRROR_PREFIX is out of scope, not "excluded"."""
    src, dst = buckets("source"), buckets("target")
    env = {
        **base_env(stack),
        "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
        "MIRROR_PREFIX": "o/0",
        "MIRROR_EXCLUDE": "*.tmp",
    }
    work = Worker(config.load(env), concurrency=1)
    name = "minio_s3_mirror_objects_skipped_total"
    before = {r: REGISTRY.get_sample_value(name, {"reason": r}) or 0 for r in LABELS}
    for key in ("o/0/a.tmp", "o/0-big", "o/000001"):
        assert work.handle(Delivery(1, Task(bucket=src, key=key, origin="stream").to_json(), {}))
    after = {r: REGISTRY.get_sample_value(name, {"reason": r}) or 0 for r in LABELS}
    assert {r: after[r] - before[r] for r in LABELS} == {"excluded": 1, "out_of_scope": 2}


LABELS = ("excluded", "out_of_scope")


def test_readyz_goes_503_while_a_copy_runs_past_its_deadline(worker, monkeypatch):
    """A stuck copy must not hide behind a 200: /readyz reads `ready`, which is false
    while any copy thread has run past its copy's deadline, and true again after."""
    src, work = worker
    assert worker_module.copy_deadline_s(work.settings, None) == float("inf")
    assert worker_module.copy_deadline_s(work.settings, 32 * 1024) == 3 * (60 + 1) + 10
    work.consuming.set()
    release = threading.Event()

    def stuck(task, replay=False):
        release.wait(30)
        raise RuntimeError("released")

    monkeypatch.setattr(work.copier, "copy", stuck)
    monkeypatch.setattr(worker_module, "copy_deadline_s", lambda settings, size: 0.2)
    assert work.ready()
    task = Task(bucket=src, key="k", origin="stream", size=1)

    def copy_stuck() -> None:
        with pytest.raises(RuntimeError):
            work._copy(task, False)

    copying = threading.Thread(target=copy_stuck)
    copying.start()
    try:
        deadline = time.monotonic() + 10
        while work.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not work.ready()
    finally:
        release.set()
        copying.join(10)
    assert work.ready()


def test_the_prefetch_window_follows_the_limit_of_copies():
    """Issue 23: PREFETCH_PER_THREAD deliveries per allowed copy when the limit rises (all
    its copies busy, so its trial is judged); a window up to twice that is kept when it
    falls (a new one costs a new consumer)."""
    follow = Worker._follow_prefetch
    per = worker_module.PREFETCH_PER_THREAD
    assert follow(8, 8 * per) == 8 * per
    assert follow(6, 8 * per) == 8 * per  # a lower limit keeps a window that still fits
    assert follow(10, 8 * per) == 10 * per  # a higher one gets its whole window at once
    assert follow(32, 8 * per) == 32 * per
    assert follow(4, 64 * per) == 4 * per  # far too many held back from other workers
    for limit in range(1, 65):
        for prefetch in (1, 8, 32, 128, 256):
            assert follow(limit, prefetch) >= limit


class Consuming:
    """Records what the connection thread asks of the channel, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.connection = self
        self.consumers = 0

    def basic_qos(self, prefetch_count: int) -> None:
        self.calls.append(("qos", prefetch_count))

    def basic_consume(self, queue: str, callback) -> str:
        self.calls.append(("consume", queue))
        self.consumers += 1
        return f"ctag-{self.consumers}"

    def process_data_events(self, time_limit: float) -> None:
        self.calls.append(("dispatch",))

    def basic_cancel(self, tag: str) -> None:
        self.calls.append(("cancel", tag))


def test_a_new_window_is_a_new_consumer_before_the_old_one_goes(worker):
    """RabbitMQ applies a prefetch count to consumers registered after it: the worker
    consumes again with the new window (on the same channel, so acks go on), hands over
    what already arrived, then cancels the old consumer."""
    from replicator import topology
    from replicator.concurrency import State

    _, work = worker
    channel = Consuming()
    first = work._subscribe(channel, None)
    assert channel.calls == [("qos", 2 * worker_module.PREFETCH_PER_THREAD),
                             ("consume", topology.WORK_QUEUE)]  # fmt: skip
    channel.calls.clear()
    work.controller.state = State(limit=64, ceiling=64)  # as after a few trials
    assert work._follow(64)
    second = work._subscribe(channel, None, first)
    assert channel.calls == [("qos", 64 * worker_module.PREFETCH_PER_THREAD),
                             ("consume", topology.WORK_QUEUE), ("dispatch",),
                             ("cancel", first)]  # fmt: skip
    assert second != first and not work._follow(64)
