"""`minio-s3-mirror reconcile` against two real MinIO servers (issue 2 acceptance)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HARD_KEYS = {
    "nested/deep/ünïcødé 파일.txt": ("text/plain; charset=utf-8", b"unicode body\n"),
    "with space/a b c.txt": ("text/plain", b"spaces"),
    "plus+sign/1+1=2.csv": ("text/csv", b"a,b\n1,2\n"),
    "percent/100%25 done%.json": ("application/json", b'{"ok": true}'),
    "empty/zero.bin": ("application/x-empty-thing", b""),
    "big/twenty.bin": ("application/octet-stream", os.urandom(20 * 1024 * 1024)),
}


def put(client, bucket: str, objects: dict[str, tuple[str, bytes]]) -> None:
    for key, (content_type, body) in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def snapshot(client, bucket: str) -> dict[str, tuple[str, bytes]]:
    """Every object as key -> (Content-Type, body)."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            got = client.get_object(Bucket=bucket, Key=obj["Key"])
            found[obj["Key"]] = (got["ContentType"], got["Body"].read())
    return found


def pair(src: str, dst: str) -> str:
    return f"minio/{src}:aws/{dst}"


def summary(result) -> dict:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def test_hard_keys_arrive_byte_identical_with_content_type(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, HARD_KEYS)

    result = run_cli("reconcile", "--json", env={"BUCKET_PAIR": pair(src, dst)})

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(stack.target.client(), dst) == HARD_KEYS
    (counted,) = summary(result)["pairs"]
    assert counted["copied"] == len(HARD_KEYS)
    assert counted["bytes"] == sum(len(body) for _, body in HARD_KEYS.values())


