"""One paced HTTP GET of a minute history: background slot at the host's pacer, capped body,
resets counted toward a ban, a ban held on the pacer (so the live feed waits it out too)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext
from services.feeder_gateway.feeders.history import HistoryUnavailable
from services.feeder_gateway.feeders.http_body import read_capped
from services.feeder_gateway.feeders.lifecycle import describe
from services.feeder_gateway.feeders.pacing import RequestPacer
from services.feeder_gateway.feeders.polling import is_reset, retry_after_s


class EndpointDown(Exception):
    """This history endpoint failed just now (server error, timeout, reset, unreadable
    answer): another endpoint may answer, or a later retry."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, read whole (within the cap)."""

    status: int
    content_type: str
    body: bytes
    retry_after_s: float | None


class PacedHistoryGet:
    """GETs of one history, each after a background slot at the host's pacer.

    ``ban_after_resets`` connection resets in a row before any answer are a ban (how
    providers that throttle by IP look): ``ban`` holds the pacer ``ban_hold_s``.
    """

    def __init__(
        self,
        ctx: FeederContext,
        pacer: Callable[[], RequestPacer],
        *,
        max_body_bytes: int,
        ban_hold_s: float,
        ban_after_resets: int,
    ) -> None:
        self._ctx = ctx
        self._pacer_of = pacer
        self._pacer: RequestPacer | None = None
        self._max = max_body_bytes
        self._ban_hold_s = ban_hold_s
        self._ban_after_resets = ban_after_resets
        self._resets = 0

    @property
    def pacer(self) -> RequestPacer:
        if self._pacer is None:
            self._pacer = self._pacer_of()
        return self._pacer

    async def get(self, session: aiohttp.ClientSession, url: URL) -> Answer:
        """The answer to ``url``; raises EndpointDown (no answer, too large) or, after
        resets enough for a ban, HistoryUnavailable."""
        await self.pacer.wait(background=True)
        try:
            async with session.get(url) as resp:
                self._resets = 0
                body = await self._read_capped(resp)
                return Answer(resp.status, resp.content_type, body, retry_after_s(resp.headers.get("Retry-After")))
        except (aiohttp.ClientError, OSError) as e:
            if is_reset(e):
                self._resets += 1
                if self._resets >= self._ban_after_resets:
                    raise self.ban(f"{describe(e)} ({self._resets} resets in a row)") from None
            raise EndpointDown(describe(e)) from None
        except TimeoutError:
            raise EndpointDown("timed out") from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._max
        body = await read_capped(resp, limit)
        if body is not None:
            return body
        self._ctx.malformed("history_body_too_large", f"HTTP {resp.status}: more than {limit} bytes")
        raise EndpointDown(f"history answer larger than {limit} bytes")

    def ban(self, reason: str, retry_after: float | None = None) -> HistoryUnavailable:
        """Hold every request to the host (live ones too) and say so: the exception to raise."""
        hold = max(self._ban_hold_s, retry_after or 0.0)
        self.pacer.hold(hold)
        self._resets = 0
        self._ctx.log.warning("history banned: %s; every request to the host held %.0f s", reason, hold)
        return HistoryUnavailable(f"banned: {reason}", retry_after_s=hold)
