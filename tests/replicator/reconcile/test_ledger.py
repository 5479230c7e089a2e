"""The on-disk ledger of announced copies: exact counts without holding them in memory."""

import pytest

from replicator.reconcile.ledger import Ledger


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "announced.sqlite")
    yield book
    book.close()


def test_copied_is_announced_minus_failed(ledger):
    for i in range(5000):  # more than one write batch
        ledger.announce(f"k/{i}", i)

    assert ledger.fail("k/7") is True
    assert ledger.fail("k/4999") is True  # still in the unwritten batch before fail()

    assert ledger.copied() == (4998, sum(range(5000)) - 7 - 4999)


def test_failing_an_unknown_or_already_failed_key_changes_nothing(ledger):
    ledger.announce("a", 10)
    assert ledger.fail("never-announced") is False
    assert ledger.fail("a") is True
    assert ledger.fail("a") is False
    assert ledger.copied() == (0, 0)


def test_an_announcement_repeated_counts_once(ledger):
    ledger.announce("a", 10)
    ledger.announce("a", 12)
    assert ledger.copied() == (1, 12)


def test_keys_seen_on_the_target_are_verified_the_rest_fail(ledger):
    for key in ("b", "a", "c", "d"):
        ledger.announce(key, 1)
    ledger.fail("d")  # mc reported this one: not to verify

    assert ledger.unverified() == 3
    assert ledger.bounds() == ("a", "c")
    ledger.see(iter(["a", "never-announced", "c"]))

    assert list(ledger.unverified_keys()) == [("b", 1)]
    assert ledger.fail_unverified() == 1
    assert ledger.unverified() == 0 and ledger.bounds() is None
    assert ledger.copied() == (2, 2)


def test_unverified_keys_come_in_byte_order_as_s3_lists_them(ledger):
    keys = ["é", "z", "a/b", "a-b", "a", "Z", "~"]
    for key in keys:
        ledger.announce(key, 0)

    found = [key for key, _ in ledger.unverified_keys()]
    assert found == sorted(keys, key=str.encode)
    assert ledger.bounds() == (found[0], found[-1])
