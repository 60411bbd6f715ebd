"""The one place that turns ``kafka.security`` into aiokafka options.

Every Kafka client of the system (producers, consumers, the admin client, the broker
watch's probe, the client SDK, the CLI, the benchmarks) passes ``security_options(k)``,
so a cluster that needs TLS or a login is reached the same way by all of them.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn  # what AIOKafkaClient.bootstrap uses: one connection, its real error
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from shared.config import ConfigError, KafkaSecurity, KafkaSettings

TOKEN_COMMAND_TIMEOUT_S = 10.0


class TokenError(Exception):
    """An OAUTHBEARER token could not be had (the message names the file or command, never the token)."""


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """OAUTHBEARER: the token is the content of a file, read again for each connection
    (a sidecar that refreshes the file refreshes the token)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def token(self) -> str:
        try:
            text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        except OSError as e:
            raise TokenError(f"kafka.security.oauth_token_file: cannot read {self._path} ({e.strerror})") from None
        token = text.strip()
        if not token:
            raise TokenError(f"kafka.security.oauth_token_file: {self._path} is empty")
        return token


class CommandTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER: the token is what a command prints on stdout (run for each connection)."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv

    async def token(self) -> str:
        what = f"kafka.security.oauth_token_command ({self._argv[0]})"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # it may print secrets; we never relay them
            )
        except OSError as e:
            raise TokenError(f"{what}: cannot run ({e.strerror})") from None
        try:
            async with asyncio.timeout(TOKEN_COMMAND_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TokenError(f"{what}: no token within {TOKEN_COMMAND_TIMEOUT_S:.0f}s") from None
        if proc.returncode != 0:
            raise TokenError(f"{what}: exited with {proc.returncode}")
        token = out.decode("utf-8", errors="replace").strip()
        if not token:
            raise TokenError(f"{what}: printed no token")
        return token


def ssl_context(s: KafkaSecurity) -> ssl.SSLContext:
    """A verifying TLS context: the CA bundle (else the system's), the client's own
    certificate for mutual TLS, hostname checking unless turned off. A file that is not
    what it should be is a ConfigError naming the key (a wrong key password included)."""
    password = s.key_password.get_secret_value() if s.key_password is not None else None
    try:
        context = create_ssl_context(cafile=str(s.ca_file) if s.ca_file else None)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"kafka.security.ca_file: not a usable CA bundle ({type(e).__name__})") from None
    if s.cert_file is not None:
        try:
            context.load_cert_chain(str(s.cert_file), str(s.key_file), password=password)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(
                f"kafka.security.cert_file/key_file: not a usable certificate and key ({type(e).__name__})"
            ) from None
    context.check_hostname = s.check_hostname
    result: ssl.SSLContext = context
    return result


def security_options(k: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for ``kafka.security`` (the same for every client type)."""
    s = k.security
    opts: dict[str, Any] = {"security_protocol": s.protocol}
    if s.tls:
        opts["ssl_context"] = ssl_context(s)
    if s.sasl:
        opts["sasl_mechanism"] = s.sasl_mechanism
        if s.sasl_mechanism == "OAUTHBEARER":
            if s.oauth_token_file is not None:
                opts["sasl_oauth_token_provider"] = FileTokenProvider(s.oauth_token_file)
            else:
                assert s.oauth_token_command is not None  # the model requires one of them
                opts["sasl_oauth_token_provider"] = CommandTokenProvider(s.oauth_token_command)
        else:
            assert s.password is not None  # the model requires it
            opts["sasl_plain_username"] = s.username
            opts["sasl_plain_password"] = s.password.get_secret_value()
    return opts


class KafkaLoginError(KafkaError):  # type: ignore[misc]  # aiokafka's errors are untyped
    """The broker refused our login (or TLS handshake): not an outage; retrying will not help
    until the credentials or the broker change. The message names the settings, never a secret."""


async def login_refused(k: KafkaSettings, timeout_s: float = 5.0) -> KafkaLoginError | None:
    """After a failed bootstrap: connect once to the first broker ourselves and say whether
    it refused the login or the TLS handshake (aiokafka's bootstrap only says "unable to
    bootstrap"). None if the broker is merely unreachable, or connects fine now."""
    if k.security.protocol == "PLAINTEXT":
        return None
    host, _, port = k.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(host.strip("[]"), int(port), client_id=f"{k.client_id}-login-check", **security_options(k)),
            timeout_s,
        )
    except (
        AuthenticationFailedError,
        SaslAuthenticationFailed,
        IllegalSaslStateError,
        UnsupportedSaslMechanismError,
    ) as e:
        return KafkaLoginError(
            f"the broker refused the login of {describe(k)}: {getattr(e, 'description', '') or e}"
            " (check kafka.security.username and password)"
        )
    except ssl.SSLError as e:
        return KafkaLoginError(
            f"TLS handshake with {host} failed: {e.reason or type(e).__name__}"
            " (check kafka.security.ca_file, cert_file, key_file, check_hostname)"
        )
    except TokenError as e:
        return KafkaLoginError(str(e))
    except (KafkaError, OSError, TimeoutError, ValueError):
        return None
    conn.close()
    return None


def describe(k: KafkaSettings) -> str:
    """How we connect, for logs: protocol, mechanism and user, never a secret."""
    s = k.security
    parts: list[str] = [s.protocol]
    if s.sasl:
        parts.append(str(s.sasl_mechanism))
        if s.username:
            parts.append(f"as {s.username}")
    return " ".join(parts)
