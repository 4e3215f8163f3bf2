"""The decision service's HTTP app (aiohttp): POST /v1/decide, GET /healthz, GET /metrics.

POST /v1/decide takes `{"lead_id": ..., "placements": [...], "context": {...}}` with
an API key of the collector's keys file (`Authorization: Bearer KEY`, `X-Orion-Key`
or `?key=`; the key's tenant is the tenant decided for) and answers, per placement, the
experience, the variant and the content (orion.decisions.core). In order, a request can
be refused whole with 401 (no key, unknown key), 429 (the key's rate limit;
Retry-After), 413 (body over max_body_bytes), 408 (the body took longer than
body_timeout), 400 (not JSON, a missing or malformed field, a malformed context: the
answer names the field) or 503 (the store did not answer; Retry-After). Otherwise it is
200 with a decision for every placement, or 422 when no placement asked for is one of
the tenant's (each then says `unknown_placement`). A lead without a profile is decided
for as an anonymous visitor (`"lead": "unknown"`). Bad input is never a 500.

Each decision with an experience (the control group's too) is recorded as an
`experience_impression` activity through the normal intake: published to the
collector's topic by the collector's BatchPublisher, many per message, for the graph's
ParseActivities. Its shape is fixed, so it is checked once, when the service starts, the
way the collector checks an event (orion.collector.checking), for every tenant. The
answer does not wait for Pub/Sub: impressions are handed to the publisher together
every `impression_flush_seconds`; one Pub/Sub does not take is counted
(`orion_decide_impressions{result="failed"}`) and logged, and /healthz says publishing
fails; past max_pending_bytes waiting, impressions are refused and counted the same way,
so a Pub/Sub outage costs memory up to that bound and no latency.

    orion decide serve --port 8081 --keys orion-data/collector-keys.yaml \\
        --store sqlite:///orion-data/activities.db --topic projects/P/topics/activities
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from orion.activities import ActivityTypes
from orion.collector.checking import check_event
from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header
from orion.collector.publisher import BatchPublisher, PublishUnavailable
from orion.collector.redaction import redact
from orion.collector.serving import authorize
from orion.decisions.core import (UNKNOWN_PLACEMENT, ContextError, PlacementIndexes, SnippetRenderer, decide,
                                  parse_context)
from orion.decisions.leads import LeadReader
from orion.decisions.settings import DecideSettings
from orion.rules.model import EXPERIENCE_IMPRESSION
from orion.store.base import StoreError

log = logging.getLogger(__name__)

DECIDE_ROUTE = "/v1/decide"
BODY_FIELDS = ("lead_id", "placements", "context")
_BODY_FIELD_SET = frozenset(BODY_FIELDS)
MAX_LEAD_ID_CHARS = 255  # what every store's lead id column holds
MAX_PLACEMENT_CHARS = 200
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class CountsByLabel:
    """A Prometheus counter by label values, kept as plain numbers. Only the event loop
    adds to it, so it takes no lock (prometheus_client's counters take one on every
    increment, and a decision makes several); /metrics reads it as a counter family."""

    __slots__ = ("name", "documentation", "labels", "values")

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]):
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class LatencyHistogram:
    """A Prometheus histogram of seconds, kept as plain numbers (as CountsByLabel)."""

    __slots__ = ("name", "documentation", "bounds", "counts", "total")

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]):
        self.name, self.documentation, self.bounds = name, documentation, tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, the last one past every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound is in that bound's bucket (le, "at most")
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            buckets.append((floatToGoString(bound), running))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.total)


class DecideMetrics:
    """The service's Prometheus metrics, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.requests = CountsByLabel("orion_decide_requests", "Requests answered, by route and status",
                                      ("route", "status"))
        self.decisions = CountsByLabel("orion_decide_decisions", "Placements answered, by tenant and outcome "
                                       "(variant, control, no_match, unknown_placement, content_failed)",
                                       ("tenant", "outcome"))
        self.impressions = CountsByLabel("orion_decide_impressions", "Impression activities, by result "
                                         "(published, failed)", ("result",))
        self.lead_reads = CountsByLabel("orion_decide_lead_reads", "Lead look-ups, by where answered (cache, store)",
                                        ("source",))
        self.seconds = LatencyHistogram("orion_decide_seconds", "Time to decide, from the body read to the answer",
                                        LATENCY_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def collect(self):
        for metric in (self.requests, self.decisions, self.impressions, self.lead_reads, self.seconds):
            yield metric.family()

    def render(self) -> bytes:
        return generate_latest(self.registry)


STATE = web.AppKey("decider", object)
_FROM_CACHE, _FROM_STORE, _PUBLISHED, _FAILED = ("cache",), ("store",), ("published",), ("failed",)
_CONTROL, _VARIANT = "control", "variant"


class Decider:
    """What the handlers share: keys, experiences, the lead reader, the snippet renderer,
    the impression publisher, settings, metrics and the clock (epoch ms)."""

    def __init__(self, keys: KeyStore, experiences: dict, types: ActivityTypes, reader: LeadReader,
                 publisher: BatchPublisher, settings: DecideSettings, metrics: DecideMetrics | None = None,
                 clock=lambda: int(time.time() * 1000)):
        self.keys, self.experiences, self.types, self.reader = keys, experiences, types, reader
        self.publisher, self.settings = publisher, settings
        self.metrics = metrics or DecideMetrics()
        self.clock = clock
        self.renderer = SnippetRenderer()
        self.indexes = PlacementIndexes()
        self.encoder = DecisionEncoder()
        # the headers of every decision's answer, copied for each
        self.answer_headers = CIMultiDict({"Content-Type": JSON_TYPE,
                                           "Access-Control-Allow-Origin": settings.cors_origin})
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        # SQLite answers from a local file in microseconds, on the event loop; a networked
        # store's client blocks for a round trip, so it gets a thread of its own (one: its
        # connection is not shared between threads).
        self.inline_reads = type(reader.store).__name__ == "SqliteStore"
        self.executor = None if self.inline_reads else ThreadPoolExecutor(1, thread_name_prefix="orion-decide-store")
        self._publishing: set[asyncio.Task] = set()
        self._waiting: list[bytes] = []  # impressions not yet handed to the publisher
        self._handover: asyncio.TimerHandle | None = None
        self.impression_failure: str | None = None
        for tenant, found in experiences.items():
            if found.by_name:  # a tenant without experiences records no impression
                check_impression(tenant, types)

    async def lead(self, tenant: str, lead_id: str, counters, now: int):
        found = self.cached_lead(tenant, lead_id)
        if found is not None:
            return found
        self.metrics.lead_reads.inc(_FROM_STORE)
        if self.inline_reads:
            return self.reader.read(tenant, lead_id, counters, now, lazy_history=True)
        # A store that does not answer (a hung MySQL, Bigtable retrying) costs a request
        # store_timeout at most, then a 503; the reads queued behind it on the store's
        # thread are bounded the same way.
        timeout = self.settings.store_timeout
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.reader.read, tenant, lead_id, counters, now)
        except TimeoutError:
            raise StoreError(f"the store did not read lead {lead_id[:80]!r} within {timeout:g} s "
                             "(--store-timeout)") from None

    def cached_lead(self, tenant: str, lead_id: str):
        """The lead's view from the cache, or None (then `lead` reads it)."""
        found = self.reader.cached(tenant, lead_id)
        if found is not None:
            self.metrics.lead_reads.inc(_FROM_CACHE)
        return found

    def queue(self, encoded: bytes) -> None:
        """Queue one encoded impression (see `impression`) for the publisher, without
        waiting for Pub/Sub."""
        waiting = self._waiting
        waiting.append(encoded)
        if len(waiting) >= self.settings.flush_events:
            self._hand_over()
        elif self._handover is None:
            self._handover = asyncio.get_running_loop().call_later(self.settings.impression_flush_seconds,
                                                                   self._hand_over)

    def _hand_over(self) -> None:
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        encoded, self._waiting = self._waiting, []
        if encoded:
            task = asyncio.get_running_loop().create_task(self._publish(encoded))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish(self, encoded: list[bytes]) -> None:
        try:
            await self.publisher.publish(encoded)
        except PublishUnavailable as unavailable:
            self.metrics.impressions.inc(_FAILED, len(encoded))
            if self.impression_failure != unavailable.detail:
                log.warning("impressions not published: %s", unavailable.detail)
            self.impression_failure = unavailable.detail
            return
        self.impression_failure = None
        self.metrics.impressions.inc(_PUBLISHED, len(encoded))

    async def drain(self) -> None:
        """Hand over the impressions that wait, wait for every one handed to the
        publisher, then send what the publisher holds."""
        self._hand_over()
        while self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)
        await self.publisher.close()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.reader.close()


