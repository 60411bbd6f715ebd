"""``livedata``: the operator's command line (demo, up, broker, validate, jobs, fire, command)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from services.ops.servers.base import ServerError
from shared.config import AppConfig, ConfigError, load_config
from shared.runtime import run_async

REPO_DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config" / "demo"
BROKER_HELP = (
    "tansu: the embedded in-memory broker (starts in < 1 s); "
    "kafka: Apache Kafka from its Maven jars (needs Java 17+, resolves the jars once)"
)


def _config(args: argparse.Namespace) -> AppConfig:
    return load_config(args.config_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from services.ops.demo import DEFAULT_SYMBOLS, run_demo
    from shared.logs import setup_logging

    setup_logging("demo", "WARNING")
    config = load_config(args.config_dir or REPO_DEMO_CONFIG)
    symbols = args.symbols.split(",") if args.symbols else list(DEFAULT_SYMBOLS)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_async(run_demo(config, symbols, args.duration, log_dir, args.broker))


def cmd_up(args: argparse.Namespace) -> int:
    from services.ops.stack import run_stack
    from shared.logs import setup_logging

    setup_logging("up", "WARNING")
    config = load_config(args.config_dir or REPO_DEMO_CONFIG)
    return run_async(run_stack(config, args.broker, Path(args.log_dir), args.stores, args.duration))


def cmd_broker(args: argparse.Namespace) -> int:
    import signal

    from services.ops.servers import make_broker

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # delivered to sigwait below
    broker = make_broker(args.broker, port=args.port).start()
    print(broker.describe(), flush=True)
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.address}  (Ctrl-C stops)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})  # the launcher only waits for its stop
    finally:
        broker.close()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from services.feeder_gateway.feeders.catalog import validate_sources

    config = _config(args)
    plans = validate_sources(config)
    print(f"{config.directory}: OK")
    for market, plan in plans.items():
        print(f"  {market.value}: sources " + ", ".join(s.name for s in plan.sources))
    print(f"  task_timer.yml: {len(config.task_timer.jobs)} jobs")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``livedata jobs`` without a subcommand lists the jobs."""
    return cmd_jobs_list(args)


async def _last_outcomes(config: AppConfig) -> tuple[dict[str, dict[str, Any]], str]:
    """Each job's latest fire record from Redis, and a note on where they came from."""
    from services.tasktimer.store import RedisFireStore

    url = config.livedata.redis.url
    if url is None:
        return {}, "no redis.url: last outcomes are known only to the running tasktimer"
    s = config.livedata.tasktimer
    store = RedisFireStore(url.get_secret_value(), s.redis_prefix, s.record_ttl_s)
    try:
        return await store.outcomes(), "last outcomes from Redis"
    except Exception as e:
        return {}, f"Redis unreachable ({type(e).__name__}): no last outcomes"
    finally:
        await store.stop()


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from services.tasktimer.cron import MAX_SKIPPED_DAYS, horizon_note, next_fires
    from shared.dto import utcnow

    count = getattr(args, "fires", 3)  # `livedata jobs` alone: 3
    if count < 1:
        print(f"--fires: {count} is not a positive number of fires", file=sys.stderr)
        return 2
    config = _config(args)
    now = utcnow()
    outcomes, note = run_async_value(_last_outcomes(config))
    print(f"{'job':<24}{'cron':<22}{'timezone':<18}{'cal':<5}{'next fires (local)':<56} last outcome")
    unconfirmed = False
    for job in config.task_timer.jobs:
        if job.enabled:
            fires = next_fires(job, now, count)
            marks = []
            for f in fires:
                flagged = horizon_note(job, f) is not None
                unconfirmed |= flagged
                marks.append(f.strftime("%Y-%m-%d %H:%M") + ("*" if flagged else ""))
            nxt = ", ".join(marks) or f"(none: no trading-day instant within {MAX_SKIPPED_DAYS} days)"
        else:
            nxt = "(disabled)"
        last = outcomes.get(job.name)
        last_s = f"{last['outcome']} {last['instant']} by {last['replica']} late {last['lateness_s']}s" if last else "-"
        cal = job.calendar.value if job.calendar else "-"
        print(f"{job.name:<24}{job.cron:<22}{job.timezone:<18}{cal:<5}{nxt:<56} {last_s}")
    if unconfirmed:
        print(
            "* estimated: that calendar year is not confirmed, the day is the holidays library's estimate;"
            " each such fire alerts (see livedata jobs check)"
        )
    print(f"({note})")
    return 0


def cmd_jobs_check(args: argparse.Namespace) -> int:
    from services.tasktimer.jobs import check_file
    from shared.calendars import check_overrides

    result = check_file(Path(args.file))
    problems = [*result.problems, *check_overrides()]
    for line in problems:
        print(f"error: {line}")
    for line in result.warnings:
        print(f"warning: {line}")
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    n = len(result.jobs.jobs) if result.jobs else 0
    print(f"{args.file}: OK, {n} jobs" + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))
    return 0


def run_async_value(coro: Any) -> Any:
    """Run a coroutine to completion and return its value (CLI helpers)."""
    return asyncio.run(coro)


