"""Which commands the datamanager runs: fresh ones, once per correlation id, for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.datamanager.commands import CommandDesk
from shared.dto import ControlCommand

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def cmd(at: datetime, cid: str = "c1", target: str = "datamanager") -> ControlCommand:
    return ControlCommand(command="status", correlation_id=cid, timestamp=at, source="t", target=target)


def test_fresh_commands_run_once_and_others_are_told_why_not() -> None:
    desk = CommandDesk("datamanager", freshness_s=60)
    assert desk.should_run(cmd(NOW - timedelta(seconds=5)), NOW) is None
    assert desk.should_run(cmd(NOW - timedelta(seconds=5)), NOW) == "duplicate"
    assert desk.should_run(cmd(NOW - timedelta(seconds=61), "c2"), NOW) == "stale"
    assert desk.should_run(cmd(NOW, "c3", target="nodes"), NOW) == "other_target"


def test_a_command_from_the_far_future_is_not_run() -> None:
    desk = CommandDesk("datamanager", freshness_s=60)
    assert desk.should_run(cmd(datetime(9999, 1, 1, tzinfo=UTC), "c4"), NOW) == "from_the_future"
    assert desk.should_run(cmd(NOW + timedelta(seconds=30), "c5"), NOW) is None  # a little clock skew is fine
