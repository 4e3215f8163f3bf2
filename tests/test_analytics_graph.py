"""Roll-ups in the Beam graph: `orion run` over the samples writes roll-ups that agree with
what it stored, evaluated and queued; a rerun counts nothing twice; a second run into
the same minutes adds to them; in streaming, an activity late but within the allowed
lateness rewrites its minute, and a too-late one is a dead letter that counts nowhere.
And `orion analytics query` prints what the store holds.

    .venv/bin/python -m pytest -q tests/test_analytics_graph.py
"""
from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from orion.analytics.query import Query, run_query
from orion.analytics.rollup import Aggregate, RollupKey, RollupRow
from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.settings import SAMPLE_EVENTS, SAMPLE_RULES, RunConfig
from orion.store.rollups_opening import open_rollup_store
from orion.transforms.intake import ParseActivities
from orion.transforms.sinks import WriteActivities, WriteProfiles

SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR  # an hour's start
AROUND_T0 = (T0 - T0 % DAY, T0 - T0 % DAY + DAY)
SAMPLES = (1_793_491_200_000, 1_796_083_200_000)  # November 2026: every bucket of the samples, day-aligned


def sample_run(tmp_path: Path, name: str = "run") -> tuple[dict, str]:
    """`orion run` (Beam, files) over the sample rules and events, with flows, into a
    store of its own under tmp_path; (the run's counters, the store URI)."""
    from orion.runners.direct import run

    store = f"sqlite:///{tmp_path / 'activities.db'}"
    config = RunConfig(str(SAMPLE_RULES), (), str(SAMPLE_EVENTS), None, store, tmp_path / name, 60_000,
                       24 * HOUR, None, (), outbox_uri=f"sqlite:///{tmp_path / 'outbox.db'}")
    return run(config, out=io.StringIO()), store


def answers(store_uri: str, tenant: str, metric: str, by=(), granularity="all", where=None,
            during=SAMPLES) -> dict:
    with open_rollup_store(store_uri) as store:
        rows = run_query(store, Query(tenant, metric, tuple(by), granularity, *during, where or {}))
    found: dict = {}
    for row in rows:  # summed over the buckets
        group = tuple(row[name] for name in by)
        found[group] = found.get(group, 0) + row[metric]
    return found


def stored_activities(tmp_path: Path) -> dict:
    with sqlite3.connect(tmp_path / "activities.db") as connection:
        return {(tenant, type_): n for tenant, type_, n in connection.execute(
            "SELECT tenant, type, COUNT(*) FROM activities GROUP BY tenant, type")}


def outcome_counts(out_dir: Path) -> dict:
    fired: dict = {}
    for path in out_dir.glob("outcomes-*.jsonl"):
        for line in path.read_text().splitlines():
            outcome = json.loads(line)
            key = (outcome["tenant"], outcome["campaign"], outcome["qualified"])
            fired[key] = fired.get(key, 0) + 1
    return fired


def test_the_roll_ups_of_a_run_agree_with_what_it_stored_evaluated_and_queued(tmp_path):
    totals, store = sample_run(tmp_path)
    activities = stored_activities(tmp_path)
    outcomes = outcome_counts(tmp_path / "run")
    tenants = sorted({tenant for tenant, _ in activities})
    assert tenants == ["acme", "globex", "initech"]
    for tenant in tenants:
        by_type = answers(store, tenant, "events", ["type"])
        assert by_type == {(type_,): n for (t, type_), n in activities.items() if t == tenant}
        fired = answers(store, tenant, "fired", ["campaign", "status"])
        assert fired == {(campaign, "qualified" if qualified else "not_qualified"): n
                         for (t, campaign, qualified), n in outcomes.items() if t == tenant}
        # Hours and days are built from the minutes: the same totals at every granularity,
        # by the attribute too (which only the minutes keep: a query by it reads them).
        by_page = answers(store, tenant, "events", ["type", "attribute"], granularity="minute")
        for granularity in ("minute", "hour", "day"):
            rows = answers(store, tenant, "events", ["type"], granularity=granularity)
            assert sum(rows.values()) == sum(by_type.values())
            assert answers(store, tenant, "events", ["type", "attribute"], granularity=granularity) == by_page
    with open_rollup_store(store) as rollups:
        kept = {granularity: len({row.key.attribute for tenant in tenants
                                  for row in rollups.read(tenant, granularity, *SAMPLES, kind="activity")})
                for granularity in ("minute", "hour", "day")}
    assert kept["minute"] > 1 and kept["hour"] == kept["day"] == 1  # the hours' and days' attribute: ""
    # A bounded run stores its rows as segments: one per tenant-day and granularity.
    with sqlite3.connect(tmp_path / "activities.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM rollups").fetchone()[0] == 0
        segments = dict(connection.execute("SELECT granularity, COUNT(*) FROM rollup_segments GROUP BY granularity"))
        days = connection.execute("SELECT COUNT(DISTINCT tenant || ':' || (occurred_at / 86400000)) "
                                  "FROM activities").fetchone()[0]
        held = connection.execute("SELECT SUM(rows) FROM rollup_segments").fetchone()[0]
    assert segments == {"minute": days, "hour": days, "day": days}
    with open_rollup_store(store) as rollups:
        assert rollups.count() == held > 3 * days
    assert sum(answers(store, tenant, "events", ["source"]).get(("flow",), 0) for tenant in tenants) == \
        totals["flow_activities"]
    assert sum(sum(answers(store, tenant, "emails_queued").values()) for tenant in tenants) == totals["queued_emails"]
    assert sum(sum(answers(store, tenant, "emails_held").values()) for tenant in tenants) == totals["queued_held"]
    assert sum(sum(answers(store, tenant, "webhooks").values()) for tenant in tenants) == totals["queued_webhooks"]
    # Unique leads: the store's distinct leads per tenant, within the sketch's error.
    with sqlite3.connect(tmp_path / "activities.db") as connection:
        leads = dict(connection.execute("SELECT tenant, COUNT(DISTINCT lead_id) FROM activities GROUP BY tenant"))
    for tenant in tenants:
        assert answers(store, tenant, "unique_leads") == {(): leads[tenant]}  # small counts are exact


