"""The one stateful step per lead in Beam: `KeyByLead` and `LeadSteps`.

LeadSteps keeps, per (tenant, lead), one state: the arrived activities not yet released,
and the lead's LeadRecord (sequencer progress, lead state, campaign flows). Everything a
lead's activities do happens in that one step (orion.leadstep): ordering and dedup,
evaluation (once per activity), the flows the lead qualifies for, the activities flow
steps generate (evaluated inline, up to the cascade depth), and the lead's durable
profile. The DoFn only loads state, calls the core, stores state and maps what the core
emits to tagged outputs and what it counts to Beam metrics.

Long-lived state uses coders with a schema and a version (orion.transforms.coders), so
a pipeline update or a savepoint survives a new release. A lead's state expires
`lead_ttl_days` of event time after its last activity, when nothing of it is waiting;
the profile in the store keeps it, and a lead that comes back is seeded from there.

    orion run
"""
from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any, NamedTuple, Tuple

import apache_beam as beam
from apache_beam.coders import TupleCoder, VarIntCoder, StrUtf8Coder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.activities import Activity, MS_PER_DAY, activity_sort_key
from orion.leadstep import (
    DEAD, EMAIL, END_OF_TIME_MS, HELD, OUTCOME, PROFILE, STORE, WEBHOOK, LeadStep, Lineage,
    SeedRequest, StepResult, WakeUp,
)
from orion.profiles import EMPTY_RECORD
from orion.runtime import tune_gc
from orion.seeding import open_initialised_store
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
from orion.settings import DEFAULT_LEAD_TTL_DAYS, DEFAULT_MAX_CASCADE_DEPTH, DEFAULT_MAX_PENDING
from orion.transforms.coders import ActivityCoder, LeadRecordCoder
from orion.transforms.intake import METRICS_NAMESPACE

# Bounded input: leads seeded from the store together (see _ReplayLeadsFn).
SEED_BATCH = 200
_GLOBAL = (GlobalWindow(),)
# Outputs besides the main one (the outcomes), in the order LeadSteps returns them.
SIDE_OUTPUTS = (STORE, DEAD, EMAIL, HELD, WEBHOOK, PROFILE)
# Bounded, with `rollups`: the bundle's activities stored and outcomes, rolled up per
# tenant-day (orion.analytics.segments.DayParts) where they are made (LeadSteps.rollup_parts).
ROLLUP_PARTS = "rollup_parts"


class _WatermarkFloor:
    """The latest event-time timer fired so far in this process, per step.

    A Python DoFn cannot read the watermark, but an event-time timer firing at T proves
    the input watermark has passed T. Without this, a timer that fires at T releases
    only what is due by T and sets the next timer at the next activity: a lead holding k
    activities already behind the watermark (a backlog after a restart, a replay) needed
    k timer rounds, one activity each.

    Within one bundle the proof holds for every key of the bundle: always used. Across
    the whole process it holds only where a stage has one input watermark for all its
    keys, as on Beam's bundle-based DirectRunner; `one_watermark_per_stage` says which
    applies. Runners copy a DoFn per bundle or thread, so the shared floor lives here,
    keyed by the step's id, which the copies share."""

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


class _Emitter:
    """Maps a StepResult to Beam: tags to outputs, counts to metrics (one Metrics
    counter per name, made once: the names are a bounded set). With `parts` (an
    orion.analytics.segments.DayParts), the activities to store and the outcomes are
    also rolled up into it as they go out: a record crossing to a roll-up step of its
    own costs Beam more than rolling it up (counter `rolled_up`)."""

    def __init__(self, parts=None):
        self.counters: dict[str, Any] = {}
        self.parts = parts
        self.rolled_up = 0

    def emit(self, result: StepResult, wrap=None):
        counters = self.counters
        for name, n in result.counts.items():
            counter = counters.get(name)
            if counter is None:
                counter = counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
            counter.inc(n)
        if self.parts is not None:
            add, rolled_up = self.parts.add, 0
            for tag, value in result.emitted:
                if tag == STORE or tag == OUTCOME:
                    rolled_up += add(value)
            self.rolled_up += rolled_up
        for tag, value in result.emitted:
            if wrap is not None:
                value = wrap(value)
            yield value if tag == OUTCOME else beam.pvalue.TaggedOutput(tag, value)

    def drain_parts(self) -> list:
        """The (tenant-day, MinuteParts) rolled up since the last drain."""
        if self.parts is None:
            return []
        Metrics.counter(METRICS_NAMESPACE, "rolled_up").inc(self.rolled_up)
        self.rolled_up = 0
        return self.parts.drain()


