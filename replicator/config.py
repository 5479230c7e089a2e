"""Configuration: the one place that reads, parses and validates the environment.

Every seed variable keeps its name, meaning and default. A bad value raises
ConfigError naming the variable, what was given (secrets masked) and the expected
form; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

T = TypeVar("T")

SOURCE_ALIAS = "minio"
TARGET_ALIAS = "aws"
PAIR_FORM = "<alias>/<bucket>[/path]:<alias>/<bucket>[/path]"
PAIR_EXAMPLE = "minio/source:aws/destination"
SECRET_VARIABLES = frozenset(
    {
        "MINIO_SECRET_KEY",
        "AWS_SECRET_KEY",
        "SLACK_BOT_TOKEN",
        "WEBHOOK_AUTH_TOKEN",
        "RABBITMQ_URL",
        "AWS_SESSION_TOKEN",
    }
)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# S3 allows [a-z0-9.-]; MinIO and legacy AWS buckets are looser, so the server has the
# last word and this only catches what can never be a bucket.
_BUCKET = r"[A-Za-z0-9][A-Za-z0-9._-]{2,62}"
_PAIR = re.compile(
    rf"^(?P<sa>[^/:]+)/(?P<sb>{_BUCKET})(?:/(?P<sp>[^:]*))?"
    rf":(?P<ta>[^/:]+)/(?P<tb>{_BUCKET})(?:/(?P<tp>[^:]*))?$"
)


# Upper bounds: beyond them a value is a typo, and some would crash far from here
# (AMQP prefetch is 16-bit, timers overflow), so they are refused up front.
MAX_WORKERS = 256
MAX_PAIRS = 64
MAX_INTERVAL_S = 86_400
RECONCILE_TIMEOUT_S = 6 * 3600  # MIRROR_RECONCILE_TIMEOUT; the CronJob's deadline is above it
MAX_RECONCILE_TIMEOUT_S = 7 * 86_400
RETRY_DELAYS_S = (5, 30, 120, 600)  # MIRROR_RETRY_DELAYS: the delayed-retry tiers
MAX_DELETE = 1000
MAX_DELETE_PERCENT = 10
HOLD_MAX_S = 300  # MIRROR_HOLD_MAX: longest one task waits in a thread for a down endpoint
READ_TIMEOUT_S = 60  # MIRROR_READ_TIMEOUT: longest wait for the next bytes of an S3 answer
SHOWN_MAX = 200  # characters of a bad value repeated in its message
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")  # ASCII digits only: int() also takes "٣" and "1_0"
# `scheme://userinfo@` anywhere in a value, and (in URL variables) a bare `userinfo@host`.
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/?#\s]*)@")
_BARE_USERINFO = re.compile(r"^(?P<head>)(?P<info>[^/?#\s]*)@")
# Segments MinIO refuses in object names, so a prefix holding them can never match a key.
_BAD_SEGMENTS = {".", ".."}
# botocore's own check: anything else fails when the first client is made.
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|[0-9A-Fa-f:.]{2,45}")


def _mask_info(match: re.Match[str]) -> str:
    user, sep, _ = match["info"].partition(":")
    return f"{match['head']}{user}:****@" if sep else f"{match['head']}****@"


def mask(value: str, *, url: bool = False) -> str:
    """`value` with every URL password (or lone userinfo, often a token) shown as ****.

    `url=True` also masks a `user:password@host` written without a scheme.
    """
    masked = _URL_USERINFO.sub(_mask_info, value)
    if url and masked == value:
        masked = _BARE_USERINFO.sub(_mask_info, value)
    return masked


def shown(variable: str, value: str) -> str:
    """How a given value may appear in a message: secrets masked, printable."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    is_url = variable.endswith(("_URL", "_URLS"))
    masked = mask(value, url=is_url)
    if variable in SECRET_VARIABLES and not (is_url and masked != value):
        return "****"
    return masked if len(masked) <= SHOWN_MAX else masked[:SHOWN_MAX] + "..."


class ConfigError(ValueError):
    """A user error in the environment: exit code 2, one clear line."""

    def __init__(self, variable: str, given: str | None, expected: str) -> None:
        self.variable = variable
        if given is None:
            text = f"{variable}: not set; expected {expected}"
        else:
            text = f'{variable}: "{shown(variable, given)}" is not {expected}'
        super().__init__(text)


@dataclass(frozen=True)
class Endpoint:
    """An S3 API endpoint (source MinIO or target S3) and its credentials."""

    url: str
    access_key: str  # "" with secret_key "": the AWS credential chain (target only)
    secret_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)

    @property
    def static(self) -> bool:
        """Whether credentials are given here (else the standard AWS chain finds them)."""
        return bool(self.access_key)

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def _clean_path(path: str | None) -> str:
    return "/".join(part for part in (path or "").split("/") if part)


