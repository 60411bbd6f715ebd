"""The EastMoney SSE connection: one ``/api/qt/ulist/sse`` stream per chunk of secids, merged deltas.

``SseConnection`` is one connection of the reconnect driver: ``sync`` plans the chunks of
at most ``max_secids_per_request`` secids (unchanged chunks stay put) and (re)opens the
streams whose chunk changed, each open paced by the host's pacer; ``batches`` yields the
ticks of every stream; any stream failing ends the connection (the driver reopens them
all, reports ``resubscribed`` and the ``gap``). ``ChunkCache`` is a stream's per-position
state: the first event (``full: 1``) fills it, deltas (``full: 0``, only changed keys,
usually without f12/f13) merge into it, and every position whose merged state changed
becomes a tick built from the merged state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.parse import QuoteError, apply_diff, decode_envelope, quote_to_update
from services.feeder_gateway.feeders.eastmoney.request import Route, Routes, check_answer, query
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneySettings
from services.feeder_gateway.feeders.lifecycle import describe
from services.feeder_gateway.feeders.pacing import RequestPacer
from shared.dto import PriceUpdate, utcnow
from shared.tasks import cancel_and_wait


def plan_requests(
    current: list[tuple[str, ...]], wanted: Iterable[str], max_per_request: int
) -> list[tuple[str, ...]]:
    """The new chunks for ``wanted``, aligned with ``current`` so unchanged chunks stay put.

    Entry i is chunk i after the change (empty: close it); entries past ``len(current)``
    are new chunks. Removed symbols leave their chunk; added ones fill chunks with room
    first (sorted, so the plan is deterministic), then open new chunks.
    """
    want = set(wanted)
    plan = [tuple(s for s in chunk if s in want) for chunk in current]
    placed = {s for chunk in plan for s in chunk}
    to_add = sorted(want - placed)
    for i, chunk in enumerate(plan):
        room = max_per_request - len(chunk)
        if room > 0 and to_add and chunk:
            plan[i] = chunk + tuple(to_add[:room])
            to_add = to_add[room:]
    while to_add:
        plan.append(tuple(to_add[:max_per_request]))
        to_add = to_add[max_per_request:]
    return plan


class ChunkCache:
    """One stream's merged quotes by request position; events in, ticks out (no I/O)."""

    def __init__(
        self, symbols: tuple[str, ...], routes: list[Route], ctx: FeederContext, decimal_values: bool
    ) -> None:
        self.symbols = symbols
        self.routes = routes
        self._ctx = ctx
        self._decimal = decimal_values
        self.cache: dict[int, wire.Quote] = {}

    def on_event(self, payload: bytes, now: datetime) -> list[PriceUpdate]:
        """One SSE ``data`` payload → ticks of the positions whose merged state changed."""
        ctx = self._ctx
        try:
            env = decode_envelope(payload)
        except QuoteError as e:
            ctx.malformed(e.reason, payload[:200])
            return []
        if env.rc != 0:
            raise ProviderError(f"stream event rc={env.rc}")
        data = env.data
        if data is None or data.diff is None:
            return []  # heartbeat
        diff = data.diff
        full = env.full == 1
        if isinstance(diff, list):
            diff = self._keyed(diff)
        changed, bad = apply_diff(self.cache, diff, len(self.symbols), full)
        for key in bad:
            ctx.malformed("bad_position", f"{key}: {diff.get(key)!r}"[:200])
        batch: list[PriceUpdate] = []
        cache, routes, name, decimal = self.cache, self.routes, ctx.name, self._decimal
        for pos in changed:
            q = cache[pos]
            route = routes[pos]
            if full:
                code = q.get(wire.CODE)
                if code is not None and code != route.code:
                    ctx.malformed("position_mismatch", f"{pos}: want {route.code}, got {code!r}")
                    del cache[pos]
                    continue
            try:
                update = quote_to_update(
                    self.symbols[pos], q, now, name, decimal_values=decimal, volume_unit=route.volume_unit
                )
            except QuoteError as e:
                ctx.malformed(e.reason, f"{pos}: {q!r}"[:200])
                continue
            if update is not None:
                batch.append(update)
        return batch

    def _keyed(self, diff: list[wire.Quote]) -> dict[str, wire.Quote]:
        """A list-form diff (not expected on streams) keyed by position via f13/f12."""
        requested = {r.secid: str(i) for i, r in enumerate(self.routes)}
        out: dict[str, wire.Quote] = {}
        for q in diff:
            key = None
            if type(q) is dict:
                key = requested.get(f"{q.get(wire.MARKET)}.{q.get(wire.CODE)}")
            if key is None:
                self._ctx.malformed("unrequested_security", repr(q)[:200])
                continue
            out[key] = q
        return out


