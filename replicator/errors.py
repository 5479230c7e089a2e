"""Typed failures (design section 6): what went wrong, on which side, and what kind it is.

The S3 layer raises these where a client library fails, so nothing above it guesses from
strings. The kind alone decides what the policy does with a task.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    DOWN = "endpoint_down"  # connection-level failure: the endpoint may be down (probe it)
    TRANSIENT = "transient"  # this key failed this time: retry with backoff, then tiers
    PERMANENT = "permanent"  # retrying cannot help: dead-letter at once, side named
    MOOT = "moot"  # nothing to do (source object gone): ack, counted as skipped
    CONFLICT = "conflict"  # a precondition failed: the source or target changed; look again
    MALFORMED = "malformed"  # a message that can never become a copy


# S3 error codes by kind. Status codes decide what a code does not (see kind_of).
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "AuthorizationHeaderMalformed",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "KeyTooLongError",
        "InvalidObjectName",
        "XMinioInvalidObjectName",
        "EntityTooLarge",
        "InvalidRequest",
        "InvalidArgument",
        "MethodNotAllowed",
        "PermanentRedirect",
        "NotImplemented",  # e.g. a target without conditional writes
        "InvalidStorageClass",
        "KMS.NotFoundException",
        "MissingUploadObjectWithObjectLockHeaders",
        "RequestTimeTooSkewed",  # the host's clock: no retry fixes it (see s3/errors.py)
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "ExpiredToken",
        "TokenRefreshRequired",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "XMinioServerNotInitialized",
        "OperationAborted",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "ClientDisconnected",  # MinIO (499) on requests cut off while it shuts down
        # The bytes did not match their checksum: reads are pinned by ETag, so the
        # transfer was damaged, and the next try sends them again.
        "BadDigest",
        "XAmzContentChecksumMismatch",
    }
)
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
GONE_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class CopyError(Exception):
    """A classified failure of one operation, with the side (source/target) it came from."""

    def __init__(self, kind: Kind, reason: str, side: str = "", code: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.side = side
        self.code = code
        # Already retried where it happened (a multipart part): callers above must not
        # retry it again in the same delivery, or the tries multiply.
        self.retried = False

    def __repr__(self) -> str:
        return f"CopyError({self.kind.value}, {self.side}, {self.reason!r})"


def kind_of(code: str, status: int) -> Kind:
    """The kind of an S3 error answer, from its code and HTTP status."""
    if code in CONFLICT_CODES or status in (409, 412):
        return Kind.CONFLICT
    if code in GONE_CODES:
        return Kind.MOOT
    if code in PERMANENT_CODES or status == 301:
        return Kind.PERMANENT
    if code in TRANSIENT_CODES or status in (408, 429, 499) or status >= 500:
        return Kind.TRANSIENT  # a 5xx with no code (a proxy's page) fails this key, not the side
    if 400 <= status < 500:
        return Kind.PERMANENT
    return Kind.TRANSIENT


# What an answer without an S3 error code (a HEAD, a proxy's page) most likely means.
_BARE = {
    400: "bad request",
    401: "unauthorized: wrong credentials",
    403: "forbidden: access denied or wrong credentials",
    404: "not found",
}


def answer(side: str, code: str, status: int, message: str, region: str = "") -> CopyError:
    """The typed error for an S3 answer; a wrong region names the bucket's real one."""
    if code == "NoSuchBucket" or (status == 404 and code == "NoSuchBucket"):
        return CopyError(Kind.PERMANENT, f"{side} bucket does not exist ({message})", side, code)
    if status == 301 or code == "PermanentRedirect":
        where = f"; the bucket is in region {region}: set AWS_REGION={region}" if region else ""
        return CopyError(
            Kind.PERMANENT, f"{side} 301 PermanentRedirect: wrong region{where}", side, code
        )
    kind = kind_of(code, status)
    if kind is Kind.MOOT and side == "source":
        return CopyError(kind, f"source object is gone ({side} {code or status})", side, code)
    if kind is Kind.MOOT:  # the target lost the key we conditioned on: look again
        kind = Kind.CONFLICT
    if not code or code == str(status):
        code = ""
        message = message or _BARE.get(status, "no S3 error code in the answer")
    label = f"{status} {code}".strip()
    return CopyError(kind, f"{side} {label}: {message}", side, code)


def down(side: str, detail: str) -> CopyError:
    """A connection-level failure: refused, DNS, connect timeout."""
    return CopyError(Kind.DOWN, f"{side} unreachable: {detail}", side)


def broken(side: str, detail: str) -> CopyError:
    """The connection broke after the request went out: reset, read timeout, short body."""
    return CopyError(Kind.TRANSIENT, f"{side} connection broken: {detail}", side)
