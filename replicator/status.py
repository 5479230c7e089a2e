"""`minio-s3-mirror status`: the one screen an operator reads during an incident.

What is waiting (work queue ready and delivered-but-unacked, each retry tier, the
dead-letter queue with its most frequent reasons), how old the oldest waiting task is,
whether source and target answer (through the S3 layer the copies use), and each pair's
last reconcile result where one was recorded (reconcile/record.py). Exit 0 when healthy,
1 when degraded; every reason for "degraded" is listed.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import datetime
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, unquote, urlsplit

import pika

from . import broker, message, topology
from .config import Settings, mask
from .reconcile import record
from .task import MalformedTask

PROBE_TIMEOUT_S = 15.0  # an endpoint that has not answered by then counts as down
OLDEST_WARN_S = 900  # a task waiting longer than this (S3 RTC's 15 minutes): degraded
REASONS_SHOWN = 5


@dataclass
class Queue:
    name: str
    ready: int
    consumers: int
    unacked: int | None = None  # AMQP does not tell; None when unknown


@dataclass
class Side:
    side: str
    url: str
    answers: bool
    detail: str = ""


@dataclass
class Report:
    work: Queue | None = None
    retries: list[Queue] = field(default_factory=list)
    dead: Queue | None = None
    dead_reasons: list[tuple[str, int]] = field(default_factory=list)
    oldest_waiting_s: float | None = None
    oldest_key: str = ""
    oldest_deliveries: int = 0  # x-delivery-count of the head task when it was peeked
    endpoints: list[Side] = field(default_factory=list)
    reconcile: dict[str, dict[str, object]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown, but not a degradation

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["dead_reasons"] = [{"reason": r, "count": n} for r, n in self.dead_reasons]
        data["healthy"] = self.healthy
        return data


def _event_age(body: bytes, now: float) -> tuple[float | None, str]:
    """How long ago the task's source event happened (None: the task does not say)."""
    with contextlib.suppress(MalformedTask, ValueError, IndexError):
        task = message.parse(body)[0]
        if task.event_time:
            when = datetime.datetime.fromisoformat(task.event_time.replace("Z", "+00:00"))
            return max(0.0, now - when.timestamp()), task.key
        return None, task.key
    return None, ""


def _reason(headers: dict) -> str:
    text = message.text(headers, message.ERROR)
    if text:
        return text[:160]
    deaths = headers.get("x-death") or [{}]
    return f"rejected by RabbitMQ ({deaths[0].get('reason', 'unknown')})"


@contextlib.contextmanager
def _channel(settings: Settings) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = broker.connect(settings.rabbitmq_url, name="minio-s3-mirror status")
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


def _queue(channel, name: str) -> Queue:
    ok = channel.queue_declare(name, passive=True).method
    return Queue(name, ok.message_count, ok.consumer_count)


def read_rabbitmq(settings: Settings, report: Report, now: float, peek: bool = False) -> None:
    """Queue depths, the dead letters' reasons, the oldest waiting task, reconcile records.

    Everything is read without being taken: browsed messages are left unacked and go back
    when the channel closes. The oldest waiting task is the head of the work queue."""
    with _channel(settings) as channel:
        topology.declare(channel, settings.retry_delays)
        report.work = _queue(channel, topology.WORK_QUEUE)
        report.retries = [
            _queue(channel, f"{topology.WORK_QUEUE}.{topology.retry_route(s)}")
            for s in settings.retry_delays
        ]
        report.dead = _queue(channel, topology.DEAD_QUEUE)
        reasons: collections.Counter[str] = collections.Counter()
        for _ in range(report.dead.ready):
            method, properties, _ = channel.basic_get(topology.DEAD_QUEUE)
            if method is None:
                break
            reasons[_reason(dict(properties.headers or {}))] += 1
        report.dead_reasons = reasons.most_common(REASONS_SHOWN)
        configured = {str(pair) for pair in settings.pairs}
        recorded = record.latest(channel)
        report.reconcile = {p: r for p, r in recorded.items() if p in configured}
    if peek and report.work.ready:
        peek_head(settings, report, now)


