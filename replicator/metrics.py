"""Prometheus metrics (prefix minio_s3_mirror_, base units, no key-level labels).

Modelled on S3 Replication Time Control: what arrived, what was copied, how late,
what was skipped or failed and why, and what is still waiting.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

P = "minio_s3_mirror_"

EVENTS_RECEIVED = Counter(f"{P}events_received", "Object-created events accepted", ["mode"])
TASKS_PUBLISHED = Counter(f"{P}tasks_published", "Tasks confirmed by RabbitMQ", ["origin"])
OBJECTS_REPLICATED = Counter(f"{P}objects_replicated", "Objects copied and verified")
BYTES_REPLICATED = Counter(f"{P}bytes_replicated", "Bytes copied and verified")
OBJECTS_DELETED = Counter(f"{P}objects_deleted", "Target copies deleted (MIRROR_DELETE)")
SKIPPED = Counter(f"{P}objects_skipped", "Tasks with nothing to do", ["reason"])
FAILURES = Counter(f"{P}copy_failures", "Failed copies (not waits for a down endpoint)", ["kind"])
RETRIES = Counter(f"{P}retries", "Tasks sent to a delayed retry queue")
DEAD_LETTERED = Counter(f"{P}dead_lettered", "Tasks parked in the dead-letter queue")
HOLDS = Counter(
    f"{P}endpoint_holds", "Tasks held for a down endpoint, once per task per outage", ["side"]
)
ENDPOINT_UP = Gauge(
    f"{P}endpoint_up", "1 while the worker finds the endpoint answering, 0 in an outage", ["side"]
)
LATENCY = Histogram(
    f"{P}replication_latency_seconds",
    "Source event to verified copy",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
COPY_SECONDS = Histogram(
    f"{P}copy_duration_seconds",
    "Time to copy and verify one object",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
IN_FLIGHT = Gauge(f"{P}copies_in_flight", "Copies under way in this worker")
CONCURRENCY_LIMIT = Gauge(
    f"{P}copies_allowed", "Copies this worker may run at once (MIRROR_MAX_WORKERS, or auto's)"
)
UNACKED = Gauge(f"{P}tasks_unacked", "Tasks delivered to this worker and not yet acked")
PENDING = Gauge(f"{P}tasks_pending", "Tasks ready in the work queue (not yet delivered)")

_SKIP_REASONS = (
    ("target already current", "current"),
    ("excluded", "excluded"),
    ("source object is gone", "source_gone"),
    ("target exists and differs", "overwrite_off"),
    ("deletes are off", "delete_off"),
    ("source still has", "source_present"),
    ("target copy already gone", "target_gone"),
)


def skip_reason(text: str) -> str:
    """A bounded label for a skip reason."""
    return next((label for prefix, label in _SKIP_REASONS if text.startswith(prefix)), "other")


RECONCILE_GAUGES = {
    "success": ("reconcile_success", "1 if the pair's last reconcile run had no failure"),
    "finished": ("reconcile_last_run_timestamp_seconds", "When the pair's last run ended"),
    "copied": ("reconcile_objects_copied", "Objects the pair's last run copied"),
    "bytes": ("reconcile_bytes_copied", "Bytes the pair's last run copied"),
    "failures": ("reconcile_failures", "Failures in the pair's last run"),
    "duration": ("reconcile_duration_seconds", "How long the pair's last run took"),
}


def reconcile_registry():
    """A registry of its own with the per-pair gauges a reconcile run pushes to a
    Pushgateway (MIRROR_PUSHGATEWAY_URL): a CronJob ends before any scrape."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    gauges = {
        key: Gauge(f"{P}{name}", text, ["pair"], registry=registry)
        for key, (name, text) in RECONCILE_GAUGES.items()
    }
    return registry, gauges
