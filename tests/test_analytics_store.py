"""The roll-up store contract: one suite, run unchanged against every backend (SQLite,
MySQL on the session's MariaDB, Bigtable on its emulator), each started by the tests
(tests/store_services.py). Rows are upserted by version, writers side by side, read back
by tenant, granularity and time range.

    .venv/bin/python -m pytest -q tests/test_analytics_store.py
"""
from __future__ import annotations

import pytest
from conftest import DAY, HOUR, MINUTE, T0
from store_services import bigtable_uri, mysql_uri

from orion.analytics.rollup import ACTIVITY, FLOW, Aggregate, LeadIds, RollupKey, RollupRow, merged_estimate
from orion.analytics.segments import MinuteParts, day_levels, segments_of_day
from orion.store.base import StoreError
from orion.store.rollups_opening import open_rollup_store, rollup_store_uri

BACKENDS = ("sqlite", "mysql", "bigtable")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """An initialized, empty roll-up store of each backend."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'activities.db'}"
    elif request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        uri = bigtable_uri()
    else:
        database = request.getfixturevalue("mysql_database")
        uri = mysql_uri(database)
    opened = open_rollup_store(uri)
    opened.init()
    yield opened
    if request.param == "mysql":
        connection = request.getfixturevalue("mysql_server").connect(database)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS rollups")
            cursor.execute("DROP TABLE IF EXISTS rollup_segments")
        connection.close()
    opened.close()


def aggregate(*leads: str, **sums) -> Aggregate:
    found = Aggregate()
    for lead in leads:
        found.add(lead, sums or None)
    return found


def key(minute: int = 0, granularity: str = "minute", tenant: str = "acme", **dimensions) -> RollupKey:
    dimensions = dimensions or {"type": "visit_web_page", "source": "input", "attribute": "acme.example/pricing"}
    return RollupKey(tenant, granularity, T0 + minute * MINUTE, dimensions.pop("kind", ACTIVITY), **dimensions)


def day_segments(*rows, writer: str = "s1", version: int = 1, tenant: str = "acme"):
    """A tenant-day's segments (minutes, hours, day) of (minute, type, page, leads) rows."""
    minutes = MinuteParts()
    for minute, type_, page, leads in rows:
        row_key = (tenant, "minute", T0 + minute * MINUTE, ACTIVITY, type_, "input", page, "", "", "")
        minutes.merge({row_key: leads[0] if len(leads) == 1 else [len(leads), set(leads), None]})
    return segments_of_day(day_levels(minutes), writer, version)


def figures(rows):
    return sorted((row.key.bucket, row.writer, row.version, row.records, round(row.leads), row.sums) for row in rows)


def test_a_row_written_is_read_back_with_its_metrics_and_sketch(store):
    row = RollupRow(key(3), "w1", 1, aggregate("L1", "L2", "L1", amount=2.5))
    assert store.write([row]).written == 1
    found, = store.read("acme", "minute", T0, T0 + HOUR)
    assert (found.key, found.writer, found.version, found.records, found.sums) == (row.key, "w1", 1, 3, {"amount": 7.5})
    assert round(found.leads) == 2
    assert Aggregate(found.records, None, found.sums).records == 3
    assert Aggregate.decode(row.aggregate.encode()).sketch_bytes() == found.sketch
    assert store.count() == 1


def test_a_higher_version_replaces_the_row_and_a_lower_or_equal_one_changes_nothing(store):
    store.write([RollupRow(key(), "w1", 2, aggregate("L1", "L2"))])
    store.write([RollupRow(key(), "w1", 1, aggregate("L1"))])  # an older write arriving late
    store.write([RollupRow(key(), "w1", 2, aggregate("L1", "L2"))])  # a replayed write
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "w1", 2, 2, 2, {})]
    store.write([RollupRow(key(), "w1", 3, aggregate("L1", "L2", "L3"))])  # a late activity's new version
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "w1", 3, 3, 3, {})]
    assert store.count() == 1


def test_the_highest_version_of_a_batch_wins_whatever_its_order(store):
    rows = [RollupRow(key(), "w1", version, aggregate(*[f"L{i}" for i in range(version)])) for version in (3, 1, 2)]
    store.write(rows)
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "w1", 3, 3, 3, {})]


