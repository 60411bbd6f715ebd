"""The EastMoney feeder: SSE streams (or polling) per chunk of secids, paced and backed off.

SSE mode keeps one ``/api/qt/ulist/sse`` stream per chunk of at most
``max_secids_per_request`` secids. Each stream owns a per-position cache: the first event
(``full: 1``) fills it, deltas (``full: 0``, only changed keys, usually without f12/f13)
merge into it, and every position whose merged state changed yields a tick built from
the merged state. A symbol change reopens only the streams whose chunk changed (a reopen
starts with a full event). Poll mode asks ``/api/qt/ulist.np/get`` for each chunk every
``poll_interval_s`` and yields the securities whose snapshot changed.

Every request of the feeder (stream opens and polls) goes through one pacer: at least
``min_request_interval_s`` plus a random jitter apart, because EastMoney bans IPs that
ask too fast. A ban (HTTP 403/429, an HTML captcha page instead of data, or repeated
connection resets before any answer) holds every request for a longer backoff and emits
status ``banned``. Fallback from SSE to polling is a second source in data_sources.yml
(``type: eastmoney`` with ``mode: poll``): the gateway fails over when the stream goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, field_validator

from services.feeder_gateway.feeders.base import (
    Feeder,
    FeederConfigError,
    FeederContext,
    ProviderError,
)
from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.parse import (
    QuoteError,
    apply_diff,
    decode_envelope,
    quote_to_update,
    symbol_of,
)
from services.feeder_gateway.feeders.eastmoney.secid import SecidError, market_id, to_secid
from shared.backoff import Backoff
from shared.config import Strict
from shared.dto import PriceUpdate, utcnow

UsExchange = Literal[105, 106, 107]


class EastMoneySettings(Strict):
    """Settings of a ``type: eastmoney`` source (no key: EastMoney push2 is public)."""

    base_url: str = "https://push2.eastmoney.com"
    """Scheme and host (a numbered shard like ``https://82.push2.eastmoney.com`` works too)."""
    mode: Literal["sse", "poll"] = "sse"
    """``sse``: long-lived ``/api/qt/ulist/sse`` streams; ``poll``: ``/api/qt/ulist.np/get``
    snapshots every ``poll_interval_s``."""
    fields: tuple[str, ...] = wire.DEFAULT_FIELDS
    """Field codes to ask for (``f2``...); f2, f12, f13, f124 and the decimal places (f59,
    f152, f1: servers differ, the first one returned is used) are always added. Add
    ``f19``/``f20``/``f39``/``f40`` for best bid/ask price and volume."""
    fltt: Literal[0, 2] | None = None
    """2: ask for decimal values (``fltt=2``); 0: integer values scaled by ``10**f59``
    (the parameter is left out); unset: SSE uses integers, polling uses ``fltt=2``."""
    poll_diff_as_list: bool = True
    """Polling: pass ``np=1`` (``diff`` as a list); false: ``diff`` keyed by position."""
    poll_interval_s: float = Field(3.0, gt=0, le=3600)
    """Polling: a full round over every chunk starts at most this often."""
    min_request_interval_s: float = Field(0.5, ge=0, le=60)
    """Every request of this feeder (stream opens, polls) is at least this far apart."""
    request_jitter_s: float = Field(0.25, ge=0, le=60)
    """Plus a uniform random extra of up to this much, so requests do not look robotic."""
    max_secids_per_request: int = Field(100, ge=1, le=500)
    """Larger symbol sets are split over several streams/requests of at most this many."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """TCP+TLS connect timeout of every request."""
    request_timeout_s: float = Field(10.0, gt=0)
    """Polling: whole-request timeout."""
    silence_timeout_s: float = Field(90.0, gt=0)
    """SSE: nothing at all (no event, no heartbeat) for this long → the stream is reopened."""
    backoff_base_s: float = Field(1.0, gt=0)
    """Reconnect/retry backoff after an ordinary failure: exponential from here, full jitter."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Ceiling of the ordinary backoff."""
    healthy_after_s: float = Field(30.0, ge=0)
    """A connection up this long resets the backoff to its base."""
    ban_backoff_base_s: float = Field(120.0, ge=0)
    """A ban holds every request this long plus a random extra of up to
    ``ban_backoff_base_s * 2**(bans in a row - 1)`` (capped by ``ban_backoff_cap_s``)."""
    ban_backoff_cap_s: float = Field(900.0, gt=0)
    """Ceiling of the random extra of a ban's hold."""
    ban_after_resets: int = Field(2, ge=1)
    """Consecutive connection resets before any answer that count as a ban."""
    stale_after_s: float | None = Field(60.0, gt=0)
    """Gateway watchdog: no tick this long in session (with symbols) → reconnect/fail over.
    Ticks come only when a quote changes (both modes), so a set of a few illiquid symbols
    can be quiet this long: raise it, or unset it, for such sets."""
    referer: str = "https://quote.eastmoney.com/"
    """``Referer`` header sent with every request (EastMoney expects its quote site)."""
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    """``User-Agent`` header sent with every request."""
    extra_params: dict[str, str] = {}
    """Query parameters added to every request (e.g. ``ut``, ``invt`` as browsers send)."""
    us_exchange: dict[str, UsExchange] = {}
    """US ticker → EastMoney market id (105 NASDAQ, 106 NYSE, 107 AMEX); e.g. ``{IBM: 106}``."""
    us_default_exchange: UsExchange = 105
    """Market id of US tickers not in ``us_exchange``."""
    volume_unit_shares: dict[int, int] = {0: 100, 1: 100}
    """Shares per unit of f5/f20/f40 by market id: A-shares (0, 1) report lots of 100;
    markets not listed (HK 116, US 105-107) are taken to report shares."""
    max_event_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    """SSE: an event larger than this is refused and the stream reopened."""
    queue_batches: int = Field(64, ge=1, le=100_000)
    """Batches buffered between the streams and the consumer; a full buffer makes the
    streams wait (TCP pushes back on the server), nothing is dropped here."""

    @field_validator("fields")
    @classmethod
    def _field_codes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for f in v:
            if not (f.startswith("f") and f[1:].isdigit()):
                raise ValueError(f"field code {f!r} is not of the form f<number>")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")


def plan_requests(
    current: list[tuple[str, ...]], wanted: Iterable[str], max_per_request: int
) -> list[tuple[str, ...]]:
    """The new chunks for ``wanted``, aligned with ``current`` so unchanged chunks stay put.

    Entry i is chunk i after the change (empty: close it); entries past ``len(current)``
    are new chunks. Removed symbols leave their chunk; added ones fill chunks with room
    first (sorted, so the plan is deterministic), then open new chunks.
    """
    want = set(wanted)
    plan = [tuple(s for s in chunk if s in want) for chunk in current]
    placed = {s for chunk in plan for s in chunk}
    to_add = sorted(want - placed)
    for i, chunk in enumerate(plan):
        room = max_per_request - len(chunk)
        if room > 0 and to_add and chunk:
            plan[i] = chunk + tuple(to_add[:room])
            to_add = to_add[room:]
    while to_add:
        plan.append(tuple(to_add[:max_per_request]))
        to_add = to_add[max_per_request:]
    return plan


class _Banned(Exception):
    """The server refuses us for asking too fast (403/429/captcha page)."""


def _is_reset(exc: BaseException) -> bool:
    """A connection reset or a close before any answer (how EastMoney bans look too)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False  # refused/unreachable: not an answer from a live server
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


_RETRYABLE = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ProviderError,
    _Banned,
    wire.SseFrameTooLarge,
)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _RequestPacer:
    """Spaces every request of one feeder; a ban pushes the next slot far out."""

    def __init__(self, min_interval_s: float, jitter_s: float, rng: random.Random) -> None:
        self._min = min_interval_s
        self._jitter = jitter_s
        self._rng = rng
        self._lock = asyncio.Lock()
        self._next = 0.0

    async def wait(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            delay = self._next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = loop.time() + self._min + self._rng.uniform(0, self._jitter)

    def hold(self, delay_s: float) -> None:
        self._next = max(self._next, asyncio.get_running_loop().time() + delay_s)


@dataclass(frozen=True, slots=True)
class _Route:
    """Where one canonical symbol goes on the wire."""

    secid: str
    code: str  # f12 as EastMoney echoes it
    volume_unit: int  # shares per f5 unit


_Item = list[PriceUpdate] | Exception | None  # None: wake up, the symbols changed


class EastMoneyFeeder(Feeder[EastMoneySettings]):
    """EastMoney push2 quotes; see the module docstring for the protocol handling."""

    type_name = "eastmoney"
    settings_model = EastMoneySettings
    follows_sessions: ClassVar[bool] = True

    def __init__(self, settings: EastMoneySettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        s = settings
        self._rng = random.Random()
        self._pacer = _RequestPacer(s.min_request_interval_s, s.request_jitter_s, self._rng)
        self._ban_backoff = Backoff(
            s.ban_backoff_base_s, s.ban_backoff_cap_s, s.healthy_after_s, self._rng
        )
        self._resets = 0  # consecutive resets before an answer
        self._routes: dict[str, _Route] = {}
        self._unmappable: set[str] = set()
        self._queue: asyncio.Queue[_Item] | None = None
        self._streams: list[_SseStream] = []
        self._stream_ids = 0
        fields = dict.fromkeys((*s.fields, *wire.REQUIRED_FIELDS))
        self._fields_param = ",".join(fields)
        fltt = s.fltt if s.fltt is not None else (2 if s.mode == "poll" else 0)
        self.decimal_values = fltt == 2

    @property
    def stale_after_s(self) -> float | None:
        return self.settings.stale_after_s

    def _on_wanted_change(self) -> None:
        super()._on_wanted_change()
        queue = self._queue
        if queue is not None:
            # A full queue means the generator is busy and checks the flag before each get.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # ---- shared plumbing -------------------------------------------------------------

    def _route(self, symbol: str) -> _Route | None:
        route = self._routes.get(symbol)
        if route is None:
            s = self.settings
            try:
                secid = to_secid(symbol, s.us_exchange, s.us_default_exchange)
            except SecidError as e:
                if symbol not in self._unmappable:
                    self._unmappable.add(symbol)
                    self.ctx.malformed("unmappable_symbol", str(e))
                return None
            market = market_id(secid)
            route = _Route(secid, secid.partition(".")[2], s.volume_unit_shares.get(market, 1))
            self._routes[symbol] = route
        return route

    def _wanted(self) -> list[str]:
        return [sym for sym in self.symbols if self._route(sym) is not None]

    def _params(self, secids: Iterable[str], *, poll: bool) -> dict[str, str]:
        params = {"secids": ",".join(secids), "fields": self._fields_param}
        if poll and self.settings.poll_diff_as_list:
            params["np"] = "1"
        if self.decimal_values:
            params["fltt"] = "2"
        params.update(self.settings.extra_params)
        return params

    def _url(self, path: str) -> str:
        return self.settings.base_url + path

    async def _check_response(self, resp: aiohttp.ClientResponse, want: str) -> None:
        """Raise by error class: ban, configuration, or retryable provider failure."""
        status = resp.status
        ctype = resp.content_type
        if status == 200 and ctype != "text/html":
            return
        snippet = (await resp.content.read(200)).decode("utf-8", "replace")
        if status in (403, 429) or (status == 200 and ctype == "text/html"):
            raise _Banned(f"HTTP {status} {ctype}: {snippet[:80]!r}")
        if status in (400, 404, 405):
            raise FeederConfigError(
                f"{self.ctx.name}: {resp.url.with_query(None)} answered HTTP {status}: "
                f"check 'base_url' (and 'fields', 'extra_params') under '{self.ctx.name}' in "
                f"data_sources.yml"
            )
        raise ProviderError(f"HTTP {status} for {want}: {snippet[:80]!r}")

    def _answered(self) -> None:
        self._resets = 0
        self._ban_backoff.connected()

    def _on_failure(
        self, exc: BaseException, *, answered: bool, backoff: Backoff, detail: dict[str, Any]
    ) -> float:
        """Count, classify and report a failure; returns the caller's own delay (0 on a ban,
        where the pacer holds every request instead)."""
        s = self.settings
        self.ctx.metrics.reconnects.labels(self.ctx.name).inc()
        banned = isinstance(exc, _Banned)
        if not banned and not answered and _is_reset(exc):
            self._resets += 1
            banned = self._resets >= s.ban_after_resets
        error = _describe(exc)
        if banned:
            delay = s.ban_backoff_base_s + self._ban_backoff.next_delay()
            self._pacer.hold(delay)
            self.ctx.log.warning("banned by EastMoney (%s); holding requests %.1f s", error, delay)
            self.ctx.emit_status(
                "banned", {**detail, "error": error, "retry_in_s": round(delay, 3)}
            )
            return 0.0
        delay = backoff.next_delay()
        self.ctx.emit_status(
            "disconnected", {**detail, "error": error, "retry_in_s": round(delay, 3)}
        )
        return delay

    def _new_backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.backoff_base_s, s.backoff_cap_s, s.healthy_after_s, self._rng)

    def _refresh_connected(self) -> None:
        streams = self._streams
        self.connected = bool(streams) and all(st.connected for st in streams)

    # ---- the generator -----------------------------------------------------------------

    async def ticks(self) -> AsyncIterator[list[PriceUpdate]]:
        s = self.settings
        session = aiohttp.ClientSession(
            headers={"Referer": s.referer, "User-Agent": s.user_agent, "Accept": "*/*"},
            connector=aiohttp.TCPConnector(limit=0),
        )
        try:
            inner = self._run_poll(session) if s.mode == "poll" else self._run_sse(session)
            async with contextlib.aclosing(inner):
                async for batch in inner:
                    yield batch
        finally:
            self.connected = False
            await session.close()

    async def _run_sse(
        self, session: aiohttp.ClientSession
    ) -> AsyncGenerator[list[PriceUpdate], None]:
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=self.settings.queue_batches)
        self._queue = queue
        self._streams = []
        self.symbols_changed.set()  # the first pass opens the streams for the current set
        try:
            while True:
                if self.symbols_changed.is_set():
                    self.symbols_changed.clear()
                    await self._restream(session, queue)
                item = await queue.get()
                if item is None:
                    continue
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._queue = None
            streams, self._streams = self._streams, []
            await _stop_streams(streams)

    async def _restream(self, session: aiohttp.ClientSession, queue: asyncio.Queue[_Item]) -> None:
        """Apply the desired set: reopen the streams whose chunk changed, open new ones."""
        old = self._streams
        plan = plan_requests(
            [st.symbols for st in old], self._wanted(), self.settings.max_secids_per_request
        )
        kept: list[_SseStream] = []
        stopping: list[_SseStream] = []
        for i, chunk in enumerate(plan):
            current = old[i] if i < len(old) else None
            if current is not None and current.symbols == chunk:
                kept.append(current)
                continue
            if current is not None:
                stopping.append(current)
            if chunk:
                self._stream_ids += 1
                stream = _SseStream(self, self._stream_ids, chunk, reopened=current is not None)
                stream.start(session, queue)
                kept.append(stream)
        self._streams = kept
        await _stop_streams(stopping)
        self._refresh_connected()

    async def _run_poll(
        self, session: aiohttp.ClientSession
    ) -> AsyncGenerator[list[PriceUpdate], None]:
        s = self.settings
        loop = asyncio.get_running_loop()
        url = self._url(wire.SNAPSHOT_PATH)
        timeout = aiohttp.ClientTimeout(total=s.request_timeout_s, connect=s.connect_timeout_s)
        backoff = self._new_backoff()
        chunks: list[tuple[str, ...]] = []
        last: dict[str, wire.Quote] = {}  # symbol → last snapshot, to yield only changes
        up = False
        ever_up = False
        last_tick: datetime | None = None
        self.symbols_changed.set()
        while True:
            if self.symbols_changed.is_set():
                self.symbols_changed.clear()
                wanted = self._wanted()
                chunks = [c for c in plan_requests(chunks, wanted, s.max_secids_per_request) if c]
                keep = set(wanted)
                for sym in [k for k in last if k not in keep]:
                    del last[sym]
            if not chunks:
                self.connected = False
                await self.symbols_changed.wait()
                continue
            cycle_start = loop.time()
            failed = False
            for chunk in chunks:
                if self.symbols_changed.is_set():
                    break
                answered = False
                try:
                    await self._pacer.wait()
                    routes = [self._routes[sym] for sym in chunk]
                    params = self._params((r.secid for r in routes), poll=True)
                    async with session.get(url, params=params, timeout=timeout) as resp:
                        answered = True
                        await self._check_response(resp, "snapshot")
                        body = await resp.read()
                    self._answered()
                    batch = self._snapshot_batch(body, chunk, routes, last, utcnow())
                except _RETRYABLE as e:
                    delay = self._on_failure(
                        e,
                        answered=answered,
                        backoff=backoff,
                        detail={"mode": "poll", "symbols": len(chunk)},
                    )
                    up = self.connected = False
                    failed = True
                    if delay:
                        await asyncio.sleep(delay)
                    break
                if not up:
                    up = self.connected = True
                    backoff.connected()
                    self.ctx.emit_status(
                        "connected", {"mode": "poll", "symbols": sum(map(len, chunks))}
                    )
                    if ever_up:
                        self.ctx.emit_status(
                            "resubscribed", {"mode": "poll", "reason": "reconnect"}
                        )
                        if last_tick is not None:
                            self.ctx.emit_status("gap", {"last_tick": last_tick.isoformat()})
                    ever_up = True
                if batch:
                    self.ctx.metrics.ticks.labels(self.ctx.name).inc(len(batch))
                    last_tick = max(u.timestamp for u in batch)
                    yield batch
            if failed or self.symbols_changed.is_set():
                continue
            delay = cycle_start + s.poll_interval_s - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.symbols_changed.wait(), delay)

    def _snapshot_batch(
        self,
        body: bytes,
        chunk: tuple[str, ...],
        routes: list[_Route],
        last: dict[str, wire.Quote],
        now: datetime,
    ) -> list[PriceUpdate]:
        """One snapshot answer → ticks for the securities whose snapshot changed."""
        ctx = self.ctx
        ctx.metrics.frames.labels(ctx.name).inc()
        try:
            env = decode_envelope(body)
        except QuoteError as e:
            ctx.malformed(e.reason, body[:200])
            return []
        if env.rc != 0:
            raise ProviderError(f"snapshot answered rc={env.rc}")
        diff = env.data.diff if env.data is not None else None
        if diff is None:
            return []
        entries: list[tuple[int, wire.Quote]] = []
        if isinstance(diff, list):
            requested = {r.secid: sym for r, sym in zip(routes, chunk, strict=True)}
            position = {sym: i for i, sym in enumerate(chunk)}
            for q in diff:
                try:
                    sym = symbol_of(q, requested) if type(q) is dict else ""
                except QuoteError as e:
                    ctx.malformed(e.reason, repr(q)[:200])
                    continue
                pos = position.get(sym)
                if pos is None:
                    ctx.malformed("unrequested_security", repr(q)[:200])
                    continue
                entries.append((pos, q))
        else:
            for key, q in diff.items():
                if not key.isdigit() or int(key) >= len(chunk) or type(q) is not dict:
                    ctx.malformed("bad_position", f"{key}: {q!r}"[:200])
                    continue
                entries.append((int(key), q))
        batch: list[PriceUpdate] = []
        decimal = self.decimal_values
        name = ctx.name
        for pos, q in entries:
            sym = chunk[pos]
            if last.get(sym) == q:
                continue
            last[sym] = q
            try:
                update = quote_to_update(
                    sym, q, now, name, decimal_values=decimal, volume_unit=routes[pos].volume_unit
                )
            except QuoteError as e:
                ctx.malformed(e.reason, repr(q)[:200])
                continue
            if update is not None:
                batch.append(update)
        return batch


async def _stop_streams(streams: list[_SseStream]) -> None:
    tasks = [st.task for st in streams if st.task is not None]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


class _SseStream:
    """One ``/api/qt/ulist/sse`` stream for a fixed chunk of symbols, reopened on failure."""

    def __init__(
        self, feeder: EastMoneyFeeder, stream_id: int, symbols: tuple[str, ...], reopened: bool
    ) -> None:
        self.feeder = feeder
        self.id = stream_id
        self.symbols = symbols
        self.routes = [feeder._routes[sym] for sym in symbols]
        self.cache: dict[int, wire.Quote] = {}
        self.connected = False
        self.reopened = reopened  # replaces a stream of a previous symbol set
        self.task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession, queue: asyncio.Queue[_Item]) -> None:
        name = f"eastmoney.{self.feeder.ctx.name}.sse{self.id}"
        self.task = asyncio.create_task(self._guarded(session, queue), name=name)

    async def _guarded(self, session: aiohttp.ClientSession, queue: asyncio.Queue[_Item]) -> None:
        try:
            await self._run(session, queue)
        except Exception as e:  # configuration errors and bugs end the generator
            await queue.put(e)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self.feeder._refresh_connected()

    async def _run(self, session: aiohttp.ClientSession, queue: asyncio.Queue[_Item]) -> None:
        feeder = self.feeder
        s = feeder.settings
        ctx = feeder.ctx
        frames = ctx.metrics.frames.labels(ctx.name)
        ticks = ctx.metrics.ticks.labels(ctx.name)
        url = feeder._url(wire.SSE_PATH)
        params = feeder._params((r.secid for r in self.routes), poll=False)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=s.connect_timeout_s, sock_read=s.silence_timeout_s
        )
        backoff = feeder._new_backoff()
        detail: dict[str, Any] = {"mode": "sse", "stream": self.id, "symbols": len(self.symbols)}
        failures = 0
        last_tick: datetime | None = None
        while True:
            answered = False
            try:
                await feeder._pacer.wait()
                async with session.get(url, params=params, timeout=timeout) as resp:
                    answered = True
                    await feeder._check_response(resp, "stream")
                    if resp.content_type != "text/event-stream":
                        raise ProviderError(f"stream answered Content-Type {resp.content_type}")
                    feeder._answered()
                    backoff.connected()
                    self._set_connected(True)
                    ctx.emit_status("connected", detail)
                    if failures or self.reopened:
                        reason = "reconnect" if failures else "symbols_changed"
                        ctx.emit_status("resubscribed", {**detail, "reason": reason})
                        if failures and last_tick is not None:
                            ctx.emit_status("gap", {**detail, "last_tick": last_tick.isoformat()})
                    decoder = wire.SseDecoder(s.max_event_bytes)
                    async for chunk in resp.content.iter_any():
                        events = decoder.feed(chunk)
                        if not events:
                            continue
                        frames.inc(len(events))
                        now = utcnow()
                        for payload in events:
                            batch = self._on_event(payload, now)
                            if batch:
                                ticks.inc(len(batch))
                                last_tick = max(u.timestamp for u in batch)
                                await queue.put(batch)
                    raise ProviderError("stream ended by the server")
            except _RETRYABLE as e:
                self._set_connected(False)
                failures += 1
                self.cache.clear()
                delay = feeder._on_failure(e, answered=answered, backoff=backoff, detail=detail)
                if delay:
                    await asyncio.sleep(delay)
            except BaseException:
                self._set_connected(False)
                raise

    def _on_event(self, payload: bytes, now: datetime) -> list[PriceUpdate] | None:
        """One SSE ``data`` payload → ticks for the positions whose merged state changed."""
        feeder = self.feeder
        ctx = feeder.ctx
        try:
            env = decode_envelope(payload)
        except QuoteError as e:
            ctx.malformed(e.reason, payload[:200])
            return None
        if env.rc != 0:
            raise ProviderError(f"stream event rc={env.rc}")
        data = env.data
        if data is None or data.diff is None:
            return None  # heartbeat
        diff = data.diff
        full = env.full == 1
        if isinstance(diff, list):
            diff = self._keyed(diff)
        changed, bad = apply_diff(self.cache, diff, len(self.symbols), full)
        for key in bad:
            ctx.malformed("bad_position", f"{key}: {diff.get(key)!r}"[:200])
        if not changed:
            return None
        batch: list[PriceUpdate] = []
        symbols = self.symbols
        routes = self.routes
        cache = self.cache
        name = ctx.name
        decimal = feeder.decimal_values
        for pos in changed:
            q = cache[pos]
            route = routes[pos]
            if full:
                code = q.get(wire.CODE)
                if code is not None and code != route.code:
                    ctx.malformed("position_mismatch", f"{pos}: want {route.code}, got {code!r}")
                    del cache[pos]
                    continue
            try:
                update = quote_to_update(
                    symbols[pos],
                    q,
                    now,
                    name,
                    decimal_values=decimal,
                    volume_unit=route.volume_unit,
                )
            except QuoteError as e:
                ctx.malformed(e.reason, f"{pos}: {q!r}"[:200])
                continue
            if update is not None:
                batch.append(update)
        return batch

    def _keyed(self, diff: list[wire.Quote]) -> dict[str, wire.Quote]:
        """A list-form diff (not expected on streams) keyed by position via f13/f12."""
        requested = {r.secid: str(i) for i, r in enumerate(self.routes)}
        out: dict[str, wire.Quote] = {}
        for q in diff:
            key = None
            if type(q) is dict:
                key = requested.get(f"{q.get(wire.MARKET)}.{q.get(wire.CODE)}")
            if key is None:
                self.feeder.ctx.malformed("unrequested_security", repr(q)[:200])
                continue
            out[key] = q
        return out
