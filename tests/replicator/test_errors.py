"""Error classification (design section 6)."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from replicator.errors import Kind, classify


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("AccessDenied", 403), Kind.PERMANENT),
        (client_error("InvalidAccessKeyId", 403), Kind.PERMANENT),
        (client_error("SignatureDoesNotMatch", 403), Kind.PERMANENT),
        (client_error("NoSuchBucket", 404), Kind.PERMANENT),
        (client_error("403", 403), Kind.PERMANENT),
        (client_error("NoSuchKey", 404), Kind.MOOT),
        (client_error("404", 404), Kind.MOOT),
        (client_error("NotImplemented", 501), Kind.PERMANENT),
        (client_error("SlowDown", 503), Kind.TRANSIENT),
        (client_error("InternalError", 500), Kind.TRANSIENT),
        (client_error("503", 503), Kind.TRANSIENT),
        (EndpointConnectionError(endpoint_url="http://x"), Kind.TRANSIENT),
        (ReadTimeoutError(endpoint_url="http://x"), Kind.TRANSIENT),
        (ValueError("bug"), Kind.PERMANENT),
    ],
)
def test_classification(exc, kind):
    assert classify(exc, "target").kind is kind


def test_connection_failures_mean_the_endpoint_is_down():
    error = classify(EndpointConnectionError(endpoint_url="http://x"), "target")
    assert error.unreachable and error.side == "target"
    assert not classify(client_error("SlowDown", 503), "target").unreachable
