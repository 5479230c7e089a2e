"""The answers' header blocks, read without the `email` package.

http.client parses every header block with `email.parser` (a MIME parser: ~140 µs of CPU
per answer on the benchmark machine, a third of the transport's CPU for a small copy,
measured with yappi and py-spy; docs/benchmarks.md). Here `Response` is http.client's
own response class with its own `begin` (status line, `100 Continue`, chunked,
Content-Length, keep-alive: the framing decisions stay the library's), reading the block
with `parse_headers` below instead. urllib3 then checks the framing as before (one
Content-Length, never with chunked), and the S3 layer asks for exactly one.

Stricter than http.client, never looser: a field line must be `token ":" value`;
a line that is not (whitespace before the colon, no name, a bare CR or a NUL), and a
block cut off by the connection's end, are errors where http.client logged a warning
and dropped the fields after them. obs-fold is replaced by one space, as RFC 9112 asks
of a client and as urllib3 does. Values are read as ISO-8859-1 and kept as sent (only the
space after the colon removed), as http.client keeps them.
"""

from __future__ import annotations

import http.client
import re
import types
from typing import Any

MAX_LINE = 65536  # http.client's _MAXLINE
MAX_LINES = 100  # http.client's _MAXHEADERS: lines of a block, its end included
# Possessive (*+, ++): a hostile block never makes the matching backtrack.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"  # RFC 9110's field name
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*+([^\r\n\0]*+)\r?\n".encode())
_PLAIN = re.compile(rf"(?:{_TOKEN}:[ \t]*+[^\r\n\0]*+\r\n)*+\r\n")  # plain fields only
_PAIR = re.compile(rf"({_TOKEN}):[ \t]*+([^\r\n\0]*+)\r\n")
_FOLD = re.compile(rb"[ \t]++([^\r\n\0]*+)\r?\n")
_OWS = " \t"


class MalformedHeaders(http.client.HTTPException):
    """A header block that is not well formed HTTP/1.1 (urllib3 raises it as a
    ProtocolError; the S3 layer types it a broken connection)."""


class Fields(http.client.HTTPMessage):
    """http.client's header message over fields parsed here: `email`'s lookups run its
    policy over every value on every call; these values are final text already (no
    surrogates can come from ISO-8859-1), so lookups read them as they are."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__()
        self._headers = fields
        self._first: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        if self._first is None:
            first: dict[str, str] = {}
            for name, value in self._headers:
                first.setdefault(name.lower(), value)
            self._first = first
        return self._first

    def get(self, name: str, failobj: Any = None) -> Any:  # type: ignore[override]
        return self._index().get(name.lower(), failobj)

    def __getitem__(self, name: str) -> Any:
        return self._index().get(name.lower())

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._index()

    def get_all(self, name: str, failobj: Any = None) -> Any:  # type: ignore[override]
        name = name.lower()
        found = [value for key, value in self._headers if key.lower() == name]
        return found or failobj

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(self._headers)

    def values(self) -> list[str]:  # type: ignore[override]
        return [value for _, value in self._headers]

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self._first = None

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._first = None


def parse_headers(fp: Any) -> Fields:
    """The header block at `fp` (after the status line), up to and including its end."""
    fields = _plain(fp)
    return Fields(fields if fields is not None else _by_line(fp))


def _plain(fp: Any) -> list[tuple[str, str]] | None:
    """The common case at half the cost: a block already in the buffer whose every line
    is a plain field (CRLF, no fold) is taken in one piece. Anything else (None) is read
    line by line, which decides what is accepted."""
    data = fp.peek(2)
    end = 2 if data[:2] == b"\r\n" else data.find(b"\r\n\r\n") + 4
    if end == 3 or end > MAX_LINE:  # no end in the buffer, or a long block
        return None
    block = data[:end].decode("latin-1")
    if block.count("\r\n") > MAX_LINES or not _PLAIN.fullmatch(block):
        return None
    fp.read(end)
    return _PAIR.findall(block)


def _by_line(fp: Any) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for _ in range(MAX_LINES):
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line == b"\r\n" or line == b"\n":
            return fields
        if not line:
            raise MalformedHeaders("connection closed inside the answer's header block")
        field = _FIELD.fullmatch(line)
        if field:
            fields.append((field[1].decode("ascii"), field[2].decode("latin-1")))
            continue
        fold = _FOLD.fullmatch(line)
        if not fold or not fields:
            raise MalformedHeaders(f"malformed header line {len(fields) + 1} in the answer")
        name, value = fields[-1]
        fields[-1] = (name, f"{value.rstrip(_OWS)} {fold[1].decode('latin-1')}")
    raise http.client.HTTPException(f"got more than {MAX_LINES} headers")


def _begin() -> types.FunctionType:
    """http.client's `begin`, the same code, reading its header block with
    `parse_headers` above (its only call of a module-level parser)."""
    begin = http.client.HTTPResponse.begin
    assert not begin.__code__.co_freevars, "http.client's begin changed shape"
    names = {**vars(http.client), "parse_headers": parse_headers}
    return types.FunctionType(begin.__code__, names, "begin")


class Response(http.client.HTTPResponse):
    begin = _begin()