def test_second_run_copies_nothing_and_says_so(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(
        stack.source.client(), src, {"a.txt": ("text/plain", b"a"), "b/c.txt": ("text/plain", b"c")}
    )
    env = {"BUCKET_PAIR": pair(src, dst)}
    assert run_cli("reconcile", env=env).returncode == 0

    again = run_cli("reconcile", env=env)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to copy: the target is up to date" in again.stdout
    assert "0 object(s) copied" in again.stdout


def test_changed_source_object_is_updated_by_default(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    put(source, src, {"doc.txt": ("text/plain", b"version one")})
    env = {"BUCKET_PAIR": pair(src, dst)}
    assert run_cli("reconcile", env=env).returncode == 0
    put(source, src, {"doc.txt": ("text/plain", b"version two, longer")})

    result = run_cli("reconcile", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(stack.target.client(), dst)["doc.txt"][1] == b"version two, longer"


def test_overwrite_false_leaves_changed_objects_and_reports_them(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    source = stack.source.client()
    put(source, src, {"doc.txt": ("text/plain", b"version one")})
    env = {"BUCKET_PAIR": pair(src, dst), "MIRROR_OVERWRITE": "false"}
    assert run_cli("reconcile", env=env).returncode == 0
    put(source, src, {"doc.txt": ("text/plain", b"version two, longer")})

    result = run_cli("reconcile", env=env)

    assert snapshot(stack.target.client(), dst)["doc.txt"][1] == b"version one"
    assert "left on the target (MIRROR_OVERWRITE=false)" in result.stdout
    assert "doc.txt" in result.stdout


def test_prefix_copies_only_that_prefix(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(
        stack.source.client(),
        src,
        {
            "2025/01/22/in.txt": ("text/plain", b"in"),
            "2025/01/22/deeper/in2.txt": ("text/plain", b"in2"),
            "2025/01/23/out.txt": ("text/plain", b"out"),
            "2025/01/220/out.txt": ("text/plain", b"not the same folder"),
        },
    )

    result = run_cli(
        "reconcile", env={"BUCKET_PAIR": pair(src, dst), "MIRROR_PREFIX": "2025/01/22"}
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(snapshot(stack.target.client(), dst)) == {
        "2025/01/22/in.txt",
        "2025/01/22/deeper/in2.txt",
    }


def test_exclude_skips_matching_keys(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(
        stack.source.client(),
        src,
        {
            "keep.txt": ("text/plain", b"k"),
            "logs/app.log": ("text/plain", b"l"),
            "tmp/x.tmp": ("text/plain", b"t"),
            "photos/.DS_Store": ("text/plain", b"d"),
        },
    )

    result = run_cli(
        "reconcile",
        env={"BUCKET_PAIR": pair(src, dst), "MIRROR_EXCLUDE": "*.tmp,*.log,*.DS_Store"},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(snapshot(stack.target.client(), dst)) == {"keep.txt"}


def test_dry_run_copies_nothing_and_lists_what_would_be_copied(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, {"one.txt": ("text/plain", b"1"), "d/two.txt": ("a/b", b"2")})

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(src, dst), "MIRROR_DRY_RUN": "true"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(stack.target.client(), dst) == {}
    assert "DRY RUN" in result.stdout
    assert "one.txt" in result.stdout and "d/two.txt" in result.stdout


def mc_wrapper(tmp_path: Path, delay: float = 1.0) -> tuple[Path, Path]:
    """An MC_BINARY that records each `mc mirror` start/end and its argv, then runs mc."""
    log = tmp_path / "mc-calls.log"
    script = tmp_path / "mc-wrapper.sh"
    real = Path(os.environ.get("MIRROR_CACHE_DIR", Path(__file__).parents[2] / ".cache"))
    script.write_text(
        "#!/bin/bash\n"
        f'log="{log}"\n'
        'if [[ $1 == mirror ]]; then echo "start $$" >>"$log"; '
        f"sleep {delay}; fi\n"
        'tr "\\0" " " </proc/$$/cmdline >>"$log"; echo >>"$log"\n'
        f'"{real / "bin" / "mc"}" "$@"; rc=$?\n'
        '[[ $1 == mirror ]] && echo "end $$" >>"$log"\n'
        "exit $rc\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def most_at_once(log: Path) -> int:
    running = peak = 0
    for line in log.read_text().splitlines():
        if line.startswith("start "):
            running += 1
            peak = max(peak, running)
        elif line.startswith("end "):
            running -= 1
    return peak


def test_four_pairs_all_mirrored_never_more_than_three_at_once(stack, buckets, run_cli, tmp_path):
    pairs = [(buckets("source"), buckets("target")) for _ in range(4)]
    for i, (src, _) in enumerate(pairs):
        put(stack.source.client(), src, {f"pair{i}.txt": ("text/plain", f"{i}".encode())})
    wrapper, log = mc_wrapper(tmp_path)

    result = run_cli(
        "reconcile",
        env={
            "BUCKET_PAIRS": ";".join(pair(s, d) for s, d in pairs),
            "MC_BINARY": str(wrapper),
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for i, (_, dst) in enumerate(pairs):
        assert snapshot(stack.target.client(), dst) == {
            f"pair{i}.txt": ("text/plain", f"{i}".encode())
        }
    assert log.read_text().count("start ") == 4
    # Each mirror is held for a second, so overlap is certain: the limit is what bounds it.
    assert most_at_once(log) == 3


def test_objects_only_on_the_target_are_never_deleted(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, {"from-source.txt": ("text/plain", b"s")})
    put(stack.target.client(), dst, {"only-on-target.txt": ("text/plain", b"t")})

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(src, dst)})

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(snapshot(stack.target.client(), dst)) == {"from-source.txt", "only-on-target.txt"}


def test_missing_source_bucket_fails_that_pair_only(stack, buckets, run_cli):
    good_src, good_dst, other_dst = buckets("source"), buckets("target"), buckets("target")
    put(stack.source.client(), good_src, {"fine.txt": ("text/plain", b"fine")})

    result = run_cli(
        "reconcile",
        env={"BUCKET_PAIRS": f"{pair('no-such-bucket', other_dst)};{pair(good_src, good_dst)}"},
    )

    assert result.returncode == 1
    assert set(snapshot(stack.target.client(), good_dst)) == {"fine.txt"}
    assert "Unable to stat source" in result.stdout
    assert "check that the bucket exists" in result.stdout


def test_wrong_credentials_name_the_cause_and_hint(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")

    result = run_cli(
        "reconcile", env={"BUCKET_PAIR": pair(src, dst), "MINIO_SECRET_KEY": "wrong-secret-123"}
    )

    assert result.returncode == 1
    assert "Failed to set alias" in result.stdout
    assert "credentials rejected" in result.stdout
    assert "check that the access key and secret key are valid" in result.stdout


def test_unreachable_endpoint_names_the_cause_and_hint(stack, buckets, run_cli):
    src, dst = buckets("source"), buckets("target")
    closed = f"http://127.0.0.1:{__import__('stack').free_port()}"

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(src, dst), "AWS_URL": closed})

    assert result.returncode == 1
    assert "Failed to set alias" in result.stdout
    assert "endpoint unreachable" in result.stdout
    assert "check firewalls" in result.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MINIO_URL": None}, "MINIO_URL"),
        ({"BUCKET_PAIR": "minio/a"}, "BUCKET_PAIR"),
        ({"BUCKET_PAIR": "s3/source:aws/destination"}, "BUCKET_PAIR"),
        ({"MIRROR_DRY_RUN": "maybe"}, "MIRROR_DRY_RUN"),
        ({"MIRROR_MAX_WORKERS": "many"}, "MIRROR_MAX_WORKERS"),
    ],
)
def test_bad_input_exits_2_naming_the_variable(run_cli, env, variable):
    result = run_cli("reconcile", env={"BUCKET_PAIR": "minio/source:aws/destination", **env})

    assert result.returncode == 2
    assert result.stderr.startswith(f"configuration error: {variable}:")
    assert "Traceback" not in result.stderr


def test_secrets_never_in_output_logs_or_mc_argv(stack, buckets, run_cli, tmp_path, slack):
    src, dst = buckets("source"), buckets("target")
    put(stack.source.client(), src, {"x.txt": ("text/plain", b"x")})
    wrapper, log = mc_wrapper(tmp_path, delay=0)
    env = stack.env()
    secrets = [env["MINIO_SECRET_KEY"], env["AWS_SECRET_KEY"], env["SLACK_BOT_TOKEN"]]

    runs = [
        run_cli(
            "reconcile",
            env={"BUCKET_PAIR": pair(src, dst), "MC_BINARY": str(wrapper), **extra},
        )
        for extra in (
            {"MIRROR_DEBUG": "true"},
            {"MIRROR_DEBUG": "true", "MIRROR_LOG_FORMAT": "json"},
            {"BUCKET_PAIR": pair("no-such-bucket", dst)},
        )
    ]

    assert runs[0].returncode == 0, runs[0].stdout + runs[0].stderr
    seen = "".join(r.stdout + r.stderr for r in runs) + log.read_text()
    seen += json.dumps(slack.messages())
    assert "mirror" in log.read_text()
    for secret in secrets:
        assert secret not in seen


def test_slack_gets_one_report_with_per_pair_counts(stack, buckets, run_cli, slack):
    pairs = [(buckets("source"), buckets("target")) for _ in range(2)]
    put(stack.source.client(), pairs[0][0], {"a.txt": ("text/plain", b"a")})
    put(stack.source.client(), pairs[1][0], {"b.txt": ("text/plain", b"b"), "c": ("x/y", b"c")})

    result = run_cli("reconcile", env={"BUCKET_PAIRS": ";".join(pair(s, d) for s, d in pairs)})

    assert result.returncode == 0, result.stdout + result.stderr
    (message,) = slack.messages()
    assert message["channel"] == "C0FAKE"
    blocks = json.dumps(message["blocks"], ensure_ascii=False)
    assert f"{pair(*pairs[0])}" in blocks and f"{pair(*pairs[1])}" in blocks
    assert "copied 1 object(s)" in blocks and "copied 2 object(s)" in blocks
    assert message["text"]


def test_slack_with_only_one_variable_warns_and_sends_nothing(stack, buckets, run_cli, slack):
    src, dst = buckets("source"), buckets("target")

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(src, dst), "SLACK_CHANNEL_ID": None})

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SLACK_CHANNEL_ID" in result.stderr
    assert slack.messages() == []


@pytest.mark.parametrize("broken_source", [False, True])
def test_slack_error_leaves_the_exit_code_as_is(stack, buckets, run_cli, slack, broken_source):
    src, dst = buckets("source"), buckets("target")
    slack.fail_with = "channel_not_found"
    source = "no-such-bucket" if broken_source else src

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(source, dst)})

    assert result.returncode == (1 if broken_source else 0), result.stdout + result.stderr
    assert "channel_not_found" in result.stderr
