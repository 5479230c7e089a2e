"""Building and running the image without a Docker engine or a registry: Debian's podman
and buildah, with their storage in the git-ignored cache and the Dockerfile's base
images made as stand-ins with mmdebstrap (Debian bookworm with Python 3.11; bookworm
with the Go toolchain from the Go module proxy), tagged with the Dockerfile's base names.

Runnable by hand: `python tests/image/podman.py` builds (or finds) the image and prints
its name and size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MIRROR_CACHE_DIR", REPO / ".cache")) / "image"
IMAGE = "localhost/minio-s3-mirror:latest"
# The stand-in for golang:1.24-bookworm: this toolchain, from the Go module proxy.
GO_TOOLCHAIN = "go1.24.13"
TOOLS = ("podman", "buildah", "runc", "mmdebstrap")
# Slim, like the official images: no documentation, manual pages or translations.
_SLIM = ["--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*"]  # fmt: skip
_NOFILE = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
_NPROC = 4096  # the hard limit here (96370) is refused too; the build and runs need few
_LOCAL_CAS = Path("/usr/local/share/ca-certificates")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if not shutil.which(tool)]


class Podman:
    """podman with its own storage (in the cache), run state and containers.conf."""

    def __init__(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        # Short, because conmon's socket paths under it must stay under 108 bytes, and the
        # same every run, because podman's database in the storage remembers it.
        tag = hashlib.sha256(str(CACHE).encode()).hexdigest()[:8]
        self.runroot = Path("/tmp") / f"minio-s3-mirror-podman-{tag}"
        self.runroot.mkdir(mode=0o700, exist_ok=True)
        self.conf = self.runroot / "containers.conf"
        # runc, the runtime install.sh installs (podman may default to crun). Limits no
        # higher than ours: podman's defaults fail here with "error setting rlimit".
        self.ulimits = [f"nofile={_NOFILE}:{_NOFILE}", f"nproc={_NPROC}:{_NPROC}"]
        self.conf.write_text(
            "[containers]\n"
            f"default_ulimits = {json.dumps(self.ulimits)}\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        self.base = [
            "podman",
            "--root", str(CACHE / "storage"),
            "--runroot", str(self.runroot),
            "--storage-driver", "overlay",
        ]  # fmt: skip

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, **kwargs
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.base, *args],
            env=kwargs.pop("env", self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}: {result.stderr[-3000:]}")
        return result

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def close(self) -> None:
        self("rm", "--all", "--force", check=False)


def dockerfile_bases() -> dict[str, str]:
    """The Dockerfile's base-image arguments: name -> tag (the pinned digest left off)."""
    text = (REPO / "Dockerfile").read_text()
    found = re.findall(r"^ARG (\w+_IMAGE)=([^@\s]+)@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    return {name: f"docker.io/library/{tag}" for name, tag in found}


def go_toolchain() -> Path:
    """The Go toolchain module's files, downloaded into the module cache by `go`."""
    env = {**os.environ, "GOTOOLCHAIN": GO_TOOLCHAIN}
    subprocess.run(["go", "version"], env=env, check=True, capture_output=True, timeout=600)
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    root = Path(modcache) / "golang.org" / f"toolchain@v0.0.1-{GO_TOOLCHAIN}.linux-amd64"
    assert (root / "bin" / "go").exists(), root
    return root


def stand_in(podman: Podman, tag: str) -> None:
    """A Debian bookworm image standing in for the official `tag` (python or golang)."""
    if "golang" in tag:
        toolchain = go_toolchain()
        packages = "ca-certificates,git"
        hooks = [f'--customize-hook=cp -a "{toolchain}" "$1/usr/local/go"',
                 '--customize-hook=mkdir -p "$1/go/bin" "$1/go/src"']  # fmt: skip
        version = GO_TOOLCHAIN.removeprefix("go")
        changes = ["ENV GOPATH=/go", f"ENV PATH=/go/bin:/usr/local/go/bin:{_PATH}",
                   f"ENV GOLANG_VERSION={version}", "WORKDIR /go"]  # fmt: skip
    else:
        packages = "python3,python3-venv,python-is-python3,ca-certificates"
        hooks, changes = [], [f"ENV PATH={_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]']
    if list(_LOCAL_CAS.glob("*.crt")):
        # This machine's own CAs (a TLS-inspecting proxy's, as enterprises have): the
        # build's `go install` and pip reach their registries through it.
        hooks += [f'--customize-hook=cp {_LOCAL_CAS}/*.crt "$1{_LOCAL_CAS}/"',
                  '--customize-hook=chroot "$1" update-ca-certificates']  # fmt: skip
        changes.append("ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={packages}", *_SLIM, *hooks,
             "bookworm", str(tarball)],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        flags = [arg for change in changes for arg in ("--change", change)]
        podman("import", *flags, str(tarball), tag, timeout=600)


def build(podman: Podman) -> float:
    """Build IMAGE from the unchanged Dockerfile on the stand-ins; the seconds it took."""
    bases = dockerfile_bases()
    assert set(bases) == {"GO_IMAGE", "PYTHON_IMAGE"}, bases
    for tag in bases.values():
        if not podman.exists(tag):
            stand_in(podman, tag)
    started = time.monotonic()
    podman(
        "build", "--pull=never", "--network=host", "--format=docker", "--layers",
        *[arg for limit in podman.ulimits for arg in ("--ulimit", limit)],
        *[arg for name, tag in bases.items() for arg in ("--build-arg", f"{name}={tag}")],
        "--tag", IMAGE, "--file", str(REPO / "Dockerfile"), str(REPO),
        timeout=1800,
    )  # fmt: skip
    return time.monotonic() - started


def size_mb(podman: Podman) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout) / 1e6


if __name__ == "__main__":
    engine = Podman()
    try:
        took = build(engine)
        print(f"{IMAGE}: built in {took:.0f}s, {size_mb(engine):.1f} MB", file=sys.stderr)
    finally:
        engine.close()
