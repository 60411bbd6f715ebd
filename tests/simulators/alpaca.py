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
hold several messages).

Run alone: ``python -m tests.simulators.alpaca --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

FEEDS = ("iex", "sip", "delayed_sip", "test")
SUB_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
TEST_SYMBOL = "FAKEPACA"
_EXCHANGES = {"iex": ("V",), "test": ("V",), "sip": ("V", "Q", "N", "P", "K"), "delayed_sip": ("Q", "N")}
_TAPES = ("A", "B", "C")


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

    async def start(self, port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            process_request=self._process_request,
            max_size=self.max_message_bytes,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

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
        p = self._prices.get(sym)
        if p is None:
            p = round(random.Random(zlib.crc32(sym.encode())).uniform(20.0, 400.0), 2)
        else:
            p = round(max(0.01, p + self._rng.choice((-0.02, -0.01, 0.0, 0.01, 0.02))), 2)
        self._prices[sym] = p
        return p

    def _data(self, sess: SimSession, bars: bool) -> list[dict[str, Any]]:
        rng = self._rng
        exchanges = _EXCHANGES[sess.feed]
        out: list[dict[str, Any]] = []
        for sym in self._streams(sess, "trades"):
            x = rng.choice(exchanges)
            tid = self._trade_ids.get((sym, x), 0) + 1
            self._trade_ids[(sym, x)] = tid
            price, size = self._price(sym), rng.randint(1, 500)
            day = self._day.setdefault(sym, [price, price, price, 0.0, 0.0])
            day[1], day[2] = max(day[1], price), min(day[2], price)
            day[3] += size
            day[4] += size * price
            trade = {
                "T": "t", "S": sym, "i": tid, "x": x, "p": price, "s": size,
                "c": ["@"], "t": self._now_ns(), "z": rng.choice(_TAPES),
            }
            out.append(trade)
            if self.duplicate_trades:
                out.append(dict(trade))
        for sym in self._streams(sess, "quotes"):
            mid = self._prices.get(sym) or self._price(sym)
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
                    p = self._prices.get(sym) or self._price(sym)
                    o, h, lo, v, amount = self._day.get(sym, [p, p, p, 100.0, 100.0 * p])
                    out.append({
                        "T": kind, "S": sym, "o": o, "h": h, "l": lo, "c": p,
                        "v": int(v), "t": minute_ns, "n": 10,
                        "vw": round(amount / v, 4) if v else p,
                    })
        return out


async def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--key", default="test-key")
    ap.add_argument("--secret", default="test-secret")
    ap.add_argument("--symbol-limit", type=int, default=30)
    args = ap.parse_args()
    sim = AlpacaSimulator(key=args.key, secret=args.secret, symbol_limit=args.symbol_limit)
    await sim.start(args.port)
    print(f"alpaca simulator on {sim.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
