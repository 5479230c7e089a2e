"""The copy engine: one source object to its target key(s), by the rules of design 7.

Copies what the source holds now (pinned by ETag while reading), streams large objects
in parts through a fixed buffer budget (a small object's body, held whole, takes its
bytes from a budget of its own), keeps headers and user metadata, and records the
source identity on the target. Every write is conditional on the target being as we saw
it (If-None-Match / If-Match), and a replacement re-checks the source after writing, so
an older version never stays over a newer one. A new object costs a target HEAD, one
source GET and the PUT (no HEAD while keys keep being new: `Freshness`); an up-to-date
one a target HEAD and a source HEAD. It talks to the S3 layer only.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import hashlib
import json
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import tenacity

from .concurrency import MEMORY_BUDGET
from .config import BucketPair, Settings
from .errors import CopyError, Kind
from .filters import pairs_for, shares_target
from .s3 import S3, Body, Head
from .task import Task

SOURCE_ETAG = "mirror-source-etag"
SOURCE_MTIME = "mirror-source-mtime"
SOURCE_META = "mirror-source-meta"  # fingerprint of the source's kept headers and metadata
OURS = (SOURCE_ETAG, SOURCE_MTIME, SOURCE_META)
MiB = 1024 * 1024
PART_SIZE = 16 * MiB
MULTIPART_THRESHOLD = 16 * MiB
MAX_PARTS = 10_000
PART_BUDGET = 3 * PART_SIZE  # bytes of parts in memory at once, for the whole process
# Bytes of whole bodies (objects up to MULTIPART_THRESHOLD, one GET then one PUT) in
# memory at once, for the whole process: taken before a body is read, given back once
# its PUT is done. Not the parts' budget: a small copy never waits behind a large
# object's parts.
BODY_BUDGET = MEMORY_BUDGET
PART_THREADS = 8
PARTS_PER_UPLOAD = 3  # parts of one object in flight at once
# A part's PUT idles two round trips (100 Continue, then the answer) holding its buffer.
# Where the target is far (creating the upload took FAR_S or more), parts are half the
# size and twice as many are in flight: more of the link busy for the same memory.
FAR_S = 0.03
FAR_PARTS = 2 * PARTS_PER_UPLOAD
# Retries do not nest: a failed part has its PART_TRIES here and the worker adds none
# (CopyError.retried), so a part that keeps failing is sent at most PART_TRIES times per
# delivery, 3 x 5 = 15 times in a task's life with the default MIRROR_RETRY_DELAYS (four
# delayed retries). A single PUT likewise: the worker's 3 in-process tries per delivery.
PART_TRIES = 3
# Each part carries a CRC32 the target verifies (AWS SDKs' own default): a tenth of
# SHA-256's CPU per byte on both sides, for bulk bytes. A single PUT keeps SHA-256,
# which doubles as its signature's payload hash.
PART_CHECKSUM = "CRC32"
CHASES = 5  # how often to follow a source that keeps changing before giving up
WRITE_FIRST_AT = 0.95  # share of recent writes that found no target object
FRESH_WINDOW = 32  # about how many recent writes that share remembers
SMALL_QUIET_S = 0.5  # how long after the last small PUT large copies keep yielding


@dataclass(frozen=True)
class Outcome:
    copied: bool
    reason: str  # why it was skipped, or "copied" / "deleted"
    bytes: int = 0
    deleted: bool = False


class KeyLocks:
    """One copy per key at a time in this process: duplicates wait, then find it current."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[str, tuple[threading.RLock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self.guard:
            # Re-entrant: a delete that finds the key re-created copies it under its lock.
            lock, users = self.locks.get(key, (threading.RLock(), 0))
            self.locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self.guard:
                lock, users = self.locks[key]
                if users == 1:
                    del self.locks[key]
                else:
                    self.locks[key] = (lock, users - 1)


class SmallFirst:
    """Whether small copies (one PUT each) are running, or ran within SMALL_QUIET_S: a
    large object's parts then go one at a time, so its bytes do not take the link (and,
    where servers share the host, the CPU) from them. Two thousand small objects would
    otherwise lose half their rate while one 1 GiB copy runs (issue 23's S6); the large
    copy never stops, it goes at one part per round trip until they are done."""

    def __init__(self) -> None:
        self.running, self.last = 0, -math.inf
        self.guard = threading.Lock()

    @contextmanager
    def put(self) -> Iterator[None]:
        with self.guard:
            self.running += 1
        try:
            yield
        finally:
            with self.guard:
                self.last = time.monotonic()  # first: `busy` reads both without the lock
                self.running -= 1

    def busy(self) -> bool:
        return self.running > 0 or time.monotonic() - self.last < SMALL_QUIET_S


