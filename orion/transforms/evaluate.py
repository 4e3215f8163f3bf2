"""Per-lead ordering and trigger evaluation: `KeyByLead` and `SequenceAndEvaluate`.

SequenceAndEvaluate is a stateful DoFn keyed by (tenant, lead). It buffers a lead's
activities and, when the watermark passes their time plus the allowed lateness, releases
them in event-time order (ties by event id) into the core evaluator. Deduplication and
lateness are the core's (`orion.sequencing`), lead state is the core's `LeadState`: the
DoFn only loads state, calls the core, stores state and emits.

Deduplication lives here rather than in a stage of its own: a duplicate delivery carries
the same lead, so the per-lead state can recognise it, and the graph saves a whole shuffle
keyed by event id.

    orion run
"""
from __future__ import annotations

import threading
import uuid
from typing import Any, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.activities import Activity
from orion.deadletters import DeadLetter
from orion.rules import evaluate
from orion.runtime import tune_gc
from orion.seeding import open_initialised_store, seed_state, seed_states
from orion.sequencing import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_DEDUP_SPAN_MS,
    DUPLICATE,
    LATE,
    LeadProgress,
    classify_behind,
    late_detail,
    release as release_ready,
    sorts_before_released,
)
from orion.transforms.intake import DEAD, METRICS_NAMESPACE

STORE = "store"
# Bounded input: one timer per lead at the end of the global window releases everything.
_END_OF_INPUT = GlobalWindow().max_timestamp()
_GLOBAL = (GlobalWindow(),)
# Bounded input: leads seeded from the store together (see _EvaluateLeadsFn).
SEED_BATCH = 200


class _WatermarkFloor:
    """The latest event-time timer fired so far in this process, per sequencing stage.

    A Python DoFn cannot read the watermark, but an event-time timer firing at T proves
    the input watermark has passed T. Without this, a timer that fires at T releases
    only what is due by T and sets the next timer at the next activity: a lead holding k
    activities already behind the watermark (a backlog after a restart, a replay) needed
    k timer rounds, one activity each.

    How far that proof reaches depends on the runner. Within one bundle it holds for
    every key of the bundle (one watermark delivered them all): always used. Across the
    whole process it holds only where a stage has one input watermark for all its keys,
    as on Beam's bundle-based DirectRunner (the local streaming runner, one process):
    there a timer releases everything due by the latest time any timer of the stage has
    fired at, so a backlog drains in a round or two. Runners with a watermark per
    parallel instance (Beam on Flink) must not share it; `one_watermark_per_stage` on
    SequenceAndEvaluate says which applies.
    Runners copy a DoFn per bundle or per thread, so the shared floor lives here, keyed
    by the stage's id, which the copies share."""

    _lock = threading.Lock()
    _floors: dict[str, int] = {}

    @classmethod
    def raise_to(cls, stage: str, fired_ms: int) -> int:
        with cls._lock:
            floor = max(cls._floors.get(stage, fired_ms), fired_ms)
            cls._floors[stage] = floor
            return floor


class KeyByLead(beam.PTransform):
    """Activity -> ((tenant, lead_id), Activity)."""

    def expand(self, activities):
        # A declared key type gives a deterministic key coder, which state requires.
        return activities | "KeyByTenantAndLead" >> beam.Map(
            lambda a: ((a.tenant, a.lead_id), a)
        ).with_output_types(Tuple[Tuple[str, str], Any])


