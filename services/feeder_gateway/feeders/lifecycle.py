"""The reconnecting-source driver: connect, status, backoff by failure class, resubscribe, gap.

Every network feeder runs on this one loop. A provider supplies only how to open a
connection (``open_connection``), how a connection follows the wanted symbols
(``Connection.sync``), its batches (``Connection.batches``) and what a failure means
(``classify`` → a ``FailureKind``). The loop's memory (``SourceLink``: backoff, holds,
last tick, whether the source ever worked) lives on the feeder, so it survives every
restart of the generator, whoever caused it (a drop, a ban, the market's watchdog, a
failover and back): each new connection after the first reports ``resubscribed`` and a
``gap`` naming the last tick before the hole, and a hold is waited out by the next
generator too.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from services.feeder_gateway.feeders.base import Feeder, FeederConfigError, FeederContext, ProviderError, SettingsT
from shared.backoff import Backoff
from shared.dto import PriceUpdate, utcnow
from shared.tasks import cancel_and_wait


class FailureKind(StrEnum):
    """What a failure means for the next attempt."""

    CONFIGURATION = "configuration"
    """Our settings are wrong (key, plan, URL): stop and name the setting; once the source
    has worked, a status code saying so is held and retried instead (with an alert)."""
    RATE_LIMITED = "rate_limited"
    """Asking too fast: wait at least the provider's retry-after (or the default pause)."""
    BANNED = "banned"
    """Refused for a while (403, captcha, resets): a long jittered hold, growing per ban."""
    SESSION_HELD = "session_held"
    """Another session holds the plan's connection (Alpaca 406): wait past the hold."""
    TRANSIENT = "transient"
    """A drop, a timeout, a server error: exponential backoff with full jitter."""


class LinkState(StrEnum):
    IDLE = "idle"  # nothing wanted: no connection held
    CONNECTING = "connecting"
    UP = "up"
    WAITING = "waiting"  # backing off or held
    STOPPED = "stopped"  # configuration error


# The status a failure of each class is reported as.
FAILURE_STATUS: dict[FailureKind, str] = {
    FailureKind.CONFIGURATION: "held",
    FailureKind.RATE_LIMITED: "rate_limited",
    FailureKind.BANNED: "banned",
    FailureKind.SESSION_HELD: "session_held",
    FailureKind.TRANSIENT: "disconnected",
}


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    message: str
    setting: str | None = None  # CONFIGURATION: the setting to fix
    retry_after_s: float | None = None  # RATE_LIMITED / SESSION_HELD: the provider's word


