"""EastMoney push2 wire format: paths, field codes, the response envelope and SSE framing.

Both the snapshot (``/api/qt/ulist.np/get``) and the stream (``/api/qt/ulist/sse``) answer
the same envelope: ``{"rc":0,"rt":..,"svr":..,"lt":..,"full":1|0,"dlmkts":"",
"data":{"total":N,"diff":...}}``. ``diff`` is a list (request passed ``np=1``) or an
object keyed by the security's position in the request (``{"0": {...}}``); stream deltas
(``full: 0``) carry only the changed ``fN`` keys of the securities that changed.

Scaling: with ``fltt=2`` every number is a decimal. Without it prices are integers to
divide by ``10**f59`` and percentages are x100. Missing values are the string ``"-"``.
"""

from __future__ import annotations

from typing import Any

import msgspec

SSE_PATH = "/api/qt/ulist/sse"
SNAPSHOT_PATH = "/api/qt/ulist.np/get"
SINGLE_PATH = "/api/qt/stock/get"

MISSING = "-"  # the wire's "no value" (suspended, pre-open, not applicable)

# ulist field codes
LAST = "f2"  # last price (scaled)
CHANGE_PCT = "f3"  # change %, x100 when not fltt=2
CHANGE = "f4"  # change vs previous close (scaled)
VOLUME = "f5"  # day cumulative volume; lots of 100 shares for A-shares
AMOUNT = "f6"  # day cumulative turnover in the quote currency, never scaled
CODE = "f12"  # exchange code, "600000"
MARKET = "f13"  # market id: 1 SH, 0 SZ/BJ, 116 HK, 105/106/107 US
NAME = "f14"  # display name
HIGH = "f15"  # day high (scaled)
LOW = "f16"  # day low (scaled)
OPEN = "f17"  # day open (scaled)
PREV_CLOSE = "f18"  # previous close (scaled)
BID1 = "f19"  # best bid price (scaled); the stock/get level code, asked for only if configured
BID1_VOLUME = "f20"  # best bid volume, same unit as f5
ASK1 = "f39"  # best ask price (scaled)
ASK1_VOLUME = "f40"  # best ask volume, same unit as f5
DECIMALS = "f59"  # decimal places of the scaled prices: 2 A-shares, 3 HK (and US)
# The same, under the keys EastMoney's own pages ask for; whichever comes is used.
DECIMALS_KEYS = (DECIMALS, "f152", "f1")
QUOTE_TIME = "f124"  # quote time, unix seconds

PRICE_FIELDS = frozenset({LAST, CHANGE, HIGH, LOW, OPEN, PREV_CLOSE, BID1, ASK1})
PERCENT_FIELDS = frozenset({CHANGE_PCT})

# Always requested whatever the settings say: the parser needs them.
REQUIRED_FIELDS = (LAST, CODE, MARKET, *DECIMALS_KEYS, QUOTE_TIME)
DEFAULT_FIELDS = (
    LAST,
    VOLUME,
    AMOUNT,
    CODE,
    MARKET,
    HIGH,
    LOW,
    OPEN,
    PREV_CLOSE,
    DECIMALS,
    QUOTE_TIME,
)

Quote = dict[str, Any]  # one security's fN → value (int, float, str, or "-")


class EnvelopeData(msgspec.Struct):
    """``data`` of the envelope; ``null`` on stream heartbeats and empty answers."""

    diff: dict[str, Quote] | list[Quote] | None = None
    total: int | None = None  # securities in the answer (full events and snapshots)


class Envelope(msgspec.Struct):
    """The response/event envelope; unknown keys (rt, svr, lt, dlmkts) are ignored."""

    rc: int = 0  # 0 = ok; anything else is a server-side refusal
    full: int = 0  # 1: diff holds full objects; 0: only changed keys (stream deltas)
    data: EnvelopeData | None = None


class SseFrameTooLarge(ValueError):
    """An SSE event grew beyond the configured bound without ending."""


class SseDecoder:
    """Incremental ``text/event-stream`` framing: bytes in, ``data`` payloads out.

    ``data:`` lines accumulate until a blank line ends the event; ``:`` comment lines
    are heartbeats (counted). ``event``/``id``/``retry`` are ignored: EastMoney sends
    none. Lines end with LF or CRLF (a lone CR is not treated as a line end).
    """

    __slots__ = ("_buf", "_data", "_max", "_size", "comments")

    def __init__(self, max_event_bytes: int) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._size = 0
        self._max = max_event_bytes
        self.comments = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk``; return the payloads of the events it completed."""
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        find = buf.find
        while (nl := find(b"\n", start)) >= 0:
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    data = self._data
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    self._data = []
                    self._size = 0
                continue
            if line[0] == 0x3A:  # ":" comment
                self.comments += 1
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                if value[:1] == b" ":
                    value = value[1:]
                self._data.append(value)
                self._size += len(value)
        self._buf = buf[start:]
        if len(self._buf) + self._size > self._max:
            self._buf = b""
            self._data = []
            self._size = 0
            raise SseFrameTooLarge(f"SSE event larger than {self._max} bytes")
        return events
