"""Wire messages: the tagged union every producer encodes and every consumer decodes.

Each value on every topic is one JSON object with a ``type`` discriminator and a schema
version ``v``. Messages are msgspec Structs: frozen, timestamps timezone-aware (UTC on the
wire, ISO-8601).

Schema evolution, the rule every producer and consumer follows:
- ``v`` is the MAJOR version of the whole schema (SCHEMA_VERSION). A change that removes
  or renames a field, or changes a field's type or meaning, raises it; consumers
  dead-letter a message whose ``v`` is higher than theirs ("unsupported schema version")
  instead of misreading it, so producers move to a new major only after the consumers.
- Adding an OPTIONAL field (with a default) keeps ``v``: consumers ignore fields they do
  not know, so a producer may add one before every consumer is upgraded.
- A required field, a wrong type or a missing ``type`` is an error (dead-lettered).

msgspec rather than pydantic because the tick path must build, encode and decode tens of
thousands of messages a second on 2 cores: measured here, pydantic costs ~12 us to build
and encode a tick, msgspec ~2.5 us.

Units, so every number has one meaning:
- prices in the instrument's quote currency;
- ``volume``/``amount`` on a PriceUpdate: the day's CUMULATIVE volume (shares, never lots)
  and turnover up to ``timestamp``, when the source reports them (snapshot sources do);
- ``last_size``: shares in the trade that produced this update, when the source says
  (trade streams do); ``None`` for snapshots;
- Bar ``volume``/``amount``: traded within the bar.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

SCHEMA_VERSION = 1

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


SchemaVersion = Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)]


class _Message(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of every wire message; ``type`` is the tag, ``v`` the schema version.

    Unknown fields are ignored (optional fields may be added without a new ``v``; see the
    module docstring); ``v`` outside 1..SCHEMA_VERSION fails to decode.

    Market data (PriceUpdate, Bar) holds only scalars, so it is not tracked by the cycle
    collector (``gc=False``): tens of thousands of them a second then cost no GC passes.
    """


class PriceUpdate(_Message, tag="price_update", frozen=True, gc=False):
    """A normalized quote or trade for one symbol."""

    symbol: Symbol
    price: float
    timestamp: AwareDatetime  # provider's time for this update
    source: str  # feeder name, e.g. "sim", "alpaca", "eastmoney"
    v: SchemaVersion = SCHEMA_VERSION
    volume: float | None = None  # day cumulative, shares
    amount: float | None = None  # day cumulative turnover
    bid_price: float | None = None
    ask_price: float | None = None
    bid_volume: float | None = None  # shares at best bid
    ask_volume: float | None = None  # shares at best ask
    open_price: float | None = None  # day open
    high_price: float | None = None  # day high
    low_price: float | None = None  # day low
    receive_time: AwareDatetime | None = None  # when the gateway received it
    sequence: int | None = None  # per symbol, per gateway run, increasing; gaps = conflated
    last_size: float | None = None  # size of the trade behind this update, shares
    delayed: bool = False  # the source is delayed (e.g. free HK quotes, ~15 min)
    prev_close: float | None = None  # previous trading day's close, as the source reports it
    snapshot: bool = False  # a replay of the latest known price (on subscribe), not a new trade


class TradeCorrection(_Message, tag="trade_correction", frozen=True):
    """A trade published earlier was corrected or cancelled by the exchange (Alpaca ``c``
    corrections, ``x`` cancel errors): whoever counted it (the bar of ``timestamp``) takes
    the original out and, unless ``cancelled``, the corrected price and size in."""

    symbol: Symbol
    original_id: int  # provider trade id of the corrected trade (unique per exchange only)
    original_price: float
    original_size: float  # shares
    timestamp: AwareDatetime  # provider time of the correction message (Alpaca: the trade's)
    source: str
    v: SchemaVersion = SCHEMA_VERSION
    cancelled: bool = False  # True: the trade is void; no corrected price/size
    corrected_price: float | None = None
    corrected_size: float | None = None  # shares
    exchange: str | None = None  # with original_id, identifies the trade
    receive_time: AwareDatetime | None = None


BarPeriod = Literal["1m", "1d"]
BarQuality = Literal["repaired", "partial", "incomplete"]


class Bar(_Message, tag="bar", frozen=True, gc=False):
    """An OHLCV bar; ``timestamp`` is the bar's start (UTC)."""

    symbol: Symbol
    period: BarPeriod
    open: float
    high: float
    low: float
    close: float
    volume: float  # shares traded within the bar
    timestamp: AwareDatetime  # bar start
    source: str
    v: SchemaVersion = SCHEMA_VERSION
    amount: float = 0.0  # turnover within the bar
    turnover: float | None = None  # turnover rate (volume / float shares), when known
    change: float | None = None  # close - previous close, when known
    change_pct: float | None = None  # change / previous close x 100
    trading_day: str | None = None  # YYYY-MM-DD in the market's timezone
    quality: BarQuality | None = None
    """None: built from every trade we received. ``repaired``: the provider's own minute bar
    replaced it after a hole (``source`` names that provider); ``partial``: the provider
    confirmed close, volume and amount only (Tencent), open/high/low come from the ticks we
    had; ``incomplete``: inside a hole no source has confirmed yet (or ever will)."""
    revision: int = 0
    """Increases each time the bar is revised after it was first published (a repair, a
    hole marking): of two versions of one bar the higher revision is the truth."""


HistoryState = Literal["pending", "repaired", "failed", "out_of_reach"]

HISTORY_FIELDS = ("open", "high", "low", "close", "volume", "amount")


