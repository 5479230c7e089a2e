"""The copy engine: one source object to its target key(s), by the rules of design 7.

Copies what the source holds now (pinned by ETag while reading), streams through a
bounded buffer (multipart above a threshold), keeps metadata and records the source
identity on the target. Every write is conditional on the target being as we saw it
(If-None-Match / If-Match), and a replacement re-checks the source after writing, so an
older version never stays over a newer one. A new object costs a target HEAD, one source
GET and the PUT; an up-to-date one a target HEAD and a source HEAD.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .config import BucketPair, Endpoint, Settings
from .errors import CopyError, Kind, classify
from .filters import pairs_for
from .task import Task

SOURCE_ETAG = "mirror-source-etag"
SOURCE_MTIME = "mirror-source-mtime"
MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # memory per copy thread is about one part
MULTIPART_THRESHOLD = 16 * MiB
MAX_PARTS = 10_000
CHASES = 5  # how often to follow a source that keeps changing before giving up
# Headers that travel with the object (design 7.4); user metadata travels as Metadata.
KEPT_HEADERS = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "CacheControl",
    "ContentLanguage",
    "Expires",
)


def client(endpoint: Endpoint, settings: Settings, pool: int) -> Any:
    """A boto3 S3 client with timeouts, a small inner retry budget and no extra checksums."""
    verify: bool | str = settings.ca_bundle or settings.tls_verify
    aws = endpoint.url.rstrip("/").endswith("amazonaws.com")
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=settings.aws_region or "us-east-1",
        verify=verify,
        config=Config(
            s3={"addressing_style": "auto" if aws else "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=pool,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@dataclass(frozen=True)
class Outcome:
    copied: bool
    reason: str  # why it was skipped, or "copied"
    bytes: int = 0


@dataclass(frozen=True)
class Source:
    """What the source holds now."""

    etag: str
    size: int
    mtime: str
    head: dict[str, Any]


class KeyLocks:
    """One copy per key at a time in this process: duplicates wait, then find it current."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self.guard:
            lock, users = self.locks.get(key, (threading.Lock(), 0))
            self.locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self.guard:
                lock, users = self.locks[key]
                if users == 1:
                    del self.locks[key]
                else:
                    self.locks[key] = (lock, users - 1)


