"""The engine-neutral sequencing rules: release order, dedup, its bounded memory, lateness."""
from __future__ import annotations

from orion.activities import Activity
from orion.sequencing import (
    DUPLICATE,
    EMPTY_PROGRESS,
    FUTURE_HORIZON_MS,
    LATE,
    MAX_SEEN_IDS,
    ReplayLateness,
    classify_behind,
    release,
    sorts_before_released,
)

HOUR = 3_600_000


def act(event_id: str, at: int, lead: str = "L") -> Activity:
    return Activity(event_id, "t", lead, "open_email", at, {"email": "x"})


def test_release_orders_by_event_time_then_event_id_and_keeps_the_rest():
    pending = [act("b", 20), act("c", 5), act("a", 20), act("z", 99)]
    ready, rest, duplicates, progress = release(EMPTY_PROGRESS, pending, up_to=20, dedup_span_ms=HOUR)
    assert [a.event_id for a in ready] == ["c", "a", "b"]
    assert [a.event_id for a in rest] == ["z"]
    assert duplicates == 0
    assert progress.released == (20, "b")


def test_release_drops_repeated_event_ids_in_the_batch_and_across_batches():
    ready, _, duplicates, progress = release(EMPTY_PROGRESS, [act("a", 1), act("a", 1), act("b", 2)], None, HOUR)
    assert [a.event_id for a in ready] == ["a", "b"] and duplicates == 1
    ready, _, duplicates, _ = release(progress, [act("b", 2), act("c", 3)], None, HOUR)
    assert [a.event_id for a in ready] == ["c"] and duplicates == 1


def test_dedup_memory_is_bounded_by_the_event_time_span():
    progress = EMPTY_PROGRESS
    for n in range(1000):
        _, _, _, progress = release(progress, [act(f"e{n}", n * HOUR // 10)], None, dedup_span_ms=HOUR)
    # Ten events per hour of event time; the memory keeps about one span's worth.
    assert len(progress.seen) <= 64 + 11
    assert "e999" in progress.seen and "e0" not in progress.seen


def test_a_hot_lead_remembers_only_the_newest_event_ids_and_refuses_older_redeliveries_as_late():
    # Far more activities within one dedup span than ids are remembered.
    burst = [act(f"e{n:06d}", n) for n in range(MAX_SEEN_IDS + 500)]
    ready, _, _, progress = release(EMPTY_PROGRESS, burst, None, dedup_span_ms=24 * HOUR)
    assert len(ready) == len(burst)
    assert len(progress.seen) == MAX_SEEN_IDS
    assert f"e{len(burst) - 1:06d}" in progress.seen and "e000000" not in progress.seen
    # An old redelivery is still refused, visibly: late, not stored again.
    assert sorts_before_released(progress.released, burst[0])
    assert classify_behind(progress, burst[0]) == LATE
    assert classify_behind(progress, burst[-1]) == DUPLICATE


def test_an_event_sorting_before_what_was_evaluated_is_late_unless_it_is_a_redelivery():
    _, _, _, progress = release(EMPTY_PROGRESS, [act("a", 10), act("b", 20)], None, HOUR)
    assert sorts_before_released(progress.released, act("x", 15))
    assert classify_behind(progress, act("x", 15)) == LATE
    assert classify_behind(progress, act("a", 10)) == DUPLICATE
    assert not sorts_before_released(progress.released, act("y", 21))
    assert not sorts_before_released(None, act("y", 0))


def test_replay_lateness_measures_against_the_newest_earlier_line():
    replay = ReplayLateness(allowed_lateness_ms=60_000)
    assert replay.check(act("a", 1_000_000)) is None
    assert replay.check(act("b", 1_000_000 - 60_000)) is None  # exactly the allowed lateness
    assert replay.check(act("c", 1_000_000 - 60_001)) is not None
    assert replay.check(act("d", 2_000_000)) is None
    assert replay.check(act("e", 1_000_000)) is not None  # newest moved on


def test_a_tenants_line_far_in_the_future_does_not_make_another_tenants_lines_late():
    replay = ReplayLateness(allowed_lateness_ms=60_000)
    poison = Activity("bad-clock", "other", "BOT", "open_email", 253_402_300_799_999, {"email": "x"})
    assert replay.check(poison) is None
    assert replay.check(act("a", 1_000_000)) is None  # tenant "t" keeps its own clock
    assert replay.check(act("b", 1_000_000 - 60_000)) is None
    assert replay.check(act("c", 1_000_000 - 60_001)) is not None


def test_a_lone_line_far_in_the_future_does_not_make_its_own_tenants_later_lines_late():
    day = 86_400_000
    replay = ReplayLateness(allowed_lateness_ms=60_000)
    assert replay.check(act("a", 10 * day)) is None
    assert replay.check(act("bad-clock", 253_402_300_799_999)) is None  # passed on, on time
    assert replay.check(act("b", 10 * day + 5_000)) is None, "measured against the clock before the lone line"
    assert replay.check(act("c", 10 * day - 60_001)) is not None, "still late against that clock"
    # A real gap: the next line bears the jump out, and the clock moves with it.
    assert replay.check(act("d", 15 * day)) is None
    assert replay.check(act("e", 15 * day + 1_000)) is None
    assert replay.check(act("f", 15 * day - 60_001)) is not None
    # A jump of less than a day moves the clock at once, as before.
    assert replay.check(act("g", 15 * day + 3_600_000)) is None
    assert replay.check(act("h", 15 * day + 3_600_000 - 60_001)) is not None


def test_lines_dated_past_the_horizon_never_move_their_tenants_clock_however_many():
    day = 86_400_000
    now = 20_000 * day  # the wall clock of this replay
    horizon = now + FUTURE_HORIZON_MS
    replay = ReplayLateness(allowed_lateness_ms=60_000, clock=lambda: now)
    # The tenant's first line and the next are both from a clock years ahead: they bear
    # each other out, but neither can be real, so neither becomes the clock.
    assert replay.check(act("bad-1", 253_402_300_799_999)) is None
    assert replay.check(act("bad-2", 253_402_300_799_000)) is None
    assert replay.check(act("a", now - 3 * day)) is None, "not late against a clock years ahead"
    assert replay.check(act("b", now - 3 * day - 60_001)) is not None, "the real lines keep their clock"
    # Up to the horizon a date is a clock (a file dated a few weeks ahead, a fast device).
    assert replay.check(act("c", horizon - 1)) is None
    assert replay.check(act("d", horizon - 1)) is None
    assert replay.check(act("e", horizon - 60_001 - 1)) is not None
    # A replay that runs past its start: the horizon follows the wall clock.
    now += 10 * day
    assert replay.check(act("f", horizon + 5 * day)) is None
    assert replay.check(act("g", horizon + 5 * day)) is None
    assert replay.check(act("h", horizon + 5 * day - 60_001)) is not None
