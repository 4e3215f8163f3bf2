"""The activity graph writing to a Bigtable store on the real emulator: every activity
stored and indexed, and a row the store refuses ending in the dead letters with its
reason while the rest is stored.

    .venv/bin/python -m pytest -q tests/test_graph_store.py
"""
from __future__ import annotations

from datetime import date

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from store_services import bigtable_uri

from orion.activities import Activity
from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.store import open_store
from orion.store.base import MAX_MS, STORE_SOURCE, UNSTORABLE, activity_day
from orion.transforms.intake import METRICS_NAMESPACE
from orion.transforms.sinks import WriteActivities

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z
MINUTE = 60_000
DAY = 86_400_000

RULES = """
tenant: shop
campaigns:
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
"""


@pytest.fixture
def rules_dir(tmp_path) -> str:
    (tmp_path / "shop.yaml").write_text(RULES)
    return str(tmp_path)


@pytest.fixture
def store_uri(bigtable_emulator):
    uri = bigtable_uri()
    with open_store(uri) as store:
        store.init()
    return uri


def visit(event_id: str, lead: str, at: int, tenant: str = "shop", **attributes) -> Activity:
    return Activity(event_id, tenant, lead, "visit_web_page", at, {"url": "https://shop.example/", **attributes})


def run_graph(rules_dir: str, store_uri: str, activities: list[Activity], check=None) -> dict[str, int]:
    """The bounded graph over `activities` with the store sink; returns Orion's counters."""
    pipeline = beam.Pipeline()
    parsed = pipeline | "Activities" >> beam.Create(activities)
    no_parse_errors = pipeline | "NoParseErrors" >> beam.Create([])
    outputs = build_activity_graph(parsed, no_parse_errors, GraphSettings(rules_dir, bounded=True),
                                   store_sink=WriteActivities(store_uri, batch_size=7))
    if check is not None:
        check(outputs)
    result = pipeline.run()
    result.wait_until_finish()
    totals: dict[str, int] = {}
    for counter in result.metrics().query()["counters"]:
        if counter.key.metric.namespace == METRICS_NAMESPACE:
            name = counter.key.metric.name
            totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    return totals


def test_the_graph_stores_and_indexes_every_activity_in_bigtable(rules_dir, store_uri):
    # Three leads (one of them in two tenants with the same ids), 25 activities over two
    # days; a batch size of 7 makes the sink flush both in process and in finish_bundle.
    activities = [visit(f"e{n:02d}", f"L{n % 3}", T0 + n * MINUTE + (n % 2) * DAY) for n in range(20)]
    activities += [visit(f"e{n:02d}", "L0", T0 + n * MINUTE, tenant="bank") for n in range(5)]

    def check(out):
        assert_that(out.dead_letters, equal_to([]), label="NoDeadLetters")

    totals = run_graph(rules_dir, store_uri, activities, check)

    assert totals["stored"] == len(activities)
    assert totals.get("store_failed", 0) == 0
    with open_store(store_uri) as store:
        assert store.count() == len(activities)
        for tenant, lead in {(a.tenant, a.lead_id) for a in activities}:
            mine = [a for a in activities if (a.tenant, a.lead_id) == (tenant, lead)]
            expected = sorted(mine, key=lambda a: (a.occurred_at, a.event_id), reverse=True)
            assert store.history(tenant, lead) == expected
            index = store.read_index(tenant, lead)
            by_day: dict[date, list[int]] = {}
            for a in mine:
                by_day.setdefault(activity_day(a.occurred_at), []).append(a.occurred_at)
            assert index == {("visit_web_page", day): (len(times), max(times)) for day, times in by_day.items()}
    assert totals["indexed"] >= len({(a.tenant, a.lead_id, activity_day(a.occurred_at)) for a in activities})


def test_a_row_the_store_refuses_is_dead_lettered_with_its_reason_and_the_rest_is_stored(rules_dir, store_uri):
    good = [visit(f"ok{n}", "L1", T0 + n * MINUTE) for n in range(10)]
    # The graph accepts any epoch-ms time; the store holds years 1 to 9999 only.
    too_late_for_any_store = visit("year-10000", "L1", MAX_MS + 1)

    def check(out):
        refused = out.dead_letters | "Refused" >> beam.Map(
            lambda d: (d.reason, d.source, d.element["event_id"], "outside the years 1 to 9999" in d.detail))
        assert_that(refused, equal_to([(UNSTORABLE, STORE_SOURCE, "year-10000", True)]))

    totals = run_graph(rules_dir, store_uri, good + [too_late_for_any_store], check)

    assert totals["stored"] == len(good)
    assert totals["store_failed"] == 1
    assert totals[f"dead_letters:{UNSTORABLE}"] == 1
    with open_store(store_uri) as store:
        assert store.count() == len(good)
        assert [a.event_id for a in store.history("shop", "L1")] == [f"ok{n}" for n in reversed(range(10))]
        assert store.read_index("shop", "L1") == {("visit_web_page", activity_day(T0)): (10, T0 + 9 * MINUTE)}
