"""The PyFlink functions of Orion's Flink job, thin over the engine-neutral core, as the
Beam DoFns in `orion.transforms` are:

  ReadActivityFiles     file path -> activities; dead letters to the DEAD side output
                        (`orion.intake.read_lines`: per-file replay lateness, line numbers)
  ParseActivities       payload (a line of a monitored file, a Kafka record) -> the same
                        (`orion.intake.parse_payload`)
  ActivityTime          the event time of an activity, for the watermark strategy
  LeadStep              keyed by (tenant, lead): the one stateful step per lead
                        (`orion.leadstep`): orders, dedups and evaluates each activity
                        once, runs the campaign flows inline (waits are event-time
                        timers) and emits the lead's durable profile
  AssembleEmails        email request -> MIME message (`orion.campaigns.email.EmailAssembler`)
  WriteInBatches        keyed by a shard number: buffers records in keyed state, as
                        JSON text, and hands them to a writer (the activity store, the
                        lead profiles, the outbox) in batches
  output_line           an outcome or dead letter -> its JSONL line, for Flink's FileSink

Every function loads its rules or opens its client in `open()`, so only configuration is
pickled. Counts go to Flink's metric system (the web UI, REST) and, when the job ends, to
a small JSON file per function instance that `orion.runners.flink` sums for its summary.

    .venv/bin/python -m orion.runners.flink --events orion/samples/events.jsonl
"""
from __future__ import annotations

import base64
import bz2
import collections
import gzip
import json
import os
import re
import threading
import uuid
import zlib
from pathlib import Path
from typing import Iterable

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, OutputTag, ProcessFunction, TimeDomain
from pyflink.datastream.state import ListStateDescriptor, StateTtlConfig, ValueStateDescriptor

from orion import leadstep
from orion.leadstep import WakeUp
from orion.activities import Activity, activity_sort_key
from orion.deadletters import DeadLetter
from orion.intake import parse_payload, read_lines
from orion.profiles import EMPTY_RECORD, LeadRecord, decode_profile, encode_profile
from orion.seeding import open_initialised_store
from orion.store.base import write_batch, write_profile_batch

# Elements between Python functions are pickled Python objects (activities, outcomes,
# dead letters); they live in no state. Keys and every state (LeadStep's, the sinks'
# batch buffers) have real Flink types and schema'd, versioned text: a checkpoint or
# savepoint holds no pickle, so a new release of Orion restores it.
PICKLED = Types.PICKLED_BYTE_ARRAY()
LEAD_KEY = Types.TUPLE([Types.STRING(), Types.STRING()])
SHARD_KEY = Types.INT()
# LeadStep's side outputs (its main output is the outcomes), one per kind of record.
DEAD = OutputTag("dead-letters", PICKLED)
STORE = OutputTag("store", PICKLED)  # activities to store: input and flow-generated
EMAILS = OutputTag("emails", PICKLED)  # email requests, to assemble
OUTBOX = OutputTag("outbox", PICKLED)  # held emails and webhook calls, to the outbox
PROFILES = OutputTag("profiles", PICKLED)  # lead profiles, to the store
# Where each tag of the core step goes (None: the main output).
STEP_OUTPUTS = {
    leadstep.OUTCOME: None,
    leadstep.STORE: STORE,
    leadstep.DEAD: DEAD,
    leadstep.EMAIL: EMAILS,
    leadstep.HELD: OUTBOX,
    leadstep.WEBHOOK: OUTBOX,
    leadstep.PROFILE: PROFILES,
}

# Flink's end of event time (Watermark.MAX_WATERMARK): a bounded input ends with it, so
# a timer set there fires once, after the last element.
END_OF_INPUT = 2 ** 63 - 1
METRICS_GROUP = "orion"


WAKE_UP = Types.TUPLE([Types.STRING(), Types.STRING(), Types.LONG()])  # a WakeUp's fields


def wake_up_of(fields) -> WakeUp:
    return WakeUp(*fields)


def lead_key(element: Activity | WakeUp) -> tuple[str, str]:
    return element.tenant, element.lead_id


