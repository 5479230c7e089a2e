"""What a reconcile run found: per-pair counters and bounded samples, never one entry per object.

The runner fills these; the summary and the Slack report read them (neither imports the
runner). Lists of keys and failures keep the first KEPT entries and count the rest, so a
run over millions of objects holds the same memory as a run over ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .troubleshoot import Cause

T = TypeVar("T")

KEPT = 100  # keys or failures kept per list and pair; the rest are only counted


@dataclass
class Sample(Generic[T]):
    """The first `keep` items added (in order), and how many were added in all."""

    keep: int = KEPT
    items: list[T] = field(default_factory=list)
    count: int = 0

    def add(self, item: T, *, first: bool = False) -> None:
        """Count an item; keep it if there is room (`first`: keep it ahead of the others)."""
        self.count += 1
        if first:
            self.items.insert(0, item)
            del self.items[self.keep :]
        elif len(self.items) < self.keep:
            self.items.append(item)

    @property
    def more(self) -> int:
        """How many were counted but not kept."""
        return self.count - len(self.items)


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
    copied: int = 0  # every object written: mc's copies and the replacements
    bytes: int = 0
    replaced: int = 0  # of `copied`: changed objects the copy engine replaced
    already_current: int = 0  # mc saw them as differing; they hold the source's content
    would_copy: Sample[str] = field(default_factory=Sample)
    left_changed: Sample[str] = field(default_factory=Sample)
    problems: Sample[Problem] = field(default_factory=Sample)
    note: str = ""
    duration_s: float = 0.0
    deletes: bool = False  # MIRROR_DELETE was on for this pair
    deleted: int = 0
    delete_skipped: int = 0  # re-checked and left (e.g. the source has the key again)
    would_delete: Sample[str] = field(default_factory=Sample)  # dry run: target keys
    delete_refused: str = ""  # the brake's reason: nothing was deleted
    delete_stopped: str = ""  # what the run's deadline cut short ("" when nothing)
    delete_left: int = 0  # planned deletes not begun by the deadline: the next run's

    @property
    def ok(self) -> bool:
        return self.problems.count == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "pair": self.pair,
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "copied": self.copied,
            "bytes": self.bytes,
            "replaced": self.replaced,
            "already_current": self.already_current,
            "would_copy": self.would_copy.items,
            "would_copy_count": self.would_copy.count,
            "left_changed": self.left_changed.items,
            "left_changed_count": self.left_changed.count,
            "failures": [p.as_dict() for p in self.problems.items],
            "failure_count": self.problems.count,
            "note": self.note,
            "duration_s": round(self.duration_s, 3),
            "deletes": self.deletes,
            "deleted": self.deleted,
            "delete_skipped": self.delete_skipped,
            "would_delete": self.would_delete.items,
            "would_delete_count": self.would_delete.count,
            "delete_refused": self.delete_refused,
            "delete_stopped": self.delete_stopped,
            "delete_left": self.delete_left,
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
            "deleted": sum(p.deleted for p in self.pairs),
            "failed_pairs": sum(not p.ok for p in self.pairs),
            "pairs": [p.as_dict() for p in self.pairs],
        }