class HistoryBars(_Message, tag="history_bars", frozen=True, gc=False):
    """A provider's own minute bars of one symbol for one repair window: published by the
    feeder-gateway on market data keyed by the symbol (so the datamanager owning the
    symbol's partition folds it in order with the ticks), never delivered to clients.

    ``state``:
    - ``pending``: a hole is known (a feeder restart, a failover, a request): the minutes of
      [start, end) are not known to be right until a ``repaired`` message for them comes;
    - ``repaired``: ``bars`` are the provider's minutes of the window (a minute missing from
      them had no trade, as far as the provider knows); ``fields`` says which of
      open/high/low/close/volume/amount the provider supplies;
    - ``failed``: the provider's history is unavailable for now (``reason``); the gateway
      retries with backoff;
    - ``out_of_reach``: the provider's history no longer reaches back to the window.
    """

    symbol: Symbol
    start: AwareDatetime  # window start, a minute start (inclusive)
    end: AwareDatetime  # window end, a minute start (exclusive)
    source: str  # the feeder whose history answered (or was asked)
    state: HistoryState
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    bars: tuple[tuple[float, float, float, float, float, float, float], ...] = ()
    """(minute start in epoch ms, open, high, low, close, volume in shares, amount)."""
    fields: tuple[str, ...] = HISTORY_FIELDS
    request_id: str | None = None  # the ``repair_bars`` command's correlation_id, if one asked
    reason: str | None = None  # why pending / failed / out of reach, or which source stood in
    attempt: int = 0  # the gateway's attempt number for this window


UpdateType = Literal["replace", "add", "remove", "clear"]


class InterestUpdate(_Message, tag="interest_update", frozen=True):
    """One subscriber's change of interest; a subscriber is (portfolio_id, node_id)."""

    portfolio_id: Annotated[str, msgspec.Meta(min_length=1)]
    node_id: Annotated[str, msgspec.Meta(min_length=1)]
    symbols: tuple[Symbol, ...]
    update_type: UpdateType
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    lease_s: float | None = None  # drop this subscriber's symbols if not renewed in time
    key_id: str | None = None  # the signing key (security.sign), see shared/signing.py
    sig: str | None = None  # HMAC-SHA256 (hex) of the canonical bytes, by that key


class ControlCommand(_Message, tag="control_command", frozen=True):
    """A command for a service, e.g. ``bar_snapshot``; answered once per correlation_id."""

    command: Annotated[str, msgspec.Meta(min_length=1)]
    correlation_id: Annotated[str, msgspec.Meta(min_length=1)]
    timestamp: AwareDatetime  # issued at; stale commands are ignored
    source: str
    v: SchemaVersion = SCHEMA_VERSION
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    target: str = "datamanager"
    scheduled_for: AwareDatetime | None = None  # the cron instant, for timer-issued commands
    job: str | None = None  # the task_timer.yml job that issued it (timer and `livedata jobs fire`)
    key_id: str | None = None  # the signing key (security.sign), see shared/signing.py
    sig: str | None = None  # HMAC-SHA256 (hex) of the canonical bytes, by that key


class Subscription(_Message, tag="subscription", frozen=True):
    """The full desired symbol set of one market; the last value per market wins."""

    market: str
    symbols: tuple[Symbol, ...]
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    revision: int = 0  # increases with every change published by the datamanager


class Status(_Message, tag="status", frozen=True):
    """A service or component state change (connected, resubscribed, gap, ...)."""

    service: str
    component: str
    state: str
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class Alert(_Message, tag="alert", frozen=True):
    """Something an operator should look at (data quality, stale feed, config error)."""

    service: str
    code: str
    message: str
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    severity: Literal["info", "warning", "error", "critical"] = "warning"
    symbol: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class CommandResult(_Message, tag="command_result", frozen=True):
    """The answer to one ControlCommand."""

    service: str
    command: str
    correlation_id: str
    ok: bool
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    duration_ms: float = 0.0
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    partitions: tuple[int, ...] | None = None
    """The market-data partitions this answer covers (a partitioned datamanager answers
    per partition it owns; a command is fully answered once every partition is named)."""
    partition_count: int | None = None
    """How many partitions market data has, as the answering instance saw it."""
    instance: str | None = None
    """Which instance answered."""


class DeadLetter(_Message, tag="dead_letter", frozen=True):
    """A message a consumer could not decode or process, with the reason."""

    service: str
    source_topic: str
    partition: int
    offset: int
    reason: str
    raw: str  # the value as text (undecodable bytes replaced), at most 64 KiB
    timestamp: AwareDatetime
    v: SchemaVersion = SCHEMA_VERSION
    key: str | None = None


Message = (
    PriceUpdate
    | TradeCorrection
    | Bar
    | HistoryBars
    | InterestUpdate
    | ControlCommand
    | Subscription
    | Status
    | Alert
    | CommandResult
    | DeadLetter
)
SystemEvent = Status | Alert | CommandResult

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)

DecodeError = msgspec.DecodeError  # ValidationError subclasses it


def encode(message: Message) -> bytes:
    """Serialize a wire message to JSON bytes."""
    return _encoder.encode(message)


def decode(raw: bytes | str) -> Message:
    """Decode JSON bytes into the message named by its ``type``.

    Raises ``msgspec.DecodeError`` (which ``ValidationError`` subclasses) on bad input;
    the message says what was wrong and where (``$.price``).
    """
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as e:
        if "`$.v`" in str(e):
            raise DecodeError(f"unsupported schema version (this consumer reads v 1..{SCHEMA_VERSION}): {e}") from None
        raise


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
