"""Configuration: the config directory, ``${VAR}`` substitution, strict validated models.

A config directory (``--config-dir``, else ``$GINKGO_DIR``, else ``~/.ginkgo``) holds:
``livedata.yml`` (broker, stores, topics, per-service settings), ``data_sources.yml``
(per market an ordered list of feeders), ``task_timer.yml`` (cron jobs) and
``secure.yml`` (secrets, merged into the source of the same name; its ``kafka``,
``redis`` and ``clickhouse`` sections are the stores' credentials). Every file is
optional; a missing file means defaults. ``${VAR}`` and ``${VAR:-default}`` are
substituted in every string value; an unset variable without default is an error.
Errors name the file, the key path and the problem, and never echo a value (it may be
a secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.commands import command_param_problems
from shared.store_urls import CLICKHOUSE_SCHEMES, REDIS_SCHEMES, url_problem
from shared.symbols import Market

LIVEDATA_FILE = "livedata.yml"
DATA_SOURCES_FILE = "data_sources.yml"
TASK_TIMER_FILE = "task_timer.yml"
SECURE_FILE = "secure.yml"

ENV_OVERRIDES = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "REDIS_URL": ("redis", "url"),
    "CLICKHOUSE_URL": ("clickhouse", "url"),
    "GINKGO_LOG_LEVEL": ("logging", "level"),
}


class ConfigError(Exception):
    """Invalid configuration; the message names file, key path and problem."""


class Strict(BaseModel):
    """Base for config models: frozen, unknown keys rejected, docstrings as docs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TopicPartitions(Strict):
    """Partition counts used when the services create their topics."""

    market_data: int = Field(6, ge=1)
    """Market data is keyed by symbol; partitions set consumer parallelism."""
    interest_updates: int = Field(3, ge=1)
    """Keyed by subscriber id."""
    control_commands: int = Field(1, ge=1)
    subscriptions: int = Field(1, ge=1)
    """One partition keeps the per-market last-value log in one place."""
    system_events: int = Field(1, ge=1)
    deadletter: int = Field(1, ge=1)


class TopicRetention(Strict):
    """Retention of the topics the services create (applied only when they create them).

    ``feeder.subscriptions`` is compacted (the last value per market wins, kept forever);
    everything else is deleted by age, market data by size too, since it is the volume.
    """

    market_data_ms: int = Field(86_400_000, ge=60_000)
    """Ticks and bars: one day. Consumers that were away longer start from Redis/ClickHouse."""
    market_data_bytes: int = Field(1_073_741_824, ge=1_048_576)
    """Per partition: the bound on market data at any tick rate."""
    control_ms: int = Field(604_800_000, ge=60_000)
    """Interest updates, control commands and system events: seven days (an audit trail;
    state itself lives in Redis)."""
    deadletter_ms: int = Field(2_592_000_000, ge=60_000)
    """Dead letters: thirty days, time enough for an operator to look."""


