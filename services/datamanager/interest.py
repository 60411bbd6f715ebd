"""The interest registry: each subscriber's symbols, leases, and the per-market union."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.dto import InterestUpdate
from shared.symbols import Market, market_of, normalize

SubscriberId = tuple[str, str]  # (portfolio_id, node_id)


@dataclass(slots=True)
class _Subscriber:
    symbols: frozenset[str]
    expires_at: float | None  # epoch seconds; None: no lease


class InterestRegistry:
    """Per-subscriber symbol sets with a reference-counted union per market.

    ``replace`` replaces that subscriber's set only; ``add``/``remove``/``clear`` change
    it. A subscriber with a lease that is not renewed (any update renews it) is dropped
    by ``expire``. Every method returns the markets whose union changed.
    """

    def __init__(self, default_lease_s: float | None = None) -> None:
        self.default_lease_s = default_lease_s
        self._subscribers: dict[SubscriberId, _Subscriber] = {}
        self._refcount: dict[str, int] = {}
        self._by_market: dict[Market, set[str]] = {m: set() for m in Market}

    @staticmethod
    def validate(update: InterestUpdate) -> tuple[str, ...]:
        """Canonical symbols of an update; raises SymbolError naming a bad one."""
        return tuple(normalize(s) for s in update.symbols)

    def apply(self, update: InterestUpdate) -> set[Market]:
        """Apply one update (symbols must pass ``validate``) and return changed markets."""
        sid = (update.portfolio_id, update.node_id)
        symbols = frozenset(self.validate(update))
        current = self._subscribers.get(sid)
        old = current.symbols if current else frozenset()
        kind = update.update_type
        if kind == "replace":
            new = symbols
        elif kind == "add":
            new = old | symbols
        elif kind == "remove":
            new = old - symbols
        else:  # clear
            new = frozenset()
        lease = update.lease_s if update.lease_s is not None else self.default_lease_s
        expires = update.timestamp.timestamp() + lease if lease is not None else None
        if new:
            self._subscribers[sid] = _Subscriber(new, expires)
        else:
            self._subscribers.pop(sid, None)
        return self._change(old, new)

    def expire(self, now: float) -> tuple[set[Market], list[SubscriberId]]:
        """Drop subscribers whose lease ended before ``now`` (epoch s)."""
        gone = [sid for sid, s in self._subscribers.items() if s.expires_at is not None and s.expires_at < now]
        changed: set[Market] = set()
        for sid in gone:
            changed |= self._change(self._subscribers.pop(sid).symbols, frozenset())
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
        return len(self._subscribers)
