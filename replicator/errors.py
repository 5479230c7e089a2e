"""Error policy (design section 6): what a failure means for the task."""

from __future__ import annotations

import enum

from botocore.exceptions import BotoCoreError, ClientError

PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "KeyTooLongError",
        "InvalidObjectName",
        "XMinioInvalidObjectName",
        "EntityTooLarge",
        "InvalidRequest",
        "MethodNotAllowed",
        "NotImplemented",  # e.g. a target without conditional writes
    }
)
MOOT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class Kind(enum.Enum):
    TRANSIENT = "transient"  # retry in process, then a delay queue, then the DLQ
    PERMANENT = "permanent"  # DLQ at once, with the reason
    MOOT = "moot"  # nothing to do: ack and count as skipped


class CopyError(Exception):
    """A classified failure of one copy, with the side it came from."""

    def __init__(self, kind: Kind, reason: str, side: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.side = side

    @property
    def unreachable(self) -> bool:
        """The endpoint itself is down (not this object): wait for it, don't spend budget."""
        return self.kind is Kind.TRANSIENT and self.reason.startswith("unreachable")


def classify(exc: BaseException, side: str) -> CopyError:
    if isinstance(exc, CopyError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        reason = f"{side} {code or status}: {error.get('Message') or exc}"
        if code in MOOT_CODES:
            return CopyError(Kind.MOOT, f"{side} object is gone ({code})", side)
        if code in PERMANENT_CODES or status in (400, 401, 403):
            return CopyError(Kind.PERMANENT, reason, side)
        if status >= 500 and code in ("", str(status)):
            return CopyError(Kind.TRANSIENT, f"unreachable: {reason}", side)
        return CopyError(Kind.TRANSIENT, reason, side)
    if isinstance(exc, BotoCoreError | ConnectionError | TimeoutError):
        return CopyError(Kind.TRANSIENT, f"unreachable: {side}: {exc}", side)
    return CopyError(Kind.PERMANENT, f"{side}: unexpected {type(exc).__name__}: {exc}", side)
