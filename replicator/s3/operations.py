"""The S3 operations the product needs, on one endpoint, as the side it plays.

Requests are signed by `signing` and sent through the endpoint's `Transport`. An object's
bytes are accepted only with exact framing: a known Content-Length, met (urllib3 refuses
short, conflicting and badly chunked bodies); an answer without one is an error, never
size 0. Every failure leaves as a typed CopyError.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import boto3

from .. import errors
from ..config import Endpoint, Settings
from ..errors import CopyError, Kind
from . import signing
from .errors import from_answer, from_exception, skew_s
from .listing import Listed, listing
from .transport import Network, Transport, proxy_for

Body = bytes | bytearray  # a body held whole: bytearray when it came in several pieces

# Headers that travel with the object (design 7.4), by their HTTP names.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Cache-Control",
    "Content-Language",
    "Expires",
)
_KEPT_LOWER = {name.lower(): name for name in KEPT_HEADERS}
_BUCKET_SEEN_S = 60.0
_MD5 = re.compile(r"[0-9a-f]{32}")
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Full-object checksums a source may declare that this layer can recompute.
DIGESTS = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha1": lambda data: hashlib.sha1(data).digest(),
}


@dataclass(frozen=True)
class Head:
    """What an endpoint says an object is: identity, kept headers and user metadata."""

    etag: str
    size: int
    mtime: str
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tag_count: int = 0
    encrypted: bool = False  # SSE: the ETag is not the MD5 of the bytes
    checksums: dict[str, str] = field(default_factory=dict)  # full-object x-amz-checksum-*

    @property
    def md5(self) -> str | None:
        """The bytes' MD5 (base64) where the ETag is one: single-part, not encrypted."""
        if self.encrypted or not _MD5.fullmatch(self.etag):
            return None
        return base64.b64encode(bytes.fromhex(self.etag)).decode()


def network(settings: Settings, endpoint: Endpoint, side: str) -> Network:
    """The endpoint's trust, proxy and timeouts, from the settings and the environment."""
    own = settings.source_ca_bundle if side == "source" else settings.target_ca_bundle
    return Network(
        verify=settings.tls_verify,
        bundles=tuple(b for b in (settings.ca_bundle, own) if b),
        bundle_variable="MINIO_CA_BUNDLE" if side == "source" else "AWS_CA_BUNDLE",
        read_timeout=settings.read_timeout_s,
        proxy=proxy_for(endpoint.url),
    )


