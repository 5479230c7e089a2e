"""Error typing (design section 6): S3 answers and connection failures to kinds."""

import pytest

from replicator.errors import Kind, answer, broken, down, kind_of


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("AccessDenied", 403, Kind.PERMANENT),
        ("InvalidAccessKeyId", 403, Kind.PERMANENT),
        ("SignatureDoesNotMatch", 403, Kind.PERMANENT),
        ("NoSuchBucket", 404, Kind.PERMANENT),
        ("PermanentRedirect", 301, Kind.PERMANENT),
        ("", 301, Kind.PERMANENT),
        ("NotImplemented", 501, Kind.PERMANENT),
        ("403", 403, Kind.PERMANENT),
        ("InvalidArgument", 400, Kind.PERMANENT),
        ("NoSuchKey", 404, Kind.MOOT),
        ("404", 404, Kind.MOOT),
        ("PreconditionFailed", 412, Kind.CONFLICT),
        ("ConditionalRequestConflict", 409, Kind.CONFLICT),
        ("RequestTimeout", 400, Kind.TRANSIENT),
        ("ExpiredToken", 400, Kind.TRANSIENT),
        ("SlowDown", 503, Kind.TRANSIENT),
        ("InternalError", 500, Kind.TRANSIENT),
        ("", 502, Kind.TRANSIENT),  # a load balancer's page: this key failed, not the side
        ("504", 504, Kind.TRANSIENT),
        ("", 429, Kind.TRANSIENT),
        ("ClientDisconnected", 499, Kind.TRANSIENT),  # MinIO shutting down mid-request
        ("", 499, Kind.TRANSIENT),
        ("BadDigest", 400, Kind.TRANSIENT),
        ("XAmzContentChecksumMismatch", 400, Kind.TRANSIENT),
    ],
)
def test_kind_of_an_answer(code, status, kind):
    assert kind_of(code, status) is kind


def test_a_missing_bucket_is_permanent_and_names_the_side():
    error = answer("source", "NoSuchBucket", 404, "The specified bucket does not exist")
    assert error.kind is Kind.PERMANENT and error.side == "source"
    assert "source bucket does not exist" in error.reason


def test_a_wrong_region_names_the_real_one():
    error = answer("target", "PermanentRedirect", 301, "", region="ap-northeast-2")
    assert error.kind is Kind.PERMANENT
    assert "AWS_REGION=ap-northeast-2" in error.reason


def test_connection_failures():
    assert down("target", "refused").kind is Kind.DOWN
    assert broken("target", "reset").kind is Kind.TRANSIENT


def test_a_missing_key_is_moot_only_on_the_source():
    assert answer("source", "NoSuchKey", 404, "").kind is Kind.MOOT
    # On the target a 404 (If-Match on a key that went away, a proxy's 404) is never
    # "nothing to do": the engine looks again.
    assert answer("target", "NoSuchKey", 404, "").kind is Kind.CONFLICT
    assert answer("target", "404", 404, "").kind is Kind.CONFLICT
