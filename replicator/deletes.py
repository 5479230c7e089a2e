"""Batch deletes (MIRROR_DELETE): target copies of keys the source no longer has.

For one pair, the source and target listings stream in key order and are merged (target
keys mapped back to source keys through the pair's paths); target keys with no source
key become the plan. Keys outside the pair's scope, excluded by MIRROR_EXCLUDE, or also
inside another pair's target scope are never planned. A safety brake refuses the whole
plan (nothing is deleted) when a listing failed, the source came back empty while the
target has objects in scope, or the plan is over MIRROR_MAX_DELETE objects or over
MIRROR_MAX_DELETE_PERCENT of the target objects in scope.

A plan is carried out through the copy engine with removal tasks, so every delete
re-checks the source key at that moment and a re-create racing it always wins. Memory:
the plan keeps at most max_delete keys (beyond that it only counts); listings are never
held whole. Given a deadline (reconcile's MIRROR_RECONCILE_TIMEOUT), planning stops at it
with nothing deleted, and deletes not yet begun by then are left for the next run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from . import metrics
from .config import SOURCE_ALIAS, TARGET_ALIAS, BucketPair, Settings
from .copier import Copier
from .errors import CopyError, Kind
from .filters import KeyFilter, shares_target
from .s3 import S3, Listed
from .task import Task

log = logging.getLogger(__name__)

REMOVED = "s3:ObjectRemoved:Delete"
MAX_FAILURES_KEPT = 100  # failure reasons kept per pair; the count is always exact
TRIES = 3  # a transient failure of one delete is tried again this often, no more
CLOCK_EVERY = 1000  # keys of a listing between two looks at the deadline
EXPECTED = (CopyError, ClientError, BotoCoreError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CopyError):
        return exc.reason
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code')}: {error.get('Message') or exc}"
    return str(exc) or type(exc).__name__


def _folder(prefix: str) -> str:
    return f"{prefix}/" if prefix else ""


@dataclass
class Plan:
    """What one pair's deletes would be, or why they are refused."""

    pair: BucketPair
    source_scope: str  # listed source prefix ("" or ending in "/")
    target_scope: str  # listed target prefix ("" or ending in "/")
    keys: list[str] = field(default_factory=list)  # target keys to delete (at most max_delete)
    count: int = 0  # target keys the source no longer has (exact, beyond the kept ones too)
    target_objects: int = 0  # target objects in scope (excluded and shared ones not counted)
    source_objects: int = 0  # in-scope source objects seen (the listing stops early)
    shared: int = 0  # target keys inside another pair's target scope too: left alone
    refused: str = ""  # why nothing may be deleted; "" when the plan may run
    late: bool = False  # the deadline passed while listing: incomplete, nothing may be deleted

    @property
    def where(self) -> str:
        return f"{TARGET_ALIAS}/{self.pair.target_bucket}/{self.target_scope}"

    def source_key(self, target_key: str) -> str:
        return self.source_scope + target_key[len(self.target_scope) :]


@dataclass
class DeleteReport:
    """The outcome of one pair's deletes (or of a dry run of them)."""

    pair: str
    dry_run: bool = False
    planned: int = 0  # target keys the source no longer has
    target_objects: int = 0
    would_delete: list[str] = field(default_factory=list)  # dry run: the plan's target keys
    deleted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    shared: int = 0
    refused: str = ""
    timed_out: str = ""  # what the deadline cut short ("" when it did not)
    left: int = 0  # planned deletes not begun by the deadline: the next run's

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed and not self.timed_out

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "planned": self.planned,
            "target_objects": self.target_objects,
            "would_delete": self.would_delete,
            "deleted": self.deleted,
            "skipped": dict(self.skipped),
            "failed": self.failed,
            "failures": self.failures,
            "shared": self.shared,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "left": self.left,
        }

    def outcome(self) -> str:
        """One phrase for the summary and Slack."""
        if self.refused:
            return f"deletes REFUSED, nothing deleted: {self.refused}"
        if self.timed_out and not self.planned:
            return f"deletes STOPPED, nothing deleted: {self.timed_out}"
        if self.dry_run:
            return f"dry run: would delete {self.planned} object(s), deleted nothing"
        text = f"deleted {self.deleted} object(s)"
        if self.skipped:
            text += f", skipped {sum(self.skipped.values())}"
        if self.failed:
            text += f", {self.failed} delete(s) FAILED"
        if self.timed_out:
            text += f"; STOPPED: {self.timed_out}"
        return text