# Impression ids: a random prefix per process and a count, unique without a uuid each.
_IMPRESSION_PREFIX = f"imp-{uuid.uuid4().hex[:16]}-"
_impression_numbers = itertools.count(1)


def impression(tenant: str, lead_id: str, decision, url, now: int) -> dict:
    """The experience_impression activity of one decision."""
    attributes = {"experience": decision.experience, "variant": decision.variant,
                  "placement": decision.placement, "control": decision.control}
    if isinstance(url, str):
        attributes["url"] = url
    return {"event_id": f"{_IMPRESSION_PREFIX}{next(_impression_numbers)}", "tenant": tenant, "lead_id": lead_id,
            "type": EXPERIENCE_IMPRESSION, "occurred_at": now, "attributes": attributes}


class EncodedDecision(NamedTuple):
    """What the answer and the impression of a decision with an experience hold that is
    the same for every lead, encoded once: the decision's JSON in the answer (whole for
    JSON content or none, `content` then the arm's content it was made for; up to the
    content for HTML, which differs by lead, `content` then _EACH_LEADS), the
    impression's attributes up to the url, and the decision's labels in
    orion_decide_decisions."""

    content: Any
    answer: bytes
    attributes: bytes
    labels: tuple[str, str]


_HTML = "html"
_EACH_LEADS = object()  # the content of an EncodedDecision for HTML: each lead's own
_EVENT_ID_START = b'{"event_id":"' + _IMPRESSION_PREFIX.encode("ascii")
_IMPRESSION_TYPE = orjson.dumps(EXPERIENCE_IMPRESSION)


