"""A local Alpaca market-data stream v2 server with fault switches, for tests and demos.

Speaks the real protocol (PROVIDERS.md): ``[{"T":"success","msg":"connected"}]`` on
connect; auth by message or upgrade headers within ``auth_timeout_s`` (wrong key → 402
and close, too late → 404 and close, feed outside the plan → 409); additive subscribe and
subtractive unsubscribe, each answered with the FULL current set; the free plan's symbol
limit over trades + quotes (405, subscription unchanged); channels a feed does not offer
(410); the connection limit (406) with a reap window during which a dropped session
still counts; msgpack frames (timestamps as msgpack timestamp extensions) when the
upgrade says ``Content-Type: application/msgpack``; batched data frames of trades and
quotes (and bars) with nanosecond RFC-3339 timestamps, still sent for ``linger_s`` after
an unsubscribe as the real server does; ``v2/test`` streams FAKEPACA only.

Fault switches, from the test: ``drop_all()`` (reset every connection), ``go_silent()``
(open but mute), ``send_garbage()``, ``inject_error()``, ``slow_s``, ``reject_auth``,
``reject_upgrade`` (HTTP status on the upgrade, e.g. 429), ``duplicate_trades``,
``unknown_symbols`` (left out of the subscription without an error), ``welcome_delay_s``
(client messages before the welcome are recorded in ``early_messages``),
``before_welcome`` (a frame queued ahead of the welcome, e.g. an error, optionally then
closed), ``batch_control`` (welcome and auth answer in one frame, as a control frame may
hold several messages), ``go_down(for_s)`` / ``come_back()`` (every session dropped and
upgrades refused with 503 until lifted, while the tape keeps trading).

The exchange tape: trades are generated every ``interval_s`` for every symbol that was
ever subscribed on the trades channel (or ``backfill``-ed), whether or not a session is
connected, and streamed to the sessions subscribed to them. Each trade is on one SIP
exchange (``V``, IEX, with probability ``iex_share``): ``iex`` sessions see only ``V``
trades, ``sip`` and ``delayed_sip`` all (not delayed here). Every trade is recorded into
per-symbol minute truth, per feed (``truth(symbol, feed)``), for the last
``truth_minutes``. ``backfill`` trades the minutes before now at once, for tests that
need ended minutes without waiting for them.

The history endpoint (``history_url``, its own aiohttp port; ``history`` holds its
switches and records) serves Alpaca's ``GET /v2/stocks/bars`` from that truth: ended
minutes only, pagination by ``limit`` across symbols (sorted by symbol, then time), the
``APCA-API-*`` headers (401 missing, 403 wrong), ``X-RateLimit-*`` headers and 429 beyond
``history_rate_per_min``, the free plan's refusal of SIP data of the last 15 minutes
(403 unless ``sip`` is in ``feeds_in_plan``), ``history_down`` (answer 500/503).

Run alone: ``python -m tests.simulators.alpaca --port 8765 --history-port 8766``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import itertools
import json
import math
import random
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgpack  # type: ignore[import-untyped]
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.simulators.http_fakes import FakeHttpServer

FEEDS = ("iex", "sip", "delayed_sip", "test")
SUB_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
TEST_SYMBOL = "FAKEPACA"
IEX = "V"  # the IEX exchange code: the iex feed carries only its trades
_OTHER_EXCHANGES = ("Q", "N", "P", "K")
_EXCHANGES = {"iex": (IEX,), "test": (IEX,), "sip": (IEX, *_OTHER_EXCHANGES), "delayed_sip": _OTHER_EXCHANGES}
_TAPES = ("A", "B", "C")
_MINUTE_NS = 60_000_000_000
RECENT_SIP_S = 15 * 60  # the free plan's SIP history stops this long before now
RECENT_SIP_MESSAGE = "subscription does not permit querying recent SIP data"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339_ns(t_ns: int) -> str:
    """Unix nanoseconds → ``2024-03-04T14:30:00.123456789Z``."""
    secs, ns = divmod(t_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"


@dataclass(eq=False)
class SimSession:
    """One client connection as the server sees it."""

    id: int
    conn: ServerConnection
    feed: str
    msgpack: bool
    authenticated: bool = False
    silent: bool = False
    subs: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in SUB_CHANNELS})
    lingering: dict[tuple[str, str], float] = field(default_factory=dict)  # (channel, sym) → until
    received: list[dict[str, Any]] = field(default_factory=list)
    held_welcome: dict[str, Any] | None = None  # batch_control: goes out with the next control message
    cursor: int = 0  # seq of the last tape trade this session was given

    def encode(self, msgs: list[dict[str, Any]]) -> str | bytes:
        """Data keep ``t`` as int nanoseconds internally; each framing renders it."""
        if self.msgpack:
            out = [
                {**m, "t": msgpack.Timestamp.from_unix_nano(m["t"])} if type(m.get("t")) is int else m
                for m in msgs
            ]
            return bytes(msgpack.packb(out))
        return json.dumps([as_json(m) for m in msgs], separators=(",", ":"))


def as_json(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "t": rfc3339_ns(m["t"])} if type(m.get("t")) is int else m


class MinuteTruth(NamedTuple):
    """One minute of the tape for one symbol and feed: what the history must answer."""

    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float  # sum of price x size
    trades: int


class _Minute:
    """A minute being accumulated: [o, h, l, c, v, amount, n]."""

    __slots__ = ("amount", "c", "h", "l", "n", "o", "v")

    def __init__(self, price: float) -> None:
        self.o = self.h = self.l = self.c = price
        self.v = self.amount = 0.0
        self.n = 0

    def add(self, price: float, size: int) -> None:
        self.h, self.l, self.c = max(self.h, price), min(self.l, price), price
        self.v += size
        self.amount += price * size
        self.n += 1

    def truth(self) -> MinuteTruth:
        return MinuteTruth(self.o, self.h, self.l, self.c, self.v, self.amount, self.n)


def minute_start(minute_ns: int) -> datetime:
    return datetime.fromtimestamp(minute_ns // 1_000_000_000, UTC)


def rfc3339_s(t_ns: int) -> str:
    """Unix nanoseconds → ``2024-03-04T14:30:00Z`` (whole seconds, as history bars are)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_ns // 1_000_000_000))


