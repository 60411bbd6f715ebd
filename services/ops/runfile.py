"""Where a running ``livedata demo``/``up`` says what it started, so the other commands
find it from another terminal without flags.

The launcher writes ``stack-<pid>.json`` (its config directory with the daemons' HTTP
ports filled in, broker address, log folder) in ``run_dir()`` once the stack is up and
removes it when it stops; a file whose launcher is gone (SIGKILL) is ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def run_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "ginkgo-livedata" if base else Path.home() / ".cache" / "ginkgo-livedata" / "run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid is some other program
        return b"livedata" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def write_stack(info: dict[str, Any]) -> Path:
    """Record this process's stack; returns the file (remove it with ``remove_stack``)."""
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"stack-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}, indent=2))
    tmp.replace(path)
    return path


def remove_stack(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def running_stack() -> dict[str, Any] | None:
    """The newest stack whose launcher still runs, or None."""
    d = run_dir()
    if not d.is_dir():
        return None
    found: list[tuple[float, dict[str, Any]]] = []
    for path in d.glob("stack-*.json"):
        try:
            info = json.loads(path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            remove_stack(path)
            continue
        found.append((path.stat().st_mtime, info))
    return max(found, key=lambda f: f[0])[1] if found else None
