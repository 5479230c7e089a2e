"""The S3 layer: the clients of one endpoint and exactly the operations the product needs.

The hot path: obstore (Rust `object_store`) makes the conditional PUT and signs every
GET and HEAD, which go out over `rawhttp`'s keep-alive connections (only a raw answer
shows every header, `Expires` included, and it costs a third of http.client's CPU).
boto3 does what obstore cannot: keys obstore's paths cannot hold exactly (`dir/`, `./x`,
control characters), `Expires` on a write, multipart uploads with a conditional
complete, tags, deletes, bucket probes. Listings are signed by botocore and sent raw.
Every failure leaves this module as a typed CopyError.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import re
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode, urlsplit

import boto3
import obstore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)
from obstore import exceptions as oe
from obstore.store import S3Store

from . import errors, rawhttp
from .config import Endpoint, Settings
from .errors import CopyError, Kind

# Headers that travel with the object (design 7.4), by their HTTP names.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Cache-Control",
    "Content-Language",
    "Expires",
)
_BOTO_NAMES = {name: name.replace("-", "") for name in KEPT_HEADERS}
_OBSTORE_HEADERS = frozenset(KEPT_HEADERS) - {"Expires"}
_KEPT_LOWER = {name.lower(): name for name in KEPT_HEADERS}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
_SIGNED_FOR = dt.timedelta(minutes=15)
_CREDENTIALS_FOR = dt.timedelta(minutes=5)
_BUCKET_SEEN_S = 60.0
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_REGION = re.compile(r"<Region>([^<]+)</Region>")
# A control character, or an empty, "." or ".." path segment.
_HARD_KEY = re.compile(r"[\x00-\x1f\x7f]|(?:^|/)\.{0,2}(?:/|$)")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_CONNECT_FAILURES = ("tcp connect error", "dns error", "kind: Connect,", "ConnectTimeout")
_CAUSE = re.compile(r'(?:kind: \w+, |ConnectError\(\s*|message: )"([^"]+)"')


@dataclass(frozen=True)
class Head:
    """What an endpoint says an object is: identity, kept headers and user metadata."""

    etag: str
    size: int
    mtime: str
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tag_count: int = 0


@dataclass(frozen=True)
class Listed:
    """One key of a listing."""

    key: str
    size: int
    etag: str


@functools.lru_cache(maxsize=1024)  # asked three times per copy
def compiled_key(key: str) -> bool:
    """Whether obstore's path type holds this key byte for byte (else boto3 carries it)."""
    return _HARD_KEY.search(key) is None


