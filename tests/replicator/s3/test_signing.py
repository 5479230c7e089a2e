"""Our SigV4 signer against botocore's, byte for byte: same request, same second, same
Authorization. (The copier, S3 and AWS-target tests then check real servers accept it.)"""

from __future__ import annotations

import calendar
import hashlib
import time

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from replicator.s3 import signing as sigv4

KEYS = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
BODY = b"some bytes \x00\xff"
CASES = [
    ("GET", "127.0.0.1:9000", "/bucket/plain", {}, {}),
    ("HEAD", "127.0.0.1:9000", "/bucket/a b+c%20d?e#f=g&h~", {}, {}),
    ("GET", "127.0.0.1:9000", "/bucket/ünïcødé/파일 😀.txt", {}, {"Range": "bytes=0-9"}),
    ("GET", "s3.eu-west-1.amazonaws.com", "/bucket/dir/", {}, {"If-Match": '"abc"'}),
    ("HEAD", "bucket.s3.amazonaws.com", "/./dot/x/../y\tz", {}, {}),
    (
        "GET",
        "127.0.0.1:9000",
        "/bucket",
        {
            "list-type": "2",
            "prefix": "a/b c+ü/",
            "encoding-type": "url",
            "continuation-token": "1Ab/+=x==",
        },
        {},
    ),
    (
        "PUT",
        "127.0.0.1:9000",
        "/bucket/o/000123",
        {},
        {
            "Content-Type": "text/plain",
            "Content-Length": str(len(BODY)),
            "Content-Disposition": "inline;  filename=voilà ",
            "If-None-Match": "*",
            "x-amz-meta-mirror-source-etag": "abc",
            "x-amz-checksum-sha256": "dGVzdA==",
            "x-amz-tagging": "team=a%20b&n=1",
            "x-amz-storage-class": "STANDARD_IA",
        },
    ),
]


def botocore_signed(method, host, path, query, headers, token):
    from urllib.parse import quote

    encoded = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in query.items())
    url = f"http://{host}{quote(path, safe='/~')}" + (f"?{encoded}" if encoded else "")
    request = AWSRequest(method, url, headers=dict(headers), data=BODY if method == "PUT" else b"")
    S3SigV4Auth(Credentials(*KEYS, token), "s3", "eu-west-1").add_auth(request)
    return request


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE//token+with/slashes="])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[2][:20]}" for c in CASES])
def test_our_signature_is_botocores(case, token):
    method, host, path, query, headers = case
    theirs = botocore_signed(method, host, path, query, headers, token)
    stamp = theirs.headers["X-Amz-Date"]
    when = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    payload = hashlib.sha256(BODY if method == "PUT" else b"").hexdigest()
    from urllib.parse import quote

    canonical = "&".join(
        f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query.items())
    )
    ours = sigv4.sign(
        method, host, path, canonical, headers, payload, (*KEYS, token), "eu-west-1", when
    )
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-date"] == stamp
    assert ours["x-amz-content-sha256"] == theirs.headers["X-Amz-Content-SHA256"] == payload
    assert ours.get("x-amz-security-token") == token
    assert "host" not in {name.lower() for name in ours}  # the HTTP client sends Host
