"""The seed's job: `mc mirror` every configured pair, at most MIRROR_MAX_PAIRS at once.

mc's exit code and its "success" lines are not trusted: the whole JSON stream is read,
and after a real run `mc diff` checks that nothing in scope is still missing (mc skips
some failures silently, AccessDenied on upload among them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import SOURCE_ALIAS, TARGET_ALIAS, BucketPair, Settings
from ..filters import KeyFilter
from . import mc_output
from .mc import Mc, session
from .mc_output import Copied, Difference, Failure, Totals
from .troubleshoot import FAILED_TO_ACCESS_ALIAS, Cause, diagnose

log = logging.getLogger(__name__)

_OVERWRITE_REFUSED = "Overwrite not allowed"


@dataclass(frozen=True)
class Problem:
    """A failure explained with the seed's troubleshooting cause and hints."""

    text: str
    cause: Cause
    detail: str = ""
    side: str = ""
    key: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "error": self.text,
            "cause": self.cause.title,
            "meaning": self.cause.meaning,
            "detail": self.detail,
            "side": self.side,
            "key": self.key,
            "hints": list(self.cause.hints),
        }


@dataclass
class PairResult:
    pair: str
    source: str
    target: str
    dry_run: bool = False
    copied: int = 0
    bytes: int = 0
    would_copy: list[str] = field(default_factory=list)
    left_changed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    note: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "pair": self.pair,
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "copied": self.copied,
            "bytes": self.bytes,
            "would_copy": self.would_copy,
            "left_changed": self.left_changed,
            "failures": [p.as_dict() for p in self.problems],
            "note": self.note,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class RunResult:
    service: str
    dry_run: bool
    pairs: list[PairResult]
    duration_s: float

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)

    def as_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "duration_s": round(self.duration_s, 3),
            "copied": sum(p.copied for p in self.pairs),
            "bytes": sum(p.bytes for p in self.pairs),
            "failed_pairs": sum(not p.ok for p in self.pairs),
            "pairs": [p.as_dict() for p in self.pairs],
        }


def source_key(url: str) -> str:
    """The object key in an mc path (`minio/bucket/key`) or URL (`http://host/bucket/key`)."""
    parts = url.split("://", 1)[-1].split("/", 2)
    return parts[2] if len(parts) > 2 else ""


