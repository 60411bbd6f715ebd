"""Redis from Debian's ``redis-server`` package, in the foreground, no persistence.

Debian's build links OpenSSL: with ``tls=`` the server listens with TLS only (``--port 0
--tls-port``), no client certificates asked, and ``url`` is the ``rediss://`` form with the
CA in ``ssl_ca_certs``.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from functools import cache
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from services.ops.servers.base import LocalServer, ServerError, TLSFiles


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

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        """``tls``: serve TLS only on ``port`` (the plain-text port is switched off)."""
        super().__init__(port=port, data_dir=data_dir, log_path=log_path)
        self.tls = tls

    @property
    def slug(self) -> str:
        return "redis"

    @property
    def version(self) -> str:
        return redis_version()

    @property
    def url(self) -> str:
        """``redis://host:port/0``, or with TLS ``rediss://host:port/0?ssl_ca_certs=<CA file>``."""
        if self.tls is None:
            return f"redis://{self.address}/0"
        return f"rediss://{self.address}/0?ssl_ca_certs={quote(str(self.tls.ca.resolve()), safe='/')}"

    def command(self) -> list[str]:
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert.resolve()),
                "--tls-key-file",
                str(self.tls.key.resolve()),
                "--tls-ca-cert-file",
                str(self.tls.ca.resolve()),
                "--tls-auth-clients",
                "no",
            ]
        return [
            redis_binary(),
            "--bind",
            self.host,
            *listen,
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
        with socket.create_connection((self.host, self.port), timeout=1.0) as raw:
            if self.tls is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64).startswith(b"+PONG")
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            with context.wrap_socket(raw, server_hostname=self.host) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
