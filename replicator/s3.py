"""The S3 layer: the clients of one endpoint and exactly the operations the product needs.

Single requests (HEAD, GET, ranged reads, the conditional PUT, listings) are signed by
`sigv4` and sent over `rawhttp`'s keep-alive connections: each costs a fraction of a
client library's CPU, and the raw answer shows every header (`Expires` included) and
the real status, so errors are typed from S3's own code. boto3 does the rest: multipart
uploads (conditional complete), tags, deletes, bucket probes. Every failure leaves this
module as a typed CopyError.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import queue
import re
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, quote, unquote_plus, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)

from . import errors, rawhttp, sigv4
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
_KEPT_LOWER = {name.lower(): name for name in KEPT_HEADERS}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
_BUCKET_SEEN_S = 60.0
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


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


class S3:
    """One endpoint (the source MinIO or the target S3), on the side it plays."""

    def __init__(self, endpoint: Endpoint, settings: Settings, side: str, pool: int = 10) -> None:
        self.endpoint = endpoint
        self.side = side
        self.region = settings.aws_region or "us-east-1"
        self.url = urlsplit(endpoint.url)
        self.aws = (self.url.hostname or "").endswith("amazonaws.com")
        self.verify: bool | str = settings.ca_bundle or settings.tls_verify
        self.settings = settings
        self.session = _session(endpoint)
        # Loaded once here, not by the first requests of 16 copy threads at once (with a
        # role, each would ask STS or the instance metadata: botocore does not lock it).
        self.session.get_credentials()
        self._pool = pool
        self._boto: Any = None
        self._boto_lock = threading.Lock()
        self._buckets_seen: dict[str, float] = {}
        self.http = rawhttp.Client(_tls(self.verify), CONNECT_TIMEOUT_S, READ_TIMEOUT_S)

    # ---- clients ------------------------------------------------------------------

    @property
    def boto(self) -> Any:
        """boto3's client, made on first use: a listing never needs it (~0.1 s)."""
        with self._boto_lock:  # a boto3 session is not thread-safe
            if self._boto is None:
                self._boto = self._client()
            return self._boto

    def _client(self) -> Any:
        return self.session.client(
            "s3",
            endpoint_url=self.endpoint.url,
            region_name=self.region,
            verify=self.verify,
            config=Config(
                s3={
                    "addressing_style": "auto" if self.aws else "path",
                    # Writes carry an x-amz-checksum-* the target checks: hashing every
                    # body again for the signature (botocore's default over plain http)
                    # only costs CPU.
                    "payload_signing_enabled": False,
                },
                signature_version="s3v4",
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"max_attempts": 1, "mode": "standard"},  # the policy retries
                max_pool_connections=self._pool,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _keys(self) -> tuple[str, str, str | None]:
        """Access key, secret and token from the boto3 session (static keys or the AWS
        chain; botocore refreshes a role's keys before they expire)."""
        found = self.session.get_credentials()
        if found is None:
            raise CopyError(
                Kind.PERMANENT,
                f"{self.side}: no AWS credentials found (set AWS_ACCESS_KEY and AWS_SECRET_KEY, "
                "or give the standard AWS chain a profile, web identity or instance role)",
                self.side,
            )
        frozen = found.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    # ---- reads --------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> Head | None:
        """The object's identity, headers and metadata; None when there is no such key."""
        status, headers, _ = self._signed("HEAD", bucket, key)
        if status != 404:
            return _head_from_http(headers)
        if self.side == "source":  # the source's bucket must exist: say so if it doesn't
            self._bucket_exists(bucket)
        return None

    def get(self, bucket: str, key: str, limit: int) -> tuple[Head, bytes | None]:
        """Identity and bytes in one GET; no bytes (the stream closed) above `limit`."""
        status, headers, body = self._signed("GET", bucket, key, limit=limit)
        if status == 404:
            raise self._gone()
        return _head_from_http(headers), body

    def read(self, bucket: str, key: str, etag: str, start: int, end: int) -> bytes:
        """Bytes start..end (inclusive) of the version with this ETag; CONFLICT if it changed."""
        ranged = _ranged(etag, start, end)
        status, _, body = self._signed("GET", bucket, key, headers=ranged, limit=end - start + 1)
        if status == 404:
            raise self._gone()
        if body is None or len(body) != end - start + 1:
            raise errors.broken(self.side, f"short read of bytes {start}-{end}")
        return body

    def stream(self, bucket: str, key: str, etag: str, start: int, end: int) -> Iterator[bytes]:
        """Like `read`, piece by piece as the caller iterates: for a part too large to
        hold. Its failures are this side's typed errors, wherever the pieces go."""
        size = end - start + 1
        ranged = _ranged(etag, start, end)
        url, signed = self._sign("GET", bucket, key, None, ranged)
        try:
            answer, pieces = self.http.pieces(url, signed, size)
            if answer.status == 404 and b"NoSuchBucket" not in (answer.body or b""):
                raise self._gone()
            self._check(answer)
            if answer.body is not None:  # not the range asked for (a 200 of the whole)
                raise errors.broken(self.side, f"short read of bytes {start}-{end}")
            yield from pieces
        except rawhttp.Unreachable as exc:
            raise errors.down(self.side, str(exc)) from exc
        except OSError as exc:
            raise errors.broken(self.side, repr(exc)) from exc

    def _gone(self) -> CopyError:
        return CopyError(Kind.MOOT, "source object is gone (404)", self.side, "NoSuchKey")

    # ---- writes -------------------------------------------------------------------

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload: str,
        number: int,
        size: int,
        crc32: str,
        pieces: Iterable[bytes],
    ) -> dict[str, Any]:
        """One part of `size` bytes streamed from `pieces`, with the CRC32 (base64) they
        must have: the target refuses the part otherwise."""
        headers = {"Content-Length": str(size), "x-amz-checksum-crc32": crc32}
        query = {"partNumber": str(number), "uploadId": upload}
        _, answer, _ = self._signed(
            "PUT", bucket, key, query, headers, pieces, payload=sigv4.UNSIGNED
        )
        return {"PartNumber": number, "ETag": answer.get("etag", ""), "ChecksumCRC32": crc32}

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
        digest = hashlib.sha256(body)
        headers = {**head.headers, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        headers["Content-Length"] = str(len(body))
        headers["x-amz-checksum-sha256"] = base64.b64encode(digest.digest()).decode()
        headers.update({"If-None-Match": "*"} if when == "absent" else {"If-Match": f'"{when}"'})
        if tags:
            headers["x-amz-tagging"] = urlencode(tags, quote_via=quote)
        for name, value in (
            ("x-amz-storage-class", self.settings.storage_class),
            ("x-amz-server-side-encryption", self.settings.sse),
            ("x-amz-server-side-encryption-aws-kms-key-id", self.settings.sse_kms_key_id),
        ):
            if value:
                headers[name] = value
        status, answer, _ = self._signed(
            "PUT", bucket, key, headers=headers, body=body, payload=digest.hexdigest()
        )
        if status == 404:  # no NoSuchBucket in the body: whatever it is, not a write
            raise errors.answer(self.side, "", 404, "PUT answered 404")
        return answer.get("etag", "").strip('"')

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

    def list(self, bucket: str, prefix: str, page: int = 1000) -> Iterator[Listed]:
        """Every key under the prefix, in key order, a page at a time (streamed).

        ListObjectsV2 signed by `sigv4`, parsed with ElementTree (a client library's
        parser spends most of a listing's CPU on per-key dicts and dates nobody reads).
        Keys come URL-encoded (`encoding-type=url`) so any byte survives the XML. Once the
        caller reads on past a page's first key, the next page is fetched meanwhile (see
        `_Ahead`): the server's work overlaps ours, and at most two pages are held."""
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(page)}
        ahead = _Ahead(functools.partial(self._signed_get, bucket))
        try:
            body: bytes | None = self._signed_get(bucket, query)
            while body is not None:
                root = ET.fromstring(body)
                token = root.findtext(f"{_NS}NextContinuationToken") or ""
                more = bool(token) and root.findtext(f"{_NS}IsTruncated") == "true"
                following = {**query, "continuation-token": token}
                for n, item in enumerate(root.iter(f"{_NS}Contents")):
                    if n == 1 and more:  # the caller reads on (a probe takes one key)
                        ahead.ask(following)
                    yield Listed(
                        unquote_plus(item.findtext(f"{_NS}Key") or ""),
                        int(item.findtext(f"{_NS}Size") or 0),
                        (item.findtext(f"{_NS}ETag") or "").strip('"'),
                    )
                body = ahead.page(following) if more else None
        finally:
            ahead.close()

    def _signed_get(self, bucket: str, query: dict[str, str]) -> bytes:
        status, _, body = self._signed("GET", bucket, "", query)
        if status == 404:
            raise errors.answer(self.side, "NoSuchBucket", 404, bucket)
        return body or b""

    def _signed(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | Iterable[bytes] = b"",
        payload: str = sigv4.EMPTY_SHA256,
        limit: int = -1,
    ) -> tuple[int, dict[str, str], bytes | None]:
        """A request signed here (SigV4 over every header) and sent raw."""
        url, signed = self._sign(method, bucket, key, query, headers or {}, payload)
        return self._send(method, url, signed, limit, body)

    def _sign(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str] | None,
        headers: dict[str, str],
        payload: str = sigv4.EMPTY_SHA256,
    ) -> tuple[SplitResult, dict[str, str]]:
        url = self.url
        if self.aws and "." not in bucket:
            host, path = f"{bucket}.{url.netloc}", f"/{key}"
        else:
            host, path = url.netloc, f"/{bucket}/{key}" if key else f"/{bucket}"
        canonical = "&".join(
            f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted((query or {}).items())
        )
        signed = sigv4.sign(
            method, host, path, canonical, headers, payload, self._keys(), self.region
        )
        return SplitResult(url.scheme, host, quote(path, safe="/~"), canonical, ""), signed

    # ---- boto3 paths --------------------------------------------------------------

    def _boto_call(self, method: str, **args: Any) -> Any:
        try:
            return getattr(self.boto, method)(**args)
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

    # ---- raw HTTP ------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: Any,
        headers: dict[str, str],
        limit: int = -1,
        body: bytes | Iterable[bytes] = b"",
    ) -> tuple[int, dict[str, str], bytes | None]:
        """One request on this thread's keep-alive connection to the URL's host. A body
        above `limit` (when >= 0) is not read: the caller reads it in parts."""
        try:
            answer = self.http.request(method, url, headers, limit, body)
        except rawhttp.Unreachable as exc:
            raise errors.down(self.side, str(exc)) from exc
        except OSError as exc:
            raise errors.broken(self.side, repr(exc)) from exc
        if answer.status == 404 and b"NoSuchBucket" not in (answer.body or b""):
            return 404, answer.headers, None
        self._check(answer)
        return answer.status, answer.headers, answer.body

    def _check(self, answer: rawhttp.Answer) -> None:
        """Raise the typed error of an S3 error answer (status 300 and up)."""
        if answer.status < 300:
            return
        text = (answer.body or b"").decode(errors="replace")
        code = m.group(1) if (m := _CODE.search(text)) else str(answer.status)
        message = m.group(1) if (m := _MESSAGE.search(text)) else answer.reason
        region = answer.headers.get("x-amz-bucket-region", "")
        raise errors.answer(self.side, code, answer.status, message, region)


