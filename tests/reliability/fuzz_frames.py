"""Malformed provider frames for the fuzzed-input fault test, and each feeder's parse path.

Frames are mutations (hypothesis, derandomized) of the recorded frames in tests/fixtures:
a field deleted or given a wrong value (wrong type, huge, non-finite, negative, empty),
an element that is no object, or the raw bytes truncated, spliced with junk, replaced by
garbage, or bloated to ~1 MB. Each ``*_path`` function feeds one frame through the same
public functions of the feeder's parse.py, in the same order and with the same error
handling, as the feeder itself does, and counts what the feeder would count as malformed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import msgspec
from hypothesis import assume
from hypothesis import strategies as st

from services.feeder_gateway.feeders.alpaca.parse import FrameParser, decode_json, decode_msgpack
from services.feeder_gateway.feeders.eastmoney.parse import (
    QuoteError,
    apply_diff,
    decode_envelope,
    quote_to_update,
    symbol_of,
)
from services.feeder_gateway.feeders.fushu.parse import (
    FushuParseError,
    canonical_symbol,
    decode_response,
    decode_tick,
    to_price_update,
)
from services.feeder_gateway.feeders.tencent.parse import (
    TencentParseError,
    UnknownCode,
    decode_body,
    parse_line,
    split_lines,
)
from services.feeder_gateway.feeders.tencent.parse import to_price_update as tencent_update
from shared.dto import PriceUpdate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = datetime(2024, 3, 4, 8, 8, 30, tzinfo=UTC)
MB = 1_000_000

# -- mutations ---------------------------------------------------------------------------

WRONG: list[Any] = [
    None, True, False, "", "abc", "-", "NaN", "Infinity", "1e999", "1e308", [], {}, [1], {"a": 1},
    0, -1, -1e308, 1e308, 10**30, -(10**30), 2**63, 1.5, "2024-13-45T99:99:99Z", "\u0000",
]  # fmt: skip

Frame = tuple[str, bytes]  # (class, raw)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    node = doc
    for p in path[:-1]:
        node = node[p]
    return node, path[-1]


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).replace("NaN", "1e999").replace("Infinity", "1e999").encode()


def document_mutations(seeds: list[Any], dump: Callable[[Any], bytes] = _dumps) -> st.SearchStrategy[Frame]:
    """A seed document with one field deleted or given a wrong value, or an element
    replaced by a non-object."""

    @st.composite
    def mutate(draw: st.DrawFn) -> Frame:
        doc = copy.deepcopy(draw(st.sampled_from(seeds)))
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        node, key = _at(doc, path)
        how = draw(st.sampled_from(["delete", "replace", "replace", "replace"]))
        if how == "delete" and isinstance(node, dict):
            del node[key]
            return "field deleted", dump(doc)
        node[key] = draw(st.sampled_from(WRONG))
        try:
            return "field of a wrong value", dump(doc)
        except (OverflowError, ValueError):  # msgpack has no integers beyond 64 bits
            assume(False)
            raise

    return mutate()


def byte_mutations(seeds: list[bytes]) -> st.SearchStrategy[Frame]:
    """Raw bytes of a seed truncated, spliced with junk, or plain garbage."""
    junk = st.sampled_from([b"\xff", b"\x00", b"\xc3\x28", b"\xed\xa0\x80", b"}", b"]", b'"', b"\\", b"~", b";"])

    @st.composite
    def truncated(draw: st.DrawFn) -> Frame:
        raw = draw(st.sampled_from(seeds))
        return "cut short", raw[: draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))]

    @st.composite
    def spliced(draw: st.DrawFn) -> Frame:
        raw = draw(st.sampled_from(seeds))
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return "junk spliced in", raw[:at] + draw(junk) + raw[at:]

    garbage = st.binary(max_size=200).map(lambda raw: ("garbage", raw))
    return st.one_of(truncated(), spliced(), garbage)




# -- each feeder's parse path ----------------------------------------------------------


class ProviderRefusal(Exception):
    """Where the feeder raises ProviderError (a refused or unreadable answer: reconnect)."""


class Outcome:
    """What the frames produced: ticks, malformed counts by reason, provider refusals."""

    def __init__(self) -> None:
        self.ticks: list[PriceUpdate] = []
        self.malformed: dict[str, int] = {}
        self.refusals = 0

    def bad(self, reason: str, _raw: object = None) -> None:
        self.malformed[reason] = self.malformed.get(reason, 0) + 1

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def insane_ticks(self) -> list[PriceUpdate]:
        """Ticks with a price that no quote can have (non-finite or not positive)."""
        return [t for t in self.ticks if not (math.isfinite(t.price) and t.price > 0)]


class AlpacaPath:
    """alpaca/connection.py: decode (json or msgpack) → FrameParser.parse."""

    def __init__(self, out: Outcome, use_msgpack: bool) -> None:
        self.out = out
        self.msgpack = use_msgpack
        self.parser = FrameParser("fuzz-alpaca", out.bad, trading_events=lambda *a: None, corrections=lambda c: None)
        self.parser.set_wanted({s: s for s in ("AAPL", "MSFT", "BRK.B", "TSLA")})

    def feed(self, raw: bytes) -> None:
        try:
            msgs = decode_msgpack(raw) if self.msgpack else decode_json(raw)
        except (msgspec.DecodeError, ValueError, TypeError, msgpack.UnpackException):
            self.out.bad("undecodable_frame")
            return
        ticks, _controls, _ = self.parser.parse(msgs, NOW)
        self.out.ticks.extend(ticks)


EM_SYMBOLS = ["600000.SH", "000001.SZ", "430047.BJ", "00700.HK"]
EM_CODES = ["600000", "000001", "430047", "00700"]
EM_SECIDS = ["1.600000", "0.000001", "0.430047", "116.00700"]
EM_UNITS = [100, 100, 100, 1]


class EastMoneySsePath:
    """eastmoney/stream.py, one chunk's events: envelope → diff merge → updates."""

    def __init__(self, out: Outcome) -> None:
        self.out = out
        self.cache: dict[int, Any] = {}

    def feed(self, payload: bytes) -> None:
        out = self.out
        try:
            env = decode_envelope(payload)
        except QuoteError as e:
            out.bad(e.reason)
            return
        if env.rc != 0:
            raise ProviderRefusal(f"stream event rc={env.rc}")
        data = env.data
        if data is None or data.diff is None:
            return
        diff = data.diff
        full = env.full == 1
        if isinstance(diff, list):
            requested = {secid: str(i) for i, secid in enumerate(EM_SECIDS)}
            keyed: dict[str, Any] = {}
            for q in diff:
                key = requested.get(f"{q.get('f13')}.{q.get('f12')}") if type(q) is dict else None
                if key is None:
                    out.bad("unrequested_security")
                    continue
                keyed[key] = q
            diff = keyed
        changed, bad = apply_diff(self.cache, diff, len(EM_SYMBOLS), full)
        for _ in bad:
            out.bad("bad_position")
        for pos in changed:
            q = self.cache[pos]
            if full:
                code = q.get("f12")
                if code is not None and code != EM_CODES[pos]:
                    out.bad("position_mismatch")
                    del self.cache[pos]
                    continue
            try:
                update = quote_to_update(
                    EM_SYMBOLS[pos], q, NOW, "fuzz-em", decimal_values=False, volume_unit=EM_UNITS[pos]
                )
            except QuoteError as e:
                out.bad(e.reason)
                continue
            if update is not None:
                out.ticks.append(update)


