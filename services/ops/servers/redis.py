"""Redis from Debian's ``redis-server`` package, in the foreground, no persistence."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import ClassVar

from services.ops.servers.base import LocalServer, ServerError


@cache
def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if path is None:
        raise ServerError("redis-server is not installed (apt-get install redis-server; make install does it as root)")
    return path


@cache
def redis_version() -> str:
    out = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else "unknown"


class RedisServer(LocalServer):
    """A redis-server process on 127.0.0.1 (no RDB, no AOF: state lives as long as it runs)."""

    kind = "Redis"
    start_timeout_s: ClassVar[float] = 10.0

    @property
    def slug(self) -> str:
        return "redis"

    @property
    def version(self) -> str:
        return redis_version()

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
        ]

    def answers(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
