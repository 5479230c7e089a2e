"""`check`: is this setup able to replicate? One line per part, with the seed's hint."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from . import broker, slack, topology
from .config import Settings
from .errors import CopyError, Kind
from .reconcile.mc import McMissing, NoCredentials, NoTempDir, find_binary
from .reconcile.mc import endpoints as mc_endpoints
from .reconcile.mc import probe as mc_probe
from .reconcile.mc import version as mc_version
from .reconcile.troubleshoot import diagnose
from .s3 import S3, Head

# Probe objects live under one fixed prefix, so a lifecycle rule can expire the ones an
# Object Lock bucket keeps (README: check).
PROBE_PREFIX = ".minio-s3-mirror-check/"
PROBE_BODY = b"minio-s3-mirror check: a probe object; safe to delete\n"
CLOCK_WARN_S = 300  # a clock this far off an endpoint's fails the check (S3 refuses at 900)
_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
    }
)


@dataclass
class Check:
    name: str
    status: str  # "ok" | "FAIL" | "skip"
    detail: str
    hints: tuple[str, ...] = field(default_factory=tuple)


def s3_hints(error: CopyError) -> tuple[str, ...]:
    """What to look at for an S3 layer's typed failure (mc's causes are for mc only)."""
    source = error.side == "source"
    url = "MINIO_URL" if source else "AWS_URL"
    keys = "MINIO_ACCESS_KEY, MINIO_SECRET_KEY" if source else "AWS_ACCESS_KEY, AWS_SECRET_KEY"
    code = error.code
    if error.kind is Kind.DOWN or " connection broken: " in error.reason:
        return (
            f"check {url} (it must include http:// or https://) and that the endpoint is up",
            "check firewalls and security groups between here and the endpoint",
        )
    if code == "PermanentRedirect" or "PermanentRedirect" in error.reason:
        return ()  # the reason names the bucket's region when the answer did
    if code == "NoSuchBucket":
        return ("check that the bucket exists", "check that the bucket name in the pair is exact")
    bare_refusal = not code and (" 401" in error.reason or " 403" in error.reason)
    hints = []
    if code in _CREDENTIAL_CODES or bare_refusal:
        hints.append(f"check that the access key and secret key are valid ({keys})")
    if code == "AccessDenied" or bare_refusal:
        hints.append(
            "check the bucket's permissions and the IAM policy (README: Least-privilege policies)"
        )
    return tuple(hints)


def s3_failure(name: str, exc: Exception) -> Check:
    """A failed S3 call, described by the S3 layer's typed reason."""
    if not isinstance(exc, CopyError):
        return Check(name, "FAIL", f"unexpected failure: {exc!r}"[:300])
    return Check(name, "FAIL", exc.reason[:300], s3_hints(exc))


def attempt(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, "ok", probe())
    except Exception as exc:
        return s3_failure(name, exc)


def source_checks(settings: Settings) -> list[Check]:
    s3 = S3(settings.source, settings, "source", 4)

    def readable(bucket: str) -> str:
        first = next(iter(s3.list(bucket, "", page=1)), None)
        if first is None:
            return "listed (empty bucket)"
        s3.get(bucket, first.key, limit=0)  # a GET: its headers prove read access
        return "listed and read an object"

    buckets = sorted({p.source_bucket for p in settings.pairs})
    return [attempt(f"source {b}", lambda b=b: readable(b)) for b in buckets]


# ---- the target: what `work` needs ---------------------------------------------------


def target_checks(settings: Settings, read_only: bool) -> list[Check]:
    s3 = S3(settings.target, settings, "target", 4)
    buckets = sorted({p.target_bucket for p in settings.pairs})
    return [target_check(s3, settings, b, read_only) for b in buckets]


