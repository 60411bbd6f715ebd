"""``livedata`` commands run as subprocesses against the three daemons on the test broker
(one stack shared by the module), and the demo's cleanup when it is killed or its stdout
closes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from shared.dto import DeadLetter
from tests.daemons import ROOT, System
from tests.helpers import env_without_overrides, eventually, publish, write_config_dir

pytestmark = pytest.mark.e2e


def cli_env(tmp: Path) -> dict[str, str]:
    env = env_without_overrides()
    env.pop("GINKGO_DIR", None)
    env["XDG_RUNTIME_DIR"] = str(tmp)  # the demo's run file: this test's own
    env["COLUMNS"] = "200"
    return env


async def livedata(*args: str, env: dict[str, str], timeout_s: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ops.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Stack:
    def __init__(self, system: System, env: dict[str, str]) -> None:
        self.system = system
        self.env = env
        self.config = ["--config-dir", str(system.config_dir)]

    async def run(self, *args: str, timeout_s: float = 30.0) -> tuple[int, str, str]:
        return await livedata(*args, *self.config, env=self.env, timeout_s=timeout_s)


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli")
    async with System(tmp, kafka_bootstrap, prefix=f"cli.{uuid.uuid4().hex[:8]}") as s:
        yield Stack(s, cli_env(tmp))


async def test_status_reports_every_daemon_ready(stack: Stack) -> None:
    rc, out, err = await stack.run("status", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ready"] and doc["broker_reachable"]
    assert {n: d["ready"] for n, d in doc["daemons"].items()} == {
        "gateway": True,
        "datamanager": True,
        "tasktimer": True,
    }
    assert doc["daemons"]["datamanager"]["readiness"]["role"] == "active"
    assert set(doc["markets"]) == {"CN", "HK", "US"}
    assert doc["dead_lettered"] >= 0 and doc["queue_depth"] is not None
    rc, out, _ = await stack.run("status")
    assert rc == 0 and "all ready" in out and "datamanager" in out


async def test_watch_json_prints_one_object_per_update(stack: Stack) -> None:
    rc, out, err = await stack.run("watch", "600000.SH", "aapl", "--json", "--count", "5")
    assert rc == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) >= 5
    assert {d["symbol"] for d in docs} <= {"600000.SH", "AAPL"}
    assert all("latency_ms" in d and "flags" in d for d in docs if d["type"] == "price_update")


async def test_subscribe_then_bars_then_unsubscribe(stack: Stack) -> None:
    rc, out, err = await stack.run("subscribe", "--portfolio", "p-cli", "--node", "n1", "600000.SH")
    assert rc == 0 and "add p-cli/n1: 600000.SH" in out, err
    rc, out, _ = await stack.run("tail", "--topic", "interest.updates", "-b", "--duration", "3", "--json")
    docs = [json.loads(line)["message"] for line in out.splitlines()]
    mine = [(m["node_id"], m["update_type"], m["symbols"]) for m in docs if m["portfolio_id"] == "p-cli"]
    assert mine == [("n1", "add", ["600000.SH"])]

    async def bars() -> list[dict[str, object]] | None:  # once ticks made the day's bar
        rc, out, _ = await stack.run("bars", "600000.SH", "--json", "--wait", "5")
        return [json.loads(line) for line in out.splitlines()] if rc == 0 else None

    found = await eventually(bars, timeout_s=30, interval_s=0.5, what="a daily bar of 600000.SH")
    assert found[0]["symbol"] == "600000.SH" and found[0]["period"] == "1d"
    rc, out, _ = await stack.run("bars", "600000.SH", "--csv", "--wait", "5")
    assert rc == 0 and out.splitlines()[0].startswith("symbol,period,timestamp")

    rc, out, _ = await stack.run("unsubscribe", "--portfolio", "p-cli", "--node", "n1", "600000.SH")
    assert rc == 0 and "remove p-cli/n1" in out


async def test_send_waits_for_the_command_result(stack: Stack) -> None:
    rc, out, err = await stack.run("send", "bar_snapshot", "market=CN", "--wait")
    assert rc == 0, err
    assert "published bar_snapshot" in out and "datamanager: ok=True" in out
    assert "partitions answered" in out  # every market-data partition named by some answer
    rc, out, _ = await stack.run("command", "status", "--wait", "10")  # the older spelling
    assert rc == 0 and "ok=True" in out
    rc, _, err = await stack.run("send", "bar_snapshot", "market=XX")
    assert rc == 2 and "params.market" in err


async def test_tail_shows_dead_letters_with_their_reason(stack: Stack, kafka_bootstrap: str) -> None:
    topics = stack.system.topics
    await publish(kafka_bootstrap, topics.interest_updates, b"{not json", key="bad/one")
    rc, out, err = await stack.run("tail", "--topic", "deadletter", "-b", "-n", "1", timeout_s=40)
    assert rc == 0, err
    assert "dead_letter reason='undecodable" in out and "interest.updates" in out
    rc, out, _ = await stack.run("tail", "--topic", "deadletter", "-b", "-n", "1", "--json")
    letter = json.loads(out)["message"]
    assert letter["type"] == DeadLetter.__struct_config__.tag and letter["raw"] == "{not json"


async def test_jobs_list_and_explain(stack: Stack) -> None:
    rc, out, _ = await stack.run("jobs", "list")
    line = next(ln for ln in out.splitlines() if ln.startswith("snap"))
    fires = re.findall(r"\d{4}-\d\d-\d\d (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d\d:\d\d [+-]\d\d:\d\d", line)
    assert rc == 0 and len(fires) == 3, line  # ISO date with weekday and year, local time, offset
    path = stack.system.config_dir / "task_timer.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "jobs": [
                    {
                        "name": "us_xmas",
                        "cron": "0 10 25 12 *",
                        "timezone": "America/New_York",
                        "command": "c",
                        "calendar": "US",
                    }
                ]
            }
        )
    )
    rc, out, _ = await stack.run("jobs", "list", "--explain", "2026-12-25")
    assert rc == 0 and "us_xmas on 2026-12-25 Fri: skipped: US closed (Christmas" in out, out


async def test_every_command_has_help_with_an_example(stack: Stack) -> None:
    commands = ["demo", "up", "broker", "validate", "watch", "status", "bars", "tail", "subscribe", "unsubscribe"]
    commands += ["send", "command", "fire", "jobs list", "jobs fire", "jobs check"]
    results = await asyncio.gather(*(livedata(*c.split(), "--help", env=stack.env) for c in commands))
    for c, (rc, out, _) in zip(commands, results, strict=True):
        assert rc == 0 and "Example" in out, f"livedata {c} --help:\n{out}"


async def test_an_unreachable_broker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = write_config_dir(tmp_path, {"bootstrap_servers": f"127.0.0.1:{port}"}, "cli.down")
    for args in (
        ["send", "status", "--wait"],
        ["watch", "AAPL"],
        ["tail"],
        ["subscribe", "--portfolio", "p", "--node", "n", "AAPL"],
    ):
        rc, out, err = await livedata(*args, "--config-dir", str(d), env=cli_env(tmp_path))
        assert rc == 3, (args, out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "unreachable" in err, (args, err)
    rc, out, err = await livedata("status", "--config-dir", str(d), env=cli_env(tmp_path))
    assert rc == 3 and "Traceback" not in out + err


# -- the demo cleans up --------------------------------------------------------------------


def stack_processes(config_dir: Path, broker: str) -> list[int]:
    """Live processes of one local stack: the daemons (their --config-dir) and the broker
    (its listener URL); zombies count as gone."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(config_dir) in cmdline or f"tcp://{broker} " in cmdline + " "):
            found.append(int(entry.name))
    return found