class _StepSettings(NamedTuple):
    rules_dir: str
    template_dirs: tuple[str, ...]
    allowed_lateness_ms: int
    dedup_span_ms: int
    run_flows: bool
    max_cascade_depth: int
    seed_store_uri: str | None
    lead_ttl_days: int
    max_pending: int = DEFAULT_MAX_PENDING
    lineage: str | None = None  # streaming: the graph's lineage (orion.leadstep.Lineage)
    rollups: bool = False  # bounded: roll up what the step emits (ROLLUP_PARTS)


def _open_step(settings: _StepSettings):
    """The core step and the store new leads are seeded from, in a worker."""
    from orion.rules.shared import shared_rules
    from orion.transforms import state_sizing

    state_sizing.install()
    tune_gc()
    rules = shared_rules(settings.rules_dir, settings.template_dirs)
    # Any bundle of a streaming step may be a retry whose first attempt wrote profiles
    # (the profile writes are fused with the step): every lead new to the state is
    # checked against its lineage ("restored"). The state the step expires itself hands
    # its profile back first (_LeadStepFn.on_expire).
    lineage = (None if settings.lineage is None
               else Lineage(settings.lineage, True, settings.lead_ttl_days * MS_PER_DAY))
    step = LeadStep(rules, dedup_span_ms=settings.dedup_span_ms, run_flows=settings.run_flows,
                    max_cascade_depth=settings.max_cascade_depth, max_pending=settings.max_pending,
                    lineage=lineage)
    return step, open_initialised_store(settings.seed_store_uri)