def shard_of(text: str, shards: int) -> int:
    """A stable shard number (crc32, unlike hash() the same in every process)."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % shards


class Counts:
    """A function instance's counters: Flink metrics (for the web UI and REST) and a
    local tally, written to its own file in `counters_dir` (cumulative, replaced each
    time) by a small thread every WRITE_EVERY_S while counts change, and when the
    function closes, for the summary. (A job stopped with a savepoint in thread mode does
    not close its Python functions: a tally written only at close would be lost.)"""

    WRITE_EVERY_S = 1.0

    def __init__(self, runtime_context, counters_dir: str | None, name: str):
        self.group = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.metrics: dict = {}
        self.tally: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.changed = False
        self.path = (None if counters_dir is None
                     else Path(counters_dir) / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        self.stopped = threading.Event()
        if self.path is not None:
            threading.Thread(target=self._write_while_open, name=f"orion-counts-{name}", daemon=True).start()

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            with self.lock:
                self.tally[name] += n
                self.changed = True
            if ":" not in name:  # per-reason counts stay local
                metric = self.metrics.get(name)
                if metric is None:
                    metric = self.metrics[name] = self.group.counter(name)
                metric.inc(n)

    def _write_while_open(self) -> None:
        while not self.stopped.wait(self.WRITE_EVERY_S):
            self._write_changed()

    def _write_changed(self) -> None:
        with self.lock:
            if not self.changed:
                return
            snapshot = dict(self.tally)
            self.changed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(json.dumps(snapshot), encoding="utf-8")
        partial.replace(self.path)  # a reader sees the old tally or the new, never half

    def write(self) -> None:
        """The function closes: the final tally, and no more writes."""
        self.stopped.set()
        if self.path is not None:
            self._write_changed()


def _load_rules(rules_dir: str, template_dirs: tuple[str, ...]):
    # One compile per worker process, shared by every function in it (as in Beam's DoFns).
    from orion.rules.shared import shared_rules

    return shared_rules(rules_dir, tuple(template_dirs))


def _ttl_config(days: int) -> StateTtlConfig:
    """Lead state expires `days` after its last write (processing time)."""
    return StateTtlConfig.new_builder(Time.days(days)) \
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite) \
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired) \
        .build()


def open_compressed(path: str):
    """Files are read in binary, as Beam's ReadMatches does, decompressed by suffix."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


class _Parse:
    """What the two parsing functions share: rules' activity types loaded in open(),
    activities out, dead letters to DEAD, everything counted."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], counters_dir: str | None):
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        self.types = _load_rules(self.rules_dir, self.template_dirs).activity_types
        self.counts = Counts(runtime_context, self.counters_dir, type(self).__name__)

    def close(self):
        self.counts.write()

    def split(self, found: Iterable[Activity | DeadLetter], dead_letters_tagged: bool):
        read = parsed = 0
        for item in found:
            read += 1
            if isinstance(item, Activity):
                parsed += 1
                yield item
            else:
                self.counts.inc("dead_letters")
                self.counts.inc(f"dead_letters:{item.reason}")
                yield (DEAD, item) if dead_letters_tagged else item
        self.counts.inc("events_read", read)
        self.counts.inc("activities_parsed", parsed)


class ReadActivityFiles(_Parse, ProcessFunction):
    """(name, absolute path) of a JSONL file -> its activities (main output) and dead
    letters (DEAD, citing `name:line`), read in order with the per-file replay lateness,
    exactly as Beam's ReadActivityFiles."""

    def __init__(self, rules_dir, template_dirs, allowed_lateness_ms: int, counters_dir=None):
        super().__init__(rules_dir, template_dirs, counters_dir)
        self.allowed_lateness_ms = allowed_lateness_ms

    def process_element(self, named_file, ctx):
        name, path = named_file
        with open_compressed(path) as lines:
            yield from self.split(read_lines(lines, self.types, name, self.allowed_lateness_ms), True)


class ParseActivities(_Parse, ProcessFunction):
    """A payload (a line of a monitored file, a Kafka record: one activity, a JSON array
    or JSONL) -> activities (main output) and dead letters (DEAD)."""

    def __init__(self, rules_dir, template_dirs, source: str, counters_dir=None):
        super().__init__(rules_dir, template_dirs, counters_dir)
        self.source = source

    def process_element(self, payload: str, ctx):
        yield from self.split(parse_payload(payload, self.types, self.source), True)


