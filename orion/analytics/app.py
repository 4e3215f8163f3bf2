"""The analytics HTTP API and dashboard (aiohttp), over the roll-up store:

    GET /v1/analytics/timeseries?metric=events&by=type&granularity=minute&from=now-1h&to=now
                                [&where=DIM=VALUE ...][&top=N]
    GET /v1/analytics/topn?metric=fired&by=campaign&from=now-1d&to=now[&top=10][&where=...]
    GET /dashboard                 the dashboard page (charts drawn in the browser with uPlot)
    GET /static/NAME               its script, styles and the vendored uPlot (no CDN at run time)
    GET /healthz

The API takes an API key of the collector's keys file (orion.collector.keys), in
`Authorization: Bearer KEY`, `X-Orion-Key: KEY` or `?key=KEY`: the key's tenant is the
one queried, and a key sees no other tenant. Parameters are the query command's
(orion.analytics.query); `from` and `to` take RFC 3339, epoch ms or now-1h (default: the
last hour), and a time series answers `{"tenant", "metric", "granularity", "from",
"to", "rows": [{"time", DIM..., METRIC}, ...]}` (for unique leads each row has the
estimate's 95% bounds too, and `note` says how exact it is). `topn` is the same query
at granularity `all` with `top` (default 10). Refused: 401 (no key, unknown key), 429
(the key's rate limit; Retry-After), 400 (a parameter that cannot be answered; the
answer says which), 503 (the store did not answer; Retry-After). Bad input is never a
500. Queries run on a small pool of threads, each with its own store connection, so the
event loop never waits on the store.

    orion analytics serve --store sqlite:///orion-data/activities.db --keys orion-data/collector-keys.yaml --port 8090
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from orion.analytics.query import (
    ALL, Query, QueryError, check_query, error_note, metric_of, parse_time, parse_where, run_query,
)
from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header
from orion.collector.redaction import redact
from orion.collector.serving import presented_key, wait_until_stopped

log = logging.getLogger(__name__)

TIMESERIES_ROUTE = "/v1/analytics/timeseries"
TOPN_ROUTE = "/v1/analytics/topn"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# What /static serves: the dashboard's own files and the vendored uPlot with its licence.
STATIC_FILES = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "application/javascript",
    "uPlot.min.css": "text/css",
    "uPlot-LICENSE.txt": "text/plain",
}
DEFAULT_TOP = 10
MAX_PARAMETER_CHARS = 1000


@dataclass(frozen=True)
class AnalyticsSettings:
    rate_limit: float = 20.0  # requests per second per key; 0: none
    query_threads: int = 4
    retry_after: float = 2.0  # seconds, in Retry-After of a 503


STATE = web.AppKey("analytics", object)


class Analytics:
    """What the handlers share: the keys, the store's URI (one store per query thread),
    the rate limiter and the pool queries run on."""

    def __init__(self, keys: KeyStore, store_uri: str, settings: AnalyticsSettings = AnalyticsSettings()):
        self.keys, self.store_uri, self.settings = keys, store_uri, settings
        self.limiter = RateLimiter(settings.rate_limit)
        self.pool = ThreadPoolExecutor(settings.query_threads, thread_name_prefix="orion-analytics")
        self._local = threading.local()
        self._stores: list = []
        self._lock = threading.Lock()

    def _store(self):
        store = getattr(self._local, "store", None)
        if store is None:
            from orion.store.rollups_opening import open_rollup_store

            store = self._local.store = open_rollup_store(self.store_uri)
            with self._lock:
                self._stores.append(store)
        return store

    def query(self, query: Query) -> list[dict]:
        """Runs on a pool thread."""
        return run_query(self._store(), query)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for store in self._stores:
                store.close()
            self._stores.clear()


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    # orjson: a day of minutes by ten values is 14,400 rows, encoded several times faster
    # than by json, and straight to UTF-8 bytes.
    return web.Response(status=status, headers=headers, body=orjson.dumps(body), content_type="application/json",
                        charset="utf-8")


def query_of(tenant: str, params, granularity: str | None = None, top: int | None = None) -> Query:
    """The Query a request's parameters ask for; QueryError naming what is wrong."""
    for name, value in params.items():
        if len(value) > MAX_PARAMETER_CHARS:
            raise QueryError(f"parameter {name} is longer than {MAX_PARAMETER_CHARS} characters")
    metric = params.get("metric")
    if not metric:
        raise QueryError("metric is required, e.g. metric=events")
    by = tuple(name.strip() for name in params.get("by", "").split(",") if name.strip())
    start = parse_time(params.get("from", "now-1h"))
    end = parse_time(params.get("to", "now"))
    top_text = params.get("top")
    if top_text is not None:
        try:
            top = int(top_text)
        except ValueError:
            raise QueryError(f"top must be a whole number, not {top_text!r}") from None
    return Query(tenant, metric, by, granularity or params.get("granularity", "minute"), start, end,
                 parse_where(params.getall("where", [])), top)