class _SequenceAndEvaluateFn(beam.DoFn):
    """Buffers each lead's activities and evaluates them in event-time order.

    State, per (tenant, lead):
      PENDING   bag of arrived activities not yet evaluated;
      RELEASED  (occurred_at, event_id) of the last activity evaluated: read on every
                arrival, so it is kept apart from the larger SEEN;
      SEEN      event id -> occurred_at of recently evaluated activities (dedup);
      LEAD      orion.rules.LeadState: attributes, score, lists, campaign runs, history;
      DUE       the time the RELEASE timer is set for, so it is only ever moved earlier.
    Timer:
      RELEASE   event time; fires when the watermark passes the earliest buffered
                activity plus the allowed lateness (bounded input: once, at the end),
                and releases everything the watermark is known to have passed by then
                (see _WatermarkFloor).
    Outputs: outcomes (main), activities to store (STORE), dead letters (DEAD).
    """

    PENDING = BagStateSpec("pending", PickleCoder())
    RELEASED = ReadModifyWriteStateSpec("released", PickleCoder())
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
    LEAD = ReadModifyWriteStateSpec("lead", PickleCoder())
    DUE = ReadModifyWriteStateSpec("due", PickleCoder())
    RELEASE = TimerSpec("release", TimeDomain.WATERMARK)

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], allowed_lateness_ms: int,
                 dedup_span_ms: int, bounded: bool, seed_store_uri: str | None = None,
                 one_watermark_per_stage: bool = False):
        self.rules_dir = rules_dir
        self.one_watermark_per_stage = one_watermark_per_stage
        self.seed_store_uri = seed_store_uri
        self.template_dirs = template_dirs
        self.allowed_lateness_ms = allowed_lateness_ms
        self.dedup_span_ms = dedup_span_ms
        self.bounded = bounded
        self.stage_id = uuid.uuid4().hex  # shared by the runner's copies of this DoFn
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")
        self.late = Metrics.counter(METRICS_NAMESPACE, "dead_letters:late")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.evaluated = Metrics.counter(METRICS_NAMESPACE, "evaluated")
        self.outcomes = Metrics.counter(METRICS_NAMESPACE, "outcomes")
        self.qualified = Metrics.counter(METRICS_NAMESPACE, "qualified")
        self.seeded = Metrics.counter(METRICS_NAMESPACE, "leads_seeded_from_store")

    def setup(self) -> None:
        from orion.transforms import state_sizing
        from orion.rules.shared import shared_rules

        state_sizing.install()
        tune_gc()
        self.rules = shared_rules(self.rules_dir, self.template_dirs)
        self.seed_store = open_initialised_store(self.seed_store_uri)

    def teardown(self) -> None:
        store = getattr(self, "seed_store", None)
        if store is not None:
            store.close()

    def start_bundle(self) -> None:
        self.bundle_floor_ms = None  # the latest timer fired in this bundle

    def process(
        self,
        element: tuple[tuple[str, str], Activity],
        pending=beam.DoFn.StateParam(PENDING),
        released=beam.DoFn.StateParam(RELEASED),
        seen=beam.DoFn.StateParam(SEEN),
        due=beam.DoFn.StateParam(DUE),
        release=beam.DoFn.TimerParam(RELEASE),
    ):
        _, activity = element
        # Bounded input releases each lead once, after its last arrival: nothing is
        # released yet, so there is nothing an arrival could sort before.
        last = None if self.bounded else released.read()
        if last is not None and sorts_before_released(last, activity):
            progress = LeadProgress(last, seen.read() or {})
            if classify_behind(progress, activity) == DUPLICATE:
                self.duplicates.inc()
                return
            self.late.inc()
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD, DeadLetter(activity.to_json_dict(), LATE, late_detail(activity, last), "sequencer"))
            return
        pending.add(activity)
        when = _END_OF_INPUT if self.bounded else _at(activity.occurred_at + self.allowed_lateness_ms)
        current = due.read()
        if current is None or when < current:
            release.set(when)
            due.write(when)

    @on_timer(RELEASE)
    def on_release(
        self,
        fired=beam.DoFn.TimestampParam,
        pending=beam.DoFn.StateParam(PENDING),
        released=beam.DoFn.StateParam(RELEASED),
        seen=beam.DoFn.StateParam(SEEN),
        lead=beam.DoFn.StateParam(LEAD),
        due=beam.DoFn.StateParam(DUE),
        release=beam.DoFn.TimerParam(RELEASE),
    ):
        up_to = None if self.bounded else self._watermark_floor(fired.micros // 1000) - self.allowed_lateness_ms
        before = LeadProgress(released.read(), seen.read() or {})
        ready, rest, duplicates, after = release_ready(before, pending.read(), up_to, self.dedup_span_ms)
        pending.clear()
        for activity in rest:
            pending.add(activity)
        if duplicates:
            self.duplicates.inc(duplicates)
        if after is not before:
            released.write(after.released)
            seen.write(after.seen)
        if ready:
            state = yield from self.evaluate_ready(lead.read(), ready)
            lead.write(state)
        if rest:
            when = _at(rest[0].occurred_at + self.allowed_lateness_ms)
            release.set(when)
            due.write(when)
        else:
            due.clear()

    def _watermark_floor(self, fired_ms: int) -> int:
        """The latest time the watermark is known to have passed, given a timer fired at
        `fired_ms` (see _WatermarkFloor)."""
        if self.one_watermark_per_stage:
            return _WatermarkFloor.raise_to(self.stage_id, fired_ms)
        if self.bundle_floor_ms is None or fired_ms > self.bundle_floor_ms:
            self.bundle_floor_ms = fired_ms
        return self.bundle_floor_ms

    def evaluate_ready(self, state, ready: list[Activity], *, seeded: bool = False):
        """Evaluate a lead's released activities in order (seeding a lead new to the graph
        from the store first, unless `seeded`: `state` is already what seeding gave);
        yields the outcomes and the activities to store, returns the lead's state after
        them."""
        rules = self.rules
        if state is None and not seeded and self.seed_store is not None:
            # A lead new to this graph may have a history in the store already.
            first = ready[0]
            state = seed_state(rules, self.seed_store, first.tenant, first.lead_id, first.occurred_at)
            if state is not None:
                self.seeded.inc()
        outcome_count = qualified = 0
        for activity in ready:
            state, outcomes = evaluate(rules, state, activity)
            yield beam.pvalue.TaggedOutput(STORE, activity)
            for outcome in outcomes:
                outcome_count += 1
                if outcome.qualified:
                    qualified += 1
                    Metrics.counter(METRICS_NAMESPACE, f"fired:{outcome.tenant}/{outcome.campaign}").inc()
                yield outcome
        self.evaluated.inc(len(ready))
        self.outcomes.inc(outcome_count)
        self.qualified.inc(qualified)
        return state


class _EvaluateLeadsFn(beam.DoFn):
    """Bounded input: each lead's whole input, grouped, deduplicated, ordered and
    evaluated at once. This is what SequenceAndEvaluate's timer does at the end of a
    bounded input (release everything, once), without per-lead state and timers: a
    GroupByKey is far cheaper on every runner.

    With a store to seed from, leads wait in groups of up to `seed_batch` (0: none) so
    the store is asked for all their histories at once (orion.seeding.seed_states)
    rather than in a few reads per lead. Only for input in the global window: a lead
    evaluated while another is processed, or at the end of the bundle, is emitted in
    the global window at the timestamp the GroupByKey gave the leads (one for all)."""

    def __init__(self, sequencer: _SequenceAndEvaluateFn, seed_batch: int = 0):
        self.sequencer = sequencer
        self.seed_batch = seed_batch

    def setup(self) -> None:
        self.sequencer.setup()
        self.batching = self.seed_batch > 0 and self.sequencer.seed_store is not None

    def teardown(self) -> None:
        self.sequencer.teardown()

    def start_bundle(self) -> None:
        self.waiting: list[list[Activity]] = []  # leads' ready activities, not yet seeded
        # The GroupByKey's output timestamp, one for every lead (set by process, so set
        # whenever leads wait). Runners differ; the FnApiRunner's is a millisecond before
        # _END_OF_INPUT, and a flow timer at _END_OF_INPUT would never fire there.
        self.timestamp = None

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        _, activities = element
        self.timestamp = timestamp
        ready, _, duplicates, _ = release_ready(LeadProgress(None, {}), activities, None,
                                                self.sequencer.dedup_span_ms)
        if duplicates:
            self.sequencer.duplicates.inc(duplicates)
        if not ready:
            return
        if not self.batching:
            yield from self.sequencer.evaluate_ready(None, ready)
            return
        self.waiting.append(ready)
        if len(self.waiting) >= self.seed_batch:
            yield from self._evaluate_waiting()

    def finish_bundle(self):
        for output in self._evaluate_waiting():
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, self.timestamp, _GLOBAL))
            else:
                yield WindowedValue(output, self.timestamp, _GLOBAL)

    def _evaluate_waiting(self):
        waiting, self.waiting = self.waiting, []
        if not waiting:
            return
        sequencer = self.sequencer
        states = seed_states(sequencer.rules, sequencer.seed_store,
                             [(ready[0].tenant, ready[0].lead_id, ready[0].occurred_at) for ready in waiting])
        for ready, state in zip(waiting, states):
            if state is not None:
                sequencer.seeded.inc()
            yield from sequencer.evaluate_ready(state, ready, seeded=True)