class Planner:
    """Plans one pair's deletes from the two listings (no write of any kind)."""

    def __init__(
        self, settings: Settings, source: S3, target: S3, deadline: float | None = None
    ) -> None:
        self.settings = settings
        self.source, self.target = source, target
        self.deadline = deadline  # time.monotonic() at which planning stops

    def plan(self, pair: BucketPair) -> Plan:
        prefix = self.settings.prefix
        plan = Plan(pair, _folder(pair.source_prefix(prefix)), _folder(pair.target_prefix(prefix)))
        try:
            self._walk(plan)
        except _Late:
            plan.late = True
            plan.keys.clear()
            plan.count = 0  # a count of part of the listing: not a plan
            return plan
        except _ListingFailed as failed:
            plan.refused = str(failed)
            plan.keys.clear()
            return plan
        plan.refused = self._brake(plan)
        if plan.refused:
            plan.keys.clear()
        return plan

    def _walk(self, plan: Plan) -> None:
        pair, keep = plan.pair, self.settings.max_delete
        accepts = KeyFilter.for_pair(self.settings, pair).accepts
        listed = _clocked(
            _listing(self.source, pair.source_bucket, plan.source_scope), self.deadline
        )
        sources = (item.key for item in listed if accepts(item.key))

        def next_source() -> str | None:
            key = next(sources, None)
            plan.source_objects += key is not None
            return key

        source = next_source()  # also tells an empty (or unlistable) source at once
        targets = _listing(self.target, pair.target_bucket, plan.target_scope)
        for item in _clocked(targets, self.deadline):
            key = plan.source_key(item.key)
            if not accepts(key):
                continue  # excluded (or outside the pair's folder): never deleted
            if shares_target(self.settings, pair, item.key):
                plan.shared += 1
                continue
            plan.target_objects += 1
            while source is not None and source < key:
                source = next_source()
            if source == key:
                continue
            plan.count += 1
            if len(plan.keys) <= keep:  # one more than allowed is enough to refuse
                plan.keys.append(item.key)

    def _brake(self, plan: Plan) -> str:
        s = self.settings
        where = f"{SOURCE_ALIAS}/{plan.pair.source_bucket}/{plan.source_scope}"
        if not plan.count:
            return ""
        if plan.source_objects == 0:
            return (
                f"the source listing of {where} came back empty while the target has "
                f"{plan.target_objects} object(s) in scope: refusing to delete them all "
                "(an emptied or wrong bucket, or a wrong prefix?)"
            )
        if plan.count > s.max_delete:
            return (
                f"would delete {plan.count} object(s), more than MIRROR_MAX_DELETE="
                f"{s.max_delete} (raise it if this is intended)"
            )
        if plan.count * 100 > s.max_delete_percent * plan.target_objects:
            share = plan.count * 100 / plan.target_objects
            return (
                f"would delete {plan.count} of {plan.target_objects} target object(s) in scope "
                f"({share:.1f}%), more than MIRROR_MAX_DELETE_PERCENT={s.max_delete_percent}% "
                "(raise it if this is intended)"
            )
        return ""


class _ListingFailed(Exception):
    """A listing failed: the plan is refused with this text."""


class _Late(Exception):
    """The deadline passed while listing."""


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _clocked(items: Iterator[Listed], deadline: float | None) -> Iterator[Listed]:
    """A listing that raises _Late on its first key and every CLOCK_EVERY keys past the
    deadline. Both listings: the source's can run on for many keys between two target
    keys (a sparse target, keys excluded), the target's between two source keys."""
    for listed, item in enumerate(items):
        if listed % CLOCK_EVERY == 0 and _past(deadline):
            raise _Late
        yield item


def _listing(s3: S3, bucket: str, prefix: str) -> Iterator[Listed]:
    try:
        yield from s3.list(bucket, prefix)
    except EXPECTED as exc:
        side = "source" if s3.side == "source" else "target"
        alias = SOURCE_ALIAS if side == "source" else TARGET_ALIAS
        raise _ListingFailed(
            f"the {side} listing of {alias}/{bucket}/{prefix} failed ({_reason(exc)}): "
            "nothing deleted"
        ) from exc


