"""Roll-up segments (orion.analytics.segments), with no engine: a bounded run's records
built into segments hold exactly the rows the per-row layout holds (the same keys,
counts, sums and unique leads, at every granularity); a segment of a few leads keeps
their ids and answers as their sketch would; big segments are split in parts; bytes that
are no segment are refused.

    .venv/bin/python -m pytest -q tests/test_analytics_segments.py
"""
from __future__ import annotations

import math
import random

import pytest
from conftest import HOUR, MINUTE, T0, make_activity

from orion.activities import ActivityType, ActivityTypes, AttributeSpec
from orion.analytics import segments
from orion.analytics.rollup import LG_K, LeadIds, PartialRollups, RollupFacts, _ds, merged_estimate
from orion.analytics.segments import (
    COLUMNS, SMALL_LEADS, DayParts, MinuteParts, day_levels, decode_rows, segments_of_day,
    small_estimate,
)
from orion.rules.model import Outcome
from orion.store.rollups_opening import open_rollup_store
from orion.transforms.rollups import ShardRows

DAY = 86_400_000
PURCHASE = ActivityType("purchase", {"amount": AttributeSpec("number"), "sku": AttributeSpec("string")}, "sku")
TYPES = ActivityTypes({"acme": {"purchase": PURCHASE}})


def records(count: int, seed: int = 5) -> list:
    """Activities of a few types, pages and leads over two days (some minutes of many
    leads, most of a few), and outcomes: what a lead step emits."""
    rng = random.Random(seed)
    found = []
    for n in range(count):
        at = T0 - T0 % DAY + rng.choice([rng.randrange(2 * DAY), rng.randrange(3) * MINUTE])
        lead = f"L{rng.randrange(40 if n % 3 else 400)}"
        kind = rng.random()
        if kind < 0.5:
            found.append(make_activity("visit_web_page", lead=lead, at=at, event_id=f"e{n}",
                                       url=f"https://acme.example/p{rng.randrange(5)}"))
        elif kind < 0.8:
            found.append(make_activity("purchase", types=TYPES, lead=lead, at=at, event_id=f"e{n}",
                                       amount=rng.randrange(1, 100) / 4, sku=f"S{rng.randrange(3)}"))
        else:
            found.append(Outcome("acme", lead, f"e{n}", at, f"C{rng.randrange(2)}", 1, rng.random() < 0.5,
                                 "filters", "no"))
    return found


def per_row_layout(found: list) -> dict:
    """{RollupKey: (records, leads estimate, sums)} as the streaming path builds them
    (PartialRollups, then ShardRows: sketches merged level by level)."""
    partial = PartialRollups(RollupFacts(TYPES))
    for record in found:
        partial.add(record)
    rows = ShardRows().merge(dict(partial.drain()))
    return {row.key: (row.aggregate.records, row.aggregate.estimate(), row.aggregate.sums) for row in rows}


def segment_layout(found: list, tmp_path) -> dict:
    """The same records through DayParts, day_levels and segments_of_day, written to and
    read back from a SQLite roll-up store."""
    parts = DayParts(RollupFacts(TYPES))
    for record in found:
        parts.add(record)
    with open_rollup_store(f"sqlite:///{tmp_path / 'segments.db'}") as store:
        store.init()
        for _, minutes in parts.drain():
            done = store.write_segments(segments_of_day(day_levels(minutes), "run"))
            assert not done.refused
        read = {}
        for granularity in ("minute", "hour", "day"):
            for row in store.read("acme", granularity, T0 - T0 % DAY - DAY, T0 - T0 % DAY + 3 * DAY):
                assert row.writer == "run" and row.version == 1
                read[row.key] = (row.records, row.leads, row.sums)
        assert store.count() == len(read)
    return read


def test_segments_hold_the_rows_the_per_row_layout_holds_at_every_granularity(tmp_path):
    found = records(3000)
    expected = per_row_layout(found)
    stored = segment_layout(found, tmp_path)
    assert set(stored) == set(expected)
    assert {key.granularity for key in stored} == {"minute", "hour", "day"}
    assert any(count > SMALL_LEADS for _, count, _ in stored.values())  # rows of both forms
    for key, (count, leads, sums) in expected.items():
        got_count, got_leads, got_sums = stored[key]
        assert got_count == count and got_sums == pytest.approx(sums)
        assert math.isclose(got_leads, leads, rel_tol=1e-12), key


def test_a_row_of_a_few_leads_keeps_their_ids_and_merges_as_their_sketch_would():
    minutes = MinuteParts({("acme", "minute", T0, "activity", "open_email", "input", "news", "", "", ""):
                           [3, {"L2", "L1"}, None]})
    row, = decode_rows(segments_of_day(day_levels(minutes), "w")[0].data)
    fields = dict(zip(COLUMNS, row))
    assert type(fields["sketch"]) is LeadIds and fields["sketch"] == ("L1", "L2")
    assert (fields["records"], fields["leads"]) == (3, small_estimate(2))
    sketch = _ds.hll_sketch(LG_K, _ds.HLL_4)
    for lead in ("L1", "L2", "L3"):
        sketch.update(lead)
    other = _ds.hll_sketch(LG_K, _ds.HLL_4)
    other.update("L3")
    assert merged_estimate([fields["sketch"], other.serialize_compact()])[0] == sketch.get_estimate()
    for count in range(1, SMALL_LEADS + 1):
        real = _ds.hll_sketch(LG_K, _ds.HLL_4)
        for n in range(count):
            real.update(f"lead-{n}")
        assert small_estimate(count) == real.get_estimate()


