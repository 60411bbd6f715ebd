"""What the HTTP snapshot simulators share: the aiohttp server, request recording, fault switches."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import struct
import time
from typing import NoReturn, Self

from aiohttp import web


class FakeHttpServer(abc.ABC):
    """An in-process HTTP endpoint on 127.0.0.1 whose fault switches the tests flip.

    Records: ``requests`` (the keys each request asked for, in order; the subclass
    appends). Faults, applied by ``_faults`` before any answer: ``drop_next`` (reset the
    next N connections without an answer), ``reset_for(seconds)`` (reset every connection
    for a while: how Tencent throttles), ``silent`` (hold requests open, never answer),
    ``slow_s`` (answer late). Answered by the subclass: ``ban(seconds)`` (``banned``),
    ``fail_status`` (answer every request with that status), ``garbage_body``.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, ...]] = []
        self.fail_status: int | None = None
        self.drop_next = 0
        self.silent = False
        self.slow_s = 0.0
        self.garbage_body = False
        self.url = ""
        self._banned_until = 0.0
        self._resetting_until = 0.0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @abc.abstractmethod
    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Route the provider's paths to its handlers."""

    @abc.abstractmethod
    def advance(self, key: str | None = None) -> None:
        """A trade on one key (or on every quote): its next answer carries a new quote."""

    def ban(self, seconds: float) -> None:
        """Answer 403 for the next ``seconds``."""
        self._banned_until = time.monotonic() + seconds

    def reset_for(self, seconds: float) -> None:
        """Reset every connection without an answer for the next ``seconds``."""
        self._resetting_until = time.monotonic() + seconds

    @property
    def banned(self) -> bool:
        return time.monotonic() < self._banned_until

    def requested(self) -> set[str]:
        """Every key any request asked for."""
        return {key for req in self.requests for key in req}

    async def _faults(self, request: web.Request) -> None:
        """Apply the connection-level faults: reset, hang until stopped, or answer late."""
        if self.drop_next > 0:
            self.drop_next -= 1
            reset_connection(request)
        if time.monotonic() < self._resetting_until:
            reset_connection(request)
        if self.silent:
            await self._release.wait()
            reset_connection(request)
        if self.slow_s:
            await asyncio.sleep(self.slow_s)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        self._add_routes(app.router)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        host, bound = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{bound}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def reset_connection(request: web.Request) -> NoReturn:
    """Drop the connection with a TCP reset and abandon the handler (no answer at all)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise asyncio.CancelledError  # aiohttp ends a cancelled handler quietly


async def serve_until_interrupted(server: FakeHttpServer, port: int, banner: str) -> None:
    """Run a simulator standalone on ``port`` until the process is interrupted."""
    await server.start(port)
    print(f"{banner} on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
