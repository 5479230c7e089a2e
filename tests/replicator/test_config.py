"""Configuration parsing: seed variables, defaults and the exit-2 messages."""

import certifi
import pytest

from replicator import config
from replicator.config import BucketPair, ConfigError

BASE = {
    "MINIO_URL": "http://minio:9000",
    "MINIO_ACCESS_KEY": "minioadmin",
    "MINIO_SECRET_KEY": "s3cr3t-minio",
    "AWS_URL": "https://s3.ap-northeast-2.amazonaws.com",
    "AWS_ACCESS_KEY": "AKIAXXXX",
    "AWS_SECRET_KEY": "s3cr3t-aws",
    "BUCKET_PAIR": "minio/source:aws/destination",
}


def load(**overrides):
    env = {**BASE, **overrides}
    return config.load({k: v for k, v in env.items() if v is not None})


def error(**overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load(**overrides)
    return str(info.value)


def test_seed_defaults():
    s = load()
    assert s.service == "minio-s3-mirror"
    assert s.pairs == (BucketPair("source", "destination"),)
    assert (s.dry_run, s.skip_errors, s.debug, s.overwrite) == (False, True, False, True)
    assert (s.max_workers, s.max_pairs, s.prefix, s.exclude) == (None, 3, "", ())
    assert not s.slack_enabled
    assert s.source.url == "http://minio:9000" and not s.source.secure
    assert s.target.secure and s.target.netloc == "s3.ap-northeast-2.amazonaws.com"


def test_seed_options():
    s = load(
        SERVICE="myservice",
        MIRROR_EXCLUDE="*.tmp, *.log,.DS_Store,",
        MIRROR_MAX_WORKERS="10",
        MIRROR_DRY_RUN="TRUE",
        MIRROR_SKIP_ERRORS="false",
        MIRROR_DEBUG="yes",
        MIRROR_PREFIX="2025/01/22/",
        MIRROR_OVERWRITE="0",
        MIRROR_MAX_PAIRS="5",
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_CHANNEL_ID="C1",
    )
    assert s.service == "myservice"
    assert s.exclude == ("*.tmp", "*.log", ".DS_Store")
    assert (s.max_workers, s.dry_run, s.skip_errors, s.debug) == (10, True, False, True)
    assert (s.prefix, s.overwrite, s.max_pairs) == ("2025/01/22", False, 5)
    assert s.slack_enabled


def test_max_workers_auto_and_empty_values_mean_default():
    assert load(MIRROR_MAX_WORKERS="auto").max_workers is None
    assert load(MIRROR_MAX_WORKERS="", MIRROR_DRY_RUN="  ").dry_run is False


def test_pairs_with_paths_and_both_variables():
    s = load(
        BUCKET_PAIR="minio/src/in/coming:aws/dst/archive/",
        BUCKET_PAIRS="minio/aaa:aws/bbb; minio/src/in/coming:aws/dst/archive ;minio/ccc:aws/ddd;",
    )
    assert s.pairs == (
        BucketPair("src", "dst", "in/coming", "archive"),
        BucketPair("aaa", "bbb"),
        BucketPair("ccc", "ddd"),
    )
    assert str(s.pairs[0]) == "minio/src/in/coming:aws/dst/archive"


def test_pair_prefix_and_key_mapping():
    pair = BucketPair("src", "dst", "in", "out/x")
    assert pair.source_prefix("2025/01/22") == "in/2025/01/22"
    assert pair.target_prefix("2025/01/22") == "out/x/2025/01/22"
    assert pair.target_key("in/2025/a b.txt") == "out/x/2025/a b.txt"
    assert BucketPair("s", "d").target_key("k") == "k"


def test_missing_required_variable():
    assert error(MINIO_URL=None) == ("MINIO_URL: not set; expected a URL like http://minio:9000")
    assert error(BUCKET_PAIR=None).startswith("BUCKET_PAIR: not set; expected BUCKET_PAIR or")


@pytest.mark.parametrize("value", ["minio/a", "minio/source", "source:destination", "minio/:aws/x"])
def test_malformed_pair(value):
    assert error(BUCKET_PAIR=value) == (
        f'BUCKET_PAIR: "{value}" is not <alias>/<bucket>[/path]:<alias>/<bucket>[/path]'
        " (example: minio/source:aws/destination)"
    )


def test_wrong_alias():
    assert "the left (source) alias must be 'minio'" in error(BUCKET_PAIR="s3/a1b:aws/dst")
    message = error(BUCKET_PAIRS="minio/a1b:aws/b2c;minio/x1y:s3/dst")
    assert message.startswith('BUCKET_PAIRS: "minio/x1y:s3/dst" is not valid: the right (target)')


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MIRROR_DRY_RUN", "maybe", "a boolean (true or false)"),
        ("MIRROR_SKIP_ERRORS", "2", "a boolean (true or false)"),
        ("MIRROR_MAX_WORKERS", "ten", "auto or an integer from 1 to 256 (example: 10)"),
        ("MIRROR_MAX_WORKERS", "0", "auto or an integer from 1 to 256 (example: 10)"),
        ("MIRROR_MAX_WORKERS", "40000", "auto or an integer from 1 to 256 (example: 10)"),
        ("MIRROR_MAX_PAIRS", "-1", "an integer from 1 to 64 (example: 5)"),
        ("MIRROR_MAX_PAIRS", "65", "an integer from 1 to 64 (example: 5)"),
        ("MIRROR_DIGEST_INTERVAL", "86401", "an integer from 1 to 86400 (example: 900)"),
        ("MINIO_URL", "minio:9000", "a URL with scheme and host (example: http://minio:9000)"),
        ("AWS_URL", "ftp://x", "a URL with scheme and host (example: http://minio:9000)"),
        ("MIRROR_LOG_FORMAT", "xml", "one of: text, json"),
        (
            "WEBHOOK_ADDRESS",
            "8080",
            "a listen address host:port, port 1 to 65535 (example: 0.0.0.0:8080)",
        ),
    ],
)
def test_bad_values_name_variable_value_and_form(name, value, expected):
    assert error(**{name: value}) == f'{name}: "{value}" is not {expected}'


