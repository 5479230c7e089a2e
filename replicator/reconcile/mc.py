"""Running the `mc` binary: no credential exposed, a minimal environment, a deadline.

Credentials reach mc only through `MC_HOST_<alias>` environment variables; mc gets a
private (0700) temporary config dir that is removed afterwards, so nothing secret is
on the command line (visible in `ps`) or left on disk. mc's environment is built from
scratch: locale, PATH, network settings it needs (proxies, CA locations) and its own
two `MC_HOST_*`, nothing else of ours (no Slack, webhook or RabbitMQ secret).

mc never touches $HOME: its config dir comes in MC_CONFIG_DIR, which mc reads before
the subcommand starts (a `--config-dir` after the subcommand is read too late: mc has
created `$HOME/.mc` by then), and HOME is the private dir too. So it runs with a
read-only root filesystem, any user id, and only a writable temporary directory. The CA bundles
(MIRROR_CA_BUNDLE, MINIO_CA_BUNDLE, AWS_CA_BUNDLE) go to `<config dir>/certs/CAs/`,
which mc adds to the system roots.

Each run is its own process group. At the run's deadline, when reading its output
fails, or when this process is interrupted (stop_all), the whole group is stopped
(SIGTERM, then SIGKILL) and reaped, so a wrapper script cannot leave a real mc behind.
"""

from __future__ import annotations

import json
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
from dataclasses import dataclass
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
# Where Go looks for the system roots on Linux when SSL_CERT_FILE is unset (crypto/x509).
GO_CERT_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
)
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


class NoTempDir(RuntimeError):
    """No writable temporary directory for mc's private config dir."""


class Mc:
    """An mc invocation context: binary, private config dir and environment."""

    def __init__(self, settings: Settings, config_dir: Path) -> None:
        self.settings = settings
        self.binary = find_binary()
        self.config_dir = config_dir
        self.env = child_environment(settings, os.environ)
        # mc's flag defaults look up the home dir at start-up (a fatal error for a user id
        # without a passwd entry and no HOME): point it at the private dir, never the real one.
        self.env["HOME"] = str(config_dir)
        # Read at mc's start-up, before any subcommand (unlike a --config-dir after it).
        self.env["MC_CONFIG_DIR"] = str(config_dir)
        install_cas(settings, config_dir, self.env)

    def command(self, *args: str) -> list[str]:
        flags = ["--json", "--no-color"]
        if not self.settings.tls_verify:
            flags.append("--insecure")
        if self.settings.debug:
            flags.append("--debug")
        return [self.binary, *args[:1], *flags, *args[1:]]

    def run(self, *args: str, deadline: float | None = None) -> McRun:
        log.debug("running mc %s", " ".join(args))
        return McRun(self.command(*args), self.env, deadline)


def ca_bundles(settings: Settings) -> dict[str, str]:
    """File name in mc's certs/CAs -> the configured bundle: mc trusts these for both
    endpoints, on top of the system roots (SSL_CERT_FILE)."""
    found = {
        "mirror-ca-bundle.crt": settings.ca_bundle,
        "source-ca-bundle.crt": settings.source_ca_bundle,
        "target-ca-bundle.crt": settings.target_ca_bundle,
    }
    return {name: path for name, path in found.items() if path}


def install_cas(settings: Settings, config_dir: Path, env: dict[str, str]) -> None:
    """The bundles into mc's certs/CAs, and into the SSL_CERT_FILE of its environment.

    mc hands certs/CAs to its direct TLS connections only: through HTTPS_PROXY, Go checks
    the tunnelled connection against the system roots alone. So mc's SSL_CERT_FILE names a
    file in the private dir holding the system roots it would have used plus the bundles.
    """
    bundles = ca_bundles(settings)
    if not bundles:
        return
    cas = config_dir / "certs" / "CAs"
    cas.mkdir(parents=True, exist_ok=True)
    for name, path in bundles.items():
        shutil.copyfile(path, cas / name)
    system = env.get("SSL_CERT_FILE") or next((f for f in GO_CERT_FILES if os.path.isfile(f)), "")
    parts = [Path(path).read_bytes() for path in bundles.values()]
    if system:
        with suppress(OSError):  # unreadable system roots: the bundles alone
            parts.insert(0, Path(system).read_bytes())
    roots = config_dir / "certs" / "roots.pem"
    roots.write_bytes(b"\n".join(parts))
    env["SSL_CERT_FILE"] = str(roots)


