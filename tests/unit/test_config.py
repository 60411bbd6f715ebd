"""Config loading: defaults, ${VAR}, env overrides, and errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_config


def write(d: Path, name: str, text: str) -> None:
    (d / name).write_text(text)


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """A config directory with an empty livedata.yml (the one file every service needs)."""
    (tmp_path / "livedata.yml").write_text("")
    return tmp_path


def test_a_missing_livedata_yml_is_an_error_not_a_default_broker(tmp_path: Path) -> None:
    (tmp_path / "livedata.yml").unlink()
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    assert str(e.value).startswith(f"{tmp_path / 'livedata.yml'}: not found")


def test_empty_livedata_yml_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg.livedata.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.livedata.kafka.enable_idempotence == "auto"
    assert cfg.livedata.topics.prefix == "ginkgo.live"
    assert cfg.data_sources.markets == {}


def test_demo_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "deploy" / "config" / "demo", env={})
    assert [j.name for j in cfg.task_timer.jobs] == [
        "demo_bar_snapshot",
        "update_selector",
        "cn_close_snapshot",
        "hk_close_snapshot",
        "us_close_snapshot",
        "update_data",
    ]
    assert set(cfg.data_sources.markets) == {"CN", "HK", "US"}


def test_var_substitution_with_default_and_env(tmp_path: Path) -> None:
    write(tmp_path, "livedata.yml", 'kafka:\n  bootstrap_servers: "${BROKER:-h:1}"\n  client_id: "x-${NAME}-y"\n')
    cfg = load_config(tmp_path, env={"NAME": "abc"})
    assert cfg.livedata.kafka.bootstrap_servers == "h:1"
    assert cfg.livedata.kafka.client_id == "x-abc-y"
    cfg = load_config(tmp_path, env={"NAME": "abc", "BROKER": "b:2"})
    assert cfg.livedata.kafka.bootstrap_servers == "b:2"


def test_unset_variable_names_file_key_and_variable(tmp_path: Path) -> None:
    write(tmp_path, "data_sources.yml", "markets:\n  US:\n    sources:\n      - type: sim\n        url: ${NOPE}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    msg = str(e.value)
    assert "data_sources.yml" in msg and "markets.US.sources[0].url" in msg and "NOPE" in msg


def test_env_overrides(tmp_path: Path) -> None:
    write(tmp_path, "livedata.yml", "kafka: {bootstrap_servers: 'file:1'}\n")
    cfg = load_config(
        tmp_path, env={"KAFKA_BOOTSTRAP_SERVERS": "env:9", "REDIS_URL": "redis://x/0", "GINKGO_LOG_LEVEL": "DEBUG"}
    )
    assert cfg.livedata.kafka.bootstrap_servers == "env:9"
    assert cfg.livedata.redis.url is not None and cfg.livedata.redis.url.get_secret_value() == "redis://x/0"
    assert cfg.livedata.logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("livedata.yml", "kafka:\n  lingr_ms: 5\n", "livedata.yml: kafka.lingr_ms: unknown key"),
        (
            "livedata.yml",
            "kafka:\n  linger_ms: -1\n",
            "livedata.yml: kafka.linger_ms: Input should be greater than or equal to 0",
        ),
        ("livedata.yml", "gateway:\n  markets: [EU]\n", "livedata.yml: gateway.markets.0:"),
        (
            "task_timer.yml",
            "jobs:\n  - {name: a, cron: '* * *', command: x}\n",
            "task_timer.yml: jobs.0.cron: Value error, not a 5-field cron",
        ),
        (
            "task_timer.yml",
            "jobs:\n  - {name: a, cron: '* * * * *', command: x, timezone: Mars/Base}\n",
            "jobs.0.timezone: Value error, unknown timezone",
        ),
        (
            "data_sources.yml",
            "markets:\n  CN: {sources: []}\n",
            "data_sources.yml: markets.CN.sources: List should have at least 1 item",
        ),
        ("livedata.yml", "kafka: [1, 2\n", "livedata.yml: line 2, column 1: invalid YAML"),
        ("livedata.yml", "- a\n- b\n", "livedata.yml: <root>: expected a mapping"),
        ("secure.yml", "alpaca: {key: k}\n", "secure.yml: alpaca: no source of that name"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, file: str, text: str, expected: str) -> None:
    write(tmp_path, file, text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    assert expected in str(e.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope", env={})


def test_secrets_merge_and_never_print(tmp_path: Path) -> None:
    write(tmp_path, "data_sources.yml", "markets:\n  US:\n    sources:\n      - {type: sim, name: alpaca}\n")
    write(tmp_path, "secure.yml", "alpaca:\n  secret: ${SECRET}\n")
    cfg = load_config(tmp_path, env={"SECRET": "hunter2-very-secret"})
    entry = cfg.data_sources.markets["US"].sources[0]  # type: ignore[index]
    merged = cfg.source_settings(entry)
    assert merged["secret"].get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(merged)


def test_validation_errors_do_not_echo_values(tmp_path: Path) -> None:
    write(tmp_path, "livedata.yml", "redis:\n  url: 12\n  password: hunter2-very-secret\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    assert "hunter2" not in str(e.value)
    assert "redis.password: unknown key" in str(e.value)