class DecisionEncoder:
    """Encodes answers and impressions as orjson would encode them as dicts (`answer_part`,
    `impression`), from the parts of each (tenant, placement, experience, arm) encoded
    once (EncodedDecision), kept for at most `entries` of them; past it they are encoded
    again. The bytes are those orjson.dumps makes of the dicts (text that is not valid
    Unicode, which orjson refuses, is written with \\uXXXX escapes instead)."""

    def __init__(self, entries: int = 65_536):
        self.entries = entries
        self._encoded: dict[tuple, EncodedDecision] = {}
        self._by_decision: dict[int, tuple[Any, EncodedDecision]] = {}

    def encoded(self, tenant: str, decision) -> EncodedDecision:
        """The parts of a decision with an experience (its `error` None)."""
        same = self._by_decision.get(id(decision))
        if same is not None and same[0] is decision and same[1].labels[0] == tenant:
            return same[1]
        key = (tenant, decision.placement, decision.experience, decision.variant)
        found = self._encoded.get(key)
        made_for = _EACH_LEADS if decision.content_type == _HTML else decision.content
        if found is None or found.content is not made_for:
            found = self._encode(tenant, decision)
            if len(self._encoded) >= self.entries:
                self._encoded.clear()
            self._encoded[key] = found
        if decision.content_type != _HTML:
            # core.decide answers the same Decision for every lead an arm without a snippet
            # is chosen for: kept by its id, with it (so the id names no other decision)
            if len(self._by_decision) >= self.entries:
                self._by_decision.clear()
            self._by_decision[id(decision)] = (decision, found)
        return found

    @staticmethod
    def _encode(tenant: str, decision) -> EncodedDecision:
        html = decision.content_type == _HTML
        if html:  # the answer's last field, the content, follows
            head = {name: value for name, value in decision.to_json_dict().items() if name != "content"}
            answer = _dumps(head)[:-1] + b',"content":'
        else:
            answer = _dumps(decision.to_json_dict())
        attributes = _dumps({"experience": decision.experience, "variant": decision.variant,
                             "placement": decision.placement, "control": decision.control})[:-1]
        return EncodedDecision(_EACH_LEADS if html else decision.content, answer, attributes,
                               (tenant, _CONTROL if decision.control else _VARIANT))

    @staticmethod
    def answer_part(encoded: EncodedDecision, decision) -> bytes:
        """The decision's JSON in the answer."""
        if decision.content_type == _HTML:
            return encoded.answer + _dumps(decision.content) + b"}"
        return encoded.answer

    @staticmethod
    def impression_lead(tenant: str, lead_id: str, now: int) -> bytes:
        """What every impression of one request holds after its event id, up to its
        attributes."""
        return (b'","tenant":' + orjson.dumps(tenant) + b',"lead_id":' + orjson.dumps(lead_id) + b',"type":'
                + _IMPRESSION_TYPE + b',"occurred_at":' + orjson.dumps(now) + b',"attributes":')

    @staticmethod
    def impression_end(url) -> bytes:
        """What every impression of one request ends with: the url, if the context has one."""
        return b',"url":' + orjson.dumps(url) + b"}}" if isinstance(url, str) else b"}}"

    @staticmethod
    def impression(lead: bytes, encoded: EncodedDecision, end: bytes) -> bytes:
        """The encoded experience_impression activity of one decision: what
        orjson.dumps(impression(...)) gives, with the next impression id."""
        return b"".join((_EVENT_ID_START, str(next(_impression_numbers)).encode(), lead, encoded.attributes, end))


