"""Deletes in `reconcile` and `backfill --delete` on two real MinIO servers (issue 13)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

DELETES = {"MIRROR_DELETE": "true", "MIRROR_MAX_DELETE_PERCENT": "100"}


def put(client, bucket: str, keys) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))


def remove(client, bucket: str, keys) -> None:
    keys = list(keys)
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})


def keys(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def mirrored(stack, buckets, run_cli, names) -> tuple[str, str, dict[str, str]]:
    """A pair whose target holds a reconciled copy of `names`."""
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, names)
    env = {"BUCKET_PAIR": f"minio/{src}:aws/{dst}"}
    first = run_cli("reconcile", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert keys(stack.target.client(), dst) == set(names)
    return src, dst, env


def test_deletes_off_a_removed_source_object_stays_through_reconcile_and_backfill(
    stack, buckets, run_cli
):
    src, dst, env = mirrored(stack, buckets, run_cli, ["keep", "gone"])
    remove(stack.source.client(), src, ["gone"])

    again = run_cli("reconcile", "--json", env={**env, "MIRROR_DELETE": None})
    assert again.returncode == 0, again.stdout + again.stderr
    (pair,) = json.loads(again.stdout)["pairs"]
    assert (pair["deletes"], pair["deleted"]) == (False, 0)
    backfill = run_cli("backfill", "--direct", env=env)
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    assert "deletes:" not in backfill.stdout
    assert keys(stack.target.client(), dst) == {"keep", "gone"}


def test_reconcile_removes_a_thousand_objects_the_source_lost(stack, buckets, run_cli, slack):
    names = [f"d/{i:04}" for i in range(1000)] + [f"k/{i}" for i in range(5)]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, names[:1000])
    slack.reset()

    result = run_cli("reconcile", "--json", env={**env, **DELETES})

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys(stack.target.client(), dst) == set(names[1000:])
    summary = json.loads(result.stdout)
    assert summary["deleted"] == 1000
    (pair,) = summary["pairs"]
    assert (pair["deleted"], pair["delete_refused"], pair["ok"]) == (1000, "", True)
    (message,) = slack.messages()
    assert "deleted 1000 object(s)" in json.dumps(message["blocks"])


def test_an_emptied_source_bucket_deletes_nothing_and_fails(stack, buckets, run_cli, slack):
    names = ["a", "b/c", "d"]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, names)
    slack.reset()

    result = run_cli("reconcile", env={**env, **DELETES})

    assert result.returncode == 1, result.stdout + result.stderr
    assert keys(stack.target.client(), dst) == set(names)
    assert "deletes REFUSED, nothing deleted" in result.stdout
    assert f"the source listing of minio/{src}/ came back empty" in result.stdout
    assert "Deletes refused" in result.stdout
    (message,) = slack.messages()
    blocks = json.dumps(message["blocks"])
    assert "Deletes refused" in blocks and "came back empty" in blocks


@pytest.mark.parametrize("broken", ["credentials", "bucket"])
def test_a_source_listing_error_deletes_nothing(stack, buckets, run_cli, broken):
    src, dst, env = mirrored(stack, buckets, run_cli, ["a", "b"])
    remove(stack.source.client(), src, ["b"])
    if broken == "credentials":
        env = {**env, "MINIO_SECRET_KEY": "not-the-secret"}
    else:
        env = {**env, "BUCKET_PAIR": f"minio/no-such-source-bucket:aws/{dst}"}

    result = run_cli("reconcile", "--json", env={**env, **DELETES})

    assert result.returncode == 1, result.stdout + result.stderr
    assert keys(stack.target.client(), dst) == {"a", "b"}
    (pair,) = json.loads(result.stdout)["pairs"]
    assert pair["deleted"] == 0
    assert "source listing of minio/" in pair["delete_refused"]
    assert pair["delete_refused"].endswith("): nothing deleted")
    refusals = [f for f in pair["failures"] if f["cause"] == "Deletes refused"]
    assert refusals and refusals[0]["side"] == "source (MINIO_URL)"


def test_max_delete_exceeded_deletes_nothing_and_says_so(stack, buckets, run_cli):
    names = [f"k{i}" for i in range(6)]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, names[:4])

    result = run_cli("reconcile", env={**env, **DELETES, "MIRROR_MAX_DELETE": "3"})

    assert result.returncode == 1, result.stdout + result.stderr
    assert "would delete 4 object(s), more than MIRROR_MAX_DELETE=3" in result.stdout
    assert keys(stack.target.client(), dst) == set(names)


def test_the_default_percentage_brake_holds(stack, buckets, run_cli):
    names = [f"k{i}" for i in range(5)]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, names[:1])  # 1 of 5: 20% > 10%

    result = run_cli("reconcile", env={**env, "MIRROR_DELETE": "true"})

    assert result.returncode == 1, result.stdout + result.stderr
    assert "MIRROR_MAX_DELETE_PERCENT=10%" in result.stdout
    assert keys(stack.target.client(), dst) == set(names)


def test_a_dry_run_lists_the_deletes(stack, buckets, run_cli):
    names = ["a", "gone/1", "gone/2 with space"]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, names[1:])

    text = run_cli("reconcile", "--dry-run", env={**env, **DELETES})
    as_json = run_cli("reconcile", "--dry-run", "--json", env={**env, **DELETES})

    assert text.returncode == 0, text.stdout + text.stderr
    assert "would delete (MIRROR_DELETE):" in text.stdout
    assert "      gone/1\n" in text.stdout and "      gone/2 with space" in text.stdout
    (pair,) = json.loads(as_json.stdout)["pairs"]
    assert (pair["would_delete"], pair["deleted"]) == (["gone/1", "gone/2 with space"], 0)
    assert keys(stack.target.client(), dst) == set(names)


def test_backfill_delete_cleans_a_prefix_behind_the_same_brake(stack, buckets, run_cli):
    names = ["p/keep", "p/gone1", "p/gone2", "q/gone", "p/x.tmp"]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, ["p/gone1", "p/gone2", "q/gone", "p/x.tmp"])
    env = {**env, "MIRROR_EXCLUDE": "*.tmp", "MIRROR_MAX_DELETE_PERCENT": "100"}

    dry = run_cli("backfill", "--direct", "--delete", "--dry-run", "--prefix", "p", env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "deletes: would delete 2:\n    p/gone1\n    p/gone2" in dry.stdout
    assert keys(stack.target.client(), dst) == set(names)

    braked = run_cli(
        "backfill", "--direct", "--delete", "--prefix", "p", env={**env, "MIRROR_MAX_DELETE": "1"}
    )
    assert braked.returncode == 1, braked.stdout + braked.stderr
    assert "deletes: REFUSED, nothing deleted: would delete 2 object(s)" in braked.stdout
    assert keys(stack.target.client(), dst) == set(names)

    done = run_cli("backfill", "--direct", "--delete", "--prefix", "p", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)
    assert (report["deleted"], report["delete_refused"]) == (2, "")
    # q/ is outside the prefix and p/x.tmp is excluded: both stay.
    assert keys(stack.target.client(), dst) == {"p/keep", "q/gone", "p/x.tmp"}


def test_backfill_delete_with_an_empty_source_prefix_deletes_nothing(stack, buckets, run_cli):
    names = ["p/a", "p/b", "r/c"]
    src, dst, env = mirrored(stack, buckets, run_cli, names)
    remove(stack.source.client(), src, ["p/a", "p/b"])

    result = run_cli("backfill", "--direct", "--delete", "--prefix", "p", env={**env, **DELETES})

    assert result.returncode == 1, result.stdout + result.stderr
    assert "came back empty" in result.stdout
    assert keys(stack.target.client(), dst) == set(names)


def test_check_says_whether_deletes_are_on(buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    env = {"BUCKET_PAIR": f"minio/{src}:aws/{dst}/copies", "MIRROR_MAX_DELETE": "500"}

    def deletes_line(**extra: str) -> str:
        out = run_cli("check", env={**env, **extra}).stdout
        (line,) = [line for line in out.splitlines() if re.match(r"\S+ +\S+ +deletes", line)]
        return line

    assert "skip" in deletes_line() and "off (MIRROR_DELETE=false)" in deletes_line()
    on = deletes_line(MIRROR_DELETE="true")
    assert f"deletes {dst}/copies" in on and "ok" in on, on
    assert "MIRROR_MAX_DELETE=500" in on and "the target credentials may delete" in on
    read_only = run_cli("check", "--read-only", env={**env, "MIRROR_DELETE": "true"}).stdout
    assert "delete permission not probed: --read-only" in read_only
