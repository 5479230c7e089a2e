"""Operations on the real stack: backfill, the dead-letter tools, metrics and health,
Slack digests and `check`."""

from __future__ import annotations

import http.client
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import stack as local_stack
from prometheus_client.parser import text_string_to_metric_families

from replicator import topology
from replicator.task import Task
from tests.integration.conftest import dead_letters
from tests.integration.test_iam import readme_policies, user_with_policy
from tests.integration.test_pipeline import pair_env, publish, target_keys, wait_for_keys

pytestmark = pytest.mark.integration


def fill(client, bucket: str, keys: list[str], body: bytes = b"backfill me") -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=body), keys))


def queue_depth(amqp, queue: str = topology.WORK_QUEUE) -> int:
    return amqp.queue_declare(queue, passive=True).method.message_count


def finished(proc, timeout: float = 600) -> tuple[int, str]:
    code = proc.popen.wait(timeout)
    return code, proc.log.read_text()


def test_backfill_enqueues_only_what_the_target_lacks_and_workers_land_it(
    stack, notifying, source_bucket, buckets, procs, amqp
):
    src, dst = source_bucket(), buckets("target")
    keys = [f"2025/01/22/{i:05d}.txt" for i in range(10_000)]
    fill(notifying.client(), src, [*keys, "2025/01/23/outside.txt"])
    fill(stack.target.client(), dst, keys[:1000])  # same bytes: already current
    env = pair_env(src, dst)

    dry = procs("backfill", "--prefix", "2025/01/22", "--dry-run", "--json", **env)
    code, out = finished(dry)
    assert code == 0, out
    assert queue_depth(amqp) == 0
    real = procs("backfill", "--prefix", "2025/01/22", "--json", **env)
    code, out = finished(real)

    assert code == 0, out
    (report,) = json.loads(out[out.index("[") :])
    assert (report["listed"], report["current"], report["queued"]) == (10_000, 1000, 9000)
    assert queue_depth(amqp) == 9000
    procs("work", **env, MIRROR_MAX_WORKERS="16")
    wait_for_keys(stack.target.client(), dst, set(keys), timeout=600)
    assert "2025/01/23/outside.txt" not in target_keys(stack.target.client(), dst)


def test_backfill_direct_copies_without_rabbitmq(stack, notifying, source_bucket, buckets, procs):
    src, dst = source_bucket(), buckets("target")
    keys = [f"p/{i}.bin" for i in range(50)]
    fill(notifying.client(), src, keys)
    closed = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    run = procs("backfill", "--prefix", "p", "--direct", **pair_env(src, dst, RABBITMQ_URL=closed))

    code, out = finished(run)
    assert code == 0, out
    assert "copied 50" in out
    assert target_keys(stack.target.client(), dst) == set(keys)


def summary(out: str) -> list[dict]:
    """The --json report in a process log (JSON log lines may come before it)."""
    start = out.index("\n[\n") + 1 if not out.startswith("[") else 0
    return json.JSONDecoder().raw_decode(out[start:])[0]


def old_copies_on_both_sides(notifying, stack, src: str, dst: str, keys: list[str]) -> None:
    """Same size, other bytes on the target: only a target HEAD can tell backfill."""
    for key in keys:
        notifying.client().put_object(Bucket=src, Key=key, Body=b"new bytes")
        stack.target.client().put_object(Bucket=dst, Key=key, Body=b"old bytes")


def denied_head(stack, dst: str, key: str, fault_proxy) -> dict[str, str]:
    """A target user with the README's policy, minus GetObject (so HeadObject) on `key`."""
    policy = json.loads(readme_policies()[0].replace("photos-backup", dst))
    policy["Statement"].append(
        {
            "Sid": "NoHeadOnOneKey",
            "Effect": "Deny",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{dst}/{key}"],
        }
    )
    user, secret = user_with_policy(stack.target, json.dumps(policy))
    return {"AWS_ACCESS_KEY": user, "AWS_SECRET_KEY": secret}


def reset_head(stack, dst: str, key: str, fault_proxy) -> dict[str, str]:
    """The target reached through a proxy that resets the connection of `key`'s HEAD."""
    fault_proxy.add_rule(key, "reset", "HEAD")
    return {"AWS_URL": fault_proxy.url}