def check_impression(tenant: str, types: ActivityTypes) -> None:
    """ValueError unless an impression of `tenant` passes the collector's check of an
    event against the tenant's activity types (the rules give every tenant with
    experiences the type), so the graph's intake takes every impression published."""
    from orion.decisions.core import Decision

    sample = impression(tenant, "lead", Decision("placement", "experience", "variant"), "https://x.example/", 0)
    encoded, reason, detail = check_event(sample, tenant, types)
    if encoded is None:
        raise ValueError(f"impressions of tenant {tenant!r} would not pass the intake ({reason}: {detail}); "
                         "are its rules loaded?")


class BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


JSON_TYPE = "application/json; charset=utf-8"


def _dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # text that is not valid Unicode: sent as \\uXXXX escapes
        return json.dumps(value).encode("ascii")


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    headers = {"Content-Type": JSON_TYPE} if headers is None else {"Content-Type": JSON_TYPE, **headers}
    return web.Response(status=status, headers=headers, body=_dumps(body))


def _too_large(settings: DecideSettings) -> BadRequest:
    return BadRequest(413, "too_large", f"the body may be at most {settings.max_body_bytes:,} bytes")


async def _read_body(request: web.Request, settings: DecideSettings) -> bytes:
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise _too_large(settings)
    try:
        # asyncio.timeout, not wait_for: no task of its own for every request's body
        async with asyncio.timeout(settings.body_timeout):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(settings) from None
    except asyncio.TimeoutError:
        raise BadRequest(408, "body_timeout", f"the body did not arrive within {settings.body_timeout:g} s") from None
    except (ConnectionError, web.RequestPayloadError) as err:
        raise BadRequest(400, "bad_body", f"the body could not be read: {type(err).__name__}") from None
    if len(body) > settings.max_body_bytes:
        raise _too_large(settings)
    return body