def test_rows_of_two_writers_are_kept_side_by_side(store):
    store.write([RollupRow(key(), "w1", 1, aggregate("L1")), RollupRow(key(), "w2", 4, aggregate("L2"))])
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "w1", 1, 1, 1, {}), (T0, "w2", 4, 1, 1, {})]


def test_reads_take_one_tenant_granularity_and_time_range_in_time_order(store):
    store.write([
        RollupRow(key(5), "w", 1, aggregate("L1")),
        RollupRow(key(0), "w", 1, aggregate("L2")),
        RollupRow(key(60), "w", 1, aggregate("L3")),  # the next hour: outside
        RollupRow(key(-1), "w", 1, aggregate("L4")),  # before: outside
        RollupRow(key(0, tenant="globex"), "w", 1, aggregate("L5")),
        RollupRow(key(0, granularity="hour"), "w", 1, aggregate("L6")),
    ])
    found = store.read("acme", "minute", T0, T0 + HOUR)
    assert [row.key.bucket for row in found] == [T0, T0 + 5 * MINUTE]
    assert [row.key.granularity for row in store.read("acme", "hour", T0, T0 + DAY)] == ["hour"]
    assert [row.key.tenant for row in store.read("globex", "minute", T0, T0 + HOUR)] == ["globex"]


def test_reads_filter_by_kind_and_dimension_values_and_may_leave_sketches_out(store):
    email = key(kind=FLOW, campaign="Welcome", status="email_queued", attribute="welcome")
    held = key(kind=FLOW, campaign="Welcome", status="email_held", reason="unsubscribed", attribute="welcome")
    store.write([RollupRow(key(), "w", 1, aggregate("L1")), RollupRow(email, "w", 1, aggregate("L1", "L2")),
                 RollupRow(held, "w", 1, aggregate("L3"))])
    assert [row.key for row in store.read("acme", "minute", T0, T0 + MINUTE, kind=FLOW,
                                          where={"status": "email_held"})] == [held]
    assert len(store.read("acme", "minute", T0, T0 + MINUTE, kind=ACTIVITY)) == 1
    bare = store.read("acme", "minute", T0, T0 + MINUTE, kind=FLOW, where={"status": "email_queued"},
                      sketches=False)
    assert [(row.sketch, row.records, round(row.leads)) for row in bare] == [(b"", 2, 2)]
    with pytest.raises(ValueError, match="unknown dimension"):
        store.read("acme", "minute", T0, T0 + MINUTE, where={"url": "x"})


def test_scans_pick_columns_and_order_each_bucket_by_the_dimensions_asked(store):
    rows = [RollupRow(key(minute, type=type_, source="input", attribute=page, campaign=campaign), "w", 1,
                      aggregate(*leads))
            for minute, type_, page, campaign, leads in (
                (1, "open_email", "x", "b", ["L1"]), (0, "visit_web_page", "b", "a", ["L1", "L2"]),
                (0, "visit_web_page", "a", "c", ["L3"]), (0, "open_email", "z", "b", ["L4"]))]
    store.write(rows)
    assert store.scan("acme", "minute", T0, T0 + HOUR, ("bucket", "type", "attribute", "records"), kind=ACTIVITY,
                      order=("type", "attribute")) == [
        (T0, "open_email", "z", 1), (T0, "visit_web_page", "a", 1), (T0, "visit_web_page", "b", 2),
        (T0 + MINUTE, "open_email", "x", 1)]
    by_campaign = store.scan("acme", "minute", T0, T0 + HOUR, ("bucket", "campaign", "leads"), kind=ACTIVITY,
                             order=("campaign",))
    assert [(bucket, campaign, round(leads)) for bucket, campaign, leads in by_campaign] == [
        (T0, "a", 2), (T0, "b", 1), (T0, "c", 1), (T0 + MINUTE, "b", 1)]
    with pytest.raises(ValueError, match="cannot order by"):
        store.scan("acme", "minute", T0, T0 + HOUR, ("bucket",), order=("records",))


ODD = ["a#b", "a%23b", "a/b", "ünï©ødé", "😀", "a b", "'; DROP TABLE rollups; --", ""]


def test_odd_dimension_values_and_tenants_round_trip(store):
    rows = [RollupRow(key(i, tenant="t#1", type=value, attribute=value, campaign=value), "w", 1, aggregate("L"))
            for i, value in enumerate(ODD)]
    assert store.write(rows).written == len(ODD)
    found = store.read("t#1", "minute", T0, T0 + HOUR)
    assert [(row.key.type, row.key.attribute, row.key.campaign) for row in found] == [(v, v, v) for v in ODD]