async def _publish_and_wait(config: AppConfig, command: Any, topic: str, key: str, wait_s: float) -> int:
    from aiokafka import AIOKafkaConsumer

    from shared.dto import CommandResult, DecodeError, decode
    from shared.kafka import KafkaPublisher, assign_all, consumer_options
    from shared.topics import Topics

    kafka = config.livedata.kafka
    topics = Topics(config.livedata.topics.prefix)
    consumer = AIOKafkaConsumer(**consumer_options(kafka, "livedata-cli"))
    try:
        await consumer.start()
        tps = await assign_all(consumer, topics.system_events)
        await consumer.seek_to_end(*tps)
        async with KafkaPublisher(kafka, "livedata-cli") as pub:
            await pub.publish(topic, command, key=key)
        print(f"published {command.command} correlation_id={command.correlation_id}")
        if wait_s <= 0:
            return 0
        async with asyncio.timeout(wait_s):
            while True:
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    for rec in recs:
                        try:
                            msg = decode(rec.value or b"")
                        except DecodeError:
                            continue
                        if isinstance(msg, CommandResult) and msg.correlation_id == command.correlation_id:
                            print(f"{msg.service}: ok={msg.ok} duration_ms={msg.duration_ms} {msg.detail}")
                            return 0 if msg.ok else 1
    except TimeoutError:
        print(f"no command_result within {wait_s}s", file=sys.stderr)
        return 1
    finally:
        await consumer.stop()


def cmd_fire(args: argparse.Namespace) -> int:
    """Publish a job's command now with a fresh correlation id and print its result."""
    from services.tasktimer.cron import fire_id
    from shared.dto import ControlCommand, utcnow
    from shared.topics import Topics

    config = _config(args)
    jobs = {j.name: j for j in config.task_timer.jobs}
    job = jobs.get(args.job)
    if job is None:
        print(f"no job {args.job!r} in task_timer.yml (jobs: {', '.join(jobs) or 'none'})", file=sys.stderr)
        return 2
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
    return run_async(_publish_and_wait(config, cmd, topic, job.target, args.wait))


def cmd_command(args: argparse.Namespace) -> int:
    import yaml

    from shared.dto import ControlCommand, utcnow
    from shared.topics import Topics

    config = _config(args)
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"bad parameter {item!r}: expected key=value", file=sys.stderr)
            return 2
        params[key] = yaml.safe_load(value)
    cmd = ControlCommand(
        command=args.name,
        params=params,
        source="livedata-cli",
        correlation_id=f"cli:{uuid.uuid4().hex}",
        target=args.target,
        timestamp=utcnow(),
    )
    topics = Topics(config.livedata.topics.prefix)
    return run_async(_publish_and_wait(config, cmd, topics.control_commands, args.target, args.wait))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livedata", description="ginkgo-livedata operator commands.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config-dir", type=Path, default=None, help="config directory (default: $GINKGO_DIR, else ~/.ginkgo)"
        )
        return sp

    d = with_config(
        sub.add_parser("demo", help="embedded broker + three daemons + live view (config: deploy/config/demo)")
    )
    d.add_argument("--symbols", help="comma-separated symbols (default: a CN/HK/US handful)")
    d.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    d.add_argument("--log-dir", default=".run/demo", help="daemon and broker logs (default: .run/demo)")
    d.add_argument("--broker", choices=["tansu", "kafka"], default="tansu", help=BROKER_HELP)
    d.set_defaults(func=cmd_demo)

    u = with_config(
        sub.add_parser("up", help="a local broker + the three daemons in the foreground (config: deploy/config/demo)")
    )
    u.add_argument("--broker", choices=["tansu", "kafka"], default="tansu", help=BROKER_HELP)
    u.add_argument(
        "--stores",
        action="store_true",
        help="also start a local redis-server and clickhouse-server (REDIS_URL, CLICKHOUSE_URL for the daemons)",
    )
    u.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    u.add_argument("--log-dir", default=".run/up", help="daemon and server logs (default: .run/up)")
    u.set_defaults(func=cmd_up)

    b = sub.add_parser("broker", help="run a local broker in the foreground (Tansu, or Apache Kafka)")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--broker", choices=["tansu", "kafka"], default="tansu", help=BROKER_HELP)
    b.set_defaults(func=cmd_broker)

    with_config(sub.add_parser("validate", help="validate a config directory, feeder settings included")).set_defaults(
        func=cmd_validate
    )
    j = with_config(sub.add_parser("jobs", help="task_timer.yml jobs: list (default), fire NAME, check FILE"))
    j.set_defaults(func=cmd_jobs)
    jsub = j.add_subparsers(dest="jobs_cmd")

    def sub_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config-dir", type=Path, default=argparse.SUPPRESS, help="config directory")
        return sp

    jl = sub_config(jsub.add_parser("list", help="name, cron, timezone, calendar, next fires, last outcome (Redis)"))
    jl.add_argument("--fires", type=int, default=3, metavar="N", help="how many next fires to show (default 3)")
    jl.set_defaults(func=cmd_jobs_list)
    jf = sub_config(
        jsub.add_parser("fire", help="publish a job's command now (fresh correlation id), print the result")
    )
    jf.add_argument("job")
    jf.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the command_result (0: don't)")
    jf.set_defaults(func=cmd_fire)
    jc = jsub.add_parser("check", help="validate a task_timer.yml: every mistake (file, job, field); exit 1 if any")
    jc.add_argument("file")
    jc.set_defaults(func=cmd_jobs_check)

    f = with_config(sub.add_parser("fire", help="same as: jobs fire NAME"))
    f.add_argument("job")
    f.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the command_result (0: don't)")
    f.set_defaults(func=cmd_fire)

    c = with_config(sub.add_parser("command", help="publish a control command, e.g. bar_snapshot market=CN"))
    c.add_argument("name")
    c.add_argument("param", nargs="*", help="key=value parameters (values parsed as YAML scalars)")
    c.add_argument("--target", default="datamanager")
    c.add_argument("--wait", type=float, default=10.0)
    c.set_defaults(func=cmd_command)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its retries; we print the outcome
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"livedata {args.cmd}: configuration error:\n{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (KafkaError, ServerError, OSError) as e:  # broker or server trouble: one line, no traceback
        print(f"livedata {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
