"""The analytics HTTP API and dashboard (aiohttp), over the roll-up store:

    GET /v1/analytics/timeseries?metric=events&by=type&granularity=minute&from=now-1h&to=now
                                [&where=DIM=VALUE ...][&top=N]
    GET /v1/analytics/topn?metric=fired&by=campaign&from=now-1d&to=now[&top=10][&where=...]
    GET /v1/analytics/experiments?tenant=T[&experience=NAME ...][&goal=TYPE][&days=N][&since=T][&until=T]
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

`experiments` answers orion.decisions.experiments.experiment_report for the key's tenant
(`tenant`, when given, must be it: 403 otherwise), over the experiences of the rules
directory loaded at start, as JSON: `{"tenant", "experiences": [{"experience",
"placement", "goal", "first_impression", "arms": [...]}]}`. `experience` (repeatable),
`goal`, `days`, `since` and `until` are the command's --experience, --goal, --days,
--since and --until (a period's cohort; `since=now-7d` is kept as asked for the cache,
so an answer is up to its age late). The report reads
every impression of the tenant from the activity store (the same URI as the roll-ups),
so each answer is kept for `experiments_cache_seconds` (30 s) from when it was made
(its age in the Age header), and requests for a report being made wait for that one.

    orion analytics serve --store sqlite:///orion-data/activities.db --keys orion-data/collector-keys.yaml --port 8090
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
EXPERIMENTS_ROUTE = "/v1/analytics/experiments"
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
MAX_REPORT_DAYS = 3650  # a conversion window of ten years is already more than any campaign runs


@dataclass(frozen=True)
class AnalyticsSettings:
    rate_limit: float = 20.0  # requests per second per key; 0: none
    query_threads: int = 4
    retry_after: float = 2.0  # seconds, in Retry-After of a 503
    # An experiments report scans all of a tenant's impressions: a dashboard refreshed, or
    # opened by several people, reads the report made in the last 30 s instead.
    experiments_cache_seconds: float = 30.0
    experiments_cache_entries: int = 256  # reports kept (tenant, experiences, goal, days, period), oldest dropped


@dataclass(frozen=True)
class ExperimentRules:
    """What the experiments report needs of the rules, loaded once at start
    (`load_experiment_rules`): each tenant's experiences, the activity types a `goal`
    may name, and the tenants whose rules did not load, with their errors."""

    directory: str = ""
    experiences: dict = field(default_factory=dict)  # tenant -> orion.rules.model.TenantExperiences
    activity_types: object = None  # orion.activities.ActivityTypes
    refused: dict = field(default_factory=dict)  # tenant -> [RuleError]


def load_experiment_rules(directory) -> ExperimentRules:
    """The experiences of a rules directory; orion.rules.RuleErrors when none of it loads."""
    from orion.rules.compiler import load_experiences

    rules, experiences, refused = load_experiences(directory)
    return ExperimentRules(str(directory), experiences, rules.activity_types, refused)


STATE = web.AppKey("analytics", object)


class Analytics:
    """What the handlers share: the keys, the store's URI (one roll-up store and one
    activity store per query thread), the rate limiter, the pool queries run on, the
    experiences and the experiments reports made lately. `clock` (seconds) ages the
    reports; tests pass their own."""

    def __init__(self, keys: KeyStore, store_uri: str, settings: AnalyticsSettings = AnalyticsSettings(),
                 experiments: ExperimentRules = ExperimentRules(), clock: Callable[[], float] = time.monotonic):
        self.keys, self.store_uri, self.settings = keys, store_uri, settings
        self.experiments = experiments
        self.limiter = RateLimiter(settings.rate_limit)
        self.pool = ThreadPoolExecutor(settings.query_threads, thread_name_prefix="orion-analytics")
        self.reports = RecentReports(settings.experiments_cache_seconds, settings.experiments_cache_entries, clock)
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

    def _activity_store(self):
        store = getattr(self._local, "activities", None)
        if store is None:
            from orion.store import open_store

            store = self._local.activities = open_store(self.store_uri)
            with self._lock:
                self._stores.append(store)
        return store

    def _forget_activity_store(self) -> None:
        """After a failed read: a connection the driver broke is not reused, the next
        report on this thread opens a new one."""
        store = getattr(self._local, "activities", None)
        self._local.activities = None
        if store is not None:
            with self._lock:
                if store in self._stores:
                    self._stores.remove(store)
            try:
                store.close()
            except Exception as err:  # noqa: BLE001 - closing what already failed; the read's error is the one told
                log.debug("closing the activity store after a failed report: %s", redact(str(err)))

    def experiment_report(self, tenant: str, only: tuple[str, ...], goal: str | None, days: int | None,
                          since: int | None = None, until: int | None = None) -> dict:
        """Runs on a pool thread. The store's own failures (and its driver's, which the
        whole-tenant read of orion.decisions.experiments does not wrap) become StoreError."""
        from orion.decisions.experiments import experiment_report
        from orion.store.base import StoreError

        try:
            return experiment_report(self._activity_store(), self.experiments.experiences[tenant], only=only,
                                     goal_type=goal, days=days, since=since, until=until)
        except store_failures() as err:
            self._forget_activity_store()
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for store in self._stores:
                store.close()
            self._stores.clear()


class RecentReports:
    """Experiments reports made in the last `seconds`, by what they were asked for (at
    most `entries`, the oldest dropped first). A report asked for while it is being made
    is not made twice: the second request waits for the first one's. A report that
    failed is not kept."""

    def __init__(self, seconds: float, entries: int, clock: Callable[[], float]):
        self.seconds, self.entries, self.clock = seconds, entries, clock
        self._found: OrderedDict[tuple, tuple[float | None, asyncio.Future]] = OrderedDict()

    async def get(self, key: tuple, make: Callable[[], asyncio.Future]) -> tuple[dict, float]:
        """(the report, its age in seconds): a recent one, or one `make()` makes."""
        entry = self._found.get(key)
        if entry is not None and (entry[0] is None or self.clock() - entry[0] < self.seconds):
            made = entry[1]
        else:
            made = asyncio.ensure_future(make())
            self._found[key] = (None, made)
            self._found.move_to_end(key)
            made.add_done_callback(lambda done: self._settled(key, done))
            while len(self._found) > self.entries:
                self._found.popitem(last=False)
        # shield: a request that goes away does not cancel a report others wait for
        report = await asyncio.shield(made)
        made_at = self._found.get(key, (None, None))[0]
        return report, 0.0 if made_at is None else max(0.0, self.clock() - made_at)

    def _settled(self, key: tuple, done: asyncio.Future) -> None:
        entry = self._found.get(key)
        if entry is None or entry[1] is not done:
            return  # dropped meanwhile, or replaced
        if done.cancelled() or done.exception() is not None:
            del self._found[key]
        else:
            self._found[key] = (self.clock(), done)


def store_failures() -> tuple[type[BaseException], ...]:
    """What a store read may raise that is the store's failure, not a fault of ours."""
    from orion.store.base import StoreError

    found: list[type[BaseException]] = [StoreError, sqlite3.Error, OSError]
    try:
        import pymysql

        found.append(pymysql.err.Error)
    except ImportError:
        pass
    try:
        from google.api_core.exceptions import GoogleAPIError

        found.append(GoogleAPIError)
    except ImportError:
        pass
    return tuple(found)


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    # orjson: a day of minutes by ten values is 14,400 rows, encoded several times faster
    # than by json, and straight to UTF-8 bytes.
    return web.Response(status=status, headers=headers, body=orjson.dumps(body), content_type="application/json",
                        charset="utf-8")


