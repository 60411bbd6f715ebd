"""The alpaca feeder: one stream-v2 WebSocket, its subscription registry and reconnect policy.

Flow per connection: upgrade (``Content-Type: application/msgpack`` when ``msgpack``) →
``[{"T":"success","msg":"connected"}]`` → auth message (or upgrade headers) within
``auth_timeout_s`` → ``authenticated`` → subscribe the wanted set in chunks of
``max_symbols_per_message`` → read frames. Every (un)subscribe is answered by the
server's FULL ``subscription`` set (or an error); once all answers are in, that set is
compared with what was asked and any difference is logged and reported. Changes of the
desired set are applied as subscribe/unsubscribe diffs by a follower task while the
reader keeps reading.

Reconnects use ``shared.backoff.Backoff`` except after error 406 (connection limit: the
server keeps a dropped session ~90 s), which waits ``connection_limit_wait_s`` plus
jitter. Errors 402/409/410 are configuration errors: FeederConfigError naming the
setting. The stream has no replay: after a reconnect a "gap" status names the time of
the last tick before the hole. The WebSocket ping/pong keeps the transport alive; a
separate data watchdog replaces a connection that is open but sends no data.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, ClassVar, Literal

import msgpack  # type: ignore[import-untyped]
import msgspec
from pydantic import Field, SecretStr, field_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from services.feeder_gateway.feeders.alpaca.parse import (
    FrameParser,
    decode_json,
    decode_msgpack,
)
from services.feeder_gateway.feeders.alpaca.wire import (
    HEADER_KEY,
    HEADER_SECRET,
    MSG_AUTHENTICATED,
    MSG_CONNECTED,
    MSGPACK_CONTENT_TYPE,
    T_ERROR,
    T_SUBSCRIPTION,
    T_SUCCESS,
    Channel,
    ErrorCode,
    auth_message,
    subscription_message,
)
from services.feeder_gateway.feeders.base import Feeder, FeederConfigError, FeederContext, ProviderError
from shared.backoff import Backoff
from shared.config import Strict
from shared.dto import PriceUpdate, utcnow
from shared.logs import kv
from shared.sessions import in_session

Feed = Literal["iex", "sip", "delayed_sip", "test"]


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
    """Channels subscribed for every symbol: trades, quotes, bars, dailyBars."""
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
    backoff_base_s: float = Field(1.0, gt=0)
    """First reconnect delay ceiling (full jitter, doubling)."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Largest reconnect delay."""
    healthy_after_s: float = Field(60.0, gt=0)
    """A connection up this long resets the backoff."""
    connection_limit_wait_s: float = Field(95.0, ge=0)
    """After error 406 wait at least this long: the server keeps a dropped session ~90 s."""
    connection_limit_jitter_s: float = Field(15.0, ge=0)
    """Plus a uniform random 0..this, so several gateways do not return together."""
    stale_trades_quotes_s: float = Field(90.0, gt=0)
    """No data this long while in session means stale, when trades or quotes are on."""
    stale_bars_s: float = Field(150.0, gt=0)
    """Same for minute bars (one per minute per traded symbol)."""
    stale_daily_bars_s: float = Field(300.0, gt=0)
    """Same for daily bars only (quiet by nature: one update per minute at best)."""
    self_heal_fraction: float = Field(0.5, gt=0, le=1)
    """The feeder replaces a silent connection itself after this fraction of the stale
    threshold, before the gateway gives up on the source."""
    watchdog_in_session_only: bool = True
    """The feeder's own data watchdog counts silence only while the US market is in
    session (False for the always-on feed: test). The gateway's watchdog follows the
    sessions regardless (``follows_sessions``)."""
    dedup_window: int = Field(512, ge=1)
    """Recent (exchange, trade id) keys kept per symbol to drop repeated trades."""
    quote_lot_size: int = Field(100, ge=1)
    """Quote sizes ``bs``/``as`` are in round lots; shares = size x this."""
    proxy: str | None = None
    """HTTP or SOCKS proxy URL; None connects directly (proxy env variables are ignored)."""

    @field_validator("channels")
    @classmethod
    def _unique(cls, v: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if len(set(v)) != len(v):
            raise ValueError("channels repeat")
        return v


class ConnectionLimitError(ProviderError):
    """Error 406: another session holds the plan's only connection."""


class SilentFeedError(ProviderError):
    """The connection is open but no data came within the watchdog threshold."""


def to_wire(symbol: str) -> str:
    """Canonical US symbol → Alpaca's (share classes with a dot: BRK-B → BRK.B)."""
    return symbol.replace("-", ".")


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SymbolBudget:
    """Which wanted symbols fit the plan's symbol limit; remembers what the server refused.

    Kept across reconnects. Symbols already on the server stay first; new ones are taken
    in sorted order while room is left. Symbols refused with 405 are not requested again
    while they stay wanted, and the limit learnt from the refusal (the count the server
    held) caps later selections.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.learned: int | None = None
        self.refused: set[str] = set()
        self._reported: frozenset[str] = frozenset()

    @property
    def effective(self) -> int | None:
        limits = [x for x in (self.limit, self.learned) if x is not None]
        return min(limits) if limits else None

    def select(self, wanted: set[str], current: set[str]) -> tuple[set[str], list[str]]:
        """→ (symbols to have on the server, wanted symbols left out)."""
        self.refused &= wanted
        keep = current & wanted
        candidates = sorted(wanted - keep - self.refused)
        limit = self.effective
        if limit is None:
            return keep | set(candidates), sorted(self.refused)
        excess = list(self.refused)
        if len(keep) > limit:
            ordered = sorted(keep)
            keep, excess = set(ordered[:limit]), excess + ordered[limit:]
        room = limit - len(keep)
        excess += candidates[room:]
        return keep | set(candidates[:room]), sorted(excess)

    def newly_excess(self, excess: list[str]) -> bool:
        """True once per distinct non-empty excess set (report it then)."""
        current = frozenset(excess)
        changed = current != self._reported
        self._reported = current
        return changed and bool(current)


class AlpacaStream:
    """One connection's life: open, authenticate, follow the wanted set, read batches."""

    def __init__(
        self, feeder: AlpacaFeeder, parser: FrameParser, budget: SymbolBudget, resubscribe: bool
    ) -> None:
        self._feeder = feeder
        self._s = feeder.settings
        self._ctx = feeder.ctx
        self._parser = parser
        self._budget = budget
        self._resubscribe = resubscribe
        self._ws: ClientConnection | None = None
        self._follower: asyncio.Task[None] | None = None
        self._requested: set[str] = set()  # wire symbols asked for (not refused)
        self._server: dict[str, frozenset[str]] = {}  # channel → the server's last echo
        self._pending: deque[tuple[str, list[str]]] = deque()  # requests awaiting an answer
        self._limit_hit = False
        self._confirmed = False
        self._loop = asyncio.get_running_loop()
        self._last_data = self._loop.time()
        self._silence_s = feeder.stale_after_s * self._s.self_heal_fraction
        self._frames = self._ctx.metrics.frames.labels(self._ctx.name)

    @property
    def url(self) -> str:
        return self._s.url.replace("{feed}", self._s.feed)

    # --- opening ---------------------------------------------------------------

    async def open(self, key: str, secret: str) -> None:
        s = self._s
        headers: list[tuple[str, str]] = []
        if s.msgpack:
            headers.append(("Content-Type", MSGPACK_CONTENT_TYPE))
        if s.auth_in_headers:
            headers += [(HEADER_KEY, key), (HEADER_SECRET, secret)]
        try:
            self._ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=s.connect_timeout_s,
                ping_interval=s.ping_interval_s,
                ping_timeout=s.ping_timeout_s,
                close_timeout=s.close_timeout_s,
                max_size=s.max_frame_bytes,
                proxy=s.proxy,
            )
        except InvalidURI as e:
            raise FeederConfigError(
                f"{self._ctx.name}: invalid url {e.uri!r}: fix 'url' in data_sources.yml"
            ) from None
        try:
            async with asyncio.timeout(s.auth_timeout_s):
                await self._expect_success(MSG_CONNECTED)
                if not s.auth_in_headers:
                    await self._send(auth_message(key, secret))
                await self._expect_success(MSG_AUTHENTICATED)
        except TimeoutError:
            raise ProviderError(
                f"not authenticated within auth_timeout_s={s.auth_timeout_s}"
            ) from None

    async def _expect_success(self, want: str) -> None:
        while True:
            msgs = self._decode(await self._recv_raw())
            if type(msgs) is not list:
                continue
            for m in msgs:
                if not isinstance(m, dict):
                    continue
                if m.get("T") == T_SUCCESS and m.get("msg") == want:
                    return
                if m.get("T") == T_ERROR:
                    self._on_error(m)

    # --- subscriptions -----------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the wanted set, then follow its changes in a task of our own."""
        self._feeder.symbols_changed.clear()
        await self.sync()
        self._last_data = self._loop.time()
        self._follower = asyncio.create_task(
            self._follow(), name=f"alpaca.{self._ctx.name}.subscriptions"
        )
        self._follower.add_done_callback(self._follower_done)

    async def _follow(self) -> None:
        changed = self._feeder.symbols_changed
        while True:
            await changed.wait()
            changed.clear()
            await self.sync()

    def _follower_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._ws is not None:
            self._ws.transport.abort()  # wake the reader: it re-raises the follower's error

    async def sync(self) -> None:
        """Send the subscribe/unsubscribe diffs between the wanted set and ours."""
        wanted = {to_wire(sym): sym for sym in self._feeder.symbols}
        target, excess = self._budget.select(set(wanted), self._requested)
        if self._budget.newly_excess(excess):
            self._report_limit(excess, refused=bool(self._budget.refused))
        # the parser first: data for dropped symbols still arriving is discarded, data for
        # new ones is accepted from the first frame
        self._parser.set_wanted({w: wanted[w] for w in target})
        size = self._s.max_symbols_per_message
        for chunk in _chunks(sorted(self._requested - target), size):
            self._requested.difference_update(chunk)
            await self._send_subscription("unsubscribe", chunk)
        for chunk in _chunks(sorted(target - self._requested), size):
            self._requested.update(chunk)
            await self._send_subscription("subscribe", chunk)
        if not self._pending:
            self._on_settled()

    async def _send_subscription(
        self, action: Literal["subscribe", "unsubscribe"], symbols: list[str]
    ) -> None:
        self._pending.append((action, symbols))
        await self._send(subscription_message(action, self._s.channels, symbols))

    def _on_subscription(self, m: dict[str, Any]) -> None:
        self._server = {ch: frozenset(m.get(ch) or ()) for ch in self._s.channels}
        if self._pending:
            self._pending.popleft()
        if not self._pending:
            self._on_settled()

    def _on_settled(self) -> None:
        """Every request answered: the server's echo is the truth, compare it with ours."""
        if self._limit_hit:
            self._limit_hit = False
            held = set().union(*self._server.values()) if self._server else set()
            self._budget.learned = len(held)
        if self._server or self._requested:
            mismatch: dict[str, dict[str, list[str]]] = {}
            for ch in self._s.channels:
                have = self._server.get(ch, frozenset())
                missing, extra = self._requested - have, have - self._requested
                if missing or extra:
                    mismatch[ch] = {"missing": sorted(missing)[:50], "extra": sorted(extra)[:50]}
            if mismatch:
                self._ctx.log.warning(
                    "server subscription differs from the request", extra=kv(mismatch=mismatch)
                )
                self._ctx.emit_status("subscription_mismatch", {"channels": mismatch})
        if not self._confirmed:
            self._confirmed = True
            self._ctx.emit_status(
                "resubscribed" if self._resubscribe else "subscribed",
                {"symbols": len(self._requested), "channels": list(self._s.channels)},
            )

    def _report_limit(self, excess: list[str], refused: bool) -> None:
        detail = {
            "limit": self._budget.effective,
            "excess_count": len(excess),
            "excess": excess[:50],
            "refused_by_server": refused,
        }
        self._ctx.log.warning(
            "symbols over the plan's limit are not requested", extra=kv(**detail)
        )
        self._ctx.emit_status("symbol_limit", detail)

    # --- errors --------------------------------------------------------------------

    def _on_error(self, m: dict[str, Any]) -> None:
        code, text = m.get("code"), str(m.get("msg", ""))[:200]
        name = self._ctx.name
        if code == ErrorCode.AUTH_FAILED:
            raise FeederConfigError(
                f"{name}: authentication failed ({code} {text}): check key/secret in "
                f"secure.yml under '{name}'"
            )
        if code == ErrorCode.INSUFFICIENT_SUBSCRIPTION:
            raise FeederConfigError(
                f"{name}: insufficient subscription ({code} {text}): feed "
                f"'{self._s.feed}' is not in the plan: set 'feed' (iex on the free plan)"
            )
        if code == ErrorCode.INVALID_SUBSCRIBE_ACTION:
            raise FeederConfigError(
                f"{name}: invalid subscribe action for feed '{self._s.feed}' ({code} "
                f"{text}): check 'channels' {list(self._s.channels)} and 'feed'"
            )
        if code == ErrorCode.CONNECTION_LIMIT:
            raise ConnectionLimitError(f"connection limit exceeded ({code} {text})")
        if code in (ErrorCode.NOT_AUTHENTICATED, ErrorCode.AUTH_TIMEOUT, ErrorCode.SLOW_CLIENT):
            raise ProviderError(f"alpaca error {code}: {text}")
        if code == ErrorCode.SYMBOL_LIMIT:
            self._on_symbol_limit()
            return
        if code == ErrorCode.INVALID_SYNTAX and self._pending:
            action, symbols = self._pending.popleft()
            self._ctx.log.error(
                "request rejected as invalid syntax",
                extra=kv(code=code, msg=text, action=action, symbols=len(symbols)),
            )
            if not self._pending:
                self._on_settled()
            return
        self._ctx.log.warning("alpaca error", extra=kv(code=code, msg=text))

    def _on_symbol_limit(self) -> None:
        """405: the request was refused whole; keep the rest, never retry the refused."""
        if not self._pending:
            self._ctx.log.warning("symbol limit exceeded (405) with no request pending")
            return
        action, symbols = self._pending.popleft()
        if action == "subscribe":
            refused = set(symbols) & self._requested
            self._requested -= refused
            self._budget.refused |= refused
            self._limit_hit = True
            self._parser.set_wanted(
                {to_wire(c): c for c in self._feeder.symbols if to_wire(c) in self._requested}
            )
            self._budget.newly_excess(sorted(self._budget.refused))
            self._report_limit(sorted(self._budget.refused), refused=True)
        if not self._pending:
            self._on_settled()

    # --- reading ---------------------------------------------------------------------

    async def next_batch(self) -> list[PriceUpdate]:
        """The ticks of the next frame that has any; control messages handled on the way."""
        parser = self._parser
        while True:
            raw = await self._recv_data()
            receive_time = utcnow()
            self._frames.inc()
            msgs = self._decode(raw)
            if msgs is None:
                continue
            ticks, controls, data = parser.parse(msgs, receive_time)
            if data:
                self._last_data = self._loop.time()
            for m in controls:
                kind = m.get("T")
                if kind == T_SUBSCRIPTION:
                    self._on_subscription(m)
                elif kind == T_ERROR:
                    self._on_error(m)
            if ticks:
                return ticks

    def _decode(self, raw: str | bytes) -> Any:
        try:
            if self._s.msgpack and type(raw) is bytes:
                return decode_msgpack(raw)
            return decode_json(raw)
        except (msgspec.DecodeError, ValueError, TypeError, msgpack.UnpackException):
            self._ctx.malformed("undecodable_frame", raw[:160])
            return None

    async def _recv_raw(self) -> str | bytes:
        assert self._ws is not None
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            self._raise_follower_error()
            raise

    async def _recv_data(self) -> str | bytes:
        """Next frame; raise SilentFeedError when no data came for too long while watched."""
        assert self._ws is not None
        loop = self._loop
        while True:
            try:
                async with asyncio.timeout_at(self._last_data + self._silence_s):
                    return await self._recv_raw()
            except TimeoutError:
                if not self._watched():
                    self._last_data = loop.time()  # silence counts only while watched
                    continue
                raise SilentFeedError(
                    f"no data for {loop.time() - self._last_data:.1f}s on an open connection"
                ) from None

    def _watched(self) -> bool:
        if not self._requested:
            return False
        if self._s.watchdog_in_session_only:
            return in_session(self._ctx.market, utcnow())
        return True

    def _raise_follower_error(self) -> None:
        f = self._follower
        if f is not None and f.done() and not f.cancelled():
            exc = f.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                raise exc

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        if self._s.msgpack:
            await self._ws.send(msgpack.packb(msg))
        else:
            await self._ws.send(msgspec.json.encode(msg).decode())

    async def close(self) -> None:
        """Stop following and close the socket (closing handshake, bounded)."""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.wait([self._follower])
        if self._ws is not None:
            await self._ws.close()