async def _answer(request: web.Request, granularity: str | None = None, top: int | None = None) -> web.Response:
    analytics: Analytics = request.app[STATE]
    presented = presented_key(request)
    if presented is None:
        return _json(401, {"error": "missing_key", "detail": "send an API key as Authorization: Bearer KEY, "
                                                             "X-Orion-Key: KEY or ?key=KEY"})
    key = analytics.keys.verify(presented)
    if key is None:
        return _json(401, {"error": "unknown_key", "detail": "the API key is not known (revoked?)"})
    wait = analytics.limiter.take(key.id)
    if wait > 0:
        return _json(429, {"error": "rate_limited", "detail": "too many requests for this key"},
                     {"Retry-After": retry_after_header(wait)})
    try:
        query = check_query(query_of(key.tenant, request.query, granularity, top))
    except QueryError as err:
        return _json(400, {"error": "bad_query", "detail": str(err)})
    from orion.store.base import StoreError

    try:
        rows = await asyncio.get_running_loop().run_in_executor(analytics.pool, analytics.query, query)
    except QueryError as err:
        return _json(400, {"error": "bad_query", "detail": str(err)})
    except StoreError as err:
        log.warning("analytics query failed: %s", redact(str(err)))
        return _json(503, {"error": "store_unavailable", "detail": "the roll-up store did not answer"},
                     {"Retry-After": retry_after_header(analytics.settings.retry_after)})
    from orion.activities import format_timestamp

    body = {"tenant": key.tenant, "metric": query.metric, "by": list(query.by), "granularity": query.granularity,
            "from": format_timestamp(query.start), "to": format_timestamp(query.end), "rows": rows}
    if query.where:
        body["where"] = query.where
    if metric_of(query.metric).estimated:
        body["note"] = error_note()
    return _json(200, body)


async def timeseries(request: web.Request) -> web.Response:
    return await _answer(request)


async def topn(request: web.Request) -> web.Response:
    return await _answer(request, granularity=ALL, top=DEFAULT_TOP)


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=(STATIC_DIR / "dashboard.html").read_text(encoding="utf-8"), content_type="text/html",
                        charset="utf-8", headers={"Cache-Control": "no-store"})


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return _json(404, {"error": "not_found", "detail": f"no static file {name!r}"})
    return web.Response(body=(STATIC_DIR / name).read_bytes(), content_type=content_type,
                        charset="utf-8", headers={"Cache-Control": "max-age=3600"})


async def healthz(request: web.Request) -> web.Response:
    analytics: Analytics = request.app[STATE]
    return _json(200, {"status": "ok", "keys": len(analytics.keys)})


@web.middleware
async def no_500s(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as err:  # noqa: BLE001 - a fault of ours: answered and logged, keys cut out
        log.error("%s %s failed: %s", request.method, redact(request.path_qs), redact(f"{type(err).__name__}: {err}"),
                  exc_info=err)
        return _json(500, {"error": "internal", "detail": "the analytics service failed on this request; it is logged"})


def build_app(analytics: Analytics) -> web.Application:
    app = web.Application(middlewares=[no_500s])
    app[STATE] = analytics
    app.router.add_get(TIMESERIES_ROUTE, timeseries)
    app.router.add_get(TOPN_ROUTE, topn)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/healthz", healthz)
    return app


async def run_server(analytics: Analytics, host: str, port: int, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set). `ready(port)` is called once listening."""

    runner = web.AppRunner(build_app(analytics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"orion analytics: listening on http://{host}:{bound}/dashboard and {TIMESERIES_ROUTE}, {TOPN_ROUTE}; "
          f"store {redact(analytics.store_uri)}; {len(analytics.keys)} key(s)", flush=True)
    if ready is not None:
        ready(bound)
    try:
        await wait_until_stopped(stop)
    finally:
        await runner.cleanup()
        analytics.close()


def serve(store_uri: str, keys_path, host: str, port: int, settings: AnalyticsSettings = AnalyticsSettings()) -> int:
    """`orion analytics serve`: exit code."""
    import sys

    from orion.collector.keys import KeysFileError
    from orion.store.base import StoreError
    from orion.store.rollups_opening import open_rollup_store

    try:
        keys = KeyStore(keys_path)
    except KeysFileError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    if not len(keys):
        print(f"orion: no API keys in {keys_path}; create one with: "
              f"orion collect keys add --tenant TENANT --keys {keys_path}", file=sys.stderr)
        return 2
    try:
        with open_rollup_store(store_uri) as store:
            store.init()
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_server(Analytics(keys, store_uri, settings), host, port))
    except KeyboardInterrupt:
        pass
    return 0