def peek_head(settings: Settings, report: Report, now: float) -> None:
    """The oldest waiting task: the head of the work queue, taken and put straight back.

    A quorum queue counts that as a delivery of the task (`x-delivery-count`, of which
    DELIVERY_LIMIT dead-letter it): only with `--peek`; without, the queue is untouched."""
    with _channel(settings) as channel:
        method, properties, body = channel.basic_get(topology.WORK_QUEUE)
        if method is None:
            return
        channel.basic_nack(method.delivery_tag, requeue=True)
        report.oldest_waiting_s, report.oldest_key = _event_age(body, now)
        report.oldest_deliveries = int((properties.headers or {}).get("x-delivery-count", 0))


def management_unacked(settings: Settings) -> dict[str, int]:
    """queue name -> messages delivered and not yet acked, from RabbitMQ's management API
    (AMQP does not tell). The login and vhost are RABBITMQ_URL's (its first node's)."""
    first = urlsplit(settings.rabbitmq_url.split(",")[0].strip())
    user, password = unquote(first.username or "guest"), unquote(first.password or "guest")
    vhost = unquote(first.path[1:]) if first.path not in ("", "/") else "/"
    url = (
        f"{settings.rabbitmq_management_url}/api/queues/{quote(vhost, safe='')}"
        "?columns=name,messages_unacknowledged"
    )
    login = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {login}"})
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
        queues = json.load(answer)
    return {q["name"]: int(q.get("messages_unacknowledged") or 0) for q in queues}


def read_unacked(settings: Settings, report: Report) -> None:
    if not settings.rabbitmq_management_url:
        report.notes.append(
            "unacked counts need RabbitMQ's management API (set RABBITMQ_MANAGEMENT_URL)"
        )
        return
    try:
        unacked = management_unacked(settings)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # urllib's errors are OSErrors
        where = mask(settings.rabbitmq_management_url, url=True)
        report.notes.append(f"unacked counts unknown: {where}: {mask(str(exc))[:200]}")
        return
    for queue in (report.work, *report.retries, report.dead):
        if queue is not None:
            queue.unacked = unacked.get(queue.name)