def target_check(s3: S3, settings: Settings, bucket: str, read_only: bool) -> Check:
    """List the probe prefix; then (unless read-only) write a probe as `work` writes:
    conditional, with a checksum, the storage class and the encryption configured."""
    name = f"target {bucket}"
    try:
        next(iter(s3.list(bucket, PROBE_PREFIX, page=1)), None)
    except Exception as exc:
        return s3_failure(name, exc)
    if read_only:
        return Check(name, "ok", "listed (write not probed: --read-only)")
    lock = default_retention(s3, bucket)
    key = f"{PROBE_PREFIX}{uuid.uuid4()}"
    head = Head(etag="", size=len(PROBE_BODY), mtime="", headers={"Content-Type": "text/plain"})
    try:
        etag = s3.put(bucket, key, PROBE_BODY, head, {}, when="absent")
    except Exception as exc:
        return write_refused(name, exc, settings)
    try:
        s3.put(bucket, key, PROBE_BODY, head, {}, when="absent")
    except CopyError as exc:
        result = conditional_refused(name, exc, written_with(settings))
    except Exception as exc:
        result = s3_failure(name, exc)
    else:
        result = Check(
            name,
            "FAIL",
            "the target accepted a second If-None-Match: * PUT of the probe: it has no "
            "conditional writes, which work needs to keep newer copies over older ones",
            ("use AWS S3 or a server release with conditional writes "
             "(README: Troubleshooting, target NotImplemented)",),
        )  # fmt: skip
    kept = remove_probe(s3, bucket, key, etag, lock)
    return Check(result.name, result.status, f"{result.detail}; {kept}", result.hints)


def written_with(settings: Settings) -> str:
    parts = ["SHA-256 checksum"]
    if settings.storage_class:
        parts.append(f"storage class {settings.storage_class}")
    if settings.sse:
        kms = f" key {settings.sse_kms_key_id}" if settings.sse_kms_key_id else ""
        parts.append(f"encryption {settings.sse}{kms}")
    return ", ".join(parts)


def conditional_refused(name: str, exc: CopyError, written: str = "") -> Check:
    """The second If-None-Match: * PUT of the probe: CONFLICT is the only good answer."""
    if exc.kind is Kind.CONFLICT:
        return Check(
            name, "ok", f"wrote a probe ({written}); a second If-None-Match: * PUT was "
            "refused: conditional writes work"
        )  # fmt: skip
    if exc.code == "NotImplemented":
        return Check(
            name,
            "FAIL",
            f"{exc.reason[:200].rstrip('.')}: the target does not support conditional writes "
            "(If-None-Match: * on PUT), which work needs",
            ("use AWS S3 or a server release with conditional writes",),
        )
    return s3_failure(name, exc)


def write_refused(name: str, exc: Exception, settings: Settings) -> Check:
    """The first probe PUT failed: name the setting it most likely is about."""
    failure = s3_failure(name, exc)
    if not isinstance(exc, CopyError):
        return failure
    reason, code = exc.reason[:200].rstrip("."), exc.code
    lowered = reason.lower()
    if code == "InvalidStorageClass":
        return Check(
            name,
            "FAIL",
            f"{reason}: the target refuses AWS_STORAGE_CLASS={settings.storage_class}",
            ("set AWS_STORAGE_CLASS to a class this target offers, or unset it (STANDARD)",),
        )
    if code.startswith("KMS.") or (settings.sse and ("kms" in lowered or "encrypt" in lowered)):
        return Check(
            name,
            "FAIL",
            f"{reason}: the target refuses AWS_SSE={settings.sse}"
            + (f" with AWS_SSE_KMS_KEY_ID={settings.sse_kms_key_id}" if code.startswith("KMS.")
               else ""),
            ("check AWS_SSE and AWS_SSE_KMS_KEY_ID (the key exists and the keys may use it)",),
        )  # fmt: skip
    if code == "NotImplemented":
        return conditional_refused(name, exc)
    if (code == "AccessDenied" or " 403" in reason) and not settings.sse:
        return Check(
            name,
            "FAIL",
            f"{reason}: the IAM policy may lack PutObject, or the bucket policy may require "
            "x-amz-server-side-encryption: then set AWS_SSE (AES256 or aws:kms)",
            failure.hints,
        )
    return failure


