"""The analytics query engine: one metric of one tenant over a time range, at a
granularity, grouped by dimensions, filtered by dimension values, optionally the top N
groups; read from the roll-up store and merged (rows of several writers, and sketches
of several rows, merge into one figure).

Metrics:

    events           activities stored (input and flow-generated)
    unique_leads     distinct leads among them (HyperLogLog estimate, with 95% bounds)
    fired            outcomes: a campaign's trigger matched
    qualified        outcomes that qualified (the lead ran the flow)
    not_qualified    outcomes that did not (group by reason: qualification, filters)
    qualified_leads  distinct leads that qualified
    emails_queued    emails assembled into the outbox
    emails_held      emails held back (group by reason)
    webhooks         webhook calls queued
    sum:NAME         the sum of the numeric attribute NAME the tenant declared

Dimensions: type, source, attribute, campaign, status, reason (orion.analytics.rollup).
A bucket is in the range when its start is: from <= start < to. Granularity `all`
merges the whole range into one bucket (read from the coarsest stored granularity the
range is aligned to). Activities by attribute, which only minutes keep
(orion.analytics.rollup.MINUTE_ONLY), are read from the minutes at any granularity and
folded into its buckets. With `top`, each bucket keeps its N largest groups.

    orion analytics query --tenant acme --metric events --by type --granularity minute \\
        --from 2026-11-22T10:00:00Z --to 2026-11-22T11:00:00Z --format json
"""
from __future__ import annotations

import re
import time
from itertools import islice
from operator import itemgetter, lt
from typing import NamedTuple, Sequence

from orion.activities import _MAX_MS, _MIN_MS, parse_timestamp
from orion.analytics.rollup import (
    ACTIVITY, DAY, DIMENSIONS, EMAIL_HELD, EMAIL_QUEUED, FLOW, GRANULARITY_MS, HOUR, MINUTE, MINUTE_ONLY,
    NOT_QUALIFIED, OUTCOME, QUALIFIED, RELATIVE_ERROR, WEBHOOK_QUEUED, dimension_value, merged_estimate,
)

ALL = "all"
QUERY_GRANULARITIES = (MINUTE, HOUR, DAY, ALL)
SUM_PREFIX = "sum:"
# The most buckets one query may ask for (a year of minutes): a bound on what it reads.
MAX_BUCKETS = 366 * 24 * 60


class Metric(NamedTuple):
    kind: str
    fixed: dict  # dimension values the metric implies
    value: str  # records, leads or sum
    attribute: str | None = None  # for sum

    @property
    def estimated(self) -> bool:
        return self.value == "leads"


METRICS = {
    "events": Metric(ACTIVITY, {}, "records"),
    "unique_leads": Metric(ACTIVITY, {}, "leads"),
    "fired": Metric(OUTCOME, {}, "records"),
    "qualified": Metric(OUTCOME, {"status": QUALIFIED}, "records"),
    "not_qualified": Metric(OUTCOME, {"status": NOT_QUALIFIED}, "records"),
    "qualified_leads": Metric(OUTCOME, {"status": QUALIFIED}, "leads"),
    "emails_queued": Metric(FLOW, {"status": EMAIL_QUEUED}, "records"),
    "emails_held": Metric(FLOW, {"status": EMAIL_HELD}, "records"),
    "webhooks": Metric(FLOW, {"status": WEBHOOK_QUEUED}, "records"),
}


class QueryError(ValueError):
    """A query that cannot be answered as asked; the message says what to change."""


class Query(NamedTuple):
    tenant: str
    metric: str
    by: tuple[str, ...] = ()
    granularity: str = MINUTE
    start: int = 0  # epoch ms, inclusive
    end: int = 0  # epoch ms, exclusive
    where: dict = {}
    top: int | None = None


def metric_of(name: str) -> Metric:
    if name.startswith(SUM_PREFIX) and len(name) > len(SUM_PREFIX):
        return Metric(ACTIVITY, {}, "sum", name[len(SUM_PREFIX):])
    found = METRICS.get(name)
    if found is None:
        raise QueryError(f"unknown metric {name!r}; the metrics are {', '.join(METRICS)} and sum:ATTRIBUTE")
    return found