def parse_request(body: bytes, max_placements: int) -> tuple[str, list[str], dict]:
    """A request body -> (lead id, placements, raw context); BadRequest(400) naming the
    field for anything else."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(400, "malformed_json", f"the body is not JSON: {str(err)[:200]}") from None
    if not isinstance(request, dict):
        raise BadRequest(400, "malformed_json", 'the body must be a JSON object: {"lead_id": ..., '
                         '"placements": [...], "context": {...}}')
    if not request.keys() <= _BODY_FIELD_SET:
        unknown = [key for key in request if key not in BODY_FIELDS]
        raise BadRequest(400, "bad_field", f"unknown field {str(unknown[0])[:80]!r}; the body holds "
                         f"{', '.join(BODY_FIELDS)}")
    lead_id = request.get("lead_id")
    if lead_id is None:
        raise BadRequest(400, "missing_field", "lead_id is required: the lead's id, or the anonymous "
                         "visitor's (a cookie id)")
    if lead_id.__class__ is not str:
        if isinstance(lead_id, bool) or not isinstance(lead_id, (str, int)):
            raise BadRequest(400, "bad_field", "lead_id must be text or a whole number")
        lead_id = str(lead_id)
    if not lead_id or len(lead_id) > MAX_LEAD_ID_CHARS:
        raise BadRequest(400, "bad_field", f"lead_id must have 1 to {MAX_LEAD_ID_CHARS} characters")
    placements = request.get("placements")
    if placements is None:
        raise BadRequest(400, "missing_field", "placements is required: a list of placement names, "
                         'like ["home_hero"]')
    if not isinstance(placements, list) or not placements:
        raise BadRequest(400, "bad_field", "placements must be a non-empty list of placement names")
    if len(placements) > max_placements:
        raise BadRequest(400, "bad_field", f"{len(placements)} placements in one request; at most {max_placements}")
    for placement in placements:
        if not isinstance(placement, str) or not placement or len(placement) > MAX_PLACEMENT_CHARS:
            raise BadRequest(400, "bad_field", f"each placement must be a name of 1 to {MAX_PLACEMENT_CHARS} "
                             "characters")
    context = request.get("context")
    return lead_id, placements, context if context is not None else {}


async def post_decide(request: web.Request) -> web.StreamResponse:
    """POST /v1/decide. What `answered` gives the other routes is written in (the count by
    status, the CORS origin, a fault of ours answered as a 500): a request whose body came
    with its headers and whose lead is read inline (SQLite) is answered without a
    coroutine of its own beyond this one."""
    decider: Decider = request.app[STATE]
    try:
        if decider.inline_reads and request.content.is_eof():
            response = _decide_now(request, decider)
        else:
            response = await _decide_waiting(request, decider)
    except web.HTTPException as http_error:
        response = http_error
    except Exception as err:  # noqa: BLE001 - a fault of ours: answered, counted and logged, keys cut out
        log.error("%s %s failed: %s", request.method, redact(request.path_qs), redact(f"{type(err).__name__}: {err}"),
                  exc_info=err)
        response = _with_origin(_json(500, {"error": "internal", "detail": "the decision failed on this request; "
                                            "it is logged"}), decider)
    _count_request(decider, _DECIDE_STATUSES, DECIDE_ROUTE, response.status)
    if isinstance(response, web.HTTPException):
        _with_origin(response, decider)
        raise response
    return response


_DECIDE_STATUSES: dict[int, tuple[str, str]] = {}  # each status's labels in orion_decide_requests, made once
_UNPARSED_STATUSES: dict[int, tuple[str, str]] = {}


def count_unparsed(decider: "Decider", status: int) -> None:
    """Count an answer to a request that is not valid HTTP (route "unparsed")."""
    _count_request(decider, _UNPARSED_STATUSES, "unparsed", status)


def _count_request(decider: "Decider", statuses: dict[int, tuple[str, str]], route: str, status: int) -> None:
    """Count an answer in orion_decide_requests by route and status; `statuses` keeps
    each status's labels, made once."""
    labels = statuses.get(status)
    if labels is None:
        labels = statuses[status] = (route, str(status))
    counts = decider.metrics.requests.values
    counts[labels] = counts.get(labels, 0) + 1


class _Asked(NamedTuple):
    """A request to decide, read and checked."""

    tenant: str
    lead_id: str
    placements: list
    context: dict
    raw_context: dict
    now: int
    started: float