class PairJob:
    """Reconciles one pair with one mc session."""

    def __init__(self, mc: Mc, settings: Settings, pair: BucketPair) -> None:
        self.mc = mc
        self.settings = settings
        self.pair = pair
        self.filter = KeyFilter.for_pair(settings, pair)
        self.source = "/".join(
            p for p in (SOURCE_ALIAS, pair.source_bucket, pair.source_prefix(settings.prefix)) if p
        )
        self.target = "/".join(
            p for p in (TARGET_ALIAS, pair.target_bucket, pair.target_prefix(settings.prefix)) if p
        )
        self.result = PairResult(str(pair), self.source, self.target, dry_run=settings.dry_run)
        self.announced: dict[str, Copied] = {}
        self.failed_keys: set[str] = set()
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
        try:
            if self.settings.dry_run:
                self._plan()
            else:
                self._mirror()
                if self.result.ok and not self.empty:
                    self._verify()
                self._count()
        finally:
            self.result.duration_s = time.monotonic() - started
        return self.result

    def _mirror_args(self) -> list[str]:
        args = ["mirror"]
        if self.settings.overwrite:
            args.append("--overwrite")
        if self.settings.skip_errors:
            args.append("--skip-errors")
        if self.settings.max_workers:
            args += ["--max-workers", str(self.settings.max_workers)]
        if self.settings.aws_region:
            args += ["--region", self.settings.aws_region]
        for pattern in self.settings.exclude:
            args += ["--exclude", pattern]
        return [*args, self.source, self.target]

    def _stream(self, args: list[str]) -> tuple[list[mc_output.Record], int, str]:
        """Run mc, returning its records, exit code and the tail of its stderr."""
        log.debug("running mc %s", " ".join(args))
        proc = self.mc.popen(*args)
        assert proc.stdout is not None and proc.stderr is not None
        stderr_tail: deque[str] = deque(maxlen=20)
        drain = threading.Thread(target=_drain, args=(proc.stderr, stderr_tail), daemon=True)
        drain.start()
        records: list[mc_output.Record] = []
        for item in mc_output.read(proc.stdout):
            log.debug("mc: %s", item)
            if not isinstance(item, str):
                records.append(item)
        code = proc.wait()
        drain.join()
        return records, code, "\n".join(stderr_tail)

    def _mirror(self) -> None:
        records, code, stderr = self._stream(self._mirror_args())
        for record in records:
            if isinstance(record, Copied):
                self.announced[source_key(record.source)] = record
            elif isinstance(record, Failure):
                self._failure(record)
        if code != 0 and self.result.ok and not self.empty:
            text = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            self.result.problems.append(
                self.problem(f"Mirror process closed with code: {code}. {text}".strip())
            )
        if self.result.ok and not self.empty and not any(isinstance(r, Totals) for r in records):
            self.result.problems.append(self.problem("mc ended without its totals line"))

    def _count(self) -> None:
        """Copied means announced by mc and neither reported failed nor found missing."""
        for key, copied in self.announced.items():
            if key.rstrip("/") not in self.failed_keys:
                self.result.copied += 1
                self.result.bytes += copied.size

    def _failure(self, failure: Failure) -> None:
        text = str(failure)
        subject = failure.subject
        key = source_key(subject) if subject and "://" in subject else None
        if _OVERWRITE_REFUSED in failure.cause:
            return  # MIRROR_OVERWRITE=false: _verify lists the objects left as they were
        if failure.fatal and "Object does not exist" in failure.cause and self.settings.prefix:
            # A date prefix with no objects yet is a quiet night, not a failure.
            self.empty = True
            self.result.note = f"nothing under {self.source} yet ({failure.cause})"
            return
        if key is not None:
            self.failed_keys.add(key.rstrip("/"))
        self.result.problems.append(self.problem(text, key, failure.bucket))

    def _differences(self) -> Iterable[tuple[Difference, str]]:
        records, code, stderr = self._stream(["diff", self.source, self.target])
        for record in records:
            if isinstance(record, Failure):
                self._failure(record)
            elif isinstance(record, Difference) and record.diff != mc_output.ONLY_IN_TARGET:
                key = source_key(record.first)
                if self.filter.accepts(key):
                    yield record, key
        if code != 0 and self.result.ok:
            self.result.problems.append(self.problem(f"mc diff closed with code {code}. {stderr}"))

    def _plan(self) -> None:
        """Dry run: `mc mirror --dry-run` lists nothing per object, so `mc diff` does."""
        for record, key in self._differences():
            if record.diff == mc_output.ONLY_IN_SOURCE or self.settings.overwrite:
                self.result.would_copy.append(key)
            else:
                self.result.left_changed.append(key)

    def _verify(self) -> None:
        """After a real run, anything in scope that still differs was not copied."""
        left = set(self.result.left_changed)
        for record, key in self._differences():
            if record.diff != mc_output.ONLY_IN_SOURCE and not self.settings.overwrite:
                if key not in left:
                    self.result.left_changed.append(key)
                continue
            self.failed_keys.add(key.rstrip("/"))
            self.result.problems.append(
                Problem(
                    text=f"`{key}` is not on the target after mc mirror (mc reported no error "
                    "for it; an upload refused with AccessDenied looks like this)",
                    cause=FAILED_TO_ACCESS_ALIAS,
                    side="target (AWS_URL)",
                    key=key,
                )
            )


def _drain(stream: Iterable[str], tail: deque[str]) -> None:
    for line in stream:
        log.debug("mc stderr: %s", line.rstrip())
        tail.append(line.rstrip())


def reconcile(settings: Settings) -> RunResult:
    """Mirror every pair, at most settings.max_pairs at once; never raises for a pair."""
    started = time.monotonic()

    def one(pair: BucketPair) -> PairResult:
        with session(settings) as mc:
            job = PairJob(mc, settings, pair)
            try:
                return job.run()
            except Exception as exc:  # one pair's crash must not stop the others
                log.exception("pair %s failed", pair)
                job.result.problems.append(job.problem(f"{type(exc).__name__}: {exc}"))
                return job.result

    with ThreadPoolExecutor(max_workers=settings.max_pairs, thread_name_prefix="pair") as pool:
        results = list(pool.map(one, settings.pairs))
    return RunResult(
        service=settings.service,
        dry_run=settings.dry_run,
        pairs=results,
        duration_s=time.monotonic() - started,
    )