def _at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class SequenceAndEvaluate(beam.PTransform):
    """((tenant, lead), Activity) -> (outcomes, activities to store, dead letters).

    bounded: the input ends (files); each lead is released once, at the end, fully
    ordered (a GroupByKey by lead, then the same release and evaluation). Otherwise (streaming) activities are released as the watermark passes
    their time plus `allowed_lateness_ms`.

    seed_store_uri: the store a lead new to the graph has its history counters seeded
    from (orion.seeding), before its first activity is evaluated; None: no reads.

    one_watermark_per_stage: the runner keeps one input watermark for all the keys of a
    stage in this process (Beam's bundle-based DirectRunner), so a timer's time proves
    the watermark for every lead and a backlog drains in a round or two (_WatermarkFloor).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
                 dedup_span_ms: int = DEFAULT_DEDUP_SPAN_MS, bounded: bool = False,
                 seed_store_uri: str | None = None, one_watermark_per_stage: bool = False):
        super().__init__()
        self.fn = _SequenceAndEvaluateFn(rules_dir, tuple(template_dirs), allowed_lateness_ms,
                                         dedup_span_ms, bounded, seed_store_uri, one_watermark_per_stage)

    def expand(self, keyed):
        if self.fn.bounded:
            global_window = isinstance(keyed.windowing.windowfn, GlobalWindows)
            results = (keyed
                       | "GroupByLead" >> beam.GroupByKey()
                       | "EvaluateLeads" >> beam.ParDo(
                           _EvaluateLeadsFn(self.fn, SEED_BATCH if global_window else 0)).with_outputs(
                           STORE, DEAD, main="outcomes"))
        else:
            results = keyed | "SequenceAndEvaluate" >> beam.ParDo(self.fn).with_outputs(
                STORE, DEAD, main="outcomes")
        return results.outcomes, results[STORE], results[DEAD]
