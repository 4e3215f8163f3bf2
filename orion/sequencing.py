"""Per-lead ordering, deduplication and lateness, engine-neutral.

A lead's activities are evaluated in event-time order (ties by event id) whatever order
they arrive in. The engine buffers them and releases them once its watermark has passed
their time plus the allowed lateness; these functions decide what is released, and what
is a duplicate or too late:

- a repeated event id of the lead is a duplicate (evaluated and stored once) for as long
  as the dedup span (in event time) since the lead's newest activity;
- an activity that sorts before one the lead has already evaluated can no longer be put
  in order: it is late, and goes to the dead letters with reason `late`.

`ReplayLateness` gives a file, read in order, the lateness a live stream would see: an
activity more than the allowed lateness older than the newest one before it in the file is
late (a line more than a day ahead of its tenant's clock moves the clock only once the
tenant's next line bears it out). Beam and Flink both use it on files, so both refuse the
same lines.

    python -c "from orion.sequencing import *; print(release(EMPTY_PROGRESS, [], None, 1))"
"""
from __future__ import annotations

import time
from typing import Iterable, NamedTuple

from orion.activities import Activity, activity_sort_key, format_timestamp

DEFAULT_ALLOWED_LATENESS_MS = 60_000
DEFAULT_DEDUP_SPAN_MS = 24 * 3_600_000
# At most this many event ids are remembered per lead, the newest kept: a hot lead
# sending a million activities a day must not carry a million ids in its state and
# profile. A redelivery older than all of them sorts before what the lead has released,
# so it is still refused, as `late` (a dead letter) instead of as a duplicate.
MAX_SEEN_IDS = 20_000

DUPLICATE = "duplicate"
LATE = "late"


class LeadProgress(NamedTuple):
    """What the sequencer remembers of one lead's evaluated activities.

    released: (occurred_at, event_id) of the last activity evaluated, or None.
    seen: event id -> occurred_at of the lead's recently evaluated activities, for dedup;
    entries older than the newest minus the dedup span are dropped, and past MAX_SEEN_IDS
    the oldest, so it stays bounded.
    Arrival only needs `released`; `seen` is read when activities are released, or on
    the rare arrival that sorts before `released` (a late event or a redelivery).
    """

    released: tuple[int, str] | None = None
    seen: dict = {}


EMPTY_PROGRESS = LeadProgress()


def sorts_before_released(released: tuple[int, str] | None, activity: Activity) -> bool:
    """Whether `activity` can no longer be put in order: the lead has already evaluated
    an activity that sorts after it. Such an activity is a redelivery or late."""
    return released is not None and activity_sort_key(activity) <= released


def classify_behind(progress: LeadProgress, activity: Activity) -> str:
    """For an activity that sorts before what the lead released: DUPLICATE or LATE."""
    return DUPLICATE if activity.event_id in progress.seen else LATE


def late_detail(activity: Activity, released: tuple[int, str]) -> str:
    at, event_id = released
    return (
        f"occurred at {format_timestamp(activity.occurred_at)}, but lead {activity.lead_id} "
        f"was already evaluated up to {format_timestamp(at)} ({event_id}); raise the allowed "
        "lateness to accept activities this late"
    )


def release(
    progress: LeadProgress, pending: Iterable[Activity], up_to: int | None, dedup_span_ms: int
) -> tuple[list[Activity], list[Activity], int, LeadProgress]:
    """Release a lead's buffered activities up to event time `up_to` (None: all, at the
    end of a bounded input), in order, each event id once.

    Returns (activities to evaluate, activities still buffered, duplicates dropped, new
    progress).
    """
    ordered = sorted(pending, key=activity_sort_key)
    cut = len(ordered)
    if up_to is not None:
        cut = 0
        while cut < len(ordered) and ordered[cut].occurred_at <= up_to:
            cut += 1
    if cut == 0:
        return [], ordered, 0, progress
    seen = dict(progress.seen)
    ready = []
    for activity in ordered[:cut]:
        if activity.event_id in seen:
            continue
        seen[activity.event_id] = activity.occurred_at
        ready.append(activity)
    duplicates = cut - len(ready)
    if ready:
        horizon = ready[-1].occurred_at - dedup_span_ms
        if len(seen) > 64:
            seen = {event_id: at for event_id, at in seen.items() if at >= horizon}
        if len(seen) > MAX_SEEN_IDS:
            newest = sorted(seen.items(), key=lambda item: (item[1], item[0]))[-MAX_SEEN_IDS:]
            seen = dict(newest)
        progress = LeadProgress(activity_sort_key(ready[-1]), seen)
    else:
        progress = progress._replace(seen=seen)
    return ready, ordered[cut:], duplicates, progress


MAX_CLOCK_JUMP_MS = 86_400_000  # a file line this far ahead of its tenant's clock moves it once borne out
# A file line dated this far after the wall clock cannot be real (a clock years ahead, a
# time in microseconds read as milliseconds). A year, not less: test and demo files are
# often dated a little ahead, and a replay should not depend on the day it runs.
FUTURE_HORIZON_MS = 366 * 86_400_000


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class ReplayLateness:
    """Lateness of activities read from a file in order, as a live stream would see it:
    late when more than the allowed lateness older than the newest activity of the same
    tenant before it. Each tenant's lines keep their own clock: a line of one tenant far
    in the future (a bad device clock) cannot make another tenant's lines late.

    Nor its own tenant's:
    - a line dated more than FUTURE_HORIZON_MS (a year) after the wall clock (`clock`,
      epoch ms) cannot be real: it is on time, and never moves its tenant's clock, however
      many such lines come together and whether or not its tenant has a clock yet;
    - a line more than MAX_CLOCK_JUMP_MS ahead of its tenant's clock is on time but moves
      the clock only once the tenant's next line bears it out (is not more than the
      allowed lateness before it). A lone line dated ahead is then passed over, and the
      lines after it are measured against the clock before it; a real gap in a tenant's
      activity (its next line comes after the gap too) moves the clock one line later
      than it would have."""

    def __init__(self, allowed_lateness_ms: int, clock=_wall_clock_ms):
        self.allowed_lateness_ms = allowed_lateness_ms
        self.clock = clock
        self.newest: dict[str, int] = {}  # by tenant
        self.ahead: dict[str, int] = {}  # by tenant: a line far ahead of its clock, not yet borne out
        self._horizon = clock() + FUTURE_HORIZON_MS  # past it, a line's date cannot be real

    def check(self, activity: Activity) -> str | None:
        """None when on time (and remember it), else the dead-letter detail."""
        tenant, at = activity.tenant, activity.occurred_at
        newest = self.newest.get(tenant)
        ahead = self.ahead.pop(tenant, None)
        if ahead is not None and at >= ahead - self.allowed_lateness_ms:
            newest = self.newest[tenant] = ahead  # borne out: the clock moves to it
        if newest is not None and at < newest - self.allowed_lateness_ms:
            return (
                f"occurred at {format_timestamp(at)}, more than the allowed "
                f"lateness ({self.allowed_lateness_ms} ms) before {format_timestamp(newest)}, "
                "the newest activity of its tenant read before it"
            )
        if at > self._horizon:
            self._horizon = self.clock() + FUTURE_HORIZON_MS  # (a replay that runs for days)
            if at > self._horizon:
                return None  # not possible: a wrong clock, never the tenant's
        if newest is not None and at - newest > MAX_CLOCK_JUMP_MS:
            self.ahead[tenant] = at
        elif newest is None or at > newest:
            self.newest[tenant] = at
        return None
