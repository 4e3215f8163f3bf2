"""The roll-up core (orion.analytics.rollup) and the query engine over it, with no engine
and no server: facts of each kind of record, aggregates that merge (counts add, sketches
union, sums add), per-row state that writes versions and builds hours and days from
minutes, and queries over an in-memory list of rows.

    .venv/bin/python -m pytest -q tests/test_analytics_core.py
"""
from __future__ import annotations

import pickle

import pytest
from conftest import HOUR, MINUTE, T0, make_activity

from orion.activities import ActivityType, ActivityTypes, AttributeSpec
from orion.analytics.query import Query, QueryError, parse_time, parse_where, run_query
from orion.analytics.rollup import (
    ACTIVITY, DAY, FLOW, MAX_DIMENSION_BYTES, OUTCOME, RELATIVE_ERROR, Aggregate, PartialRollups, RollupFacts,
    RollupKey, RowParts, add_to_bucket, bucket_start, decode_state, dimension_value, encode_state, flush_bucket,
    url_host_and_path,
)
from orion.campaigns.email import AssembledEmail
from orion.campaigns.flows import EmailRequest, HeldEmail, WebhookCall
from orion.rules.model import Outcome
from orion.store.rollups_base import RollupStore, StoredRollup

DAY_MS = 86_400_000
PURCHASE = ActivityType("purchase", {"amount": AttributeSpec("number"), "items": AttributeSpec("number"),
                                     "sku": AttributeSpec("string")}, "sku")
TYPES = ActivityTypes({"acme": {"purchase": PURCHASE}})


def facts_of(*records):
    """Each record's fact, its key (a plain tuple) as the RollupKey it stands for."""
    facts = RollupFacts(TYPES)
    found = [facts.of(record) for record in records]
    return [None if fact is None else (RollupKey(*fact[0]), *fact[1:]) for fact in found]


def test_an_activity_is_keyed_by_tenant_minute_type_source_and_selective_attribute():
    visit = make_activity("visit_web_page", at=T0 + 59_999, url="https://Acme.Example/pricing?plan=pro#top")
    (key, lead, sums), = facts_of(visit)
    assert key == RollupKey("acme", "minute", T0, ACTIVITY, type="visit_web_page", source="input",
                            attribute="acme.example/pricing")
    assert lead == "1" and sums is None


def test_flow_generated_activities_and_their_outcomes_have_source_flow():
    generated = make_activity("change_score", event_id="flow-abc", delta=5)
    outcome = Outcome("acme", "1", "flow-abc", T0, "Score jump", 1, True)
    (activity_key, _, _), (outcome_key, _, _) = facts_of(generated, outcome)
    assert activity_key.source == "flow" and activity_key.attribute == ""
    assert outcome_key == RollupKey("acme", "minute", T0, OUTCOME, source="flow", campaign="Score jump",
                                    status="qualified")


def test_outcomes_not_qualified_keep_their_reason():
    outcome = Outcome("acme", "1", "e1", T0 + 5, "Welcome", 1, False, "filters", "lead is unsubscribed")
    (key, _, _), = facts_of(outcome)
    assert (key.kind, key.status, key.reason, key.campaign) == (OUTCOME, "not_qualified", "filters", "Welcome")


def test_emails_queued_held_and_webhooks_are_flow_rows_by_campaign():
    request = EmailRequest("acme", "1", "Welcome", "e1#0", "welcome", False, T0 + 1, {}, {})
    queued = AssembledEmail("acme", "Welcome", "1", "e1#0", "welcome", "a@b.example", b"...", T0 + 1)
    held = HeldEmail(request, "unsubscribed", "the lead unsubscribed")
    hook = WebhookCall("acme", "2", "Cleanup", "e2#1", "crm_sync", T0 + HOUR, {})
    keys = [found[0] for found in facts_of(queued, held, hook)]
    assert keys == [
        RollupKey("acme", "minute", T0, FLOW, attribute="welcome", campaign="Welcome", status="email_queued"),
        RollupKey("acme", "minute", T0, FLOW, attribute="welcome", campaign="Welcome", status="email_held",
                  reason="unsubscribed"),
        RollupKey("acme", "minute", T0 + HOUR, FLOW, attribute="crm_sync", campaign="Cleanup", status="webhook"),
    ]
    assert facts_of(request) == [None]  # a request is counted once assembled (queued) or held