class KafkaSecurity(Strict):
    """How every Kafka client of the system connects: transport and login (``kafka.security``).

    The password (and a TLS key's password) may come from secure.yml (``kafka: {password:
    ...}``) or ``${VAR}``; it is never logged or printed.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """PLAINTEXT (no TLS, no login), SSL (TLS), SASL_PLAINTEXT (login, no TLS), SASL_SSL."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    """Required with SASL_*; PLAIN sends the password itself, so use it only over SASL_SSL."""
    username: str | None = Field(None, min_length=1)
    """The principal's name (PLAIN and SCRAM): the ACLs of ``livedata acls`` name it."""
    password: SecretStr | None = None
    """PLAIN and SCRAM; put it in secure.yml (``kafka: {password: ...}``) or ``${VAR}``."""
    oauth_token_file: Path | None = None
    """OAUTHBEARER: a file holding the current token, read again for each new connection."""
    oauth_token_command: list[str] | None = Field(None, min_length=1)
    """OAUTHBEARER: a command (argv list) printing the current token on stdout."""
    ca_file: Path | None = None
    """SSL/SASL_SSL: CA bundle (PEM) to verify the brokers by; None: the system's CAs."""
    cert_file: Path | None = None
    """Mutual TLS: this client's certificate (PEM); needs ``key_file``."""
    key_file: Path | None = None
    """Mutual TLS: this client's private key (PEM)."""
    key_password: SecretStr | None = None
    """Password of an encrypted ``key_file`` (secure.yml ``kafka: {key_password: ...}``)."""
    check_hostname: bool = True
    """Verify that the broker's certificate names the host connected to. Turn off only for
    a broker reached by an address its certificate does not name (the chain is still checked)."""

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        if self.sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"protocol {self.protocol} needs sasl_mechanism")
            if self.sasl_mechanism == "OAUTHBEARER":
                if (self.oauth_token_file is None) == (self.oauth_token_command is None):
                    raise ValueError("OAUTHBEARER needs exactly one of oauth_token_file, oauth_token_command")
            elif self.username is None or self.password is None:
                raise ValueError(
                    f"{self.sasl_mechanism} needs username and password (the password from secure.yml or ${{VAR}})"
                )
        else:
            for key in ("sasl_mechanism", "username", "password", "oauth_token_file", "oauth_token_command"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is set but protocol {self.protocol} has no SASL login")
        if not self.tls:
            for key in ("ca_file", "cert_file", "key_file", "key_password"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is set but protocol {self.protocol} has no TLS")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")
        for key in ("ca_file", "cert_file", "key_file", "oauth_token_file"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{key}: no such file: {path}")
        return self


class KafkaSettings(Strict):
    """Broker connection and producer tuning (env: KAFKA_BOOTSTRAP_SERVERS)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    client_id: str = "ginkgo-livedata"
    linger_ms: int = Field(0, ge=0, le=1000)
    """How long the producer waits to fill a batch. 0 still batches under load (sends
    queue up while a request is in flight) and measured lowest latency on Tansu."""
    max_batch_bytes: int = Field(262_144, ge=16_384)
    """Producer batch size per partition."""
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    """zstd: measured here 1.4x lz4's producer throughput (aiokafka runs lz4 at level 9)."""
    enable_idempotence: bool | Literal["auto"] = "auto"
    """Idempotent producer (no duplicates from producer retries). ``auto``: on when the
    broker supports it (Apache Kafka), off where it does not (Tansu answers aiokafka's
    InitProducerId with an error), detected when the producer starts."""
    request_timeout_ms: int = Field(30_000, ge=1000)
    fetch_max_wait_ms: int = Field(5, ge=0, le=10_000)
    """Longest a fetch waits for data, for latency-critical consumers (market data to the
    client SDK). Keep it small on Tansu, which does not answer a waiting fetch when data
    arrives (latency ~ this value); 100-500 suits Apache Kafka."""
    background_fetch_max_wait_ms: int = Field(50, ge=0, le=10_000)
    """The same for consumers where tens of ms do not matter (commands, interest,
    subscriptions, the datamanager's tick intake): fewer idle fetches, larger batches."""
    session_timeout_ms: int = Field(6_000, ge=1_000)
    """Consumer-group session timeout; group joins take about half of it."""
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    create_topics: bool = True
    """Create missing topics at start-up with the partition counts below."""
    replication_factor: int = Field(1, ge=1)
    """Replicas of each topic the services create (at most the brokers in the cluster;
    creation fails naming this key when the cluster has fewer). 3 on a production cluster."""
    min_insync_replicas: int = Field(1, ge=1)
    """``min.insync.replicas`` of the topics the services create: with acks=all a write
    succeeds once this many replicas have it (2 with replication_factor 3: one broker may
    be lost without losing an acknowledged tick or stopping writes)."""
    partitions: TopicPartitions = TopicPartitions()
    retention: TopicRetention = TopicRetention()
    security: KafkaSecurity = KafkaSecurity()
    """Transport and login of every Kafka client (daemons, client SDK, CLI, benchmarks)."""

    @model_validator(mode="after")
    def _replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) is more than replication_factor"
                f" ({self.replication_factor}): no write could ever succeed"
            )
        return self


