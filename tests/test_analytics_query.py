"""The query engine's answers over a real SQLite roll-up store, checked against a plain
reference that computes them the obvious way (every row read whole, groups summed in a
dict, sketches merged, sorted by a key, times formatted by orion.activities): the fast
path (plain tuples, one list comprehension, bucket texts and estimate bounds made once)
must give exactly the same rows, order, values and types.

    .venv/bin/python -m pytest -q tests/test_analytics_query.py
"""
from __future__ import annotations

import json
import random

import pytest
from conftest import HOUR, MINUTE

from orion.activities import format_timestamp, parse_timestamp
from orion.analytics.query import Query, _BucketTexts, metric_of, run_query, stored_granularity
from orion.analytics.rollup import (
    ACTIVITY, GRANULARITY_MS, RELATIVE_ERROR, Aggregate, RollupKey, RollupRow, merged_estimate,
)
from orion.store.rollups_opening import open_rollup_store

# Two hours either side of a midnight: buckets cross an hour and a day.
START = parse_timestamp("2026-11-22T22:00:00Z")
END = START + 4 * HOUR
TYPES = ("visit_web_page", "fill_out_form", "open_email", "click_link_in_email")


def reference(store, query: Query) -> list[dict]:
    """The answer computed the obvious way, from whole rows."""
    metric = metric_of(query.metric)
    where = {**query.where, **metric.fixed}
    read = stored_granularity(query)
    timed = query.granularity != "all"
    size = GRANULARITY_MS.get(query.granularity)
    start, end = query.start, query.end
    if timed and read != query.granularity:  # the buckets that start in the range, whole
        start, end = -(-start // size) * size, -(-end // size) * size
    groups: dict = {}
    for row in store.read(query.tenant, read, start, end, kind=metric.kind, where=where):
        bucket = (row.key.bucket - row.key.bucket % size) if timed else 0
        group = (bucket, *(getattr(row.key, name) for name in query.by))
        groups.setdefault(group, []).append(row)
    found = []
    for group, rows in groups.items():
        if metric.value == "records":
            found.append((group, sum(row.records for row in rows), None))
        elif metric.value == "sum":
            values = [row.sums[metric.attribute] for row in rows if metric.attribute in row.sums]
            if values:
                total = sum(values)
                found.append((group, int(total) if isinstance(total, float) and total.is_integer() else total, None))
        elif len(rows) == 1:
            estimate = rows[0].leads
            found.append((group, estimate, (estimate * (1 - 2 * RELATIVE_ERROR), estimate * (1 + 2 * RELATIVE_ERROR))))
        else:
            estimate, low, high = merged_estimate([row.sketch for row in rows])
            found.append((group, estimate, (low, high)))
    found.sort(key=lambda item: (item[0][0], -item[1], item[0][1:]))
    answer, kept = [], {}
    for group, value, bounds in found:
        if query.top is not None:
            kept[group[0]] = kept.get(group[0], 0) + 1
            if kept[group[0]] > query.top:
                continue
        row = {"time": format_timestamp(group[0])} if timed else {}
        row.update(zip(query.by, group[1:]))
        if bounds is None:
            row[query.metric] = value
        else:
            row.update({query.metric: round(value), f"{query.metric}_low": round(bounds[0]),
                        f"{query.metric}_high": round(bounds[1])})
        answer.append(row)
    return answer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four hours of minutes by type, source and attribute; some minutes written by two
    writers (groups of several rows: summed, sketches merged), equal counts (ties)."""
    chance = random.Random(7)
    rows = []
    for minute in range(0, 4 * 60, 1):
        bucket = START + minute * MINUTE
        for kind_of, type_ in enumerate(TYPES):
            for attribute in ("", "a", "b")[:1 + (minute + kind_of) % 3]:
                for writer in ("w", "x")[:1 + (minute % 5 == 0)]:
                    aggregate = Aggregate()
                    # Visits of many leads: bounds apart from the estimate (a few leads' are equal to it).
                    for _ in range(chance.randint(30, 120) if type_ == "visit_web_page" else chance.randint(1, 6)):
                        aggregate.add(f"L{chance.randint(0, 400)}", {"amount": chance.choice((1, 2.5, 3))})
                    key = RollupKey("acme", "minute", bucket, ACTIVITY, type=type_,
                                    source=chance.choice(("input", "flow")), attribute=attribute)
                    rows.append(RollupRow(key, writer, 1, aggregate))
            # Tenant "solo": one row a minute and type, as the benchmark's (no group merges).
            aggregate = Aggregate()
            for lead in range(1 + (minute * 7 + kind_of * 31) % (90 if kind_of == 0 else 5)):
                aggregate.add(f"L{lead}")
            rows.append(RollupRow(RollupKey("solo", "minute", bucket, ACTIVITY, type=type_, source="input"), "w", 1,
                                  aggregate))
    rows.append(RollupRow(RollupKey("globex", "minute", START, ACTIVITY, type="visit_web_page"), "w", 1, Aggregate()))
    with open_rollup_store(f"sqlite:///{tmp_path_factory.mktemp('query') / 'activities.db'}") as opened:
        opened.init()
        assert not opened.write(rows).refused
        yield opened


QUERIES = [
    Query(tenant, metric, by, granularity, START + offset, END - offset, where, top)
    for metric in ("events", "unique_leads", "sum:amount")
    for tenant, by, granularity, offset, where, top in [
        ("solo", ("type",), "minute", 0, {}, None),  # the benchmark's query: every group one row
        ("solo", ("type",), "minute", 17 * MINUTE, {}, 2),
        ("solo", (), "minute", 0, {"type": "visit_web_page"}, None),
    ] if (tenant, metric) != ("solo", "sum:amount")
] + [
    Query("acme", metric, by, granularity, START + offset, END - offset, where, top)
    for metric in ("events", "unique_leads", "sum:amount")
    for by, granularity, offset, where, top in [
        (("type",), "minute", 0, {}, None),  # one row per group but for the two writers' minutes
        (("type",), "minute", 17 * MINUTE, {}, 2),
        (("type", "source"), "minute", 0, {"source": "input"}, None),
        ((), "minute", 0, {"type": "open_email"}, None),
        (("attribute",), "hour", 0, {}, None),  # minutes folded into hours, across midnight
        (("attribute",), "hour", 17 * MINUTE, {}, None),  # a range that starts and ends within an hour
        (("type", "attribute"), "hour", 0, {}, 3),
        (("attribute",), "all", 0, {}, None),
        ((), "all", 0, {"attribute": "a"}, None),
    ]
]


def query_id(query: Query) -> str:
    return f"{query.tenant}-{query.metric}-{'+'.join(query.by) or 'none'}-{query.granularity}-top{query.top}"


@pytest.mark.parametrize("query", QUERIES, ids=query_id)
def test_answers_equal_the_plain_reference_exactly(store, query):
    found = run_query(store, query)
    expected = reference(store, query)
    assert found, "the data should answer this query"
    assert found == expected
    # Same order of rows and of keys, same types (3, not 3.0): the same JSON.
    assert json.dumps(found) == json.dumps(expected)


def test_hours_folded_from_minutes_are_the_hours_that_start_in_the_range_each_whole(store):
    """The buckets of an answer are those that start in [from, to), as stored hours are
    read; folded from minutes (by attribute, which only minutes keep), none is cut at an
    end of the range."""
    def per_hour(start: int, end: int) -> dict:
        totals: dict = {}
        for row in run_query(store, Query("acme", "events", ("attribute",), "hour", start, end)):
            totals[row["time"]] = totals.get(row["time"], 0) + row["events"]
        return totals

    whole = per_hour(START, END)
    assert len(whole) == 4
    cut = per_hour(START + 30 * MINUTE, END - 30 * MINUTE)
    hours = sorted(whole)
    assert cut == {hour: whole[hour] for hour in hours[1:]}, "the hours from 23:00 to 01:00, each whole"
    assert per_hour(START + 10 * MINUTE, START + 50 * MINUTE) == {}, "no hour starts in it"


def test_hours_of_minutes_by_type_have_one_row_per_minute_and_type(store):
    found = run_query(store, Query("solo", "unique_leads", ("type",), "minute", START, END))
    assert len(found) == 4 * 60 * len(TYPES)
    assert found[0]["time"] == "2026-11-22T22:00:00.000Z" and found[-1]["time"] == "2026-11-23T01:59:00.000Z"
    assert all(row["unique_leads_low"] <= row["unique_leads"] <= row["unique_leads_high"] for row in found)
    assert any(row["unique_leads_low"] < row["unique_leads"] < row["unique_leads_high"] for row in found)


@pytest.mark.parametrize("step", [GRANULARITY_MS["minute"], GRANULARITY_MS["hour"], GRANULARITY_MS["day"], None])
def test_bucket_texts_are_rfc3339_for_aligned_and_unaligned_buckets(step):
    chance = random.Random(step)
    buckets = [0, -1, 1, 59_999, 60_000, 3_599_999, 86_399_999, -60_000, -86_400_000, START, END - MINUTE]
    buckets += [chance.randrange(-10 ** 12, 10 ** 13) for _ in range(500)]
    buckets += [ms - ms % (step or MINUTE) for ms in (chance.randrange(-10 ** 12, 10 ** 13) for _ in range(500))]
    texts = _BucketTexts(step)
    for bucket in buckets:
        assert texts[bucket] == format_timestamp(bucket), bucket
    # What a missing bucket brings with it (the rest of its hour or day) is right too.
    assert all(text == format_timestamp(bucket) for bucket, text in texts.items())



def test_a_where_value_longer_than_a_stored_dimension_finds_its_row(tmp_path):
    """Roll-ups keep a dimension's first MAX_DIMENSION_BYTES (a long url); --where with the
    whole value is cut the same way, so it finds that row."""
    from orion.analytics.rollup import MAX_DIMENSION_BYTES, dimension_value

    long = "https://globex.example/" + "é" * 300
    aggregate = Aggregate()
    aggregate.add("L1")
    key = RollupKey("globex", "minute", START, ACTIVITY, type="visit_web_page", attribute=dimension_value(long))
    assert len(key.attribute.encode()) <= MAX_DIMENSION_BYTES < len(long.encode())
    with open_rollup_store(f"sqlite:///{tmp_path / 'activities.db'}") as opened:
        opened.init()
        assert not opened.write([RollupRow(key, "w", 1, aggregate)]).refused
        found = run_query(opened, Query("globex", "events", (), "all", START, START + HOUR, {"attribute": long}))
    assert found == [{"events": 1}]
