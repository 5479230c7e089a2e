"""Configuration: the one place that reads, parses and validates the environment.

Every seed variable keeps its name, meaning and default. A bad value raises
ConfigError naming the variable, what was given (secrets masked) and the expected
form; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

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


class ConfigError(ValueError):
    """A user error in the environment: exit code 2, one clear line."""

    def __init__(self, variable: str, given: str | None, expected: str) -> None:
        self.variable = variable
        if given is None:
            text = f"{variable}: not set; expected {expected}"
        else:
            shown = "****" if variable in SECRET_VARIABLES else given
            text = f'{variable}: "{shown}" is not {expected}'
        super().__init__(text)


@dataclass(frozen=True)
class Endpoint:
    """An S3 API endpoint (source MinIO or target S3) and its credentials."""

    url: str
    access_key: str
    secret_key: str = field(repr=False)

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
    tls_verify: bool = True
    ca_bundle: str | None = None
    slack_token: str | None = field(default=None, repr=False)
    slack_channel: str | None = None
    slack_api_url: str | None = None
    rabbitmq_url: str = field(default="amqp://guest:guest@localhost:5672/%2F", repr=False)
    log_format: str = "text"
    listener_mode: str = "stream"
    webhook_token: str | None = field(default=None, repr=False)
    webhook_address: tuple[str, int] = ("0.0.0.0", 8080)
    metrics_address: tuple[str, int] = ("0.0.0.0", 9100)
    digest_interval: int = 300

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_token and self.slack_channel)

    def secrets(self) -> list[str]:
        """Every secret value, so log output can be scrubbed of them."""
        values = [self.source.secret_key, self.slack_token, self.webhook_token]
        values.append(rabbitmq_password(self.rabbitmq_url))
        if self.target:
            values.append(self.target.secret_key)
        return [v for v in values if v]


class _Reader:
    """Reads variables from one mapping; empty strings count as unset (as in the seed)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value.strip() if value is not None and value.strip() else None

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


def parse_positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(name, value, "a positive integer (example: 10)")
    return number


def parse_workers(name: str, value: str) -> int | None:
    return None if value.lower() == "auto" else parse_positive_int(name, value)


def parse_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise ConfigError(name, value, "a URL with scheme and host (example: http://minio:9000)")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(name, value, "a URL with a numeric port") from None
    return f"{parts.scheme}://{parts.netloc}"


def parse_pair(name: str, spec: str) -> BucketPair:
    spec = spec.strip()
    match = _PAIR.match(spec)
    if not match:
        raise ConfigError(name, spec, f"{PAIR_FORM} (example: {PAIR_EXAMPLE})")
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


def parse_prefix(name: str, value: str) -> str:
    return _clean_path(value)


def parse_file(name: str, value: str) -> str:
    if not os.path.isfile(value):
        raise ConfigError(name, value, "a readable file (a PEM CA bundle)")
    return value


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value.lower() not in choices:
            raise ConfigError(name, value, "one of: " + ", ".join(choices))
        return value.lower()

    return parse


def parse_amqp_url(name: str, value: str) -> str:
    if urlsplit(value).scheme not in ("amqp", "amqps") or not urlsplit(value).hostname:
        raise ConfigError(
            name, value, "an AMQP URL (example: amqp://user:password@rabbitmq:5672/%2F)"
        )
    return value


def _endpoint(reader: _Reader, prefix: str, example: str) -> Endpoint:
    url = parse_url(f"{prefix}_URL", reader.required(f"{prefix}_URL", f"a URL like {example}"))
    return Endpoint(
        url=url,
        access_key=reader.required(f"{prefix}_ACCESS_KEY", "the access key"),
        secret_key=reader.required(f"{prefix}_SECRET_KEY", "the secret key"),
    )


def load(environ: Mapping[str, str] | None = None, *, need_target: bool = True) -> Settings:
    """Parse the environment into Settings, or raise ConfigError on the first bad value."""
    env = _Reader(os.environ if environ is None else environ)
    return Settings(
        service=env.raw("SERVICE") or "minio-s3-mirror",
        source=_endpoint(env, "MINIO", "http://minio:9000"),
        target=_endpoint(env, "AWS", "https://s3.ap-northeast-2.amazonaws.com")
        if need_target
        else None,
        pairs=parse_pairs(env),
        exclude=env.get("MIRROR_EXCLUDE", parse_patterns, ()),
        max_workers=env.get("MIRROR_MAX_WORKERS", parse_workers, None),
        max_pairs=env.get("MIRROR_MAX_PAIRS", parse_positive_int, 3),
        dry_run=env.get("MIRROR_DRY_RUN", parse_bool, False),
        skip_errors=env.get("MIRROR_SKIP_ERRORS", parse_bool, True),
        debug=env.get("MIRROR_DEBUG", parse_bool, False),
        prefix=env.get("MIRROR_PREFIX", parse_prefix, ""),
        overwrite=env.get("MIRROR_OVERWRITE", parse_bool, True),
        aws_region=env.raw("AWS_REGION"),
        tls_verify=env.get("MIRROR_TLS_VERIFY", parse_bool, True),
        ca_bundle=env.get("MIRROR_CA_BUNDLE", parse_file, None),
        slack_token=env.raw("SLACK_BOT_TOKEN"),
        slack_channel=env.raw("SLACK_CHANNEL_ID"),
        slack_api_url=env.get("SLACK_API_URL", parse_url_with_path, None),
        rabbitmq_url=env.get(
            "RABBITMQ_URL", parse_amqp_url, "amqp://guest:guest@localhost:5672/%2F"
        ),
        log_format=env.get("MIRROR_LOG_FORMAT", parse_choice("text", "json"), "text"),
        listener_mode=env.get("LISTENER_MODE", parse_choice("stream", "webhook"), "stream"),
        webhook_token=env.raw("WEBHOOK_AUTH_TOKEN"),
        webhook_address=env.get("WEBHOOK_ADDRESS", parse_address, ("0.0.0.0", 8080)),
        metrics_address=env.get("METRICS_ADDRESS", parse_address, ("0.0.0.0", 9100)),
        digest_interval=env.get("MIRROR_DIGEST_INTERVAL", parse_positive_int, 300),
    )


def parse_url_with_path(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, value, "a URL (example: https://slack.com/api/)")
    return value if value.endswith("/") else value + "/"


def parse_address(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, value, "a listen address host:port (example: 0.0.0.0:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def rabbitmq_password(url: str) -> str | None:
    return urlsplit(url).password
