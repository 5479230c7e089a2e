"""Shared by the deployment tests: the configuration variables the code really reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator import config

REPO = Path(__file__).resolve().parents[2]


class Recording(dict):
    """An environment that remembers every variable the configuration asks for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


@pytest.fixture(scope="session")
def known_variables() -> set[str]:
    env = Recording(
        MINIO_URL="http://minio:9000",
        MINIO_ACCESS_KEY="a",
        MINIO_SECRET_KEY="b",
        AWS_URL="https://s3.amazonaws.com",
        AWS_ACCESS_KEY="c",
        AWS_SECRET_KEY="d",
        BUCKET_PAIR="minio/source:aws/destination",
    )
    config.load(env)
    return env.asked | {"MC_BINARY"}  # read where mc is started