def test_running_the_same_input_again_counts_nothing_twice(tmp_path):
    _, store = sample_run(tmp_path, "first")
    first = {tenant: answers(store, tenant, "events", ["type", "source"], granularity="minute")
             for tenant in ("acme", "globex", "initech")}
    with open_rollup_store(store) as rollups:
        rows = rollups.count()
    totals, _ = sample_run(tmp_path, "again")
    assert totals.get("evaluated", 0) == 0  # every activity was a duplicate: the leads' profiles have them
    assert {tenant: answers(store, tenant, "events", ["type", "source"], granularity="minute")
            for tenant in first} == first
    with open_rollup_store(store) as rollups:
        assert rollups.count() == rows


RULES = """
tenant: shop
settings:
  activity_types:
    purchase:
      attributes: {amount: number, sku: string}
      indexed_by: sku
campaigns:
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> str:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "shop.yaml").write_text(RULES)
    return str(folder)


def visit(event_id: str, at: int, lead: str = "L1", url: str = "https://shop.example/a") -> dict:
    return {"event_id": event_id, "tenant": "shop", "lead_id": lead, "type": "visit_web_page", "occurred_at": at,
            "attributes": {"url": url}}


def purchase(event_id: str, at: int, lead: str, amount: float) -> dict:
    return {"event_id": event_id, "tenant": "shop", "lead_id": lead, "type": "purchase", "occurred_at": at,
            "attributes": {"amount": amount, "sku": "S-1"}}


def bounded_run(rules_dir: str, store: str, events: list[dict]) -> None:
    with beam.Pipeline() as pipeline:
        activities, dead = (pipeline | "Events" >> beam.Create([json.dumps(e) for e in events])
                            | ParseActivities(rules_dir))
        build_activity_graph(activities, dead, GraphSettings(rules_dir, bounded=True, seed_store_uri=store,
                                                             rollup_store_uri=store),
                             store_sink=WriteActivities(store), profile_sink=WriteProfiles(store))


def test_a_second_run_into_the_same_minute_adds_to_it_and_declared_numbers_are_summed(tmp_path, rules_dir):
    store = f"sqlite:///{tmp_path / 'a.db'}"
    bounded_run(rules_dir, store, [visit("e1", T0 + SECOND, "L1"), purchase("p1", T0 + 2 * SECOND, "L1", 10.5)])
    bounded_run(rules_dir, store, [visit("e2", T0 + 30 * SECOND, "L2"), purchase("p2", T0 + 40 * SECOND, "L2", 4)])
    assert answers(store, "shop", "events", ["type"], granularity="minute", during=AROUND_T0) == {
        ("visit_web_page",): 2, ("purchase",): 2}
    assert answers(store, "shop", "sum:amount", ["attribute"], granularity="hour", during=AROUND_T0) == {("S-1",): 14.5}
    assert answers(store, "shop", "unique_leads", granularity="day", during=AROUND_T0) == {(): 2}
    assert answers(store, "shop", "fired", ["campaign"], during=AROUND_T0) == {("Every visit",): 2}
    with open_rollup_store(store) as rollups:
        visits = rollups.read("shop", "minute", T0, T0 + MINUTE, where={"type": "visit_web_page"})
    # Each run wrote its own row of the minute (writer ids differ); the query merged them.
    assert [row.records for row in visits] == [1, 1] and len({row.writer for row in visits}) == 2


def arriving(event: dict, at_ms: int) -> TimestampedValue:
    return TimestampedValue(json.dumps(event).encode(), at_ms / 1000)


def test_an_activity_late_within_the_allowed_lateness_rewrites_its_minute_and_a_too_late_one_counts_nowhere(
        tmp_path, rules_dir):
    store = f"sqlite:///{tmp_path / 'a.db'}"
    lateness = 10 * SECOND
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(visit("e1", T0 + 5 * SECOND), T0 + 5 * SECOND),
                       arriving(visit("e2", T0 + 20 * SECOND, lead="L2"), T0 + 20 * SECOND)])
        .advance_watermark_to((T0 + 16 * SECOND) / 1000)  # e1 is released and rolled up
        # e3 is behind the watermark but within the allowed lateness: its minute is rewritten.
        .add_elements([arriving(visit("e3", T0 + 8 * SECOND), T0 + 17 * SECOND)])
        .advance_watermark_to((T0 + 45 * SECOND) / 1000)
        # e0 sorts before what lead L1 has evaluated: late, a dead letter.
        .add_elements([arriving(visit("e0", T0 + 1 * SECOND), T0 + 46 * SECOND)])
        .advance_watermark_to((T0 + 2 * HOUR) / 1000)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        activities, dead = pipeline | stream | ParseActivities(rules_dir)
        outputs = build_activity_graph(activities, dead, GraphSettings(
            rules_dir, allowed_lateness_ms=lateness, bounded=False, one_watermark_per_stage=True,
            rollup_store_uri=store))
        late = outputs.dead_letters | beam.Map(lambda letter: (letter.reason, letter.element.get("event_id")))
        assert_that(late, equal_to([("late", "e0")]))
    assert answers(store, "shop", "events", granularity="minute", during=AROUND_T0) == {(): 3}
    assert answers(store, "shop", "unique_leads", granularity="hour", during=AROUND_T0) == {(): 2}
    with open_rollup_store(store) as rollups:
        minute, = rollups.read("shop", "minute", T0, T0 + MINUTE, kind="activity")
        day, = rollups.read("shop", "day", T0 - T0 % DAY, T0 - T0 % DAY + DAY, kind="activity")
    assert minute.version >= 2  # written before e3 came, then rewritten with it
    assert (minute.records, day.records) == (3, 3)


@pytest.mark.parametrize("clock", ["watermark", "data"])
def test_a_streamed_row_expires_with_its_bucket_and_what_comes_later_is_stored_beside_it(tmp_path, rules_dir,
                                                                                         clock):
    """Streaming roll-ups keep a shard's rows until their bucket ends plus the allowed
    lateness and the grace period, by the watermark or by the shard's own newer data; a
    record for a row dropped by then starts a new state with a new writer id: stored
    beside the first row, never over it, and a query adds the two."""
    from orion.activities import Activity
    from orion.transforms.rollups import RollUpAndWrite

    store = f"sqlite:///{tmp_path / 'a.db'}"
    lateness, grace = 10 * SECOND, 0

    def stored(event_id: str, at: int, lead: str) -> TimestampedValue:
        return TimestampedValue(Activity(event_id, "shop", lead, "visit_web_page", at,
                                         {"url": "https://shop.example/a"}), at / 1000)

    stream = TestStream().advance_watermark_to(T0 / 1000).add_elements(
        [stored("e1", T0 + 5 * SECOND, "L1"), stored("e2", T0 + 6 * SECOND, "L2")])
    if clock == "watermark":
        # Past the minute's end plus the allowed lateness: its state is dropped (its
        # hour's, whose bucket is open, stays).
        stream = stream.advance_watermark_to((T0 + MINUTE + lateness + SECOND) / 1000)
    else:
        # The watermark stays; the shard's own data passes the minute's expiry.
        stream = stream.add_elements([stored("e4", T0 + 10 * MINUTE, "L1")])
    stream = stream.add_elements([stored("e3", T0 + 7 * SECOND, "L3")]).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        records = pipeline | stream
        dead = (records,) | RollUpAndWrite(store, rules_dir, allowed_lateness_ms=lateness, grace_ms=grace,
                                           bounded=False)
        assert_that(dead, equal_to([]))
    with open_rollup_store(store) as rollups:
        minutes = rollups.read("shop", "minute", T0, T0 + MINUTE, kind="activity")
        hours = rollups.read("shop", "hour", T0, T0 + HOUR, kind="activity")
    assert sorted(row.records for row in minutes) == [1, 2], "a new row beside the expired one"
    assert len({row.writer for row in minutes}) == 2
    everything = 3 if clock == "watermark" else 4
    assert sum(row.records for row in hours) == everything, "the hour was still open"
    assert answers(store, "shop", "events", granularity="minute", during=AROUND_T0) == {(): everything}
    assert answers(store, "shop", "unique_leads", granularity="day", during=AROUND_T0) == {(): 3}


def test_a_shards_rows_read_back_from_their_state_bytes_and_a_minute_shares_its_days_shard():
    from orion.analytics.rollup import ACTIVITY, FLOW, MINUTE as MINUTE_GRANULARITY
    from orion.transforms.rollups import ShardRows, ShardRowsCoder, lineage_shard

    minute = RollupKey("sh\ud800op", MINUTE_GRANULARITY, T0 + 3 * MINUTE, ACTIVITY, type="visit_web_page",
                       source="input", attribute="shop.example/a")
    flow = RollupKey("shop", MINUTE_GRANULARITY, T0, FLOW, attribute="welcome", campaign="Welcome",
                     status="email_queued")
    parts = {minute: Aggregate(), flow: Aggregate()}
    for lead in ("L1", "L2"):
        parts[minute].add(lead)
    parts[flow].add("L1")
    rows = ShardRows()
    written = rows.merge(parts)
    assert sorted((row.key.granularity, row.aggregate.records) for row in written) == \
        [("day", 1), ("day", 2), ("hour", 1), ("hour", 2), ("minute", 1), ("minute", 2)]
    for row in written:
        assert lineage_shard(row.key) == lineage_shard(minute if row.key.kind == ACTIVITY else flow)
    coder = ShardRowsCoder()
    back = coder.decode(coder.encode(rows))
    assert {key: (state.writer, state.version, state.total.records) for key, state in back.items()} == \
        {key: (state.writer, state.version, state.total.records) for key, state in rows.items()}
    assert round(back[minute].total.estimate()) == 2
    again = back.merge({minute: parts[minute]})  # the same writer, the next version
    assert [(row.key.granularity, row.version, row.aggregate.records) for row in again] == \
        [("minute", 2, 4), ("hour", 2, 4), ("day", 2, 4)]
    with pytest.raises(ValueError, match="newer than this Orion reads"):
        coder.decode(b"\x09" + coder.encode(rows)[1:])


def test_the_query_command_prints_rows_as_json_csv_and_a_table(tmp_path, capsys):
    from orion.cli import main

    store = f"sqlite:///{tmp_path / 'a.db'}"
    with open_rollup_store(store) as rollups:
        rollups.init()
        rows = []
        for minute, type_, leads in ((0, "open_email", ["L1", "L2"]), (0, "visit_web_page", ["L1"]),
                                     (1, "open_email", ["L3"])):
            aggregate = Aggregate()
            for lead in leads:
                aggregate.add(lead)
            rows.append(RollupRow(RollupKey("acme", "minute", T0 + minute * MINUTE, "activity", type=type_,
                                            source="input"), "w", 1, aggregate))
        rollups.write(rows)
    base = ["analytics", "query", "--store", store, "--tenant", "acme", "--from", str(T0), "--to", str(T0 + HOUR)]
    assert main(base + ["--metric", "events", "--by", "type", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(row["type"], row["events"]) for row in printed] == [
        ("open_email", 2), ("visit_web_page", 1), ("open_email", 1)]
    assert all(set(row) == {"time", "type", "events"} for row in printed)
    # `all` over a range that is no whole hour reads the minutes (only minutes were written here).
    assert main(base[:-1] + [str(T0 + 10 * MINUTE), "--metric", "events", "--by", "type", "--granularity", "all",
                             "--top", "1", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "type,events\nopen_email,3\n"
    assert main(base[:-1] + [str(T0 + 10 * MINUTE), "--metric", "unique_leads", "--granularity", "all",
                             "--where", "type=open_email"]) == 0
    table = capsys.readouterr().out
    assert "unique_leads" in table and " 3 " in table and "HyperLogLog" in table
    assert main(base + ["--metric", "events", "--by", "url"]) == 2
    assert "unknown dimension 'url'" in capsys.readouterr().err