class TopicSettings(Strict):
    """Topic names are ``{prefix}.{suffix}``."""

    prefix: str = Field("ginkgo.live", pattern=r"^[A-Za-z0-9._-]+$")


class RedisSettings(Strict):
    """Redis for datamanager state and timer locks (env: REDIS_URL). None: in process."""

    url: SecretStr | None = None
    """``redis://[:password@]host:port/db``, ``rediss://`` (TLS) or ``unix://``."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        problem = v and url_problem(v.get_secret_value(), REDIS_SCHEMES)
        if problem:  # said without the value: it may hold a password
            raise ValueError(f"not a valid Redis URL: it {problem}")
        return v


class ClickHouseSettings(Strict):
    """ClickHouse for bars (env: CLICKHOUSE_URL). None: today's bars in memory."""

    url: SecretStr | None = None
    """asynch DSN, e.g. ``clickhouse://default:@127.0.0.1:9000/default`` (native port)."""
    database: str = Field("ginkgo", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Created if missing; holds the ``bars`` table."""
    connect_timeout_s: float = Field(2.0, gt=0)
    """Connect and per-query timeout; a server that does not answer within it counts as down."""
    flush_interval_ms: int = Field(1000, ge=10)
    """Changed bars are inserted in one batch this often; tick offsets are committed after."""
    max_pending_bars: int = Field(200_000, ge=100)
    """Bars held while ClickHouse is away (latest version per bar); past it the tick
    consumer stops fetching until they are stored (nothing is dropped, offsets wait)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        problem = v and url_problem(v.get_secret_value(), CLICKHOUSE_SCHEMES)
        if problem:  # said without the value: it may hold a password
            raise ValueError(f"not a valid ClickHouse URL: it {problem}")
        return v


class HttpSettings(Strict):
    """The /healthz, /readyz and /metrics endpoint of a service."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    """0 picks a free port (logged at start-up)."""
    enabled: bool = True


class ServiceSettings(Strict):
    """What every daemon has: its HTTP endpoint and its shutdown deadline."""

    http: HttpSettings = HttpSettings()
    shutdown_timeout_s: float = Field(5.0, gt=0)
    """After SIGTERM, drain for at most this long, then cancel what is left (exit 1)."""
    loop_stuck_after_s: float = Field(30.0, gt=0)
    """/readyz fails when an owned loop (a consumer, the publisher) has not gone round for
    this long: it is stuck even if the process answers."""
    deadletter_alert_per_s: float = Field(1.0, gt=0)
    """Alert (rate-limited) when messages are dead-lettered faster than this, over 10 s."""
    alert_interval_s: float = Field(60.0, gt=0)
    """The same alert is raised at most once per this interval."""


class SymbolShard(Strict):
    """A stable hash range of each served market's symbols (for several gateway instances)."""

    count: int = Field(ge=1, le=4096)
    """Shards each market's symbols are split into, by crc32 of the canonical symbol mod this."""
    index: int = Field(ge=0)
    """The shard this instance publishes, 0 .. count - 1; the others' symbols are ignored."""

    @model_validator(mode="after")
    def _index_in_range(self) -> SymbolShard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} is not below count {self.count} (0 .. {self.count - 1})")
        return self


class GatewaySettings(ServiceSettings):
    """feeder-gateway settings."""

    http: HttpSettings = HttpSettings(port=8701)
    queue_size: int = Field(50_000, ge=100)
    """Ticks buffered between feeders and the publisher; beyond this, ticks are conflated
    per symbol (latest wins, counted)."""
    publish_batch_max: int = Field(5_000, ge=1)
    """Most ticks handed to the producer before awaiting their delivery."""
    markets: list[Market] | None = None
    """Markets this instance serves (None: every market in data_sources.yml)."""
    shard: SymbolShard | None = None
    """Serve only this hash range of each served market's symbols (None: all of them).
    Instances with complementary shards publish every symbol exactly once."""
    conflation_alert_per_s: float = Field(100.0, gt=0)
    """Alert (rate-limited) when ticks are conflated faster than this, over 10 s."""
    repair: RepairSettings = Field(default_factory=lambda: RepairSettings())
    """Gap repair: how holes in the ticks are fetched from the providers' minute history."""