@pytest.mark.parametrize(
    ("fault", "detail"),
    [(denied_head, "403"), (reset_head, "")],  # a reset has no status
)
def test_backfill_counts_a_failed_target_head_and_goes_on(
    stack, notifying, source_bucket, buckets, procs, fault_proxy, fault, detail
):
    src, dst = source_bucket(), buckets("target")
    keys = [f"h/{i}.txt" for i in range(6)]
    bad = "h/3.txt"
    old_copies_on_both_sides(notifying, stack, src, dst, keys)
    env = pair_env(src, dst, **fault(stack, dst, bad, fault_proxy))

    code, out = finished(procs("backfill", "--direct", "--json", **env), timeout=300)

    assert code == 1, out
    assert "Traceback" not in out
    (report,) = summary(out)
    assert (report["listed"], report["current"], report["queued"]) == (6, 0, 5), report
    assert report["failed"] == 1 and len(report["failures"]) == 1, report
    failure = report["failures"][0]
    assert failure.startswith(f"{bad}: target HEAD failed: ") and detail in failure, report
    target = stack.target.client()
    bodies = {k: target.get_object(Bucket=dst, Key=k)["Body"].read() for k in keys}
    assert bodies == {k: b"old bytes" if k == bad else b"new bytes" for k in keys}


def test_backfill_with_rabbitmq_down_stops_the_pair_with_a_summary(
    stack, notifying, source_bucket, buckets, procs
):
    src, dst = source_bucket(), buckets("target")
    fill(notifying.client(), src, ["q/1.txt", "q/2.txt"])
    closed = f"amqp://guest:rabbit-pw@127.0.0.1:{local_stack.free_port()}/%2F"

    env = pair_env(src, dst, RABBITMQ_URL=closed, MIRROR_DEBUG="false")  # debug shows pika's

    code, out = finished(procs("backfill", "--json", **env))

    assert code == 1, out
    assert "Traceback" not in out and "rabbit-pw" not in out, out
    (report,) = summary(out)
    assert (report["listed"], report["queued"], report["failed"]) == (1, 0, 1), report
    assert report["failures"][0].startswith("pair stopped after 1 listed: "), report


@pytest.mark.parametrize(
    "args", [("dlq", "list"), ("dlq", "replay", "--all"), ("dlq", "purge", "--yes")]
)
def test_dlq_with_a_wrong_rabbitmq_password_exits_1_with_one_line(
    stack, notifying, source_bucket, buckets, procs, rabbit, args
):
    url = rabbit.url.replace("guest:guest@", "guest:wrong-pw@")
    env = pair_env(source_bucket(), buckets("target"), RABBITMQ_URL=url, MIRROR_DEBUG="false")

    code, out = finished(procs(*args, **env), timeout=120)

    assert code == 1, out
    masked = url.replace("wrong-pw", "****")
    assert (
        out.strip() == f"error: RabbitMQ at {masked}: login refused (check the user and password)"
    )


def test_dead_letters_are_listed_and_replayed_after_the_fix(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    keys = [f"dl/{i}.txt" for i in range(5)]
    fill(notifying.client(), src, keys)
    broken = procs("work", **pair_env(src, dst, AWS_SECRET_KEY="wrong-secret"))
    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in keys])
    local_stack.wait_until(lambda: len(dead_letters(rabbit)) == 5, 60, "5 dead letters")
    broken.stop()

    listing = procs("dlq", "list", "--json", **pair_env(src, dst))
    code, out = finished(listing)
    assert code == 0, out
    rows = json.loads(out[out.index("[") :])
    assert sorted(r["key"] for r in rows) == keys
    assert all(r["reason"].startswith("target 403") for r in rows)
    assert all(r["pair"] == f"minio/{src}:aws/{dst}" and r["last_failure"] for r in rows)

    procs("work", **pair_env(src, dst))  # the credentials are fixed
    code, out = finished(procs("dlq", "replay", "--all", **pair_env(src, dst)))
    assert code == 0 and "replayed 5" in out, out
    wait_for_keys(stack.target.client(), dst, set(keys), timeout=60)
    assert dead_letters(rabbit) == []


