"""Throwaway certificate authorities for the TLS tests, made with the ``openssl`` command.

``make_ca(dir, name)`` writes a self-signed CA and a server certificate it signed for
127.0.0.1 and localhost (subjectAltName: clients check the host name), valid for two days.
The ``cryptography`` package is not a dependency, and the openssl CLI ships with the
OpenSSL that Redis and ClickHouse link anyway.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from services.ops.servers.base import TLSFiles
from tests.helpers import unavailable

_SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def make_ca(directory: Path, name: str) -> TLSFiles:
    """A new CA ``<name>-ca.pem`` and a server certificate/key it signed, in ``directory``."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    cert, key, csr = directory / f"{name}-server.pem", directory / f"{name}-server.key", directory / f"{name}.csr"
    ext = directory / f"{name}-server.ext"
    ext.write_text(_SERVER_EXT)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", ca_key, "-out", ca,
        "-subj", f"/CN=livedata test CA {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    subject = "/CN=127.0.0.1"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", subject, cwd=directory)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-out", cert, "-extfile", ext,
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return TLSFiles(cert=cert, key=key, ca=ca)