class _Ahead:
    """A listing's next page, fetched on a daemon thread of its own while the caller
    reads the current one. One thread per listing keeps one keep-alive connection for
    all its pages; being a daemon, a listing given up (an early return, Ctrl-C) never
    waits for the request in flight."""

    def __init__(self, fetch: Callable[[dict[str, str]], bytes]) -> None:
        self.fetch = fetch  # one page's body, given its query
        self.asked: dict[str, str] | None = None
        self.asks: queue.SimpleQueue[dict[str, str] | None] | None = None
        self.pages: queue.SimpleQueue[tuple[bytes, BaseException | None]] = queue.SimpleQueue()

    def ask(self, query: dict[str, str]) -> None:
        if self.asks is None:
            self.asks = queue.SimpleQueue()
            threading.Thread(target=self._fetch, name="list-ahead", daemon=True).start()
        self.asks.put(query)
        self.asked = query

    def page(self, query: dict[str, str]) -> bytes:
        """The page of `query`: the one asked ahead, or (a page of one key) fetched now."""
        if self.asked is not query:
            return self.fetch(query)
        self.asked = None
        body, failure = self.pages.get()
        if failure is not None:
            raise failure
        return body

    def close(self) -> None:
        if self.asks is not None:
            self.asks.put(None)

    def _fetch(self) -> None:
        assert self.asks is not None
        while (query := self.asks.get()) is not None:
            try:
                self.pages.put((self.fetch(query), None))
            except BaseException as exc:  # raised on the caller's thread
                self.pages.put((b"", exc))


def _session(endpoint: Endpoint) -> boto3.session.Session:
    """Static keys (and a session token), or boto3's standard chain when none are given."""
    if endpoint.static:
        return boto3.session.Session(
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
            aws_session_token=endpoint.session_token or None,
        )
    return boto3.session.Session()


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


def _ranged(etag: str, start: int, end: int) -> dict[str, str]:
    """Headers of a read of bytes start..end pinned to the version with this ETag."""
    return {"Range": f"bytes={start}-{end}", "If-Match": f'"{etag}"'}


def _tls(verify: bool | str) -> ssl.SSLContext:
    """The TLS context of raw requests: the CA bundle given, or none checked at all."""
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client(endpoint: Endpoint, settings: Settings, pool: int = 10, side: str = "target") -> Any:
    """A boto3 client for the operator tools (check, backfill listings)."""
    return S3(endpoint, settings, side, pool).boto
