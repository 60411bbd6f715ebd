"""Which configured connections travel in plain text to another host (warned once at start).

Kafka ``PLAINTEXT``/``SASL_PLAINTEXT``, ``redis://``, ClickHouse without TLS and
``http://``/``ws://`` provider URLs are readable (and forgeable) by anyone on the path; to
a loopback address they never leave the machine. Each finding names the setting, never
its value (a store URL may carry a password).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, SecretStr

from shared.config import LIVEDATA_FILE, AppConfig

PLAIN_SCHEMES = {"http", "ws", "redis"}


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(url: str) -> str | None:
    """The host of ``scheme://[user@]host[:port]/...`` (None if it has no such form)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return None
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _clickhouse_plain(url: str) -> bool:
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "clickhouses":
        return False
    query = parse_qs(rest.partition("?")[2])
    return not any(v.lower() in ("1", "true", "yes") for v in query.get("secure", []))


def _urls(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(setting path, URL) of every string or secret in a tree of settings."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        if "://" in value:
            yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _urls(getattr(value, name), f"{path}.{name}" if path else name)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _urls(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            key = getattr(k, "value", k)
            yield from _urls(v, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _urls(v, f"{path}[{i}]")


def plaintext_transports(config: AppConfig, checked: Iterable[object] = ()) -> list[str]:
    """Settings that send in plain text to a non-loopback host, as ``file: key (what)``.

    ``checked``: what the daemon's config checks returned (the validated feeder settings,
    defaults included), searched for ``http://``/``ws://`` URLs."""
    live = config.livedata
    found: list[str] = []
    kafka = live.kafka
    if not kafka.security.tls:
        hosts = [h.strip().rsplit(":", 1)[0] for h in kafka.bootstrap_servers.split(",") if h.strip()]
        if any(not is_loopback(h) for h in hosts):
            found.append(f"{LIVEDATA_FILE}: kafka.security.protocol ({kafka.security.protocol}: no TLS to the brokers)")
    if live.redis.url is not None:
        url = live.redis.url.get_secret_value()
        host = _host_of(url)
        if url.lower().startswith("redis://") and host is not None and not is_loopback(host):
            found.append(f"{LIVEDATA_FILE}: redis.url (redis:// has no TLS; use rediss://)")
    if live.clickhouse.url is not None:
        url = live.clickhouse.url.get_secret_value()
        host = _host_of(url)
        if host is not None and not is_loopback(host) and _clickhouse_plain(url):
            found.append(f"{LIVEDATA_FILE}: clickhouse.url (no TLS; use clickhouses:// or ?secure=true)")
    for item in checked:
        for path, url in _urls(item, ""):
            scheme = url.partition("://")[0].lower()
            host = _host_of(url)
            if scheme in PLAIN_SCHEMES - {"redis"} and host is not None and not is_loopback(host):
                found.append(f"data_sources.yml: {path} ({scheme}:// has no TLS)")
    return found
