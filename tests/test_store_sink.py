"""WriteActivities on its own, over the embedded SQLite store: where the dead letters of
refused rows land in event time and in windows, for global-window input (what the graph
gives it) and for windowed input.

    .venv/bin/python -m pytest -q tests/test_store_sink.py
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue

from orion.activities import Activity
from orion.store import open_store
from orion.store.base import UNSTORABLE
from orion.transforms.sinks import WriteActivities

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z
MINUTE = 60_000


def visits() -> list[Activity]:
    """Six visits a minute apart; the fourth has attributes no store can hold."""
    found = [Activity(f"e{n}", "shop", "L1", "visit_web_page", T0 + n * MINUTE, {"url": f"/p{n}"}) for n in range(6)]
    found[3] = found[3]._replace(attributes={"url": "/p3", "score": float("nan")})
    return found


class _WhereItLands(beam.DoFn):
    def process(self, dead_letter, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        yield (dead_letter.element["event_id"], dead_letter.reason, timestamp.micros // 1000,
               None if isinstance(window, GlobalWindow) else window.start.micros // 1000)


def run_sink(tmp_path, window_minutes: int | None) -> None:
    uri = f"sqlite:///{tmp_path / 'activities.db'}"
    with beam.Pipeline() as pipeline:
        activities = (pipeline
                      | beam.Create(visits())
                      | "AtEventTime" >> beam.Map(lambda a: TimestampedValue(a, a.occurred_at / 1000)))
        if window_minutes is not None:
            activities = activities | beam.WindowInto(FixedWindows(window_minutes * 60))
        refused = activities | WriteActivities(uri, batch_size=4)
        expected_window = None if window_minutes is None else T0 + 2 * MINUTE  # [T0+2m, T0+4m)
        assert_that(refused | beam.ParDo(_WhereItLands()),
                    equal_to([("e3", UNSTORABLE, T0 + 3 * MINUTE, expected_window)]))
    with open_store(uri) as store:
        assert [a.event_id for a in store.history("shop", "L1")] == ["e5", "e4", "e2", "e1", "e0"]


def test_a_refused_row_of_global_window_input_lands_at_its_event_time(tmp_path):
    run_sink(tmp_path, None)


def test_a_refused_row_of_windowed_input_lands_in_its_own_window(tmp_path):
    run_sink(tmp_path, 2)


def test_a_profile_the_store_cannot_hold_is_a_dead_letter_and_the_others_are_written(tmp_path):
    """WriteProfiles with a real SQLite store: a profile whose next_wake no store can hold
    is refused alone, as a dead letter, and the job goes on; the other is written."""
    from orion.store import StoredProfile
    from orion.transforms.sinks import WriteProfiles

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    good = StoredProfile("acme", "L1", '{"version": 2}', None)
    bad = StoredProfile("acme", "L2", '{"version": 2}', 10 ** 20)
    with beam.Pipeline() as pipeline:
        refused = pipeline | beam.Create([good, bad]) | WriteProfiles(uri)
        assert_that(refused | beam.Map(lambda d: (d.reason, d.source, d.element["lead_id"])),
                    equal_to([("unstorable", "store", "L2")]))
    with open_store(uri) as store:
        assert store.read_profiles([("acme", "L1"), ("acme", "L2")]) == ['{"version": 2}', None]