# Hostile values: every one is a configuration error (exit 2) naming its variable, never
# a crash later (struct.error from a 16-bit AMQP prefetch, OverflowError from a timer,
# botocore's InvalidRegionError, pika's ValueError, a bind() on a garbage host...).
HOSTILE = (
    [
        ("MIRROR_MAX_WORKERS", v)
        for v in ["40000", "257", "-1", "nan", "inf", "1e3", "1_0", "٣", "²", "9" * 5000, "0x10"]
    ]
    + [("MIRROR_MAX_PAIRS", v) for v in ["0", "65", "nan", "1.5", "99999999999999999999999", "٣"]]
    + [
        ("MIRROR_DIGEST_INTERVAL", v)
        for v in ["0", "-5", "1e10", "10000000000", "nan", "300s", "٣٠٠"]
    ]
    + [
        ("MIRROR_DRY_RUN", "ｔｒｕｅ"),
        ("MIRROR_DEBUG", "nan"),
        ("MINIO_URL", "http://[::1"),
        ("MINIO_URL", "http://minio:99999"),
        ("MINIO_URL", "http://minio:0"),
        ("MINIO_URL", "http://minio:port"),
        ("MINIO_URL", "http://mínio:9000"),
        ("MINIO_URL", "http://"),
        ("AWS_URL", "https://s3.amazonaws.com/bucket"),
        ("AWS_URL", "https:///nohost"),
        ("SLACK_API_URL", "http://[zz"),
        ("SLACK_API_URL", "http://slack:70000/api/"),
        ("RABBITMQ_URL", "amqp://rabbit:99999/%2F"),
        ("RABBITMQ_URL", "amqp://[::1"),
        ("RABBITMQ_URL", "amqp://g:g@rabbit:5672/%2F?heartbeat=soon"),
        ("RABBITMQ_URL", "http://rabbit/"),
        ("WEBHOOK_ADDRESS", "0.0.0.0:65536"),
        ("WEBHOOK_ADDRESS", "0.0.0.0:0"),
        ("WEBHOOK_ADDRESS", "0.0.0.0:-1"),
        ("WEBHOOK_ADDRESS", "0.0.0.0:²"),
        ("WEBHOOK_ADDRESS", "0.0.0.0:"),
        ("WEBHOOK_ADDRESS", "höst:8080"),
        ("WEBHOOK_ADDRESS", "a b:8080"),
        ("METRICS_ADDRESS", "127.0.0.1:99999"),
        ("METRICS_ADDRESS", "nan"),
        ("METRICS_ADDRESS", "127.0.0.1:9_100"),
        ("AWS_REGION", "../../etc"),
        ("AWS_REGION", "서울"),
        ("AWS_REGION", "a" * 100),
        ("MIRROR_PREFIX", "../x"),
        ("MIRROR_PREFIX", "a/../../x"),
        ("MIRROR_PREFIX", "/2025/01/22"),
        ("MIRROR_PREFIX", "./2025"),
        ("MIRROR_PREFIX", "2025/\0/x"),
        ("BUCKET_PAIR", "minio/src/../x:aws/dst"),
        ("BUCKET_PAIRS", "minio/src:aws/dst/./x"),
        ("LISTENER_MODE", "ｓｔｒｅａｍ"),
        ("MIRROR_EXCLUDE", "*.tmp,\udcff"),
        ("SERVICE", "bad\udcffname"),
        ("WEBHOOK_AUTH_TOKEN", "tøken"),
        ("WEBHOOK_AUTH_TOKEN", "two words"),
        ("SLACK_BOT_TOKEN", "xoxb-ключ"),
        ("MINIO_ACCESS_KEY", "ключ"),
        ("AWS_ACCESS_KEY", "AKIA XXXX"),
    ]
)


@pytest.mark.parametrize(("name", "value"), HOSTILE)
def test_hostile_values_are_configuration_errors(name, value):
    message = error(**{name: value})
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message and len(message) < 500, message
    message.encode("utf-8")  # printable as given: no lone surrogates