class RepairSettings(Strict):
    """``gateway.repair``: the repair worker that fills holes from provider minute history."""

    enabled: bool = True
    """Fetch every hole (reconnect, failover, ``repair_bars``) from the provider's history."""
    retry_base_s: float = Field(2.0, gt=0)
    """First retry delay after the history endpoint failed (doubling, full jitter)."""
    retry_cap_s: float = Field(300.0, gt=0)
    """Longest retry delay; retries go on until the history no longer reaches back."""
    max_pending: int = Field(10_000, ge=1)
    """Repair windows held at once (each a market, a symbol set and a time range); beyond
    this the oldest automatic one is dropped, counted and alerted."""
    command_freshness_s: float = Field(60.0, gt=0)
    """``repair_bars`` commands issued longer ago than this are ignored."""


ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
"""Characters of the ids a remote party names (portfolio_id, node_id, correlation_id,
signing key ids): they become Redis keys and log fields."""


class InterestLimits(Strict):
    """Bounds on what interest updates and commands may ask of the datamanager
    (``datamanager.limits``). An update past one is dead-lettered whole (the subscriber
    keeps its previous set), counted (``livedata_datamanager_input_rejected_total{reason}``)
    and alerted."""

    max_symbols_per_subscriber: int = Field(10_000, ge=1)
    """Symbols one subscriber may hold."""
    max_subscribers: int = Field(10_000, ge=1)
    """Subscribers known at once (a new one past this is refused; leases free places)."""
    max_symbols_per_market: int = Field(10_000, ge=1)
    """Symbols in one market's union: what the gateway subscribes at the provider (its
    bill, and a ban for asking too much). An update that would grow a union past it is refused."""
    max_id_length: int = Field(128, ge=8, le=1024)
    """Longest ``portfolio_id``, ``node_id`` and ``correlation_id`` (characters
    ``A-Za-z0-9._:@-`` only: they become Redis keys)."""
    min_lease_s: float = Field(1.0, gt=0)
    """Shortest subscriber lease accepted (shorter: refused); the longest is ``max_lease_s``."""
    rejected_alert_per_s: float = Field(0.0, ge=0)
    """Alert (at most once per ``alert_interval_s``) while rejections exceed this rate;
    0: any rejection alerts."""


class DatamanagerSettings(ServiceSettings):
    """datamanager settings."""

    http: HttpSettings = HttpSettings(port=8702)
    group_id: str = "ginkgo-livedata-datamanager"
    default_lease_s: float | None = Field(None, gt=0)
    """Lease for subscribers that do not send one; None: never expire."""
    command_freshness_s: float = Field(60.0, gt=0)
    """Commands issued longer ago than this are ignored."""
    redis_key_prefix: str = Field("ginkgo:livedata:dm", min_length=1)
    """Prefix of the datamanager's Redis keys (interest, offsets, latest prices, active lease)."""
    active_lease_s: float = Field(3.0, gt=0, le=60)
    """Redis lease that elects the active instance (renewed every third of it); a standby
    takes over once the active one has not renewed it for this long."""
    max_lease_s: float = Field(86_400.0, gt=0)
    """Longest subscriber lease accepted; longer ones are cut to this."""
    limits: InterestLimits = InterestLimits()
    """Bounds on interest updates and commands (symbols, subscribers, ids, leases)."""
    oldest_tick: date = date(2000, 1, 1)
    """Ticks stamped before this day are rejected (``past_timestamp``), as ticks from the
    future are: a tick dated 1990 must not make bars for that day."""
    max_tick_age_days: float = Field(7.0, gt=0)
    """Ticks older than this are rejected too (``past_timestamp``); market data is kept a
    day on the broker, so nothing older can be real."""
    max_clock_skew_s: float = Field(300.0, gt=0)
    """Ticks, interest updates and commands stamped further than this ahead of the receive clock are
    rejected (a tick dated 2100 must not freeze a symbol, a lease of 9999 never expire)."""
    late_tick_grace_s: float = Field(10.0, ge=0)
    """A tick older than its symbol's newest by at most this still counts (revising its
    minute bar, a new version); older ones are ignored and counted (``late``)."""
    max_price: float = Field(1e9, gt=0)
    """Prices above this are certainly bad (dropped, counted)."""
    st_symbols: list[str] = []
    """Symbols under special treatment (ST, ±5 % limit) until a source reports names."""
    no_limit_symbols: list[str] = []
    """Symbols without a price limit today (e.g. a CN IPO's first days)."""
    gap_alert_s: float = Field(60.0, gt=0)
    """No tick for this long for a subscribed symbol while its market is open: a gap alert."""
    alert_interval_s: float = Field(60.0, gt=0)
    """At most one alert per code and symbol this often."""
    repair_after_gap_s: float = Field(30.0, gt=0)
    """After resuming (a restart, a takeover, a rebalance) in session: when the newest
    restored tick of a market is older than this, ask the feeder-gateway to repair that
    market's minute bars from it to now (a ``repair_bars`` command)."""
    repair_sweep_s: float = Field(300.0, gt=0)
    """Every this often (and after resuming), ask the feeder-gateway to repair today's
    minute bars marked ``incomplete``, grouped into windows (each minute a few times a day)."""
    partitioned: bool = False
    """Share market data among several instances by consumer-group assignment: each owns
    the symbols of its partitions (bars, latest prices, gap watch) and answers bar_snapshot
    for them; the holder of the active lease alone follows interest and publishes
    subscriptions. Needs redis.url and clickhouse.url. False: active/standby (the lease
    holder does everything, the others wait to take over)."""
    member_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    """A partitioned instance's static group membership (Kafka ``group.instance.id``):
    a restart with the same id within the session timeout keeps its partitions without a
    rebalance. Unique per instance; None: dynamic membership."""