@dataclass(frozen=True)
class BucketPair:
    """One `minio/<bucket>[/path]:aws/<bucket>[/path]` pair; paths have no outer slashes."""

    source_bucket: str
    target_bucket: str
    source_path: str = ""
    target_path: str = ""

    def __str__(self) -> str:
        src = "/".join(p for p in (SOURCE_ALIAS, self.source_bucket, self.source_path) if p)
        dst = "/".join(p for p in (TARGET_ALIAS, self.target_bucket, self.target_path) if p)
        return f"{src}:{dst}"

    def source_prefix(self, prefix: str = "") -> str:
        """The source key prefix this pair covers, narrowed by MIRROR_PREFIX."""
        return _clean_path(f"{self.source_path}/{prefix}")

    def target_prefix(self, prefix: str = "") -> str:
        return _clean_path(f"{self.target_path}/{prefix}")

    def target_key(self, source_key: str) -> str:
        """Map a source key under source_path to its key under target_path."""
        rest = source_key[len(self.source_path) + 1 :] if self.source_path else source_key
        return f"{self.target_path}/{rest}" if self.target_path else rest


@dataclass(frozen=True)
class Settings:
    service: str
    source: Endpoint
    target: Endpoint | None
    pairs: tuple[BucketPair, ...]
    exclude: tuple[str, ...] = ()
    max_workers: int | None = None
    max_pairs: int = 3
    dry_run: bool = False
    skip_errors: bool = True
    debug: bool = False
    prefix: str = ""
    overwrite: bool = True
    aws_region: str | None = None
    minio_region: str = "us-east-1"  # MINIO_REGION: the source's, signed into its requests
    tls_verify: bool = True
    ca_bundle: str | None = None  # MIRROR_CA_BUNDLE: CAs trusted for both sides (added)
    source_ca_bundle: str | None = None  # MINIO_CA_BUNDLE: added for the source
    target_ca_bundle: str | None = None  # AWS_CA_BUNDLE: added for the target
    read_timeout_s: int = READ_TIMEOUT_S
    slack_token: str | None = field(default=None, repr=False)
    slack_channel: str | None = None
    slack_api_url: str | None = None
    rabbitmq_url: str = field(default="amqp://guest:guest@localhost:5672/%2F", repr=False)
    log_format: str = "text"
    listener_mode: str = "stream"
    webhook_token: str | None = field(default=None, repr=False)
    webhook_address: tuple[str, int] = ("0.0.0.0", 8080)
    webhook_read_timeout: int = 30  # s; above MinIO's 15 s idle-connection timeout
    webhook_max_connections: int = 128
    metrics_address: tuple[str, int] = ("0.0.0.0", 9100)
    pushgateway_url: str | None = None  # MIRROR_PUSHGATEWAY_URL: reconcile pushes its result
    rabbitmq_management_url: str | None = None  # RABBITMQ_MANAGEMENT_URL: status reads unacked
    digest_interval: int = 300
    reconcile_timeout_s: int = RECONCILE_TIMEOUT_S
    retry_delays: tuple[int, ...] = RETRY_DELAYS_S
    hold_max_s: int = HOLD_MAX_S
    storage_class: str | None = None  # AWS_STORAGE_CLASS
    sse: str | None = None  # AWS_SSE: AES256 | aws:kms
    sse_kms_key_id: str | None = None
    copy_tags: bool = True  # MIRROR_COPY_TAGS
    delete: bool = False  # MIRROR_DELETE: off, as the seed promised (nothing deleted)
    max_delete: int = MAX_DELETE  # MIRROR_MAX_DELETE: a batch deleting more is refused
    max_delete_percent: int = MAX_DELETE_PERCENT  # MIRROR_MAX_DELETE_PERCENT of the target

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_token and self.slack_channel)

    def secrets(self) -> list[str]:
        """Every secret value, so log output can be scrubbed of them."""
        values = [self.source.secret_key, self.slack_token, self.webhook_token]
        values += rabbitmq_passwords(self.rabbitmq_url)
        if self.target:
            values += [self.target.secret_key, self.target.session_token]
        return [v for v in values if v]


