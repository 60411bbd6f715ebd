"""Tencent quote-line simulator: ``GET /q=r_hk00700,...`` answering GBK ``v_r_hk...="~";`` lines.

Follows PROVIDERS.md: one line per requested code in request order, ~75 ``~``-separated
fields with a Chinese name in [1] and the quote time [30] in Hong Kong local time 15
minutes behind the clock, ``v_pv_none_match="1";`` for unknown codes, GBK on ``/q=``
and UTF-8 on ``/utf8/q=``. Run standalone:
``python -m tests.simulators.tencent --port 8082`` (quotes move on every request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.simulators.http_fakes import FakeHttpServer, serve_until_interrupted

HK_TZ = ZoneInfo("Asia/Hong_Kong")
FIELD_COUNT = 75
NO_MATCH_LINE = 'v_pv_none_match="1";'
_CODE = re.compile(r"^r_hk(\d{5})$")

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
        self, *, seed: int = 1, quote_delay_s: float = 900.0, auto_advance: bool = False
    ) -> None:
        super().__init__()
        self.seed = seed
        self.quote_delay_s = quote_delay_s
        self.auto_advance = auto_advance
        self.quotes: dict[str, TencentQuote] = {}
        self.paths: list[str] = []
        self.unknown_codes: set[str] = set()
        self.garbage_lines: list[str] = []
        self._rng = random.Random(seed)

    # -- control ---------------------------------------------------------------------

    def _now_field(self) -> str:
        at = datetime.now(UTC) - timedelta(seconds=self.quote_delay_s)
        return at.astimezone(HK_TZ).strftime("%Y/%m/%d %H:%M:%S")

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

    def advance(self, code: str | None = None) -> None:
        """A trade on one code (or all): price moves a tick, volume grows, time is now-delay."""
        for c in [code] if code else list(self.quotes):
            q = self.quote(c)
            q.last = round(max(0.1, q.last + self._rng.choice((-0.2, 0.2))), 3)
            size = self._rng.randint(1, 20) * 100
            q.volume += size
            q.amount = round(q.amount + size * q.last, 3)
            q.high, q.low = max(q.high, q.last), min(q.low, q.last)
            q.time = self._now_field()

    # -- server ----------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/{tail:.*}", self._handle)

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
    args = parser.parse_args()
    await serve_until_interrupted(TencentSimulator(auto_advance=True), args.port, "tencent simulator")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