class TasktimerSettings(ServiceSettings):
    """tasktimer settings."""

    http: HttpSettings = HttpSettings(port=8703)
    misfire_grace_s: float = Field(30.0, ge=0)
    """A fire missed by less than this (e.g. across a restart, or while the broker is
    down) still happens, once; several missed instants of one job coalesce into one fire.
    Older misses are logged and skipped."""
    lock_ttl_s: float = Field(5.0, gt=0)
    """Expiry of a replica's claim on one fire (Redis SET NX PX), renewed while it
    publishes: a replica that dies mid-fire holds the fire back this long at most."""
    record_ttl_s: float = Field(7 * 86400.0, gt=0)
    """How long the record of each fire (outcome, replica, lateness) stays in Redis."""
    redis_prefix: str = Field("ginkgo:tasktimer", pattern=r"^[A-Za-z0-9:._-]+$")
    """Prefix of the tasktimer's Redis keys."""
    replica_id: str | None = None
    """This replica's name in fire records (None: host:pid)."""


class SecuritySettings(Strict):
    """Identity on what the broker cannot check, and file modes (``security``).

    Signing: with ``sign`` set, interest updates and control commands this process
    publishes carry ``key_id`` and ``sig``, an HMAC-SHA256 of their canonical bytes
    (shared/signing.py) by the key ``secure.yml: signing_keys.<sign>``. The datamanager
    verifies against every key in its own ``signing_keys`` (two at once while rotating)."""

    sign: str | None = Field(None, pattern=ID_PATTERN, max_length=64)
    """Key id this process signs with; the secret is ``signing_keys.<id>`` in secure.yml."""
    require_signed: bool = False
    """Datamanager: dead-letter unsigned interest updates and commands too (badly signed
    ones are dead-lettered always)."""
    max_age_s: float = Field(300.0, gt=0)
    """A signed message stamped further than this from the time it is judged by (now; the
    broker's record time while the interest history loads) is refused (against replay)."""
    replay_memory: int = Field(100_000, ge=100)
    """Signatures remembered to refuse a replay within ``max_age_s`` (size it to the
    signed messages a window brings; past it the oldest are forgotten)."""
    strict_file_modes: bool = False
    """Refuse to start when secure.yml is readable by group or others (else a warning)."""


