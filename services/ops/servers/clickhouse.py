"""ClickHouse from Debian's ``clickhouse-server`` package (18.16 here), run in the foreground.

A minimal ``<yandex>`` config.xml and users.xml are written into the data directory: listen
on 127.0.0.1 only, a native TCP port (asynch) and an HTTP port (readiness: ``/ping``),
user ``default`` with an empty password from 127.0.0.1, UTC.

With ``tls=`` it also serves the native protocol over TLS on ``tls_port``
(``<tcp_port_secure>``, certificate and key in ``<openSSL><server>``; 18.16 supports both)
and ``url`` is the secure DSN, ``clickhouses://...?ca_certs=<CA file>``.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from functools import cache
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from services.ops.servers.base import LocalServer, ServerError, TLSFiles, free_port

_CANDIDATES = ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server", "/usr/bin/clickhouse")


@cache
def clickhouse_binary() -> str:
    path = shutil.which("clickhouse-server") or next((p for p in _CANDIDATES if Path(p).exists()), None)
    if path is None:
        raise ServerError(
            "clickhouse-server is not installed (apt-get install clickhouse-server; bootstrap.sh does it as root)"
        )
    return path


@cache
def clickhouse_version() -> str:
    """The server's version, from ``dpkg`` (18.16 has no ``--version`` option)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "clickhouse-server"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        out = ""
    match = re.match(r"[\d.]+", out.strip())
    return match.group(0) if match else "unknown"


_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <console>1</console>
    </logger>
    <listen_host>{host}</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <users_config>{data}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
{tls}</yandex>
"""

_TLS = """    <tcp_port_secure>{tls_port}</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>{cert}</certificateFile>
            <privateKeyFile>{key}</privateKeyFile>
            <caConfig>{ca}</caConfig>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>1000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


class ClickHouseServer(LocalServer):
    """A clickhouse-server on 127.0.0.1: ``port`` is the native TCP port, ``http_port`` HTTP."""

    kind = "ClickHouse"
    start_timeout_s: ClassVar[float] = 20.0

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        http_port: int | None = None,
        tls: TLSFiles | None = None,
        tls_port: int | None = None,
    ) -> None:
        """``tls``: also serve the native protocol over TLS on ``tls_port`` (a free one if None)."""
        super().__init__(port=port, data_dir=data_dir, log_path=log_path)
        self.http_port = http_port or free_port()
        self.tls = tls
        self.tls_port = (tls_port or free_port()) if tls is not None else None

    @property
    def slug(self) -> str:
        return "clickhouse"

    @property
    def version(self) -> str:
        return clickhouse_version()

    @property
    def url(self) -> str:
        """The asynch DSN (native protocol): with TLS the secure one, else the plain one."""
        return self.secure_url if self.tls is not None else self.plain_url

    @property
    def plain_url(self) -> str:
        return f"clickhouse://default:@{self.address}/default"

    @property
    def secure_url(self) -> str:
        """``clickhouses://default:@host:tls_port/default?ca_certs=<CA file>`` (asynch verifies
        the certificate and the host name by default)."""
        if self.tls is None:
            raise ServerError("this ClickHouse has no TLS listener (start it with tls=)")
        ca = quote(str(self.tls.ca.resolve()), safe="/")
        return f"clickhouses://default:@{self.host}:{self.tls_port}/default?ca_certs={ca}"

    def prepare(self) -> None:
        data = self.data_dir.resolve()
        for sub in ("tmp", "user_files", "format_schemas"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        tls = ""
        if self.tls is not None:
            t = self.tls
            tls = _TLS.format(tls_port=self.tls_port, cert=t.cert.resolve(), key=t.key.resolve(), ca=t.ca.resolve())
        (data / "config.xml").write_text(
            _CONFIG.format(host=self.host, tcp_port=self.port, http_port=self.http_port, data=data, tls=tls)
        )
        (data / "users.xml").write_text(_USERS)

    def command(self) -> list[str]:
        return [clickhouse_binary(), f"--config-file={self.data_dir.resolve() / 'config.xml'}"]

    def answers(self) -> bool:
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/ping", timeout=1.0) as r:
            if r.read().strip() != b"Ok.":
                return False
        if self.tls is None or self.tls_port is None:
            return True
        context = ssl.create_default_context(cafile=str(self.tls.ca))  # the TLS listener handshakes
        with (
            socket.create_connection((self.host, self.tls_port), timeout=1.0) as raw,
            context.wrap_socket(raw, server_hostname=self.host),
        ):
            return True