class PartsInFlight:
    """One upload's parts in flight: at most `most`, one while small copies run."""

    def __init__(self, most: int, small: SmallFirst) -> None:
        self.most, self.small, self.count = most, small, 0
        self.changed = threading.Condition()

    def _room(self) -> bool:
        return self.count < (1 if self.small.busy() else self.most)

    def take(self) -> None:
        with self.changed:
            while not self.changed.wait_for(self._room, SMALL_QUIET_S):
                pass  # small copies may have stopped since: look again
            self.count += 1

    def give(self, _: object = None) -> None:
        with self.changed:
            self.count -= 1
            self.changed.notify()


class Freshness:
    """How often the target lately had no object where a copy was about to land (a moving
    average). Above WRITE_FIRST_AT the engine writes first (source GET, then PUT
    If-None-Match: *) and HEADs the target only after a 412: a stream of new keys saves a
    target HEAD per object, while a key the target already has costs a refused PUT. At AWS
    prices (a PUT costs 12.5 HEADs) writing first pays from ~93% new keys; replays and
    overwrites pull the share down within a few objects. Races are harmless (a lost
    update of a heuristic): every write is conditional either way."""

    def __init__(self) -> None:
        self.share = 0.0

    def saw(self, absent: bool) -> None:
        self.share += (absent - self.share) / FRESH_WINDOW

    def likely(self) -> bool:
        return self.share >= WRITE_FIRST_AT


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
UNMAP_FROM = 1024 * 1024


@functools.cache
def unmap_large_buffers() -> bool:
    """Have glibc give every buffer of 1 MiB or more back to the system when it is freed.
    By default glibc raises its mmap threshold to the largest block freed so far (up to
    32 MiB), and part buffers then come from per-thread heaps that keep them once freed:
    4 multipart copies to a far target peaked at 171 MiB of RSS, 100 MiB with this. False
    where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, UNMAP_FROM))


class Budget:
    """Bytes of buffers (parts, or whole bodies) the process may hold at once, handed out
    in the order asked (a large body is never overtaken for ever by small ones). One
    larger than the whole budget waits until it is alone. (A part that large, in objects
    above ~470 GiB, is streamed instead.)"""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self.changed = threading.Condition()
        self.issued = self.served = 0  # tickets: who waits, in order

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.total

    def take(self, size: int, wait: bool = True) -> bool:
        """Take `size` bytes, after everyone who asked before; without `wait`, only if
        nobody waits and they fit now (False: nothing taken)."""
        with self.changed:
            if not wait:
                if self.issued > self.served or not self._fits(size):
                    return False
                self.used += size
                return True
            ticket, self.issued = self.issued, self.issued + 1
            self.changed.wait_for(lambda: self.served == ticket and self._fits(size))
            self.served += 1
            self.used += size
            self.changed.notify_all()  # the next ticket may fit too
            return True

    def give(self, size: int) -> None:
        with self.changed:
            self.used -= size
            self.changed.notify_all()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        self.take(size)
        try:
            yield
        finally:
            self.give(size)


class Reading:
    """The source's bytes of one multipart copy, read part after part in order so that
    their MD5 can be compared with the source's (its ETag, where it is one): the target
    checks each part's CRC32, which covers the way from here only. Parts still upload in
    parallel; a part waits for its turn before it takes a buffer, so the turns never wait
    on the budget held by a later part. A retried part reads again without re-hashing
    (reads are pinned by the ETag)."""

    def __init__(self, source: Head) -> None:
        self.source = source
        self.md5 = hashlib.md5(usedforsecurity=False) if source.md5 else None
        self.next = 1  # the part whose bytes are hashed next
        self.given_up = False
        self.changed = threading.Condition()

    @contextmanager
    def turn(self, number: int) -> Iterator[Callable[[bytes], None]]:
        with self.changed:
            self.changed.wait_for(lambda: self.next >= number or self.given_up)
            if self.given_up:
                raise CopyError(Kind.TRANSIENT, "another part of this copy failed", "source")
            first = self.next == number
        digest = self.md5.update if first and self.md5 else _ignore
        yield digest
        if first:
            with self.changed:
                self.next = number + 1
                self.changed.notify_all()

    def abandon(self) -> None:
        with self.changed:
            self.given_up = True
            self.changed.notify_all()

    def check(self) -> None:
        """Raise when the bytes read are not the source's (their MD5 is not its ETag)."""
        if self.md5 is not None and self.md5.hexdigest() != self.source.etag:
            raise CopyError(
                Kind.TRANSIENT,
                "source bytes read do not match the source's MD5 (its ETag): not completed",
                "source",
                "BadDigest",
            )