_ONCE = ("metric", "by", "from", "to", "top", "granularity")  # (where may be given for several dimensions)


def query_of(tenant: str, params, granularity: str | None = None, top: int | None = None) -> Query:
    """The Query a request's parameters ask for; QueryError naming what is wrong."""
    for name, value in params.items():
        if len(value) > MAX_PARAMETER_CHARS:
            raise QueryError(f"parameter {name} is longer than {MAX_PARAMETER_CHARS} characters")
    for name in _ONCE:
        if len(params.getall(name, ())) > 1:
            raise QueryError(f"parameter {name} is given more than once; give it once")
    asked = params.get("granularity")
    if granularity is not None and asked is not None and asked != granularity:
        raise QueryError(f"topn ranks over the whole range (granularity {granularity}); leave granularity out, "
                         "or ask timeseries for a granularity")
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


def _authorized(request: web.Request):
    """(the request's key, None), or (None, the answer refusing it: 401 or 429)."""
    analytics: Analytics = request.app[STATE]
    presented = presented_key(request)
    if presented is None:
        return None, _json(401, {"error": "missing_key", "detail": "send an API key as Authorization: Bearer KEY, "
                                                                   "X-Orion-Key: KEY or ?key=KEY"})
    key = analytics.keys.verify(presented)
    if key is None:
        return None, _json(401, {"error": "unknown_key", "detail": "the API key is not known (revoked?)"})
    wait = analytics.limiter.take(key.id)
    if wait > 0:
        return None, _json(429, {"error": "rate_limited", "detail": "too many requests for this key"},
                           {"Retry-After": retry_after_header(wait)})
    return key, None