def default_retention(s3: S3, bucket: str) -> tuple[str, str]:
    """The bucket's Object Lock default retention ("GOVERNANCE 1 days") or "", and why
    the configuration could not be read ("" when read, or when the bucket has none)."""
    try:
        rule = s3.object_lock(bucket)
    except CopyError as exc:
        return "", exc.reason[:120]
    if not rule:
        return "", ""
    span = f"{rule['Days']} days" if rule.get("Days") else f"{rule.get('Years', '?')} years"
    return f"{rule.get('Mode', '?')} {span}", ""


def remove_probe(s3: S3, bucket: str, key: str, etag: str, lock: tuple[str, str]) -> str:
    retention, unreadable = lock
    if retention:
        return (
            f"probe {key} kept: Object Lock default retention ({retention}) forbids "
            f"deleting it; a lifecycle rule on {PROBE_PREFIX} expires it"
        )
    try:
        s3.delete(bucket, key, etag)
    except CopyError as exc:
        return (
            f"probe {key} not deleted ({exc.reason[:120]}); "
            f"a lifecycle rule on {PROBE_PREFIX} expires it"
        )
    if unreadable:
        # On a versioned bucket the DELETE only hides the probe behind a delete marker.
        return (
            f"probe deleted, but the Object Lock configuration is not readable "
            f"({unreadable}): under a default retention its version stays (grant "
            "s3:GetBucketObjectLockConfiguration)"
        )
    return "probe deleted"


def delete_checks(settings: Settings, read_only: bool) -> list[Check]:
    """MIRROR_DELETE: whether deletes are on, and whether the target credentials may delete
    in each pair's scope: a DELETE of a key that never existed (nothing to lose; on a
    versioned bucket it leaves a delete marker), outside the probe prefix that the README's
    policy lets `check` delete anyway."""
    if not settings.delete:
        return [Check("deletes", "skip", "off (MIRROR_DELETE=false): nothing is deleted")]
    on = (
        f"on (MIRROR_DELETE=true; brake: MIRROR_MAX_DELETE={settings.max_delete}, "
        f"MIRROR_MAX_DELETE_PERCENT={settings.max_delete_percent}%)"
    )
    if read_only:
        return [Check("deletes", "ok", f"{on}; delete permission not probed: --read-only")]
    s3 = S3(settings.target, settings, "target", 4)
    scopes = sorted({(p.target_bucket, p.target_prefix(settings.prefix)) for p in settings.pairs})
    checks = []
    for bucket, scope in scopes:
        where = "/".join(part for part in (bucket, scope) if part)
        name = f".minio-s3-mirror-delete-probe-{uuid.uuid4()}"
        key = f"{scope}/{name}" if scope else name
        try:
            s3.delete(bucket, key)
        except CopyError as exc:
            checks.append(
                Check(
                    f"deletes {where}",
                    "FAIL",
                    f"{on}, but the target credentials may not delete: {exc.reason[:200]}",
                    (
                        "add the opt-in s3:DeleteObject statement to the target policy "
                        "(README: Least-privilege policies), or set MIRROR_DELETE=false",
                    ),
                )
            )
            continue
        checks.append(
            Check(
                f"deletes {where}",
                "ok",
                f"{on}; the target credentials may delete (a DELETE of a key that does not "
                "exist was accepted)",
            )
        )
    return checks


def rabbitmq_check(settings: Settings) -> Check:
    try:
        connection = broker.connect(settings.rabbitmq_url, name="minio-s3-mirror check")
        try:
            topology.declare(connection.channel())
        finally:
            connection.close()
    except Exception as exc:
        return Check(
            "rabbitmq",
            "FAIL",
            f"cannot connect and declare: {exc!r}"[:300],
            ("check RABBITMQ_URL (host, port, user, password, vhost)", "is RabbitMQ running?"),
        )
    return Check("rabbitmq", "ok", "connected, topology declared")


