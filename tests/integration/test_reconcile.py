"""`minio-s3-mirror reconcile` against two real MinIO servers (issue 2 acceptance)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, base_env

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


def test_a_number_of_workers_mirrors_as_the_seed_did(stack, buckets, run_cli):
    """MIRROR_MAX_WORKERS=10 is the seed README's example (deploy/ sets 8). The pinned mc
    has no flag for its transfers: the number sizes the copy engine's pool only, and
    mc mirror still runs."""
    src, dst = buckets("source"), buckets("target")
    objects = {"a.txt": ("text/plain", b"a"), "b/c.txt": ("text/plain", b"c")}
    put(stack.source.client(), src, objects)

    result = run_cli("reconcile", env={"BUCKET_PAIR": pair(src, dst), "MIRROR_MAX_WORKERS": "10"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(stack.target.client(), dst) == objects


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
        # One write per line (O_APPEND): wrappers of pairs run at once share the log.
        'printf "%s\\n" "$(tr "\\0" " " </proc/$$/cmdline)" >>"$log"\n'
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
        ({"MIRROR_RECONCILE_TIMEOUT": "forever"}, "MIRROR_RECONCILE_TIMEOUT"),
        ({"MIRROR_RECONCILE_TIMEOUT": "0"}, "MIRROR_RECONCILE_TIMEOUT"),
        ({"MIRROR_RECONCILE_TIMEOUT": "8d"}, "MIRROR_RECONCILE_TIMEOUT"),
        ({"MIRROR_RECONCILE_TIMEOUT": "1.5h"}, "MIRROR_RECONCILE_TIMEOUT"),
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


# Stub mc: these tests are about our reader and our process handling, not mc, so a small
# script on MC_BINARY prints what the pinned mc prints (lines as captured in
# tests/replicator/data/mc/) and records what it was given.

MANY = 200_000
RSS_LIMIT_KIB = 100 * 1024


def stub_mc(tmp_path: Path, mirror: str, name: str = "stub-mc") -> Path:
    """A Python MC_BINARY: dumps its environment and argv, runs `mirror` for `mc mirror`.
    It copies nothing: the verify after it looks for what it announced on the target."""
    path = tmp_path / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        f"with open({str(tmp_path / 'mc-env.json')!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv, 'env': dict(os.environ)}) + '\\n')\n"
        "if sys.argv[1] == 'mirror':\n" + "".join(f"    {line}\n" for line in mirror.splitlines())
    )
    path.chmod(0o755)
    return path


def announcing(count: int, size: int) -> str:
    """Stub body: `count` announcements like the real mc's, then its totals line."""
    return (
        "w = sys.stdout.write\n"
        f"for i in range({count}):\n"
        "    key = f'2025/01/22/sensor-{i:07d}.parquet'\n"
        "    w(json.dumps({'status': 'success', 'source': 'minio/src1/' + key,"
        f" 'target': 'aws/cap1/' + key, 'size': {size}, 'totalCount': i + 1,"
        f" 'totalSize': (i + 1) * {size}, 'eventTime': '', 'eventType': ''}}) + '\\n')\n"
        f"w(json.dumps({{'status': 'success', 'total': {count * size},"
        f" 'transferred': {count * size}, 'duration': 1000, 'speed': 1.0}}) + '\\n')\n"
    )


def hanging(tmp_path: Path, first_line: str) -> str:
    """Stub body: start a child that holds mc's output, print one line, hang."""
    pid_file = tmp_path / "child.pid"
    return (
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        f"print({first_line!r}, flush=True)\n"
        "time.sleep(600)\n"
    )


def gone(pid: int, within_s: float = 15.0) -> bool:
    """The process has exited (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat_line.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_200k_objects_stay_under_100_mib_and_are_all_counted(stack, buckets, tmp_path):
    """Memory must not grow with the object count (the 512Mi CronJob used to run out),
    neither while mc's records are read nor in the verify of every one of them."""
    mc = stub_mc(tmp_path, announcing(MANY, 1000))
    env = {**base_env(stack), "BUCKET_PAIR": pair("src1", buckets("target")), "MC_BINARY": str(mc)}
    env.pop("SLACK_BOT_TOKEN")
    # A launcher runs the real CLI and reports the peak RSS of its largest child: the CLI
    # (the stub mc is a small Python process).
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, CLI, "reconcile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    # The stub copied nothing: the verify finds every announced key missing.
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    (counted,) = summary(result)["pairs"]
    assert (counted["copied"], counted["bytes"]) == (0, 0)
    assert counted["failure_count"] == MANY
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    assert peak_kib < RSS_LIMIT_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB for {MANY} objects"


