"""S3 failures typed where they happen: an error answer by its S3 code and status, a
transport failure by what broke (design 6). Nothing above this layer reads a string to
guess what went wrong."""

from __future__ import annotations

import http.client
import re
import ssl
import time
from datetime import datetime
from email.utils import parsedate_to_datetime

import urllib3.exceptions as u3

from ..config import mask
from ..errors import CopyError, Kind, answer, broken, down
from .transport import DeadlineExceeded, Network

_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
SKEW_REFUSED_S = 900  # S3 refuses requests signed 15 minutes off its clock
_SERVER_TIME = re.compile(rb"<ServerTime>([^<]+)</ServerTime>")


def code_of(body: bytes) -> str:
    match = _CODE.search(body)
    return match.group(1).decode(errors="replace") if match else ""


def from_answer(side: str, status: int, reason: str, headers: dict, body: bytes) -> CopyError:
    """The typed error of an S3 error answer."""
    code = code_of(body) or str(status)
    found = _MESSAGE.search(body)
    message = found.group(1).decode(errors="replace") if found else reason
    if code == "RequestTimeTooSkewed":
        return skewed(side, headers, body)
    if status == 403 and not body and abs(skew_s(headers) or 0) > SKEW_REFUSED_S:
        return skewed(side, headers)  # a HEAD's 403 has no code: its Date tells why
    return answer(side, code, status, message, headers.get("x-amz-bucket-region", ""))


def skew_s(headers: dict, body: bytes = b"") -> float | None:
    """How far this host's clock is ahead of the endpoint's (seconds): the error's
    `ServerTime`, else the answer's `Date`."""
    found = _SERVER_TIME.search(body)
    try:
        if found:
            theirs = datetime.fromisoformat(found.group(1).decode().replace("Z", "+00:00"))
        else:
            theirs = parsedate_to_datetime(headers.get("date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return time.time() - theirs.timestamp()


def skewed(side: str, headers: dict, body: bytes = b"") -> CopyError:
    offset = skew_s(headers, body)
    how = "off" if offset is None else f"{abs(offset):.0f} s {'ahead' if offset > 0 else 'behind'}"
    error = CopyError(
        Kind.PERMANENT,
        f"{side} clock skew: this host is {how} of the {side}'s clock "
        "(RequestTimeTooSkewed); set the time right (NTP) and replay the dead letters",
        side,
        "RequestTimeTooSkewed",
    )
    error.offset = offset  # type: ignore[attr-defined]  # for `check`
    return error


def from_exception(side: str, exc: BaseException, network: Network) -> CopyError:
    """The typed error of a request that got no (complete) answer."""
    if isinstance(exc, CopyError):
        return exc
    if isinstance(exc, DeadlineExceeded):
        return broken(side, str(exc))
    if isinstance(exc, u3.ProxyError):
        if isinstance(exc.__cause__ or getattr(exc, "original_error", None), ssl.SSLError):
            return _tls(side, exc, network, " of the proxy")
        return down(side, f"proxy {mask(network.proxy or '', url=True)}: {_cause(exc)}")
    if isinstance(exc, u3.SSLError | ssl.SSLError):
        return _tls(side, exc, network)
    if isinstance(exc, u3.NewConnectionError | u3.ConnectTimeoutError):
        return down(side, _cause(exc))
    if isinstance(exc, u3.ReadTimeoutError | TimeoutError):
        return broken(side, f"no bytes for {network.read_timeout:.0f} s (read timeout)")
    if isinstance(exc, u3.InvalidHeader | u3.HeaderParsingError):
        return broken(side, f"malformed answer: {exc}")
    if isinstance(exc, u3.HTTPError | http.client.HTTPException | OSError):
        return broken(side, _cause(exc))
    return CopyError(Kind.PERMANENT, f"{side}: unexpected {exc!r}", side)


def _tls(side: str, exc: BaseException, network: Network, whose: str = "") -> CopyError:
    text = _cause(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return CopyError(
            Kind.PERMANENT,
            f"{side} TLS certificate{whose} not trusted ({text}): add the CA that signed it with "
            f"{network.bundle_variable} (or MIRROR_CA_BUNDLE, or the system store via "
            "SSL_CERT_FILE)",
            side,
            "TLS",
        )
    if "hostname" in text.lower() or "doesn't match" in text:
        return CopyError(Kind.PERMANENT, f"{side} TLS certificate: {text}", side, "TLS")
    return broken(side, f"TLS: {text}")


def _cause(exc: BaseException) -> str:
    """The innermost reason in plain words, without urllib3's wrapping (`<... object at
    0x..>: `, `Pool(host=..., port=...): `, `('Connection aborted.', TimeoutError(...))`)."""
    reason = getattr(exc, "reason", None) or exc.__cause__ or exc
    if isinstance(reason, u3.ProtocolError) and len(reason.args) == 2:
        inner = reason.args[1]
        if isinstance(inner, TimeoutError):
            return f"{reason.args[0]} no progress within the timeout"
        return f"{reason.args[0]} {inner}"
    text = str(reason)
    text = re.sub(r"<[^>]* object at 0x[0-9a-f]+>: ", "", text)
    return re.sub(r"\b_?\w*\(host='[^']*', port=\d+\): ", "", text)
