"""The summary and the Slack report name a timeout and count what they do not list."""

import json

from replicator import slack
from replicator.reconcile import summary
from replicator.reconcile.result import PairResult, Problem, RunResult
from replicator.reconcile.troubleshoot import FAILED_TO_ACCESS_ALIAS, TIMED_OUT

STOPPED = "mc mirror stopped: the run reached MIRROR_RECONCILE_TIMEOUT (6h)"


def timed_out_run() -> RunResult:
    pair = PairResult("minio/a:aws/b", "minio/a", "aws/b", copied=5, bytes=50)
    for i in range(250):
        missing = Problem(text=f"`k{i}` is not on the target", cause=FAILED_TO_ACCESS_ALIAS)
        pair.problems.add(missing)
    pair.problems.add(Problem(text=STOPPED, cause=TIMED_OUT), first=True)
    return RunResult(service="svc", dry_run=False, pairs=[pair], duration_s=21600.0)


def test_text_summary_leads_with_the_timeout_and_counts_every_error():
    text = summary.render_text(timed_out_run())

    assert "[FAIL] minio/a:aws/b: FAILED (251 error(s)); copied 5" in text
    first_error = next(line for line in text.splitlines() if line.startswith("    error"))
    assert STOPPED in first_error
    assert "cause: Run timed out" in text
    assert "hint: raise MIRROR_RECONCILE_TIMEOUT" in text
    assert "... and 241 more error(s)" in text


def test_slack_report_carries_the_timeout_reason():
    text, blocks = slack.reconcile_message(timed_out_run())

    assert "FAILED" in text
    shown = json.dumps(blocks)
    assert f"Run timed out: {STOPPED}" in shown
    assert "and 248 more error(s)" in shown
