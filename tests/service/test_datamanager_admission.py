"""datamanager on a real broker: identity, signatures and limits on interest and commands.

An update keyed for another subscriber, an unsigned update under ``require_signed``, a
replayed signed command and updates past the limits are dead-lettered with their reason
and counted per reason; what is well signed and within the limits is served.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from services.datamanager.service import DataManager
from shared.config import AppConfig
from shared.dto import CommandResult, ControlCommand, DeadLetter, InterestUpdate, Subscription, utcnow
from shared.signing import Signer
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running

SECRET_OLD = "old-signing-secret-0123456789"
SECRET_NEW = "new-signing-secret-9876543210"
OLD = Signer("ops-old", SecretStr(SECRET_OLD))
NEW = Signer("ops-new", SecretStr(SECRET_NEW))


def interest(pid: str, *symbols: str, at: datetime | None = None, **kw: Any) -> InterestUpdate:
    return InterestUpdate(
        portfolio_id=pid, node_id="n", symbols=symbols, update_type="replace", timestamp=at or utcnow(), **kw
    )


def rejected(dm: DataManager, reason: str) -> float:
    value = dm.metrics.registry.get_sample_value("livedata_datamanager_input_rejected_total", {"reason": reason})
    return value or 0.0


def union(subs: TopicReader, market: str) -> tuple[str, ...] | None:
    found = [m for m in subs.of_type(Subscription) if m.market == market]
    return found[-1].symbols if found else None


async def test_identity_and_limits_without_signatures(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    limits = {"max_symbols_per_subscriber": 3, "max_subscribers": 3, "max_symbols_per_market": 4, "max_id_length": 32}
    dm = DataManager(make_config(topics, livedata={"datamanager": {"limits": limits}}))
    async with (
        running(dm),
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
    ):
        await eventually(lambda: dm.interest.loaded.is_set(), what="interest loaded")
        t = topics.interest_updates
        await publish(kafka_bootstrap, t, interest("p1", "AAPL"), key="p1/n")
        # p2's record speaking for p1 (a lease of 0.001 would drop p1's symbols)
        await publish(kafka_bootstrap, t, interest("p1", "MSFT", lease_s=0.001), key="p2/n")
        await publish(kafka_bootstrap, t, interest("p1", "MSFT"), key=None)
        await publish(kafka_bootstrap, t, interest("p3", "AAPL", lease_s=0.001), key="p3/n")
        await publish(kafka_bootstrap, t, interest("p4", "AAPL", "MSFT", "IBM", "NVDA"), key="p4/n")  # 4 > 3
        await publish(kafka_bootstrap, t, interest("p5" * 20, "AAPL"), key="p5" * 20 + "/n")
        await publish(kafka_bootstrap, t, interest("p 6", "AAPL"), key="p 6/n")
        await publish(kafka_bootstrap, t, interest("p7", "MSFT", "IBM", "NVDA"), key="p7/n")  # US: 4 symbols
        await eventually(lambda: len(union(subs, "US") or ()) == 4, what="US union at its limit")
        await publish(kafka_bootstrap, t, interest("p8", "TSLA"), key="p8/n")  # a 5th US symbol
        await publish(kafka_bootstrap, t, interest("p9", "600000.SH"), key="p9/n")  # the 3rd subscriber: fine
        await eventually(lambda: union(subs, "CN") == ("600000.SH",), what="CN union")
        await publish(kafka_bootstrap, t, interest("p10", "000001.SZ"), key="p10/n")  # a 4th subscriber
        await eventually(lambda: len(dlq.of_type(DeadLetter)) >= 8, what="eight refusals dead-lettered")
        letters = dlq.of_type(DeadLetter)
        reasons = sorted(d.reason.partition(")")[0].removeprefix("rejected (") for d in letters)
        assert reasons == sorted(
            ["key_mismatch"] * 2
            + ["lease_out_of_range", "too_many_symbols", "market_union_full", "too_many_subscribers"]
            + ["bad_id"] * 2
        ), reasons
        assert all(d.source_topic == t for d in letters)
        assert any("record key is not the subscriber" in d.reason for d in letters)
        assert union(subs, "CN") == ("600000.SH",)  # p10 refused
        assert dm.interest.registry.subscriber_symbols("p1", "n") == {"AAPL"}  # not replaced by p2's record
        assert set(union(subs, "US") or ()) == {"AAPL", "MSFT", "IBM", "NVDA"}
        assert rejected(dm, "key_mismatch") == 2 and rejected(dm, "bad_id") == 2
        assert rejected(dm, "market_union_full") == 1 and rejected(dm, "too_many_symbols") == 1
        # every rejection alerts, at most once per alert_interval_s
        alarm = next(a for a in dm.alarms if a.code == "input_rejected")
        await eventually(lambda: alarm.raised >= 1, timeout_s=15, what="the input_rejected alert")


async def test_signatures_required_rotation_and_replay(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    config = make_config(
        topics,
        livedata={"security": {"require_signed": True, "sign": "ops-new", "max_age_s": 60}},
        secure={"signing_keys": {"ops-old": SECRET_OLD, "ops-new": SECRET_NEW}},
    )
    dm = DataManager(config)
    async with (
        running(dm),
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
    ):
        await eventually(lambda: dm.readiness()[0], timeout_s=20, what="datamanager ready")
        t = topics.interest_updates
        await publish(kafka_bootstrap, t, interest("p1", "AAPL"), key="p1/n")  # unsigned
        forged = Signer("ops-old", SecretStr("not-the-secret-0000000")).sign(interest("p2", "MSFT"))
        await publish(kafka_bootstrap, t, forged, key="p2/n")
        stale = OLD.sign(interest("p3", "IBM", at=utcnow() - timedelta(seconds=120)))
        await publish(kafka_bootstrap, t, stale, key="p3/n")
        await publish(kafka_bootstrap, t, OLD.sign(interest("p4", "NVDA")), key="p4/n")  # both keys valid
        await publish(kafka_bootstrap, t, NEW.sign(interest("p5", "600000.SH")), key="p5/n")
        await eventually(lambda: union(subs, "CN") == ("600000.SH",), what="the new key's update served")
        await eventually(lambda: union(subs, "US") == ("NVDA",), what="the old key's update served")

        cmd = NEW.sign(ControlCommand(command="status", correlation_id="signed-1", timestamp=utcnow(), source="ops"))
        c = topics.control_commands
        await publish(kafka_bootstrap, c, cmd, key="datamanager")
        await events.wait_for(CommandResult, lambda r: r.correlation_id == "signed-1" and r.ok, timeout_s=15)
        await publish(kafka_bootstrap, c, cmd, key="datamanager")  # the same bytes again: a replay
        unsigned = ControlCommand(command="status", correlation_id="unsigned-1", timestamp=utcnow(), source="x")
        await publish(kafka_bootstrap, c, unsigned, key="datamanager")
        await eventually(lambda: len(dlq.of_type(DeadLetter)) >= 5, what="five refusals")
        by_topic = {
            (d.source_topic, d.reason.partition(")")[0].removeprefix("rejected (")) for d in dlq.of_type(DeadLetter)
        }
        assert by_topic == {
            (t, "unsigned"),
            (t, "bad_signature"),
            (t, "stale_signature"),
            (c, "replayed"),
            (c, "unsigned"),
        }
        assert [r.correlation_id for r in events.of_type(CommandResult)] == ["signed-1"]
        assert rejected(dm, "replayed") == 1 and rejected(dm, "unsigned") == 2
        scanned = "".join(d.reason + d.raw for d in dlq.of_type(DeadLetter))
        assert SECRET_OLD not in scanned and SECRET_NEW not in scanned
