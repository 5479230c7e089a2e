"""The verify after `mc mirror`: is every copy mc announced on the target?

mc prints "success" *before* each copy and does not report every failed one (an upload
refused with AccessDenied prints nothing more, and mc exits 0), so each announced key mc
reported no error for is looked up on the target, and only those: mc has already listed
both sides, and listing them again (`mc diff`) cost a nightly run with nothing to copy
three times bare mc mirror's time.

- nothing announced: no request at all;
- up to HEAD_LIMIT keys: one HEAD each (a listing may have to read far more keys than
  were copied: the target range can hold millions);
- more: one streamed listing of the target over the announced keys' range only (under
  their common prefix, stopping after the last), each key found marked in the ledger.

Only presence is checked, as `mc diff` did: a copy of another size was written from a
source object changed while mc ran, which the next run sees as different.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..config import BucketPair
from .ledger import Ledger

if TYPE_CHECKING:  # the S3 layer loads boto3: only a run with something to verify pays
    from ..s3 import S3

HEAD_LIMIT = 1000  # as many HEADs as one listing page holds keys


def mark_present(
    ledger: Ledger, target: S3, pair: BucketPair, threads: int, check: Callable[[], None]
) -> None:
    """Mark each unverified key of the ledger that the target holds as seen.

    `check()` is called before each request and raises to stop (the run's deadline).
    """
    count = ledger.unverified()
    if count == 0:
        return
    if count <= HEAD_LIMIT:
        ledger.see(_headed(ledger, target, pair, threads, check))
    else:
        ledger.see(_listed(ledger, target, pair, check))


def _headed(
    ledger: Ledger, target: S3, pair: BucketPair, threads: int, check: Callable[[], None]
) -> list[str]:
    """The announced keys (at most HEAD_LIMIT) that a HEAD finds on the target."""

    def present(item: tuple[str, int]) -> str | None:
        key, size = item
        check()
        where = pair.target_key(key)
        if target.head(pair.target_bucket, where) is not None:
            return key
        # mc announces a folder marker ("dir/", 0 bytes) without its slash.
        if size == 0 and target.head(pair.target_bucket, f"{where}/") is not None:
            return key
        return None

    keys = list(ledger.unverified_keys())  # at most HEAD_LIMIT
    with ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
        return [key for key in pool.map(present, keys) if key is not None]


def _listed(
    ledger: Ledger, target: S3, pair: BucketPair, check: Callable[[], None]
) -> Iterator[str]:
    """Source keys of the target's keys in the announced range, as the listing streams."""
    ends = ledger.bounds()
    if ends is None:
        return
    first, last = (pair.target_key(key) for key in ends)
    beyond = f"{last}/"  # mc announces a folder marker "dir/" as "dir"
    check()
    for n, listed in enumerate(target.list(pair.target_bucket, common_prefix(first, last))):
        if n % 1000 == 999:
            check()
        if listed.key > beyond:
            return  # past the last announced key: the rest of the range is not read
        if listed.key >= first:
            yield source_key(pair, listed.key).rstrip("/")


def common_prefix(first: str, last: str) -> str:
    """The characters both keys begin with (an S3 prefix, not a folder)."""
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def source_key(pair: BucketPair, target_key: str) -> str:
    """The source key whose copy is `target_key` (a key under the pair's target path)."""
    rest = target_key[len(pair.target_path) + 1 :] if pair.target_path else target_key
    return f"{pair.source_path}/{rest}" if pair.source_path else rest
