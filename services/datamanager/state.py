"""Where the datamanager's state lives: Redis when ``redis.url`` is set, else this process.

One small interface, two backends. What is kept: every subscriber's interest and lease
(with the interest topic's consumed offsets, written in the same MULTI/EXEC, so a restart
resumes the topic where the state ends instead of replaying it), the subscription
revisions per market (only ever moving forward), the latest tick per symbol, the lease
that elects the active datamanager, and which command correlation ids were answered.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis

from services.datamanager.interest import Subscriber, SubscriberId
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

    @abc.abstractmethod
    async def claim_command(self, correlation_id: str, instance: str, ttl_s: float) -> str | None:
        """Claim answering a command for ``instance``: None if it is ours (now or already),
        else its holder (``ANSWERED`` once the answer is out). Once per correlation id
        across instances when durable."""

    @abc.abstractmethod
    async def command_answered(self, correlation_id: str, ttl_s: float) -> None:
        """Mark a claimed command answered: nobody claims it again."""

    @abc.abstractmethod
    async def drop_command_claim(self, correlation_id: str, holder: str) -> None:
        """Drop ``holder``'s unanswered claim (a holder that died before answering); a
        claim held by anyone else, or answered, stays."""

    @abc.abstractmethod
    async def acquire_active(self, instance: str, ttl_s: float) -> bool:
        """Take or renew the active lease for ``instance``; False if another holds it."""

    @abc.abstractmethod
    async def release_active(self, instance: str) -> None: ...

    @abc.abstractmethod
    async def active_holder(self) -> str | None: ...


ANSWERED = "answered"  # a command claim's value once its answer is published


class MemoryState(DatamanagerState):
    """In this process only: one instance, nothing survives a restart."""

    durable = False

    def __init__(self) -> None:
        self._interest = InterestState()
        self._latest: dict[str, PriceUpdate] = {}
        self._claimed: dict[str, str] = {}

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

    async def claim_command(self, correlation_id: str, instance: str, ttl_s: float) -> str | None:
        holder = self._claimed.get(correlation_id)
        if holder is not None and holder != instance:
            return holder
        if len(self._claimed) > 100_000:
            self._claimed.clear()
        self._claimed[correlation_id] = instance
        return None

    async def command_answered(self, correlation_id: str, ttl_s: float) -> None:
        self._claimed[correlation_id] = ANSWERED

    async def drop_command_claim(self, correlation_id: str, holder: str) -> None:
        if self._claimed.get(correlation_id) == holder:
            del self._claimed[correlation_id]

    async def acquire_active(self, instance: str, ttl_s: float) -> bool:
        return True

    async def release_active(self, instance: str) -> None:
        return None

    async def active_holder(self) -> str | None:
        return None


# Renew only our own lease: compare the holder, then extend (atomic in Redis).
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisState(DatamanagerState):
    """Redis (redis-py asyncio): hashes for subscribers, offsets, revisions, latest ticks."""

    durable = True

    def __init__(self, url: str, prefix: str, timeout_s: float = 2.0) -> None:
        self._url = url
        self.prefix = prefix
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None
        self._subs = f"{prefix}:subs"
        self._offsets = f"{prefix}:interest_offsets"
        self._revisions = f"{prefix}:revisions"
        self._latest = f"{prefix}:latest"
        self._active = f"{prefix}:active"

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
        return self._client

    async def start(self) -> None:
        await self.client.ping()

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

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

    async def claim_command(self, correlation_id: str, instance: str, ttl_s: float) -> str | None:
        key = f"{self.prefix}:answered:{correlation_id}"
        if await self.client.set(key, instance.encode(), nx=True, ex=max(int(ttl_s), 1)):
            return None
        holder = await self.client.get(key)
        if holder is None:  # expired between the two calls: try once more
            ok = await self.client.set(key, instance.encode(), nx=True, ex=max(int(ttl_s), 1))
            return None if ok else ANSWERED
        value = holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder)
        return None if value == instance else value

    async def command_answered(self, correlation_id: str, ttl_s: float) -> None:
        await self.client.set(f"{self.prefix}:answered:{correlation_id}", ANSWERED.encode(), ex=max(int(ttl_s), 1))

    async def drop_command_claim(self, correlation_id: str, holder: str) -> None:
        await self.client.eval(_RELEASE, 1, f"{self.prefix}:answered:{correlation_id}", holder)

    async def acquire_active(self, instance: str, ttl_s: float) -> bool:
        ok = await self.client.eval(_RENEW, 1, self._active, instance, int(ttl_s * 1000))
        return bool(ok)

    async def release_active(self, instance: str) -> None:
        await self.client.eval(_RELEASE, 1, self._active, instance)

    async def active_holder(self) -> str | None:
        v = await self.client.get(self._active)
        return v.decode() if isinstance(v, bytes) else v