class LoggingSettings(Strict):
    """Log level and format (env: GINKGO_LOG_LEVEL)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class LivedataSettings(Strict):
    """Everything in livedata.yml."""

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    gateway: GatewaySettings = GatewaySettings()
    datamanager: DatamanagerSettings = DatamanagerSettings()
    tasktimer: TasktimerSettings = TasktimerSettings()
    logging: LoggingSettings = LoggingSettings()
    security: SecuritySettings = SecuritySettings()


class SourceEntry(BaseModel):
    """One feeder of a market; its own settings are validated by the feeder type."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    """Feeder type: sim, alpaca, eastmoney, fushu, tencent."""
    name: str | None = None
    """Name used in logs, metrics and secure.yml (default: the type)."""
    enabled: bool = True

    @property
    def source_name(self) -> str:
        return self.name or self.type

    def settings(self) -> dict[str, Any]:
        """The feeder-specific keys (everything but type/name/enabled)."""
        return dict(self.model_extra or {})


class MarketSources(Strict):
    """A market's feeders in order of preference."""

    sources: list[SourceEntry] = Field(min_length=1)
    failback_after_s: float = Field(30.0, gt=0)
    """After a failover, try the preferred source again once this long has passed."""
    stale_watchdog: Literal["in_session", "always"] = "in_session"
    """When a silent source counts as stale: only in the market's session (real feeds),
    or at any hour (24h venues, test rigs)."""


class DataSources(Strict):
    """Everything in data_sources.yml."""

    markets: dict[Market, MarketSources] = {}


class JobSettings(Strict):
    """One cron job of task_timer.yml."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    cron: str
    """Standard 5 fields: minute hour day-of-month month day-of-week (0 or 7 = Sunday)."""
    command: str
    timezone: str = "Asia/Shanghai"
    params: dict[str, Any] = {}
    target: str = "datamanager"
    """Message key: which service the command is for."""
    topic: str = "control.commands"
    """Topic suffix under the prefix."""
    enabled: bool = True
    calendar: Market | None = None
    """Skip days that are not trading days of this market (shared/calendars.py); in a year
    past the calendar's confirmed horizon those are the library's estimate, and each fire alerts."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from cronsim import CronSim, CronSimError

        if len(v.split()) != 5:
            raise ValueError(f"not a 5-field cron expression: {v!r}")
        try:
            CronSim(v, datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValueError(f"not a valid cron expression: {v!r} ({e})") from None
        return v

    @model_validator(mode="after")
    def _params(self) -> JobSettings:
        problems = command_param_problems(self.command, self.params)
        if problems:
            field, msg = problems[0]
            raise ValueError(f"job {self.name}: {field}: {msg}")
        return self

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}") from None
        return v


class TaskTimerFile(Strict):
    """Everything in task_timer.yml."""

    jobs: list[JobSettings] = []

    @model_validator(mode="after")
    def _unique_names(self) -> TaskTimerFile:
        seen: set[str] = set()
        for job in self.jobs:
            if job.name in seen:
                raise ValueError(f"job {job.name}: name: appears twice")
            seen.add(job.name)
        return self


class AppConfig(Strict):
    """The whole configuration directory, validated."""

    directory: Path
    livedata: LivedataSettings
    data_sources: DataSources
    task_timer: TaskTimerFile
    secrets: dict[str, dict[str, SecretStr]] = {}
    """secure.yml: per source name, its secret settings."""
    signing_keys: dict[str, SecretStr] = {}
    """secure.yml ``signing_keys``: key id → secret (shared/signing.py)."""
    file_mode_warning: str | None = None
    """secure.yml is readable by group or others (logged at start)."""

    def source_settings(self, entry: SourceEntry) -> dict[str, Any]:
        """A source's settings with its secrets from secure.yml merged in."""
        merged = entry.settings()
        merged.update(self.secrets.get(entry.source_name, {}))
        return merged


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, env: Mapping[str, str], where: str, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: {path or '<root>'}: environment variable {name} is not set")

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, env, where, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, where, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def format_validation_error(where: str, err: ValidationError, prefix: str = "") -> str:
    """One line per problem: file: key.path: message (input values left out on purpose)."""
    lines = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Parse a YAML file into a mapping with ``${VAR}`` substituted; {} if missing."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {at}invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <root>: expected a mapping, got {type(data).__name__}")
    result: dict[str, Any] = substitute_env(data, env, str(path))
    return result


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            sect = raw.setdefault(section, {})
            if isinstance(sect, dict):
                sect[key] = env[var]