class AlpacaSimulator:
    """``async with AlpacaSimulator() as sim:`` then point the feeder at ``sim.url``."""

    def __init__(
        self,
        *,
        key: str = "test-key",
        secret: str = "test-secret",
        symbol_limit: int | None = 30,
        connection_limit: int = 1,
        reap_window_s: float = 0.0,
        auth_timeout_s: float = 10.0,
        interval_s: float = 0.02,
        batch_max: int = 500,
        linger_s: float = 0.2,
        bar_interval_s: float = 0.2,
        feeds_in_plan: Iterable[str] = ("iex", "delayed_sip", "test"),
        channels_off_feed: dict[str, set[str]] | None = None,
        max_message_bytes: int = 64 * 1024,
        iex_share: float = 0.5,
        truth_minutes: int = 24 * 60,
        tape_buffer: int = 20_000,
        history_rate_per_min: int = 200,
        history_rate_window_s: float = 60.0,
        seed: int = 1,
    ) -> None:
        self.key, self.secret = key, secret
        self.symbol_limit = symbol_limit
        self.connection_limit = connection_limit
        self.reap_window_s = reap_window_s
        self.auth_timeout_s = auth_timeout_s
        self.interval_s = interval_s
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.bar_interval_s = bar_interval_s
        self.feeds_in_plan = set(feeds_in_plan)
        self.channels_off_feed = channels_off_feed or {"test": {"statuses", "lulds"}}
        self.max_message_bytes = max_message_bytes
        self.iex_share = iex_share
        self.truth_minutes = truth_minutes
        self.history_rate_per_min = history_rate_per_min
        self.history_rate_window_s = history_rate_window_s
        # fault switches
        self.slow_s = 0.0
        self.duplicate_trades = False
        self.reject_auth = False
        self.reject_upgrade: tuple[int, dict[str, str]] | None = None
        self.unknown_symbols: set[str] = set()  # silently left out of every subscribe
        self.welcome_delay_s = 0.0  # the welcome comes this late; client messages before it are recorded
        self.before_welcome: list[dict[str, Any]] = []  # a frame queued before the welcome (e.g. an error)
        self.close_after_before_welcome = False  # ...and the connection closed right after the welcome
        self.batch_control = False  # handshake answers share one frame: [connected, authenticated|error]
        # what happened, for assertions
        self.sessions: list[SimSession] = []  # live
        self.all_sessions: list[SimSession] = []
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.sent_data: list[tuple[int, dict[str, Any]]] = []  # (session id, JSON-form message)
        self.errors_sent: list[tuple[int, int, float]] = []  # (session id, code, loop time)
        self.authenticated_at: list[float] = []  # loop times of successful auths
        self.upgrades = 0
        self.early_messages: list[tuple[int, Any]] = []  # (session id, raw) sent before the welcome
        self._ghosts: list[float] = []  # loop times until which dropped sessions still count
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._trade_ids: dict[tuple[str, str], int] = {}
        self._prices: dict[str, float] = {}
        self._day: dict[str, list[float]] = {}  # symbol → [open, high, low, volume, amount]
        self._last_ns = 0
        self._server: Server | None = None
        self.port = 0
        # the exchange tape
        self.tape_symbols: set[str] = set()  # every symbol ever subscribed on trades (sticky)
        self._tape: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=tape_buffer)
        self._seq = 0  # seq of the newest tape trade
        self._truth: dict[str, dict[str, dict[int, _Minute]]] = {"sip": {}, "iex": {}}  # feed → sym → minute ns
        self._tape_task: asyncio.Task[None] | None = None
        self._down_until: float | None = None  # loop time; inf: until come_back()
        self.refused_while_down = 0
        self.history = AlpacaHistoryEndpoint(self)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The feeder's ``url`` setting: ``{feed}`` left for the feeder to fill in."""
        return f"ws://127.0.0.1:{self.port}/v2/{{feed}}"

    def url_for(self, feed: str) -> str:
        return self.url.replace("{feed}", feed)

    async def __aenter__(self) -> AlpacaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def history_url(self) -> str:
        """The feeder's ``history_url`` setting."""
        return self.history.url

    async def start(self, port: int = 0, history_port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            process_request=self._process_request,
            max_size=self.max_message_bytes,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self.history.start(history_port)
        self._tape_task = asyncio.create_task(self._run_tape(), name="alpaca-sim.tape")

    async def stop(self) -> None:
        if self._tape_task is not None:
            self._tape_task.cancel()
            await asyncio.wait([self._tape_task])
            self._tape_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.history.stop()

    # --- fault switches --------------------------------------------------------------

    def drop_all(self) -> None:
        """Reset every connection without a closing handshake (a network drop)."""
        for s in list(self.sessions):
            s.conn.transport.abort()

    def go_silent(self) -> None:
        """Current sessions stay open (pings answered) but send nothing more."""
        for s in self.sessions:
            s.silent = True

    async def send_garbage(self, frame: str | bytes = "[{not json") -> None:
        for s in list(self.sessions):
            await s.conn.send(frame)

    async def send_data(self, msgs: list[dict[str, Any]]) -> None:
        """Send data messages as given (one frame, each session's encoding) to every session."""
        for s in list(self.sessions):
            await self._send(s, msgs)

    async def inject_error(self, code: int, msg: str, close: bool = False) -> None:
        for s in list(self.sessions):
            await self._error(s, code, msg)
            if close:
                await s.conn.close()

    def go_down(self, for_s: float | None = None) -> None:
        """Drop every session and refuse upgrades (HTTP 503) for ``for_s`` seconds, or until
        ``come_back()``; the tape keeps trading meanwhile."""
        loop = asyncio.get_running_loop()
        self._down_until = math.inf if for_s is None else loop.time() + for_s
        self.drop_all()

    def come_back(self) -> None:
        self._down_until = None

    @property
    def history_down(self) -> int | None:
        """The history endpoint's outage: every request answered with this status (500, 503)."""
        return self.history.fail_status

    @history_down.setter
    def history_down(self, status: int | None) -> None:
        self.history.fail_status = status

    @property
    def down(self) -> bool:
        if self._down_until is None:
            return False
        if asyncio.get_running_loop().time() >= self._down_until:
            self._down_until = None
            return False
        return True

    def backfill(self, symbols: Iterable[str], minutes: int, per_minute: int = 20, quiet: Iterable[int] = ()) -> None:
        """The exchange traded ``symbols`` in each of the ``minutes`` whole minutes before the
        current one (``per_minute`` trades each, none in the minutes ``quiet`` counts back
        from now: 1 is the last ended minute); they keep trading on the tape from now on.
        Minutes the truth already holds for a symbol are left alone. Nothing is streamed."""
        now_minute = time.time_ns() // _MINUTE_NS * _MINUTE_NS
        quiet_set = set(quiet)
        for sym in sorted(set(symbols)):
            for back in range(minutes, 0, -1):
                minute_ns = now_minute - back * _MINUTE_NS
                if back in quiet_set or minute_ns in self._truth["sip"].get(sym, {}):
                    continue
                step_us = _MINUTE_NS // 1000 // (per_minute + 1)
                for k in range(1, per_minute + 1):
                    offset_us = k * step_us + self._rng.randrange(step_us // 2)
                    self._trade(sym, minute_ns + offset_us * 1000, streamed=False)
            self.tape_symbols.add(sym)

    # --- the tape ----------------------------------------------------------------------

    def truth(self, symbol: str, feed: str = "iex") -> dict[datetime, MinuteTruth]:
        """The tape's minutes of ``symbol`` as ``feed`` (iex: IEX trades only; sip,
        delayed_sip, test: all) sees them, by minute start; the newest may be in progress."""
        minutes = self._truth["iex" if feed == "iex" else "sip"].get(symbol, {})
        return {minute_start(m): acc.truth() for m, acc in sorted(minutes.items())}

    def ended_minutes(self, symbol: str, feed: str = "iex") -> dict[datetime, MinuteTruth]:
        """``truth`` without the minute in progress."""
        now_minute = minute_start(time.time_ns() // _MINUTE_NS * _MINUTE_NS)
        return {m: t for m, t in self.truth(symbol, feed).items() if m < now_minute}

    def _trade(self, sym: str, t_ns: int, streamed: bool = True) -> dict[str, Any]:
        """One trade of ``sym`` at ``t_ns``: recorded into the truth and (``streamed``) onto
        the tape the sessions read."""
        rng = self._rng
        x = IEX if rng.random() < self.iex_share else rng.choice(_OTHER_EXCHANGES)
        tid = self._trade_ids.get((sym, x), 0) + 1
        self._trade_ids[(sym, x)] = tid
        price, size = self._price(sym), rng.randint(1, 500)
        day = self._day.setdefault(sym, [price, price, price, 0.0, 0.0])
        day[1], day[2] = max(day[1], price), min(day[2], price)
        day[3] += size
        day[4] += size * price
        minute_ns = t_ns // _MINUTE_NS * _MINUTE_NS
        for feed in ("sip", "iex") if x == IEX else ("sip",):
            by_minute = self._truth[feed].setdefault(sym, {})
            acc = by_minute.get(minute_ns)
            if acc is None:
                acc = by_minute[minute_ns] = _Minute(price)
                horizon = minute_ns - self.truth_minutes * _MINUTE_NS
                for old in [m for m in by_minute if m <= horizon]:
                    del by_minute[old]
            acc.add(price, size)
        trade = {
            "T": "t", "S": sym, "i": tid, "x": x, "p": price, "s": size,
            "c": ["@"], "t": t_ns, "z": rng.choice(_TAPES),
        }
        if streamed:
            self._seq += 1
            self._tape.append((self._seq, trade))
        return trade

    async def _run_tape(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for sym in sorted(self.tape_symbols):
                self._trade(sym, self._now_ns())

    def tape_since(self, cursor: int) -> list[dict[str, Any]]:
        """Tape trades newer than ``cursor``, oldest first (those that fell out are lost)."""
        out: list[dict[str, Any]] = []
        for seq, trade in reversed(self._tape):
            if seq <= cursor:
                break
            out.append(trade)
        out.reverse()
        return out

    # --- views -----------------------------------------------------------------------

    def live(self) -> SimSession | None:
        """The newest authenticated live session."""
        for s in reversed(self.sessions):
            if s.authenticated:
                return s
        return None

    def subscription(self, channel: str = "trades") -> set[str]:
        s = self.live()
        return set(s.subs[channel]) if s else set()

    def requests(self, action: str, session_id: int | None = None) -> list[dict[str, Any]]:
        return [
            m
            for sid, m in self.received
            if m.get("action") == action and (session_id is None or sid == session_id)
        ]

    def error_codes(self) -> list[int]:
        return [code for _, code, _ in self.errors_sent]

    # --- protocol --------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.upgrades += 1
        if self.down:
            self.refused_while_down += 1
            return conn.respond(503, "service unavailable\n")
        if self.reject_upgrade is not None:
            status, headers = self.reject_upgrade
            resp = conn.respond(status, "rejected\n")
            for k, v in headers.items():
                resp.headers[k] = v
            return resp
        parts = request.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "v2" or parts[1] not in FEEDS:
            return conn.respond(404, "not found\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        assert conn.request is not None
        headers = conn.request.headers
        sess = SimSession(
            id=next(self._ids),
            conn=conn,
            feed=conn.request.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1],
            msgpack=headers.get("Content-Type", "").startswith("application/msgpack"),
            cursor=self._seq,
        )
        self.sessions.append(sess)
        self.all_sessions.append(sess)
        producer: asyncio.Task[None] | None = None
        early: list[str | bytes] = []
        try:
            if self.welcome_delay_s:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.welcome_delay_s):
                        while True:
                            early.append(await conn.recv())
                self.early_messages += [(sess.id, raw) for raw in early]
            if self.before_welcome:
                await self._send(sess, list(self.before_welcome))
            welcome = {"T": "success", "msg": "connected"}
            header_key = headers.get("APCA-API-KEY-ID")
            if self.batch_control and header_key is not None:
                sess.held_welcome = welcome  # sent with the auth answer, in one frame
            else:
                await self._send(sess, [welcome])
            if self.before_welcome and self.close_after_before_welcome:
                await conn.close()
                return
            if header_key is not None and not await self._auth(
                sess, header_key, headers.get("APCA-API-SECRET-KEY", "")
            ):
                return
            deadline = loop.time() + self.auth_timeout_s
            while True:
                if sess.authenticated and producer is None:
                    producer = asyncio.create_task(self._produce(sess), name=f"alpaca-sim.{sess.id}")
                if early:
                    raw = early.pop(0)
                elif not sess.authenticated:
                    try:
                        async with asyncio.timeout_at(deadline):
                            raw = await conn.recv()
                    except TimeoutError:
                        await self._error(sess, 404, "auth timeout")
                        return
                else:
                    raw = await conn.recv()
                try:
                    msg = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
                except ValueError:
                    await self._error(sess, 400, "invalid syntax")
                    continue
                if not isinstance(msg, dict):
                    await self._error(sess, 400, "invalid syntax")
                    continue
                self.received.append((sess.id, msg))
                sess.received.append(msg)
                action = msg.get("action")
                if action == "auth":
                    if not await self._auth(sess, msg.get("key"), msg.get("secret")):
                        return
                elif not sess.authenticated:
                    await self._error(sess, 401, "not authenticated")
                elif action in ("subscribe", "unsubscribe"):
                    await self._subscription(sess, msg, action == "subscribe")
                else:
                    await self._error(sess, 400, "invalid syntax")
        except ConnectionClosed:
            pass
        finally:
            if producer is not None:
                producer.cancel()
                await asyncio.wait([producer])
            self.sessions.remove(sess)
            dropped = conn.protocol.close_rcvd is None  # no closing handshake from the client
            if sess.authenticated and dropped and self.reap_window_s > 0:
                self._ghosts.append(loop.time() + self.reap_window_s)

    async def _auth(self, sess: SimSession, key: object, secret: object) -> bool:
        """Authenticate; False when the session was refused (and is to be closed)."""
        if sess.authenticated:
            await self._error(sess, 403, "already authenticated")
            return True
        if self.reject_auth or key != self.key or secret != self.secret:
            await self._error(sess, 402, "auth failed")
            return False
        if sess.feed not in self.feeds_in_plan:
            await self._error(sess, 409, "insufficient subscription")
            return False
        now = asyncio.get_running_loop().time()
        self._ghosts = [t for t in self._ghosts if t > now]
        held = sum(1 for s in self.sessions if s.authenticated) + len(self._ghosts)
        if held >= self.connection_limit:
            await self._error(sess, 406, "connection limit exceeded")
            return False
        sess.authenticated = True
        self.authenticated_at.append(now)
        await self._send(sess, [{"T": "success", "msg": "authenticated"}])
        return True

    async def _subscription(self, sess: SimSession, msg: dict[str, Any], add: bool) -> None:
        changes: dict[str, set[str]] = {}
        for ch in SUB_CHANNELS:
            value = msg.get(ch)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                await self._error(sess, 400, "invalid syntax")
                return
            if ch in self.channels_off_feed.get(sess.feed, set()):
                await self._error(sess, 410, "invalid subscribe action for this feed")
                return
            changes[ch] = set(value) - (self.unknown_symbols if add else set())
        new = {ch: set(v) for ch, v in sess.subs.items()}
        for ch, syms in changes.items():
            if add:
                new[ch] |= syms
            else:
                new[ch] -= syms
        if add and self.symbol_limit is not None:
            distinct = (new["trades"] | new["quotes"]) - {"*"}
            if len(distinct) > self.symbol_limit:
                await self._error(sess, 405, "symbol limit exceeded")
                return
        if not add:
            until = asyncio.get_running_loop().time() + self.linger_s
            for ch, syms in changes.items():
                for sym in syms & sess.subs[ch]:
                    sess.lingering[(ch, sym)] = until
        sess.subs = new
        if add:
            self.tape_symbols.update(self._streams(sess, "trades"))
        echo: dict[str, Any] = {"T": "subscription"}
        for ch in SUB_CHANNELS:
            echo[ch] = sorted(new[ch])
        echo["corrections"] = sorted(new["trades"])
        echo["cancelErrors"] = sorted(new["trades"])
        await self._send(sess, [echo])

    async def _error(self, sess: SimSession, code: int, msg: str) -> None:
        self.errors_sent.append((sess.id, code, asyncio.get_running_loop().time()))
        await self._send(sess, [{"T": "error", "code": code, "msg": msg}])

    async def _send(self, sess: SimSession, msgs: list[dict[str, Any]]) -> None:
        if sess.held_welcome is not None:
            msgs, sess.held_welcome = [sess.held_welcome, *msgs], None
        await sess.conn.send(sess.encode(msgs))

    # --- data ------------------------------------------------------------------------

    async def _produce(self, sess: SimSession) -> None:
        loop = asyncio.get_running_loop()
        next_bar = loop.time() + self.bar_interval_s
        while True:
            await asyncio.sleep(self.interval_s + self.slow_s)
            if sess.silent:
                sess.cursor = self._seq  # what it does not send now is lost to it
                continue
            now = loop.time()
            sess.lingering = {k: t for k, t in sess.lingering.items() if t > now}
            bars = now >= next_bar
            if bars:
                next_bar = now + self.bar_interval_s
            msgs = self._data(sess, bars)
            for i in range(0, len(msgs), self.batch_max):
                chunk = msgs[i : i + self.batch_max]
                self.sent_data.extend((sess.id, as_json(m)) for m in chunk)
                await self._send(sess, chunk)

    def _streams(self, sess: SimSession, channel: str) -> list[str]:
        syms = sess.subs[channel] | {s for (ch, s) in sess.lingering if ch == channel}
        if sess.feed == "test":
            return [s for s in sorted(syms) if s == TEST_SYMBOL]
        return [s for s in sorted(syms) if s not in ("*", TEST_SYMBOL)]

    def _now_ns(self) -> int:
        # strictly increasing by >= 1 us, so every message has its own microsecond
        self._last_ns = max(time.time_ns(), self._last_ns + 1000)
        return self._last_ns

    def _price(self, sym: str) -> float:
        """The next trade price of ``sym`` (a random walk in cents)."""
        p = self._prices.get(sym)
        if p is None:
            p = _first_price(sym)
        else:
            p = round(max(0.01, p + self._rng.choice((-0.02, -0.01, 0.0, 0.01, 0.02))), 2)
        self._prices[sym] = p
        return p

    def _data(self, sess: SimSession, bars: bool) -> list[dict[str, Any]]:
        rng = self._rng
        exchanges = _EXCHANGES[sess.feed]
        out: list[dict[str, Any]] = []
        wanted = set(self._streams(sess, "trades"))
        iex_only = sess.feed == "iex"
        for trade in self.tape_since(sess.cursor):
            if trade["S"] in wanted and (not iex_only or trade["x"] == IEX):
                out.append(trade)
                if self.duplicate_trades:
                    out.append(dict(trade))
        sess.cursor = self._seq
        for sym in self._streams(sess, "quotes"):
            mid = self._prices.get(sym) or _first_price(sym)
            half = rng.choice((0.01, 0.02, 0.03))
            out.append({
                "T": "q", "S": sym,
                "bx": rng.choice(exchanges), "bp": round(mid - half, 2), "bs": rng.randint(1, 20),
                "ax": rng.choice(exchanges), "ap": round(mid + half, 2), "as": rng.randint(1, 20),
                "c": ["R"], "t": self._now_ns(), "z": rng.choice(_TAPES),
            })
        if bars:
            minute_ns = (time.time_ns() // 60_000_000_000) * 60_000_000_000
            for ch, kind in (("bars", "b"), ("dailyBars", "d")):
                for sym in self._streams(sess, ch):
                    p = self._prices.get(sym) or _first_price(sym)
                    o, h, lo, v, amount = self._day.get(sym, [p, p, p, 100.0, 100.0 * p])
                    out.append({
                        "T": kind, "S": sym, "o": o, "h": h, "l": lo, "c": p,
                        "v": int(v), "t": minute_ns, "n": 10,
                        "vw": round(amount / v, 4) if v else p,
                    })
        return out


@dataclass(frozen=True)
class HistoryRequest:
    """One request to the history endpoint, as answered."""

    params: dict[str, str]
    status: int
    bars: int = 0  # bars in the answer


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Alpaca's data API error body."""
    return web.json_response({"message": message}, status=status, headers=headers)


class _BadRequest(Exception):
    pass


class AlpacaHistoryEndpoint(FakeHttpServer):
    """``GET /v2/stocks/bars`` served from the simulator's minute truth.

    Switches (beside FakeHttpServer's ``slow_s``, ``drop_next``, ``reset_for``,
    ``silent``): ``fail_status`` (the outage: every request answered 500/503). Records:
    ``log`` (every request with its status and bar count), ``requests`` (the symbols
    each asked for).
    """

    def __init__(self, sim: AlpacaSimulator) -> None:
        super().__init__()
        self.sim = sim
        self.log: list[HistoryRequest] = []
        self._window_end = 0.0  # epoch seconds: the rate window's reset
        self._window_count = 0

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2/stocks/bars", self._bars)

    def advance(self, key: str | None = None) -> None:
        """One trade now on ``key`` (or on every tape symbol)."""
        for sym in [key] if key is not None else sorted(self.sim.tape_symbols):
            self.sim._trade(sym, self.sim._now_ns())

    def answered(self, status: int | None = 200, feed: str | None = None) -> list[HistoryRequest]:
        """Requests answered with ``status`` (None: any) that asked for ``feed`` (None: any)."""
        return [
            r for r in self.log
            if (status is None or r.status == status) and (feed is None or r.params.get("feed") == feed)
        ]

    async def _bars(self, request: web.Request) -> web.Response:
        await self._faults(request)
        params = dict(request.query)
        resp, bars = self._answer(params, request)
        self.log.append(HistoryRequest(params, resp.status, bars))
        self.requests.append(tuple(params.get("symbols", "").split(",")))
        return resp

    def _answer(self, params: dict[str, str], request: web.Request) -> tuple[web.Response, int]:
        sim = self.sim
        if self.fail_status is not None:
            return _message(self.fail_status, "internal server error"), 0
        key, secret = request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")
        if key is None or secret is None:
            return _message(401, "unauthorized."), 0
        if key != sim.key or secret != sim.secret or sim.reject_auth:
            return _message(403, "forbidden"), 0
        now = time.time()
        if now >= self._window_end:
            self._window_end, self._window_count = now + sim.history_rate_window_s, 0
        self._window_count += 1
        limit_headers = {
            "X-RateLimit-Limit": str(sim.history_rate_per_min),
            "X-RateLimit-Remaining": str(max(0, sim.history_rate_per_min - self._window_count)),
            "X-RateLimit-Reset": str(math.ceil(self._window_end)),
        }
        if self._window_count > sim.history_rate_per_min:
            return _message(429, "too many requests.", limit_headers), 0
        try:
            body = self._page(params, time.time_ns())
        except _BadRequest as e:
            return _message(400, str(e), limit_headers), 0
        except PermissionError as e:
            return _message(403, str(e), limit_headers), 0
        count = sum(len(v) for v in body["bars"].values())
        return web.json_response(body, headers=limit_headers), count

    def _page(self, params: dict[str, str], now_ns: int) -> dict[str, Any]:
        sim = self.sim
        symbols = sorted({s for s in params.get("symbols", "").split(",") if s})
        if not symbols:
            raise _BadRequest("missing symbols")
        if params.get("timeframe") != "1Min":
            raise _BadRequest("invalid timeframe")  # only minutes are simulated
        day_ns = now_ns // 86_400_000_000_000 * 86_400_000_000_000
        start_ns = _param_time(params, "start", day_ns)
        end_ns = _param_time(params, "end", now_ns)
        try:
            limit = int(params.get("limit", "1000"))
        except ValueError:
            raise _BadRequest("invalid limit") from None
        if not 1 <= limit <= 10_000:
            raise _BadRequest("invalid limit: must be between 1 and 10000")
        feed = params.get("feed", "sip" if "sip" in sim.feeds_in_plan else "iex")
        if feed not in ("iex", "sip"):
            raise _BadRequest("invalid feed")
        sort = params.get("sort", "asc")
        if sort not in ("asc", "desc"):
            raise _BadRequest("invalid sort")
        if feed == "sip" and "sip" not in sim.feeds_in_plan and end_ns > now_ns - RECENT_SIP_S * 1_000_000_000:
            raise PermissionError(RECENT_SIP_MESSAGE)
        order: list[tuple[str, int]] = []
        for sym in symbols:
            minutes = sorted(
                m for m in sim._truth[feed].get(sym, {})
                if start_ns <= m <= end_ns and m + _MINUTE_NS <= now_ns  # ended minutes only
            )
            order += [(sym, m) for m in (reversed(minutes) if sort == "desc" else minutes)]
        first = 0
        token = params.get("page_token")
        if token:
            at = _decode_token(token)
            sign = -1 if sort == "desc" else 1
            after = (at[0], sign * at[1])
            first = next((i for i, (sym, m) in enumerate(order) if (sym, sign * m) >= after), len(order))
        page, rest = order[first : first + limit], order[first + limit : first + limit + 1]
        bars: dict[str, list[dict[str, Any]]] = {}
        for sym, m in page:
            t = sim._truth[feed][sym][m].truth()
            bars.setdefault(sym, []).append({
                "t": rfc3339_s(m), "o": t.open, "h": t.high, "l": t.low, "c": t.close,
                "v": int(t.volume), "n": t.trades, "vw": round(t.amount / t.volume, 6),
            })
        return {"bars": bars, "next_page_token": _encode_token(*rest[0]) if rest else None}


def _param_time(params: dict[str, str], name: str, default_ns: int) -> int:
    value = params.get(name)
    if value is None:
        return default_ns
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise _BadRequest(f"invalid {name}") from None
    if t.tzinfo is None:
        raise _BadRequest(f"invalid {name}")
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _encode_token(symbol: str, minute_ns: int) -> str:
    return base64.b64encode(f"{symbol}|{minute_ns}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, _, minute = base64.b64decode(token, validate=True).decode().partition("|")
        return symbol, int(minute)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _BadRequest("invalid page token") from None


def _first_price(sym: str) -> float:
    """A symbol's opening price: the same in every run."""
    return round(random.Random(zlib.crc32(sym.encode())).uniform(20.0, 400.0), 2)


async def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--history-port", type=int, default=8766)
    ap.add_argument("--key", default="test-key")
    ap.add_argument("--secret", default="test-secret")
    ap.add_argument("--symbol-limit", type=int, default=30)
    args = ap.parse_args()
    sim = AlpacaSimulator(key=args.key, secret=args.secret, symbol_limit=args.symbol_limit)
    await sim.start(args.port, args.history_port)
    print(f"alpaca simulator on {sim.url}, history on {sim.history_url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
