"""Publishing accepted events, many per message, and telling each request whether its
events made it: to Pub/Sub (`PubSubTopic`) or to Kafka (`orion.collector.kafka`).

Requests hand `BatchPublisher.publish` their accepted events (each already encoded as
one JSON object). Events of many requests are gathered into one flush; a flush happens
when it holds `flush_events` events or `flush_bytes` bytes, or `flush_seconds` after its
first event, whichever comes first. Several flushes may be in flight at once.

The sink turns a flush into what it sends: for Pub/Sub one message, a JSON array of every
event of the flush, as the graph's ParseActivities reads it; for Kafka one record per
partition (a JSON array of the flush's events whose leads map to that partition, cut
where a record would grow past Kafka's size limit). Each record knows the requests that
have events in it.

A request's fate is the fate of every message or record holding its events: `publish`
returns only after the sink acknowledged all of them, and raises `PublishUnavailable`
when one was not (refused, failed, or not answered within `publish_timeout`); the
request is then answered 503 with Retry-After and none of its events count as accepted.
(After a timeout the message may still arrive; the client sends the events again and the
graph drops the duplicate by event id: at least once.)

Backpressure: bytes waiting for the sink are bounded by `max_pending_bytes`; past that,
`publish` refuses at once instead of buffering, so a slow or absent sink turns into
503s, not into memory.

    python -m orion.collector --topic projects/P/topics/T --keys K.yaml   # uses it
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable, NamedTuple, Protocol, Sequence

log = logging.getLogger(__name__)

# Pub/Sub takes messages of up to 10 MB; a flush is at most flush_bytes plus one request.
PUBSUB_MAX_MESSAGE_BYTES = 10_000_000


class PublishUnavailable(Exception):
    """The sink did not take the events; answer 503 and ask the client to retry."""

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


Send = Callable[[bytes, dict], Awaitable[None]]


class Pending(NamedTuple):
    """One request's accepted events, waiting in a flush."""
    items: list[bytes]            # encoded JSON objects, in request order
    leads: Sequence[str] | None   # "tenant/lead_id" of each item, when the caller knows them
    future: asyncio.Future


class Record(NamedTuple):
    """What a sink sends for (part of) a flush: a JSON array of events."""
    data: bytes
    events: int
    requests: tuple[int, ...]     # positions in the flush of the requests with events in it
    partition: int | None = None  # Kafka's partition; None for Pub/Sub


class Sink(Protocol):
    """Where flushes go. `records` cuts a flush into records; `submit` starts sending
    one (at once, so records go out in the order they were submitted) and returns what
    to await: it completes when the record is acknowledged and raises when it is not
    (asyncio.TimeoutError for "did not answer in time")."""

    name: str                    # "Pub/Sub", "Kafka": in answers, logs and /healthz
    unit: str                    # "message", "record"
    health_key: str              # the /healthz field that says whether publishing works
    max_flush_bytes: int | None  # flush_bytes must stay under it; None: records are cut to size

    def records(self, batch: Sequence[Pending]) -> list[Record]: ...

    def submit(self, record: Record) -> Awaitable[None]: ...


class MessageSink:
    """A flush is one message, sent by `send(data, attributes)` (`PubSubTopic.send` in
    service; any coroutine function in tests). The attribute `events` holds its count."""

    unit = "message"
    max_flush_bytes = PUBSUB_MAX_MESSAGE_BYTES // 2

    def __init__(self, send: Send, name: str = "Pub/Sub", health_key: str = "pubsub"):
        self._send, self.name, self.health_key = send, name, health_key

    def records(self, batch: Sequence[Pending]) -> list[Record]:
        items = [item for pending in batch for item in pending.items]
        return [Record(b"[" + b",".join(items) + b"]", len(items), tuple(range(len(batch))))]

    def submit(self, record: Record) -> Awaitable[None]:
        return asyncio.ensure_future(self._send(record.data, {"events": str(record.events)}))


