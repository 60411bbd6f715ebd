"""The source catalog: every data_sources.yml type with its settings, checked without the feeders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.feeder_gateway.feeders.catalog import SOURCE_TYPES, validate_sources
from services.feeder_gateway.feeders.registry import FEEDER_TYPES
from shared.config import AppConfig, ConfigError, load_config
from shared.symbols import Market

ROOT = Path(__file__).resolve().parents[2]


def config_for(
    tmp_path: Path,
    sources: dict[str, object],
    secure: dict[str, object] | None = None,
    livedata: dict[str, object] | None = None,
) -> AppConfig:
    (tmp_path / "livedata.yml").write_text(yaml.safe_dump(livedata or {}))
    (tmp_path / "data_sources.yml").write_text(yaml.safe_dump(sources))
    if secure is not None:
        (tmp_path / "secure.yml").write_text(yaml.safe_dump(secure))
    return load_config(tmp_path, env={})


def test_catalog_and_registry_name_the_same_types_with_the_same_settings() -> None:
    assert set(SOURCE_TYPES) == set(FEEDER_TYPES)
    for type_name, feeder in FEEDER_TYPES.items():
        assert feeder.type_name == type_name
        assert feeder.settings_model is SOURCE_TYPES[type_name], type_name


def test_importing_the_catalog_loads_no_network_code_and_no_feeder() -> None:
    probe = (
        "import json, sys\n"
        "import services.feeder_gateway.feeders.catalog\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    network = [m for m in loaded if m.split(".")[0] in {"aiohttp", "websockets", "aiokafka", "yarl"}]
    feeders = [m for m in loaded if m.startswith("services.feeder_gateway.") and not m.endswith(("settings", "wire"))]
    assert network == []
    assert feeders == [
        "services.feeder_gateway.feeders",
        "services.feeder_gateway.feeders.alpaca",
        "services.feeder_gateway.feeders.catalog",
        "services.feeder_gateway.feeders.eastmoney",
        "services.feeder_gateway.feeders.fushu",
        "services.feeder_gateway.feeders.sim",
        "services.feeder_gateway.feeders.tencent",
    ]


def test_empty_file_means_sim_in_every_market(tmp_path: Path) -> None:
    plans = validate_sources(config_for(tmp_path, {}))
    assert set(plans) == set(Market)
    assert all([(s.name, s.type) for s in p.sources] == [("sim", "sim")] for p in plans.values())


def test_sources_come_back_in_order_without_the_disabled_ones(tmp_path: Path) -> None:
    sources = {
        "markets": {
            "HK": {
                "sources": [
                    {"type": "tencent", "name": "hk-tencent"},
                    {"type": "sim", "enabled": False},
                    {"type": "fushu", "name": "hk-fushu", "base_url": "http://127.0.0.1:9/"},
                ]
            }
        }
    }
    plans = validate_sources(config_for(tmp_path, sources, secure={"hk-fushu": {"api_key": "k-visible-nowhere"}}))
    assert list(plans) == [Market.HK]
    hk = plans[Market.HK].sources
    assert [(s.name, s.type) for s in hk] == [("hk-tencent", "tencent"), ("hk-fushu", "fushu")]
    assert hk[1].settings.api_key.get_secret_value() == "k-visible-nowhere"  # type: ignore[attr-defined]
    assert "visible-nowhere" not in repr(hk[1])


def test_only_the_markets_this_gateway_serves_are_checked(tmp_path: Path) -> None:
    sources = {
        "markets": {
            "CN": {"sources": [{"type": "sim"}]},
            "US": {"sources": [{"type": "bloomberg"}]},
        }
    }
    plans = validate_sources(config_for(tmp_path, sources, livedata={"gateway": {"markets": ["CN"]}}))
    assert list(plans) == [Market.CN]
    with pytest.raises(ConfigError, match=r"markets\.US\.sources\[0\]\.type: unknown feeder type 'bloomberg'"):
        validate_sources(config_for(tmp_path, sources))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"type": "bloomberg"}, "markets.CN.sources[0].type: unknown feeder type 'bloomberg' (known: alpaca, "),
        ({"type": "sim", "interval_ms": 0}, "markets.CN.sources[0].interval_ms: Input should be greater than 0"),
        ({"type": "eastmoney", "base_url": "ftp://x"}, "markets.CN.sources[0].base_url:"),
        ({"type": "tencent", "encoding": "klingon"}, "markets.CN.sources[0].encoding:"),
        ({"type": "alpaca", "chanels": ["trades"]}, "markets.CN.sources[0].chanels: unknown key"),
        ({"type": "sim", "enabled": False}, "markets.CN.sources: no enabled source"),
    ],
)
def test_a_bad_source_is_one_error_naming_file_and_key(
    tmp_path: Path, source: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        validate_sources(config_for(tmp_path, {"markets": {"CN": {"sources": [source]}}}))
    text = str(e.value)
    assert f"{tmp_path / 'data_sources.yml'}: {message}" in text
    assert "Traceback" not in text and "\n" not in text.strip()
