"""Topic names, derived from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import TopicPartitions, TopicRetention


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

    def with_configs(self, r: TopicRetention) -> dict[str, dict[str, str]]:
        """Every topic with the broker configs it is created with (see TopicRetention)."""
        by_age = {"cleanup.policy": "delete"}
        return {
            self.market_data: {
                **by_age,
                "retention.ms": str(r.market_data_ms),
                "retention.bytes": str(r.market_data_bytes),
                "segment.ms": str(min(r.market_data_ms, 3_600_000)),  # whole segments expire
            },
            self.interest_updates: {**by_age, "retention.ms": str(r.control_ms)},
            self.control_commands: {**by_age, "retention.ms": str(r.control_ms)},
            self.system_events: {**by_age, "retention.ms": str(r.control_ms)},
            self.deadletter: {**by_age, "retention.ms": str(r.deadletter_ms)},
            self.subscriptions: {
                "cleanup.policy": "compact",
                # the active segment is never compacted: roll it hourly so old values go
                "segment.ms": "3600000",
                "min.cleanable.dirty.ratio": "0.1",
            },
        }