class AlpacaFeeder(Feeder[AlpacaSettings]):
    """US ticks from Alpaca's stream v2: trades, quotes (and optionally bars)."""

    type_name = "alpaca"
    settings_model = AlpacaSettings
    follows_sessions: ClassVar[bool] = True  # quiet nights and weekends are not stale

    @property
    def stale_after_s(self) -> float:
        """The threshold of the liveliest subscribed channel (dailyBars are quiet)."""
        s = self.settings
        per_channel = {
            "trades": s.stale_trades_quotes_s,
            "quotes": s.stale_trades_quotes_s,
            "bars": s.stale_bars_s,
            "dailyBars": s.stale_daily_bars_s,
        }
        return min(per_channel[ch] for ch in s.channels)

    def __init__(self, settings: AlpacaSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        s = settings
        # Kept across generator runs, so a restart by the market's watchdog still waits out
        # a 406 hold, keeps its backoff and reports its resubscribe and gap.
        self._backoff = Backoff(s.backoff_base_s, s.backoff_cap_s, s.healthy_after_s)
        self._hold_until = 0.0  # loop time before which no connection is attempted
        self._last_tick: datetime | None = None  # provider time of the last tick yielded
        self._lost_at: datetime | None = None  # when the last subscribed connection went down

    def _credentials(self) -> tuple[str, str]:
        s, name = self.settings, self.ctx.name
        if s.key is None or s.secret is None or not s.key.get_secret_value():
            msg = (
                f"{name}: no API key: set key and secret in secure.yml under '{name}'"
            )
            self.ctx.emit_status("config_error", {"error": msg, "setting": "key"})
            raise FeederConfigError(msg)
        return s.key.get_secret_value(), s.secret.get_secret_value()

    async def ticks(self) -> AsyncGenerator[list[PriceUpdate], None]:
        s, ctx = self.settings, self.ctx
        key, secret = self._credentials()
        parser = FrameParser(
            ctx.name,
            ctx.malformed,
            delayed=s.feed == "delayed_sip",
            quote_lot_size=s.quote_lot_size,
            dedup_window=s.dedup_window,
            trading_events=ctx.emit_status,
        )
        budget = SymbolBudget(s.symbol_limit)
        backoff = self._backoff
        rng = random.Random()
        loop = asyncio.get_running_loop()
        reconnects = ctx.metrics.reconnects.labels(ctx.name)
        tick_count = ctx.metrics.ticks.labels(ctx.name)
        attempts = 0
        try:
            while True:
                hold = self._hold_until - loop.time()
                if hold > 0:  # set by this run or an earlier one (a 406 outlives a restart)
                    await asyncio.sleep(hold)
                if not self.symbols:  # nothing wanted: do not hold the plan's one connection
                    self.symbols_changed.clear()
                    await self.symbols_changed.wait()
                    continue
                if attempts:
                    reconnects.inc()
                attempts += 1
                stream = AlpacaStream(self, parser, budget, resubscribe=self._lost_at is not None)
                delay: float
                try:
                    await stream.open(key, secret)
                    self.connected = True
                    backoff.connected()
                    ctx.emit_status(
                        "connected", {"url": stream.url, "feed": s.feed, "msgpack": s.msgpack}
                    )
                    await stream.start()
                    if self._lost_at is not None:
                        ctx.emit_status(
                            "gap",
                            {
                                "last_tick": self._last_tick.isoformat() if self._last_tick else None,
                                "disconnected_at": self._lost_at.isoformat(),
                            },
                        )
                        self._lost_at = None
                    while True:
                        batch = await stream.next_batch()
                        self._last_tick = batch[-1].timestamp
                        tick_count.inc(len(batch))
                        yield batch
                except FeederConfigError as e:
                    ctx.log.error("configuration rejected by the provider: %s", e)
                    ctx.emit_status("config_error", {"error": str(e)})
                    raise
                except ConnectionLimitError as e:
                    delay = s.connection_limit_wait_s + rng.uniform(0, s.connection_limit_jitter_s)
                    error = str(e)
                except InvalidStatus as e:
                    delay = backoff.next_delay()
                    retry_after = e.response.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        delay = max(delay, min(float(retry_after), s.backoff_cap_s))
                    error = f"upgrade refused: HTTP {e.response.status_code}"
                except (ProviderError, OSError, TimeoutError, WebSocketException) as e:
                    delay = backoff.next_delay()
                    error = f"{type(e).__name__}: {e}"
                finally:
                    if self.connected and self._lost_at is None:
                        self._lost_at = utcnow()
                    self.connected = False
                    await stream.close()
                ctx.log.warning(
                    "disconnected", extra=kv(error=error, retry_in_s=round(delay, 3))
                )
                ctx.emit_status("disconnected", {"error": error, "retry_in_s": round(delay, 3)})
                self._hold_until = loop.time() + delay
        finally:
            if self.connected and self._lost_at is None:
                self._lost_at = utcnow()
            self.connected = False
