"""The one end-of-run summary of a reconcile, for people (text) and machines (JSON)."""

from __future__ import annotations

import json

from .result import PairResult, RunResult, Sample

_SHOWN = 10  # keys and errors listed per pair before "... and N more"


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _keys(title: str, keys: Sample[str]) -> list[str]:
    lines = [f"    {title}:"] + [f"      {key}" for key in keys.items[:_SHOWN]]
    if keys.count > _SHOWN:
        lines.append(f"      ... and {keys.count - _SHOWN} more")
    return lines


def pair_outcome(pair: PairResult) -> str:
    """One phrase: what happened to this pair (and to its deletes, with MIRROR_DELETE)."""
    return _copy_outcome(pair) + _delete_outcome(pair)


def _delete_outcome(pair: PairResult) -> str:
    if not pair.deletes:
        return ""
    if pair.delete_refused:
        return "; deletes REFUSED, nothing deleted"
    stopped = ""
    if pair.delete_stopped:
        left = f" with {pair.delete_left} planned left" if pair.delete_left else ""
        stopped = f", STOPPED by the deadline{left}"
    if pair.dry_run:
        return f"; would delete {pair.would_delete.count} object(s){stopped}"
    skipped = f" ({pair.delete_skipped} kept: re-checked)" if pair.delete_skipped else ""
    return f"; deleted {pair.deleted} object(s){skipped}{stopped}"


def _copy_outcome(pair: PairResult) -> str:
    if not pair.ok:
        return f"FAILED ({pair.problems.count} error(s)); copied {pair.copied}"
    if pair.dry_run:
        return f"dry run: would copy {pair.would_copy.count} object(s), copied nothing"
    if pair.copied:
        return f"copied {pair.copied} object(s), {human_bytes(pair.bytes)}"
    return "nothing to copy: the target is up to date"


def render_text(run: RunResult) -> str:
    failed = sum(not p.ok for p in run.pairs)
    head = (
        f"{run.service} reconcile{' (DRY RUN)' if run.dry_run else ''}: "
        f"{len(run.pairs)} pair(s), {failed} failed, "
        f"{sum(p.copied for p in run.pairs)} object(s) copied "
        f"({human_bytes(sum(p.bytes for p in run.pairs))})"
    )
    if any(p.deletes for p in run.pairs):
        head += f", {sum(p.deleted for p in run.pairs)} deleted"
    head += f" in {run.duration_s:.1f}s"
    lines = [head]
    for pair in run.pairs:
        mark = "OK  " if pair.ok else "FAIL"
        lines.append(f"  [{mark}] {pair.pair}: {pair_outcome(pair)}")
        if pair.note:
            lines.append(f"    note: {pair.note}")
        if pair.replaced or pair.already_current:
            lines.append(
                f"    differing by mc's size/time rule, decided by the copy engine: "
                f"{pair.replaced} replaced, {pair.already_current} already current (not copied)"
            )
        if pair.would_copy.count:
            lines += _keys("would copy", pair.would_copy)
        if pair.would_delete.count:
            lines += _keys("would delete (MIRROR_DELETE)", pair.would_delete)
        if pair.left_changed.count:
            lines += _keys(
                "changed on the source but left on the target (MIRROR_OVERWRITE=false)",
                pair.left_changed,
            )
        for problem in pair.problems.items[:_SHOWN]:
            where = f" [{problem.side}]" if problem.side else ""
            lines.append(f"    error{where}: {problem.text}")
            detail = f" ({problem.detail})" if problem.detail else ""
            lines.append(f"      cause: {problem.cause.title}: {problem.cause.meaning}{detail}")
            lines += [f"      hint: {hint}" for hint in problem.cause.hints]
        if pair.problems.count > _SHOWN:
            lines.append(f"    ... and {pair.problems.count - _SHOWN} more error(s)")
    return "\n".join(lines)


def render_json(run: RunResult) -> str:
    return json.dumps(run.as_dict(), ensure_ascii=False, indent=2)
