"""Fault: known secrets configured, errors provoked, everything the system says scanned.

Secrets: an Alpaca key and secret and a FuShu api_key in secure.yml, a Redis password
and a ClickHouse password in the URLs of livedata.yml. Redis is real (it requires the
password); ClickHouse is not reachable. The Alpaca and FuShu simulators refuse the
credentials (402 auth failed, 401), so the gateway runs its auth-failure paths; the
datamanager fails to reach ClickHouse, answers commands and dead-letters a bad message;
a tasktimer is run with a wrong Redis password; ``livedata validate`` and the daemons are
run on config directories with mistakes next to the secrets. Scanned: every daemon log,
/metrics, /healthz, /readyz, system events, dead letters, the config errors. Printed: what
was scanned (bytes per place) and where a secret was found (nowhere, or the test fails).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.ops.servers.redis import RedisServer
from shared.dto import ControlCommand, InterestUpdate, utcnow
from tests.daemons import ROOT, System
from tests.helpers import TopicReader, env_without_overrides, eventually, publish
from tests.simulators.alpaca import AlpacaSimulator
from tests.simulators.fushu import FushuSimulator

pytestmark = pytest.mark.reliability

RUN = uuid.uuid4().hex[:6]
SECRETS = {
    "alpaca key": f"AKfz{RUN}Q7W3E9",
    "alpaca secret": f"alpacaSecret-{RUN}-9f8e7d6c",
    "fushu api_key": f"fushuKey-{RUN}-3c4b5a",
    "redis password": f"redisPw{RUN}x1a2b",
    "clickhouse password": f"chPw{RUN}y5d6e",
    "wrong redis password": f"wrongRedisPw{RUN}z7",
    "signing key": f"signingKey-{RUN}-0a1b2c3d4e",
}


class PasswordRedis(RedisServer):
    """redis-server that requires a password (``--requirepass``)."""

    def __init__(self, password: str, **kwargs: Any) -> None:
        self.password = password
        super().__init__(**kwargs)

    def command(self) -> list[str]:
        return [*super().command(), "--requirepass", self.password]

    def answers(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
            return b"+PONG" in s.recv(64)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def found_in(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


async def run_cli(args: list[str], config_dir: Path, timeout_s: float = 45.0) -> tuple[int | None, str]:
    """Run a command on a config directory; its exit code (None: killed at the deadline)
    and its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        "--config-dir",
        str(config_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env_without_overrides(),
        cwd=ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        return proc.returncode, out.decode(errors="replace")
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return None, out.decode(errors="replace")


def mistaken_copy(src: Path, name: str, edit: Any) -> Path:
    d = src.parent / f"{src.name}-{name}"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.log"))
    edit(d)
    return d


def _yaml_edit(file: str, change: Any) -> Any:
    def edit(d: Path) -> None:
        doc = yaml.safe_load((d / file).read_text())
        change(doc)
        (d / file).write_text(yaml.safe_dump(doc))

    return edit


def _raw_edit(file: str, text: str) -> Any:
    def edit(d: Path) -> None:
        (d / file).write_text(text)

    return edit


async def test_no_secret_leaks(kafka_bootstrap: str, tmp_path: Path) -> None:
    redis = PasswordRedis(SECRETS["redis password"], log_path=tmp_path / "redis.log")
    await asyncio.to_thread(redis.start)
    try:
        async with (
            AlpacaSimulator(key="the-right-key", secret="the-right-secret") as alpaca,
            FushuSimulator("the-right-fushu-key") as fushu,
        ):
            await check(kafka_bootstrap, tmp_path, redis, alpaca, fushu)
    finally:
        await asyncio.to_thread(redis.close)


async def check(
    kafka_bootstrap: str, tmp_path: Path, redis: PasswordRedis, alpaca: AlpacaSimulator, fushu: FushuSimulator
) -> None:
    ch_port = closed_port()
    data_sources = {
        "markets": {
            "US": {
                "sources": [
                    {
                        "type": "alpaca",
                        "name": "us-alpaca",
                        "url": alpaca.url,
                        "history_url": alpaca.history_url,
                        "backoff_base_s": 0.1,
                        "backoff_cap_s": 0.5,
                        "connect_timeout_s": 2.0,
                        "auth_timeout_s": 2.0,
                    }
                ]
            },
            "HK": {"sources": [{"type": "fushu", "name": "hk-fushu", "base_url": fushu.url, "poll_interval_s": 0.2}]},
            "CN": {"sources": [{"type": "sim", "ticks_per_s_per_symbol": 5, "interval_ms": 100}]},
        }
    }
    livedata = {
        "redis": {"url": f"redis://:{SECRETS['redis password']}@{redis.address}/0"},
        "clickhouse": {
            "url": f"clickhouse://default:{SECRETS['clickhouse password']}@127.0.0.1:{ch_port}/default",
            "connect_timeout_s": 0.5,
        },
        "security": {"sign": "ops"},  # the tasktimer signs its commands, the datamanager verifies
    }
    system = System(tmp_path, kafka_bootstrap, data_sources=data_sources, livedata=livedata)
    secure = {
        "us-alpaca": {"key": SECRETS["alpaca key"], "secret": SECRETS["alpaca secret"]},
        "hk-fushu": {"api_key": SECRETS["fushu api_key"]},
        "signing_keys": {"ops": SECRETS["signing key"]},
    }
    (system.config_dir / "secure.yml").write_text(yaml.safe_dump(secure))
    t = system.topics
    scanned: dict[str, str] = {}
    try:
        for daemon in system.daemons.values():
            await daemon.start()
        # the gateway and tasktimer come up; the datamanager is not ready without ClickHouse
        await system["gateway"].wait_ready(30)
        await system["tasktimer"].wait_ready(30)
        dm = system["datamanager"]
        await eventually(lambda: _answers(dm), timeout_s=30, what="the datamanager consuming")
        async with (
            TopicReader(kafka_bootstrap, t.system_events) as events,
            TopicReader(kafka_bootstrap, t.deadletter) as dead,
        ):
            interest = InterestUpdate(
                portfolio_id="p1",
                node_id="n1",
                symbols=("AAPL", "00700.HK", "600000.SH"),
                update_type="replace",
                timestamp=utcnow(),
            )
            await publish(kafka_bootstrap, t.interest_updates, interest, key="p1/n1")
            await publish(kafka_bootstrap, t.interest_updates, b'{"type": "interest_update", "v": 1}', key="x")
            for cid, command, params in [
                ("sec-status", "status", {}),
                ("sec-snap", "bar_snapshot", {"market": "HK"}),
                ("sec-bad", "bar_snapshot", {"market": "XX"}),
            ]:
                cmd = ControlCommand(
                    command=command, params=params, correlation_id=cid, source="test", timestamp=utcnow()
                )
                await publish(kafka_bootstrap, t.control_commands, cmd, key="datamanager")
            # the providers were asked with our secrets, and refused them
            await eventually(
                lambda: f"Bearer {SECRETS['fushu api_key']}" in fushu.auth_headers,
                timeout_s=20,
                what="a FuShu poll with our key",
            )
            await eventually(
                lambda: "auth" in system["gateway"].log.read_text(errors="replace").lower(),
                timeout_s=20,
                what="the gateway logging Alpaca's auth failure",
            )
            await eventually(
                lambda: (
                    {"sec-status", "sec-snap", "sec-bad"}
                    <= {getattr(m, "correlation_id", None) for m in events.messages}
                ),
                timeout_s=30,
                what="answers to the commands",
            )
            await eventually(lambda: len(dead.records) >= 1, timeout_s=10, what="the dead letter")
            for name, daemon in system.daemons.items():
                for path in ("/metrics", "/healthz", "/readyz"):
                    scanned[f"{name} {path}"] = await _text(daemon, path)
            scanned["system events"] = "\n".join((r.value or b"").decode(errors="replace") for r in events.records)
            scanned["dead letters"] = "\n".join((r.value or b"").decode(errors="replace") for r in dead.records)
    finally:
        for daemon in system.daemons.values():
            await daemon.stop()
    for name, daemon in system.daemons.items():
        scanned[f"{name} log"] = daemon.log.read_text(errors="replace")

    # errors at start-up: config mistakes next to the secrets, a wrong Redis password
    base = system.config_dir
    wrong_pw = mistaken_copy(
        base,
        "wrong-redis-password",
        _yaml_edit(
            "livedata.yml",
            lambda d: d["redis"].update(url=f"redis://:{SECRETS['wrong redis password']}@{redis.address}/0"),
        ),
    )
    cases = {
        "secret of the wrong type": _yaml_edit("secure.yml", lambda d: d["hk-fushu"].update(api_key=[1, 2])),
        "secret in an unknown key": _yaml_edit(
            "secure.yml", lambda d: d["us-alpaca"].update(secret_key=SECRETS["alpaca secret"])
        ),
        "secret inline in data_sources.yml, unknown key": _yaml_edit(
            "data_sources.yml", lambda d: d["markets"]["US"]["sources"][0].update(apikey=SECRETS["alpaca key"])
        ),
        "secret where a number goes": _yaml_edit(
            "data_sources.yml",
            lambda d: d["markets"]["US"]["sources"][0].update(connect_timeout_s=SECRETS["alpaca secret"]),
        ),
        "YAML error on a secret's line": _raw_edit(
            "secure.yml", f'hk-fushu:\n  api_key: "{SECRETS["fushu api_key"]}\n  other: [\n'
        ),
        "redis URL of the wrong type": _yaml_edit(
            "livedata.yml", lambda d: d["redis"].update(url={"password": SECRETS["redis password"]})
        ),
        "unset ${VAR} in a URL with a password": _yaml_edit(
            "livedata.yml",
            lambda d: d["clickhouse"].update(
                url=f"clickhouse://default:{SECRETS['clickhouse password']}@${{LIVEDATA_UNSET_HOST}}/default"
            ),
        ),
    }
    # malformed store URLs holding a password (asynch's DSNError and urllib's port error quote them)
    ch_pw, redis_pw = SECRETS["clickhouse password"], SECRETS["redis password"]
    malformed_urls = {
        "clickhouse URL without a scheme": ("clickhouse", f"default:{ch_pw}@127.0.0.1:{ch_port}/default"),
        "clickhouse password where the port goes": ("clickhouse", f"clickhouse://default:{ch_pw}/127.0.0.1"),
        "clickhouse URL with a bad port": ("clickhouse", f"clickhouse://default:{ch_pw}@127.0.0.1:9x00/default"),
        "clickhouse URL with a stray bracket": ("clickhouse", f"clickhouse://default:{ch_pw}@[127.0.0.1/default"),
        "clickhouse URL of another scheme": ("clickhouse", f"http://default:{ch_pw}@127.0.0.1:{ch_port}/default"),
        "redis URL without a scheme": ("redis", f":{redis_pw}@{redis.address}/0"),
        "redis password where the port goes": ("redis", f"redis://:{redis_pw}/{redis.address}"),
        "redis URL with a port out of range": ("redis", f"redis://:{redis_pw}@127.0.0.1:99999/0"),
        "redis URL with a stray space": ("redis", f"redis://:{redis_pw} @{redis.address}/0"),
    }
    for case, (store, url) in malformed_urls.items():
        cases[case] = _yaml_edit("livedata.yml", lambda d, store=store, url=url: d[store].update(url=url))
    cases["signing key too short"] = _yaml_edit("secure.yml", lambda d: d["signing_keys"].update(ops=RUN))
    cases["secure.yml readable by others, strict_file_modes"] = _yaml_edit(
        "livedata.yml", lambda d: d.update(security={"sign": "ops", "strict_file_modes": True})
    )
    runs: list[tuple[str, list[str], Path]] = []
    for case, edit in cases.items():
        d = mistaken_copy(base, case.replace(" ", "_").replace("$", "").replace("{", "").replace("}", ""), edit)
        if case.startswith("secure.yml readable"):
            (d / "secure.yml").chmod(0o644)
        runs.append((f"validate: {case}", ["-m", "services.ops.cli", "validate"], d))
        runs.append((f"gateway: {case}", ["-m", "services.feeder_gateway"], d))
        if case in malformed_urls:
            runs.append((f"datamanager: {case}", ["-m", "services.datamanager"], d))
    started = time.monotonic()
    rc_wrong, out_wrong = await _until_logged(wrong_pw, "redis not usable")
    scanned["tasktimer with a wrong Redis password"] = out_wrong
    results = await asyncio.gather(*(run_cli(args, d) for _, args, d in runs))
    for (label, _, _), (rc, out) in zip(runs, results, strict=True):
        scanned[label] = out
        assert rc not in (0, None), f"{label}: exit {rc}\n{out[-2000:]}"
    errors_s = time.monotonic() - started
    # a Redis that refuses the password is an error logged once, retried, no traceback
    assert rc_wrong == 0 and "Traceback" not in out_wrong, out_wrong[-3000:]

    leaks = {where: found_in(text) for where, text in scanned.items() if found_in(text)}
    print(
        f"\nsecrets {len(SECRETS)}; scanned {len(scanned)} places, {sum(map(len, scanned.values()))} bytes"
        f" (start-up error runs {errors_s:.1f}s); tasktimer with a wrong password exit {rc_wrong}"
    )
    for where, text in scanned.items():
        print(f"- {where}: {len(text)} bytes, {'LEAKS ' + ', '.join(found_in(text)) if found_in(text) else 'clean'}")
    assert not leaks, f"secrets found: {leaks}"


def _answers(daemon: Any) -> Any:
    """The datamanager consumes commands (it is not ready without ClickHouse, but its
    command consumer runs; a command sent before it starts is not replayed)."""

    async def check() -> bool:
        try:
            doc = await daemon.readiness()
        except Exception:
            return False
        return bool(doc.get("commands_consumer")) and bool(doc.get("interest_loaded"))

    return check()


async def _text(daemon: Any, path: str) -> str:
    _, text = await daemon._get(path)
    return str(text)


async def _until_logged(config_dir: Path, word: str) -> tuple[int | None, str]:
    """A tasktimer on ``config_dir`` until its log mentions ``word`` (then SIGTERM)."""
    log = config_dir / "tasktimer-wrong-password.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 - the child's log file, opened once
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.tasktimer",
            "--config-dir",
            str(config_dir),
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            env=env_without_overrides(),
            cwd=ROOT,
        )
    try:
        await eventually(
            lambda: proc.returncode is not None or word in log.read_text(errors="replace").lower(),
            timeout_s=20,
            what=f"the tasktimer logging {word}",
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode, log.read_text(errors="replace")
