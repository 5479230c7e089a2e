"""Opt-in delete replication through the event path, with real worker processes."""

from __future__ import annotations

import pytest
import stack as local_stack

from replicator.task import Task
from tests.integration.conftest import AMQP_ARN, WEBHOOK_ARN, dead_letters
from tests.integration.test_pipeline import pair_env, publish, ready, target_keys

pytestmark = pytest.mark.integration

BOTH = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")


def test_deletes_off_keep_a_removed_object_on_the_target(
    stack, notifying, source_bucket, buckets, procs, amqp, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN, BOTH), buckets("target")
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}")
    procs("listen", "--mode", "webhook", **env)
    worker = procs("work", **env)
    source = notifying.client()
    source.put_object(Bucket=src, Key="keep", Body=b"x")
    local_stack.wait_until(lambda: "keep" in target_keys(stack.target.client(), dst), 60, "copy")

    source.delete_object(Bucket=src, Key="keep")
    source.put_object(Bucket=src, Key="marker", Body=b"m")  # the next event: all before it read
    local_stack.wait_until(lambda: "marker" in target_keys(stack.target.client(), dst), 60, "m")

    assert target_keys(stack.target.client(), dst) == {"keep", "marker"}
    assert not worker.outcomes("deleted")


def test_deletes_on_remove_the_target_copy_within_seconds(
    stack, notifying, source_bucket, buckets, procs, amqp, webhook_port
):
    src, dst = source_bucket(WEBHOOK_ARN, BOTH), buckets("target")
    env = pair_env(src, dst, WEBHOOK_ADDRESS=f"127.0.0.1:{webhook_port}", MIRROR_DELETE="true")
    procs("listen", "--mode", "webhook", **env)
    procs("work", **env)
    source, target = notifying.client(), stack.target.client()
    keys = {f"d/{i}" for i in range(20)}
    for key in keys:
        source.put_object(Bucket=src, Key=key, Body=key.encode())
    local_stack.wait_until(lambda: keys <= target_keys(target, dst), 60, "20 copies")

    for key in sorted(keys)[:10]:
        source.delete_object(Bucket=src, Key=key)

    local_stack.wait_until(
        lambda: target_keys(target, dst) == set(sorted(keys)[10:]), 30, "10 deletes"
    )


def test_a_removal_of_a_key_the_source_still_has_deletes_nothing(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="here", Body=b"x")
    worker = procs("work", **pair_env(src, dst, MIRROR_DELETE="true"))
    publish(rabbit, Task(bucket=src, key="here", origin="backfill").to_json())
    local_stack.wait_until(lambda: "here" in target_keys(stack.target.client(), dst), 60, "copy")

    stray = Task(bucket=src, key="here", origin="amqp", event="s3:ObjectRemoved:Delete")
    publish(rabbit, stray.to_json())

    local_stack.wait_until(lambda: worker.outcomes("skipped"), 30, "the skip")
    assert "source still has" in worker.outcomes("skipped")[-1]["message"]
    assert target_keys(stack.target.client(), dst) == {"here"}


def test_delete_then_re_create_fifty_times_in_two_processes_ends_with_the_re_created_object(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    """MinIO's own AMQP target delivers creates and removals; two worker processes share
    them, so no in-process lock can hide a delete that lands after the re-create's copy."""
    src, dst = source_bucket(AMQP_ARN, BOTH), buckets("target")
    env = pair_env(src, dst, MIRROR_DELETE="true", MIRROR_MAX_WORKERS="8")
    workers = [procs("work", **env) for _ in range(2)]
    local_stack.wait_until(lambda: all(ready(w) for w in workers), 30, "both workers consuming")
    source, target = notifying.client(), stack.target.client()

    for round_ in range(50):
        key = f"flip/{round_:02d}"
        source.put_object(Bucket=src, Key=key, Body=b"first")
        source.delete_object(Bucket=src, Key=key)
        source.put_object(Bucket=src, Key=key, Body=f"re-created {round_}".encode())

    expected = {f"flip/{r:02d}": f"re-created {r}".encode() for r in range(50)}

    def settled() -> bool:
        handled = sum(
            len(w.outcomes(what)) for w in workers for what in ("copied", "skipped", "deleted")
        )
        return handled >= 150 and set(expected) <= target_keys(target, dst)

    local_stack.wait_until(settled, 240, "150 tasks handled and 50 keys on the target")
    for key, data in expected.items():
        assert target.get_object(Bucket=dst, Key=key)["Body"].read() == data, key
    assert dead_letters(rabbit) == []
