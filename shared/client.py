"""The client SDK an execution node uses: say which symbols, iterate over their data.

    async with LiveDataClient("127.0.0.1:9092", portfolio_id="p1", node_id="n1") as client:
        await client.subscribe(["600000.SH", "AAPL"])
        async for update in client:      # PriceUpdate or Bar, only for subscribed symbols
            strategy.on_price_update(update)

The client announces interest on ``interest.updates`` keyed by its subscriber id and
renews a lease by re-sending its full set (``replace``) every ``lease_s / 3``, so a node
that dies stops costing subscriptions. It reads ``market.data`` from the end with
``assign()`` (no consumer group: every node sees every message) and only decodes the
messages keyed by a symbol it wants.

On a secured cluster pass the node's login (``livedata acls`` lists what it may do: read
market data, write interest)::

    LiveDataClient("broker:9093", "p1", "n1", security=KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="livedata-strategy",
        password=os.environ["LIVEDATA_KAFKA_PASSWORD"], ca_file="/etc/kafka/ca.pem"))
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from types import TracebackType

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from shared.broker_watch import BrokerReturn, BrokerWatch
from shared.config import KafkaSecurity, KafkaSettings
from shared.dto import Bar, DecodeError, InterestUpdate, PriceUpdate, UpdateType, decode, utcnow
from shared.kafka import KafkaPublisher, assign_all, consumer_options, rewind_truncated
from shared.logs import kv
from shared.signing import Signer, sign
from shared.symbols import normalize
from shared.tasks import cancel_and_wait
from shared.topics import Topics

log = logging.getLogger("client")

MarketUpdate = PriceUpdate | Bar


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
    ) -> None:
        """``kafka``: all connection settings (``bootstrap_servers`` is then ignored);
        ``security``: TLS and login (``kafka.security``), e.g. the strategy node's principal."""
        self.portfolio_id = portfolio_id
        self.node_id = node_id
        self.topics = topics or Topics()
        self.lease_s = lease_s
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
        self._buffer: deque[MarketUpdate] = deque(maxlen=buffer_size)
        self._ready = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None
        self.dropped = 0  # updates dropped because the application did not keep up
        self.undecodable = 0

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._symbols)

    async def start(self) -> None:
        """Connect; waits (up to 30 s) for the market-data topic to exist."""
        try:
            await self._publisher.start()
            self._consumer = AIOKafkaConsumer(
                **consumer_options(self._kafka, f"livedata-client-{self.portfolio_id}-{self.node_id}")
            )
            await self._consumer.start()
            tps = await assign_all(self._consumer, self.topics.market_data)
            await self._consumer.seek_to_end(*tps)
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

    def _set(self, symbols: set[str]) -> None:
        self._symbols = symbols
        self._wanted_keys = {s.encode() for s in symbols}

    async def subscribe(self, symbols: Iterable[str]) -> None:
        """Add symbols (canonical or accepted forms like ``AAPL.US``)."""
        new = [normalize(s) for s in symbols]
        self._set(self._symbols | set(new))
        await self._send("add", new)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        gone = [normalize(s) for s in symbols]
        self._set(self._symbols - set(gone))
        await self._send("remove", gone)

    async def replace(self, symbols: Iterable[str]) -> None:
        """Make ``symbols`` this subscriber's whole set."""
        new = {normalize(s) for s in symbols}
        self._set(new)
        await self._send("replace", sorted(new))

    async def clear(self) -> None:
        self._set(set())
        await self._send("clear", [])

    async def _renew(self) -> None:
        assert self.lease_s
        while True:
            await asyncio.sleep(self.lease_s / 3)  # lease renewal period, not a condition wait
            try:
                await self._send("replace", sorted(self._symbols))
            except Exception as e:  # keep renewing; the next attempt may work
                log.warning("lease renewal failed", extra=kv(error=repr(e)))

    # -- data ---------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        buf = self._buffer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            except KafkaError as e:  # the broker is away: the watch reports it; keep reading
                log.debug("market-data fetch failed", extra=kv(error=repr(e)))
                batches = {}
            if not batches:
                await rewind_truncated(consumer)
                continue
            wanted = self._wanted_keys
            added = False
            for records in batches.values():
                for rec in records:
                    if rec.key not in wanted:
                        continue
                    try:
                        msg = decode(rec.value or b"")
                    except DecodeError:
                        self.undecodable += 1
                        continue
                    if isinstance(msg, PriceUpdate | Bar):
                        if len(buf) == buf.maxlen:
                            self.dropped += 1
                        buf.append(msg)
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
        while not self._buffer:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        n = min(max_items, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]

    async def __aiter__(self) -> AsyncIterator[MarketUpdate]:
        while True:
            batch = await self.next_batch()
            if not batch:
                return
            for item in batch:
                yield item