def test_a_row_no_store_can_hold_is_refused_and_the_rest_written(store):
    good = RollupRow(key(), "w", 1, aggregate("L1"))
    bad = RollupRow(key(tenant="bad\ud800tenant"), "w", 1, aggregate("L2"))
    done = store.write([good, bad])
    assert done.written == 1
    assert [row for row, _ in done.refused] == [bad]
    assert store.count() == 1


def test_init_is_safe_to_rerun_and_keeps_the_rows(store):
    store.write([RollupRow(key(), "w", 1, aggregate("L1"))])
    store.init()
    assert store.count() == 1


def test_a_store_without_tables_says_to_run_init(tmp_path):
    store = open_rollup_store(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError, match="orion store init"):
        store.read("acme", "minute", T0, T0 + HOUR)
    store.close()


def test_roll_ups_of_a_migrating_run_go_to_its_new_store():
    from orion.store.migrating import migration_store_uri

    uri = migration_store_uri("passive", "mysql://root@127.0.0.1:3306/legacy", "sqlite:///new.db", "/tmp/report")
    assert rollup_store_uri(uri) == "sqlite:///new.db"
    assert rollup_store_uri("sqlite:///a.db") == "sqlite:///a.db"
    assert rollup_store_uri("hbase://127.0.0.1:9090/activities") is None  # no roll-up tables there: none kept
    with pytest.raises(StoreError, match="no roll-up store"):
        open_rollup_store("postgres://x/y")


def test_the_roll_ups_of_a_migrating_store_are_read_through_its_uri(tmp_path):
    """`orion analytics query|serve --store migrating://...` (the run's own URI) reads the
    roll-ups the run wrote to its new store."""
    from orion.store.migrating import migration_store_uri

    new = f"sqlite:///{tmp_path / 'new.db'}"
    with open_rollup_store(new) as store:
        store.init()
        store.write([RollupRow(key(0), "w1", 1, aggregate("L1"))])
    # The legacy store is never opened: only the new store's roll-ups are read.
    uri = migration_store_uri("active", "mysql://root@legacy.invalid/legacy", new, str(tmp_path / "report"))
    with open_rollup_store(uri) as store:
        assert [stored.records for stored in store.read("acme", "minute", T0, T0 + HOUR)] == [1]
    hbase_new = migration_store_uri("passive", "mysql://root@legacy.invalid/legacy",
                                    "hbase://127.0.0.1:9090/activities", str(tmp_path / "report"))
    with pytest.raises(StoreError, match="keeps no roll-ups"):
        open_rollup_store(hbase_new)


# --- segments: a bounded run's rows, stored by tenant-day (orion.analytics.segments) ---


BIG = [f"L{n}" for n in range(20)]  # more leads than a row keeps the ids of: a sketch


def test_segments_are_read_back_row_by_row_beside_the_rows_stored_one_by_one(store):
    segments = day_segments((0, "visit_web_page", "a.example/x", ["L1", "L2"]), (1, "visit_web_page", "a.example/y",
                            ["L1"]), (61, "open_email", "", BIG))
    assert store.write_segments(segments).written == 3  # minutes, hours, day
    store.write([RollupRow(key(0, type="visit_web_page", source="input", attribute="a.example/a"), "w", 2,
                           aggregate("L9"))])
    minutes = store.read("acme", "minute", T0, T0 + 2 * HOUR)
    assert [(row.key.bucket - T0, row.key.attribute, row.writer, row.version, row.records, round(row.leads))
            for row in minutes] == [(0, "a.example/a", "w", 2, 1, 1), (0, "a.example/x", "s1", 1, 2, 2),
                                    (MINUTE, "a.example/y", "s1", 1, 1, 1), (61 * MINUTE, "", "s1", 1, 20, 20)]
    assert round(Aggregate(0, None).merge(_with_sketch(minutes[1])).estimate()) == 2  # a sketch built from the ids
    hours = store.read("acme", "hour", T0, T0 + 2 * HOUR, where={"type": "visit_web_page"})
    assert [(row.key.attribute, row.records, round(row.leads)) for row in hours] == [("", 3, 2)]
    day, = store.read("acme", "day", T0 - T0 % DAY, T0 - T0 % DAY + DAY, kind=ACTIVITY, where={"type": "open_email"})
    assert (day.records, round(day.leads)) == (20, 20) and day.sketch
    assert store.count() == 3 + 2 + 2 + 1  # the minutes, hours and days of the segments, and the row


