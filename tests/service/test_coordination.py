"""shared.coordination on real Redis and in memory: the lease and the once-only claims, as
the datamanager (active lease, command answers) and the tasktimer (fires) use them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.coordination import (
    Claim,
    ClaimState,
    Lease,
    MemoryClaims,
    MemoryLease,
    OnceClaims,
    RedisClaims,
    RedisLease,
    holder_is_gone,
    instance_id,
    redis_client,
)
from tests.helpers import eventually


@pytest.fixture(params=["redis", "memory"])
async def claims(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[OnceClaims]:
    if request.param == "memory":
        yield MemoryClaims()
        return
    client = redis_client(redis_url)
    try:
        yield RedisClaims(client, f"{redis_prefix}:c:")
    finally:
        await client.aclose()


async def test_a_claim_is_held_by_one_owner_until_done(claims: OnceClaims) -> None:
    assert await claims.claim("job@1", "a", 5) == Claim(ClaimState.CLAIMED)
    assert await claims.claim("job@1", "a", 5) == Claim(ClaimState.HELD, "a")  # won once: a second call does not
    assert await claims.claim("job@1", "b", 5) == Claim(ClaimState.HELD, "a")
    assert await claims.renew("job@1", "a", 5)
    assert not await claims.renew("job@1", "b", 5)
    assert await claims.record("job@1") is None
    await claims.complete("job@1", 60, '{"outcome": "published"}')
    assert await claims.claim("job@1", "b", 5) == Claim(ClaimState.DONE)
    assert await claims.claim("job@1", "a", 5) == Claim(ClaimState.DONE)
    assert await claims.record("job@1") == '{"outcome": "published"}'
    assert not await claims.renew("job@1", "a", 5)  # done: nothing left to renew


async def test_a_claim_lapses_and_a_dead_holders_claim_can_be_dropped(claims: OnceClaims) -> None:
    assert (await claims.claim("cmd-1", "a", 0.2)).state is ClaimState.CLAIMED
    assert (await claims.claim("cmd-1", "b", 5)).state is ClaimState.HELD

    async def lapsed() -> bool:
        return (await claims.claim("cmd-1", "b", 5)).state is ClaimState.CLAIMED

    await eventually(lapsed, timeout_s=5, what="a's claim lapsed, b holds it")
    await claims.drop("cmd-1", "a")  # not a's any more: b's claim stays
    assert await claims.claim("cmd-1", "c", 5) == Claim(ClaimState.HELD, "b")
    await claims.drop("cmd-1", "b")
    assert (await claims.claim("cmd-1", "c", 5)).state is ClaimState.CLAIMED


async def test_many_owners_racing_for_one_id_one_wins(claims: OnceClaims) -> None:
    results = await asyncio.gather(*(claims.claim("race", f"r{i}", 5) for i in range(50)))
    assert sum(r.state is ClaimState.CLAIMED for r in results) == 1


async def test_redis_lease_one_holder_renew_release(redis_url: str, redis_prefix: str) -> None:
    clients: list[aioredis.Redis] = [redis_client(redis_url), redis_client(redis_url)]
    try:
        a: Lease = RedisLease(clients[0], f"{redis_prefix}:active")
        b: Lease = RedisLease(clients[1], f"{redis_prefix}:active")
        assert await a.acquire("a", 0.3)
        assert not await b.acquire("b", 5)
        assert await b.holder() == "a"
        assert await a.acquire("a", 0.3)  # a renewal
        await b.release("b")  # not b's: stays
        assert await b.holder() == "a"

        async def taken_by_b() -> bool:
            return await b.acquire("b", 5)

        await eventually(taken_by_b, timeout_s=5, what="a's lease expired and b took it")
        assert not await a.acquire("a", 5)
        await b.release("b")
        assert await a.holder() is None
    finally:
        for c in clients:
            await c.aclose()


async def test_memory_lease_is_always_won() -> None:
    lease = MemoryLease()
    assert await lease.acquire("a", 1) and await lease.acquire("b", 1)
    assert await lease.holder() == "b"
    await lease.release("a")
    assert await lease.holder() == "b"
    await lease.release("b")
    assert await lease.holder() is None


def test_a_holder_is_gone_only_when_its_process_on_this_host_is() -> None:
    me = instance_id()
    assert not holder_is_gone(me)  # this process
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(child.stdout)
    home = me.rsplit("-", 2)[0]
    assert holder_is_gone(f"{home}-{dead_pid}-abcdef")
    assert not holder_is_gone(f"{home}-{os.getppid()}-abcdef")  # alive
    assert not holder_is_gone(f"otherhost-4026531836-{dead_pid}-abcdef")  # another host: never judged
    assert not holder_is_gone("garbage")
