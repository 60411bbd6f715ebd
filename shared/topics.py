"""Topic names, derived from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import TopicPartitions


@dataclass(frozen=True, slots=True)
class Topics:
    """The six topics of the system (defaults keep the existing system's names)."""

    prefix: str = "ginkgo.live"

    @property
    def market_data(self) -> str:
        return f"{self.prefix}.market.data"

    @property
    def interest_updates(self) -> str:
        return f"{self.prefix}.interest.updates"

    @property
    def control_commands(self) -> str:
        return f"{self.prefix}.control.commands"

    @property
    def subscriptions(self) -> str:
        return f"{self.prefix}.feeder.subscriptions"

    @property
    def system_events(self) -> str:
        return f"{self.prefix}.system.events"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    def named(self, suffix: str) -> str:
        """A topic given by suffix (e.g. ``control.commands``) under the prefix."""
        return f"{self.prefix}.{suffix}"

    def with_partitions(self, p: TopicPartitions) -> dict[str, int]:
        """Every topic with its configured partition count."""
        return {
            self.market_data: p.market_data,
            self.interest_updates: p.interest_updates,
            self.control_commands: p.control_commands,
            self.subscriptions: p.subscriptions,
            self.system_events: p.system_events,
            self.deadletter: p.deadletter,
        }