def scrape(port: int) -> dict[str, float]:
    """Every sample by name{labels}; empty while the worker is not serving yet."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    except OSError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def status(port: int, path: str) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None


def test_worker_metrics_equal_what_happened(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    bodies = {f"m/{i}.bin": os.urandom(1000 + i) for i in range(7)}
    for key, body in bodies.items():
        notifying.client().put_object(Bucket=src, Key=key, Body=body)
    port = local_stack.free_port()
    procs("work", **pair_env(src, dst, METRICS_ADDRESS=f"127.0.0.1:{port}"))
    tasks = [Task(bucket=src, key=key, origin="backfill").to_json() for key in bodies]
    gone = Task(bucket=src, key="m/never-existed", origin="backfill").to_json()

    publish(rabbit, *tasks, *tasks[:2], gone, b"not json")

    p = "minio_s3_mirror_"
    outcomes = (
        f"{p}objects_replicated_total",
        f"{p}objects_skipped_total{{reason=current}}",
        f"{p}objects_skipped_total{{reason=source_gone}}",
        f"{p}dead_lettered_total",
    )
    # Copy threads finish in any order: wait until all 11 messages have an outcome.
    local_stack.wait_until(
        lambda: sum(scrape(port).get(name, 0) for name in outcomes) >= 11,
        60,
        "all 11 messages handled",
    )
    got = scrape(port)
    assert got[f"{p}objects_replicated_total"] == 7
    assert got[f"{p}bytes_replicated_total"] == sum(len(b) for b in bodies.values())
    assert got[f"{p}objects_skipped_total{{reason=current}}"] == 2
    assert got[f"{p}copy_failures_total{{kind=malformed}}"] == 1
    assert got[f"{p}objects_skipped_total{{reason=source_gone}}"] == 1
    assert got[f"{p}dead_lettered_total"] == 1
    assert got[f"{p}copy_duration_seconds_count"] == 7


def test_healthz_answers_while_rabbitmq_is_down_and_readyz_does_not(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit
):
    src, dst = source_bucket(), buckets("target")
    port = local_stack.free_port()
    procs("work", **pair_env(src, dst, METRICS_ADDRESS=f"127.0.0.1:{port}"))
    local_stack.wait_until(lambda: status(port, "/readyz") == 200, 60, "ready")

    rabbit.stop()
    try:
        local_stack.wait_until(lambda: status(port, "/readyz") == 503, 60, "not ready")
        assert status(port, "/healthz") == 200
    finally:
        rabbit.start()
    local_stack.wait_until(lambda: status(port, "/readyz") == 200, 120, "ready again")


def test_one_slack_digest_for_fifty_dead_letters(
    stack, notifying, source_bucket, buckets, procs, amqp, rabbit, slack
):
    src, dst = source_bucket(), buckets("target")
    keys = [f"digest/{i:02d}.txt" for i in range(50)]
    fill(notifying.client(), src, keys)
    env = pair_env(src, dst, AWS_SECRET_KEY="wrong-secret", MIRROR_DIGEST_INTERVAL="15")
    worker = procs("work", **env)

    publish(rabbit, *[Task(bucket=src, key=k, origin="backfill").to_json() for k in keys])

    local_stack.wait_until(lambda: len(dead_letters(rabbit)) == 50, 60, "50 dead letters")
    local_stack.wait_until(slack.messages, 60, "the digest")
    worker.stop()
    (message,) = slack.messages()
    assert "50 object(s) could not be copied" in message["text"]
    assert "digest/" in json.dumps(message["blocks"])


def run_check(procs, **env) -> tuple[int, str]:
    return finished(procs("check", **env), timeout=120)


def test_check_passes_on_the_healthy_stack(stack, notifying, source_bucket, buckets, procs):
    src, dst = source_bucket(), buckets("target")
    notifying.client().put_object(Bucket=src, Key="x", Body=b"x")

    code, out = run_check(procs, **pair_env(src, dst))

    assert code == 0, out
    assert "FAIL" not in out


@pytest.mark.parametrize(
    ("fault", "part", "hint"),
    [
        ({"MINIO_SECRET_KEY": "wrong"}, "source", "check that the access key and secret key"),
        ({"missing_target": "1"}, "target", "check that the bucket exists"),
        ({"RABBITMQ_URL": "closed"}, "rabbitmq", "check RABBITMQ_URL"),
        ({"SLACK_BOT_TOKEN": "xoxb-bad"}, "slack", "check SLACK_BOT_TOKEN"),
        ({"MC_BINARY": "/nonexistent/mc"}, "mc", "set MC_BINARY"),
    ],
)
def test_check_names_the_failing_part_and_its_hint(
    stack, notifying, source_bucket, buckets, procs, fault, part, hint
):
    src, dst = source_bucket(), buckets("target")
    fault = dict(fault)
    if fault.pop("missing_target", None):
        dst = "no-such-target-bucket"
    if fault.get("RABBITMQ_URL") == "closed":
        fault["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:{local_stack.free_port()}/%2F"

    code, out = run_check(procs, **pair_env(src, dst, **fault))

    assert code == 1, out
    failing = [line for line in out.splitlines() if " FAIL " in line]
    assert len(failing) == 1 and failing[0].split()[2] == part, out
    assert hint in out
