"""The client SDK an execution node uses: say which symbols, iterate over their data.

    async with LiveDataClient("127.0.0.1:9092", portfolio_id="p1", node_id="n1") as client:
        await client.subscribe(["600000.SH", "AAPL"])
        async for update in client:      # PriceUpdate, Bar or TradeCorrection, only your symbols
            strategy.on_price_update(update)

The client announces interest on ``interest.updates`` keyed by its subscriber id and
renews a lease by re-sending its full set (``replace``) every ``lease_s / 3``, so a node
that dies stops costing subscriptions.

**Only its partitions.** The gateway places every market-data record by the producer's
partitioner (``shared/partitioning.py``: murmur2 of the symbol, modulo the partition
count), so the client computes the partitions of its symbols the same way and ``assign()``s
only those (no consumer group: every node reads what it needs independently). A changed
symbol set (subscribe, unsubscribe, replace, clear) reassigns before the interest is sent:
partitions it already reads keep their position; a newly assigned partition starts at its
end, which loses nothing because snapshot-on-subscribe publishes the symbol's latest price
after the interest arrives, i.e. after that end. ``assign()`` does not follow metadata, so
every ``partition_check_s`` the client refreshes the topic's metadata; a changed partition
count recomputes and reassigns (logged once): partitions that did not exist before are read
from their beginning (everything in them is new), and the partitions it read before are kept
for ``partition_grace_s`` more, while producers still place by the old count (their metadata
refresh is up to ``metadata.max.age.ms``, 5 minutes by default).

**A slow application loses nothing.** Decoded updates wait in a buffer of ``buffer_size``;
when it is full the client pauses fetching (Kafka keeps the data) and resumes once the
application has taken half of it. ``client.lag`` says how far behind the application is
(buffered updates, age of the oldest, records not fetched yet, paused or not), and each lag
episode is logged once (at most one line a minute). With ``conflate_prices=True`` a price
update replaces the symbol's price update still waiting in the buffer (latest wins, counted
in ``conflated``); bars are never conflated or dropped.

On a secured cluster pass the node's login (``livedata acls`` lists what it may do: read
market data, write interest)::

    LiveDataClient("broker:9093", "p1", "n1", security=KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="livedata-strategy",
        password=os.environ["LIVEDATA_KAFKA_PASSWORD"], ca_file="/etc/kafka/ca.pem"))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shared.broker_watch import BrokerReturn, BrokerWatch
from shared.compat import refresh_metadata
from shared.config import KafkaSecurity, KafkaSettings
from shared.dto import Bar, DecodeError, InterestUpdate, PriceUpdate, TradeCorrection, UpdateType, decode, utcnow
from shared.kafka import KafkaPublisher, assign_all, consumer_options, rewind_truncated
from shared.logs import kv
from shared.partitioning import symbol_partition
from shared.signing import Signer, sign
from shared.symbols import normalize
from shared.tasks import cancel_and_wait
from shared.topics import Topics

log = logging.getLogger("client")

MarketUpdate = PriceUpdate | Bar | TradeCorrection
"""What the client delivers: ticks, bars (a revised bar, e.g. ``quality="repaired"`` after a
hole was filled from provider history, comes again with a higher ``revision``) and corrections
or cancels of trades already delivered (never conflated)."""

LAG_LOG_EVERY_S = 60.0  # at most one "application lagging" line a minute


@dataclass(frozen=True)
class Lag:
    """How far behind the application is, as ``LiveDataClient.lag`` reports it."""

    buffered: int  # updates decoded and waiting for next_batch()
    behind_s: float  # age of the oldest buffered update (its record's timestamp); 0 when empty
    unfetched: int  # records of the client's partitions still on the broker (high watermark - position)
    paused: bool  # fetching is paused because the buffer is full
    episodes: int  # lag episodes (the buffer filled up) since start


class _Entry:
    """One buffered update; ``item`` None once a newer price replaced it (conflation)."""

    __slots__ = ("item", "ts")

    def __init__(self, item: MarketUpdate, ts: float) -> None:
        self.item: MarketUpdate | None = item
        self.ts = ts  # the record's timestamp, seconds


class LiveDataClient:
    """Subscribe/unsubscribe for one subscriber; iterate over its price updates and bars."""

    def __init__(
        self,
        bootstrap_servers: str,
        portfolio_id: str,
        node_id: str,
        topics: Topics | None = None,
        lease_s: float | None = 30.0,
        buffer_size: int = 100_000,
        kafka: KafkaSettings | None = None,
        signer: Signer | None = None,
        security: KafkaSecurity | None = None,
        conflate_prices: bool = False,
        partition_check_s: float = 30.0,
        partition_grace_s: float = 330.0,
    ) -> None:
        """``kafka``: all connection settings (``bootstrap_servers`` is then ignored);
        ``security``: TLS and login (``kafka.security``), e.g. the strategy node's principal;
        ``buffer_size``: updates held for the application before fetching pauses;
        ``conflate_prices``: keep only the latest waiting price update per symbol;
        ``partition_check_s``: how often the partition count of market data is checked;
        ``partition_grace_s``: how long partitions are still read after the count changed."""
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        self.portfolio_id = portfolio_id
        self.node_id = node_id
        self.topics = topics or Topics()
        self.lease_s = lease_s
        self.conflate_prices = conflate_prices
        self.partition_check_s = partition_check_s
        self.partition_grace_s = partition_grace_s
        self._signer = signer  # signs each interest update (security.sign, shared/signing.py)
        self._kafka = kafka or KafkaSettings(bootstrap_servers=bootstrap_servers)
        if security is not None:
            self._kafka = self._kafka.model_copy(update={"security": security})
        self._publisher = KafkaPublisher(self._kafka, f"livedata-client-{portfolio_id}-{node_id}")
        # the client never creates topics: the services own their partition counts and configs
        self._watch = BrokerWatch(
            self._kafka.model_copy(update={"create_topics": False}),
            self.topics,
            None,
            f"livedata-client-{portfolio_id}-{node_id}",
        )
        self._watch.on_reconnect("reannounce-interest", self._reannounce)
        self._watch_stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._symbols: set[str] = set()
        self._wanted_keys: set[bytes] = set()
        # partitions: the topic's count, what is assigned, positions the reader reached, and
        # partitions kept after a count change until their deadline (monotonic)
        self._partition_count = 0
        self._assigned: frozenset[int] = frozenset()
        self._positions: dict[int, int] = {}
        self._retiring: dict[int, float] = {}
        self._assigning = asyncio.Lock()
        self._has_partitions = asyncio.Event()
        # the buffer: entries in arrival order, live count, pending price entry per symbol
        self.buffer_size = buffer_size
        self._buffer: deque[_Entry] = deque()
        self._count = 0
        self._pending_price: dict[str, _Entry] = {}
        self._drained = asyncio.Event()  # set when the buffer is at or below half
        self._paused = False
        self._lag_logged_at = -LAG_LOG_EVERY_S
        self.lag_episodes = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None
        self.dropped = 0  # kept for callers that read it: nothing is dropped any more (paused instead)
        self.conflated = 0  # price updates replaced by a newer one (conflate_prices)
        self.undecodable = 0

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._symbols)

    @property
    def partitions(self) -> frozenset[int]:
        """The market-data partitions the client reads now."""
        return self._assigned

    @property
    def partition_count(self) -> int:
        """The partition count of market data the client last saw."""
        return self._partition_count

    async def start(self) -> None:
        """Connect; waits (up to 30 s) for the market-data topic to exist."""
        try:
            await self._publisher.start()
            self._consumer = AIOKafkaConsumer(
                **consumer_options(self._kafka, f"livedata-client-{self.portfolio_id}-{self.node_id}")
            )
            await self._consumer.start()
            # waits for the topic and learns its partition count; then reads none until subscribed
            tps = await assign_all(self._consumer, self.topics.market_data)
            self._partition_count = len(tps)
            self._consumer.assign([])
            await self._reassign()
        except BaseException:
            self._closed = True
            if self._consumer is not None:
                await self._consumer.stop()
            await self._publisher.stop()
            raise
        reader = asyncio.create_task(self._read(), name="client.read")
        reader.add_done_callback(self._reader_done)
        self._tasks.append(reader)
        if self.lease_s:
            self._tasks.append(asyncio.create_task(self._renew(), name="client.lease"))
        if self.partition_check_s > 0:
            self._tasks.append(asyncio.create_task(self._check_partitions(), name="client.partitions"))
        self._tasks.append(asyncio.create_task(self._watch.run(self._watch_stop), name="client.broker-watch"))

    @property
    def broker_up(self) -> bool:
        """Whether the broker answered the client's last probe."""
        return self._watch.up

    async def _reannounce(self, back: BrokerReturn) -> None:
        """After an outage the datamanager may have lost what we said (the embedded broker
        loses its topics): say our whole set again. Redelivered, it changes nothing."""
        if self._symbols or back.recreated:
            log.info("broker back: re-announcing interest", extra=kv(symbols=len(self._symbols)))
            await self._send("replace", sorted(self._symbols))

    async def stop(self) -> None:
        """Stop reading; interest is left in place (call ``clear()`` first to withdraw it)."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        self._watch_stop.set()
        await cancel_and_wait(self._tasks)
        if self._consumer is not None:
            await self._consumer.stop()
        await self._publisher.stop()

    async def __aenter__(self) -> LiveDataClient:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- interest -----------------------------------------------------------------------

    async def _send(self, update_type: UpdateType, symbols: Iterable[str]) -> None:
        msg = InterestUpdate(
            portfolio_id=self.portfolio_id,
            node_id=self.node_id,
            symbols=tuple(symbols),
            update_type=update_type,
            timestamp=utcnow(),
            lease_s=self.lease_s,
        )
        msg = sign(self._signer, msg)
        await self._publisher.publish(self.topics.interest_updates, msg, key=f"{self.portfolio_id}/{self.node_id}")

    async def _set(self, symbols: set[str]) -> None:
        """Take ``symbols`` as the set and read the partitions that hold them (before the
        interest is sent, so the snapshot it triggers lands after the new partitions' start)."""
        self._symbols = symbols
        self._wanted_keys = {s.encode() for s in symbols}
        await self._reassign()

    async def subscribe(self, symbols: Iterable[str]) -> None:
        """Add symbols (canonical or accepted forms like ``AAPL.US``)."""
        new = [normalize(s) for s in symbols]
        await self._set(self._symbols | set(new))
        await self._send("add", new)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        gone = [normalize(s) for s in symbols]
        await self._set(self._symbols - set(gone))
        await self._send("remove", gone)

    async def replace(self, symbols: Iterable[str]) -> None:
        """Make ``symbols`` this subscriber's whole set."""
        new = {normalize(s) for s in symbols}
        await self._set(new)
        await self._send("replace", sorted(new))

    async def clear(self) -> None:
        await self._set(set())
        await self._send("clear", [])

    async def _renew(self) -> None:
        assert self.lease_s
        while True:
            await asyncio.sleep(self.lease_s / 3)  # lease renewal period, not a condition wait
            try:
                await self._send("replace", sorted(self._symbols))
            except Exception as e:  # keep renewing; the next attempt may work
                log.warning("lease renewal failed", extra=kv(error=repr(e)))

    # -- partitions ---------------------------------------------------------------------

    def _wanted_partitions(self) -> frozenset[int]:
        now = time.monotonic()
        self._retiring = {p: t for p, t in self._retiring.items() if t > now}
        count = self._partition_count
        return frozenset(symbol_partition(s, count) for s in self._symbols) | frozenset(self._retiring)

    async def _reassign(self, from_beginning: frozenset[int] = frozenset()) -> None:
        """Assign the partitions of the current symbols (plus those retiring). Partitions
        already read keep their position; new ones start at their end, or at their
        beginning if in ``from_beginning`` (created by a partition-count change)."""
        consumer = self._consumer
        if consumer is None:  # not started: start() reads nothing until the first change
            return
        async with self._assigning:
            target = self._wanted_partitions()
            if target == self._assigned:
                return
            topic = self.topics.market_data
            kept = target & self._assigned
            known = {p: self._positions[p] for p in kept if p in self._positions}
            for p in kept - known.keys():  # assigned but nothing read yet: where it was put
                known[p] = await consumer.position(TopicPartition(topic, p))
            # from here to the seeks nothing awaits: the reader cannot move in between
            known.update({p: self._positions[p] for p in kept if p in self._positions})
            consumer.assign([TopicPartition(topic, p) for p in sorted(target)])
            self._assigned = target
            self._positions = {p: o for p, o in self._positions.items() if p in kept}
            for p, offset in known.items():
                consumer.seek(TopicPartition(topic, p), offset)
            if self._paused:
                consumer.pause(*consumer.assignment())
            if target:
                self._has_partitions.set()
            else:
                self._has_partitions.clear()
            new = target - kept
            at_start = [TopicPartition(topic, p) for p in sorted(new & from_beginning)]
            at_end = [TopicPartition(topic, p) for p in sorted(new - from_beginning)]
            if at_start:
                await consumer.seek_to_beginning(*at_start)
            if at_end:
                await consumer.seek_to_end(*at_end)
            log.debug("market-data partitions assigned", extra=kv(partitions=",".join(map(str, sorted(target)))))

    async def _check_partitions(self) -> None:
        """Every ``partition_check_s``: refresh metadata; a changed count reassigns."""
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            await asyncio.sleep(self.partition_check_s)  # the check period, not a condition wait
            try:
                await refresh_metadata(consumer)
            except KafkaError as e:  # the broker is away: the watch reports it
                log.debug("metadata refresh failed", extra=kv(error=repr(e)))
                continue
            parts = consumer.partitions_for_topic(self.topics.market_data)
            if parts and len(parts) != self._partition_count:
                await self.partition_count_changed(len(parts))

    async def partition_count_changed(self, count: int) -> None:
        """The market-data topic now has ``count`` partitions: recompute and reassign."""
        old, before = self._partition_count, self._assigned
        self._partition_count = count
        deadline = time.monotonic() + self.partition_grace_s
        self._retiring.update({p: deadline for p in before if p < count})
        created = frozenset(range(old, count))
        await self._reassign(from_beginning=created)
        log.warning(
            "market-data partition count changed: partitions recomputed",
            extra=kv(
                topic=self.topics.market_data,
                old=old,
                new=count,
                partitions=",".join(map(str, sorted(self._assigned))),
                old_kept_s=self.partition_grace_s,
            ),
        )

    # -- data ---------------------------------------------------------------------------

    @property
    def lag(self) -> Lag:
        """How far behind the application is (see ``Lag``)."""
        oldest = next((e.ts for e in self._buffer if e.item is not None), None)
        unfetched = 0
        consumer = self._consumer
        if consumer is not None:
            for p in self._assigned:
                high = consumer.highwater(TopicPartition(self.topics.market_data, p))
                pos = self._positions.get(p)
                if high is not None and pos is not None:
                    unfetched += max(0, high - pos)
        return Lag(
            buffered=self._count,
            behind_s=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            unfetched=unfetched,
            paused=self._paused,
            episodes=self.lag_episodes,
        )

    def _put(self, msg: MarketUpdate, ts: float) -> None:
        entry = _Entry(msg, ts)
        if self.conflate_prices and isinstance(msg, PriceUpdate):
            old = self._pending_price.get(msg.symbol)
            if old is not None:
                old.item = None  # latest wins; it takes the newest place (order per symbol kept)
                self._count -= 1
                self.conflated += 1
            self._pending_price[msg.symbol] = entry
            if len(self._buffer) > 2 * self.buffer_size:  # bound the replaced entries
                self._buffer = deque(e for e in self._buffer if e.item is not None)
        self._buffer.append(entry)
        self._count += 1

    def _take(self, n: int) -> list[MarketUpdate]:
        out: list[MarketUpdate] = []
        buf = self._buffer
        while buf and len(out) < n:
            item = buf.popleft().item
            if item is None:
                continue
            out.append(item)
            if self.conflate_prices and isinstance(item, PriceUpdate):
                self._pending_price.pop(item.symbol, None)
        self._count -= len(out)
        if self._count <= self.buffer_size // 2:
            self._drained.set()
        return out

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """The buffer is full: pause fetching until the application took half of it."""
        self._paused = True
        consumer.pause(*consumer.assignment())
        now = time.monotonic()
        self.lag_episodes += 1
        if now - self._lag_logged_at >= LAG_LOG_EVERY_S:
            self._lag_logged_at = now
            lag = self.lag
            log.warning(
                "application lagging: buffer full, fetching paused (Kafka keeps the data)",
                extra=kv(buffered=lag.buffered, behind_s=round(lag.behind_s, 1), episodes=self.lag_episodes),
            )
        self._drained.clear()
        try:
            await self._drained.wait()
        finally:
            self._paused = False
            consumer.resume(*consumer.paused())
        log.debug("application caught up: fetching resumed", extra=kv(paused_s=round(time.monotonic() - now, 2)))

    async def _read(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            if not self._has_partitions.is_set():
                await self._has_partitions.wait()
            room = self.buffer_size - self._count
            if room <= 0:
                await self._wait_for_room(consumer)
                continue
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=min(10_000, room))
            except KafkaError as e:  # the broker is away: the watch reports it; keep reading
                log.debug("market-data fetch failed", extra=kv(error=repr(e)))
                batches = {}
            if not batches:
                await rewind_truncated(consumer)
                continue
            wanted = self._wanted_keys
            added = False
            for tp, records in batches.items():
                if not records:
                    continue
                self._positions[tp.partition] = records[-1].offset + 1
                for rec in records:
                    if rec.key not in wanted:
                        continue
                    try:
                        msg = decode(rec.value or b"")
                    except DecodeError:
                        self.undecodable += 1
                        continue
                    if isinstance(msg, PriceUpdate | Bar | TradeCorrection):
                        self._put(msg, rec.timestamp / 1000)
                        added = True
            if added:
                self._ready.set()

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            log.error("market-data reader failed", exc_info=self._failure)
            self._ready.set()  # wake the application so it sees the failure

    async def next_batch(self, max_items: int = 10_000) -> list[MarketUpdate]:
        """Wait for updates and return up to ``max_items``; [] once stopped.

        Raises the reader's exception if reading market data failed.
        """
        while not self._count:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        return self._take(max_items)

    async def __aiter__(self) -> AsyncIterator[MarketUpdate]:
        while True:
            batch = await self.next_batch()
            if not batch:
                return
            for item in batch:
                yield item