def check_query(query: Query) -> Query:
    """The query, checked; QueryError saying what is wrong otherwise."""
    metric_of(query.metric)
    unknown = [name for name in query.by if name not in DIMENSIONS]
    if unknown:
        raise QueryError(f"unknown dimension {unknown[0]!r} in --by; the dimensions are {', '.join(DIMENSIONS)}")
    if len(set(query.by)) != len(query.by):
        raise QueryError("a dimension appears twice in --by")
    unknown = [name for name in query.where if name not in DIMENSIONS]
    if unknown:
        raise QueryError(f"unknown dimension {unknown[0]!r} in --where; the dimensions are {', '.join(DIMENSIONS)}")
    if query.granularity not in QUERY_GRANULARITIES:
        raise QueryError(f"unknown granularity {query.granularity!r}; use one of {', '.join(QUERY_GRANULARITIES)}")
    if query.end <= query.start:
        raise QueryError("the range is empty: --to must be after --from")
    if query.granularity != ALL and (query.end - query.start) / GRANULARITY_MS[query.granularity] > MAX_BUCKETS:
        raise QueryError(f"the range holds more than {MAX_BUCKETS:,} {query.granularity}s; "
                         "ask for a coarser granularity or a shorter range")
    if query.top is not None and query.top < 1:
        raise QueryError("--top must be at least 1")
    # A value as the roll-ups store it (cut to MAX_DIMENSION_BYTES): a long url asked for
    # whole finds its row.
    where = {name: dimension_value(value) for name, value in query.where.items()}
    return query if where == query.where else query._replace(where=where)


def stored_granularity(query: Query) -> str:
    """The stored granularity a query reads: its own, or for `all` the coarsest the range
    is aligned to (so no bucket straddles an end of the range); minutes when it groups
    or filters by a dimension only minutes keep (an activity's attribute)."""
    minute_only = MINUTE_ONLY.get(metric_of(query.metric).kind, ())
    if any(name in minute_only for name in query.by) or any(name in minute_only for name in query.where):
        return MINUTE
    if query.granularity != ALL:
        return query.granularity
    for granularity in (DAY, HOUR):
        size = GRANULARITY_MS[granularity]
        if query.start % size == 0 and query.end % size == 0:
            return granularity
    return MINUTE


