"""Private certificate authorities for the local stack, made with the `openssl` CLI.

A test makes a CA, issues a server certificate into a MinIO `--certs-dir` (public.crt,
private.key) and hands the CA's PEM to the client side by whichever variable it tests
(MINIO_CA_BUNDLE, AWS_CA_BUNDLE, MIRROR_CA_BUNDLE) or inside a "system" store given by
SSL_CERT_FILE (`system_store`: the machine's roots plus the private CAs).

The certificates are what a strict verifier wants (Python >= 3.13 sets
VERIFY_X509_STRICT; Go checks SANs only): a CA with critical basicConstraints and
keyUsage, leaves with SANs, serverAuth and both key identifiers. P-256 keys: quick to make.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SYSTEM_ROOTS = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


class CertificateAuthority:
    """A private CA in `root/name`: `cert` is its PEM certificate (what clients trust)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "3",
            "-subj", f"/O=minio-s3-mirror tests/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
            cwd=self.dir,
        )  # fmt: skip

    def issue(self, certs_dir: Path, hosts: list[str]) -> Path:
        """A server certificate for `hosts` (names or IP addresses) as MinIO reads it:
        certs_dir/public.crt and certs_dir/private.key. Returns certs_dir."""
        certs_dir.mkdir(parents=True, exist_ok=True)
        sans = ",".join(
            f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"
            for host in hosts
        )
        (certs_dir / "leaf.ext").write_text(
            f"subjectAltName={sans}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "private.key", "-out", "leaf.csr", "-subj", f"/CN={hosts[0]}",
            cwd=certs_dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "leaf.csr", "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "leaf.ext",
            "-out", "public.crt",
            cwd=certs_dir,
        )  # fmt: skip
        for scratch in ("leaf.csr", "leaf.ext"):
            (certs_dir / scratch).unlink()
        return certs_dir


def system_store(path: Path, *authorities: CertificateAuthority) -> Path:
    """A CA bundle standing in for the system store (give it as SSL_CERT_FILE): the
    machine's roots (certifi's where Debian's are missing) plus these private CAs."""
    roots = SYSTEM_ROOTS
    if not roots.exists():
        import certifi

        roots = Path(certifi.where())
    parts = [roots.read_text()] + [ca.cert.read_text() for ca in authorities]
    path.write_text("\n".join(part.rstrip("\n") + "\n" for part in parts))
    return path
