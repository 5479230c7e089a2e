"""Stream mode: MinIO's ListenBucketNotification API, one reader thread per source bucket.

Zero server-side setup but lossy by design: events during a disconnect are gone (the
nightly reconcile catches them). Keys arrive as they are (not URL-encoded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading

from minio import Minio

from replicator import health
from replicator.broker import PublishFailed
from replicator.config import Settings
from replicator.events import tasks_from_records
from replicator.s3.errors import from_exception
from replicator.s3.operations import network
from replicator.s3.transport import Transport
from replicator.task import MalformedTask

from .publish import TaskSink

log = logging.getLogger(__name__)
SILENT_S = 15  # no byte for this long: the stream is dead, reconnect


def minio_client(settings: Settings) -> Minio:
    """minio-py on the source's S3 transport (proxy, trust, timeouts as every copy has),
    with a read timeout short enough to notice a dead connection: MinIO writes a
    keep-alive every 0.5 s, so silence for SILENT_S means the flow is gone."""
    endpoint = settings.source
    found = network(settings, endpoint, "source")
    transport = Transport(
        endpoint.url, dataclasses.replace(found, read_timeout=min(found.read_timeout, SILENT_S))
    )
    return Minio(
        endpoint.netloc,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        secure=endpoint.secure,
        region=settings.minio_region,
        http_client=transport.http,
    )


def follow(settings: Settings, sink: TaskSink, bucket: str, stop: threading.Event) -> None:
    """Read one bucket's notifications forever, reconnecting with jittered backoff."""
    client = minio_client(settings)
    found = network(settings, settings.source, "source")
    delay = 0.5
    while not stop.is_set():
        try:
            with client.listen_bucket_notification(bucket, events=["s3:ObjectCreated:*"]) as stream:
                log.info("listening to bucket %s", bucket)
                delay = 0.5
                for event in stream:
                    for task in _tasks(event, sink):
                        if sink.in_scope(task) and not sink.publish_patiently(task, stop):
                            return
                    if stop.is_set():
                        return
        except Exception as exc:  # network, server restart: reconnect forever
            why = from_exception("source", exc, found).reason  # the S3 layer's words
            log.warning("notification stream of %s broke (%s); reconnecting", bucket, why)
        stop.wait(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 30)


def _tasks(event: object, sink: TaskSink) -> list:
    """The event's tasks; a malformed event is parked in the dead-letter queue (best effort:
    the stream has no redelivery, and the nightly reconcile catches what it missed)."""
    try:
        if not isinstance(event, dict):
            raise MalformedTask("notification is not a JSON object")
        records = event.get("Records")
        return list(tasks_from_records(records or [], origin="stream", encoded=False))
    except MalformedTask as exc:
        try:
            body = json.dumps(event, ensure_ascii=False, default=repr).encode(errors="replace")
            sink.park(body, str(exc), origin="stream")
        except (PublishFailed, ValueError, RecursionError) as failed:
            log.warning("dropped a malformed event (%s); parking failed: %s", exc, failed)
        return []


def serve(settings: Settings, stop: threading.Event) -> None:
    sink = TaskSink(settings, name="minio-s3-mirror listener (stream)")
    health.serve(settings.metrics_address, sink.reachable)
    buckets = sorted({pair.source_bucket for pair in settings.pairs})
    threads = [
        threading.Thread(target=follow, args=(settings, sink, b, stop), daemon=True)
        for b in buckets
    ]
    for thread in threads:
        thread.start()
    stop.wait()
    sink.close()