class SourceFailure(Exception):
    """A provider failure already classified by the code that saw it."""

    def __init__(
        self, kind: FailureKind, message: str, *, setting: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.failure = Failure(kind, message, setting, retry_after_s)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long each failure class waits (built by each provider from its settings)."""

    backoff_base_s: float
    backoff_cap_s: float
    healthy_after_s: float
    rate_limited_pause_s: float
    ban_hold_s: float
    """Least hold after a ban (or a configuration refusal of a source that has worked)..."""
    ban_jitter_cap_s: float
    """...plus uniform(0, ban_hold_s * 2**(holds in a row - 1)), capped by this."""
    session_hold_s: float = 0.0
    session_jitter_s: float = 0.0
    first_retry_s: float | None = None
    """TRANSIENT: the first retry after a healthy run waits only uniform(0, this) (None:
    the ordinary backoff); later ones back off from ``backoff_base_s``."""


class Connection(Protocol):
    """One live connection of a provider."""

    detail: dict[str, Any]
    """What the ``connected`` status says about it (URL, mode...)."""
    up_on_first_batch: ClassVar[bool]
    """True: the connection counts as up only once it delivered (pollers: a poll answered)."""

    async def sync(self, wanted: frozenset[str]) -> None:
        """Make the provider send the wanted symbols (called at open and on each change)."""
        ...

    def batches(self) -> AsyncIterator[list[PriceUpdate]]:
        """Tick batches until the connection fails (raise) or ends."""
        ...

    def abort(self) -> None:
        """Make ``batches`` end promptly (the wanted-set follower failed)."""
        ...

    async def close(self) -> None: ...


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class SourceLink:
    """The driver's memory of one source, kept across generator runs."""

    backoff: Backoff
    holds: Backoff  # ban and configuration holds: their jitter grows per hold in a row
    state: LinkState = LinkState.IDLE
    worked: bool = False  # some connection delivered (a batch, a poll answered) once
    started: bool = False  # the next connection is a resubscribe
    last_tick: datetime | None = None  # provider time of the newest tick yielded
    down_since: datetime | None = None
    hold_until: float = 0.0  # loop time before which nothing is sent
    rng: random.Random = field(default_factory=random.Random)


class ReconnectingFeeder(Feeder[SettingsT]):
    """A feeder driven by the reconnect loop; subclasses supply the protocol."""

    def __init__(self, settings: SettingsT, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        p = self.retry_policy()
        self.link = SourceLink(
            Backoff(p.backoff_base_s, p.backoff_cap_s, p.healthy_after_s, first_s=p.first_retry_s),
            Backoff(p.ban_hold_s or 1.0, p.ban_jitter_cap_s, p.healthy_after_s),
        )
        self._follow_error: Exception | None = None

    # ---- what a provider supplies -------------------------------------------------------

    @abc.abstractmethod
    def retry_policy(self) -> RetryPolicy: ...

    @abc.abstractmethod
    async def open_connection(self) -> Connection:
        """Connect and authenticate; raise on failure (``classify`` judges it)."""

    def on_hold(self, failure: Failure, delay_s: float) -> None:
        """Called with every failure's hold before the next attempt (e.g. to hold a
        request pacer shared with other sources of the same host)."""

    def classify(self, exc: Exception) -> Failure | None:
        """What a failure means; None: not a provider failure (a bug: it propagates)."""
        if isinstance(exc, SourceFailure):
            return exc.failure
        if isinstance(exc, FeederConfigError):
            return Failure(FailureKind.CONFIGURATION, str(exc))
        if isinstance(exc, OSError | TimeoutError | ProviderError):
            return Failure(FailureKind.TRANSIENT, describe(exc))
        return None

    # ---- the loop ---------------------------------------------------------------------------

    async def ticks(self) -> AsyncGenerator[list[PriceUpdate], None]:
        link, ctx, wanted = self.link, self.ctx, self.wanted
        tick_count = ctx.metrics.ticks.labels(ctx.name)
        loop = asyncio.get_running_loop()
        try:
            while True:
                wait = link.hold_until - loop.time()
                if wait > 0:  # a hold set by this run or an earlier one
                    link.state = LinkState.WAITING
                    await asyncio.sleep(wait)
                if not wanted.symbols:  # nothing wanted: hold no connection
                    link.state = LinkState.IDLE
                    await wanted.wait_change(wanted.version)
                    continue
                link.state = LinkState.CONNECTING
                conn: Connection | None = None
                follower: asyncio.Task[None] | None = None
                self._follow_error = None
                try:
                    conn = await self.open_connection()
                    version = wanted.version
                    await conn.sync(wanted.symbols)
                    if not conn.up_on_first_batch:
                        self._up(conn)
                    follower = asyncio.create_task(self._follow(conn, version), name=f"feeder.{ctx.name}.follow")
                    async for batch in conn.batches():
                        if link.state is not LinkState.UP:
                            self._up(conn)
                        link.worked = True
                        if batch:
                            tick_count.inc(len(batch))
                            newest = max(t.timestamp for t in batch)
                            if link.last_tick is None or newest > link.last_tick:
                                link.last_tick = newest
                        yield batch
                    raise ProviderError("connection ended by the provider")
                except Exception as e:
                    failure = self.classify(self._follow_error or e)
                    if failure is None:
                        raise
                    self._down()
                    self._failed(failure, loop.time())
                finally:
                    if follower is not None:
                        await cancel_and_wait([follower])
                    if conn is not None:
                        await conn.close()
        finally:
            if link.state is LinkState.UP:
                self._down()
                ctx.emit_status("disconnected", {"error": "feed closed"})
            if link.state is not LinkState.STOPPED:
                link.state = LinkState.IDLE
            self.connected = False

    async def _follow(self, conn: Connection, version: int) -> None:
        """Apply every change of the wanted set to the live connection."""
        wanted = self.wanted
        applied = wanted.symbols
        try:
            while True:
                await wanted.wait_change(version)
                version, symbols = wanted.version, wanted.symbols
                await conn.sync(symbols)
                added, removed = sorted(symbols - applied), sorted(applied - symbols)
                applied = symbols
                self.ctx.log.info("wanted symbols: %d (+%d -%d)", len(symbols), len(added), len(removed))
                if self.link.state is LinkState.UP:
                    self.ctx.emit_status(
                        "subscription_changed", {"symbols": len(symbols), "added": added[:20], "removed": removed[:20]}
                    )
        except Exception as e:  # the connection is broken: end it, the loop reconnects
            self._follow_error = e
            conn.abort()

    def _up(self, conn: Connection) -> None:
        link, ctx = self.link, self.ctx
        link.state = LinkState.UP
        self.connected = True
        link.backoff.connected()
        link.holds.connected()
        ctx.emit_status("connected", conn.detail)
        symbols = len(self.wanted.symbols)
        if link.started:
            ctx.emit_status("resubscribed", {"symbols": symbols})
            ctx.emit_status(
                "gap",
                {
                    "last_tick": link.last_tick.isoformat() if link.last_tick else None,
                    "disconnected_at": link.down_since.isoformat() if link.down_since else None,
                },
            )
            if ctx.on_gap is not None:
                ctx.on_gap()
        else:
            ctx.emit_status("subscribed", {"symbols": symbols})
        link.started = True

    def _down(self) -> None:
        if self.link.state is LinkState.UP:
            self.link.down_since = utcnow()
        self.link.state = LinkState.WAITING
        self.connected = False

    def _failed(self, failure: Failure, now: float) -> None:
        """Report a failure and set the hold before the next attempt (or stop)."""
        link, ctx, p = self.link, self.ctx, self.retry_policy()
        kind = failure.kind
        if kind is FailureKind.CONFIGURATION and not link.worked:
            link.state = LinkState.STOPPED
            ctx.log.error("configuration rejected: %s", failure.message)
            ctx.emit_status("config_error", {"error": failure.message, "setting": failure.setting})
            raise FeederConfigError(failure.message)
        ctx.metrics.reconnects.labels(ctx.name).inc()
        if kind is FailureKind.BANNED or kind is FailureKind.CONFIGURATION:
            delay = p.ban_hold_s + min(link.holds.next_delay(), p.ban_jitter_cap_s)
        elif kind is FailureKind.SESSION_HELD:
            hold = failure.retry_after_s if failure.retry_after_s is not None else p.session_hold_s
            delay = hold + link.rng.uniform(0, p.session_jitter_s)
        elif kind is FailureKind.RATE_LIMITED:
            pause = failure.retry_after_s if failure.retry_after_s is not None else p.rate_limited_pause_s
            delay = max(link.backoff.next_delay(), pause)
        else:
            delay = link.backoff.next_delay()
        link.hold_until = now + delay
        self.on_hold(failure, delay)
        state = FAILURE_STATUS[kind]
        detail = {"error": failure.message, "class": kind.value, "retry_in_s": round(delay, 3)}
        ctx.log.log(
            logging.WARNING if kind is FailureKind.TRANSIENT else logging.ERROR,
            "%s (%s); retry in %.2fs",
            state,
            failure.message,
            delay,
        )
        ctx.emit_status(state, detail)
        if kind in (FailureKind.BANNED, FailureKind.CONFIGURATION):
            ctx.alert(
                f"source_{state}",
                f"{ctx.name} ({ctx.market}) refused us: {failure.message}; holding {delay:.1f}s then retrying",
                detail,
            )
