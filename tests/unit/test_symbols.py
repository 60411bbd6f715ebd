"""Canonical symbols and routing by market."""

from __future__ import annotations

import pytest

from shared.symbols import Market, SymbolError, group_by_market, market_of, normalize


@pytest.mark.parametrize(
    ("raw", "canonical", "market"),
    [
        ("600000.SH", "600000.SH", Market.CN),
        ("000001.sz", "000001.SZ", Market.CN),
        ("430047.BJ", "430047.BJ", Market.CN),
        ("00700.HK", "00700.HK", Market.HK),
        ("700.HK", "00700.HK", Market.HK),
        ("AAPL", "AAPL", Market.US),
        ("aapl.us", "AAPL", Market.US),
        ("BRK.B", "BRK.B", Market.US),
    ],
)
def test_normalize_and_route(raw: str, canonical: str, market: Market) -> None:
    assert normalize(raw) == canonical
    assert market_of(canonical) is market


@pytest.mark.parametrize("bad", ["", "60000.SH", "600000.SS", "123456789012.HK", "A B", "1AAPL"])
def test_bad_symbols_are_named(bad: str) -> None:
    with pytest.raises(SymbolError, match="unknown symbol"):
        normalize(bad)


def test_group_by_market() -> None:
    assert group_by_market({"600000.SH", "00700.HK", "AAPL", "MSFT"}) == {
        Market.CN: frozenset({"600000.SH"}),
        Market.HK: frozenset({"00700.HK"}),
        Market.US: frozenset({"AAPL", "MSFT"}),
    }


@pytest.mark.parametrize("not_canonical", ["1234567.SH", "700.HK", "aapl", "foo.bar", "600000.sh", ""])
def test_only_canonical_symbols_belong_to_a_market(not_canonical: str) -> None:
    with pytest.raises(SymbolError, match="belongs to no market"):
        market_of(not_canonical)
