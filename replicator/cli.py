"""The `minio-s3-mirror` command: configuration errors exit 2, failures 1, success 0."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping

import click

from . import config, logs

log = logging.getLogger("minio_s3_mirror")

EXIT_FAILED = 1
EXIT_CONFIG = 2
BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def load_settings(overrides: Mapping[str, str | None] = (), **kwargs: bool) -> config.Settings:
    """Settings from the environment (flags override it); a bad value exits 2."""
    environ = dict(os.environ)
    environ.update({k: v for k, v in dict(overrides).items() if v is not None})
    try:
        settings = config.load(environ, **kwargs)
    except config.ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.setup(
        debug=settings.debug,
        log_format=settings.log_format,
        service=settings.service,
        secrets=settings.secrets(),
    )
    return settings


def flag(name: str, value: str | None, parse: Callable[[str, str], object]) -> None:
    """Check a flag with its variable's parser, so a bad flag exits 2 naming the flag."""
    if value is None:
        return
    try:
        parse(name, value)
    except config.ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@contextlib.contextmanager
def rabbitmq_failures() -> Iterator[None]:
    """RabbitMQ down or refusing: exit 1 with one line (the URL's password masked)."""
    from .dlq import RabbitMQUnavailable

    try:
        yield
    except RabbitMQUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minio-s3-mirror")
def main() -> None:
    """Replicate MinIO buckets to AWS S3 (or any S3 endpoint).

    Configuration comes from environment variables (see README.md); every
    subcommand has --help.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--dry-run", is_flag=True, default=None, help="List what would be copied (MIRROR_DRY_RUN)."
)
@click.option(
    "--prefix", default=None, help="Only this folder in every pair: o/0 means o/0/ (MIRROR_PREFIX)."
)
def reconcile(as_json: bool, dry_run: bool | None, prefix: str | None) -> None:
    """Mirror every configured pair once with `mc mirror` (the nightly job).

    At most MIRROR_MAX_PAIRS pairs run at once. Exits 0 only when every pair
    succeeded; a Slack report is sent when SLACK_BOT_TOKEN and SLACK_CHANNEL_ID are set.
    """
    from .reconcile import record, summary
    from .reconcile.mc import McMissing, find_binary
    from .reconcile.runner import reconcile as run_reconcile

    flag("--prefix", prefix, config.parse_prefix)
    settings = load_settings(
        {"MIRROR_DRY_RUN": "true" if dry_run else None, "MIRROR_PREFIX": prefix}
    )
    try:
        find_binary()
    except McMissing as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    log.info("reconciling %d pair(s), at most %d at once", len(settings.pairs), settings.max_pairs)
    run = run_reconcile(settings)
    click.echo(summary.render_json(run) if as_json else summary.render_text(run))
    if settings.slack_token or settings.slack_channel:  # slack_sdk loads only to report
        from . import slack

        slack.report_reconcile(settings, run)
    record.save(settings, run)
    sys.exit(0 if run.ok else EXIT_FAILED)


@main.command()
@click.option(
    "--mode",
    type=click.Choice(["stream", "webhook"]),
    default=None,
    help="Ingest mode (LISTENER_MODE; default stream).",
)
def listen(mode: str | None) -> None:
    """Turn MinIO bucket notifications into tasks on RabbitMQ.

    stream: MinIO's ListenBucketNotification API (no server setup; lossy while
    disconnected). webhook: an HTTP endpoint for MinIO's webhook target on
    WEBHOOK_ADDRESS, requiring WEBHOOK_AUTH_TOKEN (at-least-once with queue_dir).
    """
    import signal
    import threading

    settings = load_settings({"LISTENER_MODE": mode}, need_target=False)
    if settings.listener_mode == "webhook" and not settings.webhook_token:
        click.echo(
            "configuration error: WEBHOOK_AUTH_TOKEN: not set; expected the bearer token "
            "MinIO sends (MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<id>)",
            err=True,
        )
        sys.exit(EXIT_CONFIG)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if settings.listener_mode == "webhook":
        from listener import webhook as ingest
    else:
        from listener import stream as ingest
    log.info("listener starting in %s mode", settings.listener_mode)
    try:
        ingest.serve(settings, stop)
    except OSError as exc:
        # The webhook's bind() (METRICS_ADDRESS has its own message). A busy, foreign or
        # unresolvable address is a runtime condition, like METRICS_ADDRESS's: exit 1.
        binding = isinstance(exc, socket.gaierror) or exc.errno in BIND_ERRORS
        if settings.listener_mode != "webhook" or not binding:
            raise
        host, port = settings.webhook_address
        reason = exc.strerror or str(exc)
        click.echo(f"WEBHOOK_ADDRESS: cannot listen on {host}:{port}: {reason}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
def work() -> None:
    """Copy queued objects to the target (MIRROR_MAX_WORKERS copies at once; auto fits
    them to the link).

    Acks a task only after the copy is verified; transient errors are retried,
    permanent ones go to the dead-letter queue with their reason. SIGTERM drains.
    """
    from .worker import Worker

    settings = load_settings()
    Worker(settings, concurrency=settings.max_workers).run()


@main.command()
@click.option(
    "--prefix", default=None, help="Only this folder in every pair: o/0 means o/0/ (MIRROR_PREFIX)."
)
@click.option(
    "--pair", "pair_specs", multiple=True, help="Only this pair (minio/<b>:aws/<b>); repeatable."
)
@click.option("--direct", is_flag=True, help="Copy in this process instead of enqueueing.")
@click.option("--dry-run", is_flag=True, help="Count what would be copied; change nothing.")
@click.option(
    "--delete",
    is_flag=True,
    help="Also delete target objects the source no longer has, behind the brake "
    "(MIRROR_MAX_DELETE, MIRROR_MAX_DELETE_PERCENT); with --dry-run, list them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def backfill(
    prefix: str | None,
    pair_specs: tuple[str, ...],
    direct: bool,
    dry_run: bool,
    delete: bool,
    as_json: bool,
) -> None:
    """Enqueue (or copy) every object under a prefix that the target lacks.

    Streams both listings, so memory stays flat for millions of keys. Objects already
    current on the target are skipped. Exits 1 if anything failed.
    """
    import json

    from . import backfill as engine

    flag("--prefix", prefix, config.parse_prefix)
    settings = load_settings({"MIRROR_PREFIX": prefix})
    pairs = list(settings.pairs)
    if pair_specs:
        try:
            chosen = [config.parse_pair("--pair", spec) for spec in pair_specs]
        except config.ConfigError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        unknown = [str(p) for p in chosen if p not in pairs]
        if unknown:
            click.echo(f"configuration error: --pair {unknown} is not configured", err=True)
            sys.exit(EXIT_CONFIG)
        pairs = chosen
    job = engine.Backfill(settings, direct=direct, dry_run=dry_run, delete=delete)
    reports = job.run(pairs)
    if as_json:
        click.echo(json.dumps(engine.as_dicts(reports), ensure_ascii=False, indent=2))
    else:
        click.echo(engine.render(reports, direct=direct, dry_run=dry_run))
    sys.exit(EXIT_FAILED if any(r.failed or r.delete_refused for r in reports) else 0)


@main.group()
def dlq() -> None:
    """Look at, replay or empty the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON.")
