"""The collector's HTTP service (aiohttp): POST /v1/events, GET /healthz, GET /metrics.

POST /v1/events takes one event, a JSON array of events or JSONL, with an API key in
`Authorization: Bearer KEY`, in `X-Orion-Key: KEY` or, for `navigator.sendBeacon` (which
cannot set headers), in the query string `?key=KEY`. In order, a request can be refused
whole with 401 (no key / unknown key), 429 (the key's rate limit; Retry-After), 413 (body
over max_body_bytes, or more than max_batch events), 400 (not UTF-8, not JSON, empty) or
503 (Pub/Sub did not take the events; Retry-After; nothing of it was accepted). Otherwise
the answer lists every event in order, accepted or refused with a reason
(`orion.collector.checking`): 200 when at least one was accepted, 422 when none was.

    python -m orion.collector --topic projects/P/topics/T --keys K.yaml --port 8080
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from orion.activities import ActivityTypes
from orion.collector.checking import UNAVAILABLE, BodyRefused, check_body
from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header
from orion.collector.metrics import CollectorMetrics
from orion.collector.publisher import BatchPublisher, PublishUnavailable

log = logging.getLogger(__name__)

EVENTS_ROUTE = "/v1/events"


@dataclass(frozen=True)
class CollectorSettings:
    max_batch: int = 1000              # events per request
    max_body_bytes: int = 1_000_000    # bytes per request body
    rate_limit: float = 100.0          # requests per second per key; 0: none
    rate_burst: float | None = None    # default: max(1, rate_limit)
    flush_events: int = 1000           # a message is sent when it holds this many events,
    flush_bytes: int = 1_000_000       # or this many bytes,
    flush_seconds: float = 0.05        # or this long after its first event
    max_pending_bytes: int = 64_000_000  # waiting for Pub/Sub; past it: 503
    publish_timeout: float = 10.0      # seconds for Pub/Sub to acknowledge a message
    retry_after: float = 2.0           # seconds, in Retry-After of a 503
    cors_origin: str = "*"             # Access-Control-Allow-Origin for web pages


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
    return web.Response(status=status, headers=headers,
                        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                        content_type="application/json", charset="utf-8")


def _presented_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return request.headers.get("X-Orion-Key") or request.query.get("key") or None


async def post_events(request: web.Request) -> web.Response:
    collector: Collector = request.app[STATE]
    settings = collector.settings
    presented = _presented_key(request)
    if presented is None:
        return _json(401, {"error": "missing_key", "detail": "send the API key as Authorization: Bearer KEY, "
                           "X-Orion-Key: KEY or ?key=KEY"}, {"WWW-Authenticate": 'Bearer realm="orion"'})
    key = collector.keys.verify(presented)
    if key is None:
        return _json(401, {"error": "invalid_key", "detail": "this API key is unknown or revoked"},
                     {"WWW-Authenticate": 'Bearer realm="orion", error="invalid_token"'})
    wait = collector.limiter.take(key.id)
    if wait:
        return _json(429, {"error": "rate_limited",
                           "detail": f"this key may make {settings.rate_limit:g} requests a second"},
                     {"Retry-After": retry_after_header(wait)})
    too_large = _json(413, {"error": "too_large",
                            "detail": f"the body may be at most {settings.max_body_bytes:,} bytes"})
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return too_large
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked bodies are cut off by client_max_size
        return too_large
    if len(body) > settings.max_body_bytes:
        return too_large
    try:
        checked = check_body(body, key.tenant, collector.types, settings.max_batch)
    except BodyRefused as refused:
        return _json(refused.status, {"error": refused.error, "detail": refused.detail})
    metrics = collector.metrics
    for reason in checked.refused_reasons:
        metrics.refused.labels(key.tenant, reason).inc()
    if checked.accepted:
        try:
            await collector.publisher.publish(checked.accepted)
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
    """Liveness: 200 while the process serves; says whether the last publish failed."""
    collector: Collector = request.app[STATE]
    failure = collector.publisher.last_failure
    return _json(200, {"status": "ok", "pubsub": "ok" if failure is None else f"failing: {failure}",
                       "pending_events": collector.publisher.pending_events, "keys": len(collector.keys)})


async def metrics(request: web.Request) -> web.Response:
    collector: Collector = request.app[STATE]
    return web.Response(body=collector.metrics.render(), headers={"Content-Type": collector.metrics.content_type})


@web.middleware
async def count_and_cors(request: web.Request, handler):
    collector: Collector = request.app[STATE]
    try:
        response = await handler(request)
    except web.HTTPException as http_error:  # 404, 405 and the like, raised by aiohttp itself
        response = http_error
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
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[count_and_cors])
    app[STATE] = Collector(keys, types, publisher, settings, metrics_)
    app.router.add_post(EVENTS_ROUTE, post_events)
    app.router.add_route("OPTIONS", EVENTS_ROUTE, preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def load_types(rules_dir: Path) -> ActivityTypes:
    """Each tenant's activity schemas, from the same rules the graph runs."""
    from orion.rules import load_rules

    return load_rules(rules_dir).activity_types