class _Stream:
    """One open stream of a chunk: its response and the task reading it."""

    def __init__(self, symbols: tuple[str, ...], resp: aiohttp.ClientResponse) -> None:
        self.symbols = symbols
        self.resp = resp
        self.task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.task is not None:
            await cancel_and_wait([self.task])
        self.resp.close()


_Item = list[PriceUpdate] | Exception


class SseConnection:
    """The streams of one connection; see the module docstring."""

    up_on_first_batch: ClassVar[bool] = False

    def __init__(
        self,
        settings: EastMoneySettings,
        ctx: FeederContext,
        routes: Routes,
        pacer: RequestPacer,
        session: aiohttp.ClientSession,
    ) -> None:
        self._s = settings
        self._ctx = ctx
        self._routes = routes
        self._pacer = pacer
        self._session = session
        self._streams: list[_Stream] = []
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=settings.queue_batches)
        self._aborted = False
        self._url = URL(settings.base_url + wire.SSE_PATH)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self.answered = False  # set by each open that got an HTTP answer (resets before one are bans)
        self.detail: dict[str, Any] = {"mode": "sse", "url": settings.base_url}

    async def sync(self, wanted: frozenset[str]) -> None:
        """Reopen the streams whose chunk changed, open new ones, close emptied ones."""
        old = self._streams
        plan = plan_requests(
            [st.symbols for st in old], self._routes.mappable(wanted), self._s.max_secids_per_request
        )
        kept: list[_Stream] = []
        stopped: list[_Stream] = []
        try:
            for i, chunk in enumerate(plan):
                current = old[i] if i < len(old) else None
                if current is not None and current.symbols == chunk:
                    kept.append(current)
                    continue
                if current is not None:
                    stopped.append(current)
                    await current.stop()
                if chunk:
                    kept.append(await self._open(chunk))
        finally:  # on a failure too: ``close`` stops every stream still open
            self._streams = kept + [st for st in old if st not in kept and st not in stopped]
        self.detail.update(streams=len(kept), symbols=sum(len(st.symbols) for st in kept))

    async def _open(self, chunk: tuple[str, ...]) -> _Stream:
        routes = [r for r in (self._routes.get(sym) for sym in chunk) if r is not None]
        params = query(self._s, (r.secid for r in routes), decimal=self._s.fltt == 2, as_list=False)
        await self._pacer.wait()
        self.answered = False
        resp = await self._session.get(self._url, params=params, timeout=self._timeout)
        self.answered = True
        try:
            await check_answer(resp, self._ctx.name)
            if resp.content_type != "text/event-stream":
                raise ProviderError(f"stream answered Content-Type {resp.content_type}")
        except BaseException:
            resp.close()
            raise
        stream = _Stream(chunk, resp)
        cache = ChunkCache(chunk, routes, self._ctx, decimal_values=self._s.fltt == 2)
        stream.task = asyncio.create_task(self._read(resp, cache), name=f"eastmoney.{self._ctx.name}.sse")
        return stream

    async def _read(self, resp: aiohttp.ClientResponse, cache: ChunkCache) -> None:
        """Feed one stream's ticks into the queue; its failure (or end) ends the connection."""
        frames = self._ctx.metrics.frames.labels(self._ctx.name)
        decoder = wire.SseDecoder(self._s.max_event_bytes)
        failure: Exception
        try:
            async for chunk in resp.content.iter_any():
                events = decoder.feed(chunk)
                if not events:
                    continue
                frames.inc(len(events))
                now = utcnow()
                for payload in events:
                    batch = cache.on_event(payload, now)
                    if batch:
                        await self._queue.put(batch)
            failure = ProviderError("stream ended by the server")
        except (aiohttp.ClientError, OSError, TimeoutError, wire.SseFrameTooLarge) as e:
            failure = ProviderError(f"stream read failed: {describe(e)}")
        except ProviderError as e:
            failure = e
        await self._queue.put(failure)

    async def batches(self) -> AsyncGenerator[list[PriceUpdate], None]:
        queue = self._queue
        while not self._aborted:
            item = await queue.get()
            if isinstance(item, Exception):
                if isinstance(item, _Abort):
                    return
                raise item
            yield item

    def abort(self) -> None:
        self._aborted = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_Abort())

    async def close(self) -> None:
        streams, self._streams = self._streams, []
        for st in streams:
            await st.stop()
        await self._session.close()


class _Abort(Exception):
    """Wakes ``batches`` so it ends (the driver reports the follower's error)."""