def dlq_list(as_json: bool) -> None:
    """Show every dead-lettered task: key, pair, reason, attempts, first and last failure."""
    from . import dlq as parking

    settings = load_settings(need_target=False)
    with rabbitmq_failures(), parking.browse(settings) as (_, parked):
        rows = [item.describe(settings) for item in parked]
    click.echo(parking.render(rows, as_json))


@dlq.command("replay")
@click.argument("keys", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead-lettered task.")
def dlq_replay(keys: tuple[str, ...], everything: bool) -> None:
    """Put tasks (by object key, or --all) back on the work queue with a fresh budget."""
    from . import dlq as parking

    if bool(keys) == everything:
        raise click.UsageError("give object keys or --all (not both)")
    settings = load_settings(need_target=False)
    with rabbitmq_failures():
        count = parking.replay(settings, None if everything else set(keys))
    click.echo(f"replayed {count} task(s)")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(yes: bool) -> None:
    """Delete every dead-lettered task (asks first unless --yes)."""
    from . import dlq as parking

    settings = load_settings(need_target=False)
    if not yes:
        click.confirm("Delete every task in the dead-letter queue?", abort=True)
    with rabbitmq_failures():
        count = parking.purge(settings)
    click.echo(f"purged {count} task(s)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--peek",
    is_flag=True,
    help="Also show the oldest waiting task: it is taken and put back, which counts as one "
    "of its deliveries (RabbitMQ dead-letters a task after 20).",
)
def status(as_json: bool, peek: bool) -> None:
    """Queues, dead letters, oldest waiting task, endpoints, last reconcile per pair.

    Exit 0 when healthy, 1 when degraded (the report lists every reason).
    """
    from . import status as report

    settings = load_settings()
    found = report.collect(settings, peek=peek)
    click.echo(report.render(found, as_json))
    sys.exit(0 if found.healthy else EXIT_FAILED)


@main.command()
@click.option("--read-only", is_flag=True, help="Do not write a probe object to the target.")
def check(read_only: bool) -> None:
    """Check configuration, source, target, RabbitMQ, Slack and mc; exit 1 on any failure."""
    from . import check as checks

    settings = load_settings()
    results = checks.run(settings, read_only=read_only)
    click.echo(checks.render(results))
    sys.exit(EXIT_FAILED if any(c.status == "FAIL" for c in results) else 0)


if __name__ == "__main__":
    main()