class S3:
    """One endpoint (the source MinIO or the target S3), on the side it plays."""

    def __init__(self, endpoint: Endpoint, settings: Settings, side: str, pool: int = 10) -> None:
        self.endpoint = endpoint
        self.side = side
        if side == "source":
            self.region = settings.minio_region
        else:
            self.region = settings.aws_region or "us-east-1"
        self.url = urlsplit(endpoint.url)
        self.aws = (self.url.hostname or "").endswith("amazonaws.com")
        self.settings = settings
        self.network = network(settings, endpoint, side)
        self.transport = Transport(endpoint.url, self.network, pool)
        self.session = _session(endpoint)
        # Loaded once here, not by the first requests of 16 copy threads at once (with a
        # role, each would ask STS or the instance metadata: botocore does not lock it).
        self.session.get_credentials()
        # Static keys never change: read once, not through botocore on every request.
        self._static = self._keys() if endpoint.static else None
        self._buckets_seen: dict[str, float] = {}
        self._seen_lock = threading.Lock()

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
        status, headers, _ = self.request("HEAD", bucket, key, headers=_CHECKSUMS)
        if status != 404:
            return self._head(headers)
        if self.side == "source":  # the source's bucket must exist: say so if it doesn't
            self._bucket_exists(bucket)
        return None

    def get(
        self,
        bucket: str,
        key: str,
        limit: int,
        reserve: Callable[[int], bool] | None = None,
    ) -> tuple[Head, Body | None]:
        """Identity and bytes in one GET; no bytes (the answer is dropped) above `limit`,
        nor where `reserve(size)`, asked once the headers give the size and before the
        body is read (to take memory for it, which the caller gives back), says False.
        It must not wait: the server is writing the body meanwhile."""
        answer = self._open("GET", bucket, key, _CHECKSUMS)
        try:
            head = self._head(answer.headers)
            if head.size > limit or (reserve is not None and not reserve(head.size)):
                return head, None
            return head, self._body(answer, head.size)
        finally:
            answer.close()  # a body read whole went back to the pool already; else dropped

    def read(self, bucket: str, key: str, etag: str, start: int, end: int) -> Body:
        """Bytes start..end (inclusive) of the version with this ETag; CONFLICT if it changed."""
        return gathered(self.stream(bucket, key, etag, start, end), end - start + 1)

    def stream(self, bucket: str, key: str, etag: str, start: int, end: int) -> Iterator[bytes]:
        """Like `read`, piece by piece as the caller iterates: for a part too large to
        hold. Its failures are this side's typed errors, wherever the pieces go."""
        ranged = {"Range": f"bytes={start}-{end}", "If-Match": f'"{etag}"'}
        answer = self._open("GET", bucket, key, ranged)
        try:
            if answer.status != 206:  # a 200 of the whole object: not the range asked for
                asked = f"GET of bytes {start}-{end}"
                raise errors.broken(self.side, f"{asked} answered {answer.status}")
            size = self._length(answer.headers)
            if size != end - start + 1:
                raise errors.broken(self.side, f"range {start}-{end} answered {size} bytes")
            yield from self._pieces(answer, size)
        finally:
            answer.close()

    def _open(self, method: str, bucket: str, key: str, headers: dict[str, str]) -> Any:
        """A GET whose body is still to be read; a 404 of the key is MOOT."""
        url, signed = self._sign(method, bucket, key, None, headers)
        try:
            answer = self.transport.send(method, url, signed, stream=True)
        except Exception as exc:
            raise from_exception(self.side, exc, self.network) from exc
        if answer.status < 300:
            self.transport.pacer.went_well()
            return answer
        try:
            body = answer.read()
        except Exception as exc:
            raise from_exception(self.side, exc, self.network) from exc
        finally:
            answer.close()
        if answer.status == 404 and b"NoSuchBucket" not in body:
            raise self._gone()
        raise self._error(answer, body)

    def _body(self, answer: Any, size: int) -> Body:
        return gathered(self._pieces(answer, size), size)

    def _pieces(self, answer: Any, size: int) -> Iterator[bytes]:
        """The body's pieces; fewer or more bytes than `size` is an error."""
        got = 0
        try:
            for piece in self.transport.read(answer, size):
                got += len(piece)
                yield piece
        except CopyError:
            raise
        except Exception as exc:
            raise from_exception(self.side, exc, self.network) from exc
        if got != size:
            raise errors.broken(self.side, f"body of {got} bytes where {size} were announced")

    def _length(self, headers: Any) -> int:
        """The answer's Content-Length: exactly one, a number. Anything else is an error:
        an unknown size is never read as 0."""
        values = headers.get_all("content-length") or []
        if len(values) != 1 or not values[0].strip().isdigit():
            shown = ", ".join(values) or "none"
            raise errors.broken(
                self.side, f"answer without one exact Content-Length ({shown}): size unknown"
            )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise errors.broken(self.side, "object answered chunked: size unknown")
        return int(values[0])

    def _gone(self) -> CopyError:
        return CopyError(Kind.MOOT, "source object is gone (404)", self.side, "NoSuchKey")

    def _head(self, headers: Any) -> Head:
        """A Head from an answer's headers (an exact Content-Length required)."""
        size = self._length(headers)
        lower = {name.lower(): value for name, value in headers.items()}
        kept = {name: _text(lower[low]) for low, name in _KEPT_LOWER.items() if lower.get(low)}
        metadata = {
            name[11:]: _text(value) for name, value in lower.items() if name[:11] == "x-amz-meta-"
        }
        tag_count = lower.get("x-amz-tagging-count") or "0"
        checksums = {}
        if lower.get("x-amz-checksum-type", "FULL_OBJECT").upper() == "FULL_OBJECT":
            checksums = {
                name[15:]: value
                for name, value in lower.items()
                if name[:15] == "x-amz-checksum-" and name != "x-amz-checksum-type"
                if "-" not in value
            }
        if "last-modified" not in lower:
            raise errors.broken(self.side, "answer without Last-Modified")
        return Head(
            etag=lower.get("etag", "").strip('"'),
            size=size,
            mtime=_iso_time(lower["last-modified"]),
            headers=kept,
            metadata=metadata,
            tag_count=int(tag_count) if tag_count.isdigit() else 0,
            encrypted=bool(
                lower.get("x-amz-server-side-encryption")
                or lower.get("x-amz-server-side-encryption-customer-algorithm")
            ),
            checksums=checksums,
        )

    # ---- writes -------------------------------------------------------------------

    def put(
        self,
        bucket: str,
        key: str,
        body: Body,
        head: Head,
        metadata: dict[str, str],
        when: str,
        tags: dict[str, str] | None = None,
    ) -> str:
        """A single PUT if the target is as we saw it: `when` is "absent" or the ETag it
        must still have. The source's MD5 (where its ETag is one) goes as Content-MD5, so
        the target refuses bytes that differ from the source's. Returns the new ETag;
        CONFLICT when the condition failed."""
        verify_declared(self.side, head, body)
        digest = hashlib.sha256(body)
        headers = self._object_headers(head, metadata, tags)
        headers["Content-Length"] = str(len(body))
        headers["x-amz-checksum-sha256"] = base64.b64encode(digest.digest()).decode()
        headers["x-amz-sdk-checksum-algorithm"] = "SHA256"
        if head.md5:
            headers["Content-MD5"] = head.md5
        headers.update({"If-None-Match": "*"} if when == "absent" else {"If-Match": f'"{when}"'})
        status, answer, _ = self.request(
            "PUT", bucket, key, headers=headers, body=body, payload=digest.hexdigest()
        )
        if status == 404:  # no NoSuchBucket in the body: whatever it is, not a write
            raise errors.answer(self.side, "", 404, "PUT answered 404")
        return answer.get("etag", "").strip('"')

    def create_upload(
        self,
        bucket: str,
        key: str,
        head: Head,
        metadata: dict[str, str],
        tags: dict[str, str] | None,
        algorithm: str,
    ) -> str:
        """A multipart upload with the object's headers; returns its id."""
        headers = self._object_headers(head, metadata, tags)
        headers["x-amz-checksum-algorithm"] = algorithm
        _, _, body = self.request("POST", bucket, key, {"uploads": ""}, headers)
        upload = _find(body, "UploadId")
        if not upload:
            raise errors.broken(self.side, "CreateMultipartUpload answered no UploadId")
        return upload

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload: str,
        number: int,
        size: int,
        crc32: str,
        body: Body | Iterable[bytes],
    ) -> dict[str, Any]:
        """One part of `size` bytes (held or streamed from pieces), with the CRC32
        (base64) they must have: the target refuses the part otherwise."""
        headers = {
            "Content-Length": str(size),
            "x-amz-checksum-crc32": crc32,
            "x-amz-sdk-checksum-algorithm": "CRC32",
        }
        query = {"partNumber": str(number), "uploadId": upload}
        _, answer, _ = self.request(
            "PUT", bucket, key, query, headers, body, payload=signing.UNSIGNED, size=size
        )
        return {"PartNumber": number, "ETag": answer.get("etag", ""), "ChecksumCRC32": crc32}

    def complete(
        self, bucket: str, key: str, upload: str, parts: list[dict[str, Any]], when: str
    ) -> str:
        """Complete the upload if the target is as we saw it; returns the new ETag."""
        root = ET.Element("CompleteMultipartUpload", xmlns=_XMLNS)
        for part in parts:
            item = ET.SubElement(root, "Part")
            ET.SubElement(item, "PartNumber").text = str(part["PartNumber"])
            ET.SubElement(item, "ETag").text = part["ETag"]
            if part.get("ChecksumCRC32"):
                ET.SubElement(item, "ChecksumCRC32").text = part["ChecksumCRC32"]
        body = ET.tostring(root)
        headers = {"Content-Length": str(len(body))}
        headers.update({"If-None-Match": "*"} if when == "absent" else {"If-Match": f'"{when}"'})
        _, _, answer = self.request(
            "POST",
            bucket,
            key,
            {"uploadId": upload},
            headers,
            body,
            payload=hashlib.sha256(body).hexdigest(),
        )
        if _local(ET.fromstring(answer or b"<x/>").tag) == "Error":  # a 200 that failed
            code = _find(answer, "Code")
            raise errors.answer(self.side, code, 200, _find(answer, "Message"))
        return _find(answer, "ETag").strip('"')

    def abort(self, bucket: str, key: str, upload: str) -> None:
        # Best effort; a lifecycle rule cleans up what is left.
        with contextlib.suppress(CopyError):
            self.request("DELETE", bucket, key, {"uploadId": upload})

    def delete(self, bucket: str, key: str, etag: str | None = None) -> None:
        """Delete the object, if it still has this ETag (where the target checks If-Match
        on DELETE: AWS does, MinIO ignores it); CONFLICT when it changed."""
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        self.request("DELETE", bucket, key, headers=headers)

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        """The object's tags (asked only when its GET/HEAD counted some)."""
        _, _, body = self.request("GET", bucket, key, {"tagging": ""})
        tags = {}
        for tag in ET.fromstring(body or b"<x/>").iter():
            if _local(tag.tag) == "Tag":
                fields = {_local(child.tag): child.text or "" for child in tag}
                tags[fields.get("Key", "")] = fields.get("Value", "")
        return tags

    def object_lock(self, bucket: str) -> dict[str, str]:
        """The bucket's default retention: {"Mode", "Days"|"Years"}, or {} when none."""
        try:
            _, _, body = self.request("GET", bucket, "", {"object-lock": ""})
        except CopyError as exc:
            if exc.code == "ObjectLockConfigurationNotFoundError":
                return {}
            raise
        for element in ET.fromstring(body or b"<x/>").iter():
            if _local(element.tag) == "DefaultRetention":
                return {_local(child.tag): child.text or "" for child in element}
        return {}

    def _object_headers(
        self, head: Head, metadata: dict[str, str], tags: dict[str, str] | None
    ) -> dict[str, str]:
        headers = {**head.headers, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        if tags:
            headers["x-amz-tagging"] = urlencode(tags, quote_via=quote)
        for name, value in (
            ("x-amz-storage-class", self.settings.storage_class),
            ("x-amz-server-side-encryption", self.settings.sse),
            ("x-amz-server-side-encryption-aws-kms-key-id", self.settings.sse_kms_key_id),
        ):
            if value:
                headers[name] = value
        return headers

    # ---- probes and listings ------------------------------------------------------

    def _bucket_exists(self, bucket: str) -> None:
        """A HEAD's 404 has no body to say whether the key or the bucket is missing: ask
        the bucket (a yes is remembered for a minute, so removals don't pay each time)."""
        with self._seen_lock:
            seen = self._buckets_seen.get(bucket, -_BUCKET_SEEN_S)
        if time.monotonic() - seen < _BUCKET_SEEN_S:
            return
        status, _, _ = self.request("HEAD", bucket, "")
        if status == 404:
            raise errors.answer(self.side, "NoSuchBucket", 404, bucket)
        with self._seen_lock:
            self._buckets_seen[bucket] = time.monotonic()

    def probe(self, bucket: str) -> bool:
        """Whether the endpoint answers at all (an error answer counts: it is up)."""
        try:
            self.request("HEAD", bucket, "")
        except CopyError as exc:
            return exc.kind is not Kind.DOWN and " connection broken: " not in exc.reason
        return True

    def clock_offset(self, bucket: str) -> float | None:
        """How far this host's clock is ahead of the endpoint's (seconds; its `Date`)."""
        try:
            _, headers, _ = self.request("GET", bucket, "", {"location": ""})
        except CopyError as exc:
            if exc.code != "RequestTimeTooSkewed":
                raise
            return getattr(exc, "offset", None)
        return skew_s(headers)

    def list(self, bucket: str, prefix: str, page: int = 1000) -> Iterator[Listed]:
        """Every key under the prefix, in key order, a page at a time (see `listing`)."""
        return listing(self._page, bucket, prefix, page)

    def _page(self, bucket: str, query: dict[str, str]) -> bytes:
        status, _, body = self.request("GET", bucket, "", query)
        if status == 404:
            raise errors.answer(self.side, "NoSuchBucket", 404, bucket)
        return body or b""

    # ---- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Body | Iterable[bytes] | None = None,
        payload: str = signing.EMPTY_SHA256,
        size: int | None = None,
    ) -> tuple[int, Any, bytes | None]:
        """A signed request whose answer is read whole: (status, headers (urllib3's,
        case-insensitive), body). A 404 without NoSuchBucket comes back as status 404; any
        other error answer raises its typed error. A SlowDown paces every thread of the endpoint."""
        url, signed = self._sign(method, bucket, key, query, headers or {}, payload)
        if size is None:
            size = len(body) if isinstance(body, bytes | bytearray) else 0
        try:
            answer = self.transport.send(method, url, signed, body, size=size)
            data = answer.data or b""
        except Exception as exc:
            raise from_exception(self.side, exc, self.network) from exc
        if answer.status == 404 and b"NoSuchBucket" not in data:
            return 404, answer.headers, None
        if answer.status >= 300:
            raise self._error(answer, data)
        self.transport.pacer.went_well()
        return answer.status, answer.headers, data

    def _error(self, answer: Any, body: bytes) -> CopyError:
        headers = answer.headers
        error = from_answer(self.side, answer.status, answer.reason or "", headers, body)
        if error.code in _PACED or answer.status in (429, 503) or "retry-after" in headers:
            pause = self.transport.pacer.slow_down(_seconds(headers.get("retry-after")))
            error.reason += f" (every request to the {self.side} waits {pause:.1f} s)"
        return error

    def _sign(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str] | None,
        headers: dict[str, str],
        payload: str = signing.EMPTY_SHA256,
    ) -> tuple[str, dict[str, str]]:
        url = self.url
        if self.aws and "." not in bucket:
            host, path = f"{bucket}.{url.netloc}", f"/{key}"
        else:
            host, path = url.netloc, f"/{bucket}/{key}" if key else f"/{bucket}"
        canonical = "&".join(
            f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted((query or {}).items())
        )
        keys = self._static or self._keys()
        signed = signing.sign(method, host, path, canonical, headers, payload, keys, self.region)
        signed["Host"] = host
        for name, value in signed.items():  # non-ASCII text goes as UTF-8, as it was signed
            if not value.isascii():
                signed[name] = value.encode()  # type: ignore[assignment]
        target = f"{url.scheme}://{host}{quote(path, safe='/~')}"
        return (f"{target}?{canonical}" if canonical else target), signed


