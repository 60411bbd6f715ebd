"""Tencent quote-line simulator: ``GET /q=r_hk00700,...`` answering GBK ``v_r_hk...="~";`` lines.

Follows PROVIDERS.md: one line per requested code in request order, ~75 ``~``-separated
fields with a Chinese name in [1] and the quote time [30] in Hong Kong local time 15
minutes behind the clock, ``v_pv_none_match="1";`` for unknown codes, GBK on ``/q=``
and UTF-8 on ``/utf8/q=``. Run standalone:
``python -m tests.simulators.tencent --port 8082`` (quotes move on every request and on the
tape's clock, ``--tape-interval``).

Minute history (``web.ifzq.gtimg.cn``'s ``/appstock/app/minute/query?code=hk00700``, same
server): today's lines (the day of the delayed quote time), ``"HHMM price cumvol cumamount"``,
one per minute from the day's first to its last, each the state at its label (a minute's
END; the HK 09:20 auction minute on the 09:30 line), cumulative from the day's first trade,
served from the minute truth of every trade ``advance`` (and the tape) made, at the quote
time. ``tape_interval_s`` trades every known code on a clock, polled or not, so a cut-off
client leaves a hole (in HK 09:21-09:30 quote time it moves prices only). ``truth(symbol)``
gives minute start (UTC) → (o, h, l, c, volume, amount). ``history_outage`` (``http`` 503,
``code`` -1, ``reset``) fails the history only; ``history_rate_limit`` requests per
``history_rate_window_s`` at most, beyond: HTTP 429 with Retry-After (``history_throttle``
``429``) or a reset. The connection faults and ``ban`` apply to the history too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Literal
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.simulators.http_fakes import FakeHttpServer, reset_connection, serve_until_interrupted

HK_TZ = ZoneInfo("Asia/Hong_Kong")
FIELD_COUNT = 75
NO_MATCH_LINE = 'v_pv_none_match="1";'
_CODE = re.compile(r"^r_hk(\d{5})$")
MINUTE_PATH = "/appstock/app/minute/query"
_AUCTION_START, _AUCTION_LINE = dtime(9, 20), dtime(9, 30)  # pre-opening auction minute → its line
_QUIET = (dtime(9, 21), dtime(9, 30))  # the pre-opening session after the auction: no trade

NAMES = {
    "00700": "腾讯控股",
    "00005": "汇丰控股",
    "09988": "阿里巴巴\uff0d\uff37",  # full-width "-W", as HK names are written
    "03690": "美团\uff0d\uff37",
    "00941": "中国移动",
    "01299": "友邦保险",
}
ENGLISH = {"00700": "TENCENT", "00005": "HSBC HOLDINGS", "09988": "BABA-W", "03690": "MEITUAN-W"}


@dataclass
class TencentQuote:
    """One code's state; ``time`` is field [30] exactly as sent (HK local)."""

    name: str
    last: float
    prev_close: float
    open: float
    high: float
    low: float
    volume: int
    amount: float
    time: str


def quote_line(code: str, q: TencentQuote) -> str:
    """The full ``v_r_hkNNNNN="...";`` line for a quote, fields as Tencent lays them out."""
    digits = code[4:]
    f = ["0"] * FIELD_COUNT
    change = q.last - q.prev_close
    f[0] = "100"  # market
    f[1] = q.name
    f[2] = digits
    f[3] = f"{q.last:.3f}"
    f[4] = f"{q.prev_close:.3f}"
    f[5] = f"{q.open:.3f}"
    f[6] = f"{q.volume}"
    f[9] = f"{q.last - 0.2:.3f}"  # bid1 price / volume, then levels 2-5 left at 0
    f[10] = "12000"
    f[19] = f"{q.last + 0.2:.3f}"  # ask1 price / volume
    f[20] = "8000"
    f[29] = ""
    f[30] = q.time
    f[31] = f"{change:.3f}"
    f[32] = f"{change / q.prev_close * 100:.2f}"
    f[33] = f"{q.high:.3f}"
    f[34] = f"{q.low:.3f}"
    f[35] = f"{q.last:.3f}"
    f[36] = f"{q.volume}"
    f[37] = f"{q.amount:.3f}"
    f[38] = ""
    f[39] = "18.52"  # P/E
    f[43] = f"{(q.high - q.low) / q.prev_close * 100:.2f}"  # amplitude %
    f[44] = "30012.44"  # market cap, 100M HKD
    f[45] = "30012.44"
    f[46] = ENGLISH.get(digits, f"STOCK {digits}")
    f[47] = "0.99"  # dividend yield
    f[48] = f"{q.last * 1.3:.3f}"  # 52-week high
    f[49] = f"{q.last * 0.7:.3f}"  # 52-week low
    f[50] = ""
    f[60] = "100"  # lot size
    f[72] = ""
    f[73] = "GP"
    f[74] = "HKD"
    return f'v_{code}="{"~".join(f)}";'


