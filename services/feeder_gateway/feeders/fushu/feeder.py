"""The FuShu poller: GET /tick for the desired symbols with a Bearer key, change-only ticks."""

from __future__ import annotations

from datetime import datetime

import aiohttp
import msgspec

from services.feeder_gateway.feeders.base import FeederConfigError, ProviderError
from services.feeder_gateway.feeders.fushu.parse import (
    FushuParseError,
    canonical_symbol,
    decode_response,
    decode_tick,
    to_price_update,
)
from services.feeder_gateway.feeders.fushu.settings import FushuSettings
from services.feeder_gateway.feeders.fushu.wire import FushuTick
from services.feeder_gateway.feeders.lifecycle import FailureKind, SourceFailure
from services.feeder_gateway.feeders.polling import HttpPollingFeeder, PollSet
from shared.dto import PriceUpdate


class FushuFeeder(HttpPollingFeeder[FushuSettings, FushuTick]):
    """Polls ``/tick`` for every desired symbol; an item equal to the symbol's previous one
    (a snapshot repeated between trades) is not re-emitted.

    HTTP 401, and 403 before the source ever answered, mean a wrong or unentitled key (a
    configuration error); 403 from a source that has worked is a ban (held, retried); 429
    a throttle.
    """

    type_name = "fushu"
    settings_model = FushuSettings
    path = "/tick?symbols={keys}"

    @property
    def _keys_per_request(self) -> int:
        return self.settings.max_symbols_per_request

    def _key_hint(self) -> str:
        return f"check 'api_key' in secure.yml under '{self.ctx.name}'"

    def _session_headers(self) -> dict[str, str]:
        key = self.settings.api_key
        if key is None or not key.get_secret_value():
            raise FeederConfigError(f"{self.ctx.name}: no API key: {self._key_hint()}")
        return {"Authorization": f"Bearer {key.get_secret_value()}", "Accept": "application/json"}

    def _http_error(self, resp: aiohttp.ClientResponse, body: bytes) -> Exception:
        if resp.status == 403 and self.link.worked:
            return SourceFailure(FailureKind.BANNED, "HTTP 403 forbidden from a source that worked: banned")
        if resp.status in (401, 403):
            return SourceFailure(
                FailureKind.CONFIGURATION,
                f"{self.ctx.name}: authentication failed (HTTP {resp.status}): {self._key_hint()}",
                setting="api_key",
            )
        return super()._http_error(resp, body)

    def _parse(self, bodies: list[bytes], polled: PollSet[FushuTick], receive_time: datetime) -> list[PriceUpdate]:
        ctx = self.ctx
        last = polled.last
        items: list[msgspec.Raw] = []
        for body in bodies:
            try:
                items.extend(decode_response(body))
            except FushuParseError as e:
                ctx.malformed(e.reason, body[:160])
                raise ProviderError(f"unreadable response: {e}") from None
        batch: list[PriceUpdate] = []
        for raw in items:
            try:
                tick = decode_tick(raw)
                symbol = canonical_symbol(tick)
                if symbol not in polled.keys:
                    raise FushuParseError("unrequested_symbol", symbol)
                if last.get(symbol) == tick:
                    continue
                batch.append(to_price_update(tick, symbol, ctx.name, receive_time))
                last[symbol] = tick
            except FushuParseError as e:
                ctx.malformed(e.reason, bytes(raw))
        return batch
