"""``livedata``: the operator's command line, on Typer and Rich.

This module only wires commands to their modules (services/ops/<group>.py); exit codes
and the config a command works on are in services/ops/common.py.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from services.ops.common import (
    EXIT_CODES_HELP,
    INTERRUPTED,
    UNREACHABLE,
    USAGE,
    Unreachable,
    UsageError,
    config_for,
    err,
)
from shared.config import ConfigError

REPO_DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config" / "demo"
BROKER_HELP = (
    "tansu: the embedded in-memory broker (starts in < 1 s); "
    "kafka: Apache Kafka from its Maven jars (needs Java 17+, resolves the jars once)"
)

app = typer.Typer(
    name="livedata",
    help=f"ginkgo-livedata operator commands. {EXIT_CODES_HELP}",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="task_timer.yml jobs: list (default), fire NAME, check FILE.", invoke_without_command=True)
app.add_typer(jobs_app, name="jobs")

ConfigDir = Annotated[
    Path | None,
    typer.Option("--config-dir", help="config directory (default: $GINKGO_DIR, else ~/.ginkgo, else a running demo)"),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="one JSON object per line, for pipes")]


class BrokerKind(StrEnum):
    tansu = "tansu"
    kafka = "kafka"


T = TypeVar("T")


def guarded(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a command's return code into its exit code; every expected failure is one
    line on stderr with its exit code (common.py), never a traceback."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            from aiokafka.errors import KafkaError

            from services.ops.servers.base import ServerError

            try:
                code = int(fn(*args, **kwargs) or 0)
            except ConfigError as e:
                err(f"livedata {name}: configuration error:\n{e}")
                code = USAGE
            except UsageError as e:
                err(f"livedata {name}: {e}")
                code = USAGE
            except Unreachable as e:
                err(f"livedata {name}: {e}")
                code = UNREACHABLE
            except KeyboardInterrupt:
                code = INTERRUPTED
            except BrokenPipeError:
                _quiet_stdout()
                code = 0
            except (KafkaError, ServerError, OSError) as e:  # broker or server trouble: one line
                err(f"livedata {name}: {type(e).__name__}: {e}")
                code = UNREACHABLE
            raise typer.Exit(code)

        return run

    return wrap


def _quiet_stdout() -> None:
    """The reader of our stdout is gone (``| head``): later writes go nowhere."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    from shared.runtime import run_async as run_loop

    box: list[T] = []

    async def main() -> int:
        box.append(await coro)
        return 0

    run_loop(main())
    return box[0]


# -- the local stack ---------------------------------------------------------------------


@app.command(epilog="Example: livedata demo --duration 120 --symbols 600000.SH,AAPL")
@guarded("demo")
def demo(
    config_dir: ConfigDir = None,
    symbols: Annotated[str | None, typer.Option(help="comma-separated symbols (default: a CN/HK/US handful)")] = None,
    duration: Annotated[float | None, typer.Option(help="stop by itself after this many seconds")] = None,
    log_dir: Annotated[str, typer.Option(help="daemon and broker logs")] = ".run/demo",
    broker: Annotated[BrokerKind, typer.Option(help=BROKER_HELP)] = BrokerKind.tansu,
) -> int:
    """Embedded broker + the three daemons + a live view (config: deploy/config/demo)."""
    from services.ops.demo import DEFAULT_SYMBOLS, run_demo
    from shared.config import load_config
    from shared.logs import setup_logging

    setup_logging("demo", "WARNING")
    config = load_config(config_dir or REPO_DEMO_CONFIG)
    chosen = symbols.split(",") if symbols else list(DEFAULT_SYMBOLS)
    return run_async(run_demo(config, chosen, duration, Path(log_dir), broker.value))


