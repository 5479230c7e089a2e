"""The seed's job: `mc mirror` every configured pair, at most MIRROR_MAX_PAIRS at once.

mc's exit code and its "success" lines are not trusted: the whole JSON stream is read,
and after a real run every copy mc announced is looked up on the target (verify.py: mc
skips some failures silently, AccessDenied on upload among them).

mc never overwrites: it runs without `--overwrite` and only reports objects that differ
by its rule (size, or a target time older than the source's); with MIRROR_OVERWRITE each
of them is decided by the copy engine (replace.py), which leaves a copy holding the
source's content, whatever the target's timestamp granularity.

Memory does not grow with the number of objects: records are handled as they arrive
(counters, the first KEPT keys and failures, announced sizes in an on-disk ledger), and
time is bounded: the whole run has a deadline (MIRROR_RECONCILE_TIMEOUT) at which every
running mc is stopped and its pair reported failed.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ..config import SOURCE_ALIAS, TARGET_ALIAS, BucketPair, ConfigError, Settings
from ..filters import KeyFilter
from . import mc_output, verify
from .ledger import Ledger
from .mc import (
    Interrupted,
    Mc,
    McRun,
    NoCredentials,
    NoTempDir,
    Reach,
    interrupted,
    private_dir,
    session,
    stop_all,
)
from .mc_output import Copied, Difference, Failure, Record, Totals, UnreadableRecord
from .replace import Replacer
from .result import PairResult, Problem, RunResult
from .troubleshoot import (
    DELETE_FAILED,
    DELETES_REFUSED,
    FAILED_TO_ACCESS_ALIAS,
    MC_OUTPUT_UNREADABLE,
    NO_CREDENTIALS,
    TIMED_OUT,
    diagnose,
)

log = logging.getLogger(__name__)

_OVERWRITE_REFUSED = "Overwrite not allowed"
_REFUSED_TARGET = re.compile(r"Overwrite not allowed for `([^`]*)`")
_MC_KMS_KEY = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")  # mc's --enc-kms form
TIMEOUT_VARIABLE = "MIRROR_RECONCILE_TIMEOUT"


class TimedOut(Exception):
    """The run's deadline passed: mc was stopped (or never started)."""


def source_key(url: str) -> str:
    """The object key in an mc path (`minio/bucket/key`) or URL (`http://host/bucket/key`)."""
    parts = url.split("://", 1)[-1].split("/", 2)
    return parts[2] if len(parts) > 2 else ""