def test_mc_environment_holds_only_its_own_credentials(stack, buckets, run_cli, tmp_path, slack):
    mc = stub_mc(tmp_path, announcing(3, 10))
    dst = buckets("target")
    for i in range(3):  # what the stub announces, there for the verify
        key = f"2025/01/22/sensor-{i:07d}.parquet"
        stack.target.client().put_object(Bucket=dst, Key=key, Body=b"0123456789")
    env = stack.env()
    own = {"MINIO_SECRET_KEY": env["MINIO_SECRET_KEY"], "AWS_SECRET_KEY": env["AWS_SECRET_KEY"]}
    others = {  # secrets of this process that mc must never see
        "SLACK_BOT_TOKEN": env["SLACK_BOT_TOKEN"],
        "WEBHOOK_AUTH_TOKEN": "webhook-token-never-for-mc",
        "RABBITMQ_URL": "amqp://mirror:rabbit-password-never-for-mc@127.0.0.1:5672/%2F",
        "UNRELATED_SECRET": "unrelated-value-never-for-mc",
    }

    result = run_cli(
        "reconcile",
        env={"BUCKET_PAIR": pair("src1", dst), "MC_BINARY": str(mc), **others},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    runs = [json.loads(line) for line in (tmp_path / "mc-env.json").read_text().splitlines()]
    # ls: the target's reach probe, stopped (maybe before it wrote) once mc named objects
    assert {"mirror"} <= {r["argv"][1] for r in runs} <= {"ls", "mirror"}
    for run in runs:
        seen = run["env"]
        assert {"MC_HOST_minio", "MC_HOST_aws"} <= set(seen)
        assert set(seen) <= {
            *("PATH", "HOME", "LANG", "LC_CTYPE", "MC_HOST_minio", "MC_HOST_aws"),
            "MC_CONFIG_DIR",  # the private dir (HOME is it too): nothing secret
        }
        assert own["MINIO_SECRET_KEY"] in seen["MC_HOST_minio"]
        assert own["AWS_SECRET_KEY"] in seen["MC_HOST_aws"]
        outside = json.dumps({k: v for k, v in seen.items() if not k.startswith("MC_HOST_")})
        everywhere = json.dumps(seen)
        for name, value in own.items():
            assert value not in outside, name
        for name, value in {**others, "rabbit": "rabbit-password-never-for-mc"}.items():
            assert value not in everywhere, name


ANNOUNCED = json.dumps(
    {"status": "success", "source": "minio/src1/a", "target": "aws/cap1/a", "size": 1}
)


def test_timeout_stops_a_hanging_mc_and_reports_every_pair(stack, run_cli, tmp_path, slack):
    mc = stub_mc(tmp_path, hanging(tmp_path, ANNOUNCED))
    pairs = [pair("src1", "cap1"), pair("src2", "cap2")]

    result = run_cli(
        "reconcile",
        env={
            "BUCKET_PAIRS": ";".join(pairs),
            "MC_BINARY": str(mc),
            "MIRROR_MAX_PAIRS": "1",  # the second pair waits: the deadline passes first
            "MIRROR_RECONCILE_TIMEOUT": "3s",
        },
        timeout=120,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "2 pair(s), 2 failed" in result.stdout
    assert "mc mirror stopped: the run reached MIRROR_RECONCILE_TIMEOUT (3s)" in result.stdout
    assert "mc mirror not started: the run reached MIRROR_RECONCILE_TIMEOUT (3s)" in result.stdout
    assert "cause: Run timed out" in result.stdout
    assert gone(int((tmp_path / "child.pid").read_text())), "mc's child survived the timeout"
    (message,) = slack.messages()
    assert "FAILED" in message["text"]
    assert "Run timed out: mc mirror stopped" in json.dumps(message["blocks"])


def test_unreadable_mc_output_stops_mc_and_fails_the_pair(stack, run_cli, tmp_path):
    bad = json.dumps(
        {"status": "success", "source": "minio/src1/a", "target": "aws/cap1/a", "size": "1 KiB"}
    )
    mc = stub_mc(tmp_path, hanging(tmp_path, bad))

    # No timeout to rescue it: only stopping mc when reading fails ends this run.
    result = run_cli(
        "reconcile",
        env={"BUCKET_PAIR": pair("src1", "cap1"), "MC_BINARY": str(mc)},
        timeout=120,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "mc printed a record this tool cannot read" in result.stdout
    assert "cause: mc output not understood" in result.stdout
    assert gone(int((tmp_path / "child.pid").read_text())), "mc's child survived"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_interrupting_reconcile_stops_mc(stack, tmp_path, sig, code):
    """mc runs in its own process group, so our signal must be passed on: nothing outlives us."""
    mc = stub_mc(tmp_path, hanging(tmp_path, ANNOUNCED))
    env = {**base_env(stack), "BUCKET_PAIR": pair("src1", "cap1"), "MC_BINARY": str(mc)}
    cli = subprocess.Popen(
        [CLI, "reconcile"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background inherits SIGINT ignored,
        # and Python then leaves it ignored (no KeyboardInterrupt to test).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        pid_file = tmp_path / "child.pid"
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())

        cli.send_signal(sig)
        _, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()

    assert cli.returncode == code, stderr
    assert "interrupted: stopping every running mc" in stderr
    assert gone(child), "mc's child outlived the interrupted run"