@app.command(epilog="Example: livedata up --stores   (then, elsewhere: livedata status)")
@guarded("up")
def up(
    config_dir: ConfigDir = None,
    broker: Annotated[BrokerKind, typer.Option(help=BROKER_HELP)] = BrokerKind.tansu,
    stores: Annotated[
        bool, typer.Option(help="also start a local redis-server and clickhouse-server (REDIS_URL, CLICKHOUSE_URL)")
    ] = False,
    duration: Annotated[float | None, typer.Option(help="stop by itself after this many seconds")] = None,
    log_dir: Annotated[str, typer.Option(help="daemon and server logs")] = ".run/up",
) -> int:
    """A local broker + the three daemons in the foreground (config: deploy/config/demo)."""
    from services.ops.stack import run_stack
    from shared.config import load_config
    from shared.logs import setup_logging

    setup_logging("up", "WARNING")
    config = load_config(config_dir or REPO_DEMO_CONFIG)
    return run_async(run_stack(config, broker.value, Path(log_dir), stores, duration))


@app.command("broker", epilog="Example: livedata broker --port 9092 --broker kafka")
@guarded("broker")
def broker_cmd(
    port: Annotated[int, typer.Option(help="port to listen on")] = 9092,
    broker: Annotated[BrokerKind, typer.Option(help=BROKER_HELP)] = BrokerKind.tansu,
) -> int:
    """Run a local broker in the foreground (Tansu, or Apache Kafka); Ctrl-C stops it."""
    import signal

    from services.ops.servers import make_broker

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # delivered to sigwait below
    server = make_broker(broker.value, port=port).start()
    print(server.describe(), flush=True)
    print(f"KAFKA_BOOTSTRAP_SERVERS={server.address}  (Ctrl-C stops)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})  # the launcher only waits for its stop
    finally:
        server.close()
    return 0


@app.command(epilog="Example: livedata validate --config-dir deploy/config/demo")
@guarded("validate")
def validate(config_dir: ConfigDir = None) -> int:
    """Validate a config directory, feeder settings included."""
    from services.feeder_gateway.feeders.catalog import validate_sources

    config = config_for(config_dir)
    plans = validate_sources(config)
    print(f"{config.directory}: OK")
    for market, plan in plans.items():
        print(f"  {market.value}: sources " + ", ".join(s.name for s in plan.sources))
    print(f"  task_timer.yml: {len(config.task_timer.jobs)} jobs")
    return 0


# -- looking at the system ---------------------------------------------------------------


@app.command(epilog="Example: livedata watch 600000.SH AAPL      livedata watch 00700.HK --json | jq .price")
@guarded("watch")
def watch(
    symbols: Annotated[list[str], typer.Argument(help="symbols, e.g. 600000.SH 00700.HK AAPL")],
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    count: Annotated[int, typer.Option(help="stop after this many updates (0: never)")] = 0,
) -> int:
    """A live table of symbols (last, bid/ask, change, volume, latency, source, flags)."""
    from services.ops.watch import run_watch

    return run_async(run_watch(config_dir, symbols, as_json, duration, count))


@app.command(epilog="Example: livedata status      livedata status --json | jq .ready")
@guarded("status")
def status(
    config_dir: ConfigDir = None,
    as_json: JsonFlag = False,
    alerts: Annotated[int, typer.Option(help="how many of the last alerts to show")] = 5,
) -> int:
    """Every daemon's health and role, markets, queue, conflation, dead letters, lag, alerts.

    Exit code 1 when something is not ready, 3 when the broker is unreachable."""
    from services.ops.status import run_status

    return run_async(run_status(config_dir, as_json, alerts))


class Period(StrEnum):
    m1 = "1m"
    d1 = "1d"


class BarsFrom(StrEnum):
    auto = "auto"
    store = "store"
    datamanager = "datamanager"


@app.command(epilog="Example: livedata bars 600000.SH      livedata bars AAPL --date 2026-03-02 --period 1m --csv")
@guarded("bars")
def bars(
    symbol: Annotated[str, typer.Argument(help="one symbol, e.g. 600000.SH")],
    config_dir: ConfigDir = None,
    date: Annotated[str | None, typer.Option("--date", help="trading day YYYY-MM-DD (default: today's)")] = None,
    period: Annotated[Period, typer.Option(help="1d: the daily bar; 1m: minute bars")] = Period.d1,
    as_json: JsonFlag = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row")] = False,
    source: Annotated[
        BarsFrom,
        typer.Option("--from", help="store: ClickHouse; datamanager: a bar_snapshot; auto: store if configured"),
    ] = BarsFrom.auto,
    wait: Annotated[float, typer.Option(help="seconds to wait for the datamanager's answer")] = 10.0,
) -> int:
    """Stored bars of one symbol (ClickHouse, else the running datamanager)."""
    from services.ops.bars import run_bars

    if as_json and as_csv:
        raise UsageError("--json and --csv exclude each other")
    output = "json" if as_json else "csv" if as_csv else "table"
    return run_async(run_bars(config_dir, symbol, date, period.value, output, source.value, wait))  # type: ignore[arg-type]


@app.command(epilog="Example: livedata tail --topic deadletter      livedata tail --type price_update --symbol AAPL")
@guarded("tail")
def tail(
    config_dir: ConfigDir = None,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", "-t", help="topic suffix (market.data, deadletter, ...); all by default"),
    ] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="message type, e.g. price_update, dead_letter")
    ] = None,
    symbol: Annotated[str | None, typer.Option("--symbol", "-s", help="only this symbol (key or field)")] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", "-b", help="start at the oldest message")] = False,
    count: Annotated[int, typer.Option("--count", "-n", help="stop after this many messages (0: never)")] = 0,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    as_json: JsonFlag = False,
) -> int:
    """Decoded messages of any topic, like kcat (dead letters with their reasons)."""
    from services.ops.tail import run_tail

    return run_async(run_tail(config_dir, topic or [], types or [], symbol, from_beginning, count, duration, as_json))


