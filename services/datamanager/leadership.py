"""Leadership: which datamanager is active, on a lease (``shared.coordination``).

With Redis several instances may run; the one holding the lease consumes and publishes,
the others are standbys that follow nothing, so nothing is published twice. Without
Redis the lease is in process and the one instance always holds it. A restarted instance
takes over at once the lease of a predecessor that died on the same host (SIGKILL)
instead of waiting it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator

from shared.coordination import Lease, holder_is_gone, instance_id
from shared.events import SystemEvents
from shared.logs import kv
from shared.tasks import cancel_and_wait, sleep_or_stop

log = logging.getLogger("datamanager.leadership")


class Role(enum.StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    ACTIVE = "active"
    STOPPING = "stopping"


class Leadership:
    """This instance's role and its hold on the active lease.

    ``await acquire(stop)`` waits until the lease is ours (False: stopped first); then
    ``async with held(stop) as lost:`` serves as active while a task renews the lease
    every third of it, and sets ``lost`` if it cannot be renewed in time.
    """

    def __init__(self, lease: Lease, ttl_s: float, events: SystemEvents) -> None:
        self._lease = lease
        self.ttl_s = ttl_s
        self._events = events
        self.instance_id = instance_id()
        self.role = Role.STARTING
        self.takeovers = 0  # times this instance became active
        self.active_since = 0.0  # epoch s of the latest takeover
        self.active = asyncio.Event()

    async def acquire(self, stop: asyncio.Event) -> bool:
        announced = False
        while not stop.is_set():
            try:
                if await self._lease.acquire(self.instance_id, self.ttl_s):
                    return True
                holder = await self._lease.holder()
                if holder is not None and holder_is_gone(holder):
                    # compare-and-delete: a live instance's newer lease is left alone
                    await self._lease.release(holder)
                    log.warning("active lease of a process that is gone: taking it over", extra=kv(holder=holder))
                    if await self._lease.acquire(self.instance_id, self.ttl_s):
                        return True
                if not announced:
                    self.role = Role.STANDBY
                    self._events.status("datamanager", "standby", instance=self.instance_id, active=holder)
                    announced = True
            except Exception as e:  # Redis away: stay standby, try again
                log.warning("active lease check failed", extra=kv(error=repr(e)))
                self.role = Role.STANDBY
            await sleep_or_stop(stop, self.ttl_s / 4)
        return False

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        """Serve as the active instance; yields the event set when the lease is lost."""
        self.takeovers += 1
        self.role = Role.ACTIVE
        self.active_since = time.time()
        self.active.set()
        self._events.status("datamanager", "active", instance=self.instance_id)
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep(lost, stop), name="dm.lease")
        try:
            yield lost
        finally:
            await cancel_and_wait([keeper])
            self.active.clear()
            self.role = Role.STOPPING if stop.is_set() else Role.STANDBY
            if lost.is_set() and not stop.is_set():
                self._events.status("datamanager", "lost_active_lease", instance=self.instance_id)

    async def _keep(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        renewed = time.monotonic()
        while not lost.is_set():
            if await sleep_or_stop(stop, self.ttl_s / 3):
                return
            try:
                if await asyncio.wait_for(self._lease.acquire(self.instance_id, self.ttl_s), self.ttl_s / 3):
                    renewed = time.monotonic()
                    continue
                log.error("active lease taken by another instance")
                lost.set()
            except Exception as e:
                log.warning("active lease renewal failed", extra=kv(error=repr(e)))
                if time.monotonic() - renewed > self.ttl_s * 0.8:
                    lost.set()

    async def release(self) -> None:
        """Give the lease up if this instance ever held it (never raises: shutdown goes on)."""
        if self.takeovers:
            with contextlib.suppress(Exception):
                await self._lease.release(self.instance_id)
