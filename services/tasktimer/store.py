"""Where each fire is claimed and recorded: Redis across replicas, or this process alone.

The claim is ``shared.coordination``'s once-only claim (``claims``), the same mechanism
the datamanager answers commands with. Keys (under the configured prefix):
``lock:<fire id>`` a replica's claim (renewed while it publishes), ``fire:<fire id>`` the
record of a completed fire (JSON: instant, replica, outcome, lateness), ``last`` (hash
job -> epoch of the latest instant handled, for misfire recovery after a restart),
``since`` (hash ``job|schedule fingerprint`` -> epoch at which a replica first scheduled
the job with that cron, timezone and calendar, so a job that never fired recovers its
first instant too) and ``outcome`` (hash job -> its latest record).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.coordination import MemoryClaims, OnceClaims, RedisClaims, redis_client

# the job's latest instant and its record, where the instant is newer than the one kept
_LATEST = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1
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

class FireStore(Protocol):
    """Claims and records of fires, shared by every replica that uses the same store."""

    shared: bool
    """True when other replicas see the same claims (Redis)."""
    claims: OnceClaims
    """Each fire id claimed by one replica, done once its record is written."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def record(self, job: str, fire_id: str, instant: datetime, record: dict[str, Any]) -> None:
        """Complete the fire's claim with its record; keep it as the job's latest outcome
        if its instant is the newest handled."""
        ...

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
        self._client = redis_client(url, timeout_s=5)
        self._p = prefix
        self._record_ttl_s = record_ttl_s
        self.claims: OnceClaims = RedisClaims(self._client, f"{prefix}:", done="fire:")
        self._latest = self._client.register_script(_LATEST)
        self._advance = self._client.register_script(_ADVANCE)
        self._since = self._client.register_script(_SINCE)

    async def start(self) -> None:
        await self._client.ping()

    async def stop(self) -> None:
        await self._client.aclose()

    async def record(self, job: str, fire_id: str, instant: datetime, record: dict[str, Any]) -> None:
        value = json.dumps(record)
        await self.claims.complete(fire_id, self._record_ttl_s, value)
        await self._latest(keys=[f"{self._p}:last", f"{self._p}:outcome"], args=[job, _epoch(instant), value])

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


RECORD_IN_MEMORY_S = 7 * 86_400.0
"""How long this process remembers a fire as done (bounded by count too)."""


class MemoryFireStore:
    """Single-instance mode: claims and records in this process (lost on restart, so no
    misfire recovery across restarts). Records are bounded: the oldest go first."""

    shared = False

    def __init__(self, max_records: int = 10_000) -> None:
        self.claims: OnceClaims = MemoryClaims(max_done=max_records)
        self._last: dict[str, datetime] = {}
        self._since: dict[tuple[str, str], datetime] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def record(self, job: str, fire_id: str, instant: datetime, record: dict[str, Any]) -> None:
        await self.claims.complete(fire_id, RECORD_IN_MEMORY_S, json.dumps(record))
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
