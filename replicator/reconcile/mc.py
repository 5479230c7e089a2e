"""Running the `mc` binary without exposing credentials.

Credentials reach mc only through `MC_HOST_<alias>` environment variables; mc gets a
private (0700) temporary config dir that is removed afterwards, so nothing secret is
on the command line (visible in `ps`) or left on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

from ..config import SOURCE_ALIAS, TARGET_ALIAS, Endpoint, Settings


class McMissing(RuntimeError):
    pass


def host_variable(endpoint: Endpoint) -> str:
    """The `MC_HOST_<alias>` value: scheme://ACCESS:SECRET@host:port, both URL-quoted."""
    parts = urlsplit(endpoint.url)
    user = quote(endpoint.access_key, safe="")
    password = quote(endpoint.secret_key, safe="")
    return f"{parts.scheme}://{user}:{password}@{parts.netloc}"


def find_binary() -> str:
    path = shutil.which(os.environ.get("MC_BINARY", "mc"))
    if not path:
        raise McMissing("mc is not on PATH (install it, or set MC_BINARY to its path)")
    return path


class Mc:
    """An mc invocation context: binary, private config dir and credential environment."""

    def __init__(self, settings: Settings, config_dir: Path) -> None:
        self.settings = settings
        self.binary = find_binary()
        self.config_dir = config_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MC_HOST_")}
        self.env[f"MC_HOST_{SOURCE_ALIAS}"] = host_variable(settings.source)
        if settings.target:
            self.env[f"MC_HOST_{TARGET_ALIAS}"] = host_variable(settings.target)
        if settings.ca_bundle:
            cas = config_dir / "certs" / "CAs"
            cas.mkdir(parents=True)
            shutil.copy(settings.ca_bundle, cas / "ca-bundle.crt")

    def command(self, *args: str) -> list[str]:
        flags = ["--config-dir", str(self.config_dir), "--json", "--no-color"]
        if not self.settings.tls_verify:
            flags.append("--insecure")
        if self.settings.debug:
            flags.append("--debug")
        return [self.binary, *args[:1], *flags, *args[1:]]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )


@contextmanager
def session(settings: Settings) -> Iterator[Mc]:
    """An Mc whose private config dir is removed when the block ends."""
    config_dir = Path(tempfile.mkdtemp(prefix="minio-s3-mirror-mc-"))
    try:
        yield Mc(settings, config_dir)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
