"""Where each fire is claimed and recorded: Redis across replicas, or this process alone.

Keys (under the configured prefix): ``lock:<fire id>`` a replica's claim (SET NX PX,
renewed while it publishes), ``fire:<fire id>`` the record of a fire (JSON: instant,
replica, outcome, lateness), ``last`` (hash job -> epoch of the latest instant handled,
for misfire recovery after a restart), ``since`` (hash ``job|schedule fingerprint`` ->
epoch at which a replica first scheduled the job with that cron, timezone and calendar,
so a job that never fired recovers its first instant too) and ``outcome`` (hash job -> its
latest record).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

import redis.asyncio as aioredis

Claim = Literal["claimed", "held", "done"]

_RECORD = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local cur = redis.call('HGET', KEYS[2], ARGV[3])
if (not cur) or tonumber(cur) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
end
return 1
"""

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'held'
"""

_ADVANCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

_SINCE = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class FireStore(Protocol):
    """Claims and records of fires, shared by every replica that uses the same store."""

    shared: bool
    """True when other replicas see the same claims (Redis)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def record_of(self, fire_id: str) -> dict[str, Any] | None: ...
    async def claim(self, fire_id: str, replica: str, ttl_s: float) -> Claim:
        """Atomically: ``done`` if the fire is recorded, else ``claimed`` if this replica now
        holds it, else ``held`` (another replica does)."""
        ...

    async def renew(self, fire_id: str, replica: str, ttl_s: float) -> bool: ...
    async def record(self, job: str, fire_id: str, instant: datetime, replica: str, record: dict[str, Any]) -> None: ...
    async def advance_last(self, job: str, instant: datetime) -> None: ...
    async def last_fire(self, job: str) -> datetime | None: ...
    async def scheduled_since(self, job: str, fingerprint: str, now: datetime) -> datetime:
        """Atomically: since when ``job`` has been scheduled with this schedule
        ``fingerprint``, recorded as ``now`` by the first replica that asks."""
        ...

    async def outcomes(self) -> dict[str, dict[str, Any]]: ...


def _epoch(instant: datetime) -> str:
    return str(int(instant.timestamp()))


def _from_epoch(raw: bytes | str | None) -> datetime | None:
    return None if raw is None else datetime.fromtimestamp(int(raw), UTC)


class RedisFireStore:
    """Fires claimed and recorded in Redis, so replicas agree."""

    shared = True

    def __init__(self, url: str, prefix: str, record_ttl_s: float) -> None:
        self._client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._p = prefix
        self._record_ttl_s = int(record_ttl_s)
        self._record = self._client.register_script(_RECORD)
        self._claim = self._client.register_script(_CLAIM)
        self._advance = self._client.register_script(_ADVANCE)
        self._renew = self._client.register_script(_RENEW)
        self._since = self._client.register_script(_SINCE)

    async def start(self) -> None:
        await self._client.ping()

    async def stop(self) -> None:
        await self._client.aclose()

    async def record_of(self, fire_id: str) -> dict[str, Any] | None:
        raw = await self._client.get(f"{self._p}:fire:{fire_id}")
        return None if raw is None else dict(json.loads(raw))

    async def claim(self, fire_id: str, replica: str, ttl_s: float) -> Claim:
        keys = [f"{self._p}:fire:{fire_id}", f"{self._p}:lock:{fire_id}"]
        result = await self._claim(keys=keys, args=[replica, int(ttl_s * 1000)])
        return cast(Claim, result.decode() if isinstance(result, bytes) else result)

    async def renew(self, fire_id: str, replica: str, ttl_s: float) -> bool:
        return bool(await self._renew(keys=[f"{self._p}:lock:{fire_id}"], args=[replica, int(ttl_s * 1000)]))

    async def record(self, job: str, fire_id: str, instant: datetime, replica: str, record: dict[str, Any]) -> None:
        keys = [f"{self._p}:fire:{fire_id}", f"{self._p}:last", f"{self._p}:outcome"]
        await self._record(keys=keys, args=[json.dumps(record), self._record_ttl_s, job, _epoch(instant)])

    async def advance_last(self, job: str, instant: datetime) -> None:
        await self._advance(keys=[f"{self._p}:last"], args=[job, _epoch(instant)])

    async def last_fire(self, job: str) -> datetime | None:
        return _from_epoch(await self._client.hget(f"{self._p}:last", job))

    async def scheduled_since(self, job: str, fingerprint: str, now: datetime) -> datetime:
        raw = await self._since(keys=[f"{self._p}:since"], args=[f"{job}|{fingerprint}", _epoch(now)])
        return datetime.fromtimestamp(int(raw), UTC)

    async def outcomes(self) -> dict[str, dict[str, Any]]:
        raw = await self._client.hgetall(f"{self._p}:outcome")
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


class MemoryFireStore:
    """Single-instance mode: claims and records in this process (lost on restart, so no
    misfire recovery across restarts). Records are bounded: the oldest go first."""

    shared = False

    def __init__(self, max_records: int = 10_000) -> None:
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}
        self._last: dict[str, datetime] = {}
        self._since: dict[tuple[str, str], datetime] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._max = max_records

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def record_of(self, fire_id: str) -> dict[str, Any] | None:
        return self._records.get(fire_id)

    async def claim(self, fire_id: str, replica: str, ttl_s: float) -> Claim:
        if fire_id in self._records:
            return "done"
        now = time.monotonic()
        held = self._locks.get(fire_id)
        if held is not None and held[1] > now:
            return "held"
        self._locks[fire_id] = (replica, now + ttl_s)
        return "claimed"

    async def renew(self, fire_id: str, replica: str, ttl_s: float) -> bool:
        held = self._locks.get(fire_id)
        if held is None or held[0] != replica:
            return False
        self._locks[fire_id] = (replica, time.monotonic() + ttl_s)
        return True

    async def record(self, job: str, fire_id: str, instant: datetime, replica: str, record: dict[str, Any]) -> None:
        self._records[fire_id] = record
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        self._locks.pop(fire_id, None)
        if job not in self._last or self._last[job] < instant:
            self._last[job] = instant
            self._outcomes[job] = record

    async def advance_last(self, job: str, instant: datetime) -> None:
        if job not in self._last or self._last[job] < instant:
            self._last[job] = instant

    async def last_fire(self, job: str) -> datetime | None:
        return self._last.get(job)

    async def scheduled_since(self, job: str, fingerprint: str, now: datetime) -> datetime:
        return self._since.setdefault((job, fingerprint), datetime.fromtimestamp(int(now.timestamp()), UTC))

    async def outcomes(self) -> dict[str, dict[str, Any]]:
        return dict(self._outcomes)
