"""Alpaca settings and the symbol budget (which wanted symbols fit the plan's limit)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.alpaca.subscription import SymbolBudget, to_wire
from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.registry import FEEDER_TYPES
from shared.metrics import ServiceMetrics
from shared.symbols import Market


def feeder(**settings: object) -> AlpacaFeeder:
    ctx = FeederContext("alpaca", Market.US, lambda s, d: None, FeederMetrics(ServiceMetrics("t")))
    return AlpacaFeeder(AlpacaSettings.model_validate(settings), ctx)


def test_registered() -> None:
    assert FEEDER_TYPES["alpaca"] is AlpacaFeeder


def test_defaults_and_secrets_hidden() -> None:
    s = AlpacaSettings.model_validate({"key": "K-123", "secret": "S-456"})
    assert s.url.replace("{feed}", s.feed) == "wss://stream.data.alpaca.markets/v2/iex"
    assert s.symbol_limit == 30 and s.channels == ("trades", "quotes")
    assert "K-123" not in repr(s) and "S-456" not in repr(s)


@pytest.mark.parametrize(
    "bad",
    [{"feed": "crypto"}, {"channels": []}, {"channels": ["trades", "trades"]}, {"channels": ["news"]},
     {"symbol_limit": 0}, {"unknown": 1}],
)
def test_invalid_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AlpacaSettings.model_validate(bad)


@pytest.mark.parametrize(
    ("channels", "stale"),
    [(["trades", "quotes"], 90.0), (["dailyBars"], 300.0), (["bars", "dailyBars"], 150.0),
     (["quotes", "dailyBars"], 90.0)],
)
def test_stale_threshold_follows_the_liveliest_channel(channels: list[str], stale: float) -> None:
    assert feeder(channels=channels).stale_after_s == stale


def test_gateway_watchdog_follows_sessions() -> None:
    assert feeder().follows_sessions is True


def test_to_wire() -> None:
    assert to_wire("BRK-B") == "BRK.B"
    assert to_wire("AAPL") == "AAPL"


@pytest.mark.parametrize(
    ("limit", "wanted", "current", "target", "excess"),
    [
        (None, "ABCD", "", "ABCD", ""),
        (3, "ABCD", "", "ABC", "D"),
        (3, "ABCD", "D", "ABD", "C"),  # on the server already: kept first
        (3, "AB", "BCD", "AB", ""),
        (2, "ABCD", "CD", "CD", "AB"),
    ],
)
def test_budget_select(limit: int | None, wanted: str, current: str, target: str, excess: str) -> None:
    b = SymbolBudget(limit)
    got_target, got_excess = b.select(set(wanted), set(current))
    assert got_target == set(target)
    assert got_excess == sorted(excess)


def test_budget_refused_symbols_are_not_retried_and_learned_limit_caps() -> None:
    b = SymbolBudget(30)
    b.refused = {"C", "D"}
    b.learned = 3
    target, excess = b.select(set("ABCDE"), set("ABE"))
    assert target == set("ABE") and excess == ["C", "D"]
    target, excess = b.select(set("ABEF"), set("ABE"))  # C, D no longer wanted: forgotten
    assert b.refused == set() and target == set("ABE") and excess == ["F"]


def test_budget_reports_each_excess_once() -> None:
    b = SymbolBudget(1)
    assert b.newly_excess(["B"]) is True
    assert b.newly_excess(["B"]) is False
    assert b.newly_excess(["B", "C"]) is True
    assert b.newly_excess([]) is False
    assert b.newly_excess(["B"]) is True
