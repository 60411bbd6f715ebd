"""`livedata send --wait` is done when every market-data partition has answered."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ops.send import Answers, _ranges
from shared.dto import CommandResult

T = datetime(2026, 12, 3, 10, tzinfo=UTC)


def result(
    partitions: tuple[int, ...] | None, count: int | None, ok: bool = True, instance: str = "a"
) -> CommandResult:
    return CommandResult(
        service="datamanager",
        command="bar_snapshot",
        correlation_id="c",
        ok=ok,
        timestamp=T,
        partitions=partitions,
        partition_count=count,
        instance=instance,
    )


def test_two_members_complete_the_command_together() -> None:
    a = Answers()
    a.add(result((0, 1, 2), 6, instance="dm-a"))
    assert not a.complete and a.missing() == [3, 4, 5]
    a.add(result((3, 4, 5), 6, instance="dm-b"))
    assert a.complete and a.ok and a.instances == {"dm-a", "dm-b"}


def test_an_answer_naming_no_partitions_covers_the_command() -> None:
    a = Answers()
    a.add(result(None, None))
    assert a.complete


def test_one_refusal_makes_the_whole_answer_not_ok() -> None:
    a = Answers()
    a.add(result((0,), 2))
    a.add(result((1,), 2, ok=False))
    assert a.complete and not a.ok


def test_missing_partitions_are_named_as_ranges() -> None:
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([]) == "none"