def test_the_numeric_attributes_a_tenant_declared_are_summed():
    purchase = make_activity("purchase", types=TYPES, amount=19.5, items=2, sku="A-1")
    no_items = make_activity("purchase", types=TYPES, amount=5, sku="A-1")
    partial = PartialRollups(RollupFacts(TYPES))
    partial.add(purchase)
    partial.add(no_items)
    (key, aggregate), = partial.drain()
    assert key.attribute == "A-1"
    assert aggregate.sums == {"amount": 24.5, "items": 2}
    assert aggregate.records == 2


def test_dimension_values_are_bounded_and_valid_text():
    long = "é" * 500
    assert len(dimension_value(long).encode("utf-8")) <= MAX_DIMENSION_BYTES
    assert dimension_value(long) == "é" * (MAX_DIMENSION_BYTES // 2)
    assert dimension_value("a\ud800b").encode("utf-8")  # a lone surrogate becomes storable text
    assert url_host_and_path("/relative/page?x=1") == "/relative/page"
    assert url_host_and_path("https://shop.example") == "shop.example/"


def test_buckets_floor_event_time_to_the_granularity():
    assert bucket_start(T0 + 61_000, "minute") == T0 + MINUTE
    assert bucket_start(T0 + 61_000, "hour") == T0
    assert bucket_start(-1, "minute") == -MINUTE


def test_aggregates_merge_counts_sums_and_distinct_leads():
    first, second = Aggregate(), Aggregate()
    for lead in ("L1", "L2", "L3"):
        first.add(lead, {"amount": 1})
    for lead in ("L2", "L3", "L4"):
        second.add(lead, {"amount": 2})
    merged = first.copy().merge(second)
    assert merged.records == 6
    assert merged.sums == {"amount": 9}
    assert round(merged.estimate()) == 4  # L2 and L3 are counted once
    low, high = merged.bounds()
    assert low <= 4 <= high
    assert first.records == 3  # copy() left the original alone


def test_aggregates_survive_encoding_and_pickling():
    aggregate = Aggregate()
    for i in range(1000):
        aggregate.add(f"L{i}", {"amount": 0.5})
    for restored in (Aggregate.decode(aggregate.encode()), pickle.loads(pickle.dumps(aggregate))):
        assert restored == aggregate
        assert restored.estimate() == pytest.approx(aggregate.estimate())
    assert abs(aggregate.estimate() - 1000) / 1000 < 3 * RELATIVE_ERROR


def test_each_flush_writes_the_row_whole_with_a_higher_version_and_passes_the_gain_to_the_hour():
    key = RollupKey("acme", "minute", T0 + 5 * MINUTE, ACTIVITY, type="open_email")
    first = Aggregate()
    first.add("L1")
    state, row, passed = flush_bucket(key, add_to_bucket(None, first, writer=lambda: "w1"))
    assert (row.writer, row.version, row.aggregate.records) == ("w1", 1, 1)
    assert passed[0] == key._replace(granularity="hour", bucket=T0) and passed[1].records == 1
    late = Aggregate()
    late.add("L2")
    late.add("L1")
    state, row, passed = flush_bucket(key, add_to_bucket(state, late))
    assert (row.writer, row.version, row.aggregate.records, round(row.aggregate.estimate())) == ("w1", 2, 3, 2)
    assert passed[1].records == 2  # only what the row gained goes on to the hour
    assert flush_bucket(key, state)[1] is None  # nothing new: nothing to write
    restored = decode_state(encode_state(state))
    assert (restored.writer, restored.version, restored.total) == ("w1", 2, state.total)


def test_hours_and_days_built_from_minutes_equal_the_direct_aggregate():
    minutes = {}
    direct = Aggregate()
    for i in range(120):
        key = RollupKey("acme", "minute", T0 + (i % 90) * MINUTE, ACTIVITY, type="open_email")
        part = Aggregate()
        part.add(f"L{i % 37}")
        direct.add(f"L{i % 37}")
        minutes[key] = add_to_bucket(minutes.get(key), part)
    hours, days = {}, {}
    for key, state in minutes.items():
        _, _, (hour_key, gained) = flush_bucket(key, state)
        hours[hour_key] = add_to_bucket(hours.get(hour_key), gained)
    for key, state in hours.items():
        _, _, (day_key, gained) = flush_bucket(key, state)
        days[day_key] = add_to_bucket(days.get(day_key), gained)
    assert len(hours) == 2 and len(days) == 1
    (day_key, day_state), = days.items()
    assert day_key.granularity == DAY
    assert day_state.total == direct


def test_hours_and_days_of_activities_leave_the_attribute_to_the_minutes():
    page = RollupKey("acme", "minute", T0 + 5 * MINUTE, ACTIVITY, type="visit_web_page", source="input",
                     attribute="acme.example/pricing")
    hour = page.coarser()
    assert hour == RollupKey("acme", "hour", T0, ACTIVITY, type="visit_web_page", source="input")
    assert hour.coarser() == hour._replace(granularity="day", bucket=T0 - T0 % DAY_MS)
    email = RollupKey("acme", "minute", T0, FLOW, attribute="welcome", campaign="Welcome", status="email_queued")
    assert email.coarser().attribute == "welcome"  # a flow's template is no activity's attribute: kept


def test_an_aggregate_passed_on_unchanged_keeps_its_sketch_bytes_and_estimate():
    aggregate = Aggregate()
    for lead in ("L1", "L2", "L3"):
        aggregate.add(lead)
    decoded = Aggregate.decode(aggregate.encode())
    assert decoded._sketch is None  # not built: the bytes and the count are all a write needs
    copied = decoded.copy()
    assert copied.sketch_bytes() == aggregate.sketch_bytes() and round(copied.estimate()) == 3
    copied.add("L4")  # built from its bytes when it changes
    assert round(copied.estimate()) == 4 and round(decoded.estimate()) == 3
    assert copied.sketch_bytes() != aggregate.sketch_bytes()
    parts = RowParts({RollupKey("acme", "minute", T0, ACTIVITY, type="open_email"): aggregate})
    (key, restored), = pickle.loads(pickle.dumps(parts)).items()
    assert (key.type, restored.records, restored.sketch_bytes()) == ("open_email", 3, aggregate.sketch_bytes())


# --- the query engine over rows in memory ---------------------------------------------


class RowsInMemory:
    """A roll-up store's reads, over a list: what the query engine asks of a store."""

    scan = RollupStore.scan  # the interface's own scan, over `_read_rows`
    _scan_rows = RollupStore._scan_rows

    def __init__(self, rows):
        self.rows = rows

    def _segments(self, tenant, granularity, start, end):
        return []

    def _read_rows(self, tenant, granularity, start, end, *, kind=None, where=None, sketches=True):
        return [row for row in self.rows
                if row.key.tenant == tenant and row.key.granularity == granularity and start <= row.key.bucket < end
                and (kind is None or row.key.kind == kind)
                and all(getattr(row.key, name) == value for name, value in (where or {}).items())]


def stored(key: RollupKey, leads, writer="w", amount=0) -> StoredRollup:
    aggregate = Aggregate()
    for lead in leads:
        aggregate.add(lead, {"amount": amount} if amount else None)
    return StoredRollup(key, writer, 1, aggregate.records, aggregate.estimate(), aggregate.sketch_bytes(),
                        aggregate.sums)


def visit_key(minute: int, url: str, source: str = "input", granularity: str = "minute") -> RollupKey:
    return RollupKey("acme", granularity, T0 + minute * MINUTE, ACTIVITY, type="visit_web_page", source=source,
                     attribute=url)


def test_a_query_groups_by_dimensions_per_bucket_and_merges_writers():
    rows = RowsInMemory([
        stored(visit_key(0, "a"), ["L1", "L2"]),
        stored(visit_key(0, "a"), ["L2", "L3"], writer="other"),  # a second job's row of the same minute
        stored(visit_key(0, "b"), ["L1"]),
        stored(visit_key(1, "a", source="flow"), ["L4"]),
        stored(RollupKey("globex", "minute", T0, ACTIVITY, type="visit_web_page"), ["X"]),
    ])
    found = run_query(rows, Query("acme", "events", ("attribute",), "minute", T0, T0 + HOUR))
    assert found == [
        {"time": "2026-11-22T10:00:00.000Z", "attribute": "a", "events": 4},
        {"time": "2026-11-22T10:00:00.000Z", "attribute": "b", "events": 1},
        {"time": "2026-11-22T10:01:00.000Z", "attribute": "a", "events": 1},
    ]
    leads = run_query(rows, Query("acme", "unique_leads", (), "minute", T0, T0 + MINUTE))
    assert leads == [{"time": "2026-11-22T10:00:00.000Z", "unique_leads": 3, "unique_leads_low": 3,
                      "unique_leads_high": 3}]
    inputs = run_query(rows, Query("acme", "events", ("source",), "minute", T0, T0 + HOUR, {"source": "input"}))
    assert [row["events"] for row in inputs] == [5]


def test_top_keeps_the_largest_groups_of_each_bucket_and_all_merges_the_range():
    rows = RowsInMemory([stored(visit_key(0, page), ["L"] * n) for page, n in (("a", 3), ("b", 5), ("c", 1))]
                        + [stored(visit_key(0, "a", granularity="hour"), ["L"] * 3)])
    top = run_query(rows, Query("acme", "events", ("attribute",), "minute", T0, T0 + MINUTE, top=2))
    assert [(row["attribute"], row["events"]) for row in top] == [("b", 5), ("a", 3)]
    # Aligned to hours: read from the hour rows.
    whole = run_query(rows, Query("acme", "events", (), "all", T0, T0 + HOUR))
    assert whole == [{"events": 3}]
    # Not aligned: read from the minutes.
    whole = run_query(rows, Query("acme", "events", (), "all", T0, T0 + 10 * MINUTE))
    assert whole == [{"events": 9}]


def test_sums_and_metrics_that_imply_a_status():
    rows = RowsInMemory([
        stored(visit_key(0, "a"), ["L1", "L2"], amount=2.5),
        stored(RollupKey("acme", "minute", T0, OUTCOME, campaign="W", status="qualified"), ["L1"]),
        stored(RollupKey("acme", "minute", T0, OUTCOME, campaign="W", status="not_qualified", reason="filters"),
               ["L2", "L3"]),
    ])
    assert run_query(rows, Query("acme", "sum:amount", (), "all", T0, T0 + MINUTE)) == [{"sum:amount": 5}]
    assert run_query(rows, Query("acme", "fired", ("campaign",), "all", T0, T0 + MINUTE)) == [
        {"campaign": "W", "fired": 3}]
    assert run_query(rows, Query("acme", "not_qualified", ("reason",), "all", T0, T0 + MINUTE)) == [
        {"reason": "filters", "not_qualified": 2}]
    assert run_query(rows, Query("acme", "qualified", (), "all", T0, T0 + MINUTE,
                                 {"status": "not_qualified"})) == []


def test_a_query_by_attribute_at_hour_or_all_folds_the_minutes_it_reads():
    rows = RowsInMemory([
        stored(visit_key(0, "a"), ["L1"]),
        stored(visit_key(1, "a"), ["L1", "L2"]),
        stored(visit_key(61, "a"), ["L3"]),
        stored(visit_key(2, "b"), ["L4"], writer="other"),
        # The hour rows a run writes carry no attribute; a query by attribute cannot use them.
        stored(visit_key(0, "", granularity="hour"), ["L1", "L2", "L4"]),
    ])
    by_hour = run_query(rows, Query("acme", "events", ("attribute",), "hour", T0, T0 + 2 * HOUR))
    assert by_hour == [
        {"time": "2026-11-22T10:00:00.000Z", "attribute": "a", "events": 3},
        {"time": "2026-11-22T10:00:00.000Z", "attribute": "b", "events": 1},
        {"time": "2026-11-22T11:00:00.000Z", "attribute": "a", "events": 1},
    ]
    leads = run_query(rows, Query("acme", "unique_leads", ("attribute",), "all", T0, T0 + 2 * HOUR))
    assert [(row["attribute"], row["unique_leads"]) for row in leads] == [("a", 3), ("b", 1)]
    assert run_query(rows, Query("acme", "events", (), "hour", T0, T0 + HOUR, {"attribute": "b"})) == [
        {"time": "2026-11-22T10:00:00.000Z", "events": 1}]
    # Without the attribute, an hour is read from the hour rows.
    assert run_query(rows, Query("acme", "events", (), "hour", T0, T0 + HOUR)) == [
        {"time": "2026-11-22T10:00:00.000Z", "events": 3}]


def test_hour_rows_an_earlier_release_wrote_by_attribute_still_add_up_by_type():
    rows = RowsInMemory([
        stored(visit_key(0, "a", granularity="hour"), ["L1", "L2"]),  # as written before hours lost the attribute
        stored(visit_key(0, "b", granularity="hour"), ["L2"]),
        stored(visit_key(0, "", granularity="hour"), ["L3"], writer="later"),
    ])
    assert run_query(rows, Query("acme", "unique_leads", ("type",), "hour", T0, T0 + HOUR)) == [
        {"time": "2026-11-22T10:00:00.000Z", "type": "visit_web_page", "unique_leads": 3, "unique_leads_low": 3,
         "unique_leads_high": 3}]
    assert run_query(rows, Query("acme", "events", (), "hour", T0, T0 + HOUR))[0]["events"] == 4


def test_groups_of_a_bucket_are_ordered_by_their_figure_then_their_values():
    rows = RowsInMemory([stored(visit_key(0, page), [f"L{i}" for i in range(n)], writer=writer)
                         for page, n, writer in (("c", 2, "w"), ("a", 2, "w"), ("b", 1, "w"), ("b", 2, "x"))])
    found = run_query(rows, Query("acme", "unique_leads", ("attribute",), "minute", T0, T0 + MINUTE))
    # b's two writers merge to 2 distinct leads (L0, L1): a tie with a and c, broken by the value.
    assert [(row["attribute"], row["unique_leads"]) for row in found] == [("a", 2), ("b", 2), ("c", 2)]
    events = run_query(rows, Query("acme", "events", ("attribute",), "minute", T0, T0 + MINUTE, top=2))
    assert [(row["attribute"], row["events"]) for row in events] == [("b", 3), ("a", 2)]


def test_the_answer_does_not_depend_on_the_order_a_store_hands_rows_back_in():
    class Shuffled(RowsInMemory):
        def scan(self, *args, **kwargs):
            return list(reversed(RollupStore.scan(self, *args, **kwargs)))

    rows = [stored(visit_key(minute, page), leads, writer=writer)
            for minute, page, leads, writer in ((0, "a", ["L1"], "w"), (0, "b", ["L2", "L3"], "w"),
                                                (0, "a", ["L4"], "x"), (1, "a", ["L1"], "w"))]
    for metric in ("events", "unique_leads"):
        query = Query("acme", metric, ("attribute",), "minute", T0, T0 + HOUR)
        assert run_query(Shuffled(rows), query) == run_query(RowsInMemory(rows), query)
    assert [row["events"] for row in run_query(Shuffled(rows), query._replace(metric="events"))] == [2, 2, 1]


@pytest.mark.parametrize("query, message", [
    (Query("acme", "clicks", (), "minute", T0, T0 + 1), "unknown metric 'clicks'"),
    (Query("acme", "events", ("url",), "minute", T0, T0 + 1), "unknown dimension 'url'"),
    (Query("acme", "events", (), "week", T0, T0 + 1), "unknown granularity 'week'"),
    (Query("acme", "events", (), "minute", T0, T0), "--to must be after --from"),
    (Query("acme", "events", (), "minute", T0, T0 + 400 * DAY_MS if (DAY_MS := 86_400_000) else 0), "more than"),
])
def test_bad_queries_say_what_to_change(query, message):
    with pytest.raises(QueryError, match=message):
        run_query(RowsInMemory([]), query)


def test_times_and_filters_from_the_command_line():
    assert parse_time("2026-11-22T10:00:00Z") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("now-1h", now_ms=T0) == T0 - HOUR
    assert parse_time("now", now_ms=T0) == T0
    with pytest.raises(QueryError, match="now-1h"):
        parse_time("yesterday")
    assert parse_where(["type=visit_web_page", "attribute=a=b"]) == {"type": "visit_web_page", "attribute": "a=b"}
    with pytest.raises(QueryError, match="DIMENSION=VALUE"):
        parse_where(["type"])


def test_writer_ids_are_16_hex_digits_and_a_forked_child_draws_its_own():
    import os
    import re

    from orion.analytics.rollup import new_writer

    ids = {new_writer() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(re.fullmatch(r"[0-9a-f]{16}", found) for found in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child's next id, beside the parent's: one generator state, unless reseeded
        os.write(write, new_writer().encode("ascii"))
        os._exit(0)
    mine = new_writer()
    os.waitpid(child, 0)
    theirs = os.read(read, 16).decode("ascii")
    os.close(read)
    os.close(write)
    assert len(theirs) == 16 and theirs != mine


def test_a_url_splits_as_urlsplit_splits_it_whichever_way_it_is_read():
    """url_host_and_path reads a plain http(s) url with one regex and anything else with
    urlsplit: both ways give what urlsplit gives."""
    from urllib.parse import urlsplit

    def by_urlsplit(url: str) -> str:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        return host + (parts.path or "/") if host or parts.netloc else parts.path or url

    urls = ["https://Acme.Example/pricing?plan=pro#top", "http://a.example", "http://a.example?x", "HTTPS://A.ex/x",
            "https://a.example/p\tq", "https://a.example/p q?x", "https://user@a.example/x", "https://a.example:80/x",
            "https://[::1]/x", "https://a.example/#", "https://a.example/%20x", "  https://a.example/x  ",
            "https://a.example//x", "ftp://a.example/x", "https://a.example/ü", "https://a.example.", "http:/a.ex/x",
            "https://a.example/x\n", "https://a.example\\x", "/relative/page?x=1", "mailto:a@b.example"]
    assert [url_host_and_path(url) for url in urls] == [by_urlsplit(url) for url in urls]
