"""The Tencent poller: batched GET /q=..., GBK lines, change-only delayed ticks."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import aiohttp

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.history import MinuteHistory
from services.feeder_gateway.feeders.lifecycle import Failure, FailureKind, SourceFailure
from services.feeder_gateway.feeders.pacing import RequestPacer, host_pacer
from services.feeder_gateway.feeders.polling import HttpPollingFeeder, PollSet
from services.feeder_gateway.feeders.tencent.history import TencentHistory
from services.feeder_gateway.feeders.tencent.parse import (
    TencentParseError,
    UnknownCode,
    decode_body,
    parse_line,
    split_lines,
    to_price_update,
)
from services.feeder_gateway.feeders.tencent.settings import TencentSettings
from services.feeder_gateway.feeders.tencent.wire import (
    F_LAST,
    F_TIME,
    F_VOLUME,
    NOMINAL_DELAY_S,
    code_of,
)
from shared.dto import PriceUpdate

_QuoteKey = tuple[str, str, str]  # (time, last, volume) as sent: unchanged key → no tick


class TencentFeeder(HttpPollingFeeder[TencentSettings, _QuoteKey]):
    """Polls every desired code; a line whose time, last price and volume equal the code's
    previous ones (Tencent repeats a snapshot until the stock trades) is not re-emitted.

    The first ticks of each connection emit status ``delayed`` with the observed lag.
    """

    type_name = "tencent"
    settings_model = TencentSettings
    path = "/q={keys}"

    def __init__(self, settings: TencentSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._missing: frozenset[str] = frozenset()  # codes Tencent did not answer last poll
        self._pacer: RequestPacer | None = None
        self._history = TencentHistory(settings, ctx)

    def history(self) -> MinuteHistory:
        """Today's minute lines on ``history_base_url`` (``history.py``)."""
        return self._history

    async def _before_request(self) -> None:
        """Every poll request waits its turn at the quote host's pacer (shared with history)."""
        if self._pacer is None:
            s = self.settings
            self._pacer = host_pacer(s.base_url, s.min_request_interval_s, s.request_jitter_s)
        await self._pacer.wait()

    def on_hold(self, failure: Failure, delay_s: float) -> None:
        if failure.kind is FailureKind.BANNED and self._pacer is not None:
            self._pacer.hold(delay_s)

    @property
    def _keys_per_request(self) -> int:
        return self.settings.max_codes_per_request

    def _wire_key(self, symbol: str) -> str | None:
        return code_of(symbol)

    def _http_error(self, resp: aiohttp.ClientResponse, body: bytes) -> Exception:
        if resp.status == 403:
            return SourceFailure(FailureKind.BANNED, "HTTP 403: banned by the provider")
        return super()._http_error(resp, body)

    def _parse(self, bodies: list[bytes], polled: PollSet[_QuoteKey], receive_time: datetime) -> list[PriceUpdate]:
        ctx = self.ctx
        keys, last = polled.keys, polled.last
        parsed: list[tuple[str, list[str]]] = []
        unknown = 0
        for body in bodies:
            text, clean = decode_body(body, self.settings.encoding)
            if not clean:
                ctx.malformed("bad_encoding", body[:160])
            answered = 0
            for line in split_lines(text):
                try:
                    parsed.append(parse_line(line))
                    answered += 1
                except UnknownCode:
                    unknown += 1
                    answered += 1
                except TencentParseError as e:
                    ctx.malformed(e.reason, line)
            if not answered:
                ctx.malformed("bad_response", body[:160])
                raise ProviderError("response without a single quote line")
        if unknown:  # counted every poll, logged only when the set of unanswered codes changes
            ctx.metrics.malformed.labels(ctx.name, "unknown_code").inc(unknown)
        self._note_missing(keys, {code for code, _ in parsed})
        batch: list[PriceUpdate] = []
        for code, fields in parsed:
            if code not in keys:
                ctx.malformed("unrequested_code", "~".join(fields[:40]))
                continue
            key = (fields[F_TIME], fields[F_LAST], fields[F_VOLUME])
            if last.get(code) != key:
                try:
                    batch.append(to_price_update(code, fields, ctx.name, receive_time))
                except TencentParseError as e:
                    ctx.malformed(e.reason, "~".join(fields[:40]))
                else:
                    last[code] = key
        return batch

    def _note_missing(self, keys: Mapping[str, str], answered: set[str]) -> None:
        """Warn when the set of requested codes Tencent gave no quote for changes."""
        missing = frozenset(keys).difference(answered)
        if missing != self._missing:
            self._missing = missing
            if missing:
                self.ctx.log.warning(
                    "no quote for %d symbols (unknown to Tencent?): %s",
                    len(missing),
                    ", ".join(sorted(keys[c] for c in missing)[:20]),
                )

    def _on_first_ticks(self, batch: list[PriceUpdate]) -> None:
        newest = max(t.timestamp for t in batch)
        lag_s = (batch[0].receive_time or newest) - newest
        self.ctx.emit_status(
            "delayed",
            {"nominal_delay_s": NOMINAL_DELAY_S, "observed_lag_s": round(lag_s.total_seconds(), 1)},
        )