class ActivityTime(TimestampAssigner):
    """An activity's event time, epoch milliseconds."""

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value.occurred_at


class OpenedPerThread:
    """A client (store, outbox) opened lazily, once per thread that uses it: PyFlink's
    worker calls open(), the elements and close() on different threads of its pool, and
    a SQLite connection belongs to the thread that made it."""

    def __init__(self, opener):
        self.opener = opener
        self.local = threading.local()
        self.opened: list = []

    def get(self):
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = self.opener()
            self.opened.append((threading.get_ident(), client))
        return client

    def close(self) -> None:
        # Only this thread's connection can be closed here; the others close with the
        # worker process.
        for ident, client in self.opened:
            if ident == threading.get_ident():
                client.close()
        self.opened = []


def _opened_outbox(uri: str):
    from orion.campaigns.outbox import open_outbox

    outbox = open_outbox(uri)
    outbox.init()
    return outbox


def _activity_text(activity: Activity) -> str:
    """An activity as JSON text of its six fields, the shape the intake reads (escaped to
    ASCII: a lone surrogate from a `\\ud800` in the input is not UTF-8, which Flink's
    STRING needs)."""
    return json.dumps(activity.to_json_dict(), separators=(",", ":"))


def _activity_of(text: str) -> Activity:
    return Activity(**json.loads(text))


def _record_text(record: LeadRecord) -> str:
    """A LeadRecord as versioned profile JSON with its history counters (valid UTF-8, as
    Flink's STRING needs)."""
    return encode_profile(record, history=True)


