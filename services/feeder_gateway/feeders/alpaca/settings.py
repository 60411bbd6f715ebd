"""Settings of a ``type: alpaca`` source, one docstring per field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from services.feeder_gateway.feeders.alpaca.wire import Channel
from shared.config import Strict

Feed = Literal["iex", "sip", "delayed_sip", "test"]
HistoryFeed = Literal["iex", "sip"]


class AlpacaSettings(Strict):
    """Settings of a ``type: alpaca`` source (key/secret belong in secure.yml)."""

    url: str = "wss://stream.data.alpaca.markets/v2/{feed}"
    """Stream URL; ``{feed}`` is replaced by ``feed``."""
    feed: Feed = "iex"
    """iex (free plan), sip (paid plan), delayed_sip (15 min late: ticks are marked
    ``delayed``), test (always on, streams the symbol FAKEPACA)."""
    key: SecretStr | None = None
    """API key id (secure.yml, under this source's name)."""
    secret: SecretStr | None = None
    """API secret key (secure.yml, under this source's name)."""
    auth_in_headers: bool = False
    """Authenticate with APCA-API-KEY-ID/APCA-API-SECRET-KEY upgrade headers instead of
    an auth message."""
    channels: tuple[Channel, ...] = Field(("trades", "quotes"), min_length=1)
    """Channels subscribed for every symbol: trades, quotes, bars, dailyBars. With trades,
    corrections and cancels of trades are published as ``trade_correction`` messages."""
    symbol_limit: int | None = Field(30, ge=1)
    """Most symbols requested (the free plan allows 30 on trades/quotes); the excess is
    not requested and is reported once. None: no limit (paid plans, or bars only: the
    free plan does not limit bars)."""
    max_symbols_per_message: int = Field(100, ge=1, le=10_000)
    """A larger (un)subscribe is split into several messages (huge ones are rejected)."""
    msgpack: bool = False
    """Ask for msgpack frames (``Content-Type: application/msgpack`` on the upgrade)."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """TCP + TLS + WebSocket upgrade."""
    auth_timeout_s: float = Field(10.0, gt=0)
    """From the upgrade to ``authenticated`` (the server allows 10 s)."""
    close_timeout_s: float = Field(2.0, gt=0)
    """Wait this long for the closing handshake before dropping the socket."""
    ping_interval_s: float | None = Field(20.0, gt=0)
    """Transport keepalive (WebSocket ping); None: off."""
    ping_timeout_s: float | None = Field(20.0, gt=0)
    """No pong this long after a ping: the connection is dead."""
    max_frame_bytes: int = Field(8 * 2**20, ge=65_536)
    """Largest frame accepted from the server."""
    first_reconnect_s: float = Field(0.25, ge=0)
    """After a drop of a connection that was healthy, the first reconnect waits only a
    random 0..this (later ones back off from ``backoff_base_s``)."""
    backoff_base_s: float = Field(1.0, gt=0)
    """Reconnect delay ceiling of the second failure in a row (full jitter, doubling)."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Largest reconnect delay."""
    healthy_after_s: float = Field(60.0, gt=0)
    """A connection up this long resets the backoff."""
    connection_limit_wait_s: float = Field(95.0, ge=0)
    """After error 406 wait at least this long: the server keeps a dropped session ~90 s."""
    connection_limit_jitter_s: float = Field(15.0, ge=0)
    """Plus a uniform random 0..this, so several gateways do not return together."""
    config_hold_s: float = Field(300.0, ge=0)
    """402/409/410 after the source has worked (a key revoked, a plan changed): held this
    long (plus jitter up to ``config_hold_jitter_s``) and retried, with an alert."""
    config_hold_jitter_s: float = Field(300.0, ge=0)
    """Ceiling of the random extra of that hold."""
    stale_trades_quotes_s: float = Field(90.0, gt=0)
    """Market watchdog: no data this long while in session means stale, when trades or
    quotes are on."""
    stale_bars_s: float = Field(150.0, gt=0)
    """Same for minute bars (one per minute per traded symbol)."""
    stale_daily_bars_s: float = Field(300.0, gt=0)
    """Same for daily bars only (quiet by nature: one update per minute at best)."""
    dedup_window: int = Field(512, ge=1)
    """Recent (exchange, trade id) keys kept per symbol to drop repeated trades."""
    quote_lot_size: int = Field(100, ge=1)
    """Quote sizes ``bs``/``as`` are in round lots; shares = size x this."""
    proxy: str | None = None
    """HTTP or SOCKS proxy URL; None connects directly (proxy env variables are ignored).
    The minute history goes through it too (HTTP proxies only)."""
    history_url: str = "https://data.alpaca.markets"
    """Historical market-data API (``GET /v2/stocks/bars``): minute bars for gap repair."""
    history_feed: HistoryFeed | None = None
    """Feed of the minute history; None: the stream's (delayed_sip: sip; test: none). A
    plan without real-time SIP is refused SIP minutes of the last 15 minutes: those come
    from iex instead, and the repair says so."""
    history_requests_per_min: float = Field(150.0, gt=0)
    """History requests a minute at most, paced per host behind live requests (the basic
    plan allows about 200 a minute per account, trading calls included: leave headroom)."""
    history_page_limit: int = Field(10_000, ge=1, le=10_000)
    """Bars one history page asks for, all its symbols together (Alpaca's ``limit``)."""
    history_symbols_per_request: int = Field(100, ge=1, le=2_000)
    """Symbols one history request asks for; the repair splits larger sets."""
    history_timeout_s: float = Field(15.0, gt=0)
    """One history page request, connect to last byte."""
    history_max_body_bytes: int = Field(32 * 2**20, ge=65_536)
    """Largest history page read (10,000 bars are about 1 MB); a larger one fails it."""

    @field_validator("history_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("history_url must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("channels")
    @classmethod
    def _unique(cls, v: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if len(set(v)) != len(v):
            raise ValueError("channels repeat")
        return v

    @property
    def stream_url(self) -> str:
        return self.url.replace("{feed}", self.feed)

    @property
    def stale_after_s(self) -> float:
        """The watchdog threshold of the liveliest subscribed channel (dailyBars are quiet)."""
        per_channel = {
            "trades": self.stale_trades_quotes_s,
            "quotes": self.stale_trades_quotes_s,
            "bars": self.stale_bars_s,
            "dailyBars": self.stale_daily_bars_s,
        }
        return min(per_channel[ch] for ch in self.channels)