@pytest.mark.parametrize(
    ("name", "value", "secret", "masked"),
    [
        ("MINIO_URL", "ftp://u:pw-s3cr3t@h", "pw-s3cr3t", "ftp://u:****@h"),
        ("MINIO_URL", "http://u:pw-s3cr3t@minio:9000", "pw-s3cr3t", "http://u:****@minio:9000"),
        ("MINIO_URL", "u:pw-s3cr3t@minio:9000", "pw-s3cr3t", "u:****@minio:9000"),
        ("AWS_URL", "https://TOKENONLY@s3.amazonaws.com", "TOKENONLY", "https://****@s3"),
        ("AWS_URL", "https://u:p@ss@s3.amazonaws.com/x", "p@ss", "https://u:****@s3"),
        ("SLACK_API_URL", "ftp://u:pw-s3cr3t@slack/api/", "pw-s3cr3t", "ftp://u:****@slack"),
        ("RABBITMQ_URL", "http://guest:hunter2@rabbit/", "hunter2", "http://guest:****@rabbit/"),
        ("RABBITMQ_URL", "amqp://g:hunter2@rabbit:99999/", "hunter2", "amqp://g:****@rabbit"),
        ("RABBITMQ_URL", "hunter2", "hunter2", '"****"'),
        ("RABBITMQ_URL", "amqp:/g:hunter2@rabbit", "hunter2", '"****"'),
        ("WEBHOOK_AUTH_TOKEN", "sécret token", "sécret", '"****"'),
        ("MIRROR_PREFIX", "ftp://u:pw-s3cr3t@h/../x", "pw-s3cr3t", "ftp://u:****@h"),
    ],
)
def test_secrets_are_masked_in_errors(name, value, secret, masked):
    message = error(**{name: value})
    assert message.startswith(f"{name}: ")
    assert secret not in message and masked in message, message


def test_upper_bounds_are_accepted():
    s = load(MIRROR_MAX_WORKERS="256", MIRROR_MAX_PAIRS="64", MIRROR_DIGEST_INTERVAL="86400")
    assert (s.max_workers, s.max_pairs, s.digest_interval) == (256, 64, 86400)
    s = load(
        WEBHOOK_ADDRESS="[::1]:65535",
        METRICS_ADDRESS=":1",
        AWS_REGION="ap-northeast-2",
        MIRROR_PREFIX="2025/01/22/",
        RABBITMQ_URL="amqps://u:p@rabbit.example:5671/%2F?heartbeat=30",
        WEBHOOK_AUTH_TOKEN="a-Long_random.token~!",
    )
    assert (s.webhook_address, s.metrics_address) == (("::1", 65535), ("0.0.0.0", 1))
    assert (s.aws_region, s.prefix) == ("ap-northeast-2", "2025/01/22")


def test_secrets_list_for_log_scrubbing():
    s = load(SLACK_BOT_TOKEN="xoxb-token", RABBITMQ_URL="amqp://u:rabbitpw@h:5672/%2F")
    assert set(s.secrets()) == {"s3cr3t-minio", "s3cr3t-aws", "xoxb-token", "rabbitpw"}
    assert "s3cr3t" not in repr(s)


@pytest.mark.parametrize("variable", ["MIRROR_CA_BUNDLE", "MINIO_CA_BUNDLE", "AWS_CA_BUNDLE"])
def test_a_ca_bundle_must_be_a_pem_file_openssl_loads(tmp_path, variable):
    assert error(**{variable: str(tmp_path / "none.pem")}).startswith(f"{variable}:")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert "is not a PEM CA bundle" in error(**{variable: str(bundle)})
    first = certifi.contents().split("-----END CERTIFICATE-----")[0]  # a real root CA
    bundle.write_text(first + "-----END CERTIFICATE-----\n")
    settings = load(**{variable: str(bundle)})
    found = {settings.ca_bundle, settings.source_ca_bundle, settings.target_ca_bundle}
    assert str(bundle) in found


class Asking(dict):
    """An environment that records every variable the configuration reads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


FUZZ = [
    *("", " ", "nan", "inf", "-1", "0", "1e400", "9" * 40, "٣", "²", "ｔｒｕｅ", "\udcff"),
    *("../x", "/", "a:b", ":", "@", "http://[::1", "x" * 5000, "amqp://u:p@h:99999/"),
    *("10s", "-5m", "0s", "99999999d", "1,2,3", ",", "5,,5", "a b", "\t", "h:²", "h:99999"),
]


def test_every_variable_read_gives_a_value_or_a_configuration_error():
    """Variables added later are covered too: nothing but ConfigError may escape."""
    env = Asking(BASE)
    config.load(env)
    assert len(env.asked) > 30
    crashes = []
    for name in sorted(env.asked):
        for value in FUZZ:
            try:
                load(**{name: value})
            except ConfigError as exc:
                if not str(exc).startswith(f"{name}: "):
                    crashes.append((name, value, str(exc)[:100]))
            except Exception as exc:
                crashes.append((name, value, repr(exc)[:100]))
    assert crashes == []
