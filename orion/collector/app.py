"""The collector's HTTP service (aiohttp): POST /v1/events, GET /healthz, GET /metrics.

POST /v1/events takes one event, a JSON array of events or JSONL, with an API key in
`Authorization: Bearer KEY`, in `X-Orion-Key: KEY` or, for `navigator.sendBeacon` (which
cannot set headers), in the query string `?key=KEY`. In order, a request can be refused
whole with 401 (no key / unknown key), 429 (the key's rate limit; Retry-After), 415 (a
Content-Encoding other than gzip or deflate), 413 (body over max_body_bytes, before or
after decompression, inflating more than max_compression_ratio, or more than max_batch
events), 408 (the body did not arrive within body_timeout), 400 (not UTF-8, not JSON,
empty, broken compression) or 503 (Pub/Sub or Kafka did not take the events;
Retry-After; nothing of it was accepted). Otherwise the answer lists every event in
order, accepted or refused with a reason (`orion.collector.checking`): 200 when at least
one was accepted, 422 when none was.

Bad input is never a 500, and nothing about one request slows the others: the key is
checked before the body is read, aiohttp does not inflate bodies (the handler does, off
the event loop, capped), and every connection has an idle timeout that also bounds how
long its request line and headers may take (`CollectorRunner`). Connections are capped
at max_connections: past it, the oldest connection that is waiting for a request (idle,
or still sending its request line and headers) is closed to make room, and when every
connection has a request under way the new one gets a canned 503 and is closed, so many
idle or slow connections cannot use up the process or lock out other clients. Every
answer is counted in /metrics by route and status, including those aiohttp gives to
requests it cannot parse (route `unparsed`) and the 503s of the cap (route
`connection_cap`), and no answer or log line carries an API key
(`orion.collector.redaction`).

More routes: register them in `build_app` beside the others; the middleware counts and
guards them too.

    python -m orion.collector --topic projects/P/topics/T --keys K.yaml --port 8080
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from aiohttp import web

from orion.activities import ActivityTypes
from orion.collector.checking import (UNAVAILABLE, BodyRefused, check_body, content_coding,
                                      decompress_body)
from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header
from orion.collector.metrics import CollectorMetrics
from orion.collector.publisher import BatchPublisher, PublishUnavailable
from orion.collector.redaction import redact
from orion.collector.serving import JsonErrorsHandler, authorize
from orion.collector.settings import CollectorSettings

log = logging.getLogger(__name__)

EVENTS_ROUTE = "/v1/events"
UNPARSED_ROUTE = "unparsed"  # the route label of requests aiohttp could not parse (4xx)
CONNECTION_CAP_ROUTE = "connection_cap"  # the route label of the 503s given to connections past the cap
# After an answer given before its body was read (401, 413, ...), how long aiohttp goes on
# reading and dropping the body so the client sees the answer, not a reset connection.
LINGER_SECONDS = 2.0


STATE = web.AppKey("collector", object)


class Collector:
    """What the handlers share: keys, schemas, limiter, publisher and metrics."""

    def __init__(self, keys: KeyStore, types: ActivityTypes, publisher: BatchPublisher,
                 settings: CollectorSettings, metrics: CollectorMetrics):
        self.keys, self.types, self.publisher = keys, types, publisher
        self.settings, self.metrics = settings, metrics
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        metrics.pending_events.set_function(lambda: publisher.pending_events)
        self.started = time.time()


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    text = json.dumps(body, ensure_ascii=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # text that is not valid Unicode is sent as \uXXXX escapes
        encoded = json.dumps(body).encode("ascii")
    return web.Response(status=status, headers=headers, body=encoded,
                        content_type="application/json", charset="utf-8")


async def _read_body(request: web.Request, settings: CollectorSettings) -> bytes:
    """The body as sent, inflated when compressed; BodyRefused for what cannot be taken."""
    coding = content_coding(request.headers.get("Content-Encoding"))
    too_large = BodyRefused(413, "too_large", f"the body may be at most {settings.max_body_bytes:,} bytes")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise too_large
    try:
        body = await asyncio.wait_for(request.read(), settings.body_timeout)
    except web.HTTPRequestEntityTooLarge:  # chunked bodies are cut off by client_max_size
        raise too_large from None
    except asyncio.TimeoutError:
        raise BodyRefused(408, "body_timeout", f"the body did not arrive within {settings.body_timeout:g} s") \
            from None
    except (ConnectionError, web.RequestPayloadError) as err:
        raise BodyRefused(400, "bad_body", f"the body could not be read: {type(err).__name__}") from None
    if len(body) > settings.max_body_bytes:
        raise too_large
    if coding is not None:
        # zlib lets go of the interpreter while it inflates: the event loop serves on.
        body = await asyncio.get_running_loop().run_in_executor(
            None, decompress_body, body, coding, settings.max_body_bytes, settings.max_compression_ratio)
    return body


async def post_events(request: web.Request) -> web.Response:
    collector: Collector = request.app[STATE]
    settings = collector.settings
    key, refusal = authorize(request, collector.keys, collector.limiter, settings.rate_limit)
    if refusal is not None:
        return refusal
    try:
        body = await _read_body(request, settings)
        checked = check_body(body, key.tenant, collector.types, settings.max_batch)
    except BodyRefused as refused:
        response = _json(refused.status, {"error": refused.error, "detail": refused.detail})
        if refused.status == 408:
            response.force_close()  # a client this slow does not get the connection again
        return response
    metrics = collector.metrics
    for reason in checked.refused_reasons:
        metrics.refused.labels(key.tenant, reason).inc()
    if checked.accepted:
        try:
            await collector.publisher.publish(checked.accepted, checked.accepted_leads)
        except PublishUnavailable as unavailable:
            metrics.refused.labels(key.tenant, UNAVAILABLE).inc(len(checked.accepted))
            return _json(503, {"error": "unavailable", "detail": unavailable.detail, "accepted": 0,
                               "refused": len(checked.results)},
                         {"Retry-After": retry_after_header(unavailable.retry_after_s)})
        metrics.accepted.labels(key.tenant).inc(len(checked.accepted))
    return _json(200 if checked.accepted else 422,
                 {"accepted": len(checked.accepted), "refused": len(checked.refused_reasons),
                  "results": checked.results})


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Orion-Key",
        "Access-Control-Max-Age": "86400",
    })


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves; says whether the last publish failed
    (field `pubsub` or `kafka`, after the sink)."""
    collector: Collector = request.app[STATE]
    publisher = collector.publisher
    failure = publisher.last_failure
    return _json(200, {"status": "ok", publisher.health_key: "ok" if failure is None else f"failing: {failure}",
                       "pending_events": publisher.pending_events, "keys": len(collector.keys)})


