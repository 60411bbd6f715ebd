"""A local EastMoney push2 server: ulist SSE (full then positional deltas), ulist.np/get, stock/get.

It follows PROVIDERS.md: secids ``{market}.{code}``; ``diff`` keyed by request position
(or a list with ``np=1``); without ``fltt=2`` prices are integers scaled by ``10**f59`` and
percentages x100; ``"-"`` for missing values; stream deltas carry only the changed keys
(no f12/f13 unless they changed). It checks the ``Referer`` header (missing or foreign →
HTTP 403 with an HTML page: the real service is believed to be more lenient, this one is
strict so a feeder that forgets it fails here), and bans clients that ask too fast (more
than ``rate_limit_requests`` requests within ``rate_limit_window_s`` → every request is
refused for ``ban_duration_s`` with 403 or a TCP reset).

Fault switches for tests: ``drop_streams()``, ``silence_streams()`` / ``silent``,
``send_garbage()``, ``delay_s``, ``ban()``, ``reset_next`` (drop the next requests),
``rc``. It records every request (``requests``) so tests can see which secids each one
asked for.

Minute history (push2his, same server): ``/api/qt/stock/kline/get`` (klt=1; beg/end days,
``lmt`` keeps the newest lines; no pagination; only the last ``kline_days`` days when set)
and ``/api/qt/stock/trends2/get`` (the last ``ndays`` <= 5 days with trades, open 0 on all
but the latest), both served from the minute truth of every trade the market made: a
change that raises a security's f5 (``update``/``update_many``, the tape) is a trade of
the f5/f6 differences at the new f2, at f124 (or now). Lines are labelled the provider's
way: a minute by its END (exchange local), the CN 09:25 minute on the 09:30 line (opening
call auction) and the 15:00 minute on the 15:00 line (closing auction), the HK 09:20 minute
on the 09:30 line; every minute between a day's first and last line has one (volume 0 where
nothing traded). The tape (``tick_interval_s``) trades every known security, streamed or
not, so a cut-off client leaves a hole the history fills; in the auctions' quiet minutes
(CN 09:26-09:30 and 14:57-15:00, HK 09:21-09:30, local) it moves prices only, no trade.
``truth(symbol)`` gives minute start (UTC) → (o, h, l, c, volume in shares, amount).
``history_outage[path] = "rc" | "http" | "reset"`` fails one history endpoint; history
requests pass the same rate limit and ban as the live ones (EastMoney bans by IP).

Run standalone: ``python -m tests.simulators.eastmoney --port 8081 --tick-interval 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web

SSE_PATH = "/api/qt/ulist/sse"
SNAPSHOT_PATH = "/api/qt/ulist.np/get"
SINGLE_PATH = "/api/qt/stock/get"
KLINE_PATH = "/api/qt/stock/kline/get"
TRENDS_PATH = "/api/qt/stock/trends2/get"
HISTORY_PATHS = (KLINE_PATH, TRENDS_PATH)

_PRICE_KEYS = frozenset({"f2", "f4", "f15", "f16", "f17", "f18", "f19", "f39"})
_PERCENT_KEYS = frozenset({"f3"})
# stock/get codes → the ulist code holding the same value
_SINGLE_KEYS = {
    "f43": "f2", "f44": "f15", "f45": "f16", "f46": "f17", "f47": "f5", "f48": "f6",
    "f57": "f12", "f58": "f14", "f59": "f59", "f60": "f18", "f86": "f124", "f169": "f4",
    "f170": "f3", "f19": "f19", "f20": "f20", "f39": "f39", "f40": "f40",
}  # fmt: skip
_SINGLE_PRICE_KEYS = frozenset({"f43", "f44", "f45", "f46", "f60", "f169", "f19", "f39"})

BanStyle = Literal["403", "reset"]


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    path: str
    secids: tuple[str, ...]
    fields: tuple[str, ...]
    params: dict[str, str]
    referer: str | None
    at: float  # time.monotonic()
    outcome: str = "ok"  # ok | no_referer | banned | reset | slow


class _Control:
    """Queue items that are not bytes: end the stream gracefully or with a reset."""

    def __init__(self, name: str) -> None:
        self.name = name


_DROP = _Control("drop")
_RESET = _Control("reset")


@dataclass
class SimStream:
    """One open SSE stream: what it asked for and its pending events."""

    secids: tuple[str, ...]
    fields: tuple[str, ...]
    decimal: bool
    request: web.Request
    queue: asyncio.Queue[bytes | _Control] = field(default_factory=asyncio.Queue)
    silent: bool = False
    events_sent: int = 0


def _reset(request: web.Request) -> None:
    """Close the client's TCP connection with an RST (SO_LINGER 0), as a ban looks."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _forbidden(reason: str) -> web.Response:
    return web.Response(
        status=403,
        text=f"<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1>"
        f"<p>{reason}</p></body></html>",
        content_type="text/html",
    )


