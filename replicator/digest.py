"""Slack digests of dead-lettered objects: at most one message per interval, never one
per object. Best effort, like every Slack call."""

from __future__ import annotations

import threading

from . import slack
from .config import Settings

_SHOWN = 10


class Digest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.count = 0
        self.examples: list[tuple[str, str]] = []
        self.timer: threading.Timer | None = None

    def add(self, subject: str, reason: str) -> None:
        """Note one dead-lettered object; the first one of an interval starts its clock."""
        if not self.settings.slack_enabled:
            return
        with self.lock:
            self.count += 1
            if len(self.examples) < _SHOWN:
                self.examples.append((subject, reason))
            if self.timer is None:
                self.timer = threading.Timer(self.settings.digest_interval, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self) -> None:
        with self.lock:
            count, examples = self.count, self.examples
            self.count, self.examples, self.timer = 0, [], None
        if not count:
            return
        service = self.settings.service
        text = f"{service}: {count} object(s) could not be copied and were dead-lettered"
        lines = [f"• `{subject}`: {reason[:200]}" for subject, reason in examples]
        if count > len(examples):
            lines.append(f"... and {count - len(examples)} more")
        lines.append("See them with `minio-s3-mirror dlq list`; replay with `dlq replay`.")
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
        ]
        slack.post(self.settings, text, blocks)

    def close(self) -> None:
        """Send what is pending now (a stopping worker must not swallow it)."""
        with self.lock:
            timer = self.timer
        if timer:
            timer.cancel()
        self.flush()
