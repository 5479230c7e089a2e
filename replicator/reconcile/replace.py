"""The overwrites of a reconcile, decided by the copy engine instead of mc's clock.

`mc mirror` runs without `--overwrite`: it copies what is missing and only *reports*
each object whose target copy differs by mc's rule (another size, or a target time
older than the source's). That rule is wrong across timestamp granularities: AWS lists
LastModified to the second, so a copy the event path made in the same second as the
source write looks older, and `--overwrite` would PUT it again (and drop the
`mirror-source-*` metadata the copy engine records). Each reported object goes to the
copy engine instead, whose currency check (size, recorded source ETag, metadata
fingerprint) leaves a copy that holds the source's content and replaces a changed one
with a conditional write, keeping the metadata.

Keys are handed over one at a time while mc still runs; at most 2 x threads wait, so
mc's reader (and mc) wait for the pool rather than memory growing with the keys.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..config import BucketPair, Settings
from ..errors import CopyError, Kind
from ..task import Task
from .result import PairResult, Problem, Sample
from .troubleshoot import diagnose

if TYPE_CHECKING:  # the copy engine loads the S3 layer (boto3): made on the first key
    from ..copier import Copier

log = logging.getLogger(__name__)

ORIGIN = "reconcile"
DEFAULT_THREADS = 8


class Replacer:
    """Runs the copy engine on the keys mc reported as differing, for one pair.

    dry_run: HEAD both sides and apply the same currency check, writing nothing.
    Counters are kept here under a lock and added to the pair's result by close().
    """

    def __init__(
        self,
        settings: Settings,
        pair: BucketPair,
        *,
        dry_run: bool,
        deadline: float | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = dataclasses.replace(settings, pairs=(pair,))
        self.pair = pair
        self.dry_run = dry_run
        self.deadline = deadline
        self.stopped = stopped
        self.threads = settings.max_workers or DEFAULT_THREADS
        self._copier: Copier | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(2 * self.threads)
        self._lock = threading.Lock()
        self.replaced = 0
        self.bytes = 0
        self.current = 0
        self.gone = 0
        self.skipped = 0  # not decided: the deadline passed or the run was interrupted
        self.would_replace: Sample[str] = Sample()
        self.problems: Sample[Problem] = Sample()

    def submit(self, key: str) -> None:
        """Decide one source key in the pool; waits while the pool is 2 x threads behind."""
        if self._pool is None:
            # Made on the first differing key: a pair with none costs nothing here.
            from ..copier import Copier

            self._copier = Copier(self.settings, pool=self.threads)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="replace")
        self._slots.acquire()
        try:
            future = self._pool.submit(self._one, key)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())

    def _one(self, key: str) -> None:
        if (self.deadline is not None and time.monotonic() >= self.deadline) or (
            self.stopped is not None and self.stopped()
        ):
            with self._lock:
                self.skipped += 1
            return
        try:
            if self.dry_run:
                self._check(key)
            else:
                self._replace(key)
        except CopyError as exc:
            if exc.kind is Kind.MOOT:  # deleted on the source since mc listed it
                with self._lock:
                    self.gone += 1
                return
            self._fail(key, exc.reason, exc.side)
        except Exception as exc:  # one key's crash must not stop the others
            log.exception("reconcile: deciding %s failed", key)
            self._fail(key, f"{type(exc).__name__}: {exc}", "")

    def _replace(self, key: str) -> None:
        assert self._copier is not None
        outcome = self._copier.copy(Task(self.pair.source_bucket, key, origin=ORIGIN))
        with self._lock:
            if outcome.copied:
                self.replaced += 1
                self.bytes += outcome.bytes
            else:
                self.current += 1
                log.debug("reconcile: %s not copied: %s", key, outcome.reason)

    def _check(self, key: str) -> None:
        from ..copier import current

        assert self._copier is not None
        source = self._copier.source.head(self.pair.source_bucket, key)
        if source is None:
            with self._lock:
                self.gone += 1
            return
        target = self._copier.target.head(self.pair.target_bucket, self.pair.target_key(key))
        with self._lock:
            if target is not None and current(target, source):
                self.current += 1
            else:
                self.would_replace.add(key)

    def _fail(self, key: str, text: str, side: str) -> None:
        cause, detail = diagnose(text)
        where = {"source": "source (MINIO_URL)", "target": "target (AWS_URL)"}.get(side, "")
        problem = Problem(
            text=f"`{key}` differs on the target and could not be replaced: {text}",
            cause=cause,
            detail=detail,
            side=where,
            key=key,
        )
        with self._lock:
            self.problems.add(problem)

    def close(self, result: PairResult) -> None:
        """Wait for every decision in flight, then add the counts to the pair's result."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._copier is not None:
            self._copier.parts.shutdown(wait=True)
        result.replaced += self.replaced
        result.copied += self.replaced
        result.bytes += self.bytes
        result.already_current += self.current
        _merge(result.would_copy, self.would_replace)
        _merge(result.problems, self.problems)
        if self.skipped:
            log.warning(
                "%s: %d differing object(s) not checked (run stopped)", self.pair, self.skipped
            )


def _merge(into: Sample[object], sample: Sample[object]) -> None:
    for item in sample.items:
        into.add(item)
    into.count += sample.more
