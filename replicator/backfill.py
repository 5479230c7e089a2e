"""Backfill: list a prefix on both sides, enqueue (or copy) what the target lacks.

Both listings stream in key order and are merged, so memory stays flat for millions of
keys; a target HEAD is made only when the listings cannot decide (same size, different
ETags, e.g. multipart uploads with other part sizes).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from .broker import Publisher, PublishFailed
from .config import BucketPair, Settings
from .copier import SOURCE_ETAG, Copier
from .deletes import Deleter
from .errors import CopyError, Kind
from .filters import KeyFilter
from .s3 import S3, Listed
from .task import Task

log = logging.getLogger(__name__)
LOG_EVERY_S = 10
PENDING_COPIES = 64  # --direct: copies submitted but not finished, at most


MAX_FAILURES_KEPT = 100  # reasons kept per pair; the count is always exact
# What one S3 call or one publish may raise for reasons outside this program.
EXPECTED = (ClientError, BotoCoreError, PublishFailed, CopyError)


@dataclass
class PairReport:
    pair: str
    listed: int = 0
    current: int = 0
    excluded: int = 0
    queued: int = 0  # enqueued, copied (--direct) or, with --dry-run, would be
    gone: int = 0  # --direct: deleted from the source after the listing, nothing to copy
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    deletes: bool = False  # --delete was given
    deleted: int = 0  # --delete: target copies of keys the source no longer has
    delete_skipped: int = 0  # re-checked and kept (the source has the key again)
    would_delete: list[str] = field(default_factory=list)  # --delete --dry-run
    delete_refused: str = ""  # the brake's reason: nothing was deleted

    def __post_init__(self) -> None:
        # --direct copies finish on pool threads: every counter they touch goes through it.
        self._lock = threading.Lock()

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(reason)

    def done(self) -> None:
        with self._lock:
            self.queued += 1

    def vanished(self) -> None:
        with self._lock:
            self.gone += 1


def reason(exc: BaseException) -> str:
    """One line for an S3 or RabbitMQ failure: the code and message, no traceback."""
    if isinstance(exc, CopyError):
        return exc.reason
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"{error.get('Code') or status}: {error.get('Message') or exc}"
    return str(exc) or type(exc).__name__


class Backfill:
    def __init__(
        self, settings: Settings, *, direct: bool, dry_run: bool, delete: bool = False
    ) -> None:
        self.settings = settings
        self.direct, self.dry_run = direct, dry_run
        threads = settings.max_workers or 8
        self.deleter = (
            Deleter(settings, dry_run=dry_run, origin="backfill", threads=threads)
            if delete
            else None
        )
        self.source = S3(settings.source, settings, "source", threads + 2)
        self.target = S3(settings.target, settings, "target", threads + 2)
        self.copier = Copier(settings, pool=threads + 2) if direct else None
        self.pool = ThreadPoolExecutor(threads) if direct and not dry_run else None
        self.publisher = (
            None
            if direct or dry_run
            else Publisher(settings.rabbitmq_url, name="minio-s3-mirror backfill")
        )

    def run(self, pairs: list[BucketPair]) -> list[PairReport]:
        try:
            return [self.pair_or_failure(pair) for pair in pairs]
        finally:
            if self.publisher:
                self.publisher.close()
            if self.pool:
                self.pool.shutdown()

    def pair_or_failure(self, pair: BucketPair) -> PairReport:
        """One pair; a listing or RabbitMQ failure stops this pair, not the run."""
        report = PairReport(str(pair))
        try:
            self.pair(pair, report)
        except EXPECTED as exc:
            log.error("%s: stopped: %s", pair, reason(exc))
            report.fail(f"pair stopped after {report.listed} listed: {reason(exc)}")
        if self.deleter:
            self.deletes(pair, report)
        return report

    def deletes(self, pair: BucketPair, report: PairReport) -> None:
        """--delete: the planner's deletes for this pair, behind the same brake as reconcile."""
        deletes = self.deleter.run(pair)
        report.deletes = True
        report.deleted, report.delete_refused = deletes.deleted, deletes.refused
        report.delete_skipped = sum(deletes.skipped.values())
        report.would_delete = deletes.would_delete
        for failure in deletes.failures:
            report.fail(f"delete failed: {failure}")
        report.failed += deletes.failed - len(deletes.failures)  # beyond the kept reasons

    def pair(self, pair: BucketPair, report: PairReport) -> None:
        keys = KeyFilter.for_pair(self.settings, pair)
        targets = self.target.list(pair.target_bucket, keys.target_listing)
        target = next(targets, None)
        progress = tqdm(desc=str(pair), unit=" keys", disable=not sys.stderr.isatty())
        next_log, pending = time.monotonic() + LOG_EVERY_S, deque()
        for obj in self.source.list(pair.source_bucket, keys.listing):
            report.listed += 1
            progress.update()
            if progress.disable and report.listed % 1000 == 0 and time.monotonic() > next_log:
                log.info("%s: %d listed, %d to copy so far", pair, report.listed, report.queued)
                next_log = time.monotonic() + LOG_EVERY_S
            if not keys.accepts(obj.key):
                report.excluded += keys.excluded(obj.key)  # only MIRROR_EXCLUDE's matches
                continue
            want = pair.target_key(obj.key)
            while target is not None and target.key < want:  # merge: skip target-only
                target = next(targets, None)
            same = target if target is not None and target.key == want else None
            try:
                current = self._current(obj, same, pair.target_bucket)
            except EXPECTED as exc:  # one key: count it, carry on
                report.fail(f"{obj.key}: target HEAD failed: {reason(exc)}")
                continue
            if current:
                report.current += 1
                continue
            copy = self._send(pair, obj, report, absent=same is None)
            if copy is not None:
                pending.append(copy)
                while len(pending) > PENDING_COPIES:  # backpressure keeps memory flat
                    pending.popleft().result()
        for future in pending:
            future.result()
        progress.close()

    def _current(self, obj: Listed, target: Listed | None, bucket: str) -> bool:
        if target is None or target.size != obj.size:
            return False
        if target.etag == obj.etag:
            return True
        head = self.target.head(bucket, target.key)
        return head is not None and head.metadata.get(SOURCE_ETAG) == obj.etag

    def _send(
        self, pair: BucketPair, obj: Listed, report: PairReport, *, absent: bool
    ) -> Future[None] | None:
        """Copy (--direct: the pending copy), enqueue, or with --dry-run only count."""
        if self.dry_run:
            report.done()
            return None
        # The listed size tells the copy engine whether one GET can carry the object.
        task = Task(
            bucket=pair.source_bucket,
            key=obj.key,
            origin="backfill",
            etag=obj.etag,
            size=obj.size,
            target_absent=absent,
        )
        if self.pool:
            return self.pool.submit(self._copy, task, report)
        self.publisher.publish(task.to_json())  # PublishFailed stops the pair
        report.done()
        return None

    def _copy(self, task: Task, report: PairReport) -> None:
        try:
            self.copier.copy(task)
        except CopyError as exc:
            if exc.kind is Kind.MOOT and exc.side == "source":  # deleted since the listing
                report.vanished()
            else:
                report.fail(f"{task.key}: {reason(exc)}")
        except EXPECTED as exc:
            report.fail(f"{task.key}: {reason(exc)}")
        except Exception as exc:  # a bug in one copy must not hide the others' results
            log.debug("copy of %s raised", task.key, exc_info=True)
            report.fail(f"{task.key}: {type(exc).__name__}: {exc}")
        else:
            report.done()