async def _answer(request: web.Request, granularity: str | None = None, top: int | None = None) -> web.Response:
    analytics: Analytics = request.app[STATE]
    key, refused = _authorized(request)
    if refused is not None:
        return refused
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


def report_request_of(tenant: str, params, rules: ExperimentRules) -> tuple[tuple[str, ...], str | None, int | None]:
    """(experiences, goal, days) a request for `tenant`'s report asks for; QueryError
    naming what is wrong."""
    for name, value in params.items():
        if len(value) > MAX_PARAMETER_CHARS:
            raise QueryError(f"parameter {name} is longer than {MAX_PARAMETER_CHARS} characters")
    known = rules.experiences[tenant].by_name
    only = tuple(dict.fromkeys(params.getall("experience", [])))  # each once, in the order asked
    unknown = [name for name in only if name not in known]
    if unknown:
        raise QueryError(f"tenant {tenant!r} has no experience {unknown[0]!r} (it has: {', '.join(sorted(known))})")
    goal = params.get("goal") or None
    if goal is not None and (rules.activity_types is None or rules.activity_types.lookup(tenant, goal) is None):
        names = rules.activity_types.names(tenant) if rules.activity_types is not None else []
        raise QueryError(f"goal {goal!r} is not an activity type of tenant {tenant!r}; it has: {', '.join(names)}")
    days_text = params.get("days")
    days = None
    if days_text is not None:
        try:
            days = int(days_text)
        except ValueError:
            raise QueryError(f"days must be a whole number of days, not {days_text!r}") from None
        if not 1 <= days <= MAX_REPORT_DAYS:
            raise QueryError(f"days must be from 1 to {MAX_REPORT_DAYS}, not {days}")
    return only, goal, days


def report_period_of(params) -> tuple[tuple[str | None, str | None], int | None, int | None]:
    """((since, until) as asked, since ms, until ms) of a report request; QueryError for
    a time that does not read (RFC 3339, epoch ms, now-7d)."""
    asked = (params.get("since") or None, params.get("until") or None)
    since, until = (None if text is None else parse_time(text) for text in asked)
    return asked, since, until