# -- acting on it ------------------------------------------------------------------------

Portfolio = Annotated[str, typer.Option("--portfolio", help="portfolio id of the subscriber")]
Node = Annotated[str, typer.Option("--node", help="node id of the subscriber")]
Lease = Annotated[float | None, typer.Option("--lease", help="lease in seconds (default: none, stays until removed)")]


@app.command(epilog="Example: livedata subscribe --portfolio p1 --node n1 600000.SH AAPL")
@guarded("subscribe")
def subscribe(
    symbols: Annotated[list[str], typer.Argument(help="symbols to add")],
    portfolio: Portfolio,
    node: Node,
    config_dir: ConfigDir = None,
    lease: Lease = None,
) -> int:
    """Add symbols to a subscriber's interest (an InterestUpdate 'add', as the SDK sends)."""
    from services.ops.interest import run_interest

    return run_async(run_interest(config_dir, "add", portfolio, node, symbols, lease))


@app.command(epilog="Example: livedata unsubscribe --portfolio p1 --node n1 AAPL")
@guarded("unsubscribe")
def unsubscribe(
    symbols: Annotated[list[str], typer.Argument(help="symbols to remove")],
    portfolio: Portfolio,
    node: Node,
    config_dir: ConfigDir = None,
) -> int:
    """Remove symbols from a subscriber's interest (an InterestUpdate 'remove')."""
    from services.ops.interest import run_interest

    return run_async(run_interest(config_dir, "remove", portfolio, node, symbols, None))


Params = Annotated[list[str] | None, typer.Argument(help="key=value parameters (values parsed as YAML scalars)")]
Target = Annotated[str, typer.Option(help="the service the command is for")]


@app.command(epilog="Example: livedata send bar_snapshot market=CN --wait")
@guarded("send")
def send(
    name: Annotated[str, typer.Argument(help="command, e.g. bar_snapshot, status")],
    params: Params = None,
    config_dir: ConfigDir = None,
    target: Target = "datamanager",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="print the command_result as it arrives")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: seconds to wait for the result")] = 10.0,
    as_json: JsonFlag = False,
) -> int:
    """Publish a control command (correlation id printed); --wait prints its result."""
    from services.ops.send import run_send

    return run_async(run_send(config_dir, name, params or [], target, timeout if wait else 0.0, as_json))


