"""The collector's Kafka sink: accepted events go to a Kafka topic, the alternative to
Pub/Sub, for the Flink job's Kafka source and any other consumer.

    orion collect --kafka-servers 127.0.0.1:9092 --kafka-topic activities --keys K.yaml

Records. A record's value is a JSON array of activities, as the graph's parsers read a
Kafka record or a Pub/Sub message (one activity, a JSON array or JSONL), with a header
`events` holding its count. A lead's events must stay in one partition, in order: a
consumer reads each partition in order, and the graph sequences each lead's events
from there. Two ways of aggregating keep that: one record per (tenant, lead) keyed
`tenant/lead_id`, or one record per partition holding every event of a flush whose lead
maps to that partition. The collector does the second, because:

- aggregation survives it. Web and device traffic is many leads with an event or two
  each: one record per lead would be one record per event, and every consumer would pay
  the per-record cost (fetch, deserialise, one parse) per event. Per partition, a flush
  of 1,000 events over 12 partitions is 12 records.
- the mapping is Kafka's own. A lead's partition is murmur2(`tenant/lead_id`) &
  0x7fffffff modulo the partition count: what Kafka's default partitioner (Java's, and
  librdkafka's `murmur2_random`) gives a record keyed `tenant/lead_id`. Another
  producer writing single activities with that key puts a lead's events where the
  collector puts them.

A record holds many leads, so it has no key; it is produced to its partition. Records
go out in the order of their flushes, and the producer is idempotent (acks=all,
enable.idempotence), so its retries neither duplicate nor reorder a partition's
records; inside a record, events keep their arrival order, a request's in its own
order. A client that waits for each answer before it sends more finds its lead's events
in the topic in the order it posted them.

Size. A record's value is cut at 1,000,000 bytes (a single event may be 2 bytes more:
an event of MAX_ACTIVITY_BYTES in its brackets), whatever --flush-bytes says, and the
producer takes messages of up to 1 MiB, under a broker's default limit (message.max.bytes
1,048,588). A topic configured with a lower max.message.bytes refuses larger records:
their requests get 503.

Guarantees, as with Pub/Sub (`orion.collector.publisher`): a request is answered only
after every record holding its events was acknowledged by the in-sync replicas
(acks=all); a record Kafka refuses, or does not acknowledge within --publish-timeout
(also the producer's message.timeout.ms, so the producer gives up when the request
does), fails its requests with 503 and Retry-After. The producer's own queue is capped at
about --max-pending-bytes: with the broker down, a record beyond it fails at once
(BufferError), never memory growth. Closing flushes the producer.

Partitions are counted when the collector starts (the topic must exist, or
--create-topic creates it) and again every 30 s; partitions added to a running topic
remap leads, as they do for every keyed producer. No broker answering at start is
`KafkaUnavailable` (the command exits 2 with the reason): the collector needs the
partition count to place a lead, and a supervisor that restarts it says more than a
collector answering nothing but 503. A broker that goes away later means 503s until it
is back.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from functools import lru_cache
from typing import Sequence

import orjson

from orion.collector.publisher import Pending, Record

log = logging.getLogger(__name__)

KAFKA_MAX_RECORD_BYTES = 1_000_000    # a record's value is cut here (one event alone may be 2 bytes more)
PRODUCER_MAX_MESSAGE_BYTES = 1_048_576  # the producer's message.max.bytes: under a broker's default 1,048,588
PARTITIONS_REFRESH_SECONDS = 30.0
_MURMUR_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


class KafkaUnavailable(Exception):
    """Kafka cannot be used: no broker answered, the topic is broken, or the client is missing."""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), a signed 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _MURMUR_M) & _MASK
        k ^= k >> 24
        k = (k * _MURMUR_M) & _MASK
        h = ((h * _MURMUR_M) & _MASK) ^ k
    rest = length - whole
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h = ((h ^ data[whole]) * _MURMUR_M) & _MASK
    h ^= h >> 13
    h = (h * _MURMUR_M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@lru_cache(maxsize=1 << 16)  # a lead seen again (most are) costs a dict look-up, not a hash
def lead_partition(lead: str, partitions: int) -> int:
    """The partition of a lead's key ("tenant/lead_id"), as Kafka's default partitioner
    places a record with that key."""
    return (murmur2(lead.encode("utf-8")) & 0x7FFFFFFF) % partitions


def lead_key(item: bytes) -> str:
    """The key "tenant/lead_id" of one encoded activity."""
    event = orjson.loads(item)
    return f"{event['tenant']}/{event['lead_id']}"


def _client():
    try:
        import confluent_kafka
    except ImportError:
        raise KafkaUnavailable("publishing to Kafka needs the confluent-kafka package: "
                               "pip install confluent-kafka") from None
    return confluent_kafka


def _reason(err: BaseException) -> str:
    error = err.args[0] if err.args else None
    text = error.str() if hasattr(error, "str") else str(err)
    return text.splitlines()[0][:300] if text else type(err).__name__


class KafkaTopic:
    """One Kafka topic through confluent-kafka's Producer, as a `Sink` of BatchPublisher.
    `ensure` must run first (it counts the partitions and starts the producer); `close`
    flushes it."""

    name = "Kafka"
    unit = "record"
    health_key = "kafka"
    max_flush_bytes = None  # records are cut to size

    def __init__(self, servers: str, topic: str, *, publish_timeout: float = 10.0,
                 max_pending_bytes: int = 64_000_000, max_record_bytes: int = KAFKA_MAX_RECORD_BYTES):
        _client()
        self.servers, self.topic = servers, topic
        self.where = servers
        self.publish_timeout = publish_timeout
        self.max_pending_bytes = max_pending_bytes
        self.max_record_bytes = max_record_bytes
        self.partitions = 0
        self._producer = None
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()
        self._error_logged_at = float("-inf")

    # --- start -----------------------------------------------------------------------

    def _common_settings(self) -> dict:
        # librdkafka logs every failed reconnect; its errors come through error_cb instead,
        # once in a while, and only its critical lines are logged as they come.
        return {"bootstrap.servers": self.servers, "client.id": "orion-collector",
                "logger": logging.getLogger(f"{__name__}.librdkafka"), "log_level": 2, "log.connection.close": False,
                # back within a second or so once the broker is, not librdkafka's 10 s backoff
                "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 1000}

    async def ensure(self, create: bool, partitions: int | None = None) -> str:
        """Check the topic exists (create it when `create`, with `partitions` or the
        broker's default), count its partitions and start the producer; returns what was
        done. Raises LookupError when the topic does not exist, KafkaUnavailable when no
        broker answers within the publish timeout."""
        status = await asyncio.get_running_loop().run_in_executor(None, self._ensure, create, partitions)
        self._start_producer()
        return status

    def _ensure(self, create: bool, partitions: int | None) -> str:
        kafka = _client()
        from confluent_kafka.admin import AdminClient, NewTopic

        wait = max(1.0, self.publish_timeout)
        admin = AdminClient(self._common_settings())
        try:
            # every topic, not this one: asking for one topic by name may create it on a
            # broker with auto.create.topics.enable
            found = admin.list_topics(timeout=wait).topics.get(self.topic)
        except kafka.KafkaException as err:
            raise KafkaUnavailable(f"no Kafka broker at {self.servers} answered within {wait:g} s "
                                   f"({_reason(err)}); start Kafka or correct --kafka-servers") from None
        status = "exists"
        if found is None or (found.error is not None
                             and found.error.code() == kafka.KafkaError.UNKNOWN_TOPIC_OR_PART):
            if not create:
                raise LookupError(f"Kafka topic {self.topic} does not exist on {self.servers}; create it, "
                                  "or start the collector with --create-topic")
            request = NewTopic(self.topic, num_partitions=partitions or -1, replication_factor=-1)
            try:
                admin.create_topics([request], operation_timeout=wait, request_timeout=wait)[self.topic].result()
                status = "created"
            except kafka.KafkaException as err:
                if err.args[0].code() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:  # another collector was quicker
                    raise KafkaUnavailable(f"could not create Kafka topic {self.topic} on {self.servers}: "
                                           f"{_reason(err)}") from None
        self.partitions = self._count_partitions(admin, wait)
        return f"{status}, {self.partitions} partition{'s' if self.partitions != 1 else ''}"

    def _count_partitions(self, admin, wait: float) -> int:
        kafka = _client()
        deadline = time.monotonic() + wait
        while True:  # a topic just created has partitions without leaders for a moment
            try:
                found = admin.list_topics(self.topic, timeout=wait).topics.get(self.topic)
            except kafka.KafkaException as err:
                raise KafkaUnavailable(f"Kafka at {self.servers} stopped answering: {_reason(err)}") from None
            if found is not None and found.error is None and found.partitions:
                return len(found.partitions)
            if time.monotonic() > deadline:
                problem = found.error.str() if found is not None and found.error is not None else "no partitions"
                raise KafkaUnavailable(f"Kafka topic {self.topic} on {self.servers} is not usable: {problem}")
            time.sleep(0.1)

    def _start_producer(self) -> None:
        kafka = _client()
        self._producer = kafka.Producer({
            **self._common_settings(),
            "acks": "all",
            "enable.idempotence": True,  # retries neither duplicate nor reorder a partition's records
            "linger.ms": 5,  # BatchPublisher has gathered the events already
            "message.timeout.ms": max(1, round(self.publish_timeout * 1000)),
            "message.max.bytes": PRODUCER_MAX_MESSAGE_BYTES,
            # the producer's queue holds what BatchPublisher counts as pending (plus records
            # it stopped waiting for that the producer has not expired yet): past it, BufferError
            "queue.buffering.max.kbytes": self.max_pending_bytes // 1024 + 2 * PRODUCER_MAX_MESSAGE_BYTES // 1024,
            "allow.auto.create.topics": False,
            "error_cb": self._on_error,
        })
        self._timed_out = kafka.KafkaError._MSG_TIMED_OUT
        self._kafka_exception = kafka.KafkaException
        self._poller = threading.Thread(target=self._serve_callbacks, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _serve_callbacks(self) -> None:
        """The producer's delivery reports and logs, served on this thread; the topic's
        partitions recounted now and then."""
        recount = time.monotonic() + PARTITIONS_REFRESH_SECONDS
        while not self._closing.is_set():
            self._producer.poll(0.1)
            if time.monotonic() >= recount:
                recount = time.monotonic() + PARTITIONS_REFRESH_SECONDS
                self._recount_partitions()

    def _recount_partitions(self) -> None:
        try:
            found = self._producer.list_topics(self.topic, timeout=2.0).topics.get(self.topic)
        except self._kafka_exception:
            return  # the broker is away: the records say so
        if found is None or found.error is not None or not found.partitions or len(found.partitions) == self.partitions:
            return
        log.warning("Kafka topic %s now has %d partitions (was %d): leads are placed by the new count",
                    self.topic, len(found.partitions), self.partitions)
        self.partitions = len(found.partitions)

    def _on_error(self, error) -> None:
        if error.fatal():  # the producer can send no more: every request gets 503 until a restart
            log.error("Kafka at %s: fatal: %s; restart the collector", self.servers, error.str())
            return
        now = time.monotonic()
        if now - self._error_logged_at > 30:  # a broker that is away says so every second
            self._error_logged_at = now
            log.warning("Kafka at %s: %s", self.servers, error.str())

    # --- the Sink of BatchPublisher ----------------------------------------------------

    def records(self, batch: Sequence[Pending]) -> list[Record]:
        partitions = self.partitions
        if partitions < 1:
            raise RuntimeError("the topic's partitions are not known: ensure() first")
        by_partition: dict[int, list[tuple[int, bytes]]] = {}
        for position, pending in enumerate(batch):
            leads = pending.leads if pending.leads is not None else [lead_key(item) for item in pending.items]
            for item, lead in zip(pending.items, leads):
                by_partition.setdefault(lead_partition(lead, partitions), []).append((position, item))
        records: list[Record] = []
        for partition in sorted(by_partition):
            records.extend(self._cut(partition, by_partition[partition]))
        return records

    def _cut(self, partition: int, entries: list[tuple[int, bytes]]) -> list[Record]:
        """One partition's events, in order, as records of at most max_record_bytes."""
        cut: list[Record] = []
        items: list[bytes] = []
        positions: set[int] = set()
        size = 2  # the brackets
        for position, item in entries:
            grown = size + len(item) + (1 if items else 0)
            if items and grown > self.max_record_bytes:
                cut.append(Record(b"[" + b",".join(items) + b"]", len(items), tuple(sorted(positions)), partition))
                items, positions, grown = [], set(), 2 + len(item)
            items.append(item)
            positions.add(position)
            size = grown
        cut.append(Record(b"[" + b",".join(items) + b"]", len(items), tuple(sorted(positions)), partition))
        return cut

    def submit(self, record: Record) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def delivered(error, message) -> None:  # on the delivery thread, or on close's flush
            try:
                loop.call_soon_threadsafe(self._settle, future, error)
            except RuntimeError:  # the loop is closed: nobody waits for this record any more
                pass

        try:
            self._producer.produce(self.topic, value=record.data, partition=record.partition,
                                   headers=[("events", str(record.events).encode())], on_delivery=delivered)
        except BufferError:
            future.set_exception(BufferError(f"the producer's queue is full: {len(self._producer):,} records "
                                             "are waiting for Kafka"))
        except self._kafka_exception as err:
            future.set_exception(err)
        return future

    def _settle(self, future: asyncio.Future, error) -> None:
        if future.done():  # BatchPublisher stopped waiting (publish timeout)
            return
        if error is None:
            future.set_result(None)
        elif error.code() == self._timed_out:
            future.set_exception(asyncio.TimeoutError(error.str()))
        else:
            future.set_exception(self._kafka_exception(error))

    async def close(self) -> None:
        """Stop serving callbacks on the thread and flush the producer: records still
        queued are sent (or time out) and their requests answered."""
        if self._producer is None:
            return
        loop = asyncio.get_running_loop()
        self._closing.set()
        if self._poller is not None:
            await loop.run_in_executor(None, self._poller.join)
        left = await loop.run_in_executor(None, self._producer.flush, max(1.0, self.publish_timeout))
        if left:
            log.warning("%d record(s) were not delivered to Kafka at %s before closing", left, self.servers)
