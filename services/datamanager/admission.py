"""Admission: what the broker cannot check, checked before an interest update or a
command is applied.

Identity: an interest update's record key must be its subscriber, ``portfolio_id/node_id``
(as the client SDK keys it): a writer of the topic cannot speak for another portfolio
without saying so in the key, and the key fixes the partition, so one subscriber's updates
stay in order. Ids (``portfolio_id``, ``node_id``, ``correlation_id``) are bounded in
length and characters (they become Redis keys). A lease is at least
``limits.min_lease_s``. Signatures are checked by ``shared.signing.Verifier`` (each
intake owns one, with its replay memory).

A refused message is dead-lettered with ``rejected (<reason>): <detail>`` and counted in
``livedata_datamanager_input_rejected_total{reason}``; ``reason`` is one of ``REASONS``.
"""

from __future__ import annotations

import math
import re

from aiokafka import ConsumerRecord

from services.datamanager.metrics import DatamanagerMetrics
from shared import signing
from shared.config import ID_PATTERN, InterestLimits, SecuritySettings
from shared.dto import ControlCommand, InterestUpdate
from shared.kafka import DeadLetters

KEY_MISMATCH = "key_mismatch"
BAD_ID = "bad_id"
LEASE_OUT_OF_RANGE = "lease_out_of_range"
LIMIT_REASONS = ("too_many_subscribers", "too_many_symbols", "market_union_full")
REASONS = (KEY_MISMATCH, BAD_ID, LEASE_OUT_OF_RANGE, *LIMIT_REASONS, *signing.REASONS)

_ID = re.compile(ID_PATTERN)

Problem = tuple[str, str]  # (reason, detail)


class Admission:
    """The identity, id, lease and signature checks of one intake (its own replay memory)."""

    def __init__(
        self,
        limits: InterestLimits,
        security: SecuritySettings,
        verifier: signing.Verifier,
        dead: DeadLetters,
        metrics: DatamanagerMetrics,
    ) -> None:
        self.limits = limits
        self._require_signed = security.require_signed
        self._verifier = verifier
        self._dead = dead
        self._rejected = metrics.input_rejected
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)

    def _id_problem(self, name: str, value: str) -> Problem | None:
        n = self.limits.max_id_length
        if len(value) > n or not _ID.match(value):
            return BAD_ID, f"{name} is not 1-{n} characters of A-Za-z0-9._:@- (datamanager.limits.max_id_length)"
        return None

    def _signature(self, rec: ConsumerRecord[bytes, bytes], msg: signing.Signed, judged_at: float) -> Problem | None:
        reason = self._verifier.check(rec.value or b"", msg, judged_at, self._require_signed)
        return None if reason is None else (reason, signing.EXPLAINED[reason])

    def interest_problem(
        self, rec: ConsumerRecord[bytes, bytes], msg: InterestUpdate, judged_at: float
    ) -> Problem | None:
        """Why ``msg`` (consumed as ``rec``) must not be applied, or None. ``judged_at``:
        the time its signature's freshness is judged by (epoch s)."""
        for name, value in (("portfolio_id", msg.portfolio_id), ("node_id", msg.node_id)):
            problem = self._id_problem(name, value)
            if problem is not None:
                return problem
        if rec.key != f"{msg.portfolio_id}/{msg.node_id}".encode():
            return KEY_MISMATCH, "record key is not the subscriber portfolio_id/node_id the update speaks for"
        lease = msg.lease_s
        if lease is not None and not (math.isfinite(lease) and lease >= self.limits.min_lease_s):
            return (
                LEASE_OUT_OF_RANGE,
                f"lease_s {lease!r} is below datamanager.limits.min_lease_s ({self.limits.min_lease_s})",
            )
        return self._signature(rec, msg, judged_at)

    def command_problem(self, rec: ConsumerRecord[bytes, bytes], msg: ControlCommand, now: float) -> Problem | None:
        """Why ``msg`` must not be run, or None."""
        problem = self._id_problem("correlation_id", msg.correlation_id)
        if problem is not None:
            return problem
        return self._signature(rec, msg, now)

    async def reject(self, rec: ConsumerRecord[bytes, bytes], problem: Problem) -> None:
        """Dead-letter ``rec`` with the reason and count it (the caller flushes the letters)."""
        reason, detail = problem
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._rejected.labels(reason).inc()
        await self._dead.send(rec, f"rejected ({reason}): {detail}")
