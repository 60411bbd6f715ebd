"""Pure Alpaca subscription state: desired, requested, the server's echo, the symbol limit.

No I/O: ``plan`` turns the wanted set into the (un)subscribe messages to send, the
answers (``on_echo``, ``on_symbol_limit``, ``on_rejected``) update the state, and every
method returns the status events (state, detail) the connection is to emit. The budget
(what the plan's limit allows, what the server refused) outlives connections; the rest
is per connection (``reset``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.feeder_gateway.feeders.alpaca.wire import Channel, subscription_message

Event = tuple[str, dict[str, Any]]  # a status event: (state, detail)


class Action(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


def to_wire(symbol: str) -> str:
    """Canonical US symbol → Alpaca's (share classes with a dot: BRK-B → BRK.B)."""
    return symbol.replace("-", ".")


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SymbolBudget:
    """Which wanted symbols fit the plan's symbol limit; remembers what the server refused.

    Kept across reconnects. Symbols already on the server stay first; new ones are taken
    in sorted order while room is left. Symbols refused with 405 are not requested again
    while they stay wanted, and the limit learnt from the refusal (the count the server
    held) caps later selections.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.learned: int | None = None
        self.refused: set[str] = set()
        self._reported: frozenset[str] = frozenset()

    @property
    def effective(self) -> int | None:
        limits = [x for x in (self.limit, self.learned) if x is not None]
        return min(limits) if limits else None

    def select(self, wanted: set[str], current: set[str]) -> tuple[set[str], list[str]]:
        """→ (symbols to have on the server, wanted symbols left out)."""
        self.refused &= wanted
        keep = current & wanted
        candidates = sorted(wanted - keep - self.refused)
        limit = self.effective
        if limit is None:
            return keep | set(candidates), sorted(self.refused)
        excess = list(self.refused)
        if len(keep) > limit:
            ordered = sorted(keep)
            keep, excess = set(ordered[:limit]), excess + ordered[limit:]
        room = limit - len(keep)
        excess += candidates[room:]
        return keep | set(candidates[:room]), sorted(excess)

    def newly_excess(self, excess: list[str]) -> bool:
        """True once per distinct non-empty excess set (report it then)."""
        current = frozenset(excess)
        changed = current != self._reported
        self._reported = current
        return changed and bool(current)


@dataclass
class Plan:
    """What one sync sends, and which wire symbols the parser accepts from now on."""

    messages: list[dict[str, Any]]
    accepted: dict[str, str]  # wire → canonical
    events: list[Event]


@dataclass
class SubscriptionState:
    """One feeder's subscription bookkeeping; see the module docstring."""

    channels: tuple[Channel, ...]
    max_per_message: int
    budget: SymbolBudget
    requested: set[str] = field(default_factory=set)  # wire symbols asked for (not refused)
    server: dict[str, frozenset[str]] = field(default_factory=dict)  # channel → last echo
    pending: deque[tuple[Action, list[str]]] = field(default_factory=deque)  # awaiting an answer
    _wanted: dict[str, str] = field(default_factory=dict)  # wire → canonical, last plan
    _limit_hit: bool = False

    def reset(self) -> None:
        """A new connection: nothing is on the server yet."""
        self.requested = set()
        self.server = {}
        self.pending.clear()
        self._limit_hit = False

    def accepted(self) -> dict[str, str]:
        """Wire → canonical of the symbols requested now (data for others is dropped)."""
        return {w: c for w, c in self._wanted.items() if w in self.requested}

    def plan(self, wanted: frozenset[str]) -> Plan:
        """The diffs that make the server's set the budget's selection of ``wanted``."""
        self._wanted = {to_wire(sym): sym for sym in wanted}
        target, excess = self.budget.select(set(self._wanted), self.requested)
        events: list[Event] = []
        if self.budget.newly_excess(excess):
            events.append(self._limit_event(excess, refused=bool(self.budget.refused)))
        messages: list[dict[str, Any]] = []
        for chunk in chunks(sorted(self.requested - target), self.max_per_message):
            self.requested.difference_update(chunk)
            messages.append(self._request(Action.UNSUBSCRIBE, chunk))
        for chunk in chunks(sorted(target - self.requested), self.max_per_message):
            self.requested.update(chunk)
            messages.append(self._request(Action.SUBSCRIBE, chunk))
        return Plan(messages, self.accepted(), events)

    def _request(self, action: Action, symbols: list[str]) -> dict[str, Any]:
        self.pending.append((action, symbols))
        return subscription_message(action.value, self.channels, symbols)

    def on_echo(self, m: dict[str, Any]) -> list[Event]:
        """A ``subscription`` message: the server's FULL set, the truth."""
        self.server = {ch: frozenset(m.get(ch) or ()) for ch in self.channels}
        if self.pending:
            self.pending.popleft()
        return self._settled()

    def on_symbol_limit(self) -> list[Event]:
        """405: the oldest pending request was refused whole; never retry its symbols."""
        if not self.pending:
            return []
        action, symbols = self.pending.popleft()
        events: list[Event] = []
        if action is Action.SUBSCRIBE:
            refused = set(symbols) & self.requested
            self.requested -= refused
            self.budget.refused |= refused
            self._limit_hit = True
            self.budget.newly_excess(sorted(self.budget.refused))
            events.append(self._limit_event(sorted(self.budget.refused), refused=True))
        return events + self._settled()

    def on_rejected(self) -> tuple[Action, list[str]] | None:
        """400 on a pending request: it changed nothing; returns it (to log)."""
        return self.pending.popleft() if self.pending else None

    def _settled(self) -> list[Event]:
        """Once every request is answered, compare the server's echo with what we asked."""
        if self.pending:
            return []
        if self._limit_hit:  # the server showed how many it holds: that is the plan's limit
            self._limit_hit = False
            held = set().union(*self.server.values()) if self.server else set()
            self.budget.learned = len(held)
        mismatch: dict[str, dict[str, list[str]]] = {}
        for ch in self.channels:
            have = self.server.get(ch, frozenset())
            missing, extra = self.requested - have, have - self.requested
            if missing or extra:
                mismatch[ch] = {"missing": sorted(missing)[:50], "extra": sorted(extra)[:50]}
        return [("subscription_mismatch", {"channels": mismatch})] if mismatch else []

    def _limit_event(self, excess: list[str], refused: bool) -> Event:
        return "symbol_limit", {
            "limit": self.budget.effective,
            "excess_count": len(excess),
            "excess": excess[:50],
            "refused_by_server": refused,
        }