STORE_SECRETS: dict[str, dict[str, tuple[str, ...]]] = {
    "kafka": {
        "username": ("kafka", "security", "username"),
        "password": ("kafka", "security", "password"),
        "key_password": ("kafka", "security", "key_password"),
    },
    "redis": {"url": ("redis", "url"), "password": ("redis", "url")},
    "clickhouse": {"url": ("clickhouse", "url"), "password": ("clickhouse", "url")},
}
"""secure.yml sections that are store credentials, not source names: key → where in livedata.yml."""


def _with_url_password(url: str, password: str) -> str | None:
    """``url`` with ``password`` in its user info (percent-encoded); None if it has no
    ``scheme://host`` form or already carries a password."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not rest:
        return None
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not hostport or (at and ":" in userinfo):
        return None
    user = userinfo if at else ""
    return f"{scheme}://{user}:{quote(password, safe='')}@{hostport}{slash}{tail}"


def merge_store_secrets(
    raw_live: dict[str, Any], raw_secure: dict[str, Any], where: str, env: Mapping[str, str] | None = None
) -> None:
    """Move secure.yml's store sections (``kafka``, ``redis``, ``clickhouse``) into
    livedata.yml's settings, in place (after the environment overrides were applied). A key
    is set in one file only; an environment override (``REDIS_URL``...) wins over both; a
    store ``password`` goes into the URL from livedata.yml or the environment. Errors name
    the file and key, never a value."""
    overridden = {path for var, path in ENV_OVERRIDES.items() if (env or {}).get(var)}
    for section, keys in STORE_SECRETS.items():
        if section not in raw_secure:
            continue
        values = raw_secure.pop(section)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of {', '.join(keys)}")
        for key, value in values.items():
            if key not in keys:
                raise ConfigError(f"{where}: {section}.{key}: unknown key (expected one of {', '.join(keys)})")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ConfigError(f"{where}: {section}.{key}: expected a string, got {type(value).__name__}")
            *parents, leaf = keys[key]
            node: Any = raw_live
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{where}: {section}.{key}: {LIVEDATA_FILE} {part} is not a mapping")
            target = ".".join(keys[key])
            if key != "password" and keys[key] in overridden:
                continue  # the environment variable wins, as it does over livedata.yml
            if key == "password" and section in ("redis", "clickhouse"):
                url = node.get(leaf)
                if not isinstance(url, str) or not url:
                    raise ConfigError(f"{where}: {section}.password: {target} is not set (the password goes into it)")
                merged = _with_url_password(url, str(value))
                if merged is None:
                    raise ConfigError(
                        f"{where}: {section}.password: {target} is not scheme://host... or already has a password"
                    )
                node[leaf] = merged
                continue
            if node.get(leaf) is not None:
                raise ConfigError(f"{where}: {section}.{key}: {target} is set in {LIVEDATA_FILE} too (set it once)")
            node[leaf] = str(value)


SIGNING_KEYS = "signing_keys"
"""secure.yml section of signing keys (id → secret), not a source name."""
MIN_SIGNING_KEY_LENGTH = 16


def _signing_keys(raw_secure: dict[str, Any], where: str, security: SecuritySettings) -> dict[str, SecretStr]:
    """Pop secure.yml's ``signing_keys`` (in place) and check them; never echoes a secret."""
    values = raw_secure.pop(SIGNING_KEYS, None) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {SIGNING_KEYS}: expected a mapping of key id to secret")
    keys: dict[str, SecretStr] = {}
    for key_id, secret in values.items():
        if not isinstance(key_id, str) or not re.match(ID_PATTERN, key_id) or len(key_id) > 64:
            raise ConfigError(f"{where}: {SIGNING_KEYS}: a key id is not 1-64 characters of A-Za-z0-9._:@-")
        if not isinstance(secret, str):
            raise ConfigError(f"{where}: {SIGNING_KEYS}.{key_id}: expected a string, got {type(secret).__name__}")
        if len(secret) < MIN_SIGNING_KEY_LENGTH:
            raise ConfigError(
                f"{where}: {SIGNING_KEYS}.{key_id}: shorter than {MIN_SIGNING_KEY_LENGTH} characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        keys[key_id] = SecretStr(secret)
    if security.sign is not None and security.sign not in keys:
        raise ConfigError(
            f"{where}: {SIGNING_KEYS}.{security.sign}: not set (security.sign in {LIVEDATA_FILE} names it)"
        )
    if security.require_signed and security.sign is None:
        raise ConfigError(
            f"{LIVEDATA_FILE}: security.sign: required when security.require_signed is on (the daemons sign "
            "the commands they publish, timer fires and repair requests, and unsigned ones would be refused)"
        )
    return keys


def _secure_file_mode(path: Path, strict: bool) -> str | None:
    """The warning for a secure.yml that group or others can read (as ssh and libpq
    judge key and password files); with ``strict`` a ConfigError instead."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if not mode & 0o077 or not yaml.safe_load(path.read_text(encoding="utf-8")):
        return None  # private, or no secret in it (only comments, as the demo's)
    problem = f"{path}: mode {mode:04o} lets group or others read it (chmod 600 {path})"
    if strict:
        raise ConfigError(f"{problem}; security.strict_file_modes refuses to start")
    return problem


def default_config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("GINKGO_DIR") or Path.home() / ".ginkgo")


def load_config(directory: Path | str | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Load and validate a config directory; raise ConfigError naming file and key."""
    env = dict(os.environ if env is None else env)
    d = Path(directory) if directory is not None else default_config_dir(env)
    if not d.is_dir():
        raise ConfigError(f"{d}: config directory does not exist (--config-dir, else $GINKGO_DIR, else ~/.ginkgo)")
    if not (d / LIVEDATA_FILE).is_file():
        # without it every service would silently fall back to a default broker
        raise ConfigError(f"{d / LIVEDATA_FILE}: not found (an example: deploy/config/demo/{LIVEDATA_FILE})")

    def validate(model: type[Strict], file: str, raw: dict[str, Any]) -> Any:
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(format_validation_error(str(d / file), e)) from None

    raw_live = read_yaml(d / LIVEDATA_FILE, env)
    _apply_env_overrides(raw_live, env)
    raw_secure = read_yaml(d / SECURE_FILE, env)
    merge_store_secrets(raw_live, raw_secure, str(d / SECURE_FILE), env)
    livedata = validate(LivedataSettings, LIVEDATA_FILE, raw_live)
    sources = validate(DataSources, DATA_SOURCES_FILE, read_yaml(d / DATA_SOURCES_FILE, env))
    timer = validate(TaskTimerFile, TASK_TIMER_FILE, read_yaml(d / TASK_TIMER_FILE, env))
    signing_keys = _signing_keys(raw_secure, str(d / SECURE_FILE), livedata.security)
    mode_warning = _secure_file_mode(d / SECURE_FILE, livedata.security.strict_file_modes)
    secrets: dict[str, dict[str, SecretStr]] = {}
    for name, values in raw_secure.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{d / SECURE_FILE}: {name}: expected a mapping of secret settings")
        for k, v in values.items():
            # a list or mapping would become its repr; the value itself is never echoed
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ConfigError(f"{d / SECURE_FILE}: {name}.{k}: expected a string, got {type(v).__name__}")
        secrets[str(name)] = {str(k): SecretStr(str(v)) for k, v in values.items()}
    names = [e.source_name for ms in sources.markets.values() for e in ms.sources]
    for name in secrets:
        if name not in names:
            raise ConfigError(f"{d / SECURE_FILE}: {name}: no source of that name in {DATA_SOURCES_FILE}")
    return AppConfig(
        directory=d,
        livedata=livedata,
        data_sources=sources,
        task_timer=timer,
        secrets=secrets,
        signing_keys=signing_keys,
        file_mode_warning=mode_warning,
    )
