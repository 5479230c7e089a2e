"""The one key matcher, with the behaviour observed from the pinned `mc mirror --exclude`."""

from replicator.config import BucketPair
from replicator.filters import KeyFilter

PAIR = BucketPair("src", "dst")


def accepts(key, prefix="", exclude=(), pair=PAIR):
    return KeyFilter(pair, prefix, tuple(exclude)).accepts(key)


def test_no_filter_accepts_everything():
    assert accepts("a/b c/ü.txt") and accepts("dir/")


def test_patterns_match_the_path_relative_to_the_mirrored_folder():
    # Observed with mc: `.DS_Store` excludes only the top-level one, `*` crosses `/`.
    assert not accepts(".DS_Store", exclude=[".DS_Store"])
    assert accepts("a/.DS_Store", exclude=[".DS_Store"])
    assert not accepts("a/b.tmp", exclude=["*.tmp"])
    assert not accepts("keep/x/y", exclude=["keep/*"])
    assert accepts("keep", exclude=["keep/*"])


def test_prefix_is_a_folder_and_patterns_are_relative_to_it():
    assert accepts("2025/01/22/f", prefix="2025/01/22")
    assert not accepts("2025/01/2x/f", prefix="2025/01/2")
    assert not accepts("2025/01/22", prefix="2025/01/22")
    assert not accepts("p/01/22/f1", prefix="p", exclude=["01/22/*"])
    assert accepts("p/01/22/f1", prefix="p", exclude=["/01/22/*"])


def test_pair_path_and_prefix_combine():
    pair = BucketPair("src", "dst", "in")
    assert accepts("in/2025/x", prefix="2025", pair=pair)
    assert not accepts("2025/x", prefix="2025", pair=pair)


def test_question_mark_is_one_byte_like_mc():
    assert not accepts("a1.log", exclude=["a?.log"])
    assert accepts("a.log", exclude=["a?.log"])
    assert not accepts("é.log", exclude=["??.log"])  # two UTF-8 bytes


def test_the_listing_asks_for_the_folder_exactly():
    assert KeyFilter(PAIR, "o/0").listing == "o/0/"
    assert KeyFilter(PAIR).listing == "" and KeyFilter(PAIR).target_listing == ""
    pair = BucketPair("src", "dst", "in", "out")
    assert KeyFilter(pair, "2025/01").listing == "in/2025/01/"
    assert KeyFilter(pair, "2025/01").target_listing == "out/2025/01/"


def test_excluded_means_matched_by_a_pattern_inside_the_folder():
    keys = KeyFilter(PAIR, "o/0", ("*.tmp",))
    assert keys.excluded("o/0/a.tmp") and not keys.accepts("o/0/a.tmp")
    assert not keys.excluded("o/0-big.tmp")  # outside the folder: not "excluded"
    assert not keys.excluded("o/0/a") and keys.accepts("o/0/a")
