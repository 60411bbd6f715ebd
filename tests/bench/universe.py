"""The full market at its real sizes (end of 2025), as canonical symbols.

5,469 CN (SSE main board and STAR, SZSE main board and ChiNext, BSE), 2,672 HK (main board
and GEM), 6,000 US. The codes lie in each board's real ranges, spread evenly over them; the
exact listings do not matter to what uses this (partitioning, load), only realistic forms
and counts. Deterministic: the same lists every call.
"""

from __future__ import annotations

import random
import string

from shared.symbols import Market

# (first code, last code, how many, exchange suffix): each board's range and listing count
CN_BOARDS: tuple[tuple[int, int, int, str], ...] = (
    (600000, 605999, 1700, "SH"),  # SSE main board
    (688000, 689999, 590, "SH"),  # SSE STAR market
    (1, 3999, 1500, "SZ"),  # SZSE main board (000001-003xxx)
    (300000, 301999, 1390, "SZ"),  # SZSE ChiNext
    (430000, 439999, 40, "BJ"),  # BSE, former NEEQ codes
    (830000, 839999, 120, "BJ"),
    (870000, 879999, 80, "BJ"),
    (920000, 920999, 49, "BJ"),  # BSE's own 92xxxx codes
)
HK_BOARDS: tuple[tuple[int, int, int], ...] = (
    (1, 7999, 2352),  # main board
    (8001, 8999, 320),  # GEM (08xxx)
)
US_COUNT = 6000
US_REAL = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "BRK.B", "JPM", "V")

CN_COUNT = sum(n for _, _, n, _ in CN_BOARDS)
HK_COUNT = sum(n for _, _, n in HK_BOARDS)


def _spread(first: int, last: int, n: int) -> list[int]:
    """``n`` distinct codes spread evenly over ``first..last``."""
    span = last - first + 1
    assert n <= span
    return [first + i * span // n for i in range(n)]


def cn_symbols() -> list[str]:
    return [f"{code:06d}.{suffix}" for first, last, n, suffix in CN_BOARDS for code in _spread(first, last, n)]


def hk_symbols() -> list[str]:
    return [f"{code:05d}.HK" for first, last, n in HK_BOARDS for code in _spread(first, last, n)]


def us_symbols(seed: int = 2025) -> list[str]:
    """A few real tickers, then synthetic uppercase ones of 1-5 letters."""
    rng = random.Random(seed)
    out = list(US_REAL)
    seen = set(out)
    while len(out) < US_COUNT:
        ticker = "".join(rng.choices(string.ascii_uppercase, k=rng.choice((1, 2, 3, 3, 4, 4, 4, 5))))
        if ticker not in seen:
            seen.add(ticker)
            out.append(ticker)
    return out


def full_market() -> dict[Market, list[str]]:
    """Every market's symbols: 5,469 CN, 2,672 HK, 6,000 US."""
    return {Market.CN: cn_symbols(), Market.HK: hk_symbols(), Market.US: us_symbols()}
