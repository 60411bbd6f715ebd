"""Fault: every class of configuration mistake, for each daemon and ``livedata validate``.

Each case starts from a valid config directory (whose broker does not exist, so a daemon
that got past its configuration would wait for it instead of exiting), makes one mistake
and runs ``python -m services.<daemon> --config-dir DIR`` and ``livedata validate``. Each
must exit non-zero within seconds, print a short message naming the file and the key,
and no traceback. Printed: the table of cases with each command's exit code, time and
message.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemons import MODULES, ROOT
from tests.helpers import env_without_overrides

pytestmark = pytest.mark.reliability

EXIT_WITHIN_S = 10.0  # a daemon past its configuration waits for the absent broker: no exit
MAX_LINES = 4  # "prog: configuration error:" and a line or two naming file and key

COMMANDS: dict[str, list[str]] = {
    **{name: [sys.executable, "-m", module] for name, module in MODULES.items()},
    "validate": [sys.executable, "-m", "services.ops.cli", "validate"],
}

Files = dict[str, Any]  # file name → parsed content (dict) or raw text (str); None deletes it


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_files(port: int) -> Files:
    return {
        "livedata.yml": {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{port}"},
            "topics": {"prefix": "cfgtest"},
            "gateway": {"http": {"port": 0}},
            "datamanager": {"http": {"port": 0}},
            "tasktimer": {"http": {"port": 0}},
        },
        "data_sources.yml": {
            "markets": {
                "CN": {"sources": [{"type": "sim", "name": "cn-sim"}]},
                "HK": {"sources": [{"type": "fushu", "name": "hk-fushu", "base_url": "http://127.0.0.1:9/"}]},
            }
        },
        "task_timer.yml": {"jobs": [{"name": "snap", "cron": "0 16 * * 1-5", "command": "bar_snapshot"}]},
        "secure.yml": {"hk-fushu": {"api_key": "not-a-real-key"}},
    }


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[Files], None]
    file: str  # the file the message must name
    key: str  # the key (or phrase) the message must name
    missing_dir: bool = False
    daemons: bool = True  # False: a variant of a class above, run on ``livedata validate`` only


def _set(path: str, value: Any, file: str = "livedata.yml") -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        node = files[file]
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _source(**changes: Any) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files["data_sources.yml"]["markets"]["CN"]["sources"][0].update(changes)

    return mutate


def _jobs(*jobs: dict[str, Any]) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files["task_timer.yml"]["jobs"] = list(jobs)

    return mutate


def _raw(file: str, text: str) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files[file] = text

    return mutate


def _delete(file: str) -> Callable[[Files], None]:
    def mutate(files: Files) -> None:
        files[file] = None

    return mutate


def _secret_for_nobody(files: Files) -> None:
    files["secure.yml"]["no-such-source"] = {"api_key": "x"}


JOB = {"name": "snap", "cron": "0 16 * * 1-5", "command": "bar_snapshot"}

CASES = [
    Case("missing config directory", lambda f: None, "", "config directory does not exist", missing_dir=True),
    Case("missing livedata.yml", _delete("livedata.yml"), "livedata.yml", "not found"),
    Case("YAML syntax error", _raw("livedata.yml", "kafka:\n  bootstrap_servers: [a, b\n"), "livedata.yml", "line"),
    Case(
        "YAML syntax error in data_sources.yml",
        _raw("data_sources.yml", "markets:\n\tCN: {}\n"),
        "data_sources.yml",
        "line",
        daemons=False,
    ),
    Case("unknown key", _set("kafka.bootstrap_server", "x:1"), "livedata.yml", "kafka.bootstrap_server"),
    Case("wrong type", _set("kafka.linger_ms", "fast"), "livedata.yml", "kafka.linger_ms"),
    Case("out-of-range value", _set("kafka.linger_ms", 5000), "livedata.yml", "kafka.linger_ms"),
    Case(
        "unset ${VAR}",
        _set("kafka.bootstrap_servers", "${LIVEDATA_TEST_UNSET_VAR}"),
        "livedata.yml",
        "kafka.bootstrap_servers",
    ),
    Case(
        "unknown market",
        _set("markets.XX", {"sources": [{"type": "sim"}]}, "data_sources.yml"),
        "data_sources.yml",
        "markets.XX",
        daemons=False,
    ),
    Case("unknown feeder type", _source(type="bloomberg"), "data_sources.yml", "markets.CN.sources[0].type"),
    Case(
        "bad feeder setting (unknown key)",
        _source(tick_rate=5),
        "data_sources.yml",
        "markets.CN.sources[0].tick_rate",
    ),
    Case(
        "bad feeder setting (wrong type)",
        _source(interval_ms="soon"),
        "data_sources.yml",
        "markets.CN.sources[0].interval_ms",
        daemons=False,
    ),
    Case("secure.yml entry for no source", _secret_for_nobody, "secure.yml", "no-such-source"),
    Case(
        "secure.yml value of a wrong type",
        _set("hk-fushu.api_key", ["a", "b"], "secure.yml"),
        "secure.yml",
        "hk-fushu.api_key",
        daemons=False,
    ),
    Case("bad cron", _jobs({**JOB, "cron": "61 * * * *"}), "task_timer.yml", "jobs.0.cron"),
    Case(
        "unknown timezone",
        _jobs({**JOB, "timezone": "Mars/Olympus"}),
        "task_timer.yml",
        "jobs.0.timezone",
        daemons=False,
    ),
    Case(
        "bad job params (bar_snapshot market XX)",
        _jobs({**JOB, "params": {"market": "XX"}}),
        "task_timer.yml",
        "params.market",
    ),
    Case("duplicate job names", _jobs(JOB, {**JOB, "cron": "0 9 * * 1-5"}), "task_timer.yml", "snap"),
    Case("bad topic prefix", _set("topics.prefix", "ginkgo live/x"), "livedata.yml", "topics.prefix"),
    Case(
        "bad shard (index >= count)", _set("gateway.shard", {"count": 2, "index": 2}), "livedata.yml", "gateway.shard"
    ),
]


def write_case(parent: Path, case: Case, port: int) -> Path:
    d = parent / case.name.replace(" ", "_").replace("/", "_").replace("$", "").replace("{", "").replace("}", "")
    if case.missing_dir:
        return d
    d.mkdir(parents=True)
    files = base_files(port)
    case.mutate(files)
    for name, content in files.items():
        if content is None:
            continue
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (d / name).write_text(text)
    return d


@dataclass
class Outcome:
    rc: int | None  # None: still running at the deadline (killed)
    seconds: float
    output: str


async def run(cmd: list[str], config_dir: Path, gate: asyncio.Semaphore) -> Outcome:
    async with gate:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            "--config-dir",
            str(config_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=env_without_overrides(),
            cwd=ROOT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), EXIT_WITHIN_S)
            rc: int | None = proc.returncode
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            rc = None
        return Outcome(rc, time.monotonic() - started, out.decode(errors="replace"))


def problems_of(case: Case, config_dir: Path, o: Outcome) -> list[str]:
    out: list[str] = []
    lines = [line for line in o.output.splitlines() if line.strip()]
    if o.rc is None:
        out.append(f"did not exit within {EXIT_WITHIN_S:.0f}s")
    elif o.rc == 0:
        out.append("exit 0")
    if "Traceback" in o.output:
        out.append("traceback")
    if len(lines) > MAX_LINES:
        out.append(f"{len(lines)} lines of output")
    where = str(config_dir / case.file) if case.file else str(config_dir)
    if where not in o.output:
        out.append(f"file {case.file or config_dir.name} not named")
    if case.key not in o.output:
        out.append(f"key {case.key!r} not named")
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_every_config_mistake_is_named_and_fatal(command: str, tmp_path: Path) -> None:
    cases = [c for c in CASES if c.daemons or command == "validate"]
    port = closed_port()
    dirs = {case.name: write_case(tmp_path, case, port) for case in cases}
    gate = asyncio.Semaphore(2)  # two cores
    started = time.monotonic()
    jobs = {case.name: asyncio.create_task(run(COMMANDS[command], dirs[case.name], gate)) for case in cases}
    outcomes = {k: await t for k, t in jobs.items()}
    elapsed = time.monotonic() - started

    failures: list[str] = []
    report = [f"\n{command}: {len(cases)} config mistakes in {elapsed:.1f}s"]
    for case in cases:
        o = outcomes[case.name]
        problems = problems_of(case, dirs[case.name], o)
        body = [line for line in o.output.splitlines() if line.strip()][1:]
        message = " | ".join(body).replace(str(tmp_path) + "/", "")
        status = "ok" if not problems else "FAIL: " + ", ".join(problems)
        report.append(f"- {case.name:<40} rc={o.rc} {o.seconds:.2f}s {status}: {message[:200]}")
        if problems:
            failures.append(f"{case.name}: {', '.join(problems)}\n{o.output[-1500:]}")
    print("\n".join(report))
    assert not failures, "\n\n".join(failures)


async def test_the_base_config_is_valid(tmp_path: Path) -> None:
    """The control: without a mistake ``livedata validate`` says OK (so each case above
    fails for its mistake and nothing else)."""
    d = write_case(tmp_path, Case("base", lambda f: None, "", ""), closed_port())
    o = await run(COMMANDS["validate"], d, asyncio.Semaphore(1))
    assert o.rc == 0, o.output
    assert "OK" in o.output