def _ignore(_: bytes) -> None:
    pass


def layout(size: int, rtt_s: float) -> tuple[int, int]:
    """(part size, parts in flight) for an object of `size` bytes, a round trip of
    `rtt_s` away: at most 10,000 parts, and the same buffer memory near or far."""
    if rtt_s >= FAR_S:
        part_size, in_flight = PART_SIZE // 2, FAR_PARTS
    else:
        part_size, in_flight = PART_SIZE, PARTS_PER_UPLOAD
    return max(part_size, math.ceil(size / MAX_PARTS)), in_flight


def fingerprint(head: Head) -> str:
    """A short digest of what travels with the bytes: a metadata-only change alters it."""
    metadata = {k: v for k, v in head.metadata.items() if k not in OURS}
    text = json.dumps([sorted(head.headers.items()), sorted(metadata.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def current(target: Head, source: Head) -> bool:
    """Whether the target object holds the source's current content and metadata."""
    if target.size != source.size:
        return False
    recorded = target.metadata.get(SOURCE_ETAG)
    if recorded is None:
        # Copied by something else (mc mirror): same single-part ETag means same bytes.
        return target.etag == source.etag
    meta = target.metadata.get(SOURCE_META)
    # Copies from before fingerprints were recorded count by their bytes.
    return recorded == source.etag and (meta is None or meta == fingerprint(source))


class Copier:
    def __init__(self, settings: Settings, *, pool: int = 10) -> None:
        if settings.target is None:
            raise ValueError("the copy engine needs a target")
        self.settings = settings
        self.source = S3(settings.source, settings, "source", pool)
        self.target = S3(settings.target, settings, "target", pool)
        self.locks = KeyLocks()
        self.fresh = Freshness()
        self.buffers = Budget(PART_BUDGET)
        self.small = SmallFirst()
        self.bodies = Budget(BODY_BUDGET)
        unmap_large_buffers()
        self.parts = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="part")

    def copy(self, task: Task, *, replay: bool = False) -> Outcome:
        """Copy (or, for a removal, delete) one task's object for every pair it belongs
        to; raises CopyError. A `replay` (a redelivered or retried task) has likely been
        copied already: it always looks before it writes."""
        if not any(p.source_bucket == task.bucket for p in self.settings.pairs):
            raise CopyError(Kind.PERMANENT, f"bucket {task.bucket!r} is in no configured pair")
        if task.removal and not self.settings.delete:
            return Outcome(False, "deletes are off (MIRROR_DELETE=false)")
        pairs = pairs_for(self.settings, task.bucket, task.key)
        if not pairs:
            return Outcome(False, "excluded (MIRROR_EXCLUDE/MIRROR_PREFIX or pair path)")
        if task.removal:
            outcomes = [self._delete_pair(task, pair) for pair in pairs]
        else:
            outcomes = [self._copy_pair(task, pair, replay) for pair in pairs]
        done = [o for o in outcomes if o.copied or o.deleted]
        if done:
            return Outcome(
                any(o.copied for o in done),
                done[0].reason,
                sum(o.bytes for o in done),
                any(o.deleted for o in done),
            )
        return outcomes[0]

    def _delete_pair(self, task: Task, pair: BucketPair) -> Outcome:
        """Delete the target copy only if the source has no such key *now*; a re-create
        of the key always wins (design 7.7)."""
        bucket, key = pair.target_bucket, pair.target_key(task.key)
        if shares_target(self.settings, pair, key):
            return Outcome(False, "target key is also in another pair's scope: not deleted")
        with self.locks.hold(f"{bucket}/{key}"):
            for _ in range(CHASES):
                if self.source.head(task.bucket, task.key) is not None:
                    return Outcome(False, "source still has the object: nothing deleted")
                target = self.target.head(bucket, key)
                if target is None:
                    return Outcome(False, "target copy already gone")
                try:
                    self.target.delete(bucket, key, target.etag)
                except CopyError as exc:
                    if exc.kind is Kind.CONFLICT:  # a newer copy landed: look again
                        continue
                    raise
                # Where the target ignores If-Match on DELETE, a re-create copied between
                # our HEAD and the DELETE was just removed: the source says so, copy again.
                if self.source.head(task.bucket, task.key) is not None:
                    self._copy_pair(task, pair)
                    return Outcome(False, "source re-created the object while deleting: kept")
                return Outcome(False, "deleted", deleted=True)
        raise CopyError(Kind.TRANSIENT, "target kept changing while deleting", "target")

    def _copy_pair(self, task: Task, pair: BucketPair, replay: bool = False) -> Outcome:
        bucket, key = pair.target_bucket, pair.target_key(task.key)
        with self.locks.hold(f"{bucket}/{key}"):
            # A lister that saw no target object, or a stream of new keys, saves the HEAD:
            # write first, look on 412. A replay looks first (design 7.1: two HEADs).
            guess = task.target_absent and len(self.settings.pairs) == 1
            guess = not replay and (guess or self.fresh.likely())
            for _ in range(CHASES):
                target = None if guess else self.target.head(bucket, key)
                with contextlib.ExitStack() as held:  # a body read whole, until it is written
                    if target is None:
                        # Nothing to compare with: one GET gives the source's identity and
                        # (small) bytes; the write lands only if the key is still absent.
                        source, body = self._get(task, held)
                        when = "absent"
                    else:
                        source, body = self._head_source(task), None
                        if current(target, source):
                            self.fresh.saw(False)
                            return Outcome(False, "target already current")
                        if not self.settings.overwrite:
                            self.fresh.saw(False)
                            return Outcome(
                                False, "target exists and differs (MIRROR_OVERWRITE=false)"
                            )
                        when = target.etag
                    try:
                        self._write(task, source, bucket, key, when, body)
                    except CopyError as exc:
                        if exc.kind is Kind.CONFLICT:  # the source or the target changed
                            guess = False
                            continue
                        raise
                self.fresh.saw(target is None)
                # Replacing an object needs one more look: the source may have gone back to
                # content the target held, which another task then found "current".
                if target is not None and self._head_source(task).etag != source.etag:
                    continue
                # Verified: the target checked every write's checksum, and the source's
                # MD5 (Content-MD5, or the parts' MD5 compared here) where it has one.
                return Outcome(True, "copied", source.size)
        raise CopyError(Kind.TRANSIENT, "source or target kept changing while copying", "source")

    def _get(self, task: Task, held: contextlib.ExitStack) -> tuple[Head, Body | None]:
        """The source's identity and, up to MULTIPART_THRESHOLD, its bytes, in one GET,
        if the body budget has room for them the moment the headers give their size;
        `held` keeps them until the caller's write is done. Without room the answer is
        dropped unread (a server cuts an answer left waiting: MinIO after ~30 s), and
        `_write` waits for room, then reads the bytes pinned by ETag."""

        def reserve(size: int) -> bool:
            if not self.bodies.take(size, wait=False):
                return False
            held.callback(self.bodies.give, size)
            return True

        return self.source.get(task.bucket, task.key, MULTIPART_THRESHOLD, reserve)

    def _head_source(self, task: Task) -> Head:
        head = self.source.head(task.bucket, task.key)
        if head is None:
            raise CopyError(Kind.MOOT, "source object is gone", "source", "NoSuchKey")
        return head

    def _metadata(self, source: Head) -> dict[str, str]:
        metadata = {k: v for k, v in source.metadata.items() if k not in OURS}
        metadata.update(
            {SOURCE_ETAG: source.etag, SOURCE_MTIME: source.mtime, SOURCE_META: fingerprint(source)}
        )
        return metadata

    def _write(
        self, task: Task, source: Head, bucket: str, key: str, when: str, body: Body | None
    ) -> str:
        """Write the object if the target still is as we saw it; returns the target's ETag.
        A `body` given was read by `_get`, which holds its bytes in the body budget;
        otherwise a body up to MULTIPART_THRESHOLD is read here once the budget has room."""
        metadata = self._metadata(source)
        tags = None
        if self.settings.copy_tags and source.tag_count:
            tags = self.source.tags(task.bucket, task.key)
        if source.size <= MULTIPART_THRESHOLD:
            with contextlib.ExitStack() as held:
                if body is None:  # its bytes taken before they are read, until the PUT is done
                    held.enter_context(self.bodies.hold(source.size))
                    body = self._read(task, source, 0, source.size - 1) if source.size else b""
                with self.small.put():
                    return self.target.put(bucket, key, body, source, metadata, when, tags)
        asked = time.monotonic()
        upload = self.target.create_upload(bucket, key, source, metadata, tags, PART_CHECKSUM)
        rtt_s = time.monotonic() - asked  # how far the target is, roughly
        try:
            parts = self._upload_parts(task, source, bucket, key, upload, rtt_s)
            return self.target.complete(bucket, key, upload, parts, when)
        except BaseException:
            self.target.abort(bucket, key, upload)
            raise

    def _read(self, task: Task, source: Head, start: int, end: int) -> Body:
        return self.source.read(task.bucket, task.key, source.etag, start, end)

    def _upload_parts(
        self, task: Task, source: Head, bucket: str, key: str, upload: str, rtt_s: float
    ) -> list[dict[str, object]]:
        """Parts in parallel, as many and as large as `layout` says for a target `rtt_s`
        away (one at a time while small copies run: `SmallFirst`); each holds a buffer
        from the process-wide budget, and a failed part is retried alone."""
        part_size, parts_in_flight = layout(source.size, rtt_s)
        ranges = [
            (number, start, min(start + part_size, source.size) - 1)
            for number, start in enumerate(range(0, source.size, part_size), 1)
        ]
        in_flight = PartsInFlight(parts_in_flight, self.small)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, CopyError) and e.kind in (Kind.TRANSIENT, Kind.DOWN)
            ),
            stop=tenacity.stop_after_attempt(PART_TRIES),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )

        read = Reading(source)

        def one(number: int, start: int, end: int) -> dict[str, object]:
            if end - start + 1 > self.buffers.total:  # too large to hold: stream it
                return self._stream_part(
                    task, source, bucket, key, upload, read, number, start, end
                )
            with contextlib.ExitStack() as held:
                with read.turn(number) as digest:
                    held.enter_context(self.buffers.hold(end - start + 1))
                    body = self._read(task, source, start, end)
                    digest(body)
                crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
                return self.target.upload_part(bucket, key, upload, number, len(body), crc, body)

        futures = []
        try:
            for number, start, end in ranges:
                in_flight.take()
                future = self.parts.submit(retrying, one, number, start, end)
                future.add_done_callback(in_flight.give)
                futures.append(future)
                failed = [f for f in futures if f.done() and f.exception()]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
            parts = [f.result() for f in futures]
            read.check()
            return parts
        except CopyError as exc:
            exc.retried = True  # each part had PART_TRIES: the worker adds no tries of its own
            raise
        finally:
            read.abandon()
            for future in futures:
                future.cancel()

    def _stream_part(
        self,
        task: Task,
        source: Head,
        bucket: str,
        key: str,
        upload: str,
        read: Reading,
        number: int,
        start: int,
        end: int,
    ) -> dict[str, object]:
        """A part larger than the whole buffer budget (objects above ~470 GiB), read twice
        and never held: once for its CRC32 (and the object's MD5), once into the upload,
        which the target refuses unless the bytes match that CRC32 (both reads pinned by
        the ETag)."""
        crc = 0
        with read.turn(number) as digest:
            for piece in self.source.stream(task.bucket, task.key, source.etag, start, end):
                crc = zlib.crc32(piece, crc)
                digest(piece)
        checksum = base64.b64encode(crc.to_bytes(4, "big")).decode()
        pieces = self.source.stream(task.bucket, task.key, source.etag, start, end)
        return self.target.upload_part(
            bucket, key, upload, number, end - start + 1, checksum, pieces
        )

    def probe(self, side: str) -> bool:
        """Whether that endpoint answers at all (used to tell an outage from one bad key)."""
        if side == "source":
            return self.source.probe(self.settings.pairs[0].source_bucket)
        return self.target.probe(self.settings.pairs[0].target_bucket)
