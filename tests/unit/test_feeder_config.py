"""data_sources.yml as the gateway reads it: feeder settings validated per type, errors named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.feeder_gateway.feeders.base import FeederMetrics
from services.feeder_gateway.service import build_feeds
from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.config import ConfigError, load_config
from shared.events import SystemEvents
from shared.metrics import ServiceMetrics
from shared.symbols import Market


def feeds_for(
    tmp_path: Path, sources: dict[str, object], secure: dict[str, object] | None = None
) -> dict[Market, object]:
    (tmp_path / "livedata.yml").write_text("")
    (tmp_path / "data_sources.yml").write_text(yaml.safe_dump(sources))
    if secure is not None:
        (tmp_path / "secure.yml").write_text(yaml.safe_dump(secure))
    config = load_config(tmp_path, env={})
    return dict(
        build_feeds(config, ConflatingTickQueue(10), SystemEvents("t", "t"), FeederMetrics(ServiceMetrics("t")))
    )


def test_empty_file_means_sim_everywhere(tmp_path: Path) -> None:
    feeds = feeds_for(tmp_path, {})
    assert set(feeds) == set(Market)


def test_unknown_type_names_file_key_and_known_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        feeds_for(tmp_path, {"markets": {"US": {"sources": [{"type": "sim"}, {"type": "bloomberg"}]}}})
    msg = str(e.value)
    assert "data_sources.yml: markets.US.sources[1].type: unknown feeder type 'bloomberg'" in msg
    assert "alpaca" in msg and "eastmoney" in msg and "sim" in msg


def test_bad_feeder_setting_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        feeds_for(tmp_path, {"markets": {"CN": {"sources": [{"type": "sim", "ticks_per_s_per_symbol": -1}]}}})
    assert "data_sources.yml: markets.CN.sources[0].ticks_per_s_per_symbol: Input should be greater than 0" in str(
        e.value
    )
    with pytest.raises(ConfigError) as e:
        feeds_for(tmp_path, {"markets": {"CN": {"sources": [{"type": "sim", "sed": 1}]}}})
    assert "markets.CN.sources[0].sed: unknown key" in str(e.value)


def test_all_disabled_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"markets.HK.sources: no enabled source"):
        feeds_for(tmp_path, {"markets": {"HK": {"sources": [{"type": "sim", "enabled": False}]}}})


def test_secrets_reach_the_feeder_without_showing(tmp_path: Path) -> None:
    sources = {"markets": {"US": {"sources": [{"type": "alpaca", "feed": "iex"}]}}}
    feeds = feeds_for(
        tmp_path, sources, secure={"alpaca": {"key": "AKID-visible-nowhere", "secret": "s3cr3t-visible-nowhere"}}
    )
    feeder = feeds[Market.US]._sources[0].feeder  # type: ignore[attr-defined]
    assert feeder.settings.key.get_secret_value() == "AKID-visible-nowhere"
    assert "visible-nowhere" not in repr(feeder.settings)