class _LeadStepFn(beam.DoFn):
    """Streaming: each lead's activities, released in event-time order as the watermark
    passes them plus the allowed lateness, through the one step.

    State, per (tenant, lead):
      PENDING   bag of arrived activities not yet released;
      RELEASED  (occurred_at, event_id) of the last activity evaluated: read on every
                arrival, so it is kept apart from the larger RECORD;
      RECORD    orion.profiles.LeadRecord: progress (with the recent event ids), the lead
                state, its running flows and recent sends;
      DUE       when RELEASE is set for, so it only ever moves earlier;
      WAKE_AT   when WAKE is set for, likewise;
      BUFFERED  how many activities PENDING holds: past the step's max_pending (a hot
                lead) they are released at once (orion.settings.DEFAULT_MAX_PENDING).
    Timers (event time):
      RELEASE   the watermark passed the earliest buffered activity plus the allowed
                lateness: releases everything the watermark is known to have passed
                (see _WatermarkFloor);
      WAKE      the earliest wake-up time of a waiting flow;
      EXPIRE    `lead_ttl_days` after the lead's last activity: its state is cleared if
                nothing waits (its profile stays in the store). With a lineage, the
                profile is first written once more without its origin: the lead is the
                profile's own again, and when it comes back it starts from it, not from
                what the profile was when the lineage first read it.
    Outputs: outcomes (main) and SIDE_OUTPUTS.
    """

    PENDING = BagStateSpec("pending", ActivityCoder())
    RELEASED = ReadModifyWriteStateSpec("released", TupleCoder([VarIntCoder(), StrUtf8Coder()]))
    RECORD = ReadModifyWriteStateSpec("record", LeadRecordCoder())
    DUE = ReadModifyWriteStateSpec("due", VarIntCoder())
    WAKE_AT = ReadModifyWriteStateSpec("wake_at", VarIntCoder())
    BUFFERED = ReadModifyWriteStateSpec("buffered", VarIntCoder())
    RELEASE = TimerSpec("release", TimeDomain.WATERMARK)
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, settings: _StepSettings, one_watermark_per_stage: bool):
        self.settings = settings
        self.one_watermark_per_stage = one_watermark_per_stage
        self.stage_id = uuid.uuid4().hex  # shared by the runner's copies of this DoFn

    def setup(self) -> None:
        self.step, self.seed_store = _open_step(self.settings)
        self.emitter = _Emitter()
        self.ttl_ms = self.settings.lead_ttl_days * MS_PER_DAY

    def teardown(self) -> None:
        store = getattr(self, "seed_store", None)
        if store is not None:
            store.close()

    def start_bundle(self) -> None:
        self.bundle_floor_ms = None  # the latest timer fired in this bundle

    def process(self, element: tuple[tuple[str, str], Activity],
                pending=beam.DoFn.StateParam(PENDING), released=beam.DoFn.StateParam(RELEASED),
                record=beam.DoFn.StateParam(RECORD), due=beam.DoFn.StateParam(DUE),
                wake_at=beam.DoFn.StateParam(WAKE_AT), buffered=beam.DoFn.StateParam(BUFFERED),
                release=beam.DoFn.TimerParam(RELEASE), wake=beam.DoFn.TimerParam(WAKE),
                expire=beam.DoFn.TimerParam(EXPIRE)):
        (tenant, lead_id), activity = element
        result = StepResult()
        if isinstance(activity, WakeUp):
            # A lead waiting in a flow, from the store, when the job starts: unless the
            # job knows the lead already, its state comes from its profile, and its
            # wake timer is set.
            if record.read() is None and self.seed_store is not None:
                seeded = self.step.seed(self.seed_store, [SeedRequest(tenant, lead_id, activity.wake_at)], result)[0]
                if seeded is not None:
                    record.write(seeded)
                    if seeded.progress.released is not None:
                        released.write(seeded.progress.released)
                    self._schedule_wake(seeded, wake_at, wake)
            yield from self.emitter.emit(result)
            return
        last = released.read()
        seen = lambda: (record.read() or EMPTY_RECORD).progress.seen  # noqa: E731 - read only when behind
        if self.step.arrival(tuple(last) if last is not None else None, seen, activity, result):
            pending.add(activity)
            count = (buffered.read() or 0) + 1
            if self.step.over_budget(count, result):
                # A hot lead: release everything it has buffered now.
                self._release((tenant, lead_id), None, result, pending, released, record, due, wake_at, buffered,
                              release, wake, expire)
            else:
                buffered.write(count)
                when = activity.occurred_at + self.settings.allowed_lateness_ms
                current = due.read()
                if current is None or when < current:
                    release.set(_at(when))
                    due.write(when)
        if result.emitted or result.counts:
            yield from self.emitter.emit(result)

    @on_timer(RELEASE)
    def on_release(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                   pending=beam.DoFn.StateParam(PENDING), released=beam.DoFn.StateParam(RELEASED),
                   record=beam.DoFn.StateParam(RECORD), due=beam.DoFn.StateParam(DUE),
                   wake_at=beam.DoFn.StateParam(WAKE_AT), buffered=beam.DoFn.StateParam(BUFFERED),
                   release=beam.DoFn.TimerParam(RELEASE), wake=beam.DoFn.TimerParam(WAKE),
                   expire=beam.DoFn.TimerParam(EXPIRE)):
        up_to = self._watermark_floor(fired.micros // 1000) - self.settings.allowed_lateness_ms
        result = StepResult()
        self._release(key, up_to, result, pending, released, record, due, wake_at, buffered, release, wake, expire)
        yield from self.emitter.emit(result)

    def _release(self, key, up_to: int | None, result: StepResult, pending, released, record, due, wake_at,
                 buffered, release, wake, expire) -> None:
        """Release what the lead has buffered up to event time `up_to` (None: all of it),
        and set the state and timers for what is left."""
        tenant, lead_id = key
        waiting = list(pending.read())
        stored = record.read()
        current = stored if stored is not None else self._seed(tenant, lead_id, waiting, result)
        after, rest = self.step.release(current, tenant, lead_id, waiting, up_to, result)
        if len(rest) != len(waiting):
            pending.clear()
            for activity in rest:
                pending.add(activity)
            buffered.write(len(rest))
        if after is not stored:
            record.write(after)
            if after.progress.released is not None:
                released.write(after.progress.released)
                expire.set(_at(after.progress.released[0] + self.ttl_ms))
            self._schedule_wake(after, wake_at, wake)
        if rest:
            when = rest[0].occurred_at + self.settings.allowed_lateness_ms
            release.set(_at(when))
            due.write(when)
        else:
            due.clear()

    @on_timer(WAKE)
    def on_wake(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                record=beam.DoFn.StateParam(RECORD), wake_at=beam.DoFn.StateParam(WAKE_AT),
                wake=beam.DoFn.TimerParam(WAKE)):
        tenant, lead_id = key
        wake_at.clear()
        current = record.read()
        if current is None:
            return
        result = StepResult()
        after = self.step.wake(current, tenant, lead_id, fired.micros // 1000, result)
        if after is not current:
            record.write(after)
        self._schedule_wake(after, wake_at, wake)
        yield from self.emitter.emit(result)

    @on_timer(EXPIRE)
    def on_expire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                  pending=beam.DoFn.StateParam(PENDING),
                  released=beam.DoFn.StateParam(RELEASED), record=beam.DoFn.StateParam(RECORD),
                  due=beam.DoFn.StateParam(DUE), wake_at=beam.DoFn.StateParam(WAKE_AT),
                  buffered=beam.DoFn.StateParam(BUFFERED)):
        # Only a lead with nothing buffered or waiting, silent for the whole TTL, is cleared.
        last = released.read()
        if last is None or due.read() is not None or wake_at.read() is not None:
            return
        if last[0] + self.ttl_ms > fired.micros // 1000:
            return  # the lead was active since this timer was set
        current = record.read()
        for state in (pending, released, record, buffered):
            state.clear()
        if current is not None and current.origin is not None:
            result = StepResult()
            self.step.emit_profile(*key, current._replace(origin=None), result)
            yield from self.emitter.emit(result)

    def _seed(self, tenant: str, lead_id: str, buffered: list[Activity], result: StepResult):
        if self.seed_store is None or not buffered:
            return EMPTY_RECORD
        first = min(activity.occurred_at for activity in buffered)
        seeded = self.step.seed(self.seed_store, [SeedRequest(tenant, lead_id, first)], result)[0]
        return seeded or EMPTY_RECORD

    @staticmethod
    def _schedule_wake(record, wake_at, wake) -> None:
        next_wake = record.next_wake()
        if next_wake is None:
            return
        current = wake_at.read()
        if current is None or next_wake < current:
            wake.set(_at(next_wake))
            wake_at.write(next_wake)

    def _watermark_floor(self, fired_ms: int) -> int:
        """The latest time the watermark is known to have passed, given a timer fired at
        `fired_ms` (see _WatermarkFloor)."""
        if self.one_watermark_per_stage:
            return _WatermarkFloor.raise_to(self.stage_id, fired_ms)
        if self.bundle_floor_ms is None or fired_ms > self.bundle_floor_ms:
            self.bundle_floor_ms = fired_ms
        return self.bundle_floor_ms


class _ReplayLeadsFn(beam.DoFn):
    """Bounded input: each lead's whole input, grouped, then the one step's `replay`:
    ordered, deduplicated against the lead's profile, evaluated, its flows run, and the
    waits due by the horizon resumed. A GroupByKey is far cheaper than per-lead state and
    timers on every runner.

    With a store to seed from, leads wait in groups of up to `seed_batch` (0: none) so
    the store is asked for all their profiles and histories at once. Only for input in
    the global window: a lead replayed at the end of the bundle is emitted in the global
    window at the timestamp the GroupByKey gave the leads (one for all)."""

    def __init__(self, settings: _StepSettings, seed_batch: int = 0):
        self.settings = settings
        self.seed_batch = seed_batch

    def setup(self) -> None:
        self.step, self.seed_store = _open_step(self.settings)
        self.facts = None
        if self.settings.rollups:
            from orion.analytics.rollup import RollupFacts

            self.facts = RollupFacts.from_rules(self.step.rules)
        self.batching = self.seed_batch > 0 and self.seed_store is not None

    def teardown(self) -> None:
        if getattr(self, "seed_store", None) is not None:
            self.seed_store.close()

    def start_bundle(self) -> None:
        from orion.analytics.segments import DayParts

        self.emitter = _Emitter(None if self.facts is None else DayParts(self.facts))
        self.waiting: list = []  # (key, activities), not yet seeded
        # The GroupByKey's output timestamp, one for every lead. Runners differ; the
        # FnApiRunner's is a millisecond before the end of the global window.
        self.timestamp = None

    def process(self, element, horizon, timestamp=beam.DoFn.TimestampParam):
        key, grouped = element
        self.timestamp = timestamp
        self.horizon = horizon
        items = (a for a in grouped if isinstance(a, Activity))
        activities = list(itertools.islice(items, self.step.max_pending + 1))
        if len(activities) > self.step.max_pending:
            yield from self._replay_hot(key, activities, items, horizon)
            return
        activities.sort(key=activity_sort_key)
        self.waiting.append((key, activities))
        if not self.batching or len(self.waiting) >= self.seed_batch:
            yield from self._replay_waiting()

    def _replay_hot(self, key, chunk: list, items, horizon):
        """A hot lead (more activities than the step's max_pending): replayed on its own,
        a chunk of at most max_pending + 1 activities at a time, each in order, so its
        memory stays bounded. What a later chunk holds that sorts before an earlier
        chunk's is late, a dead letter. The waits resume with the last chunk."""
        tenant, lead_id = key
        step = self.step
        result = StepResult()
        record = step.seed(self.seed_store, [SeedRequest(tenant, lead_id, min(a.occurred_at for a in chunk))],
                           result)[0] or EMPTY_RECORD
        while chunk:
            step.over_budget(len(chunk), result)
            chunk.sort(key=activity_sort_key)
            following = list(itertools.islice(items, step.max_pending + 1))
            record = step.replay(record, tenant, lead_id, chunk, None if following else horizon, result)
            yield from self.emitter.emit(result)
            result = StepResult()
            chunk = following

    def finish_bundle(self):
        wrap = lambda value: WindowedValue(value, self.timestamp, _GLOBAL)  # noqa: E731
        for output in self._replay_waiting():
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, wrap(output.value))
            else:
                yield wrap(output)
        for day, parts in self.emitter.drain_parts():
            yield beam.pvalue.TaggedOutput(ROLLUP_PARTS, wrap((day, parts)))

    def _replay_waiting(self):
        waiting, self.waiting = self.waiting, []
        if not waiting:
            return
        step, horizon = self.step, self.horizon
        result = StepResult()
        requests = []
        for (tenant, lead_id), activities in waiting:
            first = activities[0].occurred_at if activities else horizon
            requests.append(SeedRequest(tenant, lead_id, first))
        records = step.seed(self.seed_store, requests, result)
        for ((tenant, lead_id), activities), record in zip(waiting, records):
            step.replay(record or EMPTY_RECORD, tenant, lead_id, activities, horizon, result)
        yield from self.emitter.emit(result)


