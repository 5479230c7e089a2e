"""The mc JSON stream reader, fed lines captured from the pinned mc against real MinIO."""

import json
from pathlib import Path

import pytest

from replicator.reconcile import mc_output
from replicator.reconcile.mc_output import Copied, Difference, Failure, Totals

DATA = Path(__file__).parents[1] / "data" / "mc"


def records(name: str) -> list:
    with open(DATA / name, encoding="utf-8") as stream:
        return list(mc_output.read(stream))


def test_copied_lines_and_totals():
    got = records("mirror_copied.jsonl")
    copied = [r for r in got if isinstance(r, Copied)]
    totals = [r for r in got if isinstance(r, Totals)]
    assert len(copied) == 13
    assert all(
        r.source.startswith("minio/src1/") and r.target.startswith("aws/cap1/") for r in copied
    )
    assert sum(r.size for r in copied) == totals[0].transferred
    assert got[-1] == totals[0]


def test_nothing_to_copy_is_only_totals():
    assert records("mirror_nothing.jsonl") == [Totals(transferred=0, total=0, duration_s=0.0)]


def test_missing_source_bucket_is_fatal_failure():
    (failure,) = records("mirror_missing_source_bucket.jsonl")
    assert isinstance(failure, Failure) and failure.fatal
    assert failure.message == "Unable to stat source `minio/nosuch`."
    assert failure.cause == "Bucket `nosuch` does not exist."
    assert failure.subject == "minio/nosuch"


@pytest.mark.parametrize(
    ("name", "code", "bucket"),
    [
        ("mirror_wrong_target_secret.jsonl", "SignatureDoesNotMatch", "cap1"),
        ("mirror_unknown_target_access_key.jsonl", "InvalidAccessKeyId", "cap1"),
        ("mirror_missing_target_bucket.jsonl", "NoSuchBucket", "nosuchtarget"),
    ],
)
def test_target_errors_carry_code_and_bucket(name, code, bucket):
    failure = records(name)[0]
    assert isinstance(failure, Failure) and not failure.fatal
    assert (failure.code, failure.bucket) == (code, bucket)


def test_overwrite_refused_is_an_error_record_then_totals():
    got = records("mirror_overwrite_refused.jsonl")
    assert isinstance(got[0], Failure)
    assert "Overwrite not allowed" in got[0].cause
    assert isinstance(got[-1], Totals)


def test_diff_lines():
    (diff,) = records("diff_changed.jsonl")
    assert diff == Difference(
        first="http://127.0.0.1:19001/src1/zz", second="http://127.0.0.1:19002/cap1/zz", diff=2
    )


def test_pretty_printed_objects_spanning_lines():
    """Some mc versions print indented JSON: one object over many lines."""
    lines = (DATA / "mirror_copied.jsonl").read_text(encoding="utf-8").splitlines()
    pretty = "".join(json.dumps(json.loads(line), indent=1) + "\n" for line in lines)
    assert list(mc_output.read(pretty.splitlines(keepends=True))) == records("mirror_copied.jsonl")


def test_text_that_is_not_json_passes_through():
    got = list(
        mc_output.read(
            [
                "mc: <DEBUG> GET /\n",
                '{"status":"success","total":1,',
                '"transferred":1,"duration":1}\n',
            ]
        )
    )
    assert got == ["mc: <DEBUG> GET /", Totals(transferred=1, total=1, duration_s=1e-9)]


def test_truncated_stream_is_returned_as_text():
    assert list(mc_output.read(['{"status":"success","tot'])) == ['{"status":"success","tot']


@pytest.mark.parametrize(
    "line",
    [
        '{"status":"success","source":"minio/a/k","target":"aws/b/k","size":"big"}',
        '{"status":"success","source":7,"target":"aws/b/k","size":1}',
        '{"status":"error","error":"a string where an object belongs"}',
        '{"status":"success","first":"http://h/a/k","second":"http://h/b/k","diff":"two"}',
    ],
)
def test_a_record_of_unexpected_shape_raises_unreadable_record(line):
    stream = mc_output.read([line + "\n", '{"status":"success","total":0,"transferred":0}\n'])
    with pytest.raises(mc_output.UnreadableRecord, match="cannot read") as caught:
        list(stream)
    assert line[:60] in str(caught.value)