def _with_sketch(row) -> Aggregate:
    found = Aggregate(row.records, None, row.sums)
    found._compact = row.sketch
    return found


def test_scans_of_segments_pick_columns_and_merge_them_in_order_with_the_rows(store):
    store.write_segments(day_segments((0, "visit_web_page", "b", ["L1"]), (0, "open_email", "z", ["L2", "L3"]),
                                      (2, "visit_web_page", "a", ["L4"])))
    store.write([RollupRow(key(1, type="visit_web_page", source="input", attribute="c"), "w", 1, aggregate("L5"))])
    assert store.scan("acme", "minute", T0, T0 + HOUR, ("bucket", "type", "attribute", "records"), kind=ACTIVITY,
                      order=("type", "attribute")) == [
        (T0, "open_email", "z", 2), (T0, "visit_web_page", "b", 1), (T0 + MINUTE, "visit_web_page", "c", 1),
        (T0 + 2 * MINUTE, "visit_web_page", "a", 1)]
    # Ordered by a dimension it does not return; writers and sketches (ids for a few leads) on request.
    assert store.scan("acme", "minute", T0, T0 + MINUTE, ("records", "writer"), order=("attribute",)) == [
        (1, "s1"), (2, "s1")]
    sketches = store.scan("acme", "minute", T0, T0 + HOUR, ("attribute", "sketch"), where={"type": "open_email"})
    assert sketches == [("z", LeadIds(("L2", "L3")))] and merged_estimate([sketches[0][1]])[0] == pytest.approx(2)
    assert store.scan("acme", "minute", T0, T0 + HOUR, ("bucket",), kind=FLOW) == []
    assert store.scan("acme", "minute", T0, T0 + HOUR, ("bucket",), where={"type": "nothing"}) == []


def test_a_segment_is_replaced_only_by_a_higher_version(store):
    store.write_segments(day_segments((0, "open_email", "", ["L1"]), version=2))
    store.write_segments(day_segments((0, "open_email", "", ["L1", "L2", "L3"]), version=1))  # older, late
    store.write_segments(day_segments((0, "open_email", "", ["L1"]), version=2))  # replayed
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "s1", 2, 1, 1, {})]
    store.write_segments(day_segments((0, "open_email", "", ["L1", "L2"]), version=3))
    assert figures(store.read("acme", "minute", T0, T0 + MINUTE)) == [(T0, "s1", 3, 2, 2, {})]
    store.write_segments(day_segments((0, "open_email", "", ["L7"]), writer="s2"))  # another run: beside it
    assert [row.writer for row in store.read("acme", "minute", T0, T0 + MINUTE)] == ["s1", "s2"]
    assert store.count() == 2 * 3


def test_segments_are_read_by_tenant_granularity_and_range(store):
    store.write_segments(day_segments((0, "open_email", "", ["L1"]), (5, "open_email", "", ["L2"])))
    store.write_segments(day_segments((0, "open_email", "", ["L3"]), tenant="globex"))
    store.write_segments(day_segments((24 * 60, "open_email", "", ["L4"])))  # the next day
    assert [row.key.bucket - T0 for row in store.read("acme", "minute", T0 + MINUTE, T0 + HOUR)] == [5 * MINUTE]
    assert [row.key.bucket - T0 for row in store.read("acme", "minute", T0, T0 + 2 * DAY)] == [0, 5 * MINUTE, DAY]
    assert [row.records for row in store.read("globex", "minute", T0, T0 + HOUR)] == [1]
    assert [row.records for row in store.read("acme", "hour", T0, T0 + HOUR)] == [2]
    assert store.read("acme", "minute", T0 - HOUR, T0) == []


def test_a_segment_no_store_can_hold_is_refused_and_the_rest_written(store):
    good = day_segments((0, "open_email", "", ["L1"]))
    bad = day_segments((0, "open_email", "", ["L2"]), tenant="bad\ud800tenant")
    done = store.write_segments(good + bad)
    assert done.written == len(good)
    assert sorted(segment for segment, _ in done.refused) == sorted(bad)
    assert store.count() == 3