class Copier:
    def __init__(self, settings: Settings, *, pool: int = 10) -> None:
        if settings.target is None:
            raise ValueError("the copy engine needs a target")
        self.settings = settings
        self.source = client(settings.source, settings, pool)
        self.target = client(settings.target, settings, pool)
        self.locks = KeyLocks()

    def copy(self, task: Task) -> Outcome:
        """Copy one task's object to every pair it belongs to; raises CopyError."""
        if not any(p.source_bucket == task.bucket for p in self.settings.pairs):
            raise CopyError(Kind.PERMANENT, f"bucket {task.bucket!r} is in no configured pair")
        pairs = pairs_for(self.settings, task.bucket, task.key)
        if not pairs:
            return Outcome(False, "excluded (MIRROR_EXCLUDE/MIRROR_PREFIX or pair path)")
        outcomes = [self._copy_pair(task, pair) for pair in pairs]
        copied = [o for o in outcomes if o.copied]
        if copied:
            return Outcome(True, "copied", sum(o.bytes for o in copied))
        return outcomes[0]

    def _copy_pair(self, task: Task, pair: BucketPair) -> Outcome:
        bucket, key = pair.target_bucket, pair.target_key(task.key)
        with self.locks.hold(f"{bucket}/{key}"):
            for _ in range(CHASES):
                head = self._target_head(bucket, key)
                if head is None:
                    # Nothing to compare with: one GET gives the source's identity and
                    # (small) bytes; the write lands only if the key is still absent.
                    source, body = self._get_source(task)
                    condition = {"IfNoneMatch": "*"}
                else:
                    source, body = self._head_source(task), None
                    if current(head, source):
                        return Outcome(False, "target already current")
                    if not self.settings.overwrite:
                        return Outcome(False, "target exists and differs (MIRROR_OVERWRITE=false)")
                    condition = {"IfMatch": head["ETag"]}
                try:
                    written = self._write(task, source, bucket, key, condition, body)
                except ClientError as exc:
                    if _conflict(exc):  # the source or the target changed under us
                        continue
                    raise classify(exc, "target") from exc
                # Replacing an object needs one more look: the source may have gone back to
                # content the target held, which another task then found "current".
                if head is not None and self._head_source(task).etag != source.etag:
                    continue
                # A single PUT whose ETag (the MD5 of what the target stored) equals the
                # source's is verified by that answer; anything else by a HEAD.
                if written != source.etag:
                    self._verify(bucket, key, source)
                return Outcome(True, "copied", source.size)
        raise CopyError(Kind.TRANSIENT, "source or target kept changing while copying", "source")

    def _head_source(self, task: Task) -> Source:
        try:
            return _identity(self.source.head_object(Bucket=task.bucket, Key=task.key))
        except Exception as exc:
            raise classify(exc, "source") from exc

    def _get_source(self, task: Task) -> tuple[Source, bytes | None]:
        """The source's identity and, when it is small, its bytes: one GET for HEAD + GET."""
        if task.size is not None and task.size > MULTIPART_THRESHOLD:
            return self._head_source(task), None  # large: read in parts, pinned by ETag
        try:
            response = self.source.get_object(Bucket=task.bucket, Key=task.key)
            source = _identity(response)
            if source.size > MULTIPART_THRESHOLD:  # the event's size was missing or stale
                response["Body"].close()
                return source, None
            return source, response["Body"].read()
        except Exception as exc:
            raise classify(exc, "source") from exc

    def _target_head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return self.target.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise classify(exc, "target") from exc
        except Exception as exc:
            raise classify(exc, "target") from exc

    def _verify(self, bucket: str, key: str, source: Source) -> None:
        head = self._target_head(bucket, key)
        if head is None or head.get("Metadata", {}).get(SOURCE_ETAG) != source.etag:
            raise CopyError(Kind.TRANSIENT, "target does not hold the copy after writing", "target")

    def _write_args(self, source: Source) -> dict[str, Any]:
        kept = {name: source.head[name] for name in KEPT_HEADERS if source.head.get(name)}
        metadata = dict(source.head.get("Metadata", {}))
        metadata.update({SOURCE_ETAG: source.etag, SOURCE_MTIME: source.mtime})
        return {**kept, "Metadata": metadata}

    def _read(self, task: Task, source: Source, byte_range: str | None = None) -> bytes:
        args: dict[str, Any] = {"Bucket": task.bucket, "Key": task.key, "IfMatch": source.etag}
        if byte_range:
            args["Range"] = byte_range
        try:
            return self.source.get_object(**args)["Body"].read()
        except ClientError as exc:
            if _status(exc) == 412:
                raise
            raise classify(exc, "source") from exc
        except Exception as exc:
            raise classify(exc, "source") from exc

    def _write(
        self,
        task: Task,
        source: Source,
        bucket: str,
        key: str,
        condition: dict[str, str],
        body: bytes | None,
    ) -> str:
        """Write the object if the target still is as we saw it; returns the target's ETag."""
        args = {"Bucket": bucket, "Key": key, **self._write_args(source)}
        if source.size <= MULTIPART_THRESHOLD:
            if body is None:
                body = self._read(task, source) if source.size else b""
            put = self._target_call("put_object", Body=body, **condition, **args)
            return put["ETag"].strip('"')
        upload = self._target_call("create_multipart_upload", **args)["UploadId"]
        try:
            parts = []
            part_size = max(PART_SIZE, math.ceil(source.size / MAX_PARTS))
            for number, start in enumerate(range(0, source.size, part_size), 1):
                end = min(start + part_size, source.size) - 1
                body = self._read(task, source, f"bytes={start}-{end}")
                part = self._target_call(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=body,
                )
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
            return self._target_call(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                **condition,
            )["ETag"].strip('"')
        except BaseException:
            self._abort(bucket, key, upload)
            raise

    def _target_call(self, method: str, **args: Any) -> Any:
        try:
            return getattr(self.target, method)(**args)
        except ClientError:
            raise
        except Exception as exc:
            raise classify(exc, "target") from exc

    def _abort(self, bucket: str, key: str, upload: str) -> None:
        # Best effort; a lifecycle rule cleans up what is left.
        with contextlib.suppress(Exception):
            self.target.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)

    def probe_target(self) -> bool:
        """Whether the target endpoint answers at all (used to wait out an outage)."""
        bucket = self.settings.pairs[0].target_bucket
        try:
            self.target.head_bucket(Bucket=bucket)
        except ClientError:
            return True  # it answered, even if with an error
        except Exception:
            return False
        return True


def current(head: dict[str, Any], source: Source) -> bool:
    """Whether the target object (its HEAD) holds the source's current content."""
    if head["ContentLength"] != source.size:
        return False
    recorded = head.get("Metadata", {}).get(SOURCE_ETAG)
    if recorded is not None:
        return recorded == source.etag
    # Copied by something else (mc mirror): same single-part ETag means same bytes.
    return head["ETag"].strip('"') == source.etag


def _identity(response: dict[str, Any]) -> Source:
    """What a HEAD or GET says the source holds (the body stream is not kept)."""
    return Source(
        etag=response["ETag"].strip('"'),
        size=response["ContentLength"],
        mtime=response["LastModified"].isoformat(),
        head={name: value for name, value in response.items() if name != "Body"},
    )


def _conflict(exc: ClientError) -> bool:
    """A failed precondition: the source changed while read, or the target since its HEAD."""
    code = exc.response.get("Error", {}).get("Code")
    return _status(exc) == 412 or code in ("NoSuchKey", "ConditionalRequestConflict")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