def run_query(store, query: Query) -> list[dict]:
    """Rows of the answer, each a dict: `time` (RFC 3339, the bucket's start; not for
    granularity all), the --by dimensions' values and the metric (for an estimated
    metric also METRIC_low and METRIC_high, its 95% bounds). Ordered by time, then by
    the metric, largest first, then by the dimensions' values.

    The store hands back plain tuples of just the columns the metric needs, ordered by
    bucket and the --by dimensions (`scan`), and the groups are summed here in one pass:
    a day of minutes over ten dimension values is 14,400 tuples, and no object is built
    per row but the answer's own dict (one list comprehension; each bucket's time text
    is made once). Unique leads read no sketch for a group of one
    row (its estimate is kept beside its sketch); the groups of several rows (two
    writers, the minutes of an hour or of `all`) read their rows' sketches and merge
    them."""
    query = check_query(query)
    metric = metric_of(query.metric)
    where = dict(query.where)
    for name, value in metric.fixed.items():
        if where.setdefault(name, value) != value:
            return []  # e.g. --metric qualified --where status=not_qualified: nothing is both
    timed = query.granularity != ALL
    read = stored_granularity(query)
    # Buckets are folded when the rows read are finer than the answer's: 0 for `all`.
    fold = (None if read == query.granularity else GRANULARITY_MS[query.granularity]) if timed else 0
    if fold:
        # Finer rows folded into the answer's buckets: the buckets in the range are those
        # that start in it, each whole, as the stored coarser rows are read; so the finer
        # rows read are those of [the first bucket starting at or after `start`, the first
        # starting at or after `end`), never part of a bucket.
        query = query._replace(start=-(-query.start // fold) * fold, end=-(-query.end // fold) * fold)
        if query.end <= query.start:
            return []
    by = tuple(query.by)
    width = 1 + len(by)
    value_column = {"records": "records", "sum": "sums", "leads": "leads"}[metric.value]
    rows = store.scan(query.tenant, read, query.start, query.end, ("bucket", *by, value_column), kind=metric.kind,
                      where=where, order=by)
    if metric.value == "sum":
        attribute = metric.attribute
        rows = [row[:width] + (row[width][attribute],) for row in rows if attribute in row[width]]
    repeated: set = set()  # the groups of more than one row
    found = _grouped(rows, width, repeated) if fold is None else None
    in_group_order = found is not None
    if found is None:
        found = _folded(rows, width, fold, repeated)
    if metric.value == "leads":
        return _estimates(store, query, read, where, fold, found, repeated, timed, in_group_order)
    _order(found, width, sorted_within_buckets=in_group_order)
    return _answer_rows(query, found, timed, estimated=False)


def _grouped(rows: list[tuple], width: int, repeated: set) -> list[tuple] | None:
    """(bucket, group..., value) rows ordered by bucket and group -> one per group, the
    values summed: a group's rows are next to each other, and most groups have one.
    None if the rows are not in that order after all."""
    # (bucket, group...) of each row against the next one's, compared in C through zip's
    # reused tuples: no tuple kept per row.
    columns = [list(map(itemgetter(i), rows)) for i in range(width)]
    if all(map(lt, zip(*columns), zip(*(islice(column, 1, None) for column in columns)))):
        return rows  # every group one row, in order (most answers are so)
    found: list = []
    last = None
    for row in rows:
        group = row[:width]
        if group == last:
            found[-1] = group + (found[-1][width] + row[width],)
            repeated.add(group)
        elif last is None or group > last:
            found.append(row)
            last = group
        else:
            repeated.clear()
            return None
    return found


def _folded(rows: list[tuple], width: int, fold: int | None, repeated: set) -> list[tuple]:
    """The same, in any order, each bucket floored to a multiple of `fold` (0: one
    bucket, 0; None: as it is)."""
    totals: dict = {}
    get = totals.get
    for row in rows:
        group = (_bucket_of(row[0], fold), *row[1:width])
        value = get(group)
        if value is None:
            totals[group] = row[width]
        else:
            totals[group] = value + row[width]
            repeated.add(group)
    return [group + (value,) for group, value in totals.items()]


def _bucket_of(bucket: int, fold: int | None) -> int:
    return bucket if fold is None else bucket - bucket % fold if fold else 0


def _order(found: list[tuple], width: int, sorted_within_buckets: bool) -> None:
    """Order (bucket, group..., value, ...) tuples by bucket, then value (largest first),
    then group, in place. Tuples already in bucket and group order only need two stable
    sorts with C keys; others are sorted whole."""
    if sorted_within_buckets:
        found.sort(key=itemgetter(width), reverse=True)  # stable: ties keep the group order
        found.sort(key=itemgetter(0))
    else:
        found.sort(key=lambda row: (row[0], -row[width], row[1:width]))


def _estimates(store, query: Query, read: str, where: dict, fold: int | None, found: list[tuple], repeated: set,
               timed: bool, in_group_order: bool) -> list[dict]:
    """Unique leads: a group of one row is that row's estimate, within 2 standard errors
    (rounded once per distinct estimate and looked up as the answer's dict is built: no
    tuple per row in between); the groups of several rows merge their rows' sketches
    (read for those groups only) and take the union's bounds."""
    width = 1 + len(query.by)
    if repeated:
        sketches: dict = {}
        for row in store.scan(query.tenant, read, query.start, query.end, ("bucket", *query.by, "sketch"),
                              kind=metric_of(query.metric).kind, where=where):
            group = (_bucket_of(row[0], fold), *row[1:width])
            if group in repeated:
                sketches.setdefault(group, []).append(row[width])
        found = [group + merged_estimate(sketches[group]) if group in repeated
                 else row + (row[width] * _SINGLE_LOW, row[width] * _SINGLE_HIGH)
                 for row in found for group in (row[:width],)]
    # A merged estimate is no sum of its rows' estimates: sorted whole then.
    _order(found, width, sorted_within_buckets=in_group_order and not repeated)
    return _answer_rows(query, found, timed, estimated=True, merged=bool(repeated))


def _answer_rows(query: Query, found: list[tuple], timed: bool, estimated: bool, merged: bool = False) -> list[dict]:
    """Ordered (bucket, group..., value) tuples (estimated: (..., estimate) of one row each,
    or, when some are `merged`, (..., estimate, low, high) for every row) -> the answer's
    dicts, each bucket's first `top` only."""
    name = query.metric
    columns = (("time",) if timed else ()) + tuple(query.by) + (
        (name, f"{name}_low", f"{name}_high") if estimated else (name,))
    width = 1 + len(query.by)
    values = ("merged" if merged else "one") if estimated else "whole" if metric_of(name).value == "sum" else "value"
    make = _answer_maker(columns, timed, width, values)
    if query.top is not None:
        found = _first_of_each_bucket(found, query.top)
    texts = _BucketTexts(GRANULARITY_MS.get(query.granularity))
    return make(found, texts, _Bounds(columns[-3:]) if values == "one" else None)


def _first_of_each_bucket(found: list[tuple], top: int) -> list[tuple]:
    """The first `top` tuples of each bucket, of tuples ordered by bucket."""
    kept = []
    last, count = None, 0
    for row in found:
        if row[0] != last:
            last, count = row[0], 0
        if count < top:
            kept.append(row)
            count += 1
    return kept


_SPREAD = 2 * RELATIVE_ERROR  # a single row's 95% bounds: its estimate ± 2 standard errors
_SINGLE_LOW, _SINGLE_HIGH = 1 - _SPREAD, 1 + _SPREAD


def _answer_maker(columns: tuple[str, ...], timed: bool, width: int, values: str):
    """A function (ordered tuples, bucket texts, estimates' figures) -> the answer's
    dicts, written as one list comprehension over the tuples with one dict display for
    the query's columns (built once per query, as collections.namedtuple builds its
    methods): no function call per row, a third of the time dict(zip(...)) takes for
    each of a day's 14,400 rows. The columns are passed in as names, never as code.
    `values`: "value" (as it is), "whole" (a sum: 3, not 3.0), "one" (a row's estimate,
    and its bounds from it: looked up in the figures, each distinct estimate rounded
    once), "merged" (an estimate and its bounds)."""
    names = {f"c{i}": column for i, column in enumerate(columns)}
    names["whole"] = _whole
    group = [f"g{i}" for i in range(1, width)]
    value_names = ["value", "low", "high"] if values == "merged" else ["value"]
    head = (["texts[bucket]"] if timed else []) + group
    tail = {"value": ["value"], "whole": ["whole(value)"], "one": [],
            "merged": ["round(value)", "round(low)", "round(high)"]}[values]
    entries = [f"c{i}: {entry}" for i, entry in enumerate(head + tail)]
    if values == "one":
        entries.append("**figures[value]")  # the estimate and its bounds, in the columns' order
    targets = ", ".join(["bucket", *group, *value_names])
    code = f"lambda found, texts, figures: [{{{', '.join(entries)}}} for {targets} in found]"
    return eval(code, names)  # noqa: S307 - code built here from fixed parts


class _Bounds(dict):
    """{a single row's estimate: {metric: it rounded, metric_low: ..., metric_high: ...}},
    each made when first asked for: a day's minutes of a few leads each hold only a few
    distinct estimates."""

    def __init__(self, names: tuple[str, str, str]):
        super().__init__()
        self.names = names

    def __missing__(self, estimate):
        name, low, high = self.names
        figures = self[estimate] = {name: round(estimate), low: round(estimate * _SINGLE_LOW),
                                    high: round(estimate * _SINGLE_HIGH)}
        return figures


def _whole(value):
    """A sum as the answer shows it: 3, not 3.0."""
    return int(value) if type(value) is float and value.is_integer() else value


_DAY_MS = GRANULARITY_MS[DAY]
# The time of day of each minute and each hour of a day, as RFC 3339 ends it.
_TIMES_OF_DAY = {
    step: tuple(f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:00.000Z" for ms in range(0, _DAY_MS, step))
    for step in (GRANULARITY_MS[MINUTE], GRANULARITY_MS[HOUR])
}
# The buckets a missing one brings with it: a minute its hour's, an hour its day's.
_BLOCK_MS = {GRANULARITY_MS[MINUTE]: GRANULARITY_MS[HOUR], GRANULARITY_MS[HOUR]: _DAY_MS}


class _BucketTexts(dict):
    """{bucket (epoch ms): its start as RFC 3339 (orion.activities.format_timestamp)},
    made when first asked for, for buckets `step` ms apart: a missing minute brings
    its hour's 60 minutes with it, a missing hour its day's 24 hours, each a day's date
    and a time of day looked up (a day of minutes is 1,440 buckets of 14,400 answer
    rows: 24 calls here, not 1,440)."""

    def __init__(self, step: int | None):
        super().__init__()
        self.step = step
        self.dates: dict = {}

    def __missing__(self, ms: int) -> str:
        day, rest = divmod(ms, _DAY_MS)
        date = self.dates.get(day)
        if date is None:
            found = time.gmtime(day * 86_400)  # (the year padded by hand: %Y does not pad years before 1000)
            date = self.dates[day] = f"{found.tm_year:04d}" + time.strftime("-%m-%dT", found)
        step = self.step
        block = _BLOCK_MS.get(step)
        if block is not None and rest % step == 0:
            first = ms - rest % block  # the start of the bucket's hour (minutes) or day (hours)
            at = (rest - rest % block) // step
            times = _TIMES_OF_DAY[step][at:at + block // step]
            self.update(zip(range(first, first + block, step), [date + end for end in times]))
            return self[ms]
        minutes, rest = divmod(rest, 60_000)
        seconds, millis = divmod(rest, 1000)
        text = self[ms] = f"{date}{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}.{millis:03d}Z"
        return text


# --- times ---------------------------------------------------------------------------

_RELATIVE = re.compile(r"now(?:([+-])(\d{1,15})([smhd]))?")
_TIME_FORMS = "write now, now-1h, now-30m, now-2d (in a URL, + is %2B)"
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """RFC 3339, epoch ms, `now`, or now minus or plus an amount: now-1h, now-30m, now-2d."""
    text = text.strip()
    found = _RELATIVE.fullmatch(text)
    if found is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        sign, amount, unit = found.groups()
        if amount is None:
            return now
        delta = int(amount) * _UNIT_MS[unit]
        found_ms = now - delta if sign == "-" else now + delta
        if not _MIN_MS <= found_ms <= _MAX_MS:
            raise QueryError(f"{text!r} is outside the years 1 to 9999")
        return found_ms
    if text.startswith("now"):
        raise QueryError(f"{text[:80]!r} is not a time: {_TIME_FORMS}")
    try:
        return parse_timestamp(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as err:
        raise QueryError(f"{err}; or {_TIME_FORMS}") from None


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """DIM=VALUE items -> {dim: value}."""
    where = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise QueryError(f"--where takes DIMENSION=VALUE, not {item!r}")
        name = name.strip()
        if name in where and where[name] != value:
            raise QueryError(f"--where names {name} twice")
        where[name] = value
    return where


def error_note() -> str:
    """How exact an estimated metric is, in words."""
    return (f"unique leads are HyperLogLog estimates (Apache DataSketches): relative standard error "
            f"{RELATIVE_ERROR:.1%}, within {2 * RELATIVE_ERROR:.1%} 95% of the time; *_low and *_high are 95% bounds")
