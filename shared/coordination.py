"""Coordination between instances: a lease (one holder at a time) and once-only claims.

One mechanism, two backends. In Redis every operation is one Lua script, so a check and
its write never race another instance; in memory (no ``redis.url``) one process is alone
and always wins. The datamanager elects its active instance with a ``Lease`` and answers
each command once with ``OnceClaims``; the tasktimer fires each (job, instant) once with
``OnceClaims`` too.

An instance's id names where it runs (host and pid namespace) and its pid
(``instance_id``), so a restarted instance can tell that the holder of a lease or claim
is a predecessor that died on this host (``holder_is_gone``) and need not wait it out.
"""

from __future__ import annotations

import abc
import enum
import os
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared.store_urls import REDIS_SCHEMES, StoreURLError, check_url


def redis_client(url: str, timeout_s: float = 2.0, setting: str = "redis.url") -> aioredis.Redis:
    """A Redis client with bounded socket and connect timeouts (a dead server answers fast).

    A malformed ``url`` raises StoreURLError naming ``setting``, never the URL (it may hold
    a password; redis-py's own errors can quote it)."""
    check_url(setting, url, REDIS_SCHEMES)
    try:
        return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as e:
        raise StoreURLError(f"{setting}: not a valid Redis URL ({type(e).__name__}; the value is not shown)") from None


# -- who holds it -----------------------------------------------------------------------------


def _process_home() -> str:
    """This host and pid namespace: where a pid in a holder's id can be checked."""
    try:
        ns = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:  # no /proc: never judge another holder's liveness
        ns = uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}-{ns}"


_HOME = _process_home()


def instance_id() -> str:
    """A new id for this process: ``<host>-<pid namespace>-<pid>-<nonce>``."""
    return f"{_HOME}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def holder_is_gone(holder: str) -> bool:
    """Whether a holder's id names a process of this host and pid namespace that no longer
    exists (pid reuse by a live process errs on the safe side: it looks alive)."""
    if not holder.startswith(_HOME + "-"):
        return False
    pid_s = holder[len(_HOME) + 1 :].partition("-")[0]
    if not pid_s.isdigit() or int(pid_s) == os.getpid():
        return False
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, not ours to signal
        return False
    return False


# -- the lease ------------------------------------------------------------------------------


class Lease(abc.ABC):
    """One named lease: at most one holder until it expires or is released."""

    @abc.abstractmethod
    async def acquire(self, owner: str, ttl_s: float) -> bool:
        """Take the lease, or renew it if ``owner`` holds it; False if another does."""

    @abc.abstractmethod
    async def release(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it (compare and delete)."""

    @abc.abstractmethod
    async def holder(self) -> str | None: ...


_LEASE_ACQUIRE = """
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

_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


class RedisLease(Lease):
    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._client = client
        self.key = key
        self._acquire = client.register_script(_LEASE_ACQUIRE)
        self._release = client.register_script(_COMPARE_AND_DELETE)

    async def acquire(self, owner: str, ttl_s: float) -> bool:
        return bool(await self._acquire(keys=[self.key], args=[owner, max(int(ttl_s * 1000), 1)]))

    async def release(self, owner: str) -> None:
        await self._release(keys=[self.key], args=[owner])

    async def holder(self) -> str | None:
        return _text(await self._client.get(self.key))


class MemoryLease(Lease):
    """The lease of a process that is alone: it always wins."""

    def __init__(self) -> None:
        self._holder: str | None = None

    async def acquire(self, owner: str, ttl_s: float) -> bool:
        self._holder = owner
        return True

    async def release(self, owner: str) -> None:
        if self._holder == owner:
            self._holder = None

    async def holder(self) -> str | None:
        return self._holder


# -- once-only claims -------------------------------------------------------------------------


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"  # this call won it: the caller holds it now
    HELD = "held"  # a claim holds it (another's, or an earlier one of the same owner's)
    DONE = "done"  # completed: nobody claims it again


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    holder: str | None = None  # who holds it while HELD


class OnceClaims(abc.ABC):
    """Work done once per id across instances: ``claim`` it, do it, ``complete`` it.

    A claim lapses after its ttl unless renewed, so the work of a holder that died is
    claimed again by another; a completed id stays done for ``complete``'s ttl.
    """

    shared: bool
    """True when other instances see the same claims (Redis)."""

    @abc.abstractmethod
    async def claim(self, key: str, owner: str, ttl_s: float) -> Claim: ...

    @abc.abstractmethod
    async def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s claim; False if it is not (or no longer) ``owner``'s."""

    @abc.abstractmethod
    async def complete(self, key: str, ttl_s: float, value: str = "done") -> None:
        """Mark the id done (``value`` is kept as its record) and drop the claim."""

    @abc.abstractmethod
    async def drop(self, key: str, holder: str) -> None:
        """Drop ``holder``'s claim (a holder that died before completing); anyone else's stays."""

    @abc.abstractmethod
    async def record(self, key: str) -> str | None:
        """The value a completed id was marked with, None while not done."""


_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', false} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed', false} end
return {'held', redis.call('GET', KEYS[2])}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_COMPLETE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""