def _in_background(call: Callable[[], bool]) -> concurrent.futures.Future:
    """`call()` on a daemon thread: a probe still waiting when status is done (a silent
    endpoint, up to the read timeout) never keeps the process from exiting."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="status-probe", daemon=True).start()
    return future


def probe_endpoints(settings: Settings) -> list[Side]:
    """Whether source and target answer, asked through the S3 layer the copies use."""
    from .s3 import S3

    sides = [("source", settings.source)]
    if settings.target is not None:
        sides.append(("target", settings.target))
    bucket = {"source": settings.pairs[0].source_bucket, "target": settings.pairs[0].target_bucket}
    futures = [
        _in_background(lambda s=side, e=endpoint: S3(e, settings, s, 1).probe(bucket[s]))
        for side, endpoint in sides
    ]
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    found = []
    for (side, endpoint), future in zip(sides, futures, strict=True):
        try:
            answers = future.result(timeout=max(0.0, deadline - time.monotonic()))
            detail = "" if answers else "does not answer"
        except concurrent.futures.TimeoutError:
            answers, detail = False, f"no answer within {PROBE_TIMEOUT_S:.0f}s"
        except Exception as exc:  # a client that cannot even be built
            answers, detail = False, f"{type(exc).__name__}: {exc}"[:200]
        found.append(Side(side, mask(endpoint.url, url=True), answers, mask(detail)))
    return found


def collect(settings: Settings, now: float | None = None, *, peek: bool = False) -> Report:
    now = time.time() if now is None else now
    report = Report()
    try:
        read_rabbitmq(settings, report, now, peek)
    except (pika.exceptions.AMQPError, OSError) as exc:
        where = mask(settings.rabbitmq_url, url=True)
        report.problems.append(f"RabbitMQ at {where}: {mask(broker.describe(exc))}")
    if report.work is not None:
        read_unacked(settings, report)
    report.endpoints = probe_endpoints(settings)
    judge(report)
    return report


def judge(report: Report) -> None:
    """Every reason the replication is degraded, one line each."""
    for side in report.endpoints:
        if not side.answers:
            report.problems.append(f"{side.side} {side.url} does not answer: {side.detail}")
    if report.dead and report.dead.ready:
        report.problems.append(f"{report.dead.ready} task(s) in the dead-letter queue")
    if report.work and report.work.ready and not report.work.consumers:
        report.problems.append(f"{report.work.ready} task(s) waiting and no worker consuming")
    if report.oldest_waiting_s is not None and report.oldest_waiting_s > OLDEST_WARN_S:
        report.problems.append(
            f"the oldest waiting task is {_age(report.oldest_waiting_s)} old "
            f"(more than {_age(OLDEST_WARN_S)})"
        )
    for pair, last in sorted(report.reconcile.items()):
        if not last.get("ok"):
            report.problems.append(f"the last reconcile of {pair} failed")


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d"


def _when(timestamp: float, now: float) -> str:
    at = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return f"{at:%Y-%m-%d %H:%M:%S}Z ({_age(now - timestamp)} ago)"


def render(report: Report, as_json: bool, now: float | None = None) -> str:
    if as_json:
        return json.dumps(report.as_dict(), ensure_ascii=False, indent=2)
    now = time.time() if now is None else now
    lines = [f"minio-s3-mirror status: {'healthy' if report.healthy else 'DEGRADED'}"]
    lines.append("queues:")
    if report.work:
        unacked = "?" if report.work.unacked is None else report.work.unacked
        lines.append(
            f"  work    {report.work.ready} ready, {unacked} unacked, "
            f"{report.work.consumers} consumer(s)"
        )
        for tier in report.retries:
            name = tier.name.removeprefix(f"{topology.WORK_QUEUE}.")
            lines.append(f"  {name} {tier.ready} waiting to retry")
    if report.dead:
        lines.append(f"  dead    {report.dead.ready} dead-lettered")
        for reason, count in report.dead_reasons:
            lines.append(f"          {count:>5} x {reason}")
    if report.oldest_waiting_s is not None:
        lines.append(
            f"oldest waiting task: {_age(report.oldest_waiting_s)} since its event "
            f"({report.oldest_key})"
            + (
                f", delivered {report.oldest_deliveries} time(s) before "
                f"(RabbitMQ dead-letters it at {topology.DELIVERY_LIMIT})"
                if report.oldest_deliveries
                else ""
            )
        )
    elif report.work and report.work.ready:
        lines.append(f"oldest waiting task: age unknown ({report.oldest_key or 'no event time'})")
    lines.append("endpoints:")
    for side in report.endpoints:
        state = "answers" if side.answers else f"DOWN ({side.detail})"
        lines.append(f"  {side.side:<7} {side.url}: {state}")
    lines.append("last reconcile:")
    if not report.reconcile:
        lines.append("  none recorded")
    for pair, last in sorted(report.reconcile.items()):
        verdict = "ok" if last.get("ok") else f"FAILED ({last.get('failures')} failure(s))"
        finished = _when(float(last.get("finished_at") or 0), now)
        lines.append(
            f"  {pair}: {verdict}, copied {last.get('copied')} object(s), finished {finished}"
        )
        if last.get("first_failure"):
            lines.append(f"    first failure: {last['first_failure']}")
    lines.extend(f"note: {note}" for note in report.notes)
    if report.problems:
        lines.append("degraded because:")
        lines.extend(f"  - {problem}" for problem in report.problems)
    return "\n".join(lines)
