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
