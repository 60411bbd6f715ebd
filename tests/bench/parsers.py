"""Parse throughput per feeder: recorded frames (tests/fixtures/<provider>/) → DTOs, in process.

Each provider's pure parse functions run over its recorded frames, pass after pass, for a
fixed time; per-frame state (Alpaca's trade-id dedup, EastMoney's merge cache) starts
fresh each pass, outside the timed part, so every pass does the full work. The baseline
is the generic decode of the same bytes (msgspec JSON, or text decode and split for
Tencent's ``~`` lines): what is left of a frame's cost once the parser's own work is gone.
A provider whose parser fails to import gets a "skipped: <reason>" row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from tests.bench.harness import BenchContext, Figure

NAME = "parsers"
TITLE = "parse throughput per feeder (recorded frames → DTOs)"
NEEDS_BROKER = False

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECEIVED = datetime(2024, 3, 4, 8, 15, 7, tzinfo=UTC)
_json = msgspec.json.Decoder()


@dataclass
class ParserCase:
    """One provider's frames and how to parse them.

    ``prepare()`` runs before each timed pass and returns the per-pass parse function
    (fresh state); it maps one frame to the number of ticks it produced.
    """

    provider: str
    frames: list[Any]
    prepare: Callable[[], Callable[[Any], int]]
    decode_only: Callable[[Any], object]
    decode_only_name: str
    notes: dict[str, Any] = field(default_factory=dict)


def _alpaca() -> ParserCase:
    from services.feeder_gateway.feeders.alpaca.parse import FrameParser, decode_json

    frames = [line for line in (FIXTURES / "alpaca" / "frames.jsonl").read_text().splitlines() if line.strip()]
    wanted = {"AAPL": "AAPL", "BRK.B": "BRK.B", "MSFT": "MSFT"}

    def prepare() -> Callable[[Any], int]:
        parser = FrameParser("alpaca", lambda reason, raw: None)
        parser.set_wanted(wanted)
        parse = parser.parse

        def one(frame: str) -> int:
            ticks, _, _ = parse(decode_json(frame), RECEIVED)
            return len(ticks)

        return one

    return ParserCase("alpaca", frames, prepare, _json.decode, "msgspec JSON decode of each frame")


_EM_SYMBOLS = ("600000.SH", "000001.SZ", "430047.BJ", "00700.HK")
_EM_UNITS = (100, 100, 100, 1)  # A-share volumes in lots of 100; HK in shares


def _eastmoney_sse() -> ParserCase:
    from services.feeder_gateway.feeders.eastmoney import wire
    from services.feeder_gateway.feeders.eastmoney.parse import apply_diff, decode_envelope, quote_to_update

    body = (FIXTURES / "eastmoney" / "sse_stream.txt").read_bytes()
    events = len(wire.SseDecoder(1 << 20).feed(body))

    def prepare() -> Callable[[Any], int]:
        cache: dict[int, wire.Quote] = {}

        def one(chunk: bytes) -> int:
            # The stream chunk as received: SSE framing, envelope, merge, DTOs (the
            # feeder's _on_event without its logging and metrics).
            ticks = 0
            for payload in wire.SseDecoder(1 << 20).feed(chunk):
                env = decode_envelope(payload)
                if env.data is None or not isinstance(env.data.diff, dict):
                    continue
                changed, _ = apply_diff(cache, env.data.diff, len(_EM_SYMBOLS), env.full == 1)
                for pos in changed:
                    if quote_to_update(
                        _EM_SYMBOLS[pos],
                        cache[pos],
                        RECEIVED,
                        "eastmoney",
                        decimal_values=False,
                        volume_unit=_EM_UNITS[pos],
                    ):
                        ticks += 1
            return ticks

        return one

    def decode_only(chunk: bytes) -> object:
        return [_json.decode(p) for p in wire.SseDecoder(1 << 20).feed(chunk)]

    return ParserCase(
        "eastmoney (SSE stream)",
        [body],
        prepare,
        decode_only,
        "SSE framing + msgspec JSON decode of each event",
        notes={"events_per_frame": events, "frame": "one recorded stream body (SSE events)"},
    )


def _eastmoney_snapshot() -> ParserCase:
    from services.feeder_gateway.feeders.eastmoney.parse import decode_envelope, quote_to_update, symbol_of

    keyed = (FIXTURES / "eastmoney" / "ulist_keyed_int.json").read_bytes()
    listed = (FIXTURES / "eastmoney" / "ulist_np1_fltt2.json").read_bytes()
    requested = {"1.600000": "600000.SH", "0.000001": "000001.SZ", "0.430047": "430047.BJ", "116.00700": "00700.HK"}
    unit = dict(zip(_EM_SYMBOLS, _EM_UNITS, strict=True))

    def prepare() -> Callable[[Any], int]:
        def one(body: bytes) -> int:
            env = decode_envelope(body)
            diff = env.data.diff if env.data is not None else None
            ticks = 0
            if isinstance(diff, dict):  # keyed by position, integer-scaled values
                for key, q in diff.items():
                    pos = int(key)
                    sym = _EM_SYMBOLS[pos]
                    if quote_to_update(sym, q, RECEIVED, "eastmoney", decimal_values=False, volume_unit=unit[sym]):
                        ticks += 1
            elif isinstance(diff, list):  # np=1: a list in any order, fltt=2 decimals
                for q in diff:
                    sym = symbol_of(q, requested)
                    u = unit.get(sym, 100)
                    if quote_to_update(sym, q, RECEIVED, "eastmoney", decimal_values=True, volume_unit=u):
                        ticks += 1
            return ticks

        return one

    return ParserCase(
        "eastmoney (snapshot)",
        [keyed, listed],
        prepare,
        _json.decode,
        "msgspec JSON decode of each body",
        notes={"frame": "one recorded ulist answer"},
    )


def _fushu() -> ParserCase:
    from services.feeder_gateway.feeders.fushu.parse import parse_response

    body = (FIXTURES / "fushu" / "tick_response.json").read_bytes()

    def prepare() -> Callable[[Any], int]:
        def one(frame: bytes) -> int:
            ticks, _ = parse_response(frame, "fushu", RECEIVED)
            return len(ticks)

        return one

    return ParserCase("fushu", [body], prepare, _json.decode, "msgspec JSON decode of the body")


def _tencent() -> ParserCase:
    from services.feeder_gateway.feeders.tencent.parse import parse_body

    body = (FIXTURES / "tencent" / "quotes_gbk.txt").read_bytes()

    def prepare() -> Callable[[Any], int]:
        def one(frame: bytes) -> int:
            ticks, _ = parse_body(frame, "gbk", "tencent", RECEIVED)
            return len(ticks)

        return one

    def decode_only(frame: bytes) -> object:
        return [line.split("~") for line in frame.decode("gbk").split("\n") if line.strip()]

    return ParserCase(
        "tencent",
        [body],
        prepare,
        decode_only,
        "GBK decode + split into lines and ~ fields",
        notes={"frame": "one recorded GBK answer (several codes)"},
    )


CASES: tuple[tuple[str, Callable[[], ParserCase]], ...] = (
    ("alpaca", _alpaca),
    ("eastmoney (SSE stream)", _eastmoney_sse),
    ("eastmoney (snapshot)", _eastmoney_snapshot),
    ("fushu", _fushu),
    ("tencent", _tencent),
)


def _measure(case: ParserCase, seconds: float) -> tuple[float, int, int]:
    """(timed seconds, frames, ticks) over passes of the recorded frames."""
    elapsed = 0.0
    frames = ticks = 0
    frames_per_pass = len(case.frames)
    while elapsed < seconds:
        one = case.prepare()
        started = time.perf_counter()
        for frame in case.frames:
            ticks += one(frame)
        elapsed += time.perf_counter() - started
        frames += frames_per_pass
    return elapsed, frames, ticks


def _measure_decode(case: ParserCase, seconds: float) -> tuple[float, int]:
    decode = case.decode_only
    elapsed = 0.0
    frames = 0
    while elapsed < seconds:
        started = time.perf_counter()
        for frame in case.frames:
            decode(frame)
        elapsed += time.perf_counter() - started
        frames += len(case.frames)
    return elapsed, frames


def _figure(case: ParserCase, seconds: float) -> Figure:
    _measure(case, min(0.2, seconds))  # warm caches (imports, lru caches) outside the figure
    elapsed, frames, ticks = _measure(case, seconds)
    base_elapsed, base_frames = _measure_decode(case, seconds)
    frame_bytes = sum(len(f) for f in case.frames) / len(case.frames)
    rate = frames / elapsed
    return Figure(
        NAME,
        f"{case.provider} parse",
        round(rate),
        "frames/s",
        baseline=round(base_frames / base_elapsed),
        baseline_name=f"{case.provider}: {case.decode_only_name}",
        target="report",
        details={
            "us_per_frame": round(elapsed / frames * 1e6, 3),
            "ticks_per_frame": round(ticks / frames, 2),
            "us_per_tick": round(elapsed / ticks * 1e6, 3) if ticks else None,
            "ticks_per_s": round(ticks / elapsed),
            "decode_only_us_per_frame": round(base_elapsed / base_frames * 1e6, 3),
            "bytes_per_frame": round(frame_bytes),
            "recorded_frames": len(case.frames),
            **case.notes,
        },
    )


async def run(ctx: BenchContext) -> list[Figure]:
    seconds = ctx.pick(2.0, 0.5)
    figures = []
    for provider, load in CASES:
        try:
            case = load()
        except Exception as e:  # a parser under change must not cost the other figures
            reason = f"import failed: {type(e).__name__}: {e}".splitlines()[0][:160]
            figures.append(Figure(NAME, f"{provider} parse", None, "frames/s", skipped=reason))
            continue
        try:
            figures.append(_figure(case, seconds))
        except Exception as e:
            reason = f"parse failed on the recorded frames: {type(e).__name__}: {e}".splitlines()[0][:160]
            figures.append(Figure(NAME, f"{provider} parse", None, "frames/s", skipped=reason))
    return figures
