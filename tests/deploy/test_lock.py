"""deploy/image/requirements.lock, the image's hashed Python dependencies, against
pyproject.toml: a dependency added or re-ranged there fails here until `make lock`."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import REPO

LOCK = REPO / "deploy" / "image" / "requirements.lock"
BUILD_INPUT = REPO / "deploy" / "image" / "build-requirements.in"


def locked() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    found = {}
    for entry in re.split(r"\n(?=\S)", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", entry)
        if match:
            found[canonicalize_name(match[1])] = (Version(match[2]), entry.count("--hash=sha256:"))
    return found


def wanted() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = [Requirement(spec) for spec in project["project"]["dependencies"]]
    build = [Requirement(spec) for spec in project["build-system"]["requires"]]
    lines = BUILD_INPUT.read_text().splitlines()
    build += [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return runtime + build


def test_every_dependency_is_locked_in_range_with_hashes():
    pins = locked()
    for requirement in wanted():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make lock`"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {name}=={version}, outside {requirement}: run `make lock`"
        )
        assert hashes >= 1, name


def test_every_locked_package_has_hashes():
    assert all(hashes for _, hashes in locked().values())
    assert len(locked()) >= len(wanted())
