"""Alpaca stream v2 wire format: message types, keys, error codes and client messages.

Every server frame is an array of objects with a ``T`` type key. Control messages
(``success``, ``error``, ``subscription``) come one to a frame; data messages may be
batched many to a frame. With ``Content-Type: application/msgpack`` on the upgrade the
same arrays arrive msgpack-encoded, with ``t`` as a msgpack timestamp extension instead
of an RFC-3339 string.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Literal, TypedDict

Channel = Literal["trades", "quotes", "bars", "dailyBars"]
"""Channels this feeder can subscribe (statuses, lulds, updatedBars are not used)."""

CHANNELS: tuple[Channel, ...] = ("trades", "quotes", "bars", "dailyBars")

# Message type T of each channel's data.
TYPE_OF_CHANNEL: dict[Channel, str] = {
    "trades": "t",
    "quotes": "q",
    "bars": "b",
    "dailyBars": "d",
}

# Types that carry market data but produce no PriceUpdate here. Corrections ``c`` and
# cancels ``x`` become TradeCorrection messages; trading statuses ``s`` (halts) and LULD
# bands ``l`` become status events.
IGNORED_DATA_TYPES = frozenset(
    {
        "u",  # updated minute bar after late trades (would move the price back in time)
        "o",  # order book (crypto only)
        "n",  # news
    }
)

T_SUCCESS = "success"
T_ERROR = "error"
T_SUBSCRIPTION = "subscription"
MSG_CONNECTED = "connected"
MSG_AUTHENTICATED = "authenticated"

# Upgrade headers.
HEADER_KEY = "APCA-API-KEY-ID"
HEADER_SECRET = "APCA-API-SECRET-KEY"
MSGPACK_CONTENT_TYPE = "application/msgpack"


class Trade(TypedDict):
    """``T: "t"``."""

    T: str
    S: str  # symbol
    i: int  # trade id, unique per exchange only: dedup key is (S, x, i)
    x: str  # exchange code
    p: float  # price
    s: int  # size, shares
    c: list[str]  # trade conditions
    t: Any  # RFC-3339 string with up to ns digits (JSON) or datetime (msgpack)
    z: str  # tape A/B/C


Quote = TypedDict(
    "Quote",
    {
        "T": str,  # "q"
        "S": str,  # symbol
        "bx": str,  # bid exchange
        "bp": float,  # bid price, 0 when the side is empty
        "bs": int,  # bid size in ROUND LOTS (x100 shares)
        "ax": str,  # ask exchange
        "ap": float,  # ask price, 0 when the side is empty
        "as": int,  # ask size in ROUND LOTS ("as" is a Python keyword: functional syntax)
        "c": list[str],  # quote conditions
        "t": Any,  # timestamp, as for trades
        "z": str,  # tape
    },
)


class Bar(TypedDict):
    """``T`` ``b`` (minute), ``d`` (daily, partial, resent each minute), ``u`` (updated)."""

    T: str
    S: str  # symbol
    o: float  # open
    h: float  # high
    l: float  # low  # noqa: E741
    c: float  # close
    v: int  # volume in the bar, shares (a daily bar: the day's cumulative volume)
    t: Any  # bar START
    n: int  # number of trades
    vw: float  # volume-weighted average price


class ErrorCode(IntEnum):
    """``[{"T":"error","code":N,"msg":...}]``."""

    INVALID_SYNTAX = 400
    NOT_AUTHENTICATED = 401
    AUTH_FAILED = 402
    ALREADY_AUTHENTICATED = 403
    AUTH_TIMEOUT = 404
    SYMBOL_LIMIT = 405  # the subscription stays unchanged
    CONNECTION_LIMIT = 406  # a dropped session is kept ~90 s
    SLOW_CLIENT = 407  # followed by a disconnect
    INSUFFICIENT_SUBSCRIPTION = 409  # feed not in the plan
    INVALID_SUBSCRIBE_ACTION = 410  # channel not offered on this feed
    INTERNAL = 500


def auth_message(key: str, secret: str) -> dict[str, Any]:
    return {"action": "auth", "key": key, "secret": secret}


def subscription_message(action: str, channels: tuple[Channel, ...], symbols: list[str]) -> dict[str, Any]:
    """One (un)subscribe message: the same symbols on every channel."""
    msg: dict[str, Any] = {"action": action}
    for ch in channels:
        msg[ch] = symbols
    return msg
