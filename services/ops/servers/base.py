"""One launcher API for local server processes: start, await readiness, stop by pid."""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self


class ServerError(RuntimeError):
    """A local server could not be found, prepared or started."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a server's TLS listener: its certificate (chain), private key, and the
    CA that signed it (what a client is given to verify the server)."""

    cert: Path
    key: Path
    ca: Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent ends, however it
    ends (SIGKILL included): Linux's parent-death signal (prctl PR_SET_PDEATHSIG). The
    signal comes when the THREAD that forked ends, so launch from one that outlives the
    child. None where prctl is missing (not Linux): the launcher's own stop still runs."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)  # loaded before the fork
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), sig)

    return preexec


def log_tail(path: Path | None, chars: int = 2000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


class LocalServer(abc.ABC):
    """A server process on 127.0.0.1 with its own data directory and log file.

    ``start()`` prepares the data directory (once), launches the process in its own
    session and returns once the server answers its protocol; ``stop()`` ends it by pid
    (SIGTERM, SIGKILL past the deadline) and keeps the data directory, so ``start()``
    again resumes on the same data; ``close()`` stops it and removes a temporary data
    directory. ``pause()``/``resume()`` (SIGSTOP/SIGCONT) and ``kill()`` are for fault tests.
    """

    kind: ClassVar[str]  # what it is, e.g. "Apache Kafka"
    #: seconds to await readiness on start (a JVM needs longer than a native binary)
    start_timeout_s: ClassVar[float] = 20.0

    def __init__(self, port: int | None = None, data_dir: Path | None = None, log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix=f"livedata-{self.slug}-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or self.data_dir / f"{self.slug}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- what a server supplies -------------------------------------------------------------

    @property
    def slug(self) -> str:
        return type(self).__name__.lower()

    @property
    @abc.abstractmethod
    def version(self) -> str: ...

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Write configs and format storage before the first start (idempotent)."""

    @abc.abstractmethod
    def answers(self) -> bool:
        """One readiness probe: whether the server answers its own protocol now."""

    def environment(self) -> dict[str, str] | None:
        return None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def describe(self) -> str:
        """One line: which server, which version, where, which pid and log."""
        return f"{self.kind} {self.version} at {self.address} (pid {self.pid}, log {self.log_path})"

    def start(self, timeout_s: float | None = None) -> Self:
        if self.running:
            return self
        self.prepare()
        self.launch()
        self.await_ready(timeout_s)
        return self

    def launch(self, preexec_fn: Callable[[], None] | None = None) -> None:
        """Start the process (``prepare()`` first) without waiting for it to answer.

        ``preexec_fn`` runs in the child before exec (``die_with_parent``: then launch
        from the thread that outlives the server, e.g. the event loop's)."""
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                env=self.environment(),
                start_new_session=True,  # Ctrl-C in a terminal reaches the launcher, not the server
                preexec_fn=preexec_fn,  # noqa: PLW1509 - only the prctl of die_with_parent
            )
        self.starts += 1

    def await_ready(self, timeout_s: float | None = None) -> None:
        """Return once the launched server answers; ServerError if it exits or times out."""
        timeout_s = timeout_s or self.start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc else None
                self._proc = None
                raise ServerError(f"{self.kind} exited with code {code} before answering:\n{log_tail(self.log_path)}")
            try:
                if self.answers():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.kind} did not answer on {self.address} within {timeout_s}s:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)  # readiness probe interval while the server starts

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server, SIGKILL it past the deadline; idempotent; keeps the data."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL (a crash): the data directory stays as the server left it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def pause(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop, and remove the data directory if the launcher made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# -- Kafka protocol probe (shared by both brokers) ---------------------------------------------


def kafka_metadata_brokers(host: str, port: int, timeout_s: float = 1.0) -> int:
    """Send a Kafka Metadata v4 request for no topics; return how many brokers it lists.

    A broker that accepts TCP but is still starting either resets the connection or lists
    no brokers; one that lists itself is ready to serve clients.
    """
    client_id = b"livedata-probe"
    # request header v1: api_key 3 (Metadata), api_version 4, correlation id, client id
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exactly(s, 4))[0]
        payload = _recv_exactly(s, size)
    # response: correlation id, throttle_time_ms, brokers array length
    correlation, _throttle, brokers = struct.unpack(">iii", payload[:12])
    if correlation != 7:
        raise OSError("unexpected correlation id in metadata response")
    return int(brokers)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = s.recv(n - len(chunks))
        if not chunk:
            raise OSError("connection closed during metadata probe")
        chunks += chunk
    return bytes(chunks)