class _DueLeadsFn(beam.DoFn):
    """The horizon of a bounded input -> a WakeUp, keyed by lead, for each stored lead
    of these tenants whose flow wait is due by it."""

    def __init__(self, store_uri: str, tenants: tuple[str, ...]):
        self.store_uri = store_uri
        self.tenants = tenants

    def process(self, horizon):
        if horizon is None:
            return
        store = open_initialised_store(self.store_uri)
        try:
            for tenant, lead_id, wake_at in store.due_profiles(horizon, self.tenants):
                Metrics.counter(METRICS_NAMESPACE, "leads_woken_from_store").inc()
                yield (tenant, lead_id), WakeUp(tenant, lead_id, wake_at)
        finally:
            store.close()


def waiting_leads(store_uri: str, rules_dir: str, template_dirs: tuple[str, ...] = ()) -> list:
    """((tenant, lead), WakeUp) of every lead of the rules' tenants waiting in a flow in
    the store at `store_uri`: a streaming job starts with them (beam.Create), so the waits
    of a job it replaced without a savepoint are not lost. Read once, when the job is
    built."""
    from orion.rules.shared import shared_rules

    tenants = tuple(sorted(shared_rules(rules_dir, tuple(template_dirs)).tenants))
    store = open_initialised_store(store_uri)
    try:
        return [((tenant, lead_id), WakeUp(tenant, lead_id, wake_at))
                for tenant, lead_id, wake_at in store.due_profiles(END_OF_TIME_MS, tenants)]
    finally:
        store.close()


