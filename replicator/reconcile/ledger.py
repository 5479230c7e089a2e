"""The objects mc announced it would copy, kept on disk so memory stays flat.

mc prints a "success" record (key and size) *before* each copy and reports a failed copy
later as a separate error, or not at all (an upload refused with AccessDenied). Counting
what was really copied (objects and bytes) therefore needs the size of each announced key
until the end of the run, and the verify marks each one found on the target. Holding that
in memory grows with the object count (the cause of out-of-memory kills on large first
runs), so it lives in a SQLite file in the session's private temporary directory, removed
with it. Memory is SQLite's page cache (a few MiB) whatever the number of objects.

Keys are compared byte-wise (SQLite's BINARY collation on UTF-8), the order S3 lists in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

_BATCH = 2000  # announcements written per transaction
_CACHE_KIB = 4096
_PENDING = "failed = 0 AND seen = 0"  # announced, not failed, not yet found on the target


class Ledger:
    """key -> size of every announced copy, which of them failed, which were seen."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode = OFF",  # a scratch file: nothing to recover after a crash
            "synchronous = OFF",
            f"cache_size = -{_CACHE_KIB}",
            "temp_store = FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS announced (key TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "failed INTEGER NOT NULL DEFAULT 0, seen INTEGER NOT NULL DEFAULT 0)"
        )
        self._pending: list[tuple[str, int]] = []

    def announce(self, key: str, size: int) -> None:
        self._pending.append((key, size))
        if len(self._pending) >= _BATCH:
            self._flush()

    def fail(self, key: str) -> bool:
        """Mark an announced key as not copied; False when it was never announced."""
        self._flush()
        changed = self.db.execute(
            "UPDATE announced SET failed = 1 WHERE key = ? AND failed = 0", (key,)
        )
        return changed.rowcount == 1

    def unverified(self) -> int:
        """How many announced keys are neither failed nor seen on the target."""
        self._flush()
        found = self.db.execute(f"SELECT COUNT(*) FROM announced WHERE {_PENDING}")
        return int(found.fetchone()[0])

    def bounds(self) -> tuple[str, str] | None:
        """The first and last unverified key (None when there is none)."""
        self._flush()
        ends = [
            self.db.execute(
                f"SELECT key FROM announced WHERE {_PENDING} ORDER BY key {way} LIMIT 1"
            ).fetchone()
            for way in ("ASC", "DESC")
        ]
        return None if ends[0] is None else (ends[0][0], ends[1][0])

    def unverified_keys(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every unverified key, in key order, read as iterated."""
        self._flush()
        yield from self.db.execute(f"SELECT key, size FROM announced WHERE {_PENDING} ORDER BY key")

    def see(self, keys: Iterable[str]) -> None:
        """Mark these keys as found on the target (keys never announced are ignored)."""
        self._flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE announced SET seen = 1 WHERE key = ?", ((key,) for key in keys)
            )

    def fail_unverified(self) -> int:
        """Mark every unverified key as not copied; how many there were."""
        self._flush()
        return self.db.execute(f"UPDATE announced SET failed = 1 WHERE {_PENDING}").rowcount

    def copied(self) -> tuple[int, int]:
        """(objects, bytes) announced and not marked failed."""
        self._flush()
        count, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM announced WHERE failed = 0"
        ).fetchone()
        return int(count), int(size)

    def close(self) -> None:
        self._pending.clear()
        self.db.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        with self.db:  # one transaction per batch
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO announced (key, size) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET size = excluded.size, failed = 0",
                self._pending,
            )
        self._pending.clear()