class TencentSimulator(FakeHttpServer):
    """An in-process qt.gtimg.cn on 127.0.0.1 with switches the tests flip.

    Records: ``requests`` (the codes each request asked for, in order), ``paths``.
    Faults, besides those of FakeHttpServer (``ban`` is Tencent's throttle, HTTP 403):
    ``garbage_lines`` (malformed lines mixed into every answer), ``garbage_body`` (an
    answer with no quote line at all), ``unknown_codes`` (answered with the no-match line).
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        quote_delay_s: float = 900.0,
        auto_advance: bool = False,
        tape_interval_s: float | None = None,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.quote_delay_s = quote_delay_s
        self.auto_advance = auto_advance
        self.tape_interval_s = tape_interval_s
        self.minutes: dict[str, dict[int, list[float]]] = {}
        """code → minute start (epoch s, quote time) → [o, h, l, c, volume, amount]."""
        self.history_requests: list[tuple[str, float]] = []  # (code, time.monotonic())
        self.request_times: list[float] = []  # time.monotonic() of each quote request
        self.history_outage: Literal["http", "code", "reset"] | None = None
        self.history_rate_limit: int | None = None
        self.history_rate_window_s = 1.0
        self.history_throttle: Literal["429", "reset"] = "429"
        self.throttled = 0  # history requests refused by the rate limit
        self._history_recent: deque[float] = deque()
        self._tape: asyncio.Task[None] | None = None
        self.quotes: dict[str, TencentQuote] = {}
        self.paths: list[str] = []
        self.unknown_codes: set[str] = set()
        self.garbage_lines: list[str] = []
        self._rng = random.Random(seed)

    # -- control ---------------------------------------------------------------------

    def _quote_time(self) -> datetime:
        return (datetime.now(UTC) - timedelta(seconds=self.quote_delay_s)).replace(microsecond=0)

    def _now_field(self) -> str:
        return self._quote_time().astimezone(HK_TZ).strftime("%Y/%m/%d %H:%M:%S")

    def _new_quote(self, code: str) -> TencentQuote:
        digits = code[4:]
        r = random.Random(zlib.crc32(code.encode()) ^ self.seed)
        prev = round(r.uniform(5, 400), 1)
        last = round(prev * r.uniform(0.97, 1.03), 1)
        volume = r.randint(1_000, 100_000) * 100
        return TencentQuote(
            name=NAMES.get(digits, f"港股{digits}"),
            last=last,
            prev_close=prev,
            open=prev,
            high=max(prev, last),
            low=min(prev, last),
            volume=volume,
            amount=round(volume * (prev + last) / 2, 3),
            time=self._now_field(),
        )

    def quote(self, code: str) -> TencentQuote:
        """The code's quote, created on first use."""
        if code not in self.quotes:
            self.quotes[code] = self._new_quote(code)
        return self.quotes[code]

    def set_quote(self, code: str, **fields: object) -> TencentQuote:
        """Update a code's quote fields (``last``, ``volume``, ``time`` ...)."""
        q = self.quote(code)
        for k, v in fields.items():
            setattr(q, k, v)
        return q

    def advance(self, code: str | None = None, *, trade: bool = True) -> None:
        """A trade on one code (or all): price moves a tick, volume grows, time is now-delay
        (``trade=False``: the price moves without a trade, as in an auction's quiet minutes)."""
        at = self._quote_time()
        for c in [code] if code else list(self.quotes):
            q = self.quote(c)
            q.last = round(max(0.1, q.last + self._rng.choice((-0.2, 0.2))), 3)
            q.time = at.astimezone(HK_TZ).strftime("%Y/%m/%d %H:%M:%S")
            if not trade:
                continue
            size = self._rng.randint(1, 20) * 100
            amount = size * q.last
            q.volume += size
            q.amount = round(q.amount + amount, 3)
            q.high, q.low = max(q.high, q.last), min(q.low, q.last)
            self.record_trade(c, q.last, size, amount, at)

    def record_trade(self, code: str, price: float, size: float, amount: float, at: datetime) -> None:
        """Put one trade in the minute truth (no quote change)."""
        start = int(at.timestamp()) // 60 * 60
        minutes = self.minutes.setdefault(code, {})
        bar = minutes.get(start)
        if bar is None:
            minutes[start] = [price, price, price, price, size, amount]
            while len(minutes) > 2 * 1440:
                del minutes[min(minutes)]
            return
        bar[1], bar[2], bar[3] = max(bar[1], price), min(bar[2], price), price
        bar[4] += size
        bar[5] += amount

    def truth(self, symbol: str) -> dict[datetime, tuple[float, float, float, float, float, float]]:
        """Every minute the market traded ``symbol`` (``00700.HK`` or ``r_hk00700``): minute
        start (UTC, quote time) → (open, high, low, close, volume, amount)."""
        code = symbol if symbol.startswith("r_hk") else f"r_hk{symbol.partition('.')[0]}"
        return {
            datetime.fromtimestamp(start, UTC): (o, h, low, c, v, a)
            for start, (o, h, low, c, v, a) in sorted(self.minutes.get(code, {}).items())
        }

    def _day_lines(self, code: str) -> tuple[str, list[str]]:
        """Today's (quote time's) date and minute lines of ``code``."""
        today = self._quote_time().astimezone(HK_TZ).date()
        by_label: dict[datetime, list[float]] = {}
        for start, bar in sorted(self.minutes.get(code, {}).items()):
            local = datetime.fromtimestamp(start, HK_TZ)
            if local.date() != today:
                continue
            if local.time() == _AUCTION_START:
                label = local.replace(hour=_AUCTION_LINE.hour, minute=_AUCTION_LINE.minute)
            else:
                label = local + timedelta(minutes=1)
            line = by_label.get(label)
            if line is None:
                by_label[label] = [bar[3], bar[4], bar[5]]
            else:
                line[0] = bar[3]
                line[1] += bar[4]
                line[2] += bar[5]
        lines: list[str] = []
        if by_label:
            label, last = min(by_label), max(by_label)
            price, cum_v, cum_a = by_label[label][0], 0.0, 0.0
            while label <= last:
                got = by_label.get(label)
                if got is not None:
                    price, cum_v, cum_a = got[0], cum_v + got[1], cum_a + got[2]
                lines.append(f"{label:%H%M} {price:.3f} {cum_v:.0f} {cum_a:.3f}")
                label += timedelta(minutes=1)
        return today.strftime("%Y%m%d"), lines

    async def start(self, port: int = 0) -> None:
        await super().start(port)
        if self.tape_interval_s:
            self._tape = asyncio.create_task(self._tape_loop(self.tape_interval_s), name="tencent-sim.tape")

    async def stop(self) -> None:
        if self._tape is not None:
            self._tape.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tape
            self._tape = None
        await super().stop()

    async def _tape_loop(self, interval_s: float) -> None:
        """Every known code trades on the clock, polled or not."""
        while True:
            await asyncio.sleep(interval_s)
            local = self._quote_time().astimezone(HK_TZ).time()
            trade = not _QUIET[0] <= local < _QUIET[1]
            for code in list(self.quotes):
                if code not in self.unknown_codes:
                    self.advance(code, trade=trade)

    # -- server ----------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(MINUTE_PATH, self._minute_query)
        router.add_get("/{tail:.*}", self._handle)

    async def _minute_query(self, request: web.Request) -> web.StreamResponse:
        code = request.query.get("code", "")
        self.history_requests.append((code, time.monotonic()))
        await self._faults(request)
        if self.banned:
            return web.Response(status=403, text="403 Forbidden")
        if self.history_rate_limit is not None:
            now = time.monotonic()
            recent = self._history_recent
            recent.append(now)
            while recent and recent[0] < now - self.history_rate_window_s:
                recent.popleft()
            if len(recent) > self.history_rate_limit:
                self.throttled += 1
                if self.history_throttle == "reset":
                    reset_connection(request)
                return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "1"})
        if self.history_outage == "reset":
            reset_connection(request)
        if self.history_outage == "http":
            return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>")
        if self.history_outage == "code":
            return web.json_response({"code": -1, "msg": "system busy", "data": []})
        key = f"r_{code}"
        data: dict[str, object] = {}
        if _CODE.match(key) and key not in self.unknown_codes:
            day, lines = self._day_lines(key)
            q = self.quote(key)
            data[code] = {
                "data": {"data": lines, "date": day},
                "qt": {code: quote_line(key, q).split('="')[1].rstrip('";').split("~"), "market": []},
            }
        body = {"code": 0, "msg": "", "data": data}
        return web.Response(
            body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            content_type="application/json",
            charset="utf-8",
        )

    def _body(self, codes: tuple[str, ...], encoding: str) -> bytes:
        lines: list[str] = []
        for code in codes:
            if code in self.unknown_codes or not _CODE.match(code):
                lines.append(NO_MATCH_LINE)
                continue
            if self.auto_advance:
                self.advance(code)
            lines.append(quote_line(code, self.quote(code)))
        if self.garbage_lines:
            lines[1:1] = self.garbage_lines
        return "".join(f"{line}\n" for line in lines).encode(encoding)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path
        self.paths.append(path)
        prefix, sep, query = path.partition("q=")
        if not sep or prefix not in ("/", "/utf8/"):
            return web.Response(status=404, text="not found")
        codes = tuple(c for c in query.split(",") if c)
        self.requests.append(codes)
        self.request_times.append(time.monotonic())
        await self._faults(request)
        if self.banned:
            return web.Response(status=403, text="403 Forbidden")
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="error")
        encoding = "utf-8" if prefix == "/utf8/" else "gbk"
        if self.garbage_body:
            body = "<html><body>系统繁忙</body></html>\n".encode(encoding)
        else:
            body = self._body(codes, encoding)
        charset = "UTF-8" if encoding == "utf-8" else "GBK"
        return web.Response(body=body, headers={"Content-Type": f"text/html; charset={charset}"})


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--tape-interval", type=float, default=1.0, help="seconds between tape trades (0: none)")
    args = parser.parse_args()
    sim = TencentSimulator(auto_advance=True, tape_interval_s=args.tape_interval or None)
    await serve_until_interrupted(sim, args.port, "tencent simulator")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