class S3:
    """One endpoint (the source MinIO or the target S3), on the side it plays."""

    def __init__(self, endpoint: Endpoint, settings: Settings, side: str, pool: int = 10) -> None:
        self.endpoint = endpoint
        self.side = side
        self.region = settings.aws_region or "us-east-1"
        self.aws = urlsplit(endpoint.url).hostname is not None and (
            urlsplit(endpoint.url).hostname or ""
        ).endswith("amazonaws.com")
        self.verify: bool | str = settings.ca_bundle or settings.tls_verify
        self.settings = settings
        self.session = _session(endpoint)
        self.boto = self._boto(pool)
        self._stores: dict[str, S3Store] = {}
        self._buckets_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self.http = rawhttp.Client(_tls(self.verify), CONNECT_TIMEOUT_S, READ_TIMEOUT_S)

    # ---- clients ------------------------------------------------------------------

    def _boto(self, pool: int) -> Any:
        return self.session.client(
            "s3",
            endpoint_url=self.endpoint.url,
            region_name=self.region,
            verify=self.verify,
            config=Config(
                s3={
                    "addressing_style": "auto" if self.aws else "path",
                    # Writes carry x-amz-checksum-sha256, which the target checks: a second
                    # SHA-256 of every body for the signature (botocore's default over
                    # plain http) only costs CPU.
                    "payload_signing_enabled": False,
                },
                signature_version="s3v4",
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"max_attempts": 1, "mode": "standard"},  # the policy retries
                max_pool_connections=pool,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def store(self, bucket: str) -> S3Store:
        with self._lock:
            if bucket not in self._stores:
                self._stores[bucket] = self._new_store(bucket)
            return self._stores[bucket]

    def _new_store(self, bucket: str) -> S3Store:
        options: dict[str, Any] = {
            "allow_http": True,
            "connect_timeout": dt.timedelta(seconds=CONNECT_TIMEOUT_S),
            "timeout": dt.timedelta(seconds=READ_TIMEOUT_S),
            "pool_max_idle_per_host": "64",
        }
        if self.verify is False:
            options["allow_invalid_certificates"] = True
        elif isinstance(self.verify, str):
            options["root_certificate"] = self.verify
        config: dict[str, Any] = {"region": self.region}
        if self.side == "target":
            # Every write carries a checksum of the bytes read: the target verifies what
            # arrived, and Object Lock buckets require one.
            config["checksum_algorithm"] = "sha256"
            if self.settings.sse:
                config["server_side_encryption"] = self.settings.sse
            if self.settings.sse_kms_key_id:
                config["sse_kms_key_id"] = self.settings.sse_kms_key_id
        if self.aws:
            config["virtual_hosted_style_request"] = "." not in bucket
        else:
            config["endpoint"] = self.endpoint.url
        return S3Store(
            bucket,
            config=config,
            credential_provider=self._credentials,
            client_options=options,
            retry_config={"max_retries": 0, "retry_timeout": dt.timedelta(seconds=30)},
        )

    def _credentials(self) -> dict[str, Any]:
        """obstore's credentials from the boto3 session (static keys or the AWS chain)."""
        found = self.session.get_credentials()
        if found is None:
            raise CopyError(
                Kind.PERMANENT,
                f"{self.side}: no AWS credentials found (set AWS_ACCESS_KEY and AWS_SECRET_KEY, "
                "or give the standard AWS chain a profile, web identity or instance role)",
                self.side,
            )
        frozen = found.get_frozen_credentials()
        refreshing = getattr(found, "refresh_needed", None) is not None
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            # Refreshable (role) credentials are asked again often; botocore refreshes them.
            "expires_at": dt.datetime.now(dt.UTC) + _CREDENTIALS_FOR if refreshing else None,
        }

    # ---- reads --------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> Head | None:
        """The object's identity, headers and metadata; None when there is no such key."""
        if not compiled_key(key):
            return self._boto_head(bucket, key)
        status, headers, _ = self._raw("HEAD", bucket, key)
        if status != 404:
            return _head_from_http(headers)
        if self.side == "source":  # the source's bucket must exist: say so if it doesn't
            self._bucket_exists(bucket)
        return None

    def get(self, bucket: str, key: str, limit: int) -> tuple[Head, bytes | None]:
        """Identity and bytes in one GET; no bytes (the stream closed) above `limit`."""
        if not compiled_key(key):
            return self._boto_get(bucket, key, limit)
        status, headers, body = self._raw("GET", bucket, key, limit=limit)
        if status == 404:
            raise CopyError(Kind.MOOT, "source object is gone (404)", self.side, "NoSuchKey")
        return _head_from_http(headers), body

    def read(self, bucket: str, key: str, etag: str, start: int, end: int) -> bytes:
        """Bytes start..end (inclusive) of the version with this ETag; CONFLICT if it changed."""
        if compiled_key(key):
            url = urlsplit(obstore.sign(self.store(bucket), "GET", key, _SIGNED_FOR))
            ranged = {"Range": f"bytes={start}-{end}", "If-Match": f'"{etag}"'}
            status, _, body = self._send("GET", url, ranged, limit=end - start + 1)
            if status == 404:
                raise CopyError(Kind.MOOT, "source object is gone (404)", self.side, "NoSuchKey")
            if body is None or len(body) != end - start + 1:
                raise errors.broken(self.side, f"short read of bytes {start}-{end}")
            return body
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": etag}
        if start or end >= 0:
            args["Range"] = f"bytes={start}-{end}"
        return self._boto_call("get_object", **args)["Body"].read()

    # ---- writes -------------------------------------------------------------------

    def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        head: Head,
        metadata: dict[str, str],
        when: str,
        tags: dict[str, str] | None = None,
    ) -> str:
        """A single PUT if the target is as we saw it: `when` is "absent" or the ETag it
        must still have. Returns the new ETag; CONFLICT when the condition failed."""
        if not compiled_key(key) or "Expires" in head.headers:
            condition = {"IfNoneMatch": "*"} if when == "absent" else {"IfMatch": when}
            args = {**self.write_args(head, metadata, tags), **condition}
            args["ChecksumAlgorithm"] = "SHA256"
            return self._boto_call("put_object", Bucket=bucket, Key=key, Body=body, **args)[
                "ETag"
            ].strip('"')
        attributes = {k: v for k, v in head.headers.items() if k in _OBSTORE_HEADERS}
        attributes.update(metadata)
        if self.settings.storage_class:
            attributes["Storage-Class"] = self.settings.storage_class
        mode: Any = "create" if when == "absent" else {"e_tag": f'"{when}"'}
        try:
            result = obstore.put(
                self.store(bucket), key, body, attributes=attributes, mode=mode, tags=tags or None
            )
        except Exception as exc:
            raise self._obstore_error(exc, bucket) from exc
        return (result["e_tag"] or "").strip('"')

    def write_args(
        self, head: Head, metadata: dict[str, str], tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """boto3 arguments of a write: kept headers, user metadata, tags, storage class and
        encryption (the checksum algorithm is the caller's: it differs per operation)."""
        args: dict[str, Any] = {_BOTO_NAMES[k]: v for k, v in head.headers.items()}
        if "Expires" in args:
            with contextlib.suppress(TypeError, ValueError):
                args["Expires"] = parsedate_to_datetime(args["Expires"])
        if tags:
            args["Tagging"] = urlencode(tags, quote_via=quote)
        if self.settings.storage_class:
            args["StorageClass"] = self.settings.storage_class
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return {**args, "Metadata": metadata}

    def delete(self, bucket: str, key: str, etag: str) -> None:
        """Delete the object if it still has this ETag (where the target checks If-Match on
        DELETE: AWS does, MinIO ignores it); CONFLICT when it changed."""
        self._boto_call("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{etag}"')

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """The object's tags (asked only when its GET/HEAD counted some)."""
        got = self._boto_call("get_object_tagging", Bucket=bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in got.get("TagSet", [])}

    def multipart(self, method: str, **args: Any) -> Any:
        """create_multipart_upload / upload_part / complete_multipart_upload (conditional)."""
        return self._boto_call(method, **args)

    def abort(self, bucket: str, key: str, upload: str) -> None:
        # Best effort; a lifecycle rule cleans up what is left.
        with contextlib.suppress(Exception):
            self.boto.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)

    # ---- probes and listings ------------------------------------------------------

    def _region_of(self, bucket: str) -> str:
        """The bucket's real region, from S3's `x-amz-bucket-region` (a HEAD bucket)."""
        try:
            answer = self.boto.head_bucket(Bucket=bucket)
        except ClientError as exc:
            answer = exc.response
        except Exception:
            return ""
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
        return headers.get("x-amz-bucket-region", "")

    def _bucket_exists(self, bucket: str) -> None:
        """A HEAD's 404 has no body to say whether the key or the bucket is missing: ask
        the bucket (a yes is remembered for a minute, so removals don't pay each time)."""
        if time.monotonic() - self._buckets_seen.get(bucket, -_BUCKET_SEEN_S) < _BUCKET_SEEN_S:
            return
        try:
            self.boto.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _boto_status(exc) == 404:
                raise errors.answer(self.side, "NoSuchBucket", 404, bucket) from exc
            raise self.boto_error(exc) from exc
        except Exception as exc:
            raise self.boto_error(exc) from exc
        self._buckets_seen[bucket] = time.monotonic()

    def probe(self, bucket: str) -> bool:
        """Whether the endpoint answers at all (an error answer counts: it is up)."""
        try:
            self.boto.head_bucket(Bucket=bucket)
        except ClientError:
            return True
        except Exception:
            return False
        return True

    def list(self, bucket: str, prefix: str) -> Iterator[Listed]:
        """Every key under the prefix, in key order, a page at a time (streamed).

        ListObjectsV2 signed by botocore but fetched and parsed here: botocore's parser
        spends most of a listing's CPU on per-key dicts and dates nobody reads. Keys come
        URL-encoded (`encoding-type=url`) so any byte survives the XML."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._signed_get(bucket, query))
            for item in root.iter(f"{_NS}Contents"):
                yield Listed(
                    unquote_plus(item.findtext(f"{_NS}Key") or ""),
                    int(item.findtext(f"{_NS}Size") or 0),
                    (item.findtext(f"{_NS}ETag") or "").strip('"'),
                )
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return

    def _signed_get(self, bucket: str, query: dict[str, str]) -> bytes:
        url = urlsplit(self.endpoint.url)
        if self.aws and "." not in bucket:
            base = f"{url.scheme}://{bucket}.{url.netloc}/"
        else:
            base = f"{url.scheme}://{url.netloc}/{quote(bucket)}"
        request = AWSRequest("GET", f"{base}?{urlencode(query, quote_via=quote)}")
        credentials = self.session.get_credentials().get_frozen_credentials()
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        status, _, body = self._send("GET", urlsplit(request.url), dict(request.headers.items()))
        if status == 404:
            raise errors.answer(self.side, "NoSuchBucket", 404, bucket)
        return body or b""

    # ---- boto3 paths --------------------------------------------------------------

    def _boto_call(self, method: str, **args: Any) -> Any:
        try:
            return getattr(self.boto, method)(**args)
        except Exception as exc:
            raise self.boto_error(exc) from exc

    def _boto_head(self, bucket: str, key: str) -> Head | None:
        try:
            return _head_from_boto(self.boto.head_object(Bucket=bucket, Key=key))
        except ClientError as exc:
            if _boto_status(exc) == 404:
                if self.side == "source":
                    self._bucket_exists(bucket)
                return None
            raise self.boto_error(exc) from exc
        except Exception as exc:
            raise self.boto_error(exc) from exc

    def _boto_get(self, bucket: str, key: str, limit: int) -> tuple[Head, bytes | None]:
        response = self._boto_call("get_object", Bucket=bucket, Key=key)
        head = _head_from_boto(response)
        if head.size > limit:
            response["Body"].close()
            return head, None
        try:
            return head, response["Body"].read()
        except Exception as exc:
            raise self.boto_error(exc) from exc

    def boto_error(self, exc: BaseException) -> CopyError:
        if isinstance(exc, CopyError):
            return exc
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region", "")
            return errors.answer(
                self.side,
                str(error.get("Code") or ""),
                _boto_status(exc),
                str(error.get("Message") or ""),
                str(error.get("Region") or region),
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return errors.down(self.side, str(exc))
        if isinstance(exc, BotoCoreError | OSError):
            return errors.broken(self.side, str(exc))
        return CopyError(Kind.PERMANENT, f"{self.side}: unexpected {exc!r}", self.side)

    # ---- obstore and raw HTTP paths -----------------------------------------------

    def _obstore_error(self, exc: BaseException, bucket: str) -> CopyError:
        text = str(exc)
        if isinstance(exc, oe.AlreadyExistsError | oe.PreconditionError):
            return CopyError(Kind.CONFLICT, f"{self.side} precondition failed", self.side)
        if "redirect" in text.lower():  # a 301 (wrong region): obstore hides the header
            return errors.answer(self.side, "PermanentRedirect", 301, "", self._region_of(bucket))
        status = int(m.group(1)) if (m := _STATUS.search(text)) else 0
        if status:
            message = m.group(1) if (m := _MESSAGE.search(text)) else ""
            region = m.group(1) if (m := _REGION.search(text)) else ""
            return errors.answer(self.side, _code(exc), status, message, region)
        # obstore's message ends in its cause chain: a failed connect (refused, DNS, connect
        # timeout) may mean the endpoint is down; anything after it is this request's.
        detail = _CAUSE.findall(text)
        cause = detail[-1] if detail else text.split("\n", 1)[0][:300]
        if any(sign in text for sign in _CONNECT_FAILURES):
            return errors.down(self.side, cause)
        return errors.broken(self.side, cause)

    def _raw(
        self, method: str, bucket: str, key: str, limit: int = 0
    ) -> tuple[int, dict[str, str], bytes | None]:
        """A request presigned by obstore; S3 errors raise, a missing key returns 404."""
        url = urlsplit(obstore.sign(self.store(bucket), method, key, _SIGNED_FOR))
        return self._send(method, url, {}, limit)

    def _send(
        self, method: str, url: Any, headers: dict[str, str], limit: int = -1
    ) -> tuple[int, dict[str, str], bytes | None]:
        """One request on this thread's keep-alive connection to the URL's host. A body
        above `limit` (when >= 0) is not read: the caller reads it in parts."""
        try:
            answer = self.http.request(method, url, headers, limit)
        except rawhttp.Unreachable as exc:
            raise errors.down(self.side, str(exc)) from exc
        except OSError as exc:
            raise errors.broken(self.side, repr(exc)) from exc
        body = answer.body
        if answer.status == 404 and b"NoSuchBucket" not in (body or b""):
            return 404, answer.headers, None
        if answer.status >= 300:
            text = (body or b"").decode(errors="replace")
            code = m.group(1) if (m := _CODE.search(text)) else str(answer.status)
            message = m.group(1) if (m := _MESSAGE.search(text)) else answer.reason
            region = answer.headers.get("x-amz-bucket-region", "")
            raise errors.answer(self.side, code, answer.status, message, region)
        return answer.status, answer.headers, body


def _session(endpoint: Endpoint) -> boto3.session.Session:
    """Static keys (and a session token), or boto3's standard chain when none are given."""
    if endpoint.static:
        return boto3.session.Session(
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
            aws_session_token=endpoint.session_token or None,
        )
    return boto3.session.Session()


def _code(exc: BaseException) -> str:
    return m.group(1) if (m := _CODE.search(str(exc))) else ""


def _boto_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _head_from_http(headers: dict[str, str]) -> Head:
    """A Head from a raw answer's headers (names in lower case)."""
    kept = {name: _text(headers[low]) for low, name in _KEPT_LOWER.items() if headers.get(low)}
    metadata = {
        name[11:]: _text(value) for name, value in headers.items() if name[:11] == "x-amz-meta-"
    }
    tag_count = headers.get("x-amz-tagging-count") or "0"
    return Head(
        etag=headers.get("etag", "").strip('"'),
        size=int(headers.get("content-length") or 0),
        mtime=_iso_time(headers["last-modified"]),
        headers=kept,
        metadata=metadata,
        tag_count=int(tag_count) if tag_count.isdigit() else 0,
    )


def _text(value: str) -> str:
    """A header value as text. HTTP clients read values as ISO-8859-1 (one character per
    byte); MinIO and S3 keep a non-ASCII Content-Disposition or Content-Language as its
    raw UTF-8 bytes, and both write paths send text as UTF-8: decode it, or a copy would
    carry it double-encoded. Bytes that are not UTF-8 stay as read."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode()
    except UnicodeError:
        return value


@functools.lru_cache(maxsize=256)  # objects written in the same second share it
def _iso_time(http_date: str) -> str:
    return parsedate_to_datetime(http_date).isoformat()


def _tls(verify: bool | str) -> ssl.SSLContext:
    """The TLS context of raw requests: the CA bundle given, or none checked at all."""
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _head_from_boto(response: dict[str, Any]) -> Head:
    kept = {}
    for name, boto_name in _BOTO_NAMES.items():
        value = response.get(boto_name)
        if value:
            kept[name] = _text(value) if isinstance(value, str) else _http_date(value)
    if "Expires" not in kept and response.get("ExpiresString"):
        kept["Expires"] = response["ExpiresString"]
    return Head(
        etag=response["ETag"].strip('"'),
        size=response["ContentLength"],
        mtime=response["LastModified"].isoformat(),
        headers=kept,
        metadata={k.lower(): _text(v) for k, v in (response.get("Metadata") or {}).items()},
        tag_count=int(response.get("TagCount") or 0),
    )


def _http_date(value: dt.datetime) -> str:
    from email.utils import format_datetime

    return format_datetime(value.astimezone(dt.UTC), usegmt=True)


def client(endpoint: Endpoint, settings: Settings, pool: int = 10, side: str = "target") -> Any:
    """A boto3 client for the operator tools (check, backfill listings)."""
    return S3(endpoint, settings, side, pool).boto