def _newest(times):
    return max((t for t in times if t is not None), default=None)


def _at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class LeadSteps(beam.PTransform):
    """((tenant, lead), Activity) -> (outcomes, and one PCollection per SIDE_OUTPUTS tag:
    activities to store, dead letters, email requests, held emails, webhook calls,
    lead profiles to write).

    bounded: the input ends (files); each lead is replayed once, at the end, fully
    ordered (a GroupByKey by lead), with the waits due by the input's newest activity.
    Otherwise (streaming) activities are released as the watermark passes their time
    plus `allowed_lateness_ms`, and waits are event-time timers.

    run_flows: campaign flows run (an outbox is given); else evaluation only.

    seed_store_uri: the store a lead new to the graph is seeded from (its profile and
    history counters), and, bounded, where leads waiting in a flow are found; None: no
    reads.

    one_watermark_per_stage: the runner keeps one input watermark for all the keys of a
    stage in this process (Beam's bundle-based DirectRunner), so a timer's time proves
    the watermark for every lead and a backlog drains in a round or two (_WatermarkFloor).

    max_pending: the most activities a lead may have buffered; past it a hot lead is
    released at once (bounded: in chunks), visibly (orion.settings.DEFAULT_MAX_PENDING).

    lineage (streaming): the id the step writes into every profile's origin (a new one
    per graph when None). A bundle retried after its first attempt wrote profiles (on
    Dataflow, a worker lost or a store write failing mid-bundle) starts a lead that
    attempt first met from the profile as it was before, and evaluates its activities
    again (orion.leadstep.Lineage).

    rollups (bounded): the step also rolls up the activities it stores and its outcomes
    per bundle and tenant-day, where it makes them; after expansion `rollup_parts` is
    the PCollection of ((tenant, day), MinuteParts) that orion.transforms.rollups groups
    and writes (None otherwise: streaming, the roll-ups take the records themselves).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
                 dedup_span_ms: int = DEFAULT_DEDUP_SPAN_MS, bounded: bool = False, run_flows: bool = True,
                 max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH, seed_store_uri: str | None = None,
                 one_watermark_per_stage: bool = False, lead_ttl_days: int = DEFAULT_LEAD_TTL_DAYS,
                 max_pending: int = DEFAULT_MAX_PENDING, lineage: str | None = None, rollups: bool = False):
        super().__init__()
        self.settings = _StepSettings(rules_dir, tuple(template_dirs), allowed_lateness_ms, dedup_span_ms,
                                      run_flows, max_cascade_depth, seed_store_uri, lead_ttl_days, max_pending,
                                      rollups=rollups and bounded)
        self.rollup_parts = None
        self.lineage = lineage
        self.bounded = bounded
        self.one_watermark_per_stage = one_watermark_per_stage

    def expand(self, keyed):
        settings = self.settings
        if not self.bounded:
            # One lineage for the graph, fixed here, so every worker and retried bundle
            # shares it.
            settings = settings._replace(lineage=self.lineage or uuid.uuid4().hex)
            results = keyed | "LeadStep" >> beam.ParDo(
                _LeadStepFn(settings, self.one_watermark_per_stage)).with_outputs(*SIDE_OUTPUTS, main=OUTCOME)
            return (results[OUTCOME],) + tuple(results[tag] for tag in SIDE_OUTPUTS)
        global_window = isinstance(keyed.windowing.windowfn, GlobalWindows)
        newest = beam.CombineGlobally(_newest)
        horizon = (keyed
                   | "EventTimes" >> beam.Map(lambda element: element[1].occurred_at)
                   | "Horizon" >> (newest if global_window else newest.without_defaults()))
        to_group = keyed
        if settings.run_flows and settings.seed_store_uri is not None and global_window:
            from orion.rules.shared import shared_rules

            tenants = tuple(sorted(shared_rules(settings.rules_dir, settings.template_dirs).tenants))
            woken = horizon | "DueLeads" >> beam.ParDo(
                _DueLeadsFn(settings.seed_store_uri, tenants)).with_output_types(Tuple[Tuple[str, str], Any])
            to_group = (keyed, woken) | "WithWokenLeads" >> beam.Flatten()
        extra = (ROLLUP_PARTS,) if settings.rollups else ()
        results = (to_group
                   | "GroupByLead" >> beam.GroupByKey()
                   | "LeadStep" >> beam.ParDo(_ReplayLeadsFn(settings, SEED_BATCH if global_window else 0),
                                              beam.pvalue.AsSingleton(horizon, default_value=None)
                                              ).with_outputs(*SIDE_OUTPUTS, *extra, main=OUTCOME))
        if settings.rollups:
            from orion.analytics.segments import MinuteParts

            self.rollup_parts = results[ROLLUP_PARTS]
            # A deterministic key coder for the GroupByKey of the parts.
            self.rollup_parts.element_type = beam.typehints.Tuple[beam.typehints.Tuple[str, int], MinuteParts]
        return (results[OUTCOME],) + tuple(results[tag] for tag in SIDE_OUTPUTS)
