"""Where the datamanager's state lives: Redis when ``redis.url`` is set, else this process.

One small interface, two backends. What is kept: every subscriber's interest and lease
(with the interest topic's consumed offsets, written in the same MULTI/EXEC, so a restart
resumes the topic where the state ends instead of replaying it), the subscription
revisions per market (only ever moving forward) and the latest tick per symbol. The
active lease and the command claims are ``shared.coordination``'s, on the same client.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from pydantic import SecretStr

from services.datamanager.interest import Subscriber, SubscriberId
from shared.coordination import Lease, MemoryClaims, MemoryLease, OnceClaims, RedisClaims, RedisLease, redis_client
from shared.dto import PriceUpdate, encode

log = logging.getLogger("datamanager.state")

_SEP = "\x1f"  # between portfolio_id and node_id in a Redis field


class _StoredSubscriber(msgspec.Struct, frozen=True):
    s: list[str]  # symbols
    e: float | None  # lease end, epoch s
    o: int = -1  # offset of the last interest record applied


@dataclass
class InterestState:
    """What a restart resumes from."""

    subscribers: dict[SubscriberId, Subscriber] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # interest partition → next offset
    revisions: dict[str, int] = field(default_factory=dict)  # market → last revision


_sub_encoder = msgspec.json.Encoder()
_sub_decoder = msgspec.json.Decoder(_StoredSubscriber)
_tick_decoder = msgspec.json.Decoder(PriceUpdate)


class DatamanagerState(abc.ABC):
    """The store behind the datamanager; ``durable`` says whether it outlives the process."""

    durable: bool

    async def start(self) -> None:  # noqa: B027 - optional
        """Connect (idempotent)."""

    async def stop(self) -> None:  # noqa: B027 - optional
        """Disconnect (idempotent)."""

    @abc.abstractmethod
    async def load_interest(self) -> InterestState: ...

    @abc.abstractmethod
    async def save_interest(
        self, changed: dict[SubscriberId, Subscriber | None], offsets: dict[int, int], revisions: dict[str, int]
    ) -> None:
        """Write changed subscribers, the consumed offsets and revisions atomically."""

    @abc.abstractmethod
    async def save_latest(self, ticks: Iterable[PriceUpdate]) -> None: ...

    @abc.abstractmethod
    async def load_latest(self, symbols: Iterable[str]) -> dict[str, PriceUpdate]: ...


class MemoryState(DatamanagerState):
    """In this process only: one instance, nothing survives a restart."""

    durable = False

    def __init__(self) -> None:
        self._interest = InterestState()
        self._latest: dict[str, PriceUpdate] = {}

    async def load_interest(self) -> InterestState:
        return InterestState(
            dict(self._interest.subscribers), dict(self._interest.offsets), dict(self._interest.revisions)
        )

    async def save_interest(
        self, changed: dict[SubscriberId, Subscriber | None], offsets: dict[int, int], revisions: dict[str, int]
    ) -> None:
        for sid, sub in changed.items():
            if sub is None:
                self._interest.subscribers.pop(sid, None)
            else:
                self._interest.subscribers[sid] = sub
        self._interest.offsets.update(offsets)
        self._interest.revisions.update(revisions)

    async def save_latest(self, ticks: Iterable[PriceUpdate]) -> None:
        for t in ticks:
            self._latest[t.symbol] = t

    async def load_latest(self, symbols: Iterable[str]) -> dict[str, PriceUpdate]:
        return {s: t for s in symbols if (t := self._latest.get(s)) is not None}


class RedisState(DatamanagerState):
    """Redis (redis-py asyncio): hashes for subscribers, offsets, revisions, latest ticks."""

    durable = True

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._subs = f"{prefix}:subs"
        self._offsets = f"{prefix}:interest_offsets"
        self._revisions = f"{prefix}:revisions"
        self._latest = f"{prefix}:latest"

    async def start(self) -> None:
        await self.client.ping()

    async def stop(self) -> None:
        await self.client.aclose()

    async def load_interest(self) -> InterestState:
        c = self.client
        async with c.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._subs)
            pipe.hgetall(self._offsets)
            pipe.hgetall(self._revisions)
            subs_raw, offsets_raw, revs_raw = await pipe.execute()
        state = InterestState()
        for k, v in subs_raw.items():
            pid, _, nid = k.decode().partition(_SEP)
            s = _sub_decoder.decode(v)
            state.subscribers[(pid, nid)] = Subscriber(frozenset(s.s), s.e, s.o)
        state.offsets = {int(k): int(v) for k, v in offsets_raw.items()}
        state.revisions = {k.decode(): int(v) for k, v in revs_raw.items()}
        return state

    async def save_interest(
        self, changed: dict[SubscriberId, Subscriber | None], offsets: dict[int, int], revisions: dict[str, int]
    ) -> None:
        put: dict[str, bytes] = {}
        gone: list[str] = []
        for (pid, nid), sub in changed.items():
            field_ = f"{pid}{_SEP}{nid}"
            if sub is None:
                gone.append(field_)
            else:
                put[field_] = _sub_encoder.encode(_StoredSubscriber(sorted(sub.symbols), sub.expires_at, sub.offset))
        async with self.client.pipeline(transaction=True) as pipe:
            if put:
                pipe.hset(self._subs, mapping=put)  # type: ignore[arg-type]
            if gone:
                pipe.hdel(self._subs, *gone)
            if offsets:
                pipe.hset(self._offsets, mapping=offsets)  # type: ignore[arg-type]
            if revisions:
                pipe.hset(self._revisions, mapping=revisions)  # type: ignore[arg-type]
            await pipe.execute()

    async def save_latest(self, ticks: Iterable[PriceUpdate]) -> None:
        mapping = {t.symbol: encode(t) for t in ticks}
        if mapping:
            await self.client.hset(self._latest, mapping=mapping)  # type: ignore[arg-type]

    async def load_latest(self, symbols: Iterable[str]) -> dict[str, PriceUpdate]:
        names = list(symbols)
        if not names:
            return {}
        values = await self.client.hmget(self._latest, names)
        return {s: _tick_decoder.decode(v) for s, v in zip(names, values, strict=True) if v is not None}


def open_homes(url: SecretStr | None, prefix: str) -> tuple[DatamanagerState, Lease, OnceClaims]:
    """Where state, the active lease and the command claims live: one Redis client for all
    three (``redis.url``), or this process."""
    if url is None:
        return MemoryState(), MemoryLease(), MemoryClaims()
    client = redis_client(url.get_secret_value())
    return RedisState(client, prefix), RedisLease(client, f"{prefix}:active"), RedisClaims(client, f"{prefix}:command:")