def test_building_hours_and_days_leaves_each_minute_its_own_leads():
    key = ("acme", "minute", T0, "activity", "visit_web_page", "input", "a.example/", "", "", "")
    minutes = MinuteParts({key: [2, {"L1", "L2"}, None], key[:2] + (T0 + MINUTE,) + key[3:]: "L3"})
    levels = day_levels(minutes)
    assert minutes[key] == [2, {"L1", "L2"}, None]
    (hour_key, hour), = levels["hour"].items()
    assert hour_key[6] == "" and hour[:2] == [3, {"L1", "L2", "L3"}]
    (_, day), = levels["day"].items()
    assert day[:2] == [3, {"L1", "L2", "L3"}]


def test_a_big_segment_is_split_in_parts_and_read_back_whole(tmp_path):
    minutes = MinuteParts({("acme", "minute", T0 + (n % 60) * MINUTE, "activity", "visit_web_page", "input",
                            f"a.example/{n}", "", "", ""): f"L{n}" for n in range(30)})
    built = segments_of_day(day_levels(minutes), "w", max_rows=7)
    day = T0 - T0 % DAY
    parts = [(s.bucket, s.part, s.rows, (s.first - T0) // MINUTE, (s.last - T0) // MINUTE)
             for s in built if s.granularity == "minute"]
    assert parts == [(day, 0, 7, 0, 6), (day, 1, 7, 7, 13), (day, 2, 7, 14, 20), (day, 3, 7, 21, 27),
                     (day, 4, 2, 28, 29)]
    with open_rollup_store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        store.init()
        assert store.write_segments(built).written == len(built)
        assert sorted(row.key.attribute for row in store.read("acme", "minute", T0, T0 + HOUR)) == sorted(
            f"a.example/{n}" for n in range(30))
        # A range inside one part reads that part's rows of the range, and only them.
        assert [row.key.attribute for row in store.read("acme", "minute", T0 + 12 * MINUTE, T0 + 15 * MINUTE)] == [
            "a.example/12", "a.example/13", "a.example/14"]
        assert len(store._segments("acme", "minute", T0 + 12 * MINUTE, T0 + 14 * MINUTE)) == 1  # minutes 7 to 13
        assert len(store._segments("acme", "minute", T0 + 12 * MINUTE, T0 + 15 * MINUTE)) == 2


def test_bytes_that_are_no_segment_are_refused():
    data = segments_of_day(day_levels(MinuteParts({("acme", "minute", T0, "activity", "open_email", "input", "n",
                                                    "", "", ""): "L1"})), "w")[0].data
    assert len(decode_rows(data)) == 1
    with pytest.raises(ValueError, match="not a roll-up segment"):
        decode_rows(b"[1, 2]")
    with pytest.raises(ValueError, match="newer than this Orion reads"):
        decode_rows(segments.SEGMENT_MAGIC + b"\x09" + data[4:])
    with pytest.raises(ValueError, match="damaged"):
        decode_rows(data[:-3])
    with pytest.raises(ValueError, match="damaged"):
        decode_rows(data[:-3] + b"}}}")


def test_a_refused_segment_becomes_one_dead_letter_element_per_row():
    from orion.store.rollups_base import segment_elements

    minutes = MinuteParts({("acme", "minute", T0 + n * MINUTE, "activity", "open_email", "input", f"e{n}", "", "", ""):
                           [2, {"L1", "L2"}, {"amount": 2.5}] if n else "L0" for n in range(3)})
    segment = segments_of_day({"minute": minutes}, "run")[0]
    elements = segment_elements(segment)
    assert [(element["key"]["bucket"] - T0, element["key"]["attribute"], element["records"], element["sums"])
            for element in elements] == [(0, "e0", 1, {}), (MINUTE, "e1", 2, {"amount": 2.5}),
                                         (2 * MINUTE, "e2", 2, {"amount": 2.5})]
    assert {element["writer"] for element in elements} == {"run"}
    assert elements[0]["key"]["tenant"] == "acme" and elements[0]["key"]["granularity"] == "minute"


def test_minute_parts_cross_between_steps_as_the_same_rows():
    from orion.transforms.rollups import MinutePartsCoder

    parts = DayParts(RollupFacts(TYPES))
    for record in records(400):
        parts.add(record)
    coder = MinutePartsCoder()
    for _, minutes in parts.drain():
        rows = coder.decode(coder.encode(minutes))
        assert dict(zip(rows.keys, rows.parts)) == minutes
        again = coder.decode(coder.encode(rows))  # what the runner decoded, encoded again
        assert again == rows
    assert coder.decode(coder.encode(MinuteParts())) == ([], [])
