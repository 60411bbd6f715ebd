"""Tencent quote lines: request path, code mapping, the ``~``-separated field positions.

Request: ``GET {base_url}/q=r_hk00700,r_hk00005`` (about 60 codes per request at most);
``qt.gtimg.cn`` answers GBK text, the ``sqt.gtimg.cn/utf8/q=`` variant answers UTF-8.
Response: one line per requested code, in request order,
``v_r_hk00700="100~腾讯控股~00700~...";`` (about 75 fields). A code Tencent does not
know comes back as ``v_pv_none_match="1";`` (which does not say which code it was).
No authentication; it throttles abusive clients with HTTP 403 or connection resets.

Units: prices in HKD, volume in shares, amount in HKD, all day CUMULATIVE. Time is
exchange local time (Asia/Hong_Kong), about 15 minutes behind the wall clock.
"""

from __future__ import annotations

import re

CODE_PREFIX = "r_hk"  # "r_" = the real-time-page flavour, "hk" = HK market, then 5 digits
LINE_PREFIX = "v_"  # every line assigns a JS variable: v_<code>="<fields>";
NO_MATCH_PREFIX = "pv_none"  # variable name of the line answering an unknown code

# Field positions inside the quoted, "~"-separated payload (only the ones we read).
F_MARKET = 0  # market id, "100" for HK
F_NAME = 1  # Chinese short name (GBK on qt.gtimg.cn)
F_CODE = 2  # 5-digit code, e.g. "00700"
F_LAST = 3  # last price
F_PREV_CLOSE = 4  # previous close
F_OPEN = 5  # day open, "0.000" before the open
F_VOLUME = 6  # day cumulative volume, shares
F_TIME = 30  # quote time, "YYYY/MM/DD HH:MM:SS", Asia/Hong_Kong
F_CHANGE = 31  # last - previous close
F_CHANGE_PCT = 32  # change / previous close x 100
F_HIGH = 33  # day high
F_LOW = 34  # day low
F_AMOUNT = 37  # day cumulative turnover, HKD
MIN_FIELDS = F_AMOUNT + 1

NOMINAL_DELAY_S = 15 * 60  # regulatory delay of free mainland HK quotes

_CANONICAL_HK = re.compile(r"^(\d{5})\.HK$")


def code_of(symbol: str) -> str | None:
    """Canonical ``00700.HK`` → ``r_hk00700``; None for a symbol that is not HK."""
    m = _CANONICAL_HK.match(symbol)
    return f"{CODE_PREFIX}{m.group(1)}" if m else None


def symbol_of(code: str) -> str:
    """``r_hk00700`` → ``00700.HK`` (the inverse of ``code_of``)."""
    return f"{code[len(CODE_PREFIX):]}.HK"
