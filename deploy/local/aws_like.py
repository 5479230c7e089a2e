"""moto's S3 server with AWS's checksum rules: the AWS-like target of the local stack.

moto (a test dependency) emulates S3's answers, but on checksums it differs from AWS in
ways that would hide what the product must do, so a WSGI layer in front of it fixes them:

- AWS takes an `x-amz-checksum-<algorithm>` header (or trailer, `x-amz-trailer`) alone as
  a write's checksum; moto only looks at `x-amz-sdk-checksum-algorithm` (and refuses such
  a write to an Object Lock bucket). The layer names the algorithm for moto, as AWS
  infers it.
- AWS verifies Content-MD5 and `x-amz-checksum-*` values against the bytes (BadDigest);
  moto accepts any value. The layer checks MD5, SHA-256, SHA-1 and CRC32 (CRC32C and
  CRC64NVME would need a native library: not checked).
- AWS refuses a PutObject or UploadPart without Content-MD5 or a checksum into a bucket
  with Object Lock default retention with `InvalidRequest`; moto answers another code
  (`MissingUploadObjectWithObjectLockHeaders`) and does not check parts. The layer
  answers as AWS does.

Run by deploy/local/stack.py (MotoServer): `python aws_like.py -H 127.0.0.1 -p PORT`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import zlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha1": lambda data: hashlib.sha1(data).digest(),
    "crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
}


def _error(start_response, code: str, message: str, status: str = "400 Bad Request"):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>AWSLIKE</RequestId><HostId>aws-like</HostId></Error>"
    ).encode()
    start_response(
        status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _locked_by_default(bucket: str) -> bool:
    from moto.s3.models import s3_backends

    for backend in s3_backends[DEFAULT_ACCOUNT_ID].values():
        found = backend.buckets.get(bucket)
        if found is not None:
            return bool(found.object_lock_enabled and found.has_default_lock)
    return False


class AwsChecksums:
    """The WSGI layer: AWS's checksum rules on writes, then moto."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "PUT" or "HTTP_X_AMZ_COPY_SOURCE" in environ:
            return self.app(environ, start_response)
        given = {
            algorithm: environ[f"HTTP_X_AMZ_CHECKSUM_{algorithm.upper()}"]
            for algorithm in ALGORITHMS
            if f"HTTP_X_AMZ_CHECKSUM_{algorithm.upper()}" in environ
        }
        trailer = environ.get("HTTP_X_AMZ_TRAILER", "").strip().lower()
        trailed = trailer.removeprefix("x-amz-checksum-") if trailer else ""
        named = next(iter(given), "") or (trailed if trailed in ALGORITHMS else "")
        if named and "HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM" not in environ:
            environ["HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM"] = named.upper()
        md5 = environ.get("HTTP_CONTENT_MD5")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        bucket, _, key = unquote(environ.get("PATH_INFO", "/")).lstrip("/").partition("/")
        declared = named or md5 or "HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM" in environ
        plain_write = key and not (set(query) - {"partNumber", "uploadId"})
        if plain_write and not declared and _locked_by_default(bucket):
            what = "Put Part" if "uploadId" in query else "Put Object"  # AWS's answer
            return _error(
                start_response,
                "InvalidRequest",
                f"Content-MD5 OR x-amz-checksum- HTTP header is required for {what} "
                "requests with Object Lock parameters",
            )
        streamed = "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "") or environ.get(
            "HTTP_X_AMZ_CONTENT_SHA256", ""
        ).startswith("STREAMING")
        length = environ.get("CONTENT_LENGTH")
        if (given or md5) and not streamed and length:
            body = environ["wsgi.input"].read(int(length))
            environ["wsgi.input"] = io.BytesIO(body)
            if md5 and md5 != base64.b64encode(hashlib.md5(body).digest()).decode():
                return _error(
                    start_response,
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                )
            for algorithm, value in given.items():
                digest = DIGESTS.get(algorithm)
                if digest and value != base64.b64encode(digest(body)).decode():
                    return _error(
                        start_response,
                        "BadDigest",
                        f"The {algorithm.upper()} you specified did not match the "
                        "calculated checksum.",
                    )
        return self.app(environ, start_response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        AwsChecksums(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