class RedisClaims(OnceClaims):
    """Claims under ``<prefix>lock:<id>`` (the holder, with a ttl) and ``<prefix><done><id>``
    (the record of a completed id)."""

    shared = True

    def __init__(self, client: aioredis.Redis, prefix: str, done: str = "done:") -> None:
        self._client = client
        self._lock = f"{prefix}lock:"
        self._done = f"{prefix}{done}"
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._drop = client.register_script(_COMPARE_AND_DELETE)

    async def claim(self, key: str, owner: str, ttl_s: float) -> Claim:
        state, holder = await self._claim(
            keys=[self._done + key, self._lock + key], args=[owner, max(int(ttl_s * 1000), 1)]
        )
        return Claim(ClaimState(_text(state) or ""), _text(holder) if holder else None)

    async def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._renew(keys=[self._lock + key], args=[owner, max(int(ttl_s * 1000), 1)]))

    async def complete(self, key: str, ttl_s: float, value: str = "done") -> None:
        await self._complete(keys=[self._done + key, self._lock + key], args=[value, max(int(ttl_s * 1000), 1)])

    async def drop(self, key: str, holder: str) -> None:
        await self._drop(keys=[self._lock + key], args=[holder])

    async def record(self, key: str) -> str | None:
        return _text(await self._client.get(self._done + key))


class MemoryClaims(OnceClaims):
    """Claims of a process that is alone; completed ids are remembered up to ``max_done``
    (the oldest forgotten first), each for its ttl."""

    shared = False

    def __init__(self, max_done: int = 100_000) -> None:
        self._locks: dict[str, tuple[str, float]] = {}
        self._done: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_done = max_done

    def _record(self, key: str, now: float) -> str | None:
        found = self._done.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._done[key]
            return None
        return found[0]

    async def claim(self, key: str, owner: str, ttl_s: float) -> Claim:
        now = time.monotonic()
        if self._record(key, now) is not None:
            return Claim(ClaimState.DONE)
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return Claim(ClaimState.HELD, held[0])
        if len(self._locks) >= self._max_done:
            self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
        self._locks[key] = (owner, now + ttl_s)
        return Claim(ClaimState.CLAIMED)

    async def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != owner:
            return False
        self._locks[key] = (owner, time.monotonic() + ttl_s)
        return True

    async def complete(self, key: str, ttl_s: float, value: str = "done") -> None:
        self._locks.pop(key, None)
        self._done[key] = (value, time.monotonic() + ttl_s)
        self._done.move_to_end(key)
        while len(self._done) > self._max_done:
            self._done.popitem(last=False)

    async def drop(self, key: str, holder: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == holder:
            del self._locks[key]

    async def record(self, key: str) -> str | None:
        return self._record(key, time.monotonic())
