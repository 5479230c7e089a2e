"""Logging setup: text or JSON lines on stderr, with every known secret scrubbed."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

# Fields a log call may pass in `extra=` that JSON lines carry as their own keys.
CONTEXT_FIELDS = ("pair", "bucket", "key", "origin", "attempt", "outcome", "latency_s")


class Scrubber(logging.Filter):
    """Replaces secret values in the rendered message, whatever code logged them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            message = message.replace(secret, "****")
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "****")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({f: getattr(record, f) for f in CONTEXT_FIELDS if hasattr(record, f)})
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def setup(*, debug: bool, log_format: str, service: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Scrubber(secrets))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{service}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("botocore", "urllib3", "pika", "slack_sdk"):
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)
