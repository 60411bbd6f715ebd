"""The thin alpaca feeder: credentials, retry policy and failure classes on the reconnect driver.

The connection, its subscribe diffs and error codes are ``connection.py``; the pure
subscription bookkeeping (kept across reconnects: the symbol budget) ``subscription.py``;
the frame parser (kept across reconnects: trade-id dedup, last trade prices) ``parse.py``;
the minute history for gap repair (``history()``) ``history.py``.
Reconnects, holds (406 waits past the server's hold of a dropped session), resubscribe
and the gap report are the driver's (``lifecycle.py``). The stream has no replay: the
gap status names the last tick before the hole. Silence is the market watchdog's, with
this feeder's ``stale_after_s`` sized by its liveliest channel (dailyBars are quiet).
"""

from __future__ import annotations

from typing import ClassVar

from websockets.exceptions import WebSocketException

from services.feeder_gateway.feeders.alpaca.connection import AlpacaConnection
from services.feeder_gateway.feeders.alpaca.history import AlpacaHistory, history_feed
from services.feeder_gateway.feeders.alpaca.parse import FrameParser
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.alpaca.subscription import SubscriptionState, SymbolBudget
from services.feeder_gateway.feeders.base import FeederConfigError, FeederContext
from services.feeder_gateway.feeders.lifecycle import (
    Failure,
    FailureKind,
    ReconnectingFeeder,
    RetryPolicy,
    describe,
)


class AlpacaFeeder(ReconnectingFeeder[AlpacaSettings]):
    """US ticks from Alpaca's stream v2: trades, quotes (and optionally bars)."""

    type_name = "alpaca"
    settings_model = AlpacaSettings
    follows_sessions: ClassVar[bool] = True  # quiet nights and weekends are not stale

    def __init__(self, settings: AlpacaSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        s = settings
        self.parser = FrameParser(
            ctx.name,
            ctx.malformed,
            delayed=s.feed == "delayed_sip",
            quote_lot_size=s.quote_lot_size,
            dedup_window=s.dedup_window,
            trading_events=ctx.emit_status,
            corrections=ctx.correction,
        )
        self.subscription = SubscriptionState(s.channels, s.max_symbols_per_message, SymbolBudget(s.symbol_limit))
        feed = history_feed(s)
        self._history = None if feed is None else AlpacaHistory(s, ctx, feed)

    def history(self) -> AlpacaHistory | None:
        """Minute bars from Alpaca's historical API (none for the test feed)."""
        return self._history

    @property
    def stale_after_s(self) -> float:
        return self.settings.stale_after_s

    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            backoff_base_s=s.backoff_base_s,
            backoff_cap_s=s.backoff_cap_s,
            healthy_after_s=s.healthy_after_s,
            rate_limited_pause_s=0.0,  # HTTP 429 on the upgrade: backoff, or its Retry-After
            ban_hold_s=s.config_hold_s,
            ban_jitter_cap_s=s.config_hold_jitter_s,
            session_hold_s=s.connection_limit_wait_s,
            session_jitter_s=s.connection_limit_jitter_s,
            first_retry_s=s.first_reconnect_s,
        )

    def _credentials(self) -> tuple[str, str]:
        s, name = self.settings, self.ctx.name
        if s.key is None or s.secret is None or not s.key.get_secret_value():
            raise FeederConfigError(f"{name}: no API key: set key and secret in secure.yml under '{name}'")
        return s.key.get_secret_value(), s.secret.get_secret_value()

    async def open_connection(self) -> AlpacaConnection:
        key, secret = self._credentials()
        conn = AlpacaConnection(self.settings, self.ctx, self.parser, self.subscription)
        try:
            await conn.open(key, secret)
        except BaseException:
            await conn.close()
            raise
        return conn

    def classify(self, exc: Exception) -> Failure | None:
        if isinstance(exc, WebSocketException):
            return Failure(FailureKind.TRANSIENT, describe(exc))
        return super().classify(exc)
