"""Writes docs/configuration.md from `config.VARIABLES`, the one table of every variable.

    python -m replicator.configdoc > docs/configuration.md

tests/docs/test_configuration.py fails when the page is not what this prints.
"""

from __future__ import annotations

from .config import ALL_COMMANDS, MAX_PAIRS, MAX_WORKERS, SECTION_ORDER, VARIABLES, Variable

HEADER = f"""\
# Configuration

<!-- Generated from replicator/config.py (VARIABLES) by `python -m replicator.configdoc`.
     Edit the table there, then regenerate this page; a test fails when they differ. -->

Everything comes from environment variables; command-line flags (`--prefix`,
`--dry-run`, `listen --mode`) override the variable of the same meaning. Empty values
count as unset. Every value is checked when a command starts: a bad one exits `2` with one
line naming the variable, what was given (secrets masked) and the expected form, e.g.

```
configuration error: MIRROR_MAX_PAIRS: "0" is not an integer from 1 to 64 (example: 5)
```

- **Secrets** (marked *secret* below) never appear in output: error messages mask them and
  every log line is scrubbed of them. A password in any URL a message repeats is shown as
  `scheme://user:****@host`. `MINIO_URL` and `AWS_URL` take no `user:password@`.
- **Booleans** accept `true/false`, `1/0`, `yes/no`, `on/off`. Whole numbers are ASCII
  digits within the range given (`MIRROR_MAX_WORKERS` 1 to {MAX_WORKERS}, `MIRROR_MAX_PAIRS`
  1 to {MAX_PAIRS}). Durations are seconds, or with a unit `s` `m` `h` `d` (`1h30m`).
- **Seed** variables are the original tool's: same name, meaning and default.
- **Commands** lists the commands whose behaviour the variable changes (every command
  checks every variable it is given).

## Pairs, prefix and exclude

- **Both `BUCKET_PAIR` and `BUCKET_PAIRS` set**: every pair of both is mirrored
  (`BUCKET_PAIR` first); a pair listed twice runs once.
- **Aliases are fixed**: the left side is `minio` (the source), the right side `aws`
  (the target). A path after the bucket maps one folder onto another:
  `minio/src/incoming:aws/archive/2025` copies `incoming/x` to `2025/x`.
- **`MIRROR_PREFIX` narrows every pair** to that folder (under the pair's path, on both
  sides). A prefix is a folder, for every command alike: `o/0` (or `o/0/`) means `o/0/`,
  so of the keys `o/000001`, `o/0-big` and `o/0/inside` only `o/0/inside` is listed and
  copied; `2025/01/2` does not match `2025/01/22/...`. "Excluded" in a report counts only
  what `MIRROR_EXCLUDE` matched, relative to the folder. A prefix that
  holds nothing yet is reported as a note, not a failure. A leading `/`, or a `.` or `..`
  segment, exits 2.
- **`MIRROR_EXCLUDE` patterns** match the way `mc mirror --exclude` matches: against the
  key relative to the mirrored folder, `*` matches any run of characters including `/`,
  `?` one character. `*.tmp` skips `a/b.tmp`; `.DS_Store` skips only the top-level one
  (`*.DS_Store` skips all). The listener, `work`, `backfill` and `reconcile` share one
  matcher.
"""

FOOTER = """\
## TLS and proxies

`MIRROR_TLS_VERIFY=false` turns certificate checks off for both endpoints (tests only).
`MIRROR_CA_BUNDLE` adds CA certificates to the trusted roots of both endpoints;
`MINIO_CA_BUNDLE` and `AWS_CA_BUNDLE` add them for one side (`reconcile`'s `mc` trusts
all three bundles for both sides: mc has one CA directory). `SSL_CERT_FILE` replaces the
system's roots. `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (lower-case spellings too)
route every S3 request, and `mc` in `reconcile` reads the same variables.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _commands(variable: Variable) -> str:
    if variable.commands == ALL_COMMANDS:
        return "all"
    return ", ".join(f"`{c}`" for c in variable.commands)


def _name(variable: Variable) -> str:
    marks = [m for m, on in (("secret", variable.secret), ("seed", variable.seed)) if on]
    return f"`{variable.name}`" + (f" ({', '.join(marks)})" if marks else "")


def render() -> str:
    sections: dict[str, list[Variable]] = {}
    for variable in sorted(VARIABLES, key=lambda v: SECTION_ORDER.index(v.section)):
        sections.setdefault(variable.section, []).append(variable)
    parts = [HEADER]
    for section, variables in sections.items():
        parts.append(f"\n## {section}\n\n")
        parts.append("| variable | default | form | commands | meaning |\n")
        parts.append("|---|---|---|---|---|\n")
        for v in variables:
            cells = (_name(v), v.default, v.form, _commands(v), v.meaning)
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    parts.append("\n" + FOOTER)
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