async def metrics(request: web.Request) -> web.Response:
    collector: Collector = request.app[STATE]
    return web.Response(body=collector.metrics.render(), headers={"Content-Type": collector.metrics.content_type})


def _internal_error() -> web.Response:
    return _json(500, {"error": "internal", "detail": "the collector failed on this request; it is logged"})


@web.middleware
async def count_and_cors(request: web.Request, handler):
    collector: Collector = request.app[STATE]
    try:
        response = await handler(request)
    except web.HTTPException as http_error:  # 404, 405 and the like, raised by aiohttp itself
        response = http_error
    except Exception as err:  # noqa: BLE001 - a fault of ours: answered, counted and logged, keys cut out
        log.error("%s %s failed: %s", request.method, redact(request.path_qs), redact(f"{type(err).__name__}: {err}"),
                  exc_info=err)
        response = _internal_error()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
    collector.metrics.requests.labels(route, str(response.status)).inc()
    if route == EVENTS_ROUTE:
        response.headers["Access-Control-Allow-Origin"] = collector.settings.cors_origin
    if isinstance(response, web.HTTPException):
        raise response
    return response


def build_app(keys: KeyStore, types: ActivityTypes, publisher: BatchPublisher,
              settings: CollectorSettings, metrics_: CollectorMetrics | None = None) -> web.Application:
    """The aiohttp application; the caller owns the publisher (and closes it)."""
    metrics_ = metrics_ or CollectorMetrics()
    # aiohttp refuses larger bodies itself while reading; the handler answers 413 in JSON.
    # Serve it with CollectorRunner: it sets the timeouts and turns off aiohttp's own
    # decompression, which would inflate a body on the event loop before the key is checked.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[count_and_cors])
    app[STATE] = Collector(keys, types, publisher, settings, metrics_)
    app.router.add_post(EVENTS_ROUTE, post_events)
    app.router.add_route("OPTIONS", EVENTS_ROUTE, preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class _CollectorRequestHandler(JsonErrorsHandler):
    """One connection of the collector: every error answered in JSON (JsonErrorsHandler),
    a request that is not valid HTTP counted in the collector's metrics."""

    collector: Collector

    def on_unparsed(self, status: int) -> None:
        self.collector.metrics.requests.labels(UNPARSED_ROUTE if status < 500 else "other", str(status)).inc()


def _waiting_for_request(connection: web.RequestHandler) -> bool:
    """Whether a connection has no complete request: idle, or still sending its request
    line and headers. aiohttp's own keep-alive timeout judges idleness by this waiter;
    without it (another aiohttp) no connection counts as idle and the cap only refuses."""
    waiter = getattr(connection, "_waiter", None)
    return waiter is not None and not waiter.done()


# How long a connection refused at the cap is read and dropped after its 503 (so the
# client reads the answer instead of a reset), and how many may linger at once; past
# that they are closed at once.
REFUSAL_LINGER_SECONDS = 1.0
MAX_LINGERING_REFUSALS = 64


class _RefusedConnection(asyncio.Protocol):
    """A connection past the cap: a canned 503, then closed."""

    def __init__(self, server: "_CollectorServer"):
        self.server = server
        self.lingering = False
        self._close_later: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        server = self.server
        server.collector.metrics.requests.labels(CONNECTION_CAP_ROUTE, "503").inc()
        server.collector.metrics.connections_shed.labels("refused").inc()
        transport.write(server.refusal)
        if server.lingering_refusals >= MAX_LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer, then the end of it; what the client sends is dropped
        self.lingering = True
        server.lingering_refusals += 1
        self._close_later = asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._close_later is not None:
            self._close_later.cancel()
        if self.lingering:
            self.lingering = False
            self.server.lingering_refusals -= 1


class _CollectorServer(web.Server):
    """aiohttp's Server, with the collector's connections and the connection cap."""

    def __init__(self, handler, *, collector: Collector, loop: asyncio.AbstractEventLoop, max_connections: int,
                 **options):
        super().__init__(handler, loop=loop, **options)
        self.collector = collector
        self.connection_options = {k: v for k, v in options.items()
                                   if k not in ("request_factory", "handler_cancellation")}
        self.connection_loop = loop
        self.max_connections = max_connections
        # Connections made but not yet told to the server (asyncio calls connection_made
        # on the next turn of the loop; a burst of accepts creates many before that), and
        # connections closed to make room that the server still lists until they are gone.
        self._arriving: set[web.RequestHandler] = set()
        self._evicted: set[web.RequestHandler] = set()
        self.lingering_refusals = 0
        self.refusal = self._refusal(collector.settings)
        collector.metrics.connections_open.set_function(self.open_connections)

    @staticmethod
    def _refusal(settings) -> bytes:
        body = json.dumps({"error": "over_capacity", "detail": f"the collector serves at most "
                           f"{settings.max_connections:,} connections at once; try again shortly"}).encode()
        return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {retry_after_header(settings.retry_after)}\r\n"
                f"Access-Control-Allow-Origin: {settings.cors_origin}\r\nConnection: close\r\n\r\n"
                ).encode("latin-1", "replace") + body

    def open_connections(self) -> int:
        return len(self._connections) + len(self._arriving) - len(self._evicted)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        self._evicted.discard(handler)
        super().connection_lost(handler, exc)

    def _make_room(self) -> bool:
        """Close the oldest connection waiting for a request; False if there is none."""
        for connection in self._connections:  # oldest first
            if connection not in self._evicted and _waiting_for_request(connection):
                self._evicted.add(connection)
                connection.force_close()
                self.collector.metrics.connections_shed.labels("idle_closed").inc()
                return True
        return False

    def __call__(self) -> asyncio.Protocol:
        if self.open_connections() >= self.max_connections and not self._make_room():
            return _RefusedConnection(self)
        connection = _CollectorRequestHandler(self, loop=self.connection_loop, **self.connection_options)
        connection.collector = self.collector
        self._arriving.add(connection)
        # runs just before the connection_made asyncio scheduled when it made the transport
        self.connection_loop.call_soon(self._arriving.discard, connection)
        return connection


