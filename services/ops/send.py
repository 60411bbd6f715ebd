"""``livedata send COMMAND [k=v ...]`` (alias ``command``) and ``livedata jobs fire NAME``:
publish a control command, then print each ``command_result`` for it as it arrives."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import msgspec

from services.ops.common import (
    NOT_READY,
    OK,
    USAGE,
    UsageError,
    config_for,
    err,
    parse_params,
    start_consumer,
    start_publisher,
)
from shared.config import AppConfig
from shared.dto import CommandResult, ControlCommand, DecodeError, decode, utcnow
from shared.signing import sign, signer_from_config
from shared.topics import Topics


async def publish_and_wait(
    config: AppConfig,
    command: ControlCommand,
    topic: str,
    key: str,
    wait_s: float,
    as_json: bool = False,
) -> int:
    """Publish ``command``; with ``wait_s`` > 0 print its results as they arrive until every
    market-data partition has answered (a partitioned datamanager answers per partition it
    owns). 0: ok; 1: an answer was ok=false, or some partition did not answer within ``wait_s``
    (which ones is said)."""
    from shared.kafka import assign_all

    topics = Topics(config.livedata.topics.prefix)
    consumer = await start_consumer(config, "livedata-cli")
    try:
        tps = await assign_all(consumer, topics.system_events)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # pin "the end" before publishing: nothing of ours is missed
        pub = await start_publisher(config, "livedata-cli")
        try:
            await pub.publish(topic, sign(signer_from_config(config), command), key=key)  # security.sign
        finally:
            await pub.stop()
        if not as_json:
            print(f"published {command.command} correlation_id={command.correlation_id}", flush=True)
        if wait_s <= 0:
            return OK
        deadline = time.monotonic() + wait_s
        answers = Answers()
        while time.monotonic() < deadline and not answers.complete:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                for rec in recs:
                    try:
                        msg = decode(rec.value or b"")
                    except DecodeError:
                        continue
                    if not (isinstance(msg, CommandResult) and msg.correlation_id == command.correlation_id):
                        continue
                    answers.add(msg)
                    if as_json:
                        print(json.dumps(msgspec.to_builtins(msg)), flush=True)
                    else:
                        _print_result(msg)
        if not answers.results:
            err(f"no command_result within {wait_s:g}s (is the {command.target} running?)")
            return NOT_READY
        if not answers.complete:
            err(
                f"partitions {_ranges(answers.missing())} of {answers.count} did not answer within {wait_s:g}s "
                f"(answered: {_ranges(answers.covered)}, by {', '.join(sorted(answers.instances)) or '?'})"
            )
            return NOT_READY
        if not as_json and answers.count:
            print(
                f"all {answers.count} partitions answered, by {len(answers.instances)} instance(s)"
                f"{'' if answers.ok else '; some answers are ok=false'}",
                flush=True,
            )
        return OK if answers.ok else NOT_READY
    finally:
        await consumer.stop()


class Answers:
    """The command_results of one command: complete once every market-data partition has
    been named by some answer (an answer that names none covers the whole command)."""

    def __init__(self) -> None:
        self.results: list[CommandResult] = []
        self.covered: set[int] = set()
        self.count = 0
        self.instances: set[str] = set()
        self.whole = False

    def add(self, msg: CommandResult) -> None:
        self.results.append(msg)
        if msg.instance:
            self.instances.add(msg.instance)
        if msg.partitions is None or not msg.partition_count:
            self.whole = True
            return
        self.covered.update(msg.partitions)
        self.count = max(self.count, msg.partition_count)

    @property
    def complete(self) -> bool:
        return self.whole or (self.count > 0 and self.covered >= set(range(self.count)))

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def missing(self) -> list[int]:
        return sorted(set(range(self.count)) - self.covered)


def _ranges(parts: Iterable[int]) -> str:
    """[0, 1, 2, 5] → "0-2,5"."""
    out: list[str] = []
    for p in sorted(parts):
        if out and "-" not in out[-1] and int(out[-1]) == p - 1:
            out[-1] = f"{out[-1]}-{p}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == p - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out) or "none"


def _print_result(msg: CommandResult) -> None:
    detail = {k: v for k, v in msg.detail.items() if k != "symbols"}
    where = ""
    if msg.partitions is not None:
        where = f" partitions={_ranges(msg.partitions)}/{msg.partition_count}"
    if msg.instance:
        where += f" instance={msg.instance}"
    text = " ".join(f"{k}={v}" for k, v in detail.items())
    print(f"{msg.service}: ok={msg.ok} duration_ms={msg.duration_ms:.1f}{where} {text}", flush=True)
    per_symbol = msg.detail.get("symbols")
    if isinstance(per_symbol, dict):
        for sym, info in sorted(per_symbol.items()):
            line = " ".join(f"{k}={v}" for k, v in info.items()) if isinstance(info, dict) else str(info)
            print(f"  {sym}: {line}", flush=True)


async def run_send(
    config_dir: Path | None, name: str, params: list[str], target: str, wait_s: float, as_json: bool
) -> int:
    config = config_for(config_dir)
    try:
        parsed = parse_params(params)
    except UsageError as e:
        err(str(e))
        return USAGE
    from shared.commands import command_param_problems

    problems = command_param_problems(name, parsed)
    if problems:
        for f, problem in problems:
            err(f"{name}: {f}: {problem}")
        return USAGE
    cmd = ControlCommand(
        command=name,
        params=parsed,
        source="livedata-cli",
        correlation_id=f"cli:{uuid.uuid4().hex}",
        target=target,
        timestamp=utcnow(),
    )
    topics = Topics(config.livedata.topics.prefix)
    return await publish_and_wait(config, cmd, topics.control_commands, target, wait_s, as_json)


async def run_fire(config_dir: Path | None, job_name: str, wait_s: float) -> int:
    """Publish a job's command now with a fresh correlation id and print its result."""
    from services.tasktimer.cron import fire_id

    config = config_for(config_dir)
    jobs = {j.name: j for j in config.task_timer.jobs}
    job = jobs.get(job_name)
    if job is None:
        err(f"no job {job_name!r} in task_timer.yml (jobs: {', '.join(jobs) or 'none'})")
        return USAGE
    now = utcnow()
    cmd = ControlCommand(
        command=job.command,
        params=dict(job.params),
        source="livedata-cli",
        correlation_id=f"manual:{fire_id(job, now)}:{uuid.uuid4().hex[:8]}",
        job=job.name,
        target=job.target,
        timestamp=now,
        scheduled_for=now,
    )
    topic = Topics(config.livedata.topics.prefix).named(job.topic)
    return await publish_and_wait(config, cmd, topic, job.target, wait_s)
