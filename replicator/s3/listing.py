"""ListObjectsV2, a page at a time, streamed.

Parsed with ElementTree (a client library's parser spends most of a listing's CPU on
per-key dicts and dates nobody reads). Keys come URL-encoded (`encoding-type=url`) so any
byte survives the XML. Once the caller reads on past a page's first key, the next page is
fetched meanwhile (see `_Ahead`): the server's work overlaps ours, and at most two pages
are held.
"""

from __future__ import annotations

import functools
import queue
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(frozen=True)
class Listed:
    """One key of a listing."""

    key: str
    size: int
    etag: str


def listing(
    fetch: Callable[[str, dict[str, str]], bytes], bucket: str, prefix: str, page: int
) -> Iterator[Listed]:
    """Every key of `bucket` under `prefix`, in key order; `fetch(bucket, query)` gives
    one page's body."""
    query = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(page)}
    ahead = _Ahead(functools.partial(fetch, bucket))
    try:
        body: bytes | None = fetch(bucket, query)
        while body is not None:
            root = ET.fromstring(body)
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            more = bool(token) and root.findtext(f"{_NS}IsTruncated") == "true"
            following = {**query, "continuation-token": token}
            for n, item in enumerate(root.iter(f"{_NS}Contents")):
                if n == 1 and more:  # the caller reads on (a probe takes one key)
                    ahead.ask(following)
                yield Listed(
                    unquote_plus(item.findtext(f"{_NS}Key") or ""),
                    int(item.findtext(f"{_NS}Size") or 0),
                    (item.findtext(f"{_NS}ETag") or "").strip('"'),
                )
            body = ahead.page(following) if more else None
    finally:
        ahead.close()


class _Ahead:
    """A listing's next page, fetched on a daemon thread of its own while the caller
    reads the current one. Being a daemon, a listing given up (an early return, Ctrl-C)
    never waits for the request in flight."""

    def __init__(self, fetch: Callable[[dict[str, str]], bytes]) -> None:
        self.fetch = fetch  # one page's body, given its query
        self.asked: dict[str, str] | None = None
        self.asks: queue.SimpleQueue[dict[str, str] | None] | None = None
        self.pages: queue.SimpleQueue[tuple[bytes, BaseException | None]] = queue.SimpleQueue()

    def ask(self, query: dict[str, str]) -> None:
        if self.asks is None:
            self.asks = queue.SimpleQueue()
            threading.Thread(target=self._fetch, name="list-ahead", daemon=True).start()
        self.asks.put(query)
        self.asked = query

    def page(self, query: dict[str, str]) -> bytes:
        """The page of `query`: the one asked ahead, or (a page of one key) fetched now."""
        if self.asked is not query:
            return self.fetch(query)
        self.asked = None
        body, failure = self.pages.get()
        if failure is not None:
            raise failure
        return body

    def close(self) -> None:
        if self.asks is not None:
            self.asks.put(None)

    def _fetch(self) -> None:
        assert self.asks is not None
        while (query := self.asks.get()) is not None:
            try:
                self.pages.put((self.fetch(query), None))
            except BaseException as exc:  # raised on the caller's thread
                self.pages.put((b"", exc))