async def started_demo(tmp: Path, shell_tail: str = "") -> tuple[asyncio.subprocess.Process, Path, str]:
    """A demo (Tansu) started as a subprocess, once its run file says it is up."""
    env = cli_env(tmp)
    log_dir = tmp / "demo"
    cmd = f"{sys.executable} -m services.ops.cli demo --duration 120 --log-dir {log_dir}{shell_tail}"
    proc = await asyncio.create_subprocess_shell(
        f"exec {cmd}" if not shell_tail else cmd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    config = log_dir / "config" / "livedata.yml"
    await eventually(config.exists, timeout_s=30, what="the demo's config")  # written whole (renamed into place)
    broker = yaml.safe_load(config.read_text())["kafka"]["bootstrap_servers"]
    await eventually(lambda: len(stack_processes(log_dir / "config", broker)) == 4, timeout_s=30, what="4 processes")
    return proc, log_dir / "config", broker


async def test_a_killed_demo_leaves_no_process(tmp_path: Path) -> None:
    proc, config_dir, broker = await started_demo(tmp_path)
    await eventually(lambda: list((tmp_path / "ginkgo-livedata").glob("stack-*.json")), timeout_s=30, what="run file")
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    await eventually(lambda: not stack_processes(config_dir, broker), timeout_s=20, what="broker and daemons gone")
    # the run file of a dead launcher is not taken for a running stack
    env = cli_env(tmp_path)
    env["HOME"] = str(tmp_path)
    rc, _, err = await livedata("status", env=env)
    assert rc == 2 and "config directory does not exist" in err


async def test_a_demo_whose_stdout_closes_stops_everything(tmp_path: Path) -> None:
    # head exits after the third line ("subscribing ..."): the broker (line 1) and the three
    # daemons (line 2) are up by then; after head -1 a loaded machine could stop the demo
    # before the daemons' processes were seen at all
    proc, config_dir, broker = await started_demo(tmp_path, " | head -3 > /dev/null")
    await asyncio.wait_for(proc.wait(), 30)  # the demo stops on its broken pipe
    await eventually(lambda: not stack_processes(config_dir, broker), timeout_s=20, what="broker and daemons gone")