def _decimals_for(market: int) -> int:
    return 2 if market in (0, 1) else 3


_SHANGHAI, _HONG_KONG, _NEW_YORK = ZoneInfo("Asia/Shanghai"), ZoneInfo("Asia/Hong_Kong"), ZoneInfo("America/New_York")
# the auctions' quiet minutes (local): the tape moves prices only, no trade
_QUIET = {
    0: ((dtime(9, 26), dtime(9, 30)), (dtime(14, 57), dtime(15, 0))),
    1: ((dtime(9, 26), dtime(9, 30)), (dtime(14, 57), dtime(15, 0))),
    116: ((dtime(9, 21), dtime(9, 30)),),
}
# minute start (local) → the label of the line holding it, where it is not the minute's end
_AUCTION_LINES = {
    0: {dtime(9, 25): dtime(9, 30), dtime(15, 0): dtime(15, 0)},
    1: {dtime(9, 25): dtime(9, 30), dtime(15, 0): dtime(15, 0)},
    116: {dtime(9, 20): dtime(9, 30)},
}


def _zone(market: int) -> ZoneInfo:
    return _SHANGHAI if market in (0, 1) else _HONG_KONG if market == 116 else _NEW_YORK


def _shares_per_lot(market: int) -> int:
    """What f5 counts: lots of 100 for A-shares, shares elsewhere."""
    return 100 if market in (0, 1) else 1


def _quiet(market: int, at_s: float) -> bool:
    local = datetime.fromtimestamp(at_s, _zone(market)).time()
    return any(lo <= local < hi for lo, hi in _QUIET.get(market, ()))


def _line_label(market: int, start_local: datetime) -> datetime:
    """The provider's label of the minute starting ``start_local``: its end, or an auction line."""
    auction = _AUCTION_LINES.get(market, {}).get(start_local.time())
    if auction is not None:
        return start_local.replace(hour=auction.hour, minute=auction.minute)
    return start_local + timedelta(minutes=1)


def _secid_of(symbol: str) -> str:
    """A canonical symbol (``600000.SH``, ``00700.HK``, ``AAPL``) or a secid → the secid."""
    code, _, suffix = symbol.rpartition(".")
    if suffix == "SH":
        return f"1.{code}"
    if suffix in ("SZ", "BJ"):
        return f"0.{code}"
    if suffix == "HK":
        return f"116.{int(code):05d}"
    if suffix.isdigit() or code.isdigit():
        return symbol
    return f"105.{symbol.replace('.', '_')}"


def _day_param(text: str, default: date) -> date:
    if len(text) == 8 and text.isdigit():
        with contextlib.suppress(ValueError):
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return default


