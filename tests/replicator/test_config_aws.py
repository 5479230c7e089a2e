"""The AWS-target variables: region from the URL, the credential chain, encryption, class."""

import pytest

from replicator import config
from replicator.config import ConfigError

BASE = {
    "MINIO_URL": "http://minio:9000",
    "MINIO_ACCESS_KEY": "minio",
    "MINIO_SECRET_KEY": "minio-secret",
    "AWS_URL": "https://s3.ap-northeast-2.amazonaws.com",
    "AWS_ACCESS_KEY": "AKIAEXAMPLE",
    "AWS_SECRET_KEY": "aws-secret",
    "BUCKET_PAIR": "minio/source:aws/destination",
}


def load(**env):
    return config.load({k: v for k, v in {**BASE, **env}.items() if v is not None})


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://s3.ap-northeast-2.amazonaws.com", "ap-northeast-2"),
        ("https://s3-eu-west-1.amazonaws.com", "eu-west-1"),
        ("https://s3.dualstack.us-west-2.amazonaws.com", "us-west-2"),
        ("https://bucket.s3.eu-central-1.amazonaws.com", "eu-central-1"),
        ("https://s3.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("https://s3.amazonaws.com", None),
        ("http://127.0.0.1:9000", None),
    ],
)
def test_the_region_comes_from_an_aws_url(url, region):
    assert load(AWS_URL=url).aws_region == region


def test_aws_region_wins_over_the_url():
    assert load(AWS_REGION="us-east-2").aws_region == "us-east-2"


def test_without_static_keys_the_target_uses_the_aws_chain():
    settings = load(AWS_ACCESS_KEY=None, AWS_SECRET_KEY=None)
    assert not settings.target.static
    with pytest.raises(ConfigError, match=r"^AWS_SECRET_KEY: "):
        load(AWS_SECRET_KEY=None)  # one of the two is a mistake, not the chain


def test_a_session_token_is_a_secret():
    settings = load(AWS_SESSION_TOKEN="FwoGZXIvYXdzEXAMPLETOKEN")
    assert settings.target.session_token == "FwoGZXIvYXdzEXAMPLETOKEN"
    assert "FwoGZXIvYXdzEXAMPLETOKEN" in settings.secrets() and "TOKEN" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"AWS_STORAGE_CLASS": "standard_ia"}, "storage_class", "STANDARD_IA"),
        ({"AWS_SSE": "aes256"}, "sse", "AES256"),
        ({"AWS_SSE": "aws:kms", "AWS_SSE_KMS_KEY_ID": "alias/backup"}, "sse_kms_key_id",
         "alias/backup"),
        ({"MIRROR_COPY_TAGS": "false"}, "copy_tags", False),
        ({}, "copy_tags", True),
    ],
)  # fmt: skip
def test_target_write_settings(env, field, value):
    assert getattr(load(**env), field) == value


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AWS_STORAGE_CLASS": "COLD"}, "AWS_STORAGE_CLASS"),
        ({"AWS_SSE": "sse-c"}, "AWS_SSE"),
        ({"AWS_SSE_KMS_KEY_ID": "alias/x"}, "AWS_SSE_KMS_KEY_ID"),
        ({"AWS_SSE": "AES256", "AWS_SSE_KMS_KEY_ID": "alias/x"}, "AWS_SSE_KMS_KEY_ID"),
        ({"AWS_SESSION_TOKEN": "has space"}, "AWS_SESSION_TOKEN"),
        ({"MIRROR_COPY_TAGS": "maybe"}, "MIRROR_COPY_TAGS"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load(**env)