class Deleter:
    """Plans and carries out (or, dry run, lists) the deletes of pairs."""

    def __init__(
        self,
        settings: Settings,
        *,
        dry_run: bool,
        origin: str,
        threads: int,
        deadline: float | None = None,
    ) -> None:
        # Callers ask for deletes explicitly (MIRROR_DELETE, backfill --delete).
        self.settings = settings if settings.delete else _with_deletes(settings)
        self.dry_run, self.origin, self.threads = dry_run, origin, threads
        self.deadline = deadline  # time.monotonic() after which no delete begins
        self.copier = Copier(self.settings, pool=threads + 2)
        self.planner = Planner(self.settings, self.copier.source, self.copier.target, deadline)

    def run(self, pair: BucketPair) -> DeleteReport:
        """One pair: plan, brake, then delete through the copy engine. Never raises."""
        try:
            plan = self.planner.plan(pair)
        except Exception as exc:  # a bug must not take the other pairs' results with it
            log.exception("%s: planning deletes failed", pair)
            report = DeleteReport(str(pair), dry_run=self.dry_run)
            report.refused = f"planning deletes failed ({type(exc).__name__}: {exc})"
            return report
        return self.carry_out(plan)

    def carry_out(self, plan: Plan) -> DeleteReport:
        """Delete a plan's keys (each re-checked against the source), or list them."""
        pair = plan.pair
        report = DeleteReport(str(pair), dry_run=self.dry_run)
        report.planned, report.target_objects = plan.count, plan.target_objects
        report.shared, report.refused = plan.shared, plan.refused
        if plan.late:
            report.timed_out = "the deadline passed while listing the keys to delete"
            log.error("%s: deletes not planned: %s", pair, report.timed_out)
            return report
        if plan.shared:
            log.warning(
                "%s: %d target object(s) are also in another pair's scope: never deleted",
                pair,
                plan.shared,
            )
        if plan.refused:
            log.error("%s: deletes refused: %s", pair, plan.refused)
            return report
        if self.dry_run:
            report.would_delete = list(plan.keys)
            return report
        log.info("%s: deleting %d target object(s) the source no longer has", pair, plan.count)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="delete") as pool:
            for key in plan.keys:
                pool.submit(self._delete, plan, key, report)
        if report.left:
            report.timed_out = (
                f"the deadline passed with {report.left} of {plan.count} delete(s) not begun "
                "(the next run does them)"
            )
            log.error("%s: %s", pair, report.timed_out)
        return report

    def _delete(self, plan: Plan, target_key: str, report: DeleteReport) -> None:
        if _past(self.deadline):
            with report._lock:
                report.left += 1
            return
        task = Task(
            bucket=plan.pair.source_bucket,
            key=plan.source_key(target_key),
            origin=self.origin,
            event=REMOVED,
        )
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, CopyError) and e.kind in (Kind.TRANSIENT, Kind.DOWN)
            ),
            stop=tenacity.stop_after_attempt(TRIES),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )
        try:
            outcome = retrying(self.copier.copy, task)
        except EXPECTED as exc:  # refused (AccessDenied, Object Lock...): once, not again
            log.warning("%s: delete of %s failed: %s", plan.pair, target_key, _reason(exc))
            report.fail(f"{target_key}: {_reason(exc)}")
            return
        except Exception as exc:
            log.debug("delete of %s raised", target_key, exc_info=True)
            report.fail(f"{target_key}: {type(exc).__name__}: {exc}")
            return
        with report._lock:
            if outcome.deleted:
                report.deleted += 1
            else:
                report.skipped[outcome.reason] += 1
        if outcome.deleted:
            metrics.OBJECTS_DELETED.inc()
            log.debug("%s: deleted %s", plan.pair, target_key)


def _with_deletes(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, delete=True)


def render(report: DeleteReport, shown: int = 10) -> list[str]:
    """Lines for a text summary (indented under the pair)."""
    lines = [f"    deletes: {report.outcome()}"]
    if report.shared:
        lines.append(
            f"    deletes: {report.shared} target object(s) also in another pair's scope "
            "were left alone"
        )
    if report.would_delete:
        lines.append("    would delete:")
        lines += [f"      {key}" for key in report.would_delete[:shown]]
        if len(report.would_delete) > shown:
            lines.append(f"      ... and {len(report.would_delete) - shown} more")
    for reason, count in report.skipped.items():
        lines.append(f"    delete skipped ({count}): {reason}")
    lines += [f"    delete failed: {failure}" for failure in report.failures[:shown]]
    if report.failed > shown:
        lines.append(f"    ... and {report.failed - shown} more failed delete(s)")
    return lines
