"""The delete planner and its brake on real listings (source and target MinIO)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import stack as local_stack

from replicator import config
from replicator.deletes import Deleter, Plan, Planner
from replicator.s3 import S3
from tests.conftest import base_env
from tests.replicator.test_copier import Requests


def settings_for(stack, spec: str, **env: str) -> config.Settings:
    return config.load(
        {
            **base_env(stack),
            "BUCKET_PAIR": spec,
            "MIRROR_DELETE": "true",
            "MIRROR_MAX_DELETE_PERCENT": "100",
            **env,
        }
    )


def put(client, bucket: str, *keys: str) -> None:
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())


def target_keys(stack, bucket: str) -> set[str]:
    pages = stack.target.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def planner(settings: config.Settings) -> Planner:
    return Planner(
        settings,
        S3(settings.source, settings, "source"),
        S3(settings.target, settings, "target"),
    )


def deleter(settings: config.Settings, *, dry_run: bool = False) -> Deleter:
    return Deleter(settings, dry_run=dry_run, origin="reconcile", threads=4)


@pytest.fixture
def pair(stack, buckets) -> tuple[str, str]:
    return buckets("source"), buckets("target")


def test_the_merge_maps_target_keys_through_the_pair_paths(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "data/a", "data/c", "data/sub/x", "other/z", "data-x")
    put(
        stack.target.client(),
        dst,
        "copy/a",
        "copy/b",
        "copy/c",
        "copy/sub/x",
        "copy/sub/y",
        "copy-z",  # a neighbour of the pair's folder, not in it
        "outside/q",
        "z",
    )
    settings = settings_for(stack, f"minio/{src}/data:aws/{dst}/copy")
    plan = planner(settings).plan(settings.pairs[0])
    assert plan.refused == ""
    assert plan.keys == ["copy/b", "copy/sub/y"]
    assert (plan.count, plan.target_objects, plan.source_objects) == (2, 5, 3)
    assert [plan.source_key(k) for k in plan.keys] == ["data/b", "data/sub/y"]

    report = deleter(settings).run(settings.pairs[0])
    assert (report.deleted, report.failed, report.refused) == (2, 0, "")
    left = {"copy/a", "copy/c", "copy/sub/x", "copy-z", "outside/q", "z"}
    assert target_keys(stack, dst) == left


def test_keys_outside_the_prefix_or_excluded_are_never_deleted(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "2025/keep")
    put(stack.target.client(), dst, "2025/keep", "2025/gone", "2025/x.tmp", "2024/old", "a.tmp")
    settings = settings_for(
        stack, f"minio/{src}:aws/{dst}", MIRROR_PREFIX="2025", MIRROR_EXCLUDE="*.tmp"
    )
    plan = planner(settings).plan(settings.pairs[0])
    assert (plan.keys, plan.target_objects) == (["2025/gone"], 2)

    report = deleter(settings).run(settings.pairs[0])
    assert report.deleted == 1
    assert target_keys(stack, dst) == {"2025/keep", "2025/x.tmp", "2024/old", "a.tmp"}


def test_an_empty_source_deletes_nothing(stack, pair):
    src, dst = pair
    put(stack.target.client(), dst, "a", "b", "c")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")
    report = deleter(settings).run(settings.pairs[0])
    assert "came back empty" in report.refused and "3 object(s)" in report.refused
    assert (report.deleted, report.ok) == (0, False)
    assert target_keys(stack, dst) == {"a", "b", "c"}


def test_a_source_with_only_excluded_keys_counts_as_empty(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "a.tmp")
    put(stack.target.client(), dst, "a", "b")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}", MIRROR_EXCLUDE="*.tmp")
    report = deleter(settings).run(settings.pairs[0])
    assert "came back empty" in report.refused
    assert target_keys(stack, dst) == {"a", "b"}


def test_a_source_listing_error_deletes_nothing(stack, pair):
    _, dst = pair
    put(stack.target.client(), dst, "a", "b")
    settings = settings_for(stack, f"minio/no-such-bucket-here:aws/{dst}")
    report = deleter(settings).run(settings.pairs[0])
    assert "source listing of minio/no-such-bucket-here/ failed" in report.refused
    assert "does not exist" in report.refused
    assert target_keys(stack, dst) == {"a", "b"}


def test_wrong_source_credentials_delete_nothing(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}", MINIO_SECRET_KEY="wrong-secret")
    report = deleter(settings).run(settings.pairs[0])
    assert "source listing" in report.refused and "SignatureDoesNotMatch" in report.refused
    assert target_keys(stack, dst) == {"a", "b"}


def test_a_plan_over_max_delete_deletes_nothing(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "keep")
    put(stack.target.client(), dst, "keep", "g1", "g2", "g3")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}", MIRROR_MAX_DELETE="2")
    report = deleter(settings).run(settings.pairs[0])
    assert report.refused.startswith("would delete 3 object(s), more than MIRROR_MAX_DELETE=2")
    assert target_keys(stack, dst) == {"keep", "g1", "g2", "g3"}

    at_limit = settings_for(stack, f"minio/{src}:aws/{dst}", MIRROR_MAX_DELETE="3")
    assert deleter(at_limit).run(at_limit.pairs[0]).deleted == 3
    assert target_keys(stack, dst) == {"keep"}


def test_a_plan_over_the_percentage_deletes_nothing(stack, pair):
    src, dst = pair
    kept = [f"k{i}" for i in range(8)]
    put(stack.source.client(), src, *kept)
    put(stack.target.client(), dst, *kept, "g1", "g2")  # 2 of 10: 20%
    spec = f"minio/{src}:aws/{dst}"
    settings = settings_for(stack, spec, MIRROR_MAX_DELETE_PERCENT="19")
    report = deleter(settings).run(settings.pairs[0])
    assert "would delete 2 of 10 target object(s) in scope (20.0%)" in report.refused
    assert "MIRROR_MAX_DELETE_PERCENT=19%" in report.refused
    assert len(target_keys(stack, dst)) == 10

    default = config.load({**base_env(stack), "BUCKET_PAIR": spec, "MIRROR_DELETE": "true"})
    assert "MIRROR_MAX_DELETE_PERCENT=10%" in deleter(default).run(default.pairs[0]).refused

    enough = settings_for(stack, spec, MIRROR_MAX_DELETE_PERCENT="20")
    assert deleter(enough).run(enough.pairs[0]).deleted == 2
    assert target_keys(stack, dst) == set(kept)


def test_a_dry_run_lists_the_deletes_and_deletes_nothing(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b", "c d+e%.txt")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")
    report = deleter(settings, dry_run=True).run(settings.pairs[0])
    assert report.would_delete == ["b", "c d+e%.txt"]
    assert (report.planned, report.deleted, report.refused) == (2, 0, "")
    assert target_keys(stack, dst) == {"a", "b", "c d+e%.txt"}


def two_gone(stack, pair) -> config.Settings:
    """The source holds "a"; the target "a", "b" and "c": "b" and "c" are to delete."""
    src, dst = pair
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b", "c")
    return settings_for(stack, f"minio/{src}:aws/{dst}")


def planned(settings: config.Settings) -> tuple[Deleter, Plan]:
    engine = deleter(settings)
    plan = engine.planner.plan(settings.pairs[0])
    assert plan.keys == ["b", "c"]
    return engine, plan


def test_a_key_re_created_after_planning_is_kept(stack, pair):
    src, dst = pair
    engine, plan = planned(two_gone(stack, pair))
    put(stack.source.client(), src, "b")  # re-created between the listing and the delete
    report = engine.carry_out(plan)
    assert report.deleted == 1
    assert dict(report.skipped) == {"source still has the object: nothing deleted": 1}
    assert target_keys(stack, dst) == {"a", "b"}


def test_a_target_scope_shared_with_another_pair_is_left_alone(stack, buckets):
    one, two, dst = buckets("source"), buckets("source"), buckets("target")
    put(stack.source.client(), one, "a")
    put(stack.source.client(), two, "x")
    put(stack.target.client(), dst, "a", "gone", "two/x", "two/y")
    settings = config.load(
        {
            **base_env(stack),
            "BUCKET_PAIRS": f"minio/{one}:aws/{dst};minio/{two}:aws/{dst}/two",
            "MIRROR_DELETE": "true",
            "MIRROR_MAX_DELETE_PERCENT": "100",
        }
    )
    engine = deleter(settings)
    first, second = (engine.planner.plan(p) for p in settings.pairs)
    assert (first.keys, first.shared) == (["gone"], 2)  # two/* belongs to the other pair too
    assert (second.keys, second.shared) == ([], 2)  # inside the first pair's scope as well


def test_a_delete_the_target_refuses_fails_once_per_key(stack, pair):
    from tests.integration.test_iam import user_with_policy

    src, dst = pair
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b", "c")
    policy = (
        '{"Version":"2012-10-17","Statement":['
        '{"Effect":"Allow","Action":["s3:ListBucket"],'
        f'"Resource":["arn:aws:s3:::{dst}"]}},'
        '{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],'
        f'"Resource":["arn:aws:s3:::{dst}/*"]}}]}}'
    )
    key, secret = user_with_policy(stack.target, policy)
    settings = settings_for(
        stack, f"minio/{src}:aws/{dst}", AWS_ACCESS_KEY=key, AWS_SECRET_KEY=secret
    )
    requests = Requests(stack)
    report = deleter(settings).run(settings.pairs[0])
    assert (report.deleted, report.failed) == (0, 2)
    assert all("AccessDenied" in f for f in report.failures), report.failures
    assert sorted(f.split(":")[0] for f in report.failures) == ["b", "c"]
    assert requests.spent().get("target DeleteObject") == 2  # once per key, never again
    assert target_keys(stack, dst) == {"a", "b", "c"}


def test_request_cost_of_a_batch_delete(stack, pair):
    """Per deleted object: source HEAD, target HEAD, target DELETE, source HEAD (the re-check);
    per pair: one listing page on each side (README: Deletes (opt-in))."""
    src, dst = pair
    put(stack.source.client(), src, "a")
    put(stack.target.client(), dst, "a", "b", "c", "d")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")
    engine = deleter(settings)
    requests = Requests(stack)
    assert engine.run(settings.pairs[0]).deleted == 3
    spent = requests.spent()
    # A source HEAD's bare 404 asks whether the bucket exists (the S3 layer keeps a yes for
    # a minute): once, or once per delete thread that missed it at the same moment.
    assert 1 <= spent.pop("source HeadBucket", 0) <= 3
    assert spent == {
        "source ListObjectsV2": 1,
        "target ListObjectsV2": 1,
        "source HeadObject": 6,
        "target HeadObject": 3,
        "target DeleteObject": 3,
    }


@pytest.mark.parametrize("retention_days", [0, 1], ids=["plain", "object-lock"])
def test_batch_deletes_on_minio_and_the_aws_like_target(stack, buckets, target, retention_days):
    """On an Object Lock bucket a delete adds a delete marker; retention keeps the version."""
    from replicator.copier import Copier
    from replicator.task import Task

    src, dst = buckets("source"), target.bucket(retention_days=retention_days)
    settings = config.load(
        {
            **base_env(stack),
            **target.env(),
            "BUCKET_PAIR": f"minio/{src}:aws/{dst}",
            "MIRROR_DELETE": "true",
            "MIRROR_MAX_DELETE_PERCENT": "100",
        }
    )
    put(stack.source.client(), src, "a", "b", "c")
    copier = Copier(settings)
    for key in ("a", "b", "c"):
        assert copier.copy(Task(bucket=src, key=key, origin="backfill")).copied
    stack.source.client().delete_objects(
        Bucket=src, Delete={"Objects": [{"Key": "b"}, {"Key": "c"}]}
    )

    report = deleter(settings).run(settings.pairs[0])

    assert (report.deleted, report.failed, report.refused) == (2, 0, ""), report.failures
    client = target.client()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=dst).get("Contents", [])] == ["a"]
    if retention_days:
        versions = client.list_object_versions(Bucket=dst)
        assert sorted(v["Key"] for v in versions.get("Versions", [])) == ["a", "b", "c"]
        assert sorted(m["Key"] for m in versions.get("DeleteMarkers", [])) == ["b", "c"]


def test_a_deadline_reached_while_listing_deletes_nothing(stack, pair):
    dst = pair[1]
    settings = two_gone(stack, pair)
    engine = Deleter(
        settings, dry_run=False, origin="reconcile", threads=4, deadline=time.monotonic()
    )
    report = engine.run(settings.pairs[0])
    assert (report.deleted, report.planned, report.ok) == (0, 0, False)
    assert "while listing" in report.timed_out
    assert report.outcome().startswith("deletes STOPPED, nothing deleted")
    assert target_keys(stack, dst) == {"a", "b", "c"}


def test_deletes_not_begun_by_the_deadline_are_left_for_the_next_run(stack, pair):
    dst = pair[1]
    settings = two_gone(stack, pair)
    engine, plan = planned(settings)
    engine.deadline = time.monotonic()  # reached once the plan is made
    report = engine.carry_out(plan)
    assert (report.deleted, report.left, report.ok) == (0, 2, False)
    assert "2 of 2 delete(s) not begun" in report.timed_out
    assert "STOPPED" in report.outcome()
    assert target_keys(stack, dst) == {"a", "b", "c"}
    assert deleter(settings).run(settings.pairs[0]).deleted == 2  # the next run
    assert target_keys(stack, dst) == {"a"}


def late_plan(stack, spec: str, side: str, **env: str) -> Plan:
    """Plan with `side`'s second listing page held at a fault proxy until the deadline
    has passed: the walk resumes past it mid-listing. (The deadline leaves page 1 time
    to come even on a loaded machine: reached before it, page 2 is never asked for.)"""
    proxy = local_stack.FaultProxy(getattr(stack, side).url).start()
    try:
        proxy.add_rule("continuation-token", "stall", listing=True)
        url = "MINIO_URL" if side == "source" else "AWS_URL"
        settings = settings_for(stack, spec, **env, **{url: proxy.url})
        s3 = {s: S3(getattr(settings, s), settings, s) for s in ("source", "target")}
        deadline = time.monotonic() + 3
        planner = Planner(settings, s3["source"], s3["target"], deadline)
        plans: list[Plan] = []
        walk = threading.Thread(target=lambda: plans.append(planner.plan(settings.pairs[0])))
        walk.start()
        local_stack.wait_until(lambda: proxy.fault_count("", "stall"), 10, "page 2 held")
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.2)  # passes while page 2 is held
        proxy.released.set()
        walk.join(30)
        return plans[0]
    finally:
        proxy.stop()


def put_many(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b""), keys))


def test_the_deadline_is_kept_while_the_source_listing_runs_between_two_target_keys(stack, pair):
    """A sparse target: the source listing runs on for pages between two target keys."""
    src, dst = pair
    put_many(stack.source.client(), src, [f"a{i:06d}" for i in range(1001)])
    put(stack.target.client(), dst, "b", "c")
    plan = late_plan(stack, f"minio/{src}:aws/{dst}", "source")
    assert plan.late and (plan.count, plan.keys) == (0, [])


def test_a_plan_cut_mid_listing_counts_nothing_and_deletes_nothing(stack, pair):
    src, dst = pair
    put(stack.source.client(), src, "a")
    put_many(stack.target.client(), dst, ["a"] + [f"b{i:06d}" for i in range(1000)])
    plan = late_plan(stack, f"minio/{src}:aws/{dst}", "target", MIRROR_MAX_DELETE="5000")
    assert plan.late and (plan.count, plan.keys) == (0, [])  # not the 999 seen before it
    settings = settings_for(stack, f"minio/{src}:aws/{dst}", MIRROR_MAX_DELETE="5000")
    report = deleter(settings).carry_out(plan)
    assert (report.planned, report.deleted) == (0, 0)
    assert report.outcome().startswith("deletes STOPPED, nothing deleted")
    assert len(target_keys(stack, dst)) == 1001
