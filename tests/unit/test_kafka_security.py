"""kafka.security validation, secure.yml store credentials, the one options builder, plain-text warnings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.config import ConfigError, KafkaSettings, load_config
from shared.kafka import consumer_options, producer_options
from shared.kafka_security import security_options
from shared.transport import plaintext_transports

SECRET = "s3cr3t-Pw-never-printed"


def config_dir(tmp_path: Path, livedata: dict[str, object], secure: dict[str, object] | None = None) -> Path:
    (tmp_path / "livedata.yml").write_text(yaml.safe_dump(livedata))
    if secure is not None:
        (tmp_path / "secure.yml").write_text(yaml.safe_dump(secure))
        (tmp_path / "secure.yml").chmod(0o600)
    return tmp_path


SCRAM = {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "username": "livedata-gateway"}


def test_password_from_secure_yml_reaches_every_client_kind(tmp_path: Path) -> None:
    d = config_dir(tmp_path, {"kafka": {"security": SCRAM}}, {"kafka": {"password": SECRET}})
    kafka = load_config(d, env={}).livedata.kafka
    assert SECRET not in repr(kafka)
    for opts in (security_options(kafka), producer_options(kafka, "p"), consumer_options(kafka, "c")):
        assert opts["security_protocol"] == "SASL_PLAINTEXT"
        assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
        assert opts["sasl_plain_username"] == "livedata-gateway" and opts["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(
    ("security", "secure", "expected"),
    [
        (SCRAM, None, "kafka.security: Value error, SCRAM-SHA-512 needs username and password"),
        ({"protocol": "SASL_SSL"}, None, "kafka.security: Value error, protocol SASL_SSL needs sasl_mechanism"),
        ({"protocol": "PLAINTEXT", "ca_file": "/etc/hosts"}, None, "ca_file is set but protocol PLAINTEXT has no TLS"),
        ({"protocol": "SSL", "ca_file": "/nonexistent/ca.pem"}, None, "ca_file: no such file"),
        ({"protocol": "TLS"}, None, "kafka.security.protocol: Input should be"),
        ({**SCRAM, "password": "x"}, {"kafka": {"password": SECRET}}, "secure.yml: kafka.password: kafka.security"),
        (SCRAM, {"kafka": {"pasword": SECRET}}, "secure.yml: kafka.pasword: unknown key"),
    ],
)
def test_mistakes_name_file_and_key_never_the_value(
    tmp_path: Path, security: dict[str, object], secure: dict[str, object] | None, expected: str
) -> None:
    d = config_dir(tmp_path, {"kafka": {"security": security}}, secure)
    with pytest.raises(ConfigError) as info:
        load_config(d, env={})
    assert expected in str(info.value)
    assert SECRET not in str(info.value)


def test_store_password_goes_into_the_url(tmp_path: Path) -> None:
    d = config_dir(
        tmp_path,
        {"redis": {"url": "redis://127.0.0.1:6379/0"}},
        {"redis": {"password": "p@ss/word"}},
    )
    url = load_config(d, env={}).livedata.redis.url
    assert url is not None and url.get_secret_value() == "redis://:p%40ss%2Fword@127.0.0.1:6379/0"


def test_plaintext_transports_to_other_hosts_are_named(tmp_path: Path) -> None:
    d = config_dir(
        tmp_path,
        {
            "kafka": {"bootstrap_servers": "kafka.internal:9092"},
            "redis": {"url": f"redis://:{SECRET}@redis.internal:6379/0"},
            "clickhouse": {"url": "clickhouse://default:@ch.internal:9000/default"},
        },
    )
    found = plaintext_transports(load_config(d, env={}), [{"HK": [{"base_url": "http://qt.gtimg.cn"}]}])
    assert [f.split(" (")[0] for f in found] == [
        "livedata.yml: kafka.security.protocol",
        "livedata.yml: redis.url",
        "livedata.yml: clickhouse.url",
        "data_sources.yml: HK[0].base_url",
    ]
    assert not any(SECRET in f for f in found)
    (tmp_path / "local").mkdir()
    local = config_dir(tmp_path / "local", {"redis": {"url": "redis://127.0.0.1:6379/0"}})
    assert plaintext_transports(load_config(local, env={})) == []  # loopback only: nothing to say
    assert KafkaSettings().security.protocol == "PLAINTEXT"
