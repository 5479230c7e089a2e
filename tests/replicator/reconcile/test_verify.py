"""The verify after mc mirror: each announced key looked up on a real target, no more."""

from __future__ import annotations

import pytest

from replicator.config import BucketPair
from replicator.reconcile import verify
from replicator.reconcile.ledger import Ledger
from replicator.s3 import S3, Listed
from tests.replicator.test_copier import Requests
from tests.replicator.test_deletes import put, settings_for


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "announced.sqlite")
    yield book
    book.close()


@pytest.fixture
def target(stack, buckets):
    """(settings, the target S3, the pair minio/<src>:aws/<dst>/copies)."""
    src, dst = buckets("source"), buckets("target")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}/copies")
    return settings, S3(settings.target, settings, "target"), settings.pairs[0]


def in_time() -> None:
    """The run's deadline is far away."""


def test_nothing_announced_makes_no_request(stack, target, ledger):
    _, s3, pair = target
    requests = Requests(stack)

    verify.mark_present(ledger, s3, pair, 4, in_time)

    assert requests.spent() == {}


def test_a_few_announced_keys_are_each_headed_once(stack, target, ledger):
    _, s3, pair = target
    put(stack.target.client(), pair.target_bucket, "copies/here", "copies/dir/")
    for key in ("here", "missing", "dir"):  # mc announces the folder marker without its /
        ledger.announce(key, 0)
    requests = Requests(stack)

    verify.mark_present(ledger, s3, pair, 4, in_time)

    assert list(ledger.unverified_keys()) == [("missing", 0)]
    # "dir" is found as "dir/" and "missing" is tried as "missing/" (empty, so maybe a folder).
    assert requests.spent() == {"target HeadObject": 5}


def test_many_announced_keys_are_checked_by_one_listing_of_their_range(
    stack, target, ledger, monkeypatch
):
    _, s3, pair = target
    monkeypatch.setattr(verify, "HEAD_LIMIT", 2)
    client = stack.target.client()
    put(client, pair.target_bucket, "copies/a-before", "copies/b/1", "copies/b/3", "copies/b/4/")
    put(client, pair.target_bucket, "copies/b/5-after", "copies/c-after", "elsewhere")
    for key in ("b/1", "b/2", "b/3", "b/4"):
        ledger.announce(key, 0)
    requests = Requests(stack)

    verify.mark_present(ledger, s3, pair, 4, in_time)

    assert list(ledger.unverified_keys()) == [("b/2", 0)]
    assert requests.spent() == {"target ListObjectsV2": 1}


class Listing:
    """A target whose listing records the prefix asked and how many keys were read."""

    def __init__(self, keys: list[str]) -> None:
        self.keys, self.prefixes, self.read = sorted(keys), [], 0

    def list(self, bucket: str, prefix: str):
        self.prefixes.append(prefix)
        for key in self.keys:
            if key.startswith(prefix):
                self.read += 1
                yield Listed(key, 0, "")


def test_the_listing_reads_only_the_announced_range(ledger, monkeypatch):
    monkeypatch.setattr(verify, "HEAD_LIMIT", 1)
    pair = BucketPair("src", "dst", "", "to")
    target = Listing(["to/a", *(f"to/b/{i}" for i in range(1, 10)), "to/c", "z"])
    for key in ("b/2", "b/3", "b/4"):
        ledger.announce(key, 0)

    verify.mark_present(ledger, target, pair, 4, in_time)  # type: ignore[arg-type]

    assert ledger.unverified() == 0
    assert target.prefixes == ["to/b/"]
    assert target.read == 5  # b/1 to b/4, and b/5: past the last announced key, it stops


def test_the_deadline_stops_the_verify(target, ledger):
    _, s3, pair = target
    ledger.announce("a", 1)

    def late() -> None:
        raise TimeoutError("the run's deadline")

    with pytest.raises(TimeoutError):
        verify.mark_present(ledger, s3, pair, 4, late)
    assert ledger.unverified() == 1


@pytest.mark.parametrize(
    ("first", "last", "prefix"),
    [("a/b/1", "a/b/2", "a/b/"), ("x", "x", "x"), ("a", "b", ""), ("ü/1", "ü/2", "ü/")],
)
def test_common_prefix(first, last, prefix):
    assert verify.common_prefix(first, last) == prefix


def test_source_key_maps_a_target_key_back_through_the_pair_paths():
    pair = BucketPair("src", "dst", "from/here", "to")
    assert verify.source_key(pair, pair.target_key("from/here/x/y")) == "from/here/x/y"
    assert verify.source_key(BucketPair("s", "d"), "k") == "k"
