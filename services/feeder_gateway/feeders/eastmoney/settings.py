"""Settings of the two EastMoney sources: ``type: eastmoney`` (SSE) and ``type: eastmoney_poll``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.polling_settings import HttpPollingSettings
from shared.config import Strict

UsExchange = Literal[105, 106, 107]


class EastMoneyRequestSettings(Strict):
    """What every EastMoney request carries and how fast requests may go (both types)."""

    base_url: str = "https://push2.eastmoney.com"
    """Scheme and host (a numbered shard like ``https://82.push2.eastmoney.com`` works too).
    Every EastMoney source of one host shares one request pacer in the process."""
    fields: tuple[str, ...] = wire.DEFAULT_FIELDS
    """Field codes to ask for (``f2``...); f2, f12, f13, f124 and the decimal places (f59,
    f152, f1: servers differ, the first one returned is used) are always added. Add
    ``f19``/``f20``/``f39``/``f40`` for best bid/ask price and volume."""
    min_request_interval_s: float = Field(0.5, ge=0, le=60)
    """Requests to this host (stream opens, polls, of every EastMoney source of the
    process) are at least this far apart; sources that differ: the largest applies."""
    request_jitter_s: float = Field(0.25, ge=0, le=60)
    """Plus a uniform random extra of up to this much, so requests do not look robotic."""
    max_secids_per_request: int = Field(100, ge=1, le=500)
    """Larger symbol sets are split over several streams/requests of at most this many."""
    referer: str = "https://quote.eastmoney.com/"
    """``Referer`` header sent with every request (EastMoney expects its quote site)."""
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    """``User-Agent`` header sent with every request."""
    extra_params: dict[str, str] = {}
    """Query parameters added to every request (e.g. ``ut``, ``invt`` as browsers send)."""
    us_exchange: dict[str, UsExchange] = {}
    """US ticker → EastMoney market id (105 NASDAQ, 106 NYSE, 107 AMEX); e.g. ``{IBM: 106}``."""
    us_default_exchange: UsExchange = 105
    """Market id of US tickers not in ``us_exchange``."""
    volume_unit_shares: dict[int, int] = {0: 100, 1: 100}
    """Shares per unit of f5/f20/f40 by market id: A-shares (0, 1) report lots of 100;
    markets not listed (HK 116, US 105-107) are taken to report shares."""
    history_base_url: str = "https://push2his.eastmoney.com"
    """Scheme and host of the minute history (kline/trends2, gap repair). Its requests wait
    at the pacer of ``base_url``'s host, as background requests: EastMoney bans by IP."""
    history_timeout_s: float = Field(10.0, gt=0)
    """Whole-request timeout of one history request; a hung one counts as unavailable."""
    history_max_body_bytes: int = Field(4 * 2**20, ge=4096)
    """Largest history answer read; a larger one is malformed and the endpoint unavailable."""
    history_settle_s: float = Field(10.0, ge=0)
    """A minute's history line is final this long after the minute ends."""
    history_reach_days: float = Field(7.0, gt=0)
    """Windows starting longer ago than this are out of reach (klt=1 klines and trends2's
    5 trading days are short-lived)."""

    @field_validator("history_base_url")
    @classmethod
    def _history_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("history_base_url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("fields")
    @classmethod
    def _field_codes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for f in v:
            if not (f.startswith("f") and f[1:].isdigit()):
                raise ValueError(f"field code {f!r} is not of the form f<number>")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")


class EastMoneySettings(EastMoneyRequestSettings):
    """Settings of a ``type: eastmoney`` source: ``/api/qt/ulist/sse`` streams (no key)."""

    fltt: Literal[0, 2] = 0
    """2: ask for decimal values (``fltt=2``); 0: integer values scaled by ``10**f59``
    (the parameter is left out), as EastMoney's own pages stream them."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """TCP+TLS connect timeout of every stream open."""
    read_timeout_s: float = Field(90.0, gt=0)
    """Connection guard: no byte at all (no event, no heartbeat) this long → the socket is
    dead and the stream reopened. Silence with heartbeats is the market watchdog's
    (``stale_after_s``)."""
    first_reconnect_s: float = Field(0.25, ge=0)
    """After a drop of a healthy stream the first reopen waits only a random 0..this (plus
    the pacer); later ones back off from ``backoff_base_s``."""
    backoff_base_s: float = Field(1.0, gt=0)
    """Reopen delay ceiling of the second failure in a row: exponential, full jitter."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Ceiling of the ordinary backoff."""
    healthy_after_s: float = Field(30.0, ge=0)
    """A connection up this long resets the backoff to its base."""
    rate_limited_pause_s: float = Field(30.0, ge=0)
    """Least wait after a throttle that is not a ban (none known for EastMoney yet)."""
    ban_hold_s: float = Field(120.0, ge=0)
    """A ban (HTTP 403/429, an HTML page instead of data, ``ban_after_resets`` resets in a
    row) holds every request to the host this long..."""
    ban_jitter_cap_s: float = Field(900.0, ge=0)
    """...plus a random extra of up to ``ban_hold_s * 2**(bans in a row - 1)``, capped by this."""
    ban_after_resets: int = Field(2, ge=1)
    """Consecutive connection resets before any answer that count as a ban."""
    stale_after_s: float | None = Field(60.0, gt=0)
    """Market watchdog: no tick this long in session (with symbols) → restart or fail over.
    Ticks come only when a quote changes, so a set of a few illiquid symbols can be quiet
    this long: raise it, or unset it, for such sets."""
    max_event_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    """An event larger than this is refused and the stream reopened."""
    queue_batches: int = Field(64, ge=1, le=100_000)
    """Batches buffered between the streams and the consumer; a full buffer makes the
    streams wait (TCP pushes back on the server), nothing is dropped here."""


class EastMoneyPollSettings(HttpPollingSettings, EastMoneyRequestSettings):
    """Settings of a ``type: eastmoney_poll`` source: ``/api/qt/ulist.np/get`` snapshots."""

    base_url: str = "https://push2.eastmoney.com"
    """Scheme and host; see ``eastmoney``."""
    poll_interval_s: float = Field(3.0, gt=0, le=3600)
    """A full round over every chunk starts at most this often."""
    ban_hold_s: float = Field(120.0, ge=0)
    """A ban (HTTP 403/429, an HTML page instead of data, ``ban_after_resets`` resets in a
    row) holds every request to the host this long..."""
    ban_jitter_cap_s: float = Field(900.0, ge=0)
    """...plus a random extra of up to ``ban_hold_s * 2**(bans in a row - 1)``, capped by this."""
    fltt: Literal[0, 2] = 2
    """2: ask for decimal values (``fltt=2``); 0: integers scaled by ``10**f59``."""
    diff_as_list: bool = True
    """Pass ``np=1`` (``diff`` as a list); false: ``diff`` keyed by position."""