@contextmanager
def session(settings: Settings) -> Iterator[Mc]:
    """An Mc whose private (0700) config dir is removed when the block ends."""
    config_dir = private_dir()
    try:
        yield Mc(settings, config_dir)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def private_dir() -> Path:
    """A new 0700 directory under TMPDIR or /tmp; NoTempDir when there is none writable."""
    try:
        return Path(tempfile.mkdtemp(prefix="minio-s3-mirror-mc-"))
    except OSError as exc:
        raise NoTempDir(
            f"cannot create mc's private config directory ({exc.strerror or exc}): mount a "
            "writable /tmp (an emptyDir or tmpfs) or set TMPDIR to a writable directory"
        ) from None


@dataclass(frozen=True)
class Probe:
    """One endpoint as mc sees it: `name` is "mc source <bucket>" or "mc target <bucket>"."""

    name: str
    ok: bool
    detail: str
    text: str = ""  # mc's error, for the troubleshooting causes


PROBE_TIMEOUT_S = 30.0


def version() -> str:
    """mc's first version line (no secret of ours in its environment)."""
    with tempfile.TemporaryDirectory(prefix="minio-s3-mirror-mc-") as home:
        env = {**plain_environment(os.environ), "HOME": home, "MC_CONFIG_DIR": home}
        command = [find_binary(), "--version"]
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    return (out.stdout.strip().splitlines() or ["?"])[0]


def endpoints(settings: Settings) -> list[tuple[str, str]]:
    """(side, bucket) of every pair's source and target: what probe() lists."""
    sides = sorted({("source", p.source_bucket) for p in settings.pairs})
    if settings.target:
        sides += sorted({("target", p.target_bucket) for p in settings.pairs})
    return sides


def probe(settings: Settings, sides: list[tuple[str, str]] | None = None) -> list[Probe]:
    """An alias and a listing of each (side, bucket) (default: endpoints()), with the same
    binary, environment, config dir, CAs and flags as reconcile's mc: where this passes,
    mc can reach and list that bucket. Only the first line of each listing is read."""
    sides = endpoints(settings) if sides is None else sides
    if not sides:
        return []
    aliases = {"source": SOURCE_ALIAS, "target": TARGET_ALIAS}
    with session(settings) as mc:
        return [_list(mc, aliases[side], side, bucket) for side, bucket in sides]


def _list(mc: Mc, alias: str, side: str, bucket: str) -> Probe:
    with Reach(mc, alias, side, bucket, time.monotonic() + PROBE_TIMEOUT_S) as reach:
        return reach.result()


class Reach:
    """`mc ls <alias>/<bucket>/`, started at once and read when asked: its first line only.

    The trailing slash: a listing only (GET ?location, GET ?list-type=2), no HEAD. Where
    this passes, mc can reach and list that bucket.
    """

    def __init__(self, mc: Mc, alias: str, side: str, bucket: str, deadline: float | None) -> None:
        self.name, self.alias = f"mc {side} {bucket}", alias
        self.where = f"{alias}/{bucket}/"
        self.run = mc.run("ls", self.where, deadline=deadline)

    def __enter__(self) -> Reach:
        return self

    def __exit__(self, *exc: object) -> None:
        self.run.stop()  # a large bucket is not listed to its end
        self.run.__exit__(None, None, None)

    def result(self) -> Probe:
        first = next(iter(self.run.stdout), "")
        self.run.stop()  # one entry proves the listing
        self.run.__exit__(None, None, None)  # its exit code and the last of its stderr
        run, name, alias = self.run, self.name, self.alias
        record = _json(first)
        if record.get("status") == "success":
            return Probe(name, True, f"alias {alias} set, bucket listed")
        if not first and run.code == 0:
            return Probe(name, True, f"alias {alias} set, bucket listed (empty)")
        error = record.get("error") or _json(run.stderr.splitlines()[-1] if run.stderr else "")
        text = _error_text(error.get("error", error)) or run.stderr or first.strip()
        if run.timed_out:
            text = f"no answer in time: {text}".rstrip(": ")
        return Probe(name, False, f"mc ls {self.where}: {text}"[:300], text)


def _json(line: str) -> dict:
    try:
        found = json.loads(line)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _error_text(error: object) -> str:
    """mc's JSON error: {"message": ..., "cause": {"message": ...}} or a plain string."""
    if not isinstance(error, dict):
        return str(error or "")
    cause = error.get("cause") or {}
    parts = [error.get("message", ""), cause.get("message", "") if isinstance(cause, dict) else ""]
    return ": ".join(p for p in parts if p)