class EastMoneySnapshotPath:
    """eastmoney/feeder.py (ulist.np/get): envelope → located entries → updates."""

    def __init__(self, out: Outcome, decimal: bool) -> None:
        self.out = out
        self.decimal = decimal

    def feed(self, body: bytes) -> None:
        out = self.out
        try:
            env = decode_envelope(body)
        except QuoteError as e:
            out.bad(e.reason)
            raise ProviderRefusal(f"unreadable snapshot: {e}") from None
        if env.rc != 0:
            raise ProviderRefusal(f"snapshot answered rc={env.rc}")
        diff = env.data.diff if env.data is not None else None
        entries: list[tuple[int, Any]] = []
        if isinstance(diff, list):
            requested = dict(zip(EM_SECIDS, EM_SYMBOLS, strict=True))
            for q in diff:
                try:
                    sym = symbol_of(q, requested) if type(q) is dict else ""
                except QuoteError as e:
                    out.bad(e.reason)
                    continue
                if sym not in EM_SYMBOLS:
                    out.bad("unrequested_security")
                    continue
                entries.append((EM_SYMBOLS.index(sym), q))
        elif diff is not None:
            for key, q in diff.items():
                if not key.isdigit() or int(key) >= len(EM_SYMBOLS) or type(q) is not dict:
                    out.bad("bad_position")
                    continue
                entries.append((int(key), q))
        for pos, q in entries:
            try:
                update = quote_to_update(
                    EM_SYMBOLS[pos], q, NOW, "fuzz-em", decimal_values=self.decimal, volume_unit=EM_UNITS[pos]
                )
            except QuoteError as e:
                out.bad(e.reason)
                continue
            if update is not None:
                out.ticks.append(update)


