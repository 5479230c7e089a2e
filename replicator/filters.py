"""The one key matcher: MIRROR_PREFIX and MIRROR_EXCLUDE, with `mc mirror`'s semantics.

Reconcile hands the same prefix and patterns to mc; the listener, worker and backfill
ask this matcher, so every path copies the same set of keys.

A prefix names a folder, as `mc mirror minio/<bucket>/<prefix>` reads it: `--prefix o/0`
(or `o/0/`) means the keys under `o/0/`, i.e. `o/0/inside` but not `o/000001` or
`o/0-big`. Listings ask for exactly that folder (`listing`), so nothing outside it is
listed and then dropped; "excluded" counts only keys MIRROR_EXCLUDE matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from .config import BucketPair, Settings


def _pattern_regex(pattern: str) -> re.Pattern[bytes]:
    """mc's wildcard.Match on UTF-8 bytes: `*` any run (`/` included), `?` one byte."""
    parts = []
    for char in pattern.encode():
        if char == ord("*"):
            parts.append(b".*")
        elif char == ord("?"):
            parts.append(b".")
        else:
            parts.append(re.escape(bytes([char])))
    return re.compile(b"".join(parts), re.DOTALL)


@dataclass(frozen=True)
class KeyFilter:
    """Decides whether a source key of one pair is in scope."""

    pair: BucketPair
    prefix: str = ""
    exclude: tuple[str, ...] = ()

    @classmethod
    def for_pair(cls, settings: Settings, pair: BucketPair) -> KeyFilter:
        return cls(pair=pair, prefix=settings.prefix, exclude=settings.exclude)

    @cached_property
    def scope(self) -> str:
        """Source key prefix (a folder) the pair covers, MIRROR_PREFIX included."""
        return self.pair.source_prefix(self.prefix)

    @cached_property
    def listing(self) -> str:
        """The source listing prefix: the folder itself ("" for a whole bucket)."""
        return folder(self.scope)

    @cached_property
    def target_listing(self) -> str:
        """The same folder on the target side."""
        return folder(self.pair.target_prefix(self.prefix))

    @cached_property
    def _patterns(self) -> tuple[re.Pattern[bytes], ...]:
        return tuple(_pattern_regex(p) for p in self.exclude)

    def suffix(self, key: str) -> str | None:
        """The key relative to the mirrored folder, as mc sees it; None when outside."""
        if not self.scope:
            return key
        if key.startswith(self.scope + "/"):
            return key[len(self.scope) + 1 :]
        return None

    def accepts(self, key: str) -> bool:
        suffix = self.suffix(key)
        return suffix is not None and not self._matched(suffix)

    def excluded(self, key: str) -> bool:
        """In the folder, and matched by a MIRROR_EXCLUDE pattern."""
        suffix = self.suffix(key)
        return suffix is not None and self._matched(suffix)

    def _matched(self, suffix: str) -> bool:
        return bool(self._patterns) and any(p.fullmatch(suffix.encode()) for p in self._patterns)


def folder(prefix: str) -> str:
    """A listing prefix for a folder: `a/b` -> `a/b/`, the bucket's root -> ""."""
    return f"{prefix}/" if prefix else ""


def shares_target(settings: Settings, pair: BucketPair, target_key: str) -> bool:
    """Whether another pair also writes this target key's folder: deletes leave it alone,
    since this pair's source cannot speak for the other's."""
    for other in settings.pairs:
        if other == pair or other.target_bucket != pair.target_bucket:
            continue
        scope = other.target_prefix(settings.prefix)
        if target_key.startswith(f"{scope}/" if scope else ""):
            return True
    return False


def excluded(settings: Settings, bucket: str, key: str) -> bool:
    """Whether MIRROR_EXCLUDE matched this key in a pair's folder: what "excluded" counts
    (a key outside every folder is out of scope, not excluded)."""
    return any(f.pair.source_bucket == bucket and f.excluded(key) for f in _filters(settings))


def pairs_for(settings: Settings, bucket: str, key: str) -> list[BucketPair]:
    """Every pair that replicates this source object (a bucket may feed several pairs)."""
    return [f.pair for f in _filters(settings) if f.pair.source_bucket == bucket and f.accepts(key)]


@lru_cache(maxsize=8)  # one Settings per process: its filters are built once
def _filters(settings: Settings) -> tuple[KeyFilter, ...]:
    return tuple(KeyFilter.for_pair(settings, pair) for pair in settings.pairs)
