"""Running the `mc` binary: no credential exposed, a minimal environment, a deadline.

Credentials reach mc only through `MC_HOST_<alias>` environment variables; mc gets a
private (0700) temporary config dir that is removed afterwards, so nothing secret is
on the command line (visible in `ps`) or left on disk. mc's environment is built from
scratch: locale, PATH, HOME, network settings it needs (proxies, CA locations) and its
own two `MC_HOST_*`, nothing else of ours (no Slack, webhook or RabbitMQ secret).

Each run is its own process group. At the run's deadline, when reading its output
fails, or when this process is interrupted (stop_all), the whole group is stopped
(SIGTERM, then SIGKILL) and reaped, so a wrapper script cannot leave a real mc behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from ..config import SOURCE_ALIAS, TARGET_ALIAS, Endpoint, Settings

log = logging.getLogger(__name__)

# Taken from our environment when set; everything else is left out.
PASSED_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSL_CERT_FILE",  # Go's TLS reads these for the system CA roots
        "SSL_CERT_DIR",
        "HTTP_PROXY",  # and these for the way to the endpoints
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
_WEB_IDENTITY = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")  # IRSA sets both
STOP_GRACE_S = 3.0  # between SIGTERM and SIGKILL
_STDERR_LINES = 20
_running: set[McRun] = set()  # every mc not yet reaped, for stop_all()
_running_lock = threading.Lock()
_interrupted = threading.Event()  # set by stop_all(): no new mc starts


class McMissing(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """This process is being interrupted: no mc is started any more."""


class NoCredentials(RuntimeError):
    """AWS_ACCESS_KEY/AWS_SECRET_KEY are unset and the standard AWS chain found nothing."""


def host_variable(endpoint: Endpoint) -> str:
    """The `MC_HOST_<alias>` value: scheme://ACCESS:SECRET[:TOKEN]@host:port.

    The keys go in as they are: mc splits this value with a regular expression and does
    not URL-decode it, so a quoted secret (AWS secrets often hold `/` and `+`) would be
    signed with the wrong bytes. mc's own form for a session token is the third field.
    When the target has no static keys, the standard AWS chain's current credentials
    (boto3's, as every other command uses) are resolved here.
    """
    parts = urlsplit(endpoint.url)
    key, secret, token = endpoint.access_key, endpoint.secret_key, endpoint.session_token
    if not endpoint.static:
        key, secret, token = chain_credentials()
    userinfo = f"{key}:{secret}:{token}" if token else f"{key}:{secret}"
    return f"{parts.scheme}://{userinfo}@{parts.netloc}"


def chain_credentials() -> tuple[str, str, str]:
    """(access key, secret key, session token) from the standard AWS credential chain."""
    import boto3  # only when the target has no static keys

    found = boto3.session.Session().get_credentials()
    if found is None:
        raise NoCredentials(
            "no AWS credentials for the target: AWS_ACCESS_KEY and AWS_SECRET_KEY are unset "
            "and the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, web identity, "
            "container or instance role) found none"
        )
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token or ""


def find_binary() -> str:
    path = shutil.which(os.environ.get("MC_BINARY", "mc"))
    if not path:
        raise McMissing("mc is not on PATH (install it, or set MC_BINARY to its path)")
    return path


def plain_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The passed variables and LC_* only: mc's environment before its credentials."""
    env = {k: v for k, v in environ.items() if k in PASSED_VARIABLES or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


def child_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """mc's whole environment: the passed variables, LC_*, and its own MC_HOST_*."""
    env = plain_environment(environ)
    env[f"MC_HOST_{SOURCE_ALIAS}"] = host_variable(settings.source)
    if settings.target and web_identity(settings.target, environ):
        env.update(web_identity_environment(settings, environ))
    elif settings.target:
        env[f"MC_HOST_{TARGET_ALIAS}"] = host_variable(settings.target)
    return env


def web_identity(target: Endpoint, environ: Mapping[str, str]) -> bool:
    """No static keys, and a web identity (IRSA) for the chain: mc's own STS client."""
    return not target.static and all(environ.get(n) for n in _WEB_IDENTITY)


def web_identity_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """mc's own web-identity client for the target (`MC_STS_ENDPOINT_aws`), which renews
    the role's credentials as they expire, where keys handed over once would not be.

    The STS endpoint: AWS_ENDPOINT_URL_STS, else the region's (the global one for
    us-east-1). MC_HOST_aws has no keys: mc's chain tries STS first.
    """
    assert settings.target is not None
    region = settings.aws_region or "us-east-1"
    default = (
        "https://sts.amazonaws.com"
        if region == "us-east-1"
        else f"https://sts.{region}.amazonaws.com"
    )
    parts = urlsplit(settings.target.url)
    env = {
        f"MC_HOST_{TARGET_ALIAS}": f"{parts.scheme}://{parts.netloc}",
        f"MC_STS_ENDPOINT_{TARGET_ALIAS}": environ.get("AWS_ENDPOINT_URL_STS") or default,
        f"MC_WEB_IDENTITY_TOKEN_FILE_{TARGET_ALIAS}": environ["AWS_WEB_IDENTITY_TOKEN_FILE"],
        f"MC_ROLE_ARN_{TARGET_ALIAS}": environ["AWS_ROLE_ARN"],
    }
    if environ.get("AWS_ROLE_SESSION_NAME"):
        env[f"MC_ROLE_SESSION_NAME_{TARGET_ALIAS}"] = environ["AWS_ROLE_SESSION_NAME"]
    return env


class McRun:
    """One running mc: read `stdout` inside the `with` block.

    On leaving the block mc is waited for; if the block raised, mc is stopped first. At
    `deadline` (time.monotonic()) a timer stops it and sets `timed_out`. Afterwards
    `code` is mc's exit status and `stderr` the last lines it wrote there.
    """

    def __init__(self, command: list[str], env: dict[str, str], deadline: float | None) -> None:
        with _running_lock:
            if _interrupted.is_set():
                raise Interrupted("interrupted: mc not started")
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,  # its own process group, stopped as a whole
            )
            _running.add(self)
        self.code: int | None = None
        self.timed_out = False
        self._lock = threading.Lock()
        self._done = False
        self._stopped = False
        self._tail: deque[str] = deque(maxlen=_STDERR_LINES)
        assert self.proc.stderr is not None
        self._drain = threading.Thread(
            target=_drain, args=(self.proc.stderr, self._tail), name="mc-stderr", daemon=True
        )
        self._drain.start()
        self._timer: threading.Timer | None = None
        if deadline is not None:
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
            self._timer.daemon = True
            self._timer.start()

    @property
    def stdout(self) -> Iterable[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> str:
        return "\n".join(self._tail)

    def __enter__(self) -> McRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is not None:
                self.stop()
            self.code = self.proc.wait()
            with self._lock:
                self._done = True
            if self._timer is not None:
                self._timer.cancel()
            self._drain.join(STOP_GRACE_S)
            if self._drain.is_alive():  # mc exited, something it started holds stderr
                self.stop()
                self._drain.join()
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            with _running_lock:
                _running.discard(self)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.timed_out = True
        log.warning("mc (pid %d) reached the run's deadline: stopping it", self.proc.pid)
        self.stop()

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _signal_group(self.proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_GRACE_S)
        _signal_group(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        self.proc.wait()


def stop_all() -> None:
    """Stop every running mc (this process is being interrupted), in parallel."""
    with _running_lock:
        _interrupted.set()
        runs = list(_running)
    stoppers = [threading.Thread(target=run.stop, name="mc-stop") for run in runs]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


def interrupted() -> bool:
    """Whether stop_all() ran: this process is being interrupted."""
    return _interrupted.is_set()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, sig)


def _drain(stream: Iterable[str], tail: deque[str]) -> None:
    for line in stream:
        log.debug("mc stderr: %s", line.rstrip())
        tail.append(line.rstrip())


class Mc:
    """An mc invocation context: binary, private config dir and environment."""

    def __init__(self, settings: Settings, config_dir: Path) -> None:
        self.settings = settings
        self.binary = find_binary()
        self.config_dir = config_dir
        self.env = child_environment(settings, os.environ)
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

    def run(self, *args: str, deadline: float | None = None) -> McRun:
        log.debug("running mc %s", " ".join(args))
        return McRun(self.command(*args), self.env, deadline)


@contextmanager
def session(settings: Settings) -> Iterator[Mc]:
    """An Mc whose private config dir is removed when the block ends."""
    config_dir = Path(tempfile.mkdtemp(prefix="minio-s3-mirror-mc-"))
    try:
        yield Mc(settings, config_dir)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
