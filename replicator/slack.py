"""Slack reports through slack_sdk: best effort, never changes the outcome of a run."""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from .config import Settings
from .reconcile.result import RunResult
from .reconcile.summary import human_bytes, pair_outcome

log = logging.getLogger(__name__)

_MAX_PAIR_BLOCKS = 40  # Slack allows 50 blocks per message
_TIMEOUT_S = 10


def client(settings: Settings) -> WebClient | None:
    """A WebClient when Slack is configured; warns once if only half of it is."""
    if settings.slack_enabled:
        kwargs = {"base_url": settings.slack_api_url} if settings.slack_api_url else {}
        return WebClient(token=settings.slack_token, timeout=_TIMEOUT_S, **kwargs)
    if settings.slack_token or settings.slack_channel:
        missing = "SLACK_CHANNEL_ID" if settings.slack_token else "SLACK_BOT_TOKEN"
        log.warning("Slack reports are off: %s is not set (both variables are needed)", missing)
    return None


def post(settings: Settings, text: str, blocks: list[dict]) -> bool:
    """Send one message; any failure is logged and reported as False."""
    web = client(settings)
    if web is None:
        return False
    try:
        web.chat_postMessage(channel=settings.slack_channel, text=text, blocks=blocks)
    except SlackApiError as exc:
        log.warning("Slack report failed: %s", exc.response.get("error", exc))
        return False
    except Exception as exc:  # network, timeouts: Slack is best effort
        log.warning("Slack report failed: %s", exc)
        return False
    return True


def reconcile_message(run: RunResult) -> tuple[str, list[dict]]:
    """Text fallback and Block Kit blocks for one reconcile run."""
    status = "succeeded" if run.ok else "FAILED"
    dry = " (dry run)" if run.dry_run else ""
    copied = sum(p.copied for p in run.pairs)
    size = human_bytes(sum(p.bytes for p in run.pairs))
    text = (
        f"{run.service} reconcile{dry} {status}: {len(run.pairs)} pair(s), "
        f"{copied} object(s) copied ({size}) in {run.duration_s:.1f}s"
    )
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{run.service} reconcile"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
    ]
    for pair in run.pairs[:_MAX_PAIR_BLOCKS]:
        lines = [f"{'✅' if pair.ok else '❌'} `{pair.pair}`: {pair_outcome(pair)}"]
        if pair.left_changed.count:
            lines.append(f"left unchanged (MIRROR_OVERWRITE=false): {pair.left_changed.count}")
        for problem in pair.problems.items[:3]:
            lines.append(f"• {problem.cause.title}: {problem.text[:300]}")
        if pair.problems.count > 3:
            lines.append(f"… and {pair.problems.count - 3} more error(s)")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    if len(run.pairs) > _MAX_PAIR_BLOCKS:
        more = len(run.pairs) - _MAX_PAIR_BLOCKS
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"+{more}"}]})
    return text, blocks


def report_reconcile(settings: Settings, run: RunResult) -> bool:
    text, blocks = reconcile_message(run)
    return post(settings, text, blocks)