_CHECKSUMS = {"x-amz-checksum-mode": "ENABLED"}  # ask for the object's declared checksums
_PACED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests"})


def gathered(pieces: Iterable[bytes], size: int) -> Body:
    """The pieces of a body of `size` bytes as one buffer, taken at its full size before
    the first copy: joining them would hold the pieces and the joined copy at once (twice
    the size). A body that came in one piece is that piece."""
    first, whole, at = b"", None, 0
    for piece in pieces:
        if at == 0:
            first = piece
        else:
            if whole is None:
                whole = bytearray(max(size, at))
                whole[:at], first = first, b""
            whole[at : at + len(piece)] = piece
        at += len(piece)
    return first if whole is None else whole


def verify_declared(side: str, head: Head, body: Body) -> None:
    """Bytes read must be as many as the source declared, and match a full-object checksum
    it declared where one is computable here (where its ETag is an MD5, the target checks
    that instead, at no cost to us)."""
    if len(body) != head.size:
        raise errors.broken(side, f"read {len(body)} bytes of {head.size}")
    if head.md5:
        return
    for name, value in head.checksums.items():
        digest = DIGESTS.get(name)
        if digest and base64.b64encode(digest(body)).decode() != value:
            raise CopyError(
                Kind.TRANSIENT,
                f"source bytes read do not match the source's declared {name} checksum",
                "source",
                "BadDigest",
            )


