"""The verify after `mc mirror`: what mc announced but did not copy is caught, and a run
with nothing to copy lists each side once (mc's listings), nothing more."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from replicator.reconcile import verify
from tests.integration.test_iam import user_with_policy
from tests.replicator.test_copier import Requests

pytestmark = pytest.mark.integration


def refusing(bucket: str, prefix: str) -> str:
    """A target policy that may list, read and write `bucket` but not write under `prefix`:
    mc announces those uploads, is refused with AccessDenied, and says nothing more."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                    "Resource": [f"arn:aws:s3:::{bucket}"],
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/*"],
                },
                {
                    "Effect": "Deny",
                    "Action": ["s3:PutObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"],
                },
            ],
        }
    )


def fill(client, bucket: str, keys: list[str]) -> None:
    """Many small objects at once: one tar that MinIO unpacks into objects (snowball)."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for key in keys:
            entry = tarfile.TarInfo(key)
            entry.size = 1
            tar.addfile(entry, io.BytesIO(b"x"))
    client.put_object(
        Bucket=bucket,
        Key="batch.tar",
        Body=packed.getvalue(),
        Metadata={"snowball-auto-extract": "true"},
    )


def reconcile(run_cli, src: str, dst: str, **env: str) -> tuple[int, dict]:
    done = run_cli("reconcile", "--json", env={"BUCKET_PAIR": f"minio/{src}:aws/{dst}", **env})
    assert done.stdout.strip(), done.stderr
    (pair,) = json.loads(done.stdout)["pairs"]
    return done.returncode, pair


@pytest.mark.parametrize("count", [6, verify.HEAD_LIMIT + 6], ids=["headed", "listed"])
def test_uploads_mc_announced_but_the_target_refused_are_reported(stack, buckets, run_cli, count):
    """A few announced keys are HEADed, more are checked by a listing: either catches
    mc's silent AccessDenied."""
    src, dst = buckets("source"), buckets("target")
    keys = [f"ok/{i:05d}" for i in range(count - 2)] + ["refused/1", "refused/2"]
    fill(stack.source.client(), src, keys)
    user = user_with_policy(stack.target, refusing(dst, "refused/"))

    code, pair = reconcile(run_cli, src, dst, AWS_ACCESS_KEY=user[0], AWS_SECRET_KEY=user[1])

    assert code == 1, pair
    assert pair["failure_count"] == 2
    assert {f["key"] for f in pair["failures"]} == {"refused/1", "refused/2"}
    assert {f["cause"] for f in pair["failures"]} == {"Failed to access alias"}
    assert (pair["copied"], pair["bytes"]) == (count - 2, count - 2)


def test_nothing_to_copy_lists_each_side_once_and_heads_nothing(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    fill(stack.source.client(), src, [f"k/{i}" for i in range(2500)])  # 3 pages a side
    assert reconcile(run_cli, src, dst)[0] == 0
    requests = Requests(stack)

    code, pair = reconcile(run_cli, src, dst)

    assert code == 0 and pair["copied"] == 0, pair
    spent = requests.spent()
    # mc's listing of each side, and on the target the first page of its reach probe.
    assert (spent["source ListObjectsV2"], spent["target ListObjectsV2"]) == (3, 4), spent
    assert not {"target HeadObject", "source HeadObject", "source GetObject"} & set(spent)


def test_an_empty_source_still_names_a_target_mc_cannot_reach(stack, buckets, run_cli):
    """mc lists the target only while the source has objects: the reach probe tells."""
    src, dst = buckets("source"), buckets("target")

    code, pair = reconcile(run_cli, src, dst, AWS_SECRET_KEY="wrong-secret")

    assert code == 1, pair
    (failure,) = pair["failures"]
    assert (failure["cause"], failure["side"]) == ("Failed to set alias", "target (AWS_URL)")


def test_a_few_copies_are_verified_by_a_head_each_not_a_listing(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    fill(source, src, [f"old/{i}" for i in range(20)])
    assert reconcile(run_cli, src, dst)[0] == 0
    for key in ("new/1", "new/2", "new/3"):
        source.put_object(Bucket=src, Key=key, Body=b"n")
    requests = Requests(stack)

    code, pair = reconcile(run_cli, src, dst)

    assert code == 0 and pair["copied"] == 3, pair
    spent = requests.spent()
    assert spent["target ListObjectsV2"] == 2, spent  # mc's, and its reach probe's page
    assert spent["target HeadObject"] == 3, spent