class _Reader:
    """Reads variables from one mapping; empty strings count as unset (as in the seed)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or not value.strip():
            return None
        try:
            value.encode("utf-8")  # undecodable bytes arrive as lone surrogates
        except UnicodeEncodeError:
            raise ConfigError(name, value, "valid UTF-8 text") from None
        if "\0" in value:
            raise ConfigError(name, value.replace("\0", "\\0"), "text without NUL characters")
        return value.strip()

    def required(self, name: str, expected: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(name, None, expected)
        return value

    def get(self, name: str, parse: Callable[[str, str], T], default: T) -> T:
        value = self.raw(name)
        return default if value is None else parse(name, value)


def parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, value, "a boolean (true or false)")


def parse_int_range(low: int, high: int, example: int) -> Callable[[str, str], int]:
    """A parser for a whole number in [low, high] (ASCII digits; no NaN, no 1e3)."""

    def parse(name: str, value: str) -> int:
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise ConfigError(name, value, f"an integer from {low} to {high} (example: {example})")
        return int(value)

    return parse


_DURATION = re.compile(r"(?:[0-9]+[dhms])+|[0-9]+")
_UNIT_S = {"d": 86_400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_duration(low: int, high: int, example: str) -> Callable[[str, str], int]:
    """A parser for a duration in whole seconds within [low, high]: `90`, `45m`, `1h30m`."""

    def parse(name: str, value: str) -> int:
        text = value.lower()
        seconds = -1
        if _DURATION.fullmatch(text):
            parts = re.findall(r"([0-9]+)([dhms]?)", text)
            seconds = sum(int(n) * _UNIT_S[unit] for n, unit in parts)
        if not low <= seconds <= high:
            raise ConfigError(
                name,
                value,
                f"a duration from {low}s to {high // 86_400}d: seconds or with a unit s, m, h, d "
                f"(example: {example})",
            )
        return seconds

    return parse


def parse_workers(name: str, value: str) -> int | None:
    if value.lower() == "auto":
        return None
    try:
        return parse_int_range(1, MAX_WORKERS, 10)(name, value)
    except ConfigError:
        raise ConfigError(
            name, value, f"auto or an integer from 1 to {MAX_WORKERS} (example: 10)"
        ) from None


def _split_url(name: str, value: str, schemes: tuple[str, ...], expected: str) -> SplitResult:
    """urlsplit with every way a URL can be unusable turned into a ConfigError."""
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL": no value
        raise ConfigError(name, value, f"{expected} ({exc})") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ConfigError(name, value, expected)
    if not parts.hostname.isascii() or not _HOST.fullmatch(parts.hostname):
        raise ConfigError(name, value, f"{expected}; the host must be ASCII (punycode for IDN)")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(name, value, f"{expected}; the port must be 1 to 65535")
    return parts


def parse_url(name: str, value: str) -> str:
    expected = "a URL with scheme and host (example: http://minio:9000)"
    parts = _split_url(name, value, ("http", "https"), expected)
    if parts.path.strip("/"):
        raise ConfigError(name, value, expected)
    if "@" in parts.netloc:
        side = name.removesuffix("_URL")
        raise ConfigError(
            name,
            value,
            f"a URL without user:password@ (credentials go in {side}_ACCESS_KEY and "
            f"{side}_SECRET_KEY)",
        )
    return f"{parts.scheme.lower()}://{parts.netloc}"


def parse_pair(name: str, spec: str) -> BucketPair:
    spec = spec.strip()
    match = _PAIR.match(spec)
    if not match:
        raise ConfigError(name, spec, f"{PAIR_FORM} (example: {PAIR_EXAMPLE})")
    for path in (match["sp"] or "", match["tp"] or ""):
        if any(segment in _BAD_SEGMENTS for segment in path.split("/")):
            raise ConfigError(name, spec, f"{PAIR_FORM} with no '.' or '..' path segments")
    for side, alias in (("sa", SOURCE_ALIAS), ("ta", TARGET_ALIAS)):
        if match[side] != alias:
            where = "left (source)" if side == "sa" else "right (target)"
            raise ConfigError(
                name,
                spec,
                f"valid: the {where} alias must be '{alias}' (example: {PAIR_EXAMPLE})",
            )
    return BucketPair(
        source_bucket=match["sb"],
        target_bucket=match["tb"],
        source_path=_clean_path(match["sp"]),
        target_path=_clean_path(match["tp"]),
    )


def parse_pairs(reader: _Reader) -> tuple[BucketPair, ...]:
    """BUCKET_PAIR and BUCKET_PAIRS together: both are mirrored, duplicates once."""
    pairs: list[BucketPair] = []
    single = reader.raw("BUCKET_PAIR")
    if single:
        pairs.append(parse_pair("BUCKET_PAIR", single))
    many = reader.raw("BUCKET_PAIRS")
    for spec in (many or "").split(";"):
        if spec.strip():
            pairs.append(parse_pair("BUCKET_PAIRS", spec))
    if not pairs:
        raise ConfigError(
            "BUCKET_PAIR",
            None,
            f"BUCKET_PAIR or BUCKET_PAIRS (example: {PAIR_EXAMPLE}; several separated by ';')",
        )
    return tuple(dict.fromkeys(pairs))


def parse_patterns(name: str, value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def check_key_path(name: str, value: str, what: str) -> None:
    """Refuse a prefix or pair path that can never be part of a MinIO object key."""
    if "\0" in value:
        raise ConfigError(name, value.replace("\0", "\\0"), f"{what} (no NUL characters)")
    if any(segment in _BAD_SEGMENTS for segment in value.split("/")):
        raise ConfigError(name, value, f"{what} (no '.' or '..' segments)")


def parse_prefix(name: str, value: str) -> str:
    expected = "a folder relative to the bucket: 2025/01/22 means 2025/01/22/ (example: 2025/01/22)"
    if value.startswith("/"):
        raise ConfigError(name, value, f"{expected}, without a leading '/'")
    check_key_path(name, value, expected)
    return _clean_path(value)


def parse_region(name: str, value: str) -> str:
    if not _REGION.fullmatch(value):
        raise ConfigError(name, value, "an AWS region name (example: ap-northeast-2)")
    return value


def parse_access_key(name: str, value: str) -> str:
    # It travels in the Authorization header (latin-1) and in mc's MC_HOST_ URL.
    if not re.fullmatch(r"[!-~]+", value):
        raise ConfigError(name, value, "an access key of printable ASCII characters")
    return value


def parse_token(name: str, value: str) -> str:
    if not re.fullmatch(r"[!-~]+", value):
        raise ConfigError(name, value, "a token of printable ASCII characters without spaces")
    return value


def parse_file(name: str, value: str) -> str:
    if not os.path.isfile(value):
        raise ConfigError(name, value, "a readable file (a PEM CA bundle)")
    return value


def parse_ca_bundle(name: str, value: str) -> str:
    """A file of PEM CA certificates that OpenSSL can load."""
    parse_file(name, value)
    try:
        ssl.create_default_context(cafile=value)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(name, value, f"a PEM CA bundle ({exc.strerror or exc})") from None
    return value


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value.lower() not in choices:
            raise ConfigError(name, value, "one of: " + ", ".join(choices))
        return value.lower()

    return parse


def parse_amqp_url(name: str, value: str) -> str:
    """One AMQP URL, or several nodes of one cluster separated by commas (tried in order)."""
    expected = (
        "an AMQP URL, or several nodes' URLs separated by commas "
        "(example: amqp://user:password@rabbitmq:5672/%2F)"
    )
    import pika  # its own parser has the last word (query options, vhost, ...)

    for url in value.split(","):
        if not url.strip():
            raise ConfigError(name, value, f"{expected}; one of the URLs is empty")
        _split_url(name, url.strip(), ("amqp", "amqps"), expected)
        try:
            pika.URLParameters(url.strip())
        except Exception as exc:  # pika raises ValueError, TypeError, KeyError ...
            problem = mask(str(exc), url=True)
            raise ConfigError(name, value, f"{expected}: {problem}") from None
    return value


def _endpoint(reader: _Reader, prefix: str, example: str) -> Endpoint:
    url = parse_url(f"{prefix}_URL", reader.required(f"{prefix}_URL", f"a URL like {example}"))
    key, secret = reader.raw(f"{prefix}_ACCESS_KEY"), reader.raw(f"{prefix}_SECRET_KEY")
    if prefix == "AWS" and key is None and secret is None:
        # Neither static key: the standard AWS chain (environment, profile, web identity
        # / IRSA, container and instance metadata) finds the credentials.
        return Endpoint(url=url, access_key="", secret_key="")
    return Endpoint(
        url=url,
        access_key=parse_access_key(
            f"{prefix}_ACCESS_KEY", reader.required(f"{prefix}_ACCESS_KEY", "the access key")
        ),
        secret_key=reader.required(f"{prefix}_SECRET_KEY", "the secret key"),
        session_token=reader.get("AWS_SESSION_TOKEN", parse_token, "") if prefix == "AWS" else "",
    )


STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "EXPRESS_ONEZONE",
)
_AWS_HOST = re.compile(
    r"(?:.+\.)?s3[.-](?:dualstack\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9])\.amazonaws\.com(?:\.cn)?"
)


def region_of(url: str) -> str | None:
    """The region an AWS S3 endpoint URL names (`https://s3.ap-northeast-2.amazonaws.com`)."""
    match = _AWS_HOST.fullmatch(urlsplit(url).hostname or "")
    return match.group("region") if match else None


def parse_upper_choice(*choices: str) -> Callable[[str, str], str]:
    """One of `choices`, spelled as AWS spells it (case-insensitive input)."""

    def parse(name: str, value: str) -> str:
        chosen = {c.upper(): c for c in choices}.get(value.upper())
        if chosen is None:
            raise ConfigError(name, value, "one of: " + ", ".join(choices))
        return chosen

    return parse


def _encryption(env: _Reader) -> tuple[str | None, str | None]:
    sse = env.get("AWS_SSE", parse_upper_choice("AES256", "aws:kms"), None)
    key = env.get("AWS_SSE_KMS_KEY_ID", parse_token, None)
    if key and sse != "aws:kms":
        raise ConfigError("AWS_SSE_KMS_KEY_ID", key, "used only with AWS_SSE=aws:kms")
    return sse, key


def load(environ: Mapping[str, str] | None = None, *, need_target: bool = True) -> Settings:
    """Parse the environment into Settings, or raise ConfigError on the first bad value."""
    env = _Reader(os.environ if environ is None else environ)
    sse, sse_kms_key_id = _encryption(env)
    example = "https://s3.ap-northeast-2.amazonaws.com"
    target = _endpoint(env, "AWS", example) if need_target else None
    region = env.get("AWS_REGION", parse_region, None) or (target and region_of(target.url))
    return Settings(
        service=env.raw("SERVICE") or "minio-s3-mirror",
        source=_endpoint(env, "MINIO", "http://minio:9000"),
        target=target,
        pairs=parse_pairs(env),
        exclude=env.get("MIRROR_EXCLUDE", parse_patterns, ()),
        max_workers=env.get("MIRROR_MAX_WORKERS", parse_workers, None),
        max_pairs=env.get("MIRROR_MAX_PAIRS", parse_int_range(1, MAX_PAIRS, 5), 3),
        dry_run=env.get("MIRROR_DRY_RUN", parse_bool, False),
        skip_errors=env.get("MIRROR_SKIP_ERRORS", parse_bool, True),
        debug=env.get("MIRROR_DEBUG", parse_bool, False),
        prefix=env.get("MIRROR_PREFIX", parse_prefix, ""),
        overwrite=env.get("MIRROR_OVERWRITE", parse_bool, True),
        aws_region=region or None,
        minio_region=env.get("MINIO_REGION", parse_region, "us-east-1"),
        tls_verify=env.get("MIRROR_TLS_VERIFY", parse_bool, True),
        ca_bundle=env.get("MIRROR_CA_BUNDLE", parse_ca_bundle, None),
        source_ca_bundle=env.get("MINIO_CA_BUNDLE", parse_ca_bundle, None),
        target_ca_bundle=env.get("AWS_CA_BUNDLE", parse_ca_bundle, None),
        read_timeout_s=env.get(
            "MIRROR_READ_TIMEOUT", parse_duration(1, 86_400, "60"), READ_TIMEOUT_S
        ),
        slack_token=env.get("SLACK_BOT_TOKEN", parse_token, None),
        slack_channel=env.raw("SLACK_CHANNEL_ID"),
        slack_api_url=env.get("SLACK_API_URL", parse_url_with_path, None),
        rabbitmq_url=env.get(
            "RABBITMQ_URL", parse_amqp_url, "amqp://guest:guest@localhost:5672/%2F"
        ),
        log_format=env.get("MIRROR_LOG_FORMAT", parse_choice("text", "json"), "text"),
        listener_mode=env.get("LISTENER_MODE", parse_choice("stream", "webhook"), "stream"),
        webhook_token=env.get("WEBHOOK_AUTH_TOKEN", parse_token, None),
        webhook_address=env.get("WEBHOOK_ADDRESS", parse_address, ("0.0.0.0", 8080)),
        webhook_read_timeout=env.get("WEBHOOK_READ_TIMEOUT", parse_int_range(1, 3600, 30), 30),
        webhook_max_connections=env.get(
            "WEBHOOK_MAX_CONNECTIONS", parse_int_range(1, 10_000, 128), 128
        ),
        metrics_address=env.get("METRICS_ADDRESS", parse_address, ("0.0.0.0", 9100)),
        pushgateway_url=env.get("MIRROR_PUSHGATEWAY_URL", parse_url_with_path, None),
        rabbitmq_management_url=env.get("RABBITMQ_MANAGEMENT_URL", parse_management_url, None),
        digest_interval=env.get(
            "MIRROR_DIGEST_INTERVAL", parse_int_range(1, MAX_INTERVAL_S, 900), 300
        ),
        reconcile_timeout_s=env.get(
            "MIRROR_RECONCILE_TIMEOUT",
            parse_duration(1, MAX_RECONCILE_TIMEOUT_S, "6h"),
            RECONCILE_TIMEOUT_S,
        ),
        retry_delays=env.get("MIRROR_RETRY_DELAYS", parse_delays, RETRY_DELAYS_S),
        hold_max_s=env.get("MIRROR_HOLD_MAX", parse_duration(1, 86_400, "5m"), HOLD_MAX_S),
        storage_class=env.get("AWS_STORAGE_CLASS", parse_upper_choice(*STORAGE_CLASSES), None),
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        copy_tags=env.get("MIRROR_COPY_TAGS", parse_bool, True),
        delete=env.get("MIRROR_DELETE", parse_bool, False),
        max_delete=env.get("MIRROR_MAX_DELETE", parse_int_range(0, 10_000_000, 500), MAX_DELETE),
        max_delete_percent=env.get(
            "MIRROR_MAX_DELETE_PERCENT", parse_int_range(0, 100, 20), MAX_DELETE_PERCENT
        ),
    )


def parse_delays(name: str, value: str) -> tuple[int, ...]:
    """Delayed-retry tiers: 1 to 10 increasing durations, each 1s to 1d (`5,30,2m,10m`)."""
    expected = "1 to 10 increasing delays, each 1s to 1d, comma-separated (example: 5,30,2m,10m)"
    one = parse_duration(1, 86_400, "30")
    try:
        delays = tuple(one(name, part.strip()) for part in value.split(","))
    except ConfigError:
        raise ConfigError(name, value, expected) from None
    if not 1 <= len(delays) <= 10 or list(delays) != sorted(set(delays)):
        raise ConfigError(name, value, expected)
    return delays


def parse_management_url(name: str, value: str) -> str:
    """RabbitMQ's management API; its user and password are RABBITMQ_URL's."""
    expected = "a URL without user:password@ (example: http://rabbitmq:15672/)"
    parts = _split_url(name, value, ("http", "https"), expected)
    if "@" in parts.netloc:
        raise ConfigError(name, value, expected + "; the login is RABBITMQ_URL's")
    return value.rstrip("/")


def parse_url_with_path(name: str, value: str) -> str:
    _split_url(name, value, ("http", "https"), "a URL (example: https://slack.com/api/)")
    return value if value.endswith("/") else value + "/"


def parse_address(name: str, value: str) -> tuple[str, int]:
    expected = "a listen address host:port, port 1 to 65535 (example: 0.0.0.0:8080)"
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ConfigError(name, value, expected)
    if host and not _HOST.fullmatch(host):
        raise ConfigError(name, value, expected)
    return host or "0.0.0.0", int(port)


def rabbitmq_password(url: str) -> str | None:
    """The password of RABBITMQ_URL (of its first URL that has one, for a node list)."""
    return next(filter(None, rabbitmq_passwords(url)), None)


def rabbitmq_passwords(url: str) -> list[str | None]:
    """The password of every URL in RABBITMQ_URL (several nodes separated by commas)."""
    return [urlsplit(one.strip()).password for one in url.split(",")]


# --- The variables, declared once: docs/configuration.md is generated from this table
# (`python -m replicator.configdoc`), and tests/docs/test_configuration.py fails when the
# page, this table or the variables the code reads disagree.

ALL_COMMANDS = ("reconcile", "listen", "work", "backfill", "dlq", "check", "status")
_S3 = ("reconcile", "work", "backfill", "check", "status")  # commands that talk to S3


@dataclass(frozen=True)
class Variable:
    """One environment variable as the documentation gives it."""

    name: str
    default: str  # as a user reads it: "required", "off", "`3`", ...
    form: str  # accepted values and range
    commands: tuple[str, ...]  # the commands it changes
    meaning: str  # one line
    section: str
    secret: bool = False
    seed: bool = False  # documented by the original tool: same name, meaning, default
    standard: bool = False  # a standard name, also read by libraries (botocore, urllib3, Go)


def _v(name, default, form, commands, meaning, section, **flags) -> Variable:
    return Variable(name, default, form, tuple(commands), meaning, section, **flags)


_SRC, _DST, _PAIRS, _REC = "Source (MinIO)", "Target (S3)", "Pairs and filters", "Reconcile"
_EVT, _MQ, _OBS, _DEL, _NET = (
    "Event-driven (listen, work)",
    "RabbitMQ",
    "Logs, Slack and metrics",
    "Deletes (opt-in)",
    "TLS and network",
)
_AWS = "AWS credential chain (standard names)"
SECTION_ORDER = (_SRC, _DST, _PAIRS, _REC, _EVT, _MQ, _DEL, _OBS, _NET, _AWS)

VARIABLES: tuple[Variable, ...] = (
    _v(
        "SERVICE",
        "`minio-s3-mirror`",
        "text",
        ALL_COMMANDS,
        "name shown in logs and Slack",
        _OBS,
        seed=True,
    ),
    _v(
        "MINIO_URL",
        "required",
        "URL with scheme, no path (`http://minio:9000`)",
        ALL_COMMANDS,
        "source MinIO endpoint",
        _SRC,
        seed=True,
    ),
    _v(
        "MINIO_ACCESS_KEY",
        "required",
        "printable ASCII",
        ALL_COMMANDS,
        "source access key",
        _SRC,
        seed=True,
    ),
    _v(
        "MINIO_SECRET_KEY",
        "required",
        "text",
        ALL_COMMANDS,
        "source secret key",
        _SRC,
        secret=True,
        seed=True,
    ),
    _v(
        "MINIO_REGION",
        "`us-east-1`",
        "region name",
        _S3,
        "region the source signs requests for",
        _SRC,
    ),
    _v(
        "AWS_URL",
        "required",
        "URL with scheme, no path (`https://s3.ap-northeast-2.amazonaws.com`)",
        _S3,
        "target S3 endpoint",
        _DST,
        seed=True,
    ),
    _v(
        "AWS_ACCESS_KEY",
        "the AWS credential chain",
        "printable ASCII; set with `AWS_SECRET_KEY` or neither",
        _S3,
        "target access key",
        _DST,
        seed=True,
    ),
    _v(
        "AWS_SECRET_KEY",
        "the AWS credential chain",
        "text; set with `AWS_ACCESS_KEY` or neither",
        _S3,
        "target secret key",
        _DST,
        secret=True,
        seed=True,
    ),
    _v(
        "AWS_SESSION_TOKEN",
        "none",
        "printable ASCII",
        _S3,
        "session token of temporary target keys",
        _DST,
        secret=True,
        standard=True,
    ),
    _v(
        "AWS_REGION",
        "from an AWS `AWS_URL`, else `us-east-1`",
        "region name (`ap-northeast-2`)",
        _S3,
        "region the target signs requests for",
        _DST,
        standard=True,
    ),
    _v(
        "AWS_STORAGE_CLASS",
        "the bucket's default",
        "`STANDARD`, `REDUCED_REDUNDANCY`, `STANDARD_IA`, `ONEZONE_IA`, "
        "`INTELLIGENT_TIERING`, `GLACIER`, `GLACIER_IR`, `DEEP_ARCHIVE`, `EXPRESS_ONEZONE`",
        ("reconcile", "work", "backfill", "check"),
        "storage class of every target write",
        _DST,
    ),
    _v(
        "AWS_SSE",
        "none (the bucket's default)",
        "`AES256` or `aws:kms`",
        ("reconcile", "work", "backfill", "check"),
        "server-side encryption of every target write",
        _DST,
    ),
    _v(
        "AWS_SSE_KMS_KEY_ID",
        "the account's `aws/s3` key",
        "KMS key id (only with `AWS_SSE=aws:kms`)",
        ("reconcile", "work", "backfill", "check"),
        "KMS key for `AWS_SSE=aws:kms`",
        _DST,
    ),
    _v(
        "BUCKET_PAIR",
        "one of the two",
        "`minio/<bucket>[/path]:aws/<bucket>[/path]`",
        ALL_COMMANDS,
        "one pair",
        _PAIRS,
        seed=True,
    ),
    _v(
        "BUCKET_PAIRS",
        "one of the two",
        "pairs separated by `;`",
        ALL_COMMANDS,
        "several pairs (with `BUCKET_PAIR`, both are mirrored)",
        _PAIRS,
        seed=True,
    ),
    _v(
        "MIRROR_PREFIX",
        "none",
        "a folder without a leading `/` (`2025/01/22` means `2025/01/22/`)",
        ("reconcile", "listen", "work", "backfill"),
        "only this folder in every pair (cost scoping)",
        _PAIRS,
        seed=True,
    ),
    _v(
        "MIRROR_EXCLUDE",
        "none",
        "comma-separated globs, mc `--exclude` semantics (`*.tmp,*.log`)",
        ("reconcile", "listen", "work", "backfill"),
        "keys to skip",
        _PAIRS,
        seed=True,
    ),
    _v(
        "MIRROR_MAX_WORKERS",
        "`auto` (reconcile: mc sizes its own transfers, a number the copy engine's threads "
        "for changed objects; work: fitted to the link: starts at 8 copies at once, at most 64)",
        "`auto` or 1 to 256",
        ("reconcile", "work", "backfill"),
        "parallel transfers",
        _REC,
        seed=True,
    ),
    _v(
        "MIRROR_DRY_RUN",
        "`false`",
        "boolean",
        ("reconcile",),
        "list what would be copied, copy nothing",
        _REC,
        seed=True,
    ),
    _v(
        "MIRROR_SKIP_ERRORS",
        "`true`",
        "boolean",
        ("reconcile",),
        "continue past per-object errors",
        _REC,
        seed=True,
    ),
    _v(
        "MIRROR_DEBUG",
        "`false`",
        "boolean",
        ALL_COMMANDS,
        "verbose logs (mc's trace included, secrets never)",
        _OBS,
        seed=True,
    ),
    _v(
        "MIRROR_OVERWRITE",
        "`true`",
        "boolean",
        ("reconcile", "work", "backfill"),
        "replace target objects whose source changed",
        _REC,
    ),
    _v("MIRROR_MAX_PAIRS", "`3`", "1 to 64", ("reconcile",), "pairs reconciled at once", _REC),
    _v(
        "MIRROR_RECONCILE_TIMEOUT",
        "`6h`",
        "duration `1s` to `7d` (`90`, `45m`, `1h30m`)",
        ("reconcile",),
        "longest a reconcile run may take",
        _REC,
    ),
    _v(
        "TMPDIR",
        "`/tmp`",
        "writable directory",
        ("reconcile",),
        "where reconcile's private temporary directory (mc's config, the size ledger) goes",
        _REC,
        standard=True,
    ),
    _v("MC_BINARY", "`mc` on `PATH`", "path", ("reconcile", "check"), "the `mc` executable", _REC),
    _v(
        "MIRROR_COPY_TAGS",
        "`true`",
        "boolean",
        ("reconcile", "work", "backfill"),
        "copy the source object's tags",
        _DST,
    ),
    _v(
        "LISTENER_MODE",
        "`stream`",
        "`stream` or `webhook`",
        ("listen",),
        "ingest mode (`listen --mode` overrides)",
        _EVT,
    ),
    _v(
        "WEBHOOK_AUTH_TOKEN",
        "none (required in webhook mode)",
        "printable ASCII without spaces",
        ("listen",),
        "bearer token MinIO's webhook target sends",
        _EVT,
        secret=True,
    ),
    _v(
        "WEBHOOK_ADDRESS",
        "`0.0.0.0:8080`",
        "host:port",
        ("listen",),
        "where the webhook listener listens",
        _EVT,
    ),
    _v(
        "WEBHOOK_READ_TIMEOUT",
        "`30`",
        "1 to 3600 seconds",
        ("listen",),
        "a silent webhook connection is closed after this",
        _EVT,
    ),
    _v(
        "WEBHOOK_MAX_CONNECTIONS",
        "`128`",
        "1 to 10000",
        ("listen",),
        "webhook connections served at once (beyond: `503`)",
        _EVT,
    ),
    _v(
        "MIRROR_RETRY_DELAYS",
        "`5,30,2m,10m`",
        "1 to 10 increasing durations, each `1s` to `1d`",
        ("work", "status"),
        "delayed-retry tiers",
        _EVT,
    ),
    _v(
        "MIRROR_HOLD_MAX",
        "`5m`",
        "duration `1s` to `1d`",
        ("work",),
        "longest a task waits in its thread for a down endpoint",
        _EVT,
    ),
    _v(
        "RABBITMQ_URL",
        "`amqp://guest:guest@localhost:5672/%2F`",
        "AMQP URL, or several nodes' URLs separated by commas",
        ("listen", "work", "backfill", "dlq", "check", "status", "reconcile"),
        "RabbitMQ (reconcile records its result there when set)",
        _MQ,
        secret=True,
    ),
    _v("MIRROR_LOG_FORMAT", "`text`", "`text` or `json`", ALL_COMMANDS, "log line format", _OBS),
    _v(
        "SLACK_BOT_TOKEN",
        "off",
        "printable ASCII (`xoxb-...`)",
        ("reconcile", "work", "check"),
        "Slack bot token (`chat:write`)",
        _OBS,
        secret=True,
        seed=True,
    ),
    _v(
        "SLACK_CHANNEL_ID",
        "off",
        "channel id (`C0123456`)",
        ("reconcile", "work", "check"),
        "Slack channel",
        _OBS,
        seed=True,
    ),
    _v(
        "SLACK_API_URL",
        "Slack's",
        "URL",
        ("reconcile", "work", "check"),
        "Slack Web API base URL (tests point it at a fake)",
        _OBS,
    ),
    _v(
        "MIRROR_DIGEST_INTERVAL",
        "`300`",
        "1 to 86400 seconds",
        ("work",),
        "seconds between Slack digests of dead letters",
        _OBS,
    ),
    _v(
        "METRICS_ADDRESS",
        "`0.0.0.0:9100`",
        "host:port",
        ("listen", "work"),
        "where `/metrics`, `/healthz`, `/readyz` are served",
        _OBS,
    ),
    _v(
        "MIRROR_PUSHGATEWAY_URL",
        "none",
        "URL",
        ("reconcile",),
        "Prometheus Pushgateway that reconcile pushes its result to",
        _OBS,
    ),
    _v(
        "RABBITMQ_MANAGEMENT_URL",
        "none",
        "URL without credentials (`http://rabbitmq:15672/`)",
        ("status",),
        "RabbitMQ's management API, for the unacked counts `status` shows (login: RABBITMQ_URL's)",
        _MQ,
    ),
    _v(
        "MIRROR_DELETE",
        "`false`",
        "boolean",
        ("reconcile", "work", "check"),
        "delete target copies of objects the source lost",
        _DEL,
    ),
    _v(
        "MIRROR_MAX_DELETE",
        "`1000`",
        "0 to 10000000",
        ("reconcile", "backfill", "check"),
        "brake: a batch delete planning more is refused",
        _DEL,
    ),
    _v(
        "MIRROR_MAX_DELETE_PERCENT",
        "`10`",
        "0 to 100",
        ("reconcile", "backfill", "check"),
        "brake: percentage of the target objects in scope",
        _DEL,
    ),
    _v(
        "MIRROR_READ_TIMEOUT",
        "`60`",
        "duration `1s` to `1d`",
        _S3,
        "longest silence of an S3 answer (a moving transfer never times out)",
        _NET,
    ),
    _v(
        "MIRROR_TLS_VERIFY",
        "`true`",
        "boolean",
        _S3,
        "verify TLS certificates of both endpoints",
        _NET,
    ),
    _v(
        "MIRROR_CA_BUNDLE",
        "none",
        "PEM file",
        _S3,
        "extra CA certificates for both endpoints (added to the system's)",
        _NET,
    ),
    _v("MINIO_CA_BUNDLE", "none", "PEM file", _S3, "extra CA certificates for the source", _NET),
    _v(
        "AWS_CA_BUNDLE",
        "none",
        "PEM file",
        _S3,
        "extra CA certificates for the target",
        _NET,
        standard=True,
    ),
    _v("HTTPS_PROXY", "none", "proxy URL", _S3, "proxy for HTTPS endpoints", _NET, standard=True),
    _v("HTTP_PROXY", "none", "proxy URL", _S3, "proxy for HTTP endpoints", _NET, standard=True),
    _v(
        "NO_PROXY",
        "none",
        "comma-separated hosts",
        _S3,
        "hosts reached without the proxy",
        _NET,
        standard=True,
    ),
    _v(
        "SSL_CERT_FILE",
        "the system's",
        "PEM file",
        _S3,
        "the trusted roots (replaces the system's)",
        _NET,
        standard=True,
    ),
    _v(
        "AWS_ACCESS_KEY_ID",
        "none",
        "access key",
        _S3,
        "chain: static keys when `AWS_ACCESS_KEY` is unset",
        _AWS,
        standard=True,
    ),
    _v(
        "AWS_SECRET_ACCESS_KEY",
        "none",
        "text",
        _S3,
        "chain: their secret",
        _AWS,
        secret=True,
        standard=True,
    ),
    _v(
        "AWS_PROFILE",
        "none",
        "profile name",
        _S3,
        "chain: a profile of `~/.aws`",
        _AWS,
        standard=True,
    ),
    _v(
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "none (IRSA sets it)",
        "path",
        _S3,
        "chain: web identity token (IRSA)",
        _AWS,
        standard=True,
    ),
    _v(
        "AWS_ROLE_ARN",
        "none (IRSA sets it)",
        "role ARN",
        _S3,
        "chain: role assumed with the web identity",
        _AWS,
        standard=True,
    ),
    _v(
        "AWS_ROLE_SESSION_NAME",
        "generated",
        "text",
        _S3,
        "chain: session name of the assumed role",
        _AWS,
        standard=True,
    ),
    _v(
        "AWS_ENDPOINT_URL_STS",
        "the region's STS",
        "URL",
        ("reconcile",),
        "STS endpoint mc asks under IRSA",
        _AWS,
        standard=True,
    ),
)
