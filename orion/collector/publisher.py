"""Publishing accepted events to Pub/Sub, many per message, and telling each request
whether its events made it.

Requests hand `BatchPublisher.publish` their accepted events (each already encoded as
one JSON object). Events of many requests go into one message, a JSON array, as the
graph's ParseActivities reads it; a message is sent when it holds `flush_events` events
or `flush_bytes` bytes, or `flush_seconds` after its first event, whichever comes first.
Several messages may be in flight at once.

Every request's events go into exactly one message, so a message's fate is its requests'
fate: `publish` returns only after Pub/Sub acknowledged that message, and raises
`PublishUnavailable` when it was not (Pub/Sub refused, failed or did not answer within
`publish_timeout`); the request is then answered 503 with Retry-After and none of its
events count as accepted. (After a timeout the message may still arrive; the client sends
the events again and the graph drops the duplicate by event id: at least once.)

Backpressure: bytes waiting for Pub/Sub are bounded by `max_pending_bytes`; past that,
`publish` refuses at once instead of buffering, so a slow or absent Pub/Sub turns into
503s, not into memory.

    python -m orion.collector --topic projects/P/topics/T --keys K.yaml   # uses it
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

# Pub/Sub takes messages of up to 10 MB; a flush is at most flush_bytes plus one request.
PUBSUB_MAX_MESSAGE_BYTES = 10_000_000


class PublishUnavailable(Exception):
    """Pub/Sub did not take the events; answer 503 and ask the client to retry."""

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


Send = Callable[[bytes, dict], Awaitable[None]]


class BatchPublisher:
    """Aggregates requests' events into messages and publishes them through `send`
    (`PubSubTopic.send` in service; any coroutine function `(data, attributes)` in tests)."""

    def __init__(self, send: Send, *, flush_events: int = 1000, flush_bytes: int = 1_000_000,
                 flush_seconds: float = 0.05, max_pending_bytes: int = 64_000_000,
                 publish_timeout: float = 10.0, retry_after_s: float = 2.0, metrics=None,
                 clock: Callable[[], float] = time.perf_counter):
        if flush_bytes >= PUBSUB_MAX_MESSAGE_BYTES // 2:
            raise ValueError(f"flush bytes must stay under {PUBSUB_MAX_MESSAGE_BYTES // 2:,} "
                             "(a message is at most 10 MB)")
        self._send = send
        self.flush_events, self.flush_bytes, self.flush_seconds = flush_events, flush_bytes, flush_seconds
        self.max_pending_bytes = max_pending_bytes
        self.publish_timeout, self.retry_after_s = publish_timeout, retry_after_s
        self._metrics = metrics
        self._clock = clock
        self._batch: list[tuple[list[bytes], asyncio.Future]] = []
        self._batch_events = 0
        self._batch_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task] = set()
        self.pending_bytes = 0
        self.pending_events = 0
        self.last_failure: str | None = None

    async def publish(self, items: list[bytes]) -> None:
        """Publish one request's events (JSON objects, encoded); returns once Pub/Sub has
        them, raises PublishUnavailable if it does not."""
        size = sum(map(len, items)) + len(items)
        if self.pending_bytes + size > self.max_pending_bytes:
            raise PublishUnavailable(
                f"{self.pending_bytes:,} bytes are already waiting for Pub/Sub (limit "
                f"{self.max_pending_bytes:,}); try again later", self.retry_after_s)
        future = asyncio.get_running_loop().create_future()
        if self._batch_bytes + size > self.flush_bytes and self._batch:
            self._flush()  # keep each message under flush_bytes plus at most one request
        self._batch.append((items, future))
        self._batch_events += len(items)
        self._batch_bytes += size
        self.pending_bytes += size
        self.pending_events += len(items)
        if self._batch_events >= self.flush_events or self._batch_bytes >= self.flush_bytes:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._flush)
        # shield: a client that hangs up does not cancel the message other requests share
        await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        batch, events, size = self._batch, self._batch_events, self._batch_bytes
        self._batch, self._batch_events, self._batch_bytes = [], 0, 0
        task = asyncio.get_running_loop().create_task(self._send_message(batch, events, size))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send_message(self, batch, events: int, size: int) -> None:
        data = b"[" + b",".join(item for items, _ in batch for item in items) + b"]"
        started = self._clock()
        failure: PublishUnavailable | None = None
        try:
            await asyncio.wait_for(self._send(data, {"events": str(events)}), self.publish_timeout)
        except asyncio.TimeoutError as err:
            last = f" ({str(err).splitlines()[0][:300]})" if str(err) else ""
            failure = PublishUnavailable(f"Pub/Sub did not answer within {self.publish_timeout:g} s{last}",
                                         self.retry_after_s)
        except Exception as err:  # noqa: BLE001 - whatever the client raised, the requests must be answered
            failure = PublishUnavailable(f"Pub/Sub refused the message: {type(err).__name__}: "
                                         f"{str(err).splitlines()[0][:300] if str(err) else ''}",
                                         self.retry_after_s)
        elapsed = self._clock() - started
        self.pending_bytes -= size
        self.pending_events -= events
        if self._metrics is not None:
            self._metrics.published(events, elapsed, ok=failure is None)
        if failure is not None:
            self.last_failure = failure.detail
            log.warning("publish of %d events failed: %s", events, failure.detail)
        else:
            self.last_failure = None
        for _, future in batch:
            if future.done():
                continue
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(failure)

    async def close(self) -> None:
        """Send what is waiting and wait for every message in flight."""
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