def duration_text(seconds: float) -> str:
    """1h30m, 45s: the form MIRROR_RECONCILE_TIMEOUT accepts."""
    whole = int(seconds)
    parts = [
        (whole // 86400, "d"),
        (whole % 86400 // 3600, "h"),
        (whole % 3600 // 60, "m"),
        (whole % 60, "s"),
    ]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


class PairJob:
    """Reconciles one pair with one mc session, by the run's deadline."""

    def __init__(
        self, mc: Mc, settings: Settings, pair: BucketPair, deadline: float | None = None
    ) -> None:
        self.mc = mc
        self.settings = settings
        self.pair = pair
        self.deadline = deadline
        self.filter = KeyFilter.for_pair(settings, pair)
        self.source = "/".join(
            p for p in (SOURCE_ALIAS, pair.source_bucket, pair.source_prefix(settings.prefix)) if p
        )
        self.target = "/".join(
            p for p in (TARGET_ALIAS, pair.target_bucket, pair.target_prefix(settings.prefix)) if p
        )
        self.result = PairResult(str(pair), self.source, self.target, dry_run=settings.dry_run)
        self.replacer = Replacer(
            settings, pair, dry_run=settings.dry_run, deadline=deadline, stopped=interrupted
        )
        self.empty = False  # the prefix holds nothing (yet)

    def problem(self, text: str, key: str | None = None, bucket: str = "") -> Problem:
        cause, detail = diagnose(text)
        side = self._side(text, bucket)
        return Problem(text=text, cause=cause, detail=detail, side=side, key=key)

    def _side(self, text: str, bucket: str) -> str:
        """Which endpoint a failure is about, when the text tells."""
        source_host = self.settings.source.netloc
        target_host = self.settings.target.netloc if self.settings.target else ""
        if "source" in text or f"{SOURCE_ALIAS}/" in text or source_host in text:
            return "source (MINIO_URL)"
        if f"{TARGET_ALIAS}/" in text or (target_host and target_host in text):
            return "target (AWS_URL)"
        if bucket and bucket == self.pair.target_bucket != self.pair.source_bucket:
            return "target (AWS_URL)"
        return ""

    def run(self) -> PairResult:
        started = time.monotonic()
        ledger = Ledger(self.mc.config_dir / "announced.sqlite")
        try:
            if self.settings.dry_run:
                self._plan()
            else:
                self._mirror(ledger)
                if self.result.ok and not self.empty:
                    self._verify(ledger)
            if self.settings.delete:
                self._deletes()
        except TimedOut as exc:
            self.result.problems.add(Problem(text=str(exc), cause=TIMED_OUT), first=True)
            self.result.note = "stopped by MIRROR_RECONCILE_TIMEOUT: the counts are what was done "
            self.result.note += "by then; the next run does what is still left"
        except UnreadableRecord as exc:
            self.result.problems.add(Problem(text=str(exc), cause=MC_OUTPUT_UNREADABLE))
        except Interrupted as exc:
            self.result.problems.add(self.problem(str(exc)))
        finally:
            if not self.settings.dry_run:
                self.result.copied, self.result.bytes = ledger.copied()
            ledger.close()
            self.replacer.close(self.result)
            self.result.duration_s = time.monotonic() - started
        return self.result

    def _stream(self, args: list[str], handle: Callable[[Record], None]) -> McRun:
        """Run mc and hand each record to `handle` as it arrives; mc is stopped if it raises.

        Raises TimedOut when the deadline passed before or while mc ran.
        """
        self._startable(f"mc {args[0]}")
        with self.mc.run(*args, deadline=self.deadline) as run:
            for item in mc_output.read(run.stdout):
                if isinstance(item, str):
                    log.debug("mc: %s", item)
                else:
                    handle(item)
        if run.timed_out:
            raise TimedOut(
                f"mc {args[0]} stopped: the run reached {TIMEOUT_VARIABLE} "
                f"({duration_text(self.settings.reconcile_timeout_s)})"
            )
        return run

    def _startable(self, what: str) -> None:
        """Raises TimedOut when the deadline passed before `what` started."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimedOut(
                f"{what} not started: the run reached {TIMEOUT_VARIABLE} "
                f"({duration_text(self.settings.reconcile_timeout_s)})"
            )

    def _mirror_args(self) -> list[str]:
        # Never --overwrite: mc reports what differs, the copy engine decides (replace.py).
        # No --max-workers: the pinned mc has no such flag (it sizes its own pool from the
        # CPUs and the transfer rate); MIRROR_MAX_WORKERS sizes the copy engine's pool.
        # --md5: a Content-MD5 on every PUT and part, which the target verifies and Object
        # Lock buckets require (`--checksum` sends a trailing checksum, which the AWS-like
        # server refuses on them, and mc cannot combine the two).
        args = ["mirror", "--md5"]
        if self.settings.storage_class:
            args += ["--storage-class", self.settings.storage_class]
        target_bucket = f"{TARGET_ALIAS}/{self.pair.target_bucket}"
        if self.settings.sse == "AES256":
            args += ["--enc-s3", target_bucket]
        elif self.settings.sse == "aws:kms":
            args += ["--enc-kms", f"{target_bucket}={self.settings.sse_kms_key_id}"]
        if self.settings.skip_errors:
            args.append("--skip-errors")
        if self.settings.aws_region:
            args += ["--region", self.settings.aws_region]
        for pattern in self.settings.exclude:
            args += ["--exclude", pattern]
        return [*args, self.source, self.target]

    def _mirror(self, ledger: Ledger) -> None:
        saw_totals = False
        objects = 0  # records naming an object: mc listed both sides

        def handle(record: Record) -> None:
            nonlocal saw_totals, objects
            if isinstance(record, Copied):
                objects += 1
                ledger.announce(source_key(record.source).rstrip("/"), record.size)
            elif isinstance(record, Failure):
                objects += 1
                self._failure(record, ledger)
            elif isinstance(record, Totals):
                saw_totals = True

        self._startable("mc mirror")
        # mc lists the target only while the source has objects: with an empty source it
        # says nothing of a target it cannot reach. So the first entry of the target is
        # asked for beside it, and read only when mc named no object.
        target = self.pair.target_bucket
        with Reach(self.mc, TARGET_ALIAS, "target", target, self.deadline) as reach:
            run = self._stream(self._mirror_args(), handle)
            if run.code != 0 and self.result.ok and not self.empty:
                text = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
                self.result.problems.add(
                    self.problem(f"Mirror process closed with code: {run.code}. {text}".strip())
                )
            if self.result.ok and not self.empty and not saw_totals:
                self.result.problems.add(self.problem("mc ended without its totals line"))
            if self.result.ok and not self.empty and not objects:
                self._reached(reach)

    def _reached(self, reach: Reach) -> None:
        """A failure when mc could not reach or list the target bucket."""
        found = reach.result()
        if not found.ok:
            self.result.problems.add(self.problem(found.text, bucket=self.pair.target_bucket))

    def _failure(self, failure: Failure, ledger: Ledger | None = None) -> None:
        text = str(failure)
        subject = failure.subject
        key = source_key(subject) if subject and "://" in subject else None
        if _OVERWRITE_REFUSED in failure.cause:
            # mc found the target copy different (or older by its clock): the copy engine
            # decides it, or without MIRROR_OVERWRITE it is listed as left unchanged.
            refused = _REFUSED_TARGET.search(failure.cause)
            key = self._source_key_of_target(refused.group(1)) if refused else None
            if key is not None and self.filter.accepts(key):
                if self.settings.overwrite:
                    self.replacer.submit(key)
                else:
                    self.result.left_changed.add(key)
            return
        if failure.fatal and "Object does not exist" in failure.cause and self.settings.prefix:
            # A date prefix with no objects yet is a quiet night, not a failure.
            self.empty = True
            self.result.note = f"nothing under {self.source} yet ({failure.cause})"
            return
        if key is not None and ledger is not None:
            ledger.fail(key.rstrip("/"))
        self.result.problems.add(self.problem(text, key, failure.bucket))

    def _source_key_of_target(self, url: str) -> str | None:
        """The source key whose target copy is at `url` (mc prints <alias URL>/<bucket>/<key>)."""
        key = source_key(url)
        if self.pair.target_path:
            if not key.startswith(f"{self.pair.target_path}/"):
                return None
            key = key[len(self.pair.target_path) + 1 :]
        return f"{self.pair.source_path}/{key}" if self.pair.source_path else key

    def _differences(self, found: Callable[[Difference, str], None]) -> None:
        """`mc diff` of the pair: `found(record, key)` for each in-scope source-side difference."""

        def handle(record: Record) -> None:
            if isinstance(record, Failure):
                self._failure(record)
            elif isinstance(record, Difference) and record.diff != mc_output.ONLY_IN_TARGET:
                key = source_key(record.first)
                if self.filter.accepts(key):
                    found(record, key)

        run = self._stream(["diff", self.source, self.target], handle)
        if run.code != 0 and self.result.ok:
            self.result.problems.add(
                self.problem(f"mc diff closed with code {run.code}. {run.stderr}".strip())
            )

    def _deletes(self) -> None:
        """MIRROR_DELETE: remove what the source no longer has, behind the planner's brake."""
        from ..deletes import Deleter  # loads the S3 layer: only runs that delete pay for it

        threads = self.settings.max_workers or 8
        deleter = Deleter(
            self.settings,
            dry_run=self.settings.dry_run,
            origin="reconcile",
            threads=threads,
            deadline=self.deadline,
        )
        report = deleter.run(self.pair)
        self.result.deletes = True
        self.result.deleted = report.deleted
        self.result.delete_skipped = sum(report.skipped.values())
        self.result.delete_stopped, self.result.delete_left = report.timed_out, report.left
        for key in report.would_delete:
            self.result.would_delete.add(key)
        if report.refused:
            self.result.delete_refused = report.refused
            text = report.refused
            problem = Problem(text=text, cause=DELETES_REFUSED, side=self._side(text, ""))
            self.result.problems.add(problem, first=True)
        for failure in report.failures:
            key = failure.split(": ", 1)[0]
            self.result.problems.add(
                Problem(
                    text=f"delete failed: {failure}",
                    cause=DELETE_FAILED,
                    side="target (AWS_URL)",
                    key=key,
                )
            )
        self.result.problems.count += report.failed - len(report.failures)  # beyond the kept
        if report.timed_out:
            raise TimedOut(
                f"deletes stopped: {report.timed_out}; the run reached {TIMEOUT_VARIABLE} "
                f"({duration_text(self.settings.reconcile_timeout_s)})"
            )

    def _plan(self) -> None:
        """Dry run: the pinned `mc mirror --dry-run` prints totals only, no object, so
        `mc diff` lists what differs (one listing of each side, as mc mirror's)."""

        def found(record: Difference, key: str) -> None:
            if record.diff == mc_output.ONLY_IN_SOURCE:
                self.result.would_copy.add(key)
            elif self.settings.overwrite:
                self.replacer.submit(key)  # HEADs both sides: listed only if not current
            else:
                self.result.left_changed.add(key)

        self._differences(found)

    def _verify(self, ledger: Ledger) -> None:
        """After a real run, every copy mc announced without an error is looked up on the
        target (verify.py); one that is not there was not copied."""
        if not ledger.unverified():
            return  # nothing announced: mc's own listings were the run's only ones
        from ..errors import CopyError
        from ..s3 import S3

        threads = self.settings.max_workers or 8
        try:
            target = S3(self.settings.target, self.settings, "target", threads)
            verify.mark_present(ledger, target, self.pair, threads, self._in_time)
        except CopyError as exc:
            text = f"the verify after mc mirror failed: {exc.reason}"
            cause, detail = diagnose(text)
            side = "target (AWS_URL)"
            self.result.problems.add(Problem(text=text, cause=cause, detail=detail, side=side))
            return
        for key, _ in ledger.unverified_keys():
            self.result.problems.add(
                Problem(
                    text=f"`{key}` is not on the target after mc mirror (mc reported no error "
                    "for it; an upload refused with AccessDenied looks like this)",
                    cause=FAILED_TO_ACCESS_ALIAS,
                    side="target (AWS_URL)",
                    key=key,
                )
            )
        ledger.fail_unverified()

    def _in_time(self) -> None:
        """Raises TimedOut past the run's deadline, Interrupted when the run is stopped."""
        if interrupted():
            raise Interrupted("interrupted: verify stopped")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimedOut(
                f"verify stopped: the run reached {TIMEOUT_VARIABLE} "
                f"({duration_text(self.settings.reconcile_timeout_s)})"
            )


def reconcile(settings: Settings) -> RunResult:
    """Mirror every pair, at most settings.max_pairs at once, by the run's deadline.

    Never raises for a pair: a pair that fails, crashes or runs out of time is reported.
    """
    try:
        check_settings(settings)
    except ConfigError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None
    try:
        private_dir().rmdir()  # every pair's mc needs one: say so once, not per pair
    except NoTempDir as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(1) from None
    started = time.monotonic()
    deadline = started + settings.reconcile_timeout_s

    def one(pair: BucketPair) -> PairResult:
        try:
            with session(settings) as mc:
                job = PairJob(mc, settings, pair, deadline)
                try:
                    return job.run()
                except Exception as exc:  # one pair's crash must not stop the others
                    log.exception("pair %s failed", pair)
                    job.result.problems.add(job.problem(f"{type(exc).__name__}: {exc}"))
                    return job.result
        except NoCredentials as exc:  # the target has no static keys and the chain none
            result = PairResult(str(pair), "", "", dry_run=settings.dry_run)
            side = "target (AWS_URL)"
            result.problems.add(Problem(text=str(exc), cause=NO_CREDENTIALS, side=side))
            return result

    with (
        _terminate_as_exit(),
        ThreadPoolExecutor(max_workers=settings.max_pairs, thread_name_prefix="pair") as pool,
    ):
        try:
            results = list(pool.map(one, settings.pairs))
        except BaseException:  # Ctrl-C or SIGTERM: no mc outlives this process
            log.warning("interrupted: stopping every running mc")
            pool.shutdown(wait=False, cancel_futures=True)
            stop_all()
            raise
    return RunResult(
        service=settings.service,
        dry_run=settings.dry_run,
        pairs=results,
        duration_s=time.monotonic() - started,
    )


def check_settings(settings: Settings) -> None:
    """What mc cannot do that the other commands can: a ConfigError (exit 2)."""
    if settings.sse == "aws:kms":
        key = settings.sse_kms_key_id
        if key is None or not _MC_KMS_KEY.fullmatch(key):
            expected = (
                "a bare KMS key id, which reconcile's mc needs with AWS_SSE=aws:kms (its "
                "--enc-kms takes no alias, ARN or default key; example: "
                "1234abcd-12ab-34cd-56ef-1234567890ab); or unset AWS_SSE and give the target "
                "bucket SSE-KMS default encryption"
            )
            raise ConfigError("AWS_SSE_KMS_KEY_ID", key, expected)


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) in the main thread while the run lasts, like Ctrl-C
    raises KeyboardInterrupt, so mc (in its own process group) is stopped either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