def _decide_now(request: web.Request, decider: "Decider") -> web.Response:
    """The answer to a request whose body lies whole in its stream, the lead read inline."""
    settings = decider.settings
    key, refusal = authorize(request, decider.keys, decider.limiter, settings.rate_limit)
    if refusal is not None:
        return _with_origin(refusal, decider)
    started = time.perf_counter()
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        return _refused(_too_large(settings), decider)
    # The whole body is here (a small POST comes with its headers): it is taken as it
    # lies, with no timer armed and cancelled and no copy made.
    body = request.content.read_nowait()
    if len(body) > settings.max_body_bytes:
        return _refused(_too_large(settings), decider)
    asked = _asked(body, key.tenant, decider, started)
    if asked.__class__ is not _Asked:
        return asked
    tenant, lead_id = asked.tenant, asked.lead_id
    reader = decider.reader
    view = reader.cached(tenant, lead_id)
    lead_reads = decider.metrics.lead_reads.values
    if view is not None:
        lead_reads[_FROM_CACHE] = lead_reads.get(_FROM_CACHE, 0) + 1
    else:
        lead_reads[_FROM_STORE] = lead_reads.get(_FROM_STORE, 0) + 1
        experiences = decider.experiences.get(tenant)
        try:
            view = reader.read(tenant, lead_id, experiences.counters if experiences is not None else (), asked.now,
                               lazy_history=True)
        except StoreError as err:
            return _store_unavailable(err, tenant, decider)
    return _answer(decider, asked, view)


async def _decide_waiting(request: web.Request, decider: "Decider") -> web.Response:
    """The answer to a request whose body is still coming, or whose lead is read on the
    store's thread."""
    settings = decider.settings
    key, refusal = authorize(request, decider.keys, decider.limiter, settings.rate_limit)
    if refusal is not None:
        return _with_origin(refusal, decider)
    started = time.perf_counter()
    try:
        body = await _read_body(request, settings)
    except BadRequest as refused:
        return _refused(refused, decider)
    asked = _asked(body, key.tenant, decider, started)
    if asked.__class__ is not _Asked:
        return asked
    tenant, lead_id = asked.tenant, asked.lead_id
    experiences = decider.experiences.get(tenant)
    try:
        view = await decider.lead(tenant, lead_id, experiences.counters if experiences is not None else (), asked.now)
    except StoreError as err:
        return _store_unavailable(err, tenant, decider)
    return _answer(decider, asked, view)


def _asked(body: bytes, tenant: str, decider: "Decider", started: float):
    """The request a body asks (_Asked), or the answer refusing it (400)."""
    now = decider.clock()
    try:
        lead_id, placements, raw_context = parse_request(body, decider.settings.max_placements)
        try:
            context = parse_context(raw_context, now)
        except ContextError as bad:
            raise BadRequest(400, "bad_context", str(bad)) from None
    except BadRequest as refused:
        return _refused(refused, decider)
    return _Asked(tenant, lead_id, placements, context, raw_context, now, started)


def _answer(decider: "Decider", asked: _Asked, view) -> web.Response:
    """The decisions for a request and its lead's view: the answer, each impression
    queued, each decision counted."""
    tenant, lead_id, raw_context, now = asked.tenant, asked.lead_id, asked.raw_context, asked.now
    try:
        # (a history filter may read the store here: see LeadReader's lazy_history)
        decisions = decide(decider.experiences.get(tenant), decider.renderer, lead_id, view.state, asked.placements,
                           asked.context, raw_context, now, decider.indexes)
    except StoreError as err:
        return _store_unavailable(err, tenant, decider)
    # One pass over the decisions: the answer, the impressions queued and the counts.
    encoder = decider.encoder
    counts = decider.metrics.decisions.values
    parts = []
    known = 0
    lead = end = None
    for decision in decisions:
        error = decision.error
        if error is None:
            encoded = encoder.encoded(tenant, decision)
            if lead is None:  # the parts every impression of this request shares
                lead = encoder.impression_lead(tenant, lead_id, now)
                end = encoder.impression_end(raw_context.get("url"))
            decider.queue(encoder.impression(lead, encoded, end))
            parts.append(encoder.answer_part(encoded, decision))
            labels = encoded.labels
            known += 1
        else:
            if error != UNKNOWN_PLACEMENT:
                known += 1
            parts.append(_dumps(decision.to_json_dict()))
            labels = (tenant, error)
        counts[labels] = counts.get(labels, 0) + 1
    decider.metrics.seconds.observe(time.perf_counter() - asked.started)
    return web.Response(status=200 if known else 422, headers=decider.answer_headers.copy(),
                        body=b"".join((b'{"lead_id":', orjson.dumps(lead_id), b',"lead":', orjson.dumps(view.status),
                                       b',"decisions":[', b",".join(parts), b"]}")))


