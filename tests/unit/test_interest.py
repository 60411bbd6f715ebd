"""Interest registry: per-subscriber semantics, reference-counted union, leases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.datamanager.interest import InterestRegistry
from shared.dto import InterestUpdate, UpdateType
from shared.symbols import Market, SymbolError

T0 = datetime(2024, 1, 2, 1, 0, tzinfo=UTC)


def upd(
    pid: str, kind: UpdateType, *symbols: str, node: str = "n1", lease_s: float | None = None, at: datetime = T0
) -> InterestUpdate:
    return InterestUpdate(
        portfolio_id=pid, node_id=node, symbols=symbols, update_type=kind, timestamp=at, lease_s=lease_s
    )


def test_replace_touches_only_that_subscriber() -> None:
    r = InterestRegistry()
    assert r.apply(upd("p1", "replace", "600000.SH", "AAPL")) == {Market.CN, Market.US}
    assert r.apply(upd("p2", "replace", "00700.HK")) == {Market.HK}
    assert r.apply(upd("p2", "replace", "MSFT")) == {Market.HK, Market.US}
    assert r.market_symbols(Market.CN) == {"600000.SH"}
    assert r.market_symbols(Market.US) == {"AAPL", "MSFT"}
    assert r.market_symbols(Market.HK) == frozenset()
    assert r.subscriber_symbols("p1", "n1") == {"600000.SH", "AAPL"}


def test_add_remove_clear_and_refcounts() -> None:
    r = InterestRegistry()
    r.apply(upd("p1", "add", "AAPL"))
    r.apply(upd("p2", "add", "AAPL", "MSFT"))
    assert r.apply(upd("p1", "remove", "AAPL")) == set()  # p2 still holds AAPL
    assert r.market_symbols(Market.US) == {"AAPL", "MSFT"}
    assert r.apply(upd("p2", "clear")) == {Market.US}
    assert r.all_symbols() == frozenset()
    assert r.subscriber_count == 0


def test_same_portfolio_different_nodes_are_different_subscribers() -> None:
    r = InterestRegistry()
    r.apply(upd("p1", "replace", "AAPL", node="a"))
    r.apply(upd("p1", "replace", "MSFT", node="b"))
    assert r.market_symbols(Market.US) == {"AAPL", "MSFT"}


def test_symbols_are_normalized_and_bad_ones_rejected() -> None:
    r = InterestRegistry()
    r.apply(upd("p1", "add", "aapl.us", "700.hk"))
    assert r.all_symbols() == {"AAPL", "00700.HK"}
    with pytest.raises(SymbolError, match="'BAD SYMBOL'"):
        r.validate(upd("p1", "add", "BAD SYMBOL"))


def test_leases_expire_and_renew() -> None:
    r = InterestRegistry()
    r.apply(upd("p1", "replace", "AAPL", lease_s=30))
    r.apply(upd("p2", "replace", "MSFT"))  # no lease: stays
    t = T0.timestamp()
    assert r.expire(t + 29) == (set(), [])
    r.apply(upd("p1", "replace", "AAPL", lease_s=30, at=datetime.fromtimestamp(t + 20, UTC)))  # renewed
    assert r.expire(t + 45) == (set(), [])
    changed, gone = r.expire(t + 51)
    assert changed == {Market.US} and gone == [("p1", "n1")]
    assert r.market_symbols(Market.US) == {"MSFT"}


def test_default_lease_applies_when_update_has_none() -> None:
    r = InterestRegistry(default_lease_s=10)
    r.apply(upd("p1", "add", "AAPL"))
    assert r.expire(T0.timestamp() + 11)[1] == [("p1", "n1")]


def test_a_redelivered_update_changes_nothing() -> None:
    r = InterestRegistry()
    r.apply(upd("p1", "add", "AAPL"), offset=5)
    r.apply(upd("p1", "remove", "AAPL"), offset=6)
    assert r.apply(upd("p1", "add", "AAPL"), offset=5) == set()  # the old add, delivered again
    assert r.subscriber_symbols("p1", "n1") == frozenset()


def test_added_symbols_dirty_subscribers_and_lease_cap() -> None:
    r = InterestRegistry(max_lease_s=60)
    r.apply(upd("p1", "replace", "AAPL", "MSFT", lease_s=1e12), offset=0)
    assert r.last_added == {"AAPL", "MSFT"}
    r.apply(upd("p1", "add", "MSFT", "00700.HK", lease_s=1e12), offset=1)
    assert r.last_added == {"00700.HK"}
    assert list(r.take_dirty()) == [("p1", "n1")] and not r.dirty
    assert r.expire(T0.timestamp() + 61)[1] == [("p1", "n1")]  # a huge lease is cut to max_lease_s
    assert r.take_dirty() == {("p1", "n1"): None}
