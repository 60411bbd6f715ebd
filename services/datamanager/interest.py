"""The interest registry: each subscriber's symbols, leases, and the per-market union."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from shared.config import InterestLimits
from shared.dto import InterestUpdate, UpdateType
from shared.symbols import Market, market_of, normalize

SubscriberId = tuple[str, str]  # (portfolio_id, node_id)


class SubscribedSymbols(Protocol):
    """The union of interest per market: the registry (on the lease holder) or the
    published subscriptions (on a partitioned datamanager's members)."""

    def market_symbols(self, market: Market) -> frozenset[str]: ...


@dataclass(slots=True)
class Subscriber:
    """One subscriber's interest as stored: its set, lease end and the last record applied."""

    symbols: frozenset[str]
    expires_at: float | None  # epoch seconds; None: no lease
    offset: int = -1  # offset of the last interest record applied (its key fixes the partition)


class InterestRegistry:
    """Per-subscriber symbol sets with a reference-counted union per market.

    ``replace`` replaces that subscriber's set only; ``add``/``remove``/``clear`` change
    it. A subscriber with a lease that is not renewed (any update renews it) is dropped
    by ``expire``. Every method returns the markets whose union changed. A record applied
    again (its offset not past the subscriber's last) changes nothing. ``dirty`` names the
    subscribers changed since the store last took them; ``last_added`` the symbols the
    last ``apply`` added to that subscriber (for snapshot-on-subscribe). ``over_limit``
    says whether an update would pass one of ``limits`` (checked before ``apply``).
    """

    def __init__(
        self,
        default_lease_s: float | None = None,
        max_lease_s: float = 86_400.0,
        limits: InterestLimits | None = None,
    ) -> None:
        self.default_lease_s = default_lease_s
        self.max_lease_s = max_lease_s
        self.limits = limits or InterestLimits()
        self._subscribers: dict[SubscriberId, Subscriber] = {}
        self.dirty: set[SubscriberId] = set()
        self.last_added: frozenset[str] = frozenset()
        self._refcount: dict[str, int] = {}
        self._by_market: dict[Market, set[str]] = {m: set() for m in Market}

    @staticmethod
    def validate(update: InterestUpdate) -> tuple[str, ...]:
        """Canonical symbols of an update; raises SymbolError naming a bad one."""
        return tuple(normalize(s) for s in update.symbols)

    def apply(self, update: InterestUpdate, offset: int = -1) -> set[Market]:
        """Apply one update (symbols must pass ``validate``) and return changed markets."""
        sid = (update.portfolio_id, update.node_id)
        symbols = frozenset(self.validate(update))
        current = self._subscribers.get(sid)
        self.last_added = frozenset()
        if current is not None and 0 <= offset <= current.offset:
            return set()  # a redelivery
        old = current.symbols if current else frozenset()
        new = _next_set(old, update.update_type, symbols)
        lease = update.lease_s if update.lease_s is not None else self.default_lease_s
        expires = update.timestamp.timestamp() + min(lease, self.max_lease_s) if lease is not None else None
        if new or offset >= 0:  # an emptied subscriber stays as a tombstone of its offset
            self._subscribers[sid] = Subscriber(new, expires, offset)
        else:
            self._subscribers.pop(sid, None)
        self.dirty.add(sid)
        self.last_added = new - old
        return self._change(old, new)

    def over_limit(self, update: InterestUpdate, symbols: frozenset[str]) -> tuple[str, str] | None:
        """(reason, detail) if applying ``update`` (its canonical ``symbols``) would pass a
        limit: a new subscriber past ``max_subscribers``, a set past
        ``max_symbols_per_subscriber``, a market's union past ``max_symbols_per_market``."""
        lim = self.limits
        current = self._subscribers.get((update.portfolio_id, update.node_id))
        old = current.symbols if current else frozenset()
        new = _next_set(old, update.update_type, symbols)
        if current is None and new and len(self._subscribers) >= lim.max_subscribers:
            return "too_many_subscribers", f"datamanager.limits.max_subscribers ({lim.max_subscribers}) are known"
        if len(new) > lim.max_symbols_per_subscriber:
            return (
                "too_many_symbols",
                f"{len(new)} symbols for one subscriber, datamanager.limits.max_symbols_per_subscriber "
                f"is {lim.max_symbols_per_subscriber}",
            )
        growth: dict[Market, int] = {}
        for s in new - old:
            if s not in self._refcount:
                m = market_of(s)
                growth[m] = growth.get(m, 0) + 1
        for m, n in growth.items():
            if len(self._by_market[m]) + n > lim.max_symbols_per_market:
                return (
                    "market_union_full",
                    f"{m.value} would have {len(self._by_market[m]) + n} symbols, "
                    f"datamanager.limits.max_symbols_per_market is {lim.max_symbols_per_market}",
                )
        return None

    def load(self, subscribers: dict[SubscriberId, Subscriber]) -> None:
        """Replace the whole state with stored subscribers (a restart or a takeover)."""
        self._subscribers.clear()
        self._refcount.clear()
        for symbols in self._by_market.values():
            symbols.clear()
        for sid, sub in subscribers.items():
            self._subscribers[sid] = sub
            self._change((), sub.symbols)
        self.dirty.clear()

    def take_dirty(self) -> dict[SubscriberId, Subscriber | None]:
        """The subscribers changed since the last call (None: gone), for the store."""
        out = {sid: self._subscribers.get(sid) for sid in self.dirty}
        self.dirty.clear()
        return out

    def expire(self, now: float) -> tuple[set[Market], list[SubscriberId]]:
        """Drop subscribers whose lease ended before ``now`` (epoch s)."""
        gone = [sid for sid, s in self._subscribers.items() if s.expires_at is not None and s.expires_at < now]
        changed: set[Market] = set()
        for sid in gone:
            changed |= self._change(self._subscribers.pop(sid).symbols, frozenset())
            self.dirty.add(sid)
        return changed, gone

    def _change(self, old: Iterable[str], new: frozenset[str]) -> set[Market]:
        changed: set[Market] = set()
        old_set = frozenset(old)
        for s in new - old_set:
            n = self._refcount.get(s, 0)
            self._refcount[s] = n + 1
            if n == 0:
                m = market_of(s)
                self._by_market[m].add(s)
                changed.add(m)
        for s in old_set - new:
            n = self._refcount[s] - 1
            if n == 0:
                del self._refcount[s]
                m = market_of(s)
                self._by_market[m].discard(s)
                changed.add(m)
            else:
                self._refcount[s] = n
        return changed

    def market_symbols(self, market: Market) -> frozenset[str]:
        return frozenset(self._by_market[market])

    def all_symbols(self) -> frozenset[str]:
        return frozenset(self._refcount)

    def subscriber_symbols(self, portfolio_id: str, node_id: str) -> frozenset[str]:
        s = self._subscribers.get((portfolio_id, node_id))
        return s.symbols if s else frozenset()

    @property
    def subscriber_count(self) -> int:
        """Subscribers holding at least one symbol."""
        return sum(1 for s in self._subscribers.values() if s.symbols)


def _next_set(old: frozenset[str], kind: UpdateType, symbols: frozenset[str]) -> frozenset[str]:
    if kind == "replace":
        return symbols
    if kind == "add":
        return old | symbols
    if kind == "remove":
        return old - symbols
    return frozenset()  # clear
