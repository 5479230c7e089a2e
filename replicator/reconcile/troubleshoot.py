"""The seed README's troubleshooting causes, and which failure text maps to which."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    title: str
    meaning: str
    hints: tuple[str, ...]


MC_FAILED = Cause(
    "Mirror process closed with code: 1",
    "the mc command failed",
    (
        "check the environment variables (MINIO_URL, AWS_URL, *_ACCESS_KEY, *_SECRET_KEY)",
        "check the pair format (example: minio/bucket-name:aws/bucket-name)",
        "check the network connection",
        "check the credentials' permissions",
    ),
)
UNABLE_TO_STAT_SOURCE = Cause(
    "Unable to stat source",
    "the source bucket cannot be found",
    (
        "check that the bucket name is exact",
        "check that the bucket exists (MinIO console or `mc ls minio`)",
        "check that the access key may read it",
    ),
)
FAILED_TO_SET_ALIAS = Cause(
    "Failed to set alias",
    "cannot connect to MinIO/S3",
    (
        "check the URL format (it must include http:// or https://)",
        "check firewalls and security groups between here and the endpoint",
        "check that the access key and secret key are valid",
    ),
)
UNTRUSTED_CERTIFICATE = Cause(
    "Failed to set alias",
    "the endpoint's TLS certificate is not signed by a CA this machine trusts",
    (
        "for a private CA: MINIO_CA_BUNDLE (source), AWS_CA_BUNDLE (target) or "
        "MIRROR_CA_BUNDLE (both) naming its PEM file",
        "or add the CA to the system store (SSL_CERT_FILE)",
        "check that the certificate names the host in MINIO_URL / AWS_URL",
    ),
)
FAILED_TO_ACCESS_ALIAS = Cause(
    "Failed to access alias",
    "connected, but access is refused",
    (
        "check the bucket's permissions",
        "check the IAM policy (ListBucket, GetObject on the source; PutObject on the target)",
        "check that the bucket exists",
    ),
)
NO_CREDENTIALS = Cause(
    "No target credentials",
    "AWS_ACCESS_KEY and AWS_SECRET_KEY are unset and the standard AWS chain found none",
    (
        "set AWS_ACCESS_KEY and AWS_SECRET_KEY (and AWS_SESSION_TOKEN for temporary keys)",
        "or give the chain credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "a web identity (IRSA) or an instance or container role",
    ),
)
OBJECT_DOES_NOT_EXIST = Cause(
    "Object does not exist",
    "the source object or path cannot be found",
    (
        "check the source bucket path (the path in the pair and MIRROR_PREFIX)",
        "check whether the object was deleted or moved",
    ),
)
TIMED_OUT = Cause(
    "Run timed out",
    "the run reached MIRROR_RECONCILE_TIMEOUT: mc was stopped, or deletes not yet begun were left",
    (
        "raise MIRROR_RECONCILE_TIMEOUT for a large first run (and the CronJob's "
        "activeDeadlineSeconds with it)",
        "scope nightly runs with MIRROR_PREFIX",
        "check the bandwidth between here and both endpoints",
        "the next run copies (and, with MIRROR_DELETE, deletes) what is still left",
    ),
)
DELETES_REFUSED = Cause(
    "Deletes refused",
    "the safety brake stopped this pair's deletes (MIRROR_DELETE): nothing was deleted",
    (
        "an empty source or a failed listing: check the source bucket, prefix and credentials",
        "a plan over MIRROR_MAX_DELETE or MIRROR_MAX_DELETE_PERCENT: check what a dry run "
        "(MIRROR_DRY_RUN=true) lists, then raise the limit for one run if it is intended",
    ),
)
DELETE_FAILED = Cause(
    "Delete failed",
    "the target refused or failed to delete a copy the source no longer has",
    (
        "AccessDenied: the target credentials need s3:DeleteObject (README, opt-in statement)",
        "Object Lock or a bucket policy may refuse deletes by design; the next run tries again",
    ),
)
MC_OUTPUT_UNREADABLE = Cause(
    "mc output not understood",
    "mc printed a record this tool cannot read, so the pair's result is unknown",
    (
        "run the mc version the image pins (`minio-s3-mirror check` shows it)",
        "report the record shown with the error",
    ),
)

# Order matters: a wrong secret on the source also says "Unable to stat source".
_RULES: tuple[tuple[re.Pattern[str], Cause, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cause, detail)
    for pattern, cause, detail in (
        (
            r"SignatureDoesNotMatch|InvalidAccessKeyId|signature we calculated|"
            r"Access Key Id you provided",
            FAILED_TO_SET_ALIAS,
            "credentials rejected",
        ),
        (
            r"x509:|certificate signed by unknown authority|failed to verify certificate",
            UNTRUSTED_CERTIFICATE,
            "certificate not trusted",
        ),
        (
            r"connection refused|no such host|i/o timeout|dial tcp|connection reset|"
            r"server misbehaving|certificate|tls:|Invalid arguments provided|"
            r"network is unreachable|EOF$",
            FAILED_TO_SET_ALIAS,
            "endpoint unreachable",
        ),
        (r"Unable to stat source.*Bucket .* does not exist", UNABLE_TO_STAT_SOURCE, ""),
        (r"Object does not exist|NoSuchKey|key does not exist", OBJECT_DOES_NOT_EXIST, ""),
        (
            r"AccessDenied|Access Denied|NoSuchBucket|bucket does not exist|Unable to initialize",
            FAILED_TO_ACCESS_ALIAS,
            "",
        ),
    )
)


def diagnose(text: str) -> tuple[Cause, str]:
    """The seed cause for a failure's text, plus a short detail (may be empty)."""
    for pattern, cause, detail in _RULES:
        if pattern.search(text):
            return cause, detail
    return MC_FAILED, ""
