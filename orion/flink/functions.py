"""The PyFlink functions of Orion's Flink job, thin over the engine-neutral core, as the
Beam DoFns in `orion.transforms` are:

  ReadActivityFiles     file path -> activities; dead letters to the DEAD side output
                        (`orion.intake.read_lines`: per-file replay lateness, line numbers)
  ParseActivities       payload (a line of a monitored file, a Kafka record) -> the same
                        (`orion.intake.parse_payload`)
  ActivityTime          the event time of an activity, for the watermark strategy
  SequenceAndEvaluate   keyed by (tenant, lead): buffers, orders, dedups and evaluates each
                        lead's activities with `orion.sequencing` and `orion.rules.evaluate`
  RunFlows              keyed by (tenant, lead): runs the campaign flows of each lead with
                        `orion.campaigns.flows.FlowEngine` (waits are event-time timers)
  AssembleEmails        email request -> MIME message (`orion.campaigns.email.EmailAssembler`)
  WriteInBatches        keyed by a shard number: buffers records in keyed state and hands
                        them to a writer (the activity store, the outbox, a JSONL file) in
                        batches

Every function loads its rules or opens its client in `open()`, so only configuration is
pickled. Counts go to Flink's metric system (the web UI, REST) and, when the job ends, to
a small JSON file per function instance that `orion.runners.flink` sums for its summary.

    .venv/bin/python -m orion.runners.flink --events orion/samples/events.jsonl
"""
from __future__ import annotations

import bz2
import collections
import gzip
import json
import os
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

from orion.activities import Activity, activity_sort_key
from orion.deadletters import DeadLetter
from orion.intake import parse_payload, read_lines
from orion.rules import evaluate
from orion.seeding import open_initialised_store, seed_flows, seed_state
from orion.sequencing import (
    DUPLICATE,
    LATE,
    LeadProgress,
    classify_behind,
    late_detail,
    release as release_ready,
    sorts_before_released,
)

# Elements between Python functions are pickled Python objects (activities, outcomes,
# dead letters); keys and the small bookkeeping values of state have real Flink types.
PICKLED = Types.PICKLED_BYTE_ARRAY()
LEAD_KEY = Types.TUPLE([Types.STRING(), Types.STRING()])
SHARD_KEY = Types.INT()
DEAD = OutputTag("dead-letters", PICKLED)
STORE = OutputTag("store", PICKLED)
# RunFlows' side outputs: held emails and webhook calls (both go to the outbox), the
# activities flow steps generate (to be stored) and the outcomes of evaluating them.
OUTBOX = OutputTag("outbox", PICKLED)
GENERATED = OutputTag("generated", PICKLED)
FLOW_OUTCOMES = OutputTag("flow-outcomes", PICKLED)

# Flink's end of event time (Watermark.MAX_WATERMARK): a bounded input ends with it, so
# a timer set there fires once, after the last element.
END_OF_INPUT = 2 ** 63 - 1
METRICS_GROUP = "orion"
SEQUENCER_SOURCE = "sequencer"  # DeadLetter.source of the sequencer's late activities


def lead_key(activity: Activity) -> tuple[str, str]:
    return activity.tenant, activity.lead_id