class BatchPublisher:
    """Aggregates requests' events into flushes and publishes them through a sink: give
    `send` (a coroutine function `(data, attributes)` that publishes one message: each
    flush is one message) or `sink` (a `Sink`, e.g. `KafkaTopic`)."""

    def __init__(self, send: Send | None = None, *, sink: Sink | None = None, flush_events: int = 1000,
                 flush_bytes: int = 1_000_000, flush_seconds: float = 0.05, max_pending_bytes: int = 64_000_000,
                 publish_timeout: float = 10.0, retry_after_s: float = 2.0, metrics=None,
                 clock: Callable[[], float] = time.perf_counter):
        if (send is None) == (sink is None):
            raise ValueError("give either send or sink")
        self._sink: Sink = sink if sink is not None else MessageSink(send)
        limit = self._sink.max_flush_bytes
        if limit is not None and flush_bytes >= limit:
            raise ValueError(f"flush bytes must stay under {limit:,} (a {self._sink.name} {self._sink.unit} is at "
                             f"most {limit * 2 // 1_000_000} MB)")
        self.flush_events, self.flush_bytes, self.flush_seconds = flush_events, flush_bytes, flush_seconds
        self.max_pending_bytes = max_pending_bytes
        self.publish_timeout, self.retry_after_s = publish_timeout, retry_after_s
        self._metrics = metrics
        self._clock = clock
        self._batch: list[Pending] = []
        self._batch_events = 0
        self._batch_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task] = set()
        self.pending_bytes = 0
        self.pending_events = 0
        self.last_failure: str | None = None

    @property
    def sink_name(self) -> str:
        return self._sink.name

    @property
    def health_key(self) -> str:
        return self._sink.health_key

    async def publish(self, items: list[bytes], leads: Sequence[str] | None = None) -> None:
        """Publish one request's events (JSON objects, encoded; `leads`: each one's
        "tenant/lead_id", when known); returns once the sink has them all, raises
        PublishUnavailable if it does not."""
        size = sum(map(len, items)) + len(items)
        if self.pending_bytes + size > self.max_pending_bytes:
            raise PublishUnavailable(
                f"{self.pending_bytes:,} bytes are already waiting for {self._sink.name} (limit "
                f"{self.max_pending_bytes:,}); try again later", self.retry_after_s)
        future = asyncio.get_running_loop().create_future()
        if self._batch_bytes + size > self.flush_bytes and self._batch:
            self._flush()  # keep each flush under flush_bytes plus at most one request
        self._batch.append(Pending(items, leads, future))
        self._batch_events += len(items)
        self._batch_bytes += size
        self.pending_bytes += size
        self.pending_events += len(items)
        if self._batch_events >= self.flush_events or self._batch_bytes >= self.flush_bytes:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._flush)
        # shield: a client that hangs up does not cancel the flush other requests share
        await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        batch, events, size = self._batch, self._batch_events, self._batch_bytes
        self._batch, self._batch_events, self._batch_bytes = [], 0, 0
        started = self._clock()
        try:
            records = self._sink.records(batch)
            if not records:
                raise ValueError(f"no {self._sink.unit} for {events} events")
        except Exception as err:  # noqa: BLE001 - the requests must be answered whatever went wrong
            log.error("could not cut %d events into %ss: %s", events, self._sink.unit, err, exc_info=err)
            records, sent = [], []
            failure = PublishUnavailable(f"the collector could not prepare the {self._sink.unit}: "
                                         f"{type(err).__name__}", self.retry_after_s)
            self.last_failure = failure.detail
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
        else:
            # Submitted here, in flush order and before anything awaits: a sink that keeps
            # order (Kafka, per partition) sends a lead's events in the order they came.
            sent = [self._submit(record) for record in records]
        task = asyncio.get_running_loop().create_task(self._settle(batch, records, sent, events, size, started))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _submit(self, record: Record) -> Awaitable[None]:
        try:
            return self._sink.submit(record)
        except Exception as err:  # noqa: BLE001 - a sink that raises instead of failing its future
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(err)
            return failed

    async def _outcome(self, record: Record, sent: Awaitable[None], started: float) -> PublishUnavailable | None:
        name, unit = self._sink.name, self._sink.unit
        failure: PublishUnavailable | None = None
        try:
            await asyncio.wait_for(sent, self.publish_timeout)
        except asyncio.TimeoutError as err:
            last = f" ({str(err).splitlines()[0][:300]})" if str(err) else ""
            failure = PublishUnavailable(f"{name} did not answer within {self.publish_timeout:g} s{last}",
                                         self.retry_after_s)
        except Exception as err:  # noqa: BLE001 - whatever the client raised, the requests must be answered
            failure = PublishUnavailable(f"{name} refused the {unit}: {type(err).__name__}: "
                                         f"{str(err).splitlines()[0][:300] if str(err) else ''}",
                                         self.retry_after_s)
        if self._metrics is not None:
            self._metrics.published(record.events, self._clock() - started, ok=failure is None)
        return failure

    async def _settle(self, batch: list[Pending], records: list[Record], sent: list[Awaitable[None]],
                      events: int, size: int, started: float) -> None:
        outcomes = await asyncio.gather(*(self._outcome(record, one, started) for record, one in zip(records, sent)))
        self.pending_bytes -= size
        self.pending_events -= events
        failures: dict[int, PublishUnavailable] = {}
        for record, failure in zip(records, outcomes):
            if failure is not None:
                for position in record.requests:
                    failures.setdefault(position, failure)
        failed = [failure for failure in outcomes if failure is not None]
        if failed:
            self.last_failure = failed[0].detail
            log.warning("publish of %d of %d %ss (%d events) failed: %s", len(failed), len(records),
                        self._sink.unit, events, failed[0].detail)
        elif records:
            self.last_failure = None
        for position, pending in enumerate(batch):
            if pending.future.done():
                continue
            if position in failures:
                pending.future.set_exception(failures[position])
            else:
                pending.future.set_result(None)

    def flush(self) -> None:
        """Send what is waiting now rather than when its flush is due (shutting down)."""
        self._flush()

    async def close(self) -> None:
        """Send what is waiting and wait for every flush in flight."""
        self._flush()
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)


