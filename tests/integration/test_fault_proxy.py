"""The fault proxy of the test stack (deploy/local/fault_proxy.py) in front of the target MinIO:
it forwards S3 requests faithfully, and each fault rule does what it says."""

from __future__ import annotations

import http.client
import io
import os

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

pytestmark = pytest.mark.integration

KEY = "dir/ünï cødé+plus%25.bin"


def via(stack, proxy, attempts: int = 1):
    """A target client that talks through the proxy (signing for the proxy's host:port)."""
    return stack.target.client(url=proxy.url, attempts=attempts)


def test_put_get_head_list_and_multipart_pass_through_unchanged(stack, buckets, fault_proxy):
    bucket = buckets("target")
    client, direct = via(stack, fault_proxy), stack.target.client()
    body = os.urandom(1024 * 1024 + 7)

    client.put_object(
        Bucket=bucket, Key=KEY, Body=body, ContentType="image/x-test", Metadata={"camera": "7"}
    )
    got = direct.get_object(Bucket=bucket, Key=KEY)
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/x-test" and got["Metadata"] == {"camera": "7"}

    proxied = client.get_object(Bucket=bucket, Key=KEY)
    assert proxied["Body"].read() == body and proxied["ETag"] == got["ETag"]
    assert client.head_object(Bucket=bucket, Key=KEY)["ContentLength"] == len(body)
    assert client.get_object(Bucket=bucket, Key=KEY, Range="bytes=5-9")["Body"].read() == body[5:10]
    listing = client.list_objects_v2(Bucket=bucket, Prefix="dir/ü")  # a query string
    assert [o["Key"] for o in listing["Contents"]] == [KEY]

    big = os.urandom(12 * 1024 * 1024)
    client.upload_fileobj(
        io.BytesIO(big),
        bucket,
        "big/multipart.bin",
        Config=TransferConfig(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
        ),
    )
    assert direct.get_object(Bucket=bucket, Key="big/multipart.bin")["Body"].read() == big

    assert fault_proxy.count(KEY, "PUT") == 1
    assert fault_proxy.count(KEY, "GET") == 2
    assert fault_proxy.count(KEY, "HEAD") == 1
    assert fault_proxy.count("big/multipart.bin", "PUT") == 3  # three parts
    assert fault_proxy.count("big/multipart.bin", "POST") == 2  # initiate, complete


def test_bare500_answers_an_html_500_without_an_s3_code_for_its_methods_only(
    stack, buckets, fault_proxy
):
    bucket = buckets("target")
    client = via(stack, fault_proxy)
    fault_proxy.add_rule("poison/", "bare500", methods="PUT")

    with pytest.raises(ClientError) as raised:
        client.put_object(Bucket=bucket, Key="poison/a.txt", Body=b"x")
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert error["Error"]["Code"] == "500"  # botocore found no S3 error code in the body
    # Other methods for that key, and other keys, reach MinIO.
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=bucket, Key="poison/a.txt")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    client.put_object(Bucket=bucket, Key="healthy/a.txt", Body=b"fine")

    assert fault_proxy.count("poison/a.txt", "PUT") == 1
    assert fault_proxy.fault_count("poison/a.txt", "bare500") == 1
    assert fault_proxy.count("healthy/a.txt", "PUT") == 1
    assert fault_proxy.fault_count("healthy/a.txt") == 0

    raw = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    raw.request("PUT", f"/{bucket}/poison/b.txt", body=b"x")
    answer = raw.getresponse()
    assert answer.status == 500 and answer.getheader("Content-Type") == "text/html"
    assert b"<Code>" not in answer.read()


def test_reset_closes_the_connection_with_a_tcp_rst(stack, buckets, fault_proxy):
    bucket = buckets("target")
    fault_proxy.add_rule("cut-", "reset")

    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        via(stack, fault_proxy).put_object(Bucket=bucket, Key="cut-me.bin", Body=b"x" * 100)

    raw = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=10)
    raw.request("GET", f"/{bucket}/cut-me.bin")
    with pytest.raises(ConnectionResetError) as raised:
        raw.getresponse()
    # An orderly close (FIN) would be RemoteDisconnected; a reset is not.
    assert not isinstance(raised.value, http.client.RemoteDisconnected)
    assert fault_proxy.fault_count("cut-me.bin", "reset") == 2


def test_slowdown_answers_503_with_the_s3_error_code(stack, buckets, fault_proxy):
    bucket = buckets("target")
    fault_proxy.add_rule("busy", "slowdown", methods="PUT")

    with pytest.raises(ClientError) as raised:
        via(stack, fault_proxy, attempts=3).put_object(Bucket=bucket, Key="very/busy", Body=b"x")
    error = raised.value.response
    assert error["Error"]["Code"] == "SlowDown"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert fault_proxy.count("very/busy", "PUT") == 3  # botocore retried it twice

    fault_proxy.clear()
    via(stack, fault_proxy).put_object(Bucket=bucket, Key="very/busy", Body=b"x")
    assert fault_proxy.count("very/busy") == 1