def slack_check(settings: Settings) -> Check:
    if not (settings.slack_token or settings.slack_channel):
        return Check("slack", "skip", "not configured (reports off)")
    web = slack.client(settings)
    if web is None:
        missing = "SLACK_CHANNEL_ID" if settings.slack_token else "SLACK_BOT_TOKEN"
        return Check("slack", "FAIL", f"{missing} is not set", ("set both Slack variables",))
    try:
        answer = web.auth_test()
    except Exception as exc:
        error = getattr(getattr(exc, "response", None), "get", lambda *_: None)("error")
        return Check(
            "slack",
            "FAIL",
            f"auth.test failed: {error or exc}",
            ("check SLACK_BOT_TOKEN (a bot token, xoxb-...)", "the app needs chat:write"),
        )
    return Check("slack", "ok", f"authenticated as {answer.get('user', '?')}")


def mc_checks(settings: Settings, earlier: list[Check]) -> list[Check]:
    """mc, reconcile's copier: its version, then an alias and a listing of every pair's
    bucket on both sides, run as reconcile runs mc (its environment, private config dir,
    CA bundles and flags), so this fails where reconcile would. A bucket whose own check
    failed above is not listed again (one failing part, one FAIL line)."""
    failed = {check.name for check in earlier if check.status == "FAIL"}
    sides = [side for side in mc_endpoints(settings) if " ".join(side) not in failed]
    skipped = [
        Check(f"mc {side} {bucket}", "skip", f"not listed: {side} {bucket} failed above")
        for side, bucket in mc_endpoints(settings)
        if f"{side} {bucket}" in failed
    ]
    try:
        path, version = find_binary(), mc_version()
        probes = mc_probe(settings, sides)
    except McMissing as exc:
        return [Check("mc", "FAIL", str(exc), ("install mc (the image has it) or set MC_BINARY",))]
    except (NoCredentials, NoTempDir, OSError, subprocess.TimeoutExpired) as exc:
        return [Check("mc", "FAIL", str(exc)[:300])]
    checks = [Check("mc", "ok", f"{path}: {version}")]
    for probe in probes:
        hints = () if probe.ok else diagnose(probe.text)[0].hints
        checks.append(Check(probe.name, "ok" if probe.ok else "FAIL", probe.detail, hints))
    return checks + skipped


def clock_checks(settings: Settings) -> list[Check]:
    """How far this host's clock is off each endpoint's (its `Date`): S3 refuses requests
    signed more than 15 minutes off (RequestTimeTooSkewed)."""
    checks = []
    sides = [("source", settings.source, settings.pairs[0].source_bucket)]
    if settings.target is not None:
        sides.append(("target", settings.target, settings.pairs[0].target_bucket))
    for side, endpoint, bucket in sides:
        try:
            offset = S3(endpoint, settings, side, 1).clock_offset(bucket)
        except CopyError:
            continue  # the endpoint's own check says why
        if offset is None:
            continue
        how = f"this host is {abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'}"
        if abs(offset) < CLOCK_WARN_S:
            checks.append(Check(f"clock {side}", "ok", f"{how} the {side}"))
        else:
            checks.append(
                Check(
                    f"clock {side}",
                    "FAIL",
                    f"clock skew: {how} the {side}; S3 refuses requests 15 min off",
                    ("set this host's time right (NTP, chrony)",),
                )
            )
    return checks


def run(settings: Settings, *, read_only: bool) -> list[Check]:
    config = Check("configuration", "ok", f"{len(settings.pairs)} pair(s)")
    checks = [
        config,
        *source_checks(settings),
        *target_checks(settings, read_only),
        *clock_checks(settings),
        *delete_checks(settings, read_only),
        rabbitmq_check(settings),
        slack_check(settings),
    ]
    return checks + mc_checks(settings, checks)


def render(checks: list[Check]) -> str:
    marks = {"ok": "✔", "FAIL": "✘", "skip": "-"}
    lines = []
    for check in checks:
        lines.append(f"{marks[check.status]} {check.status:4} {check.name:24} {check.detail}")
        lines += [f"{'':31} hint: {hint}" for hint in check.hints]
    return "\n".join(lines)
