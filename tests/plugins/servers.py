"""One way to run a session's server for the tests: an env var names an external one, else
a launcher starts it on first use and closes it at the end of the session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from services.ops.servers import LocalServer

S = TypeVar("S", bound=LocalServer)


def session_server(env_var: str, make: Callable[[], S]) -> Iterator[S | None]:
    """Yield None when ``env_var`` names an external server, else a started server."""
    if os.environ.get(env_var):
        yield None
        return
    server = make()
    server.start()
    print(f"\n{server.kind}: {server.describe()}")
    try:
        yield server
    finally:
        server.close()