class PubSubTopic:
    """One Pub/Sub topic through the asynchronous (grpc.aio) client: the emulator at
    PUBSUB_EMULATOR_HOST when set (plain text, quick reconnects), else Google Cloud with
    the application default credentials."""

    def __init__(self, topic: str, publish_timeout: float = 10.0):
        from google.pubsub_v1.services.publisher import PublisherAsyncClient

        self.topic = topic
        self.publish_timeout = publish_timeout
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        if emulator:
            import grpc
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

            # Reconnect within a second or two once the emulator is back, not gRPC's
            # default of up to two minutes of backoff.
            channel = grpc.aio.insecure_channel(emulator, options=[
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ])
            self._client = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
        else:
            self._client = PublisherAsyncClient()
        self.where = emulator or "Google Cloud Pub/Sub"

    async def send(self, data: bytes, attributes: dict) -> None:
        from google.api_core import retry_async
        from google.api_core.exceptions import RetryError
        from google.api_core.retry import if_transient_error
        from google.pubsub_v1.types import PubsubMessage

        # Transient errors are retried until the deadline; BatchPublisher's wait_for caps it.
        retry = retry_async.AsyncRetry(predicate=if_transient_error, initial=0.05, maximum=1.0,
                                       multiplier=2.0, timeout=self.publish_timeout)
        try:
            await self._client.publish(topic=self.topic, messages=[PubsubMessage(data=data, attributes=attributes)],
                                       retry=retry, timeout=self.publish_timeout)
        except RetryError as gave_up:  # transient errors until the deadline: it did not answer
            raise asyncio.TimeoutError(str(gave_up)) from gave_up

    async def ensure(self, create: bool) -> str:
        """Check the topic exists (create it when `create`); returns what was done.
        Raises LookupError when it does not exist; Pub/Sub being down is only reported."""
        from google.api_core import exceptions, retry_async
        from google.api_core.retry import if_transient_error

        # A just-started emulator listens a moment before it answers: retry for a while.
        retry = retry_async.AsyncRetry(predicate=if_transient_error, initial=0.2, maximum=1.0,
                                       timeout=max(1.0, self.publish_timeout))
        try:
            try:
                await self._client.get_topic(topic=self.topic, timeout=5.0, retry=retry)
                return "exists"
            except exceptions.NotFound:
                if not create:
                    raise LookupError(f"topic {self.topic} does not exist on {self.where}; create it, "
                                      "or start the collector with --create-topic") from None
                await self._client.create_topic(name=self.topic, timeout=5.0, retry=retry)
                return "created"
        except (exceptions.GoogleAPICallError, exceptions.RetryError, asyncio.TimeoutError) as err:
            return f"not checked ({type(err).__name__}); requests get 503 until Pub/Sub answers"

    async def close(self) -> None:
        await self._client.transport.close()
