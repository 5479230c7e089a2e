"""The objects mc announced it would copy, kept on disk so memory stays flat.

mc prints a "success" record (key and size) *before* each copy and reports a failed copy
later as a separate error; `mc diff` after the run names what is still missing, without
sizes. Counting what was really copied (objects and bytes) therefore needs the size of
each announced key until the end of the run. Holding that in memory grows with the
object count (the cause of out-of-memory kills on large first runs), so it lives in a
SQLite file in the session's private temporary directory, removed with it. Memory is
SQLite's page cache (a few MiB) whatever the number of objects.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_BATCH = 2000  # announcements written per transaction
_CACHE_KIB = 4096


class Ledger:
    """key -> size of every announced copy, and which of them failed."""

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
            "CREATE TABLE IF NOT EXISTS announced "
            "(key TEXT PRIMARY KEY, size INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0)"
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
