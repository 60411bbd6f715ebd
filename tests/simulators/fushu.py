"""FuShu REST simulator: ``GET /tick?symbols=...`` with Bearer auth (PROVIDERS.md), plus faults.

Run standalone: ``python -m tests.simulators.fushu --port 8081 --key demo`` (prices move on
every request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import zlib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.simulators.http_fakes import FakeHttpServer, serve_until_interrupted

HK_TZ = ZoneInfo("Asia/Hong_Kong")


class FushuSimulator(FakeHttpServer):
    """An in-process FuShu endpoint on 127.0.0.1 with switches the tests flip.

    State: ``quotes`` holds each symbol's current item (a plain dict, so a test can put
    anything in it); a requested HK symbol without one gets a deterministic quote.
    Records: ``requests`` (the symbols each request asked for, in order) and
    ``auth_headers`` (the Authorization header of each request).
    Faults, besides those of FakeHttpServer: ``reject_auth`` (401), ``fail_status`` with
    ``retry_after`` (e.g. 429 with a ``Retry-After``), ``garbage_body`` (non-JSON body),
    ``bad_items`` (extra malformed items appended to ``data``), ``unknown_symbols`` (left out).
    """

    def __init__(
        self,
        api_key: str = "sim-key",
        *,
        seed: int = 1,
        naive_timestamps: bool = False,
        auto_advance: bool = False,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.seed = seed
        self.naive_timestamps = naive_timestamps
        self.auto_advance = auto_advance
        self.quotes: dict[str, dict[str, Any]] = {}
        self.auth_headers: list[str | None] = []
        self.reject_auth = False
        self.retry_after: str | None = None
        self.bad_items: list[Any] = []
        self.unknown_symbols: set[str] = set()
        self._rng = random.Random(seed)

    # -- control ---------------------------------------------------------------------

    def _stamp(self, at: datetime | None = None) -> str:
        at = at or datetime.now(UTC)
        if self.naive_timestamps:
            return at.astimezone(HK_TZ).replace(tzinfo=None).isoformat(timespec="milliseconds")
        return at.astimezone(HK_TZ).isoformat(timespec="milliseconds")

    def set_quote(self, symbol: str, **fields: Any) -> dict[str, Any]:
        """Create or update a symbol's item; unspecified fields keep their values."""
        item = self.quotes.get(symbol) or self._new_quote(symbol)
        item.update(fields)
        self.quotes[symbol] = item
        return item

    def _new_quote(self, symbol: str) -> dict[str, Any]:
        r = random.Random(zlib.crc32(symbol.encode()) ^ self.seed)
        price = round(r.uniform(5, 400), 2)
        return {
            "symbol": symbol,
            "price": price,
            "volume": r.randint(100, 10_000) * 100,
            "timestamp": self._stamp(),
            "bid_price": round(price - 0.2, 2),
            "ask_price": round(price + 0.2, 2),
            "bid_volume": r.randint(1, 50) * 100,
            "ask_volume": r.randint(1, 50) * 100,
        }

    def advance(self, symbol: str | None = None) -> None:
        """A trade: move the price of one symbol (or all), add volume, stamp it now."""
        for sym in [symbol] if symbol else list(self.quotes):
            item = self.quotes.get(sym) or self._new_quote(sym)
            price = round(max(0.01, item["price"] + self._rng.choice((-0.2, 0.2))), 2)
            item.update(
                price=price,
                volume=item["volume"] + self._rng.randint(1, 20) * 100,
                timestamp=self._stamp(),
                bid_price=round(price - 0.2, 2),
                ask_price=round(price + 0.2, 2),
            )
            self.quotes[sym] = item

    # -- server ----------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/tick", self._tick)

    async def _tick(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("symbols", "")
        symbols = tuple(s for s in raw.split(",") if s)
        self.requests.append(symbols)
        self.auth_headers.append(request.headers.get("Authorization"))
        await self._faults(request)
        if self.banned:
            return web.json_response({"error": "forbidden"}, status=403)
        if self.reject_auth or request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "invalid token"}, status=401)
        if self.fail_status is not None:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.json_response(
                {"error": "unavailable"}, status=self.fail_status, headers=headers
            )
        if self.garbage_body:
            return web.Response(body=b"\x00\xff<html>oops", content_type="text/html")
        if not symbols:
            return web.json_response({"error": "symbols required"}, status=400)
        if self.auto_advance:
            for sym in symbols:
                self.advance(sym)
        data: list[Any] = []
        for sym in symbols:
            if sym in self.unknown_symbols or not sym.endswith(".HK"):
                continue
            data.append(self.quotes.get(sym) or self.set_quote(sym))
        data.extend(self.bad_items)
        body = json.dumps({"data": data}).encode()
        return web.Response(body=body, content_type="application/json")


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--key", default="sim-key")
    args = parser.parse_args()
    sim = FushuSimulator(args.key, auto_advance=True)
    await serve_until_interrupted(sim, args.port, f"fushu simulator (key {args.key!r})")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