async def experiments(request: web.Request) -> web.Response:
    analytics: Analytics = request.app[STATE]
    key, refused = _authorized(request)
    if refused is not None:
        return refused
    asked = request.query.get("tenant")
    if asked is not None and asked != key.tenant:
        return _json(403, {"error": "forbidden", "detail": f"this key reads tenant {key.tenant!r} only"})
    rules = analytics.experiments
    tenant = key.tenant
    if tenant in rules.refused:
        # The rules were refused at start; asking again will not help until they are fixed
        # and the server restarted, so no Retry-After.
        return _json(503, {"error": "rules_refused", "detail": f"tenant {tenant!r}: its rules have "
                           f"{len(rules.refused[tenant])} error(s), so it has no experiments report until they are "
                           "fixed and the server restarted; orion rules validate lists them"})
    if tenant not in rules.experiences or not rules.experiences[tenant].by_name:
        return _json(200, {"tenant": tenant, "experiences": []})
    try:
        only, goal, days = report_request_of(tenant, request.query, rules)
        period, since, until = report_period_of(request.query)
    except QueryError as err:
        return _json(400, {"error": "bad_query", "detail": str(err)})
    from orion.decisions.experiments import ReportError
    from orion.store.base import StoreError

    loop = asyncio.get_running_loop()
    try:
        report, age = await analytics.reports.get(
            (tenant, only, goal, days, period),
            lambda: loop.run_in_executor(analytics.pool, analytics.experiment_report, tenant, only, goal, days,
                                         since, until))
    except ReportError as err:
        return _json(400, {"error": "bad_query", "detail": str(err)})
    except StoreError as err:
        log.warning("experiments report failed: %s", redact(str(err)))
        return _json(503, {"error": "store_unavailable", "detail": "the activity store did not answer"},
                     {"Retry-After": retry_after_header(analytics.settings.retry_after)})
    return _json(200, report, {"Age": str(int(age))})


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
    app.router.add_get(EXPERIMENTS_ROUTE, experiments)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/healthz", healthz)
    return app


async def run_server(analytics: Analytics, host: str, port: int, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set). `ready(port)` is called once listening."""

    from orion.collector.redaction import install_log_redaction
    from orion.collector.serving import JsonErrorsRunner

    install_log_redaction()  # keys in a logged URL or error are cut out
    runner = JsonErrorsRunner(build_app(analytics), access_log=None)  # every error answered in JSON
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    count = sum(len(found.by_name) for found in analytics.experiments.experiences.values())
    print(f"orion analytics: listening on http://{host}:{bound}/dashboard and {TIMESERIES_ROUTE}, {TOPN_ROUTE}, "
          f"{EXPERIMENTS_ROUTE}; store {redact(analytics.store_uri)}; {len(analytics.keys)} key(s); "
          f"{count} experience(s)", flush=True)
    if ready is not None:
        ready(bound)
    try:
        await wait_until_stopped(stop)
    finally:
        await runner.cleanup()
        analytics.close()


def serve(store_uri: str, keys_path, host: str, port: int, settings: AnalyticsSettings = AnalyticsSettings(),
          rules_dir=None) -> int:
    """`orion analytics serve`: exit code. `rules_dir`: the experiences of the
    experiments report (default: the shipped samples)."""
    import sys

    from orion.collector.keys import KeysFileError
    from orion.rules import RuleErrors
    from orion.settings import SAMPLE_RULES
    from orion.store import open_store
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
    rules_dir = SAMPLE_RULES if rules_dir is None else rules_dir
    try:
        experiment_rules = load_experiment_rules(rules_dir)
    except RuleErrors as errors:
        print(f"orion: the rules in {rules_dir} have {len(errors.errors)} error(s):", file=sys.stderr)
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    for tenant, errors in experiment_rules.refused.items():
        print(f"orion: tenant {tenant!r}: its rules have {len(errors)} error(s), so it gets no experiments "
              "report until they are fixed:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
    try:
        with open_rollup_store(store_uri) as store:
            store.init()
        activities = open_store(store_uri)  # the experiments report reads the activities
        try:
            activities.init()
        finally:
            activities.close()
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    analytics = Analytics(keys, store_uri, settings, experiment_rules)
    # What is loaded now (the rules, the keys, the modules) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it while a query waits
    # (as `orion decide serve` does).
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(run_server(analytics, host, port))
    except KeyboardInterrupt:
        pass
    return 0