def _with_origin(response: web.Response, decider: "Decider") -> web.Response:
    response.headers["Access-Control-Allow-Origin"] = decider.settings.cors_origin
    return response


def _refused(refused: BadRequest, decider: "Decider") -> web.Response:
    response = _with_origin(_json(refused.status, {"error": refused.error, "detail": refused.detail}), decider)
    if refused.status == 408:
        response.force_close()
    return response


def _store_unavailable(err: StoreError, tenant: str, decider: "Decider") -> web.Response:
    log.warning("the store did not answer for tenant %s: %s", tenant, redact(str(err)))
    return _with_origin(_json(503, {"error": "store_unavailable", "detail": "the lead store did not answer; try "
                                    "again"}, {"Retry-After": retry_after_header(decider.settings.retry_after)}),
                        decider)


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Orion-Key",
        "Access-Control-Max-Age": "86400",
    })


async def healthz(request: web.Request) -> web.Response:
    decider: Decider = request.app[STATE]
    failure = decider.impression_failure or decider.publisher.last_failure
    return _json(200, {"status": "ok", "impressions": "ok" if failure is None else f"failing: {failure}",
                       "pending_impressions": decider.publisher.pending_events, "keys": len(decider.keys),
                       "tenants": sorted(decider.experiences)})


async def metrics(request: web.Request) -> web.Response:
    decider: Decider = request.app[STATE]
    return web.Response(body=decider.metrics.render(), headers={"Content-Type": decider.metrics.content_type})


def answered(route: str, handler):
    """`handler` with what every answer of the app gets: counted by route and status,
    the CORS origin on /v1/decide's, and a fault of ours answered as a 500 (counted and
    logged, keys cut out). (A wrapper of each route rather than a middleware: aiohttp
    runs a middleware through two more coroutines on every request.)"""
    cors = route == DECIDE_ROUTE
    statuses: dict[int, tuple[str, str]] = {}  # each status's labels, made once

    async def answer(request: web.Request) -> web.StreamResponse:
        decider: Decider = request.app[STATE]
        try:
            response = await handler(request)
        except web.HTTPException as http_error:  # 404, 405 and the like
            response = http_error
        except Exception as err:  # noqa: BLE001 - a fault of ours: answered, counted and logged, keys cut out
            log.error("%s %s failed: %s", request.method, redact(request.path_qs),
                      redact(f"{type(err).__name__}: {err}"), exc_info=err)
            response = _json(500, {"error": "internal", "detail": "the decision failed on this request; it is logged"})
        _count_request(decider, statuses, route, response.status)
        if cors:
            response.headers["Access-Control-Allow-Origin"] = decider.settings.cors_origin
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return answer


# The methods of each path (aiohttp adds HEAD beside GET); any other request is refused
# by `unrouted` as aiohttp's router would, 405 or 404.
_ROUTES = {DECIDE_ROUTE: ("POST", "OPTIONS"), "/healthz": ("GET", "HEAD"), "/metrics": ("GET", "HEAD")}


async def unrouted(request: web.Request) -> web.StreamResponse:
    methods = _ROUTES.get(request.path)
    if methods is not None:
        raise web.HTTPMethodNotAllowed(request.method, methods)
    raise web.HTTPNotFound()


def build_app(decider: Decider) -> web.Application:
    """The aiohttp application; the caller owns the decider (drains and closes it)."""
    app = web.Application(client_max_size=decider.settings.max_body_bytes)
    app[STATE] = decider
    app.router.add_post(DECIDE_ROUTE, post_decide)  # answered as `answered` would, by itself
    app.router.add_route("OPTIONS", DECIDE_ROUTE, answered(DECIDE_ROUTE, preflight))
    app.router.add_get("/healthz", answered("/healthz", healthz))
    app.router.add_get("/metrics", answered("/metrics", metrics))
    app.router.add_route("*", "/{path:.*}", answered("other", unrouted))  # last: what no route above takes
    return app
