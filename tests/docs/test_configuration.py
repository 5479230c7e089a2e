"""docs/configuration.md, config.VARIABLES and the variables the code reads agree."""

from __future__ import annotations

import re
from pathlib import Path

from replicator import config, configdoc

REPO = Path(__file__).resolve().parents[2]
NAME = r"[A-Z][A-Z0-9_]*"
# Reads by name: env.get("X", ...), reader.raw("X"), required("X", ...), os.environ["X"],
# environ.get("X"), os.getenv("X").
_LITERAL_READ = re.compile(
    rf"""(?:\.(?:get|raw|required)|\brequired|\bgetenv)\(\s*["']({NAME})["']"""
    rf"""|environ\[\s*["']({NAME})["']\s*\]"""
)
# Reads through a prefix: reader.required(f"{prefix}_URL", ...), with the prefixes
# given as _endpoint(env, "MINIO", ...).
_PREFIXED_READ = re.compile(
    r"""(?:\.(?:get|raw|required)|\brequired)\(\s*f["']\{prefix\}(_[A-Z0-9_]+)["']"""
)
_PREFIX = re.compile(r"""_endpoint\(\s*\w+,\s*["']([A-Z]+)["']""")
# Reads through a tuple of names: environ.get(n) for n in _NAMES
_LOOP_READ = re.compile(r"environ\.get\((\w+)\) for \1 in (\w+)")


def names_read(source: str) -> set[str]:
    found = {a or b for a, b in _LITERAL_READ.findall(source)}
    prefixes = set(_PREFIX.findall(source))
    for suffix in _PREFIXED_READ.findall(source):
        found |= {prefix + suffix for prefix in prefixes}
    for _, tuple_name in _LOOP_READ.findall(source):
        assigned = re.search(rf"^{tuple_name}\s*=\s*\(([^)]*)\)", source, re.MULTILINE)
        assert assigned, f"cannot find the names in {tuple_name}"
        found |= set(re.findall(rf"""["']({NAME})["']""", assigned[1]))
    return found


def code_reads() -> dict[str, list[str]]:
    """Every variable name the code of replicator/ and listener/ reads, with where."""
    reads: dict[str, list[str]] = {}
    for package in ("replicator", "listener"):
        for path in sorted((REPO / package).rglob("*.py")):
            for name in names_read(path.read_text()):
                reads.setdefault(name, []).append(str(path.relative_to(REPO)))
    return reads


def test_the_page_is_what_the_generator_writes():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == configdoc.render(), (
        "docs/configuration.md is stale: run `python -m replicator.configdoc > "
        "docs/configuration.md`"
    )


def test_every_variable_the_code_reads_is_documented_and_nothing_else():
    reads = code_reads()
    table = {v.name: v for v in config.VARIABLES}
    undocumented = {name: where for name, where in reads.items() if name not in table}
    assert not undocumented, f"read by the code, missing from config.VARIABLES: {undocumented}"
    # A standard name (proxies, the AWS chain) may be read by a library only; every other
    # documented variable must be read by our code.
    unread = [v.name for v in config.VARIABLES if not v.standard and v.name not in reads]
    assert not unread, f"in config.VARIABLES but read nowhere: {unread}"


def test_the_table_marks_exactly_the_secret_variables_secret():
    reads = code_reads()
    secret = {v.name for v in config.VARIABLES if v.secret and v.name in reads}
    assert set(config.SECRET_VARIABLES) == secret


def test_the_table_is_well_formed():
    names = [v.name for v in config.VARIABLES]
    assert len(names) == len(set(names)), "a variable is listed twice"
    for v in config.VARIABLES:
        assert v.meaning and v.default and v.form and v.commands, v
        assert set(v.commands) <= set(config.ALL_COMMANDS), v


def test_the_seed_variables_are_all_there_and_marked():
    seed = {
        "SERVICE", "MINIO_URL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_URL",
        "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "BUCKET_PAIR", "BUCKET_PAIRS", "SLACK_BOT_TOKEN",
        "SLACK_CHANNEL_ID", "MIRROR_EXCLUDE", "MIRROR_MAX_WORKERS", "MIRROR_DRY_RUN",
        "MIRROR_SKIP_ERRORS", "MIRROR_DEBUG", "MIRROR_PREFIX",
    }  # fmt: skip
    assert {v.name for v in config.VARIABLES if v.seed} == seed


def test_the_scanner_finds_each_kind_of_read():
    source = """
def _endpoint(reader, prefix): return reader.required(f"{prefix}_URL", "x")
a = _endpoint(env, "MINIO", "e")
b = env.get("MIRROR_A", parse, None) or env.raw("MIRROR_B")
c = os.environ["MIRROR_C"] + os.getenv("MIRROR_D", "")
_NAMES = ("MIRROR_E", "MIRROR_F")
d = all(environ.get(n) for n in _NAMES)
"""
    assert names_read(source) == {
        "MINIO_URL", "MIRROR_A", "MIRROR_B", "MIRROR_C", "MIRROR_D", "MIRROR_E", "MIRROR_F"
    }  # fmt: skip