class LeadStep(KeyedProcessFunction):
    """The one stateful step per (tenant, lead), over the engine-neutral core
    (`orion.leadstep.LeadStep`), as Beam's LeadSteps (orion/transforms/evaluate.py) is:
    each activity is evaluated once, in event-time order, and the campaign flows it
    qualifies the lead for run inline, their waits as event-time timers.

    Keyed state, per (tenant, lead), created in open():
      pending   list of arrived activities not yet evaluated, each as JSON text of its
                six fields (no TTL: the timer drains it);
      released  (occurred_at, event_id) of the last activity evaluated: read on every
                arrival, so it is kept apart from the larger record;
      record    the lead's orion.profiles.LeadRecord (sequencer progress with the recent
                event ids, lead state with its history counters, running flows, recent
                sends) as versioned profile JSON, `encode_profile(history=True)`;
      due       the time the release timer is set for, so it only ever moves earlier;
      wake_at   the time the wake timer is set for (the earliest flow wait), likewise;
      poll_due  the processing time of the idle-release timer, if one is set.
    Nothing is pickled, so a savepoint survives a new release of Orion. released and
    record expire `lead_ttl_days` after their last write (Flink's TTL is in processing
    time): a lead silent that long is seeded again from its profile in the store.

    A lead new to the job (no record) is seeded from the store at `seed_store_uri`, its
    profile and its history counters (`LeadStep.seed`), before anything is evaluated;
    None: no reads, the lead starts empty. Every change to the record is emitted as the
    lead's profile (PROFILES), which WriteProfiles writes to the store.

    Bounded input (files): each lead is replayed once, at the end of input (an
    event-time timer there): its activities in order (`LeadStep.replay`), then the flow
    waits due by `horizon`, the input's newest activity; later waits stay in the
    profile for the next run. A WakeUp (a lead whose stored profile has a wait due by
    the horizon) only sets that timer.

    Unbounded input: a release timer (event time) at the earliest buffered activity's
    time. Flink's watermark already trails the newest event by the allowed lateness
    (a bounded-out-of-orderness strategy), so the timer is not pushed back by it again
    as Beam's, whose watermark does not trail, is; both release an activity once the
    stream has moved the allowed lateness past it. A wake timer (event time) at the
    earliest flow wait. Whichever fires, the step releases what the watermark has
    passed, then resumes the waits it has passed, each at its own time. And while a lead
    has activities waiting, a processing-time timer every `idle_release_ms` does the
    same up to the watermark: PyFlink hands a watermark to Python asynchronously, so an
    event-time timer registered just before the watermark passed it fires only at the
    next watermark, which an idle stream never sends.

    run_flows False (no outbox): evaluation only, no flow starts.

    Outputs: outcomes (main); STORE, DEAD, EMAILS, OUTBOX and PROFILES (STEP_OUTPUTS).
    Counters: the core step's, a bounded set of names (orion.leadstep.COUNTERS), and
    `leads_woken_from_store` (WakeUps).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], *, dedup_span_ms: int, bounded: bool,
                 run_flows: bool, max_cascade_depth: int, lead_ttl_days: int, horizon: int | None = None,
                 seed_store_uri: str | None = None, counters_dir: str | None = None,
                 idle_release_ms: int = 60_000, max_pending: int = leadstep.DEFAULT_MAX_PENDING):
        self.max_pending = max_pending
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.dedup_span_ms = dedup_span_ms
        self.bounded = bounded
        self.run_flows = run_flows
        self.max_cascade_depth = max_cascade_depth
        self.lead_ttl_days = lead_ttl_days
        self.horizon = horizon
        self.seed_store_uri = seed_store_uri
        self.counters_dir = counters_dir
        self.idle_release_ms = idle_release_ms

    def open(self, runtime_context):
        ttl = _ttl_config(self.lead_ttl_days)

        def expiring(descriptor):
            descriptor.enable_time_to_live(ttl)
            return descriptor

        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.STRING()))
        self.released = runtime_context.get_state(
            expiring(ValueStateDescriptor("released", Types.TUPLE([Types.LONG(), Types.STRING()]))))
        self.record = runtime_context.get_state(expiring(ValueStateDescriptor("record", Types.STRING())))
        self.due = runtime_context.get_state(ValueStateDescriptor("due", Types.LONG()))
        self.wake_at = runtime_context.get_state(ValueStateDescriptor("wake_at", Types.LONG()))
        self.poll_due = runtime_context.get_state(ValueStateDescriptor("poll_due", Types.LONG()))
        self.buffered = runtime_context.get_state(ValueStateDescriptor("buffered", Types.LONG()))
        self.step = leadstep.LeadStep(_load_rules(self.rules_dir, self.template_dirs),
                                      dedup_span_ms=self.dedup_span_ms, run_flows=self.run_flows,
                                      max_cascade_depth=self.max_cascade_depth, max_pending=self.max_pending)
        self.counts = Counts(runtime_context, self.counters_dir, "LeadStep")
        self.seed_stores = (None if self.seed_store_uri is None
                            else OpenedPerThread(lambda: open_initialised_store(self.seed_store_uri)))

    def close(self):
        if getattr(self, "seed_stores", None) is not None:
            self.seed_stores.close()
        self.counts.write()

    # arrivals -----------------------------------------------------------------------

    def process_element(self, element: Activity | WakeUp, ctx):
        timers = ctx.timer_service()
        if isinstance(element, WakeUp):
            self.counts.inc("leads_woken_from_store")
            if self.bounded:
                self._release_at(END_OF_INPUT, timers)
                return
            # Unbounded: a lead waiting in the store when the job starts. Unless the job
            # knows it already, its state comes from its profile and its wake timer is set.
            if self._stored_record() is None:
                result = leadstep.StepResult()
                record = self._seed(element.tenant, element.lead_id, element.wake_at, result)
                self._store_record(record)
                self._schedule_wake(record, timers.current_watermark(), timers)
                yield from self._emit(result)
            return
        result = leadstep.StepResult()
        # Bounded input releases nothing before its end: no arrival can sort before it.
        released = None if self.bounded else self.released.value()
        if self.step.arrival(None if released is None else tuple(released), self._seen, element, result):
            self.pending.add(_activity_text(element))
            self._release_at(END_OF_INPUT if self.bounded else element.occurred_at, timers)
            if not self.bounded and self.poll_due.value() is None:
                self._poll_later(timers)
            count = (self.buffered.value() or 0) + 1
            if not self.step.over_budget(count, result):
                self.buffered.update(count)
                return
            # A hot lead: what it has buffered is released now, in order (bounded: without
            # the waits, which resume at the end of input).
            tenant, lead_id = ctx.get_current_key()
            if self.bounded:
                self._replay(tenant, lead_id, result, horizon=None)
            else:
                self._release_all(tenant, lead_id, result)
        yield from self._emit(result)

    def _release_all(self, tenant: str, lead_id: str, result: leadstep.StepResult) -> None:
        """Unbounded: release everything the lead has buffered, whatever the watermark."""
        stored = self._stored_record()
        buffered = self._buffered()
        record = stored
        if record is None:
            record = self._seed(tenant, lead_id, min(a.occurred_at for a in buffered), result)
        record, _ = self.step.release(record, tenant, lead_id, buffered, None, result)
        if record is not stored:
            self._store_record(record)
        self.pending.clear()
        self.buffered.clear()
        self.due.clear()

    def _seen(self) -> dict | None:
        """The lead's recent event ids: read only for an arrival that sorts before what
        the lead has released (a redelivery, or late)."""
        record = self._stored_record()
        return None if record is None else record.progress.seen

    # timers -------------------------------------------------------------------------

    def on_timer(self, timestamp: int, ctx):
        tenant, lead_id = ctx.get_current_key()
        result = leadstep.StepResult()
        if self.bounded:
            self._replay(tenant, lead_id, result)
        else:
            timers = ctx.timer_service()
            if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
                self.poll_due.clear()
                up_to = timers.current_watermark()
            else:
                up_to = max(timestamp, timers.current_watermark())
            self._release_and_wake(tenant, lead_id, up_to, timers, result)
        yield from self._emit(result)

    _AT_THE_HORIZON = object()

    def _replay(self, tenant: str, lead_id: str, result: leadstep.StepResult, horizon=_AT_THE_HORIZON) -> None:
        """Bounded input: the lead's buffered activities in order, then its waits due by
        the horizon (at the end of input; a hot lead's early release passes None)."""
        horizon = self.horizon if horizon is self._AT_THE_HORIZON else horizon
        buffered = sorted(self._buffered(), key=activity_sort_key)
        self.pending.clear()
        self.buffered.clear()
        self.due.clear()
        if not buffered and horizon is None:
            return
        record = self._stored_record()
        if record is None:
            record = self._seed(tenant, lead_id, buffered[0].occurred_at if buffered else horizon, result)
        self._store_record(self.step.replay(record, tenant, lead_id, buffered, horizon, result))

    def _release_and_wake(self, tenant: str, lead_id: str, up_to: int, timers, result: leadstep.StepResult) -> None:
        """Unbounded input: release the buffered activities the watermark has passed
        (`up_to`), then resume the waits it has passed; set the timers for what is left."""
        buffered = self._buffered()
        stored = self._stored_record()
        record = stored
        if record is None:
            first = min((activity.occurred_at for activity in buffered), default=up_to)
            record = self._seed(tenant, lead_id, first, result)
        rest = buffered
        if buffered:
            # (What a seeded profile has already been through is a redelivery or late: the
            # core's release sorts that out.)
            record, rest = self.step.release(record, tenant, lead_id, buffered, up_to, result)
        record = self.step.wake(record, tenant, lead_id, up_to, result)
        if record is not stored:
            self._store_record(record)
        if len(rest) != len(buffered):
            self.pending.clear()
            if rest:
                self.pending.add_all([_activity_text(activity) for activity in rest])
            self.buffered.update(len(rest))
        if rest:
            when = rest[0].occurred_at
            if when != self.due.value():
                timers.register_event_time_timer(when)
                self.due.update(when)
            if self.poll_due.value() is None:
                self._poll_later(timers)
        else:
            self.due.clear()
        self._schedule_wake(record, up_to, timers)

    def _release_at(self, when: int, timers) -> None:
        current = self.due.value()
        if current is None or when < current:
            if current is not None:
                timers.delete_event_time_timer(current)
            timers.register_event_time_timer(when)
            self.due.update(when)

    def _poll_later(self, timers) -> None:
        due = timers.current_processing_time() + self.idle_release_ms
        timers.register_processing_time_timer(due)
        self.poll_due.update(due)

    def _schedule_wake(self, record: LeadRecord, up_to: int, timers) -> None:
        """The wake timer at the record's earliest wait, only ever moved earlier; a timer
        at or before `up_to` has done its work (the waits it was for are resumed)."""
        next_wake = record.next_wake() if self.run_flows else None
        stored = self.wake_at.value()
        current = stored if stored is not None and stored > up_to else None
        if next_wake is not None and (current is None or next_wake < current):
            timers.register_event_time_timer(next_wake)
            self.wake_at.update(next_wake)
        elif current is None and stored is not None:
            self.wake_at.clear()

    # state and outputs ------------------------------------------------------------

    def _buffered(self) -> list[Activity]:
        return [_activity_of(text) for text in self.pending.get() or ()]

    def _stored_record(self) -> LeadRecord | None:
        text = self.record.value()
        return None if text is None else decode_profile(text)

    def _store_record(self, record: LeadRecord) -> None:
        self.record.update(_record_text(record))
        released = record.progress.released
        if released is None:
            self.released.clear()
        else:
            self.released.update(released)

    def _seed(self, tenant: str, lead_id: str, first_ms: int, result: leadstep.StepResult) -> LeadRecord:
        store = None if self.seed_stores is None else self.seed_stores.get()
        seeded = self.step.seed(store, [leadstep.SeedRequest(tenant, lead_id, first_ms)], result)[0]
        return seeded or EMPTY_RECORD

    def _emit(self, result: leadstep.StepResult):
        counts = self.counts
        for name, n in result.counts.items():
            counts.inc(name, n)
        for tag, value in result.emitted:
            output = STEP_OUTPUTS[tag]
            yield value if output is None else (output, value)


class AssembleEmails(ProcessFunction):
    """EmailRequest -> AssembledEmail (`orion.campaigns.email.EmailAssembler`); a request
    whose template fails goes to DEAD with the reason (template_unsafe, template_failed,
    template_missing, bad_email_address), as Beam's AssembleEmails does."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], sender=None,
                 counters_dir: str | None = None):
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.sender = sender
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        from orion.campaigns.email import EmailAssembler, SenderSettings

        self.assembler = EmailAssembler(self.rules_dir, self.template_dirs, self.sender or SenderSettings(),
                                        rules=_load_rules(self.rules_dir, self.template_dirs))
        self.counts = Counts(runtime_context, self.counters_dir, "AssembleEmails")

    def close(self):
        self.counts.write()

    def process_element(self, request, ctx):
        from orion.campaigns.email import assemble_one

        made, counts = assemble_one(self.assembler, request)
        for name, n in counts.items():
            self.counts.inc(name, n)
        yield (DEAD, made) if isinstance(made, DeadLetter) else made


class WriteInBatches(KeyedProcessFunction):
    """Hands records to a writer (`StoreWriter`, `ProfileWriter`, `OutboxWriter`) in
    batches.

    A batch is buffered in keyed state (keyed by a shard number, a few per parallel
    instance), not in the function's memory: Python functions get no call before a
    checkpoint barrier, so a buffer in memory would be lost on a failover, and would be
    written twice after a restart from a savepoint. State in a checkpoint or savepoint is
    written exactly once after the restore. The buffer holds each record as the JSON
    text its writer makes of it (`writer.encode`, read back with `writer.decode`), never
    a pickle: a pickled record names its Python class, so a savepoint taken before a
    class moved or changed would no longer restore.

    Flushed when `batch_size` records are buffered, `flush_after_ms` of processing time
    after the first one, and at the end of event time (an event-time timer there: the
    end of a bounded input, or a drained job's); a record that comes after it is written
    at once. The writer's output (dead letters of records it refused) is this function's
    output. State: batch (list of text), buffered (count), flush_due
    (processing time).
    """

    def __init__(self, writer, batch_size: int, flush_after_ms: int, counters_dir: str | None = None):
        self.writer = writer
        self.batch_size = batch_size
        self.flush_after_ms = flush_after_ms
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        # ("batch", not the "buffer" of the releases that pickled it: a savepoint of
        # theirs restores without a type clash, once drained: `orion flink stop --drain`.)
        self.batch = runtime_context.get_list_state(ListStateDescriptor("batch", Types.STRING()))
        self.buffered = runtime_context.get_state(ValueStateDescriptor("buffered", Types.INT()))
        self.flush_due = runtime_context.get_state(ValueStateDescriptor("flush_due", Types.LONG()))
        self.counts = Counts(runtime_context, self.counters_dir, type(self.writer).__name__)
        self.writer.open(self.counts)

    def close(self):
        self.writer.close()
        self.counts.write()

    def process_element(self, record, ctx):
        self.batch.add(self.writer.encode(record))
        buffered = (self.buffered.value() or 0) + 1
        # Past the end of event time no timer fires any more, and records still come:
        # PyFlink forwards the final watermark (a drained or bounded job's) across the
        # network before what the step upstream emits for it.
        if buffered >= self.batch_size or ctx.timer_service().current_watermark() >= END_OF_INPUT:
            yield from self._flush()
            return
        self.buffered.update(buffered)
        if buffered == 1:
            timers = ctx.timer_service()
            timers.register_event_time_timer(END_OF_INPUT)
            if self.flush_due.value() is None:
                due = timers.current_processing_time() + self.flush_after_ms
                timers.register_processing_time_timer(due)
                self.flush_due.update(due)

    def on_timer(self, timestamp: int, ctx):
        if timestamp == self.flush_due.value():
            self.flush_due.clear()
        yield from self._flush()

    def _flush(self):
        batch = [self.writer.decode(text) for text in self.batch.get() or ()]
        self.batch.clear()
        self.buffered.clear()
        if batch:
            yield from self.writer.write(batch)


# How the writers keep a record in WriteInBatches' state: JSON text, escaped to ASCII (a
# lone surrogate from a `\ud800` in the input is not UTF-8, which Flink's STRING needs).
# The envelopes of profiles and outbox records carry a version, so a later release can
# read what an earlier one buffered.
STATE_FORMAT_VERSION = 1


def _state_text(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


class StoreWriter:
    """Writes batches of activities into the store named by `store_uri` (idempotent: a
    rewritten batch rewrites the same rows), then brings the activity index up to date;
    yields a DeadLetter (source "store") per activity the store refused. A store that
    cannot be reached raises StoreError: the job fails and restarts from its last
    checkpoint, and the batch is written again. The store is opened once per thread
    that writes (OpenedPerThread). Buffered as an activity's JSON text (its six fields,
    the shape the intake reads)."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri

    @staticmethod
    def encode(activity: Activity) -> str:
        return _activity_text(activity)

    @staticmethod
    def decode(text: str) -> Activity:
        return _activity_of(text)

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.stores = OpenedPerThread(lambda: open_initialised_store(self.store_uri))

    def write(self, batch: list[Activity]):
        store = self.stores.get()
        done = write_batch(store, batch)
        for name, n in done.counts.items():
            self.counts.inc(name, n)
        yield from done.refused.values()
        if done.written:
            self.counts.inc("indexed", store.index_activities(done.written))

    def close(self) -> None:
        if hasattr(self, "stores"):
            self.stores.close()


class ProfileWriter:
    """Writes batches of lead profiles (orion.store.base.StoredProfile) into the store
    named by `store_uri`, as Beam's WriteProfiles does: within a batch only each lead's
    last profile (the newest: a lead's profiles arrive in order, on one shard). Writing
    a profile replaces the lead's row, so a batch written again after a restart changes
    nothing. A profile the store cannot hold (ids that are not UTF-8 text, say) is a
    DeadLetter (source "store"), not a failed job; a store that cannot be reached raises
    StoreError, as StoreWriter's. Counter: `profiles_written`. Buffered as
    {"version", "tenant", "lead_id", "data", "next_wake"}, `data` the profile's own
    versioned text (orion.profiles)."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri

    @staticmethod
    def encode(profile) -> str:
        return _state_text({"version": STATE_FORMAT_VERSION, "tenant": profile.tenant,
                            "lead_id": profile.lead_id, "data": profile.data, "next_wake": profile.next_wake})

    @staticmethod
    def decode(text: str):
        from orion.store.base import StoredProfile

        data = json.loads(text)
        return StoredProfile(data["tenant"], data["lead_id"], data["data"], data.get("next_wake"))

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.stores = OpenedPerThread(lambda: open_initialised_store(self.store_uri))

    def write(self, batch: list):
        letters, counts = write_profile_batch(self.stores.get(), batch)
        for name, n in counts.items():
            self.counts.inc(name, n)
        yield from letters

    def close(self) -> None:
        if hasattr(self, "stores"):
            self.stores.close()


class OutboxWriter:
    """Queues batches of assembled emails, held emails and webhook calls in the outbox
    named by `outbox_uri` (orion.campaigns.outbox), as Beam's QueueEmails does. The outbox
    ignores a key it already has, so a batch written again after a restart queues nothing
    twice. Counters: `outbox_queued` (new records), `outbox_duplicates` (already there)
    and the new ones by kind (`queued_emails`, `queued_held`, `queued_webhooks`). An outbox that
    cannot be written raises: the job fails and restarts from its last checkpoint. The
    outbox is opened once per thread that writes (OpenedPerThread).

    Buffered as the outbox record it becomes (`orion.campaigns.outbox.outbox_record`:
    the row the outbox keeps, its payload in base64) with its kind, in a versioned
    envelope: {"version", "kind", "record"}."""

    def __init__(self, outbox_uri: str):
        self.outbox_uri = outbox_uri

    @staticmethod
    def encode(item) -> str:
        from orion.campaigns.outbox import outbox_record

        kind, record = outbox_record(item)
        fields = record._asdict()
        fields["payload"] = base64.b64encode(record.payload).decode("ascii")
        return _state_text({"version": STATE_FORMAT_VERSION, "kind": kind, "record": fields})

    @staticmethod
    def decode(text: str):
        from orion.campaigns.outbox import OutboxRecord

        data = json.loads(text)
        fields = dict(data["record"])
        fields["payload"] = base64.b64decode(fields["payload"])
        return data["kind"], OutboxRecord(**fields)

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.outboxes = OpenedPerThread(lambda: _opened_outbox(self.outbox_uri))

    def write(self, batch: list):
        from orion.campaigns.outbox import RECORD_KINDS

        outbox = self.outboxes.get()
        by_kind: dict[str, list] = {kind: [] for kind in RECORD_KINDS}
        for kind, record in batch:
            by_kind[kind].append(record)
        for kind, records in by_kind.items():
            if records:
                new = outbox.queue(records)
                self.counts.inc(kind, new)
                self.counts.inc("outbox_queued", new)
                self.counts.inc("outbox_duplicates", len(records) - new)
        return ()

    def close(self) -> None:
        if hasattr(self, "outboxes"):
            self.outboxes.close()


def record_json(record) -> str:
    """One JSONL line of an outcome or dead letter, as Beam's WriteJsonLines writes it."""
    to_json = getattr(record, "to_json", None)
    if to_json is not None:
        return to_json()
    to_dict = getattr(record, "to_json_dict", None)
    return json.dumps(to_dict() if to_dict else record, ensure_ascii=False, default=str)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def output_line(record) -> str:
    """The line the outcome and dead-letter files get (`record_json`), as the Flink STRING
    the FileSink takes: a lone surrogate (from a `\\ud800` in the input), which is not
    UTF-8, is written as its JSON escape, valid where it stands (only inside a string)."""
    line = record_json(record)
    if line.isascii():
        return line
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", line)
    return line


# Shard keys of the sinks: small picklable callables (a lambda would capture its
# closure), here so the workers import only this module.


class ByLead:
    """Records of one lead (activities, outcomes, profiles) on one shard, in order."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, record) -> int:
        return shard_of(f"{record.tenant}\x00{record.lead_id}", self.shards)


class ByOutboxKey:
    """Outbox records by their idempotency key's lead."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, record) -> int:
        request = getattr(record, "request", record)  # a HeldEmail holds its request
        return shard_of(f"{request.tenant}\x00{request.lead_id}", self.shards)


class BareKeyedState(KeyedProcessFunction):
    """The benchmark's ceiling: one value state read and written per element, nothing
    else (the least any per-lead Flink job does)."""

    def open(self, runtime_context):
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, value, ctx):
        self.count.update((self.count.value() or 0) + 1)
        return ()


class ParseJsonKey(FlatMapFunction):
    """The benchmark's ceiling: a file path -> ((tenant, lead), 1) per JSON line."""

    def flat_map(self, named_file):
        _, path = named_file
        with open_compressed(path) as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    yield record.get("tenant"), record.get("lead_id")