def render(reports: list[PairReport], *, direct: bool, dry_run: bool) -> str:
    verb = "would copy" if dry_run else ("copied" if direct else "queued")
    lines = []
    for r in reports:
        lines.append(
            f"{r.pair}: listed {r.listed}, already current {r.current}, excluded {r.excluded}, "
            f"{verb} {r.queued}, failed {r.failed}"
            + (f", gone from the source since the listing {r.gone}" if r.gone else "")
        )
        if r.deletes:
            lines.append(f"  deletes: {_delete_outcome(r, dry_run)}")
            lines += [f"    {key}" for key in r.would_delete]
        lines += [f"  failed: {failure}" for failure in r.failures[:10]]
        if r.failed > 10:
            lines.append(f"  ... and {r.failed - 10} more failure(s)")
    return "\n".join(lines)


def _delete_outcome(r: PairReport, dry_run: bool) -> str:
    if r.delete_refused:
        return f"REFUSED, nothing deleted: {r.delete_refused}"
    if dry_run:
        return f"would delete {len(r.would_delete)}" + (":" if r.would_delete else "")
    return f"deleted {r.deleted}, kept after a re-check {r.delete_skipped}"


def as_dicts(reports: list[PairReport]) -> list[dict[str, Any]]:
    return [asdict(r) for r in reports]
