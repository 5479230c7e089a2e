"""mc's config dir: first on its command line, private, never $HOME; the CA bundles in it;
`mc ls` of each endpoint for `check` (the real mc against the real stack)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import certifi
import pytest
import stack as local_stack

from replicator import config
from replicator.reconcile import mc, runner
from tests.conftest import CLI, base_env

PLAIN = {
    "MINIO_URL": "https://minio:9000",
    "MINIO_ACCESS_KEY": "a",
    "MINIO_SECRET_KEY": "b",
    "AWS_URL": "https://s3.amazonaws.com",
    "AWS_ACCESS_KEY": "c",
    "AWS_SECRET_KEY": "d",
    "BUCKET_PAIR": "minio/src-b:aws/dst-b",
}


def settings_for(stack, pair: str, **extra: str) -> config.Settings:
    return config.load({**stack.env(), "BUCKET_PAIR": pair, **extra})


@pytest.mark.integration
def test_reconcile_copies_when_home_is_unusable(stack, buckets):
    """HOME a regular file: creating anything under it fails, even for root (the image
    test runs the same with a read-only root filesystem and an unknown user id)."""
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="a/b.txt", Body=b"hello")
    env = {**base_env(stack), "BUCKET_PAIR": f"minio/{src}:aws/{dst}", "HOME": "/etc/hostname"}
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL_ID"):
        env.pop(name)

    result = subprocess.run(
        [CLI, "reconcile"], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    got = stack.target.client().get_object(Bucket=dst, Key="a/b.txt")["Body"].read()
    assert got == b"hello"


@pytest.mark.integration
def test_mc_keeps_its_config_in_the_private_dir(stack, monkeypatch):
    """The real mc, as a session runs it: its config is written to the private dir itself
    (MC_CONFIG_DIR honoured), not to a `.mc` under the HOME the session gives it."""
    monkeypatch.setenv("PATH", f"{local_stack.BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", "/etc/hostname")
    settings = settings_for(stack, "minio/src-b:aws/dst-b")

    with mc.session(settings) as run, run.run("alias", "list") as listing:
        aliases = [json.loads(line)["alias"] for line in listing.stdout]
        written = sorted(p.name for p in run.config_dir.iterdir())

    assert listing.code == 0, listing.stderr
    assert {"minio", "aws"} <= set(aliases)
    assert "config.json" in written and ".mc" not in written, written
    assert run.env["HOME"] == run.env["MC_CONFIG_DIR"] == str(run.config_dir)


def test_every_ca_bundle_reaches_mcs_certs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MC_BINARY", "/bin/true")
    bundles = {}
    end = "-----END CERTIFICATE-----\n"
    roots = certifi.contents().split(end)  # real CAs: a bundle must load in OpenSSL
    for n, name in enumerate(("MIRROR_CA_BUNDLE", "MINIO_CA_BUNDLE", "AWS_CA_BUNDLE")):
        path = tmp_path / f"{name}.pem"
        path.write_text(f"\n{name}\n{roots[n].strip()}\n{end}")
        bundles[name] = str(path)
    settings = config.load({**PLAIN, **bundles})
    expected = set(bundles.values())

    system = tmp_path / "system-roots.pem"
    system.write_text("-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(system))

    with mc.session(settings) as run:
        cas = run.config_dir / "certs" / "CAs"
        copied = {p.read_text() for p in cas.iterdir()}
        mode = stat.S_IMODE(run.config_dir.stat().st_mode)
        roots = Path(run.env["SSL_CERT_FILE"])
        combined = roots.read_text()

    assert copied == {Path(p).read_text() for p in expected}
    # Through HTTPS_PROXY mc verifies with SSL_CERT_FILE only: the system's roots and ours.
    assert roots.parent.parent == run.config_dir
    for name in ("SYSTEM", *bundles):
        assert f"\n{name}\n" in combined, name
    assert mode == 0o700
    assert not run.config_dir.exists()  # removed with its copies


def test_no_writable_temporary_directory_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
    settings = config.load(PLAIN)

    with pytest.raises(SystemExit) as exited:
        runner.reconcile(settings)

    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mount a writable /tmp" in err, err


@pytest.mark.integration
def test_probe_lists_both_endpoints_and_names_what_fails(stack, buckets):
    src, dst = buckets("source"), buckets("target")
    stack.source.client().put_object(Bucket=src, Key="one.txt", Body=b"1")

    good = mc.probe(settings_for(stack, f"minio/{src}:aws/{dst}"))
    missing = mc.probe(settings_for(stack, f"minio/{src}:aws/no-such-bucket-{os.getpid()}"))
    bad_key = mc.probe(settings_for(stack, f"minio/{src}:aws/{dst}", AWS_SECRET_KEY="wrong"))

    assert [(p.name, p.ok) for p in good] == [
        (f"mc source {src}", True),
        (f"mc target {dst}", True),
    ]
    assert "listed" in good[0].detail and "(empty)" in good[1].detail
    assert [p.ok for p in missing] == [True, False]
    assert "does not exist" in missing[1].detail.lower(), missing[1]
    assert [p.ok for p in bad_key] == [True, False]
    assert "signature" in bad_key[1].text.lower() or "access" in bad_key[1].text.lower()


@pytest.mark.integration
def test_check_lists_each_bucket_with_mc_unless_its_own_check_failed(stack, buckets):
    from replicator.check import Check, mc_checks

    src, dst = buckets("source"), buckets("target")
    settings = settings_for(stack, f"minio/{src}:aws/{dst}")

    healthy = mc_checks(settings, [Check(f"source {src}", "ok", ""), Check("rabbitmq", "FAIL", "")])
    target_failed = mc_checks(settings, [Check(f"target {dst}", "FAIL", "refused")])

    assert [(c.name, c.status) for c in healthy] == [
        ("mc", "ok"),
        (f"mc source {src}", "ok"),
        (f"mc target {dst}", "ok"),
    ]
    assert [(c.name, c.status) for c in target_failed] == [
        ("mc", "ok"),
        (f"mc source {src}", "ok"),
        (f"mc target {dst}", "skip"),
    ]