def _local(tag: str) -> str:
    """An XML element's name without its namespace (S3 servers differ in using one)."""
    return tag.rpartition("}")[2]


def _find(body: bytes | None, name: str) -> str:
    """The text of the first element called `name`, in any namespace."""
    for element in ET.fromstring(body or b"<x/>").iter():
        if _local(element.tag) == name:
            return element.text or ""
    return ""


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _session(endpoint: Endpoint) -> boto3.session.Session:
    """Static keys (and a session token), or boto3's standard chain when none are given."""
    if endpoint.static:
        return boto3.session.Session(
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
            aws_session_token=endpoint.session_token or None,
        )
    return boto3.session.Session()


def _text(value: str) -> str:
    """A header value as text. HTTP clients read values as ISO-8859-1 (one character per
    byte); MinIO and S3 keep a non-ASCII Content-Disposition or Content-Language as its
    raw UTF-8 bytes, and the write paths send text as UTF-8: decode it, or a copy would
    carry it double-encoded. Bytes that are not UTF-8 stay as read."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode()
    except UnicodeError:
        return value


_TIMES: dict[str, str] = {}


def _iso_time(http_date: str) -> str:
    """ISO time of an HTTP date (cached: objects written in the same second share it)."""
    found = _TIMES.get(http_date)
    if found is None:
        if len(_TIMES) > 256:
            _TIMES.clear()
        found = _TIMES[http_date] = parsedate_to_datetime(http_date).isoformat()
    return found
