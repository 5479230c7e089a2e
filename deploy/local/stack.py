"""The real local stack: two MinIO servers, a private RabbitMQ node and a fake Slack.

Used by the pytest fixtures, `make demo` and the benchmarks. Everything listens on
loopback ports chosen at start; data lives in temporary directories.
Run `python deploy/local/stack.py up` to start it in the foreground.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

from fault_proxy import FaultProxy  # noqa: F401 - part of the stack (tests import it here)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MIRROR_CACHE_DIR", REPO / ".cache"))
BIN = CACHE / "bin"
# Debian's /usr/sbin wrappers switch to the rabbitmq user; a private node runs as us.
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port from that range
    (what binding port 0 gives) can be taken by any outgoing connection before the server
    it was chosen for binds it, or between that server's stop and its restart (a RabbitMQ
    node failed to restart with `dist_port_already_used`)."""
    low = _ephemeral_low()
    for _ in range(100):
        port = secrets.randbelow(low - 10000) + 10000
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no luck below the range: any free port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, 11000)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.0
) -> object:
    """Poll predicate until it returns something truthy, or fail naming `what`. Polls
    back off from 0.05 to 0.5 s, or come every `poll` seconds (a short-lived state)."""
    deadline = time.monotonic() + timeout
    delay = poll or 0.05
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = poll or min(delay * 1.5, 0.5)


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make test` or `make install` first")
    return str(path)


class MinioServer:
    """One MinIO server on a loopback port with its own data dir.

    With `certs_dir` (public.crt and private.key, e.g. from tls.CertificateAuthority) it
    serves TLS only; `ca_file` is the PEM this side's own clients (health probe, boto3)
    trust it by.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        extra_env: dict[str, str] | None = None,
        *,
        certs_dir: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.name = name
        self.certs_dir = certs_dir
        self.ca_file = ca_file
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.access_key = f"{name}-admin"
        self.secret_key = f"{name}-{secrets.token_hex(8)}"
        self.port = free_port()
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.certs_dir else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _live(self) -> bool:
        context = None
        if self.certs_dir:
            import ssl

            context = ssl.create_default_context(cafile=self.ca_file)
        try:
            url = f"{self.url}/minio/health/live"
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self) -> MinioServer:
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            "MINIO_PROMETHEUS_AUTH_TYPE": "public",  # request counts for tests and benchmarks
            **self.extra_env,
        }
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                binary("minio"),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                *(["--certs-dir", str(self.certs_dir)] if self.certs_dir else []),
                str(self.dir / "data"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(self._live, 60, f"MinIO {self.name} on {self.url}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> MinioServer:
        self.stop()
        return self.start()

    def client(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        url: str | None = None,
        attempts: int | None = None,
    ):
        """A boto3 client, as root unless other credentials are given.

        `url` reaches this server another way (e.g. through a FaultProxy in front of it);
        `attempts` caps the tries per request (first try included).
        """
        retries = {"max_attempts": 2, "mode": "standard"}  # botocore: 2 retries
        if attempts is not None:
            retries = {"total_max_attempts": attempts, "mode": "standard"}
        import boto3  # imported here to keep start-up light
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=url or self.url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            verify=str(self.ca_file) if self.ca_file else None,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries=retries,
            ),
        )


_LISTING_PARAMS = frozenset(
    {"list-type", "prefix", "delimiter", "encoding-type", "max-keys", "continuation-token",
     "start-after", "fetch-owner", "marker"}
)  # fmt: skip


def s3_operation(method: str, target: str) -> str:
    """The S3 operation of a path-style request line (method, path?query), as AWS names it."""
    path, _, query = target.partition("?")
    names = {name.partition("=")[0] for name in query.split("&") if name}
    has_key = "/" in path.lstrip("/").rstrip("/") or path.lstrip("/").count("/") > 1
    if "uploadId" in names:
        return {
            "PUT": "UploadPart",
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }.get(method, f"{method} uploadId")
    if "uploads" in names:
        return "CreateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    for sub, name in (("tagging", "Tagging"), ("retention", "Retention"), ("versions", "")):
        if sub in names:
            if sub == "versions":
                return "ListObjectVersions"
            prefix = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, method)
            return f"{prefix}Object{name}" if has_key else f"{prefix}Bucket{name}"
    if not has_key:
        sub = sorted(names - _LISTING_PARAMS)
        if sub:
            return f"{method} ?{sub[0]}"  # a bucket subresource: ?object-lock, ?policy...
        if method == "GET":
            return "ListObjectsV2" if "list-type" in names else "ListObjects"
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
            method, f"{method} bucket"
        )
    return {
        "HEAD": "HeadObject",
        "GET": "GetObject",
        "PUT": "PutObject",  # CopyObject too: the access log does not show the headers
        "DELETE": "DeleteObject",
        "POST": "DeleteObjects",
    }.get(method, f"{method} object")


def make_bucket(client, name: str, *, retention_days: int = 0) -> str:
    """A bucket; with retention_days, Object Lock with that GOVERNANCE default retention."""
    if not retention_days:
        client.create_bucket(Bucket=name)
        return name
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": retention_days}},
        },
    )
    return name


def remove_bucket(client, name: str) -> None:
    """Every version and delete marker (GOVERNANCE retention bypassed), then the bucket."""
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(
                Bucket=name,
                Key=item["Key"],
                VersionId=item["VersionId"],
                BypassGovernanceRetention=True,
            )
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


class MotoServer:
    """moto's S3 in server mode on a loopback port: the AWS-like target.

    moto emulates S3's error codes and headers (Object Lock, conditional writes, storage
    classes, SSE, tags) and, like AWS, lists LastModified to the second; aws_like.py adds
    AWS's checksum rules (verified values, Object Lock on parts). It accepts any
    credentials. Its state lives in memory and dies with the process. Every request is in
    its access log; `served()` counts them by S3 operation. Where moto differs from AWS,
    the tests that meet the difference say so.
    """

    _REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
    _STYLE = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some request lines

    def __init__(self, root: Path, name: str = "aws-like", *, shim: bool = True) -> None:
        """shim=False runs plain moto (`python -m moto.server`), without aws_like.py."""
        self.name = name
        self.shim = shim
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.access_key = "AKIAMOTOLOCAL" + secrets.token_hex(4).upper()
        self.secret_key = f"moto-{secrets.token_hex(8)}"
        self.region = "us-east-1"
        self.port = free_port()
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _live(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto server exited:\n{tail}")
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self) -> MotoServer:
        # The venv's interpreter runs moto (a test dependency) behind aws_like.py's layer
        # of AWS's checksum rules.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env.update(PYTHONUNBUFFERED="1", MOTO_PORT=str(self.port))
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        command = [sys.executable, str(Path(__file__).with_name("aws_like.py"))]
        if not self.shim:
            command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "-p", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(self._live, 60, f"moto server on {self.url}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def served(self, *, statuses: bool = False) -> collections.Counter[str]:
        """Every S3 request served so far, by "Operation" (with statuses: "Operation 200")."""
        counts: collections.Counter[str] = collections.Counter()
        text = self._STYLE.sub("", self.log.read_text(errors="replace"))
        for match in self._REQUEST.finditer(text):
            method, target, status = match.groups()
            if target.startswith("/moto-api"):
                continue
            name = s3_operation(method, target)
            counts[f"{name} {status}" if statuses else name] += 1
        return counts

    def client(self, *, url: str | None = None, attempts: int | None = None):
        """A boto3 client like MinioServer.client (moto takes any credentials)."""
        retries = {"max_attempts": 2, "mode": "standard"}
        if attempts is not None:
            retries = {"total_max_attempts": attempts, "mode": "standard"}
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=url or self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries=retries,
            ),
        )

    def env(self) -> dict[str, str]:
        """The target variables of our CLI for this server."""
        return {
            "AWS_URL": self.url,
            "AWS_ACCESS_KEY": self.access_key,
            "AWS_SECRET_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


class RabbitNode:
    """A private RabbitMQ node (Debian's rabbitmq-server) on free ports.

    `name` is its directory under root; nodes of one cluster share `cookie`.
    """

    def __init__(self, root: Path, name: str = "rabbitmq", *, cookie: str | None = None) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"mirror-{secrets.token_hex(4)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        if cookie:  # Erlang reads $HOME/.erlang.cookie; HOME is this node's directory
            path = self.dir / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            # A long copy must not be cut off by the default 30 min consumer timeout.
            "consumer_timeout = 86400000\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.dir / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RABBITMQ_QUORUM_DIR": str(self.dir / "mnesia" / "quorum"),
        }

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _accepts(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            tail = (self.dir / "server.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"RabbitMQ node {self.node} exited:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self) -> RabbitNode:
        server = RABBIT_BIN / "rabbitmq-server"
        if not server.exists():
            raise FileNotFoundError(f"{server} is missing: run `make test` or `make install`")
        log = open(self.dir / "server.out", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(server)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_until(self._accepts, 120, f"RabbitMQ node {self.node}")
        wait_until(lambda: self._ctl("await_startup").returncode == 0, 120, "RabbitMQ startup")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._ctl("stop")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> RabbitNode:
        self.stop()
        return self.start()

    def queues(self) -> dict[str, dict]:
        """name -> {"type", "leader", "members", "online", "messages"} for every queue."""
        done = self._ctl(
            "list_queues", "name", "type", "leader", "members", "online", "messages",
            "--formatter", "json", "-q", timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl list_queues failed: {done.stdout}{done.stderr}")
        return {row["name"]: row for row in json.loads(done.stdout or "[]")}

    def kill(self) -> None:
        """SIGKILL the node (its whole process group: the script and the Erlang VM)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RabbitCluster:
    """Three (or n) RabbitMQ nodes on one machine, clustered with `rabbitmqctl join_cluster`.

    Each node has its own name, ports and data directory; all share one Erlang cookie.
    Quorum queues declared on the cluster get a replica on every node.
    """

    def __init__(self, root: Path | None = None, size: int = 3) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="minio-s3-mirror-rabbits-"))
        self.own_root = root is None
        cookie = secrets.token_hex(16).upper()
        self.nodes = [RabbitNode(self.root, f"rabbit-{i + 1}", cookie=cookie) for i in range(size)]

    @property
    def url(self) -> str:
        """RABBITMQ_URL for clients: every node's AMQP URL, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def running(self) -> list[RabbitNode]:
        return [node for node in self.nodes if node.running]

    def node(self, name: str) -> RabbitNode:
        """The node called `name` (Erlang node name, e.g. from leader())."""
        return next(node for node in self.nodes if node.node == name)

    def start(self) -> RabbitCluster:
        first, *others = self.nodes
        try:
            first.start()
            for node in others:
                node.start()
                for args in (("stop_app",), ("join_cluster", first.node), ("start_app",)):
                    done = node._ctl(*args, timeout=120)
                    if done.returncode != 0:
                        raise RuntimeError(
                            f"rabbitmqctl {' '.join(args)} on {node.node} failed:"
                            f" {done.stdout}{done.stderr}"
                        )
            wait_until(
                lambda: len(self.running_nodes()) == len(self.nodes), 120, "all nodes clustered"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        """Node names the cluster reports as running (asked through `via` or a live node)."""
        via = via or self.running()[0]
        done = via._ctl("cluster_status", "--formatter", "json", timeout=60)
        if done.returncode != 0:
            return []
        return list(json.loads(done.stdout).get("running_nodes", []))

    def queues(self, via: RabbitNode | None = None) -> dict[str, dict]:
        """Every queue of the cluster, as RabbitNode.queues (asked through `via` or a live node)."""
        return (via or self.running()[0]).queues()

    def leader(self, queue: str, via: RabbitNode | None = None) -> RabbitNode:
        """The node leading a quorum queue now."""
        name = self.queues(via)[queue]["leader"]
        return self.node(name)

    def stop(self) -> None:
        # Followers first, so the last node does not wait for a quorum that is leaving.
        for node in reversed(self.nodes):
            try:
                node.stop()
            except (OSError, subprocess.SubprocessError):
                node.kill()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


class LoopbackServer:
    """An HTTP server of the test stack on a free loopback port, in a daemon thread."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeSlack(LoopbackServer):
    """A local Slack Web API: records chat.postMessage / auth.test calls."""

    def __init__(self, token: str = "xoxb-fake-token") -> None:
        self.token = token
        self.calls: list[dict] = []
        self.fail_with: str | None = None  # a Slack error code, or "http500"
        self.lock = threading.Lock()
        self.serve(self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.fail_with = None

    def messages(self) -> list[dict]:
        with self.lock:
            return [c["params"] for c in self.calls if c["method"] == "chat.postMessage"]

    def _answer(self, method: str, token: str, params: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls.append({"method": method, "token": token, "params": params})
            failure = self.fail_with
        if failure == "http500":
            return 500, {"ok": False, "error": "internal_error"}
        if failure:
            return 200, {"ok": False, "error": failure}
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return 200, {"ok": True, "team": "fake", "user": "mirror-bot", "user_id": "U1"}
        if method == "chat.postMessage":
            return 200, {"ok": True, "channel": params.get("channel"), "ts": f"{time.time():.6f}"}
        return 200, {"ok": False, "error": "unknown_method"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or "{}")
                else:
                    params = dict(parse_qsl(raw))
                for name in ("blocks", "attachments"):
                    if isinstance(params.get(name), str):
                        params[name] = json.loads(params[name])
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") or params.pop("token", "")
                method = self.path.rsplit("/", 1)[-1]
                status, body = fake._answer(method, token, params)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class RedirectServer(LoopbackServer):
    """An S3 endpoint for a bucket in another region: every request gets AWS's answer, a
    301 PermanentRedirect with `x-amz-bucket-region` (no Location header).

    As AWS does, the XML body names the bucket and its endpoint but not the region (only
    the header does), and a HEAD answer has no body. `region_in_body` adds a <Region>
    element (as AWS's AuthorizationHeaderMalformed answer has). Requests are counted.
    """

    def __init__(self, region: str = "ap-northeast-2", *, region_in_body: bool = False) -> None:
        self.region = region
        self.region_in_body = region_in_body
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()
        self.serve(self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method in (None, m))

    def _body(self, path: str) -> bytes:
        bucket = path.lstrip("/").split("/", 1)[0].split("?", 1)[0] or "bucket"
        region = f"<Region>{self.region}</Region>" if self.region_in_body else ""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code>'
            "<Message>The bucket you are attempting to access must be addressed using the "
            "specified endpoint. Please send all future requests to this endpoint.</Message>"
            f"<Endpoint>{bucket}.s3.{self.region}.amazonaws.com</Endpoint>"
            f"<Bucket>{bucket}</Bucket>{region}<RequestId>{secrets.token_hex(8).upper()}"
            f"</RequestId><HostId>{secrets.token_urlsafe(30)}</HostId></Error>"
        ).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        redirect = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                with redirect.lock:
                    redirect.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                    self.close_connection = True  # not worth decoding: answer and hang up
                body = b"" if self.command == "HEAD" else redirect._body(self.path)
                self.send_response(301, "Moved Permanently")
                self.send_header("x-amz-bucket-region", redirect.region)
                self.send_header("x-amz-request-id", secrets.token_hex(8).upper())
                self.send_header("Content-Type", "application/xml")
                self.send_header("Server", "AmazonS3")
                if self.command == "HEAD":
                    self.send_header("Content-Length", "0")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class Stack:
    """Source and target MinIO, fake Slack, and (on request) RabbitMQ."""

    def __init__(self, *, rabbitmq: bool = False, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="minio-s3-mirror-stack-"))
        self.source = MinioServer("source", self.root)
        self.target = MinioServer("target", self.root)
        self.slack = FakeSlack()
        self.rabbit = RabbitNode(self.root) if rabbitmq else None

    def start(self) -> Stack:
        self.source.start()
        self.target.start()
        self.slack.start()
        if self.rabbit:
            self.rabbit.start()
        return self

    def stop(self) -> None:
        for part in (self.rabbit, self.source, self.target, self.slack):
            if part:
                part.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """The project's environment variables for this stack."""
        env = {
            "MINIO_URL": self.source.url,
            "MINIO_ACCESS_KEY": self.source.access_key,
            "MINIO_SECRET_KEY": self.source.secret_key,
            "AWS_URL": self.target.url,
            "AWS_ACCESS_KEY": self.target.access_key,
            "AWS_SECRET_KEY": self.target.secret_key,
            "AWS_REGION": "us-east-1",
            "SLACK_BOT_TOKEN": self.slack.token,
            "SLACK_CHANNEL_ID": "C0FAKE",
            "SLACK_API_URL": self.slack.url,
        }
        if self.rabbit:
            env["RABBITMQ_URL"] = self.rabbit.url
        return env


def main() -> None:
    if sys.argv[1:] != ["up"]:
        sys.exit("usage: stack.py up   (starts the stack until Ctrl-C)")
    stack = Stack(rabbitmq=True).start()
    for name, value in stack.env().items():
        print(f"export {name}='{value}'")
    print(f"export PATH='{BIN}':$PATH", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
