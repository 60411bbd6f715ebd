"""Canonical symbol ⇄ EastMoney secid (``{market id}.{code}``), pure functions.

Market ids: ``1`` Shanghai, ``0`` Shenzhen *and* Beijing, ``116`` HK stocks, ``105`` /
``106`` / ``107`` US NASDAQ / NYSE / AMEX. The forward direction follows the canonical
suffix (``.SH`` → 1 whatever the code, so SH indices like ``000001.SH`` map to
``1.000001``; ``.SZ`` and ``.BJ`` → 0). The reverse direction has to guess the exchange
of a market-0 code: Beijing codes are the 6-digit codes starting ``4`` or ``8`` (old NEEQ
``43xxxx``, ``83xxxx``, ``87xxxx``, ``88xxxx``) or ``92`` (codes issued since 2024);
every other market-0 code is Shenzhen (``000``/``001``/``002``/``003``/``300``/``301``
stocks, ``200`` B-shares, ``399`` indices, ``1x`` funds and bonds). A feeder that knows
which secids it asked for resolves answers by that request first and only falls back
to this guess.

US secids need the listing exchange, which a bare ticker does not carry: the caller
passes a ``us_exchange`` map (ticker → 105/106/107) and a default (105, NASDAQ). A
ticker with a share class (``BRK.B``) is sent with ``_`` in place of the dot
(``106.BRK_B``), as most public clients write it (PROVIDERS.md does not say).
"""

from __future__ import annotations

from collections.abc import Mapping

SH, SZ_BJ, HK = 1, 0, 116
US_MARKETS = frozenset({105, 106, 107})


class SecidError(ValueError):
    """A symbol with no EastMoney secid, or a (market, code) pair with no canonical symbol."""


def to_secid(
    symbol: str, us_exchange: Mapping[str, int] | None = None, us_default: int = 105
) -> str:
    """``600000.SH`` → ``1.600000``, ``00700.HK`` → ``116.00700``, ``AAPL`` → ``105.AAPL``."""
    code, dot, suffix = symbol.rpartition(".")
    if dot and suffix in ("SH", "SZ", "BJ"):
        if len(code) != 6 or not code.isdigit():
            raise SecidError(f"{symbol!r}: a CN code has 6 digits")
        return f"{SH if suffix == 'SH' else SZ_BJ}.{code}"
    if dot and suffix == "HK":
        if not code.isdigit() or len(code) > 5:
            raise SecidError(f"{symbol!r}: an HK code has at most 5 digits")
        return f"{HK}.{int(code):05d}"
    if symbol and symbol[0].isalpha() and symbol.replace(".", "").replace("-", "").isalnum():
        market = (us_exchange or {}).get(symbol, us_default)
        if market not in US_MARKETS:
            raise SecidError(f"{symbol!r}: US exchange id {market} is not one of 105/106/107")
        return f"{market}.{symbol.replace('.', '_')}"
    raise SecidError(f"{symbol!r} has no EastMoney secid")


def is_beijing_code(code: str) -> bool:
    """Whether a market-0 code is listed in Beijing rather than Shenzhen."""
    return len(code) == 6 and code.isdigit() and (code[0] in "48" or code.startswith("92"))


def from_market_code(market: int, code: str) -> str:
    """(f13, f12) → canonical symbol: ``(1, "600000")`` → ``600000.SH``, ``(0, "430047")`` →
    ``430047.BJ``, ``(116, "00700")`` → ``00700.HK``, ``(106, "BRK_B")`` → ``BRK.B``."""
    if market == SH:
        return f"{code}.SH"
    if market == SZ_BJ:
        return f"{code}.BJ" if is_beijing_code(code) else f"{code}.SZ"
    if market == HK:
        return f"{code}.HK"
    if market in US_MARKETS:
        return code.replace("_", ".")
    raise SecidError(f"EastMoney market id {market} (code {code!r}) maps to no canonical market")


def market_id(secid: str) -> int:
    """The market id part of a secid (``"116.00700"`` → 116)."""
    return int(secid.partition(".")[0])