class CollectorRunner(web.AppRunner):
    """Serves the collector's app: aiohttp's AppRunner with the collector's timeouts and
    connections.

    - idle_timeout: aiohttp closes a connection that has no complete request waiting, from
      when it opens and after each answer: it bounds the time to send the request line and
      headers (slowloris) as well as idle keep-alive. Their size is bounded by aiohttp's
      defaults: lines and header fields of at most 8,190 bytes, at most 128 headers.
    - body_timeout: bounds the body, in the handler (408).
    - no automatic decompression: the handler inflates bodies after the key check, capped.
    - max_connections: open connections; past it, the oldest connection waiting for a
      request is closed, or, when every one has a request under way, the new one gets a
      canned 503 (Retry-After) and is closed. Both are counted.
    """

    def __init__(self, app: web.Application, settings: CollectorSettings):
        self._connection_options = {"keepalive_timeout": settings.idle_timeout, "lingering_time": LINGER_SECONDS,
                                    "auto_decompress": False, "access_log": None}
        super().__init__(app, **self._connection_options)

    async def _make_server(self) -> web.Server:
        # AppRunner's server starts the app; its request handler and factory are kept, and
        # its connections are the collector's.
        made = await super()._make_server()
        collector = self.app[STATE]
        return _CollectorServer(made.request_handler, request_factory=made.request_factory,
                                handler_cancellation=made.handler_cancellation, collector=collector,
                                loop=asyncio.get_running_loop(), max_connections=collector.settings.max_connections,
                                **self._connection_options)


def load_types(rules_dir: Path) -> ActivityTypes:
    """Each tenant's activity schemas, from the same rules the graph runs."""
    from orion.rules import load_rules

    return load_rules(rules_dir).activity_types