@app.command(epilog="Example: livedata command bar_snapshot market=CN --wait 5")
@guarded("command")
def command(
    name: Annotated[str, typer.Argument(help="command, e.g. bar_snapshot")],
    params: Params = None,
    config_dir: ConfigDir = None,
    target: Target = "datamanager",
    wait: Annotated[float, typer.Option(help="seconds to wait for the command_result (0: don't)")] = 10.0,
) -> int:
    """Same as send, waiting --wait SECONDS for the result (the older spelling)."""
    from services.ops.send import run_send

    return run_async(run_send(config_dir, name, params or [], target, wait, False))


# -- jobs --------------------------------------------------------------------------------

Fires = Annotated[int, typer.Option("--fires", metavar="N", help="how many next fires to show")]
Explain = Annotated[
    str | None, typer.Option("--explain", metavar="DATE", help="say for each job whether it fires on DATE, and why not")
]


@jobs_app.callback()
def jobs_default(ctx: typer.Context, config_dir: ConfigDir = None, fires: Fires = 3, explain: Explain = None) -> None:
    """``livedata jobs`` alone lists the jobs."""
    ctx.obj = {"config_dir": config_dir}
    if ctx.invoked_subcommand is None:
        jobs_list(ctx, config_dir, fires, explain)


@jobs_app.command("list", epilog="Example: livedata jobs list --fires 5      livedata jobs list --explain 2026-12-25")
@guarded("jobs list")
def jobs_list(ctx: typer.Context, config_dir: ConfigDir = None, fires: Fires = 3, explain: Explain = None) -> int:
    """Name, cron, timezone, calendar, next fires (2026-12-25 Fri 10:00 +08:00), last outcome."""
    from services.ops.jobs import run_list

    return run_async(run_list(config_dir or _inherited(ctx), fires, explain))


@jobs_app.command("fire", epilog="Example: livedata jobs fire cn_close_snapshot")
@guarded("jobs fire")
def jobs_fire(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="job name in task_timer.yml")],
    config_dir: ConfigDir = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the command_result (0: don't)")] = 10.0,
) -> int:
    """Publish a job's command now (fresh correlation id), print the result."""
    from services.ops.send import run_fire

    return run_async(run_fire(config_dir or _inherited(ctx), job, wait))


@jobs_app.command("check", epilog="Example: livedata jobs check deploy/config/demo/task_timer.yml")
@guarded("jobs check")
def jobs_check(file: Annotated[Path, typer.Argument(help="a task_timer.yml")]) -> int:
    """Validate a task_timer.yml: every mistake (file, job, field); exit 1 if any."""
    from services.ops.jobs import run_check

    return run_check(file)


@app.command("fire", epilog="Example: livedata fire cn_close_snapshot")
@guarded("fire")
def fire(
    job: Annotated[str, typer.Argument(help="job name in task_timer.yml")],
    config_dir: ConfigDir = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the command_result (0: don't)")] = 10.0,
) -> int:
    """Same as: jobs fire NAME."""
    from services.ops.send import run_fire

    return run_async(run_fire(config_dir, job, wait))


@app.command(epilog="Example: livedata acls --principal-prefix livedata- --format kafka-acls > acls.sh")
@guarded("acls")
def acls(
    principal_prefix: Annotated[str, typer.Option(help="principals are User:<prefix><role>")] = "livedata-",
    format: Annotated[str, typer.Option("--format", help="kafka-acls (commands), json or table")] = "kafka-acls",
    role: Annotated[
        str | None, typer.Option(help="only this role: gateway, datamanager, tasktimer, operator, strategy, admin")
    ] = None,
    config_dir: ConfigDir = None,
) -> int:
    """The Kafka ACLs each principal needs (topics by name or prefix, consumer groups), for a secured cluster."""
    from services.ops.acls import run_acls

    return run_acls(config_dir, principal_prefix, format, role)


def _inherited(ctx: typer.Context) -> Path | None:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    value = obj.get("config_dir")
    return value if isinstance(value, Path) else None


def main(argv: list[str] | None = None) -> int:
    """Entry point (``livedata``); returns the exit code (see services/ops/common.py)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its retries; we print the outcome
    try:
        app(args=argv, prog_name="livedata", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else USAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