class FushuPath:
    """fushu/feeder.py: response → items → ticks of the polled symbols."""

    def __init__(self, out: Outcome, polled: set[str]) -> None:
        self.out = out
        self.polled = polled

    def feed(self, body: bytes) -> None:
        out = self.out
        try:
            items = decode_response(body)
        except FushuParseError as e:
            out.bad(e.reason)
            raise ProviderRefusal(f"unreadable response: {e}") from None
        for raw in items:
            try:
                tick = decode_tick(raw)
                symbol = canonical_symbol(tick)
                if symbol not in self.polled:
                    raise FushuParseError("unrequested_symbol", symbol)
                out.ticks.append(to_price_update(tick, symbol, "fuzz-fushu", NOW))
            except FushuParseError as e:
                out.bad(e.reason)


class TencentPath:
    """tencent/feeder.py: body (GBK) → lines → quote lines of the requested codes."""

    def __init__(self, out: Outcome, keys: set[str]) -> None:
        self.out = out
        self.keys = keys

    def feed(self, body: bytes) -> None:
        out = self.out
        text, clean = decode_body(body, "gbk")
        if not clean:
            out.bad("bad_encoding")
        parsed: list[tuple[str, list[str]]] = []
        answered = 0
        for line in split_lines(text):
            try:
                parsed.append(parse_line(line))
                answered += 1
            except UnknownCode:
                out.bad("unknown_code")  # counted by the feeder too (a metric of its own)
                answered += 1
            except TencentParseError as e:
                out.bad(e.reason)
        if not answered:
            out.bad("bad_response")
            raise ProviderRefusal("response without a single quote line")
        for code, fields in parsed:
            if code not in self.keys:
                out.bad("unrequested_code")
                continue
            try:
                out.ticks.append(tencent_update(code, fields, "fuzz-tencent", NOW))
            except TencentParseError as e:
                out.bad(e.reason)


# -- seeds -------------------------------------------------------------------------------


def alpaca_seeds() -> list[list[dict[str, Any]]]:
    frames = [json.loads(line) for line in (FIXTURES / "alpaca" / "frames.jsonl").read_text().splitlines() if line]
    return [f for f in frames if isinstance(f, list) and any(m.get("T") in ("t", "q", "b", "d") for m in f)]


def eastmoney_sse_seeds() -> list[bytes]:
    text = (FIXTURES / "eastmoney" / "sse_stream.txt").read_text(encoding="utf-8")
    return [line[len("data: ") :].encode() for line in text.splitlines() if line.startswith("data: {")]


def fushu_seed() -> Any:
    return json.loads((FIXTURES / "fushu" / "tick_response.json").read_text())


def tencent_seed_lines() -> list[str]:
    raw = (FIXTURES / "tencent" / "quotes_gbk.txt").read_bytes().decode("gbk", errors="replace")
    good = []
    for line in split_lines(raw):
        try:
            code, fields = parse_line(line)
            tencent_update(code, fields, "seed", NOW)
        except (TencentParseError, UnknownCode):
            continue
        good.append(line)
    return good