class EastMoneySimulator:
    """An aiohttp.web EastMoney on 127.0.0.1; use as ``async with EastMoneySimulator() as sim``."""

    def __init__(
        self,
        *,
        heartbeat_interval_s: float = 0.5,
        rate_limit_requests: int = 100,
        rate_limit_window_s: float = 1.0,
        ban_duration_s: float = 5.0,
        ban_style: BanStyle = "403",
        require_referer: bool = True,
        tick_interval_s: float | None = None,
        seed: int = 7,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.rate_limit_requests = rate_limit_requests
        self.rate_limit_window_s = rate_limit_window_s
        self.ban_duration_s = ban_duration_s
        self.ban_style: BanStyle = ban_style
        self.require_referer = require_referer
        self.decimals_key = "f59"
        """Which key carries the decimal places: f59, f152 or f1 (EastMoney's own pages ask
        for f1/f152); the other two are never sent."""
        self.tick_interval_s = tick_interval_s
        self.host = host
        self.port = port
        self.url = ""
        self._rng = random.Random(seed)
        self.quotes: dict[str, dict[str, Any]] = {}  # secid → integer-scaled full object
        self.requests: list[RequestRecord] = []
        self.streams: list[SimStream] = []
        # fault switches
        self.silent = False  # every stream, new ones too, sends nothing (not even heartbeats)
        self.delay_s = 0.0  # answer every request this much later
        self.rc = 0  # non-zero: every answer carries this rc and no data
        self.banned_until = 0.0  # time.monotonic(); see ban()
        self.reset_next = 0  # the next N requests are answered with a TCP reset (a network drop)
        self.bans = 0  # how many times the rate limit (or ban()) banned the client
        self.history_outage: dict[str, Literal["rc", "http", "reset"]] = {}
        """History path → how it fails now (``rc`` 102 without data, HTTP 502, a TCP reset)."""
        self.kline_days: int | None = None
        """kline serves only this many of the latest days with trades (None: all)."""
        self.max_truth_minutes = 5 * 1440
        """Minutes of truth kept per security (the oldest go first)."""
        self.minutes: dict[str, dict[int, list[Any]]] = {}
        """secid → minute start (epoch s) → [o, h, l, c (integer-scaled), lots, amount]."""
        self._recent: deque[float] = deque()
        self._heartbeats = 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(SSE_PATH, self._sse)
        app.router.add_get(SNAPSHOT_PATH, self._snapshot)
        app.router.add_get(SINGLE_PATH, self._single)
        app.router.add_get(KLINE_PATH, self._kline)
        app.router.add_get(TRENDS_PATH, self._trends)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"
        if self.tick_interval_s:
            self._ticker = asyncio.create_task(self._tick_loop(), name="eastmoney-sim.ticker")

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._closing.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for stream in list(self.streams):
            stream.queue.put_nowait(_DROP)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> EastMoneySimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- state and test controls -------------------------------------------------------

    def security(self, secid: str) -> dict[str, Any] | None:
        """The integer-scaled full object of ``secid`` (created on first use), None if invalid."""
        q = self.quotes.get(secid)
        if q is not None:
            return q
        market_s, _, code = secid.partition(".")
        if not market_s.isdigit() or not code:
            return None
        market = int(market_s)
        if market not in (0, 1, 105, 106, 107, 116):
            return None
        d = _decimals_for(market)
        r = random.Random(zlib.crc32(secid.encode()))
        prev = r.randint(300, 8000) * 10 ** (d - 1)
        last = prev + r.randint(-50, 50) * 10 ** (d - 1)
        vol = r.randint(10_000, 900_000)
        q = {
            "f2": last,
            "f3": round((last - prev) * 10_000 / prev),
            "f4": last - prev,
            "f5": vol,
            "f6": float(vol * 100 * last // 10**d),
            "f12": code,
            "f13": market,
            "f14": f"SIM{code}",
            "f15": max(last, prev) + 10 ** (d - 1),
            "f16": min(last, prev) - 10 ** (d - 1),
            "f17": prev,
            "f18": prev,
            "f19": last - 10 ** (d - 1),
            "f20": r.randint(1, 900),
            "f39": last + 10 ** (d - 1),
            "f40": r.randint(1, 900),
            "f59": d,
            "f124": int(time.time()),
        }
        self.quotes[secid] = q
        return q

    def set_quote(self, secid: str, **fields: Any) -> None:
        """Replace fields of ``secid`` silently (no delta): for setting up before a stream opens."""
        q = self.security(secid)
        assert q is not None, f"invalid secid {secid!r}"
        q.update(fields)

    def update(self, secid: str, **fields: Any) -> None:
        """Change fields of one security and push a delta to the streams that carry it."""
        self.update_many({secid: fields})

    def update_many(self, changes: dict[str, dict[str, Any]]) -> None:
        """Change several securities; each open stream gets ONE delta event with the
        changed keys of its securities, keyed by their positions in its request."""
        changed: dict[str, dict[str, Any]] = {}
        for secid, fields in changes.items():
            state = self.security(secid)
            assert state is not None, f"invalid secid {secid!r}"
            moved = {k: v for k, v in fields.items() if state.get(k) != v}
            before = (state.get("f5"), state.get("f6"))
            state.update(fields)
            self._traded(secid, state, *before)
            if moved:
                changed[secid] = moved
        for stream in self.streams:
            diff: dict[str, dict[str, Any]] = {}
            for pos, secid in enumerate(stream.secids):
                keys = changed.get(secid)
                if keys is None:
                    continue
                out = self._render(keys, stream.fields, stream.decimal, self.quotes[secid], self.decimals_key)
                if out:
                    diff[str(pos)] = out
            if diff:
                stream.queue.put_nowait(self._event(full=0, data={"diff": diff}))

    def stream_secids(self) -> list[tuple[str, ...]]:
        """The secids of every open stream."""
        return [s.secids for s in self.streams]

    def requested(self, path: str = SSE_PATH, outcome: str | None = "ok") -> list[tuple[str, ...]]:
        """The secids of every recorded request to ``path`` (with that outcome)."""
        return [
            r.secids
            for r in self.requests
            if r.path == path and (outcome is None or r.outcome == outcome)
        ]

    def drop_streams(self, reset: bool = False) -> None:
        """End every open stream: gracefully (end of body) or with a TCP reset."""
        for stream in self.streams:
            stream.queue.put_nowait(_RESET if reset else _DROP)

    def silence_streams(self) -> None:
        """The streams open now stay open but send nothing more; new streams are normal."""
        for stream in self.streams:
            stream.silent = True

    def send_garbage(self, raw: bytes = b'data: {"rc":0,"full":0,"data":{"diff":{"0":\n\n') -> None:
        """Write ``raw`` (a broken event by default) to every open stream."""
        for stream in self.streams:
            stream.queue.put_nowait(raw)

    def ban(self, duration_s: float | None = None, style: BanStyle | None = None) -> None:
        """Refuse every request for a while, as the rate limit does."""
        self.bans += 1
        self.banned_until = time.monotonic() + (
            duration_s if duration_s is not None else self.ban_duration_s
        )
        if style is not None:
            self.ban_style = style

    def unban(self) -> None:
        self.banned_until = 0.0
        self._recent.clear()

    # ---- minute truth ------------------------------------------------------------------

    def _traded(self, secid: str, state: dict[str, Any], f5: Any, f6: Any) -> None:
        """A raised f5 is a trade of the difference at the new f2, at the new f124."""
        v, a, price, at = state.get("f5"), state.get("f6"), state.get("f2"), state.get("f124")
        numbers = (int, float)
        if not (isinstance(v, numbers) and isinstance(f5, numbers) and v > f5 and isinstance(price, int)):
            return
        lots = v - f5
        if isinstance(a, numbers) and isinstance(f6, numbers):
            amount = float(a - f6)
        else:
            amount = lots * _shares_per_lot(state["f13"]) * price / 10 ** state["f59"]
        self.record_trade(secid, price, lots, amount, at if isinstance(at, int) and at > 0 else time.time())

    def record_trade(self, secid: str, price: int, lots: float, amount: float, at_s: float) -> None:
        """Put one trade (integer-scaled price, f5 units) in the minute truth (no quote change)."""
        start = int(at_s // 60 * 60)
        minutes = self.minutes.setdefault(secid, {})
        bar = minutes.get(start)
        if bar is None:
            minutes[start] = [price, price, price, price, lots, amount]
            while len(minutes) > self.max_truth_minutes:
                del minutes[min(minutes)]
            return
        bar[1], bar[2], bar[3] = max(bar[1], price), min(bar[2], price), price
        bar[4] += lots
        bar[5] += amount

    def truth(self, symbol: str) -> dict[datetime, tuple[float, float, float, float, float, float]]:
        """Every minute the market traded ``symbol`` (a canonical symbol or a secid): minute
        start (UTC) → (open, high, low, close, volume in shares, amount rounded to 2 places)."""
        secid = _secid_of(symbol)
        q = self.quotes.get(secid)
        if q is None:
            return {}
        div, unit = 10 ** q["f59"], _shares_per_lot(q["f13"])
        return {
            datetime.fromtimestamp(start, UTC): (o / div, h / div, low / div, c / div, v * unit, round(a, 2))
            for start, (o, h, low, c, v, a) in sorted(self.minutes.get(secid, {}).items())
        }

    def _days(self, secid: str, market: int) -> list[date]:
        """The local days the security traded, oldest first."""
        zone = _zone(market)
        return sorted({datetime.fromtimestamp(t, zone).date() for t in self.minutes.get(secid, {})})

    def _lines(self, secid: str, q: dict[str, Any], day: date, *, trends: bool, latest: bool) -> list[str]:
        """The provider's lines of one day: every minute from its first to its last label."""
        market, d = q["f13"], q["f59"]
        zone = _zone(market)
        by_label: dict[datetime, list[Any]] = {}
        for start, bar in sorted(self.minutes.get(secid, {}).items()):
            local = datetime.fromtimestamp(start, zone)
            if local.date() != day:
                continue
            label = _line_label(market, local)
            line = by_label.get(label)
            if line is None:
                by_label[label] = list(bar)
            else:
                line[1], line[2], line[3] = max(line[1], bar[1]), min(line[2], bar[2]), bar[3]
                line[4] += bar[4]
                line[5] += bar[5]
        if not by_label:
            return []
        out: list[str] = []
        label, last = min(by_label), max(by_label)
        prev_close = by_label[label][0]
        cum_v = cum_a = 0.0
        div = 10**d
        while label <= last:
            o, h, low, c, v, a = by_label.get(label) or (prev_close, prev_close, prev_close, prev_close, 0, 0.0)
            prev_close = c
            cum_v += v
            cum_a += a
            p = [f"{x / div:.{d}f}" for x in (o, h, low, c)]
            stamp = label.strftime("%Y-%m-%d %H:%M")
            vol = str(int(v)) if float(v).is_integer() else repr(float(v))
            if trends:
                avg = cum_a / (cum_v * _shares_per_lot(market)) if cum_v else c / div
                opening = p[0] if latest else f"{0:.{d}f}"
                out.append(f"{stamp},{opening},{p[3]},{p[1]},{p[2]},{vol},{a:.2f},{avg:.3f}")
            else:
                amplitude = (h - low) * 100 / q["f18"] if q.get("f18") else 0.0
                change = (c - q["f18"]) / div if q.get("f18") else 0.0
                pct = change * div * 100 / q["f18"] if q.get("f18") else 0.0
                out.append(
                    f"{stamp},{p[0]},{p[3]},{p[1]},{p[2]},{vol},{a:.2f},{amplitude:.2f},{pct:.2f},{change:.{d}f},0.01"
                )
            label += timedelta(minutes=1)
        return out

    # ---- rendering --------------------------------------------------------------------

    @staticmethod
    def _render(
        q: dict[str, Any], fields: tuple[str, ...], decimal: bool, full: dict[str, Any], decimals_key: str
    ) -> dict[str, Any]:
        """The requested keys of ``q`` as the wire carries them (``full`` gives f59); the
        decimal places go under ``decimals_key`` only."""
        out: dict[str, Any] = {}
        d = full.get("f59", 2)
        for k in fields:
            if k in ("f59", "f152", "f1"):
                if k == decimals_key and "f59" in q:
                    out[k] = q["f59"]
                continue
            if k not in q:
                continue
            v = q[k]
            if decimal and v != "-" and isinstance(v, int) and not isinstance(v, bool):
                if k in _PRICE_KEYS:
                    v = round(v / 10**d, d)
                elif k in _PERCENT_KEYS:
                    v = round(v / 100, 2)
            out[k] = v
        return out

    def _full_object(
        self, secid: str, fields: tuple[str, ...], decimal: bool
    ) -> dict[str, Any] | None:
        q = self.security(secid)
        if q is None:
            return None
        out = self._render(q, fields, decimal, q, self.decimals_key)
        for k in fields:
            out.setdefault(k, "-")
        return out

    def _event(self, *, full: int, data: dict[str, Any] | None) -> bytes:
        return b"data: " + self._envelope(full=full, data=data) + b"\n\n"

    def _envelope(self, *, full: int, data: dict[str, Any] | None) -> bytes:
        body = {"rc": self.rc, "rt": 4, "svr": 182995791, "lt": 1, "full": full, "dlmkts": ""}
        body["data"] = None if self.rc else data
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def _heartbeat(self) -> bytes:
        self._heartbeats += 1
        if self._heartbeats % 2:
            return b": keep-alive\n\n"
        return self._event(full=0, data=None)

    # ---- request gate -------------------------------------------------------------------

    def _record(self, request: web.Request, path: str) -> RequestRecord:
        q = request.query
        raw = q.get("secids") or q.get("secid") or ""
        rec = RequestRecord(
            path=path,
            secids=tuple(s for s in raw.split(",") if s),
            fields=tuple(f for f in q.get("fields", "").split(",") if f),
            params=dict(q),
            referer=request.headers.get("Referer"),
            at=time.monotonic(),
        )
        self.requests.append(rec)
        return rec

    async def _gate(
        self, request: web.Request, path: str
    ) -> tuple[RequestRecord, web.Response | None]:
        """Record, delay, rate-limit, check the Referer; a response here refuses the request."""
        rec = self._record(request, path)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        now = time.monotonic()
        recent = self._recent
        recent.append(now)
        while recent and recent[0] < now - self.rate_limit_window_s:
            recent.popleft()
        if now >= self.banned_until and len(recent) > self.rate_limit_requests:
            self.ban()
        if self.reset_next > 0:
            self.reset_next -= 1
            rec.outcome = "reset"
            _reset(request)
            return rec, web.Response(status=403)  # never reaches the client
        if now < self.banned_until:
            if self.ban_style == "reset":
                rec.outcome = "reset"
                _reset(request)
                return rec, web.Response(status=403)  # never reaches the client
            rec.outcome = "banned"
            return rec, _forbidden("Access denied: too many requests")
        referer = rec.referer or ""
        if self.require_referer and not referer.startswith("https://quote.eastmoney.com"):
            rec.outcome = "no_referer"
            return rec, _forbidden("Access denied")
        return rec, None

    # ---- handlers ----------------------------------------------------------------------

    async def _snapshot(self, request: web.Request) -> web.Response:
        rec, refused = await self._gate(request, SNAPSHOT_PATH)
        if refused is not None:
            return refused
        decimal = request.query.get("fltt") == "2"
        as_list = request.query.get("np") == "1"
        items: list[tuple[int, dict[str, Any]]] = []
        for pos, secid in enumerate(rec.secids):
            obj = self._full_object(secid, rec.fields, decimal)
            if obj is not None:
                items.append((pos, obj))
        diff: Any = [o for _, o in items] if as_list else {str(p): o for p, o in items}
        data = {"total": len(items), "diff": diff} if items else None
        return web.Response(
            body=self._envelope(full=1, data=data), content_type="application/json", charset="utf-8"
        )

    async def _single(self, request: web.Request) -> web.Response:
        rec, refused = await self._gate(request, SINGLE_PATH)
        if refused is not None:
            return refused
        decimal = request.query.get("fltt") == "2"
        q = self.security(rec.secids[0]) if rec.secids else None
        data: dict[str, Any] | None = None
        if q is not None:
            d = q["f59"]
            data = {}
            for k in rec.fields:
                src = _SINGLE_KEYS.get(k)
                v = q.get(src, "-") if src else "-"
                if decimal and isinstance(v, int) and k in _SINGLE_PRICE_KEYS:
                    v = round(v / 10**d, d)
                elif decimal and isinstance(v, int) and k == "f170":
                    v = round(v / 100, 2)
                data[k] = v
        body = {"rc": self.rc, "rt": 4, "svr": 182995791, "lt": 1, "full": 1, "data": data}
        return web.Response(
            body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
            content_type="application/json",
            charset="utf-8",
        )

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        rec, refused = await self._gate(request, SSE_PATH)
        if refused is not None:
            return refused
        stream = SimStream(rec.secids, rec.fields, request.query.get("fltt") == "2", request)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        self.streams.append(stream)
        try:
            diff: dict[str, Any] = {}
            for pos, secid in enumerate(stream.secids):
                obj = self._full_object(secid, stream.fields, stream.decimal)
                if obj is not None:
                    diff[str(pos)] = obj
            first = self._event(full=1, data={"total": len(diff), "diff": diff})
            if not self.silent:
                await resp.write(first)
                stream.events_sent += 1
            while not self._closing.is_set():
                try:
                    item = await asyncio.wait_for(stream.queue.get(), self.heartbeat_interval_s)
                except TimeoutError:
                    item = self._heartbeat()
                if item is _DROP:
                    break
                if item is _RESET:
                    _reset(request)
                    break
                if self.silent or stream.silent or not isinstance(item, bytes):
                    continue
                await resp.write(item)
                stream.events_sent += 1
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            self.streams.remove(stream)
        return resp

    # ---- history handlers -----------------------------------------------------------------

    def _history_fault(self, request: web.Request, rec: RequestRecord, path: str) -> web.Response | None:
        style = self.history_outage.get(path)
        if style is None:
            return None
        rec.outcome = f"outage_{style}"
        if style == "reset":
            _reset(request)
            return web.Response(status=502)  # never reaches the client
        if style == "http":
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        body = {"rc": 102, "rt": 17, "svr": 181669449, "lt": 1, "full": 0, "dlmkts": "", "data": None}
        return web.json_response(body)

    def _history_answer(self, secid: str, q: dict[str, Any] | None, key: str, lines: list[str]) -> web.Response:
        data: dict[str, Any] | None = None
        if q is not None:
            data = {
                "code": q["f12"],
                "market": q["f13"],
                "name": q.get("f14", ""),
                "decimal": q["f59"],
                "preKPrice" if key == "klines" else "preClose": q["f18"] / 10 ** q["f59"],
                key: lines,
            }
        body = {"rc": self.rc, "rt": 17, "svr": 181669449, "lt": 1, "full": 0, "dlmkts": ""}
        body["data"] = None if self.rc else data
        return web.Response(
            body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
            content_type="application/json",
            charset="utf-8",
        )

    async def _kline(self, request: web.Request) -> web.Response:
        rec, refused = await self._gate(request, KLINE_PATH)
        if refused is not None:
            return refused
        fault = self._history_fault(request, rec, KLINE_PATH)
        if fault is not None:
            return fault
        query = request.query
        secid = query.get("secid", "")
        q = self.security(secid)
        lines: list[str] = []
        if q is not None and query.get("klt") == "1":
            beg = _day_param(query.get("beg", "0"), date.min)
            end = _day_param(query.get("end", "20500101"), date.max)
            days = self._days(secid, q["f13"])
            if self.kline_days is not None:
                days = days[-self.kline_days :] if self.kline_days else []
            for day in days:
                if beg <= day <= end:
                    lines += self._lines(secid, q, day, trends=False, latest=False)
            lmt = query.get("lmt", "")
            if lmt.isdigit() and 0 < int(lmt) < len(lines):
                lines = lines[-int(lmt) :]
        return self._history_answer(secid, q, "klines", lines)

    async def _trends(self, request: web.Request) -> web.Response:
        rec, refused = await self._gate(request, TRENDS_PATH)
        if refused is not None:
            return refused
        fault = self._history_fault(request, rec, TRENDS_PATH)
        if fault is not None:
            return fault
        query = request.query
        secid = query.get("secid", "")
        q = self.security(secid)
        lines: list[str] = []
        if q is not None:
            nd = query.get("ndays", "1")
            ndays = min(max(int(nd) if nd.isdigit() else 1, 1), 5)
            days = self._days(secid, q["f13"])[-ndays:]
            for day in days:
                lines += self._lines(secid, q, day, trends=True, latest=day == days[-1])
        return self._history_answer(secid, q, "trends", lines)

    # ---- automatic market (demo / benchmarks) ------------------------------------------------

    async def _tick_loop(self) -> None:
        assert self.tick_interval_s is not None
        rng = self._rng
        while True:
            await asyncio.sleep(self.tick_interval_s)
            for st in self.streams:
                for secid in st.secids:
                    self.security(secid)
            # every known security trades, streamed or not: a cut-off client misses trades
            live = sorted(self.quotes)
            if not live:
                continue
            changes: dict[str, dict[str, Any]] = {}
            now = int(time.time())
            for secid in rng.sample(live, max(1, len(live) // 3)):
                q = self.quotes[secid]
                step = 10 ** max(0, q["f59"] - 2)
                last = max(step, q["f2"] + rng.randint(-3, 3) * step)
                lots = 0 if _quiet(q["f13"], now) else rng.randint(1, 50)
                changes[secid] = {
                    "f2": last,
                    "f3": round((last - q["f18"]) * 10_000 / q["f18"]),
                    "f4": last - q["f18"],
                    "f5": q["f5"] + lots,
                    "f6": q["f6"] + float(lots * 100 * last // 10 ** q["f59"]),
                    "f15": max(q["f15"], last),
                    "f16": min(q["f16"], last),
                    "f124": now,
                }
            self.update_many(changes)


async def _main(port: int, tick_interval_s: float) -> None:
    async with EastMoneySimulator(port=port, tick_interval_s=tick_interval_s) as sim:
        print(f"EastMoney simulator on {sim.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--tick-interval", type=float, default=0.5, help="seconds between moves")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.tick_interval))
