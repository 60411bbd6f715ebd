"""The two thin EastMoney feeders on the reconnect driver: ``eastmoney`` (SSE) and ``eastmoney_poll``.

Both pace every request through the host's one ``RequestPacer`` (``request.py``) and
class answers alike: HTTP 403/429 or an HTML page instead of data (a captcha) is a ban,
and so are ``ban_after_resets`` connection resets in a row before any answer: a long
jittered hold of every request to the host (the pacer is held too, so another EastMoney
source of the host waits as well), status ``banned`` and an alert, then a retry. HTTP
400/404/405 is a configuration error naming ``base_url``. Connecting, backoff, holds,
resubscribe and gap reports are the driver's (``lifecycle.py``); silence is the market
watchdog's. Fall back from SSE to polling with a second source in data_sources.yml.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.history import EastMoneyHistory
from services.feeder_gateway.feeders.eastmoney.parse import QuoteError, decode_envelope, quote_to_update, symbol_of
from services.feeder_gateway.feeders.eastmoney.request import (
    Routes,
    answer_failure,
    headers,
    pacer_for,
    query,
)
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyPollSettings, EastMoneySettings
from services.feeder_gateway.feeders.eastmoney.stream import SseConnection
from services.feeder_gateway.feeders.history import MinuteHistory
from services.feeder_gateway.feeders.lifecycle import (
    Failure,
    FailureKind,
    ReconnectingFeeder,
    RetryPolicy,
    describe,
)
from services.feeder_gateway.feeders.pacing import RequestPacer
from services.feeder_gateway.feeders.polling import HttpPollingFeeder, PollSet, is_reset
from shared.dto import PriceUpdate


class EastMoneyFeeder(ReconnectingFeeder[EastMoneySettings]):
    """EastMoney push2 quotes over ``/api/qt/ulist/sse`` streams (``stream.py``)."""

    type_name = "eastmoney"
    settings_model = EastMoneySettings
    follows_sessions: ClassVar[bool] = True

    def __init__(self, settings: EastMoneySettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self.routes = Routes(settings, ctx)
        self._resets = 0  # consecutive resets before an answer
        self._conn: SseConnection | None = None
        self._pacer: RequestPacer | None = None
        self._history = EastMoneyHistory(
            settings, ctx, self.routes, ban_hold_s=settings.ban_hold_s, ban_after_resets=settings.ban_after_resets
        )

    def history(self) -> MinuteHistory:
        """kline/trends2 minutes on ``history_base_url`` (``history.py``)."""
        return self._history

    @property
    def stale_after_s(self) -> float | None:
        return self.settings.stale_after_s

    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            backoff_base_s=s.backoff_base_s,
            backoff_cap_s=s.backoff_cap_s,
            healthy_after_s=s.healthy_after_s,
            rate_limited_pause_s=s.rate_limited_pause_s,
            ban_hold_s=s.ban_hold_s,
            ban_jitter_cap_s=s.ban_jitter_cap_s,
            first_retry_s=s.first_reconnect_s,
        )

    async def open_connection(self) -> SseConnection:
        s = self.settings
        self._pacer = pacer_for(s)
        session = aiohttp.ClientSession(headers=headers(s), connector=aiohttp.TCPConnector(limit=0))
        self._conn = SseConnection(s, self.ctx, self.routes, self._pacer, session)
        return self._conn

    def classify(self, exc: Exception) -> Failure | None:
        answered = self._conn is not None and self._conn.answered
        if not answered and isinstance(exc, aiohttp.ClientError | OSError) and is_reset(exc):
            self._resets += 1
            if self._resets >= self.settings.ban_after_resets:
                return Failure(FailureKind.BANNED, f"{describe(exc)} ({self._resets} resets in a row)")
        elif answered:
            self._resets = 0
        if isinstance(exc, aiohttp.ClientError):
            return Failure(FailureKind.TRANSIENT, describe(exc))
        return super().classify(exc)

    def on_hold(self, failure: Failure, delay_s: float) -> None:
        if failure.kind is FailureKind.BANNED and self._pacer is not None:
            self._pacer.hold(delay_s)


class EastMoneyPollFeeder(HttpPollingFeeder[EastMoneyPollSettings, wire.Quote]):
    """EastMoney push2 snapshots: ``/api/qt/ulist.np/get`` for every wanted secid each
    ``poll_interval_s``, ``diff`` as a list (``np=1``) or keyed by position; a security
    whose snapshot is unchanged is not re-emitted."""

    type_name = "eastmoney_poll"
    settings_model = EastMoneyPollSettings
    path = wire.SNAPSHOT_PATH

    def __init__(self, settings: EastMoneyPollSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self.routes = Routes(settings, ctx)
        self._pacer: RequestPacer | None = None
        self._history = EastMoneyHistory(
            settings, ctx, self.routes, ban_hold_s=settings.ban_hold_s, ban_after_resets=settings.ban_after_resets
        )

    def history(self) -> MinuteHistory:
        """kline/trends2 minutes on ``history_base_url`` (``history.py``)."""
        return self._history

    @property
    def _keys_per_request(self) -> int:
        return self.settings.max_secids_per_request

    def _wire_key(self, symbol: str) -> str | None:
        route = self.routes.get(symbol, report=False)
        return None if route is None else route.secid

    def _session_headers(self) -> dict[str, str]:
        return headers(self.settings)

    def _url(self, keys: list[str]) -> URL:
        s = self.settings
        params = query(s, keys, decimal=s.fltt == 2, as_list=s.diff_as_list)
        return URL(s.base_url + wire.SNAPSHOT_PATH).with_query(params)

    async def _before_request(self) -> None:
        if self._pacer is None:
            self._pacer = pacer_for(self.settings)
        await self._pacer.wait()

    def _answer_error(self, resp: aiohttp.ClientResponse, body: bytes) -> Exception | None:
        return answer_failure(resp.status, resp.content_type, body[:200], resp.url, self.ctx.name)

    def on_hold(self, failure: Failure, delay_s: float) -> None:
        if failure.kind is FailureKind.BANNED and self._pacer is not None:
            self._pacer.hold(delay_s)

    def _parse(self, bodies: list[bytes], polled: PollSet[wire.Quote], receive_time: datetime) -> list[PriceUpdate]:
        """Every answer decoded (an rc refusal fails the poll first), then the changed quotes."""
        ctx = self.ctx
        keys = list(polled.keys)
        size = self._keys_per_request
        entries: list[tuple[str, wire.Quote]] = []  # (secid, quote)
        for i, body in enumerate(bodies):
            secids = keys[i * size : (i + 1) * size]
            try:
                env = decode_envelope(body)
            except QuoteError as e:
                ctx.malformed(e.reason, body[:200])
                raise ProviderError(f"unreadable snapshot: {e}") from None
            if env.rc != 0:
                raise ProviderError(f"snapshot answered rc={env.rc}")
            diff = env.data.diff if env.data is not None else None
            if diff is not None:
                entries += self._located(diff, secids, polled.keys)
        batch: list[PriceUpdate] = []
        last, decimal, name = polled.last, self.settings.fltt == 2, ctx.name
        for secid, q in entries:
            if last.get(secid) == q:
                continue
            last[secid] = q  # a bad quote is reported once, not every poll
            symbol = polled.keys[secid]
            route = self.routes.get(symbol)
            assert route is not None  # only mappable symbols are polled
            try:
                update = quote_to_update(
                    symbol, q, receive_time, name, decimal_values=decimal, volume_unit=route.volume_unit
                )
            except QuoteError as e:
                ctx.malformed(e.reason, repr(q)[:200])
                continue
            if update is not None:
                batch.append(update)
        return batch

    def _located(
        self, diff: dict[str, wire.Quote] | list[wire.Quote], secids: list[str], symbols: dict[str, str]
    ) -> list[tuple[str, wire.Quote]]:
        """The (secid, quote) pairs of one answer: a list by f13/f12, an object by position."""
        ctx = self.ctx
        out: list[tuple[str, wire.Quote]] = []
        if isinstance(diff, list):
            requested = {secid: symbols[secid] for secid in secids}
            secid_of = {sym: secid for secid, sym in requested.items()}
            for q in diff:
                try:
                    sym = symbol_of(q, requested) if type(q) is dict else ""
                except QuoteError as e:
                    ctx.malformed(e.reason, repr(q)[:200])
                    continue
                secid = secid_of.get(sym)
                if secid is None:
                    ctx.malformed("unrequested_security", repr(q)[:200])
                    continue
                out.append((secid, q))
            return out
        for key, q in diff.items():
            if not key.isdigit() or int(key) >= len(secids) or type(q) is not dict:
                ctx.malformed("bad_position", f"{key}: {q!r}"[:200])
                continue
            out.append((secids[int(key)], q))
        return out
