"""Store URLs checked without ever repeating them: they carry passwords.

The libraries' own parse errors quote the URL (asynch's DSNError repeats the whole
ClickHouse DSN; a password typed where the port goes comes back in urllib's "Port could
not be cast to integer value as '<password>'"), and such an error would reach logs,
system events and the CLI. ``check_url`` says what is wrong naming the setting only;
``redis_client`` and the ClickHouse store call it before the library sees the URL, and the
config models call it at load time, so a malformed URL is a config error naming its key.
"""

from __future__ import annotations

from urllib.parse import urlsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")
CLICKHOUSE_SCHEMES = ("clickhouse", "clickhouses")


class StoreURLError(ValueError):
    """A malformed store URL; the message names the setting and the problem, never the value."""


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """What is wrong with ``url`` (never quoting it), or None."""
    expected = " or ".join(f"{s}://" for s in schemes)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains spaces or control characters"
    scheme, sep, _ = url.partition("://")
    if not sep:
        return f"has no scheme (expected {expected}...)"
    if scheme.lower() not in schemes:
        return f"has a scheme other than {expected}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0..65535
        host = parts.hostname
    except ValueError as e:  # the message may quote a part of the URL: paraphrased here
        text = str(e)
        if "IPv6" in text:
            return "has unbalanced [ ] around the host"
        if "range" in text:
            return "has a port outside 0-65535"
        return "has a port that is not a number (a password with ':' '@' '/' must be percent-encoded)"
    if scheme.lower() != "unix" and not host:
        return "has no host"
    if port == 0:
        return "has port 0"
    return None


def check_url(setting: str, url: str, schemes: tuple[str, ...]) -> None:
    """Raise StoreURLError naming ``setting`` if ``url`` is malformed (the value is never shown)."""
    problem = url_problem(url, schemes)
    if problem is not None:
        raise StoreURLError(
            f"{setting}: not a valid URL: it {problem} (the value is not shown: it may hold a password)"
        )