def shard_of(text: str, shards: int) -> int:
    """A stable shard number (crc32, unlike hash() the same in every process)."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % shards


class Counts:
    """A function instance's counters: Flink metrics (for the web UI and REST) and a
    local tally written to `counters_dir` when the function closes, for the summary."""

    def __init__(self, runtime_context, counters_dir: str | None, name: str):
        self.group = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.metrics: dict = {}
        self.tally: collections.Counter = collections.Counter()
        self.counters_dir = counters_dir
        self.name = name

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            self.tally[name] += n
            if ":" not in name:  # per-campaign and per-reason counts stay local
                metric = self.metrics.get(name)
                if metric is None:
                    metric = self.metrics[name] = self.group.counter(name)
                metric.inc(n)

    def write(self) -> None:
        if self.counters_dir is None or not self.tally:
            return
        folder = Path(self.counters_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(dict(self.tally)), encoding="utf-8")
        self.tally.clear()


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


def _open_compressed(path: str):
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
        with _open_compressed(path) as lines:
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


class SequenceAndEvaluate(KeyedProcessFunction):
    """Buffers each lead's activities and evaluates them in event-time order; the Flink
    twin of Beam's `_SequenceAndEvaluateFn`, over the same core functions.

    Keyed state, per (tenant, lead), created in open():
      pending   list of arrived activities not yet evaluated (no TTL: the timer drains it);
      released  (occurred_at, event_id) of the last activity evaluated: read on every
                arrival, so it is kept apart from the larger seen;
      seen      event id -> occurred_at of recently evaluated activities (dedup; the core
                bounds it by the dedup span);
      lead      orion.rules.LeadState, pickled;
      due       the time the release timer is set for, so it only ever moves earlier;
      poll_due  the processing time of the idle-release timer, if one is set.
    released, seen and lead expire `lead_ttl_days` after their last write (Flink's TTL
    is in processing time): a lead silent that long starts afresh.

    Timers: bounded input: one event-time timer per lead, at the end of input, releasing
    everything in order. Unbounded: an event-time timer at the earliest buffered
    activity's time. Flink's watermark already trails the newest event by the allowed
    lateness (a bounded-out-of-orderness strategy), so the timer is not pushed back by it
    again as Beam's, whose watermark does not trail, is; both release an activity once the
    stream has moved the allowed lateness past it. And, while a lead has activities
    waiting, a processing-time timer every `idle_release_ms` releases whatever the
    watermark has passed: PyFlink hands a watermark to Python asynchronously, so an
    event-time timer registered just before the watermark passed it fires only at the
    next watermark, which an idle stream never sends.

    A lead new to the job (no lead state) has its history counters seeded from the
    store at `seed_store_uri` before its first activity is evaluated (orion.seeding), as
    Beam's SequenceAndEvaluate does; None: no reads.

    Outputs: outcomes (main), activities to store (STORE), late activities (DEAD).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], dedup_span_ms: int,
                 bounded: bool, lead_ttl_days: int, counters_dir: str | None = None,
                 idle_release_ms: int = 60_000, seed_store_uri: str | None = None):
        self.seed_store_uri = seed_store_uri
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.dedup_span_ms = dedup_span_ms
        self.bounded = bounded
        self.lead_ttl_days = lead_ttl_days
        self.counters_dir = counters_dir
        self.idle_release_ms = idle_release_ms

    def open(self, runtime_context):
        ttl = _ttl_config(self.lead_ttl_days)

        def expiring(descriptor):
            descriptor.enable_time_to_live(ttl)
            return descriptor

        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", PICKLED))
        self.released = runtime_context.get_state(
            expiring(ValueStateDescriptor("released", Types.TUPLE([Types.LONG(), Types.STRING()]))))
        self.seen = runtime_context.get_state(expiring(ValueStateDescriptor("seen", PICKLED)))
        self.lead = runtime_context.get_state(expiring(ValueStateDescriptor("lead", PICKLED)))
        self.due = runtime_context.get_state(ValueStateDescriptor("due", Types.LONG()))
        self.poll_due = runtime_context.get_state(ValueStateDescriptor("poll_due", Types.LONG()))
        self.rules = _load_rules(self.rules_dir, self.template_dirs)
        self.counts = Counts(runtime_context, self.counters_dir, "SequenceAndEvaluate")
        self.seed_stores = (None if self.seed_store_uri is None
                            else OpenedPerThread(lambda: open_initialised_store(self.seed_store_uri)))

    def close(self):
        if getattr(self, "seed_stores", None) is not None:
            self.seed_stores.close()
        self.counts.write()

    def _progress(self) -> LeadProgress:
        released = self.released.value()
        return LeadProgress(tuple(released) if released is not None else None, self.seen.value() or {})

    def process_element(self, activity: Activity, ctx):
        last = self.released.value()
        if last is not None:
            last = tuple(last)
        if sorts_before_released(last, activity):
            progress = LeadProgress(last, self.seen.value() or {})
            if classify_behind(progress, activity) == DUPLICATE:
                self.counts.inc("duplicates")
                return
            self.counts.inc("dead_letters")
            self.counts.inc(f"dead_letters:{LATE}")
            yield DEAD, DeadLetter(activity.to_json_dict(), LATE, late_detail(activity, last), SEQUENCER_SOURCE)
            return
        self.pending.add(activity)
        timers = ctx.timer_service()
        when = END_OF_INPUT if self.bounded else activity.occurred_at
        current = self.due.value()
        if current is None or when < current:
            if current is not None:
                timers.delete_event_time_timer(current)
            timers.register_event_time_timer(when)
            self.due.update(when)
        if not self.bounded and self.poll_due.value() is None:
            self._poll_later(timers)

    def _poll_later(self, timers) -> None:
        due = timers.current_processing_time() + self.idle_release_ms
        timers.register_processing_time_timer(due)
        self.poll_due.update(due)

    def on_timer(self, timestamp: int, ctx):
        timers = ctx.timer_service()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.poll_due.clear()
            up_to = timers.current_watermark()
        else:
            up_to = None if self.bounded else max(timestamp, timers.current_watermark())
        before = self._progress()
        ready, rest, duplicates, after = release_ready(before, self.pending.get(), up_to, self.dedup_span_ms)
        if ready or duplicates:
            self.pending.clear()
            if rest:
                self.pending.add_all(rest)
        self.counts.inc("duplicates", duplicates)
        if after is not before:
            self.released.update(after.released)
            self.seen.update(after.seen)
        if ready:
            state = self.lead.value()
            if state is None and self.seed_stores is not None:
                # A lead new to this job may have a history in the store already.
                first = ready[0]
                state = seed_state(self.rules, self.seed_stores.get(), first.tenant, first.lead_id,
                                   first.occurred_at)
                if state is not None:
                    self.counts.inc("leads_seeded_from_store")
            outcome_count = qualified = 0
            for activity in ready:
                state, outcomes = evaluate(self.rules, state, activity)
                yield STORE, activity
                for outcome in outcomes:
                    outcome_count += 1
                    if outcome.qualified:
                        qualified += 1
                        self.counts.inc(f"fired:{outcome.tenant}/{outcome.campaign}")
                    yield outcome
            self.lead.update(state)
            self.counts.inc("evaluated", len(ready))
            self.counts.inc("outcomes", outcome_count)
            self.counts.inc("qualified", qualified)
        if rest:
            when = rest[0].occurred_at
            if when != self.due.value():
                timers.register_event_time_timer(when)
                self.due.update(when)
            if not self.bounded and self.poll_due.value() is None:
                self._poll_later(timers)
        else:
            self.due.clear()


