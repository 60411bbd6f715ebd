"""What every EastMoney request shares: the per-host pacer, symbol routes, query, answer classes.

EastMoney bans IPs that ask too fast, so every request of every EastMoney source to one
host (stream opens, polls and history alike) waits its turn at one ``RequestPacer`` per host
and event loop (``pacer_for``, see ``feeders/pacing.py``): two sources together never go faster than the pacer, and a
ban seen by one holds the other too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.secid import SecidError, market_id, to_secid
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyRequestSettings
from services.feeder_gateway.feeders.lifecycle import FailureKind, SourceFailure
from services.feeder_gateway.feeders.pacing import RequestPacer, host_pacer


def pacer_for(settings: EastMoneyRequestSettings) -> RequestPacer:
    """The pacer of ``settings.base_url``'s host (and port) in the running event loop."""
    return host_pacer(settings.base_url, settings.min_request_interval_s, settings.request_jitter_s)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one canonical symbol goes on the wire."""

    secid: str
    code: str  # f12 as EastMoney echoes it
    volume_unit: int  # shares per f5 unit


class Routes:
    """Canonical symbol → Route, built once per symbol; an unmappable one reported once."""

    def __init__(self, settings: EastMoneyRequestSettings, ctx: FeederContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._routes: dict[str, Route] = {}
        self._unmappable: set[str] = set()

    def get(self, symbol: str, *, report: bool = True) -> Route | None:
        """The route of ``symbol``; None (counted once as malformed when ``report``) if none."""
        route = self._routes.get(symbol)
        if route is None:
            s = self._s
            try:
                secid = to_secid(symbol, s.us_exchange, s.us_default_exchange)
            except SecidError as e:
                if report and symbol not in self._unmappable:
                    self._unmappable.add(symbol)
                    self._ctx.malformed("unmappable_symbol", str(e))
                return None
            route = Route(secid, secid.partition(".")[2], s.volume_unit_shares.get(market_id(secid), 1))
            self._routes[symbol] = route
        return route

    def mappable(self, symbols: Iterable[str]) -> list[str]:
        return [sym for sym in symbols if self.get(sym) is not None]


def headers(settings: EastMoneyRequestSettings) -> dict[str, str]:
    return {"Referer": settings.referer, "User-Agent": settings.user_agent, "Accept": "*/*"}


def query(settings: EastMoneyRequestSettings, secids: Iterable[str], *, decimal: bool, as_list: bool) -> dict[str, str]:
    """The query of a ulist request (stream or snapshot)."""
    fields = dict.fromkeys((*settings.fields, *wire.REQUIRED_FIELDS))
    params = {"secids": ",".join(secids), "fields": ",".join(fields)}
    if as_list:
        params["np"] = "1"
    if decimal:
        params["fltt"] = "2"
    params.update(settings.extra_params)
    return params


def answer_failure(status: int, content_type: str, snippet: bytes, url: URL, name: str) -> Exception | None:
    """What an answer means: None (data), a ban, a configuration error, or a failure."""
    if status == 200 and content_type != "text/html":
        return None
    text = snippet[:80].decode("utf-8", "replace")
    if status in (403, 429) or (status == 200 and content_type == "text/html"):
        return SourceFailure(FailureKind.BANNED, f"HTTP {status} {content_type}: {text!r}: banned by EastMoney")
    if status in (400, 404, 405):
        return SourceFailure(
            FailureKind.CONFIGURATION,
            f"{name}: {url.with_query(None)} answered HTTP {status}: check 'base_url' (and 'fields', "
            f"'extra_params') under '{name}' in data_sources.yml",
            setting="base_url",
        )
    return ProviderError(f"HTTP {status}: {text!r}")


async def check_answer(resp: aiohttp.ClientResponse, name: str) -> None:
    """Raise by class unless ``resp`` carries data."""
    if resp.status == 200 and resp.content_type != "text/html":
        return
    snippet = await resp.content.read(200)
    failure = answer_failure(resp.status, resp.content_type, snippet, resp.url, name)
    if failure is not None:
        raise failure
