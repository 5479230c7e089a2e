"""Failures map to the seed README's troubleshooting causes."""

from pathlib import Path

import pytest

from replicator.reconcile import mc_output, troubleshoot

DATA = Path(__file__).parents[1] / "data" / "mc"


def cause_of(name: str):
    with open(DATA / name, encoding="utf-8") as stream:
        failure = next(r for r in mc_output.read(stream) if isinstance(r, mc_output.Failure))
    return troubleshoot.diagnose(str(failure))


@pytest.mark.parametrize(
    ("name", "cause", "detail"),
    [
        ("mirror_missing_source_bucket.jsonl", troubleshoot.UNABLE_TO_STAT_SOURCE, ""),
        (
            "mirror_wrong_source_secret.jsonl",
            troubleshoot.FAILED_TO_SET_ALIAS,
            "credentials rejected",
        ),
        (
            "mirror_wrong_target_secret.jsonl",
            troubleshoot.FAILED_TO_SET_ALIAS,
            "credentials rejected",
        ),
        (
            "mirror_unknown_target_access_key.jsonl",
            troubleshoot.FAILED_TO_SET_ALIAS,
            "credentials rejected",
        ),
        (
            "mirror_source_unreachable.jsonl",
            troubleshoot.FAILED_TO_SET_ALIAS,
            "endpoint unreachable",
        ),
        (
            "mirror_target_unreachable.jsonl",
            troubleshoot.FAILED_TO_SET_ALIAS,
            "endpoint unreachable",
        ),
        ("mirror_missing_target_bucket.jsonl", troubleshoot.FAILED_TO_ACCESS_ALIAS, ""),
        ("mirror_empty_prefix.jsonl", troubleshoot.OBJECT_DOES_NOT_EXIST, ""),
    ],
)
def test_captured_failures_map_to_seed_causes(name, cause, detail):
    assert cause_of(name) == (cause, detail)


def test_unknown_failure_is_the_generic_mc_failure():
    assert troubleshoot.diagnose("something new") == (troubleshoot.MC_FAILED, "")
    assert troubleshoot.MC_FAILED.title == "Mirror process closed with code: 1"


def test_an_untrusted_certificate_names_the_ca_variables():
    text = (
        'Unable to stat source `minio/b`. Get "https://127.0.0.1:9000/b/?location=": tls: '
        "failed to verify certificate: x509: certificate signed by unknown authority"
    )

    cause, detail = troubleshoot.diagnose(text)

    assert (cause, detail) == (troubleshoot.UNTRUSTED_CERTIFICATE, "certificate not trusted")
    assert "MINIO_CA_BUNDLE" in cause.hints[0] and "AWS_CA_BUNDLE" in cause.hints[0]