class RunFlows(KeyedProcessFunction):
    """Runs each lead's campaign flows; the Flink twin of Beam's `_RunFlowsFn`
    (orion/transforms/flows.py), over the same `FlowEngine`.

    Input: the activities SequenceAndEvaluate released (deduplicated, on time), keyed by
    (tenant, lead). Unlike Beam, Flink keeps the order of a key's elements between two
    operators, so they arrive in the order they were released and are processed at once,
    without the FLUSH buffer the Beam DoFn needs.

    Keyed state, per (tenant, lead), created in open():
      done     (occurred_at, event_id) of the last activity processed: a redelivered one
               is skipped;
      flows    orion.campaigns.flows.LeadFlows, pickled: the lead's state, its running
               flows (next step, wake-up time) and recent email times;
      wake_at  the time the wake timer is set for, so it only ever moves earlier.
    done and flows expire `lead_ttl_days` after their last write, as the sequencer's
    lead state does.

    Timer (event time): the earliest wake-up time of a waiting flow. When it fires, every
    wait the watermark has passed resumes, each at its own wake-up time, as Beam's timers
    fire one after the other (PyFlink may not fire a timer set behind the watermark,
    at the end of a bounded input for one, until the next watermark, which never comes).

    Outputs: email requests (main), held emails and webhook calls (OUTBOX), generated
    activities (GENERATED), the outcomes of evaluating them (FLOW_OUTCOMES), dead
    letters (DEAD).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], max_cascade_depth: int,
                 lead_ttl_days: int, counters_dir: str | None = None, seed_store_uri: str | None = None):
        self.seed_store_uri = seed_store_uri
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.max_cascade_depth = max_cascade_depth
        self.lead_ttl_days = lead_ttl_days
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        from orion.campaigns.flows import FlowEngine

        ttl = _ttl_config(self.lead_ttl_days)
        done = ValueStateDescriptor("done", Types.TUPLE([Types.LONG(), Types.STRING()]))
        done.enable_time_to_live(ttl)
        flows = ValueStateDescriptor("flows", PICKLED)
        flows.enable_time_to_live(ttl)
        self.done = runtime_context.get_state(done)
        self.flows = runtime_context.get_state(flows)
        self.wake_at = runtime_context.get_state(ValueStateDescriptor("wake_at", Types.LONG()))
        self.engine = FlowEngine(_load_rules(self.rules_dir, self.template_dirs), self.max_cascade_depth)
        self.counts = Counts(runtime_context, self.counters_dir, "RunFlows")
        self.seed_stores = (None if self.seed_store_uri is None
                            else OpenedPerThread(lambda: open_initialised_store(self.seed_store_uri)))

    def close(self):
        if getattr(self, "seed_stores", None) is not None:
            self.seed_stores.close()
        self.counts.write()

    def process_element(self, activity: Activity, ctx):
        sort_key = activity_sort_key(activity)
        last = self.done.value()
        if last is not None and sort_key <= tuple(last):
            self.counts.inc("flow_redeliveries")  # already processed
            return
        self.done.update(sort_key)
        state = self.flows.value()
        if state is None and self.seed_stores is not None:
            # As SequenceAndEvaluate does: a lead new to the job starts from its stored history.
            state = seed_flows(self.engine.rules, self.seed_stores.get(), activity.tenant, activity.lead_id,
                               activity.occurred_at)
        state, result = self.engine.process_activity(state, activity)
        yield from self._emit(result)
        self.flows.update(state)
        self._schedule(state, ctx.timer_service())

    def on_timer(self, timestamp: int, ctx):
        tenant, lead_id = ctx.get_current_key()
        timers = ctx.timer_service()
        self.wake_at.clear()
        state = self.flows.value()
        if state is None:
            return
        up_to = max(timestamp, timers.current_watermark())
        due = state.next_wake()
        while due is not None and due <= up_to:
            state, result = self.engine.wake(state, tenant, lead_id, due)
            yield from self._emit(result)
            due = state.next_wake()
        self.flows.update(state)
        self._schedule(state, timers)

    def _schedule(self, state, timers) -> None:
        next_wake = state.next_wake()
        if next_wake is None:
            return
        current = self.wake_at.value()
        if current is None or next_wake < current:
            timers.register_event_time_timer(next_wake)
            self.wake_at.update(next_wake)

    def _emit(self, result):
        counts = self.counts
        for request in result.emails:
            counts.inc("emails_requested")
            yield request
        for held in result.held:
            counts.inc("emails_held")
            counts.inc(f"emails_held:{held.reason}")
            yield OUTBOX, held
        for call in result.webhooks:
            counts.inc("webhooks")
            yield OUTBOX, call
        for activity in result.activities:
            counts.inc("flow_activities")
            yield GENERATED, activity
        for outcome in result.outcomes:
            if outcome.qualified:
                counts.inc(f"fired:{outcome.tenant}/{outcome.campaign}")
            yield FLOW_OUTCOMES, outcome
        for dead in result.dead_letters:
            counts.inc("dead_letters")
            counts.inc("flow_dead_letters")
            counts.inc(f"dead_letters:{dead.reason}")
            yield DEAD, dead


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

        self.assembler = EmailAssembler(self.rules_dir, self.template_dirs, self.sender or SenderSettings())
        self.counts = Counts(runtime_context, self.counters_dir, "AssembleEmails")

    def close(self):
        self.counts.write()

    def process_element(self, request, ctx):
        from orion.campaigns.email import ASSEMBLY_SOURCE, AssemblyError

        try:
            email = self.assembler.assemble(request)
        except AssemblyError as err:
            self.counts.inc("dead_letters")
            self.counts.inc("flow_dead_letters")
            self.counts.inc(f"dead_letters:{err.reason}")
            yield DEAD, DeadLetter(request._asdict(), err.reason, err.detail, ASSEMBLY_SOURCE)
            return
        self.counts.inc("emails_assembled")
        yield email


class WriteInBatches(KeyedProcessFunction):
    """Hands records to a writer (`StoreWriter`, `JsonLinesWriter`) in batches.

    A batch is buffered in keyed state (keyed by a shard number, a few per parallel
    instance), not in the function's memory: Python functions get no call before a
    checkpoint barrier, so a buffer in memory would be lost on a failover, and would be
    written twice after a restart from a savepoint. State in a checkpoint or savepoint is
    written exactly once after the restore.

    Flushed when `batch_size` records are buffered, `flush_after_ms` of processing time
    after the first one, and at the end of a bounded input (an event-time timer at the
    end of event time). The writer's output (dead letters of records it refused) is this
    function's output. State: buffer (list), buffered (count), flush_due (processing time).
    """

    def __init__(self, writer, batch_size: int, flush_after_ms: int, counters_dir: str | None = None):
        self.writer = writer
        self.batch_size = batch_size
        self.flush_after_ms = flush_after_ms
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        self.buffer = runtime_context.get_list_state(ListStateDescriptor("buffer", PICKLED))
        self.buffered = runtime_context.get_state(ValueStateDescriptor("buffered", Types.INT()))
        self.flush_due = runtime_context.get_state(ValueStateDescriptor("flush_due", Types.LONG()))
        self.counts = Counts(runtime_context, self.counters_dir, type(self.writer).__name__)
        self.writer.open(self.counts)

    def close(self):
        self.writer.close()
        self.counts.write()

    def process_element(self, record, ctx):
        self.buffer.add(record)
        buffered = (self.buffered.value() or 0) + 1
        if buffered >= self.batch_size:
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
        batch = list(self.buffer.get() or ())
        self.buffer.clear()
        self.buffered.clear()
        if batch:
            yield from self.writer.write(batch)


class StoreWriter:
    """Writes batches of activities into the store named by `store_uri` (idempotent: a
    rewritten batch rewrites the same rows), then brings the activity index up to date;
    yields a DeadLetter (source "store") per activity the store refused. A store that
    cannot be reached raises StoreError: the job fails and restarts from its last
    checkpoint, and the batch is written again. The store is opened once per thread
    that writes (OpenedPerThread)."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.stores = OpenedPerThread(lambda: open_initialised_store(self.store_uri))

    def write(self, batch: list[Activity]):
        from orion.transforms.sinks import STORE_SOURCE

        store = self.stores.get()
        result = store.write_with_failures(batch)
        self.counts.inc("stored", result.written)
        refused = {id(f.activity): f for f in result.failed}
        if refused:
            self.counts.inc("store_failed", len(refused))
            self.counts.inc("dead_letters", len(refused))
        for failure in result.failed:
            self.counts.inc(f"dead_letters:{failure.reason}")
            yield DeadLetter(failure.activity.to_json_dict(), failure.reason, failure.detail, STORE_SOURCE)
        written = [activity for activity in batch if id(activity) not in refused]
        if written:
            self.counts.inc("indexed", store.index_activities(written))

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
    outbox is opened once per thread that writes (OpenedPerThread)."""

    def __init__(self, outbox_uri: str):
        self.outbox_uri = outbox_uri

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.outboxes = OpenedPerThread(lambda: _opened_outbox(self.outbox_uri))

    def write(self, batch: list):
        from orion.campaigns.flows import HeldEmail, WebhookCall
        from orion.campaigns.outbox import email_record, held_record, webhook_record

        by_kind: dict[str, list] = {"queued_emails": [], "queued_held": [], "queued_webhooks": []}
        for item in batch:
            if isinstance(item, HeldEmail):
                by_kind["queued_held"].append(held_record(item))
            elif isinstance(item, WebhookCall):
                by_kind["queued_webhooks"].append(webhook_record(item))
            else:
                by_kind["queued_emails"].append(email_record(item))
        outbox = self.outboxes.get()
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


class JsonLinesWriter:
    """Appends records as JSON lines to `<prefix>-<pid>-<id>.jsonl`, one file per function
    instance, in the very format of Beam's WriteJsonLines; flushed after every batch."""

    def __init__(self, prefix: str, counter: str):
        self.prefix = prefix
        self.counter = counter

    def open(self, counts: Counts) -> None:
        self.counts = counts
        self.path = Path(f"{self.prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = None

    def write(self, batch: list):
        from orion.transforms.sinks import _to_json as record_json

        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write("".join(record_json(record) + "\n" for record in batch))
        self.file.flush()
        self.counts.inc(self.counter, len(batch))
        return ()

    def close(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None


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
        with _open_compressed(path) as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    yield record.get("tenant"), record.get("lead_id")
