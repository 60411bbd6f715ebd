"""The source catalog: data_sources.yml ``type`` → settings model, and ``validate_sources``.

What a daemon's ``__main__`` (and ``livedata validate``) needs to refuse a data_sources.yml
the gateway would refuse, without starting or even importing a feeder: only pydantic
settings models, no network code (no aiohttp, websockets or aiokafka; ``make lint``
enforces it). ``registry`` maps the same types to the feeder classes the gateway runs,
and ``build_feeds`` builds them from what ``validate_sources`` returns, so the gateway
and every other daemon check a directory the one same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyPollSettings, EastMoneySettings
from services.feeder_gateway.feeders.fushu.settings import FushuSettings
from services.feeder_gateway.feeders.sim.settings import SimSettings
from services.feeder_gateway.feeders.tencent.settings import TencentSettings
from shared.config import (
    DATA_SOURCES_FILE,
    AppConfig,
    ConfigError,
    MarketSources,
    SourceEntry,
    Strict,
    format_validation_error,
)
from shared.symbols import Market

SOURCE_TYPES: Mapping[str, type[Strict]] = {
    "sim": SimSettings,
    "eastmoney": EastMoneySettings,
    "eastmoney_poll": EastMoneyPollSettings,
    "alpaca": AlpacaSettings,
    "fushu": FushuSettings,
    "tencent": TencentSettings,
}
"""Every ``type:`` a data_sources.yml source may have, with the model of its settings."""

DEFAULT_SOURCES: Mapping[Market, MarketSources] = {
    m: MarketSources(sources=[SourceEntry(type="sim")]) for m in Market
}
"""A served market that data_sources.yml leaves out runs the sim."""


@dataclass(frozen=True)
class CheckedSource:
    """One enabled source, its settings validated (secrets from secure.yml merged in)."""

    name: str
    type: str
    settings: Strict


@dataclass(frozen=True)
class MarketPlan:
    """A served market: its data_sources.yml entry and its enabled sources, in order."""

    market: Market
    config: MarketSources
    sources: tuple[CheckedSource, ...]


def validate_settings(model: type[Strict], raw: dict[str, Any], file: str, key: str) -> Strict:
    """``model`` validated from ``raw``; a ConfigError's lines name ``file`` and ``key``."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(file, e, key)) from None


def served_markets(config: AppConfig) -> list[Market]:
    """The markets a gateway with this config serves: ``gateway.markets``, else those of
    data_sources.yml, else every market."""
    configured = config.data_sources.markets
    return config.livedata.gateway.markets or (list(configured) if configured else list(Market))


def validate_sources(config: AppConfig) -> dict[Market, MarketPlan]:
    """Every served market's enabled sources, each type known and its settings valid.

    Raises ConfigError naming data_sources.yml and the key of the first bad source.
    """
    where = str(config.directory / DATA_SOURCES_FILE)
    plans: dict[Market, MarketPlan] = {}
    for market in served_markets(config):
        market_cfg = config.data_sources.markets.get(market) or DEFAULT_SOURCES[market]
        checked: list[CheckedSource] = []
        for i, entry in enumerate(market_cfg.sources):
            key = f"markets.{market.value}.sources[{i}]"
            if not entry.enabled:
                continue
            model = SOURCE_TYPES.get(entry.type)
            if model is None:
                known = ", ".join(sorted(SOURCE_TYPES))
                raise ConfigError(f"{where}: {key}.type: unknown feeder type {entry.type!r} (known: {known})")
            settings = validate_settings(model, config.source_settings(entry), where, key)
            checked.append(CheckedSource(entry.source_name, entry.type, settings))
        if not checked:
            raise ConfigError(f"{where}: markets.{market.value}.sources: no enabled source")
        plans[market] = MarketPlan(market, market_cfg, tuple(checked))
    return plans
