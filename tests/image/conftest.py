"""The image, built once per session from the unchanged Dockerfile (tests/image/podman.py),
and the pipeline fixtures of the integration tests (a source MinIO whose webhook posts
to a port on this machine, RabbitMQ)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from tests.image import podman as engine
from tests.integration.conftest import notifying, source_bucket, webhook_port  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    # `-m "not image"` leaves the image out (it adds ~1.5 min warm, ~12 min cold).
    config.addinivalue_line("markers", "image: builds and runs the container image")


@pytest.fixture(scope="session")
def image() -> Iterator[engine.Podman]:
    missing = engine.missing_tools()
    assert not missing, f"{missing} missing: `make install` installs them (deploy/local/install.sh)"
    podman = engine.Podman()
    started = time.monotonic()
    try:
        built_in = engine.build(podman)
        print(
            f"\nimage: {engine.IMAGE} {engine.size_mb(podman):.1f} MB; build {built_in:.0f}s, "
            f"with the stand-in bases {time.monotonic() - started:.0f}s",
            file=sys.stderr,
        )
        yield podman
    finally:
        podman.close()
