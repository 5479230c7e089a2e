"""The header block reader (replicator/s3/headers.py): the same fields whichever way a
block is read, and no block, however hostile, makes it slow."""

from __future__ import annotations

import io
import time

import pytest

from replicator.s3.headers import MalformedHeaders, _by_line, parse_headers

BLOCKS = [
    b'Content-Length: 4\r\nETag:  "e"  \r\nVary: a\r\nvary: b\r\nX-Empty:\r\n\r\nbody',
    b"\r\nbody",  # no fields at all
    b"A: 1\r\nB: caf\xc3\xa9\r\n\r\n",  # UTF-8 bytes, read one character per byte
    b"A: 1\nB: 2\n\nbody",  # LF alone ends a line, as http.client reads it
]


@pytest.mark.parametrize("block", BLOCKS)
def test_a_block_reads_the_same_in_one_piece_or_line_by_line(block):
    whole = io.BufferedReader(io.BytesIO(block))
    fields = parse_headers(whole)
    lines = io.BufferedReader(io.BytesIO(block))
    assert fields.items() == _by_line(lines)
    assert whole.read() == lines.read()  # exactly the block was taken, the body left


def test_values_keep_what_was_sent_but_the_space_after_the_colon():
    fields = parse_headers(io.BufferedReader(io.BytesIO(BLOCKS[0])))
    assert fields.items()[1] == ("ETag", '"e"  ')
    assert fields.get("VARY") == "a" and fields.get_all("vary") == ["a", "b"]
    assert fields["x-empty"] == "" and "etag" in fields


def test_a_hostile_block_is_refused_at_once():
    """Fields whose values start with spaces, then a bad line: a backtracking match would
    try every split of every line's spaces (4^10 here: 0.4 s of CPU) before giving up."""
    block = b"".join(b"X%d:   v\r\n" % i for i in range(10)) + b"Bad Line\r\n\r\n"
    started = time.process_time()
    with pytest.raises(MalformedHeaders):
        parse_headers(io.BufferedReader(io.BytesIO(block)))
    assert time.process_time() - started < 0.1
