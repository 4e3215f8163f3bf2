"""The PyFlink functions of Orion's Flink job, thin over the engine-neutral core, as the
Beam DoFns in `orion.transforms` are:

  ReadActivityFiles     file path -> its activities as LeadBatches (a lead's activities
                        of a chunk of the file, in order); dead letters, in lists, to the
                        DEAD side output (`orion.intake.read_lines`: per-file replay
                        lateness, line numbers)
  ParseActivities       payload (a line of a monitored file, a Kafka record) -> the same
                        (`orion.intake.parse_payload`)
  ActivityTime          the event time of a LeadBatch, for the watermark strategy
  LeadStep              keyed by (tenant, lead): the one stateful step per lead
                        (`orion.leadstep`): orders, dedups and evaluates each activity
                        once, runs the campaign flows inline (waits are event-time
                        timers) and emits the lead's durable profile
  AssembleEmails        email requests -> MIME messages (`orion.campaigns.email.EmailAssembler`)
  WriteInBatches        keyed by a shard number: buffers records in keyed state, as
                        JSON text, and hands them to a writer (the activity store, the
                        lead profiles, the outbox) in batches
  output_lines          outcomes or dead letters -> their JSONL lines, one string, for
                        Flink's FileSink

Every element that crosses from one Python function to the next is pickled and goes
through the JVM (and, in process mode, over gRPC to another process): that crossing,
not the work on either side, is what a per-event job pays most for. So past the readers
an element is a batch: a LeadBatch holds a lead's activities, and every stream after
LeadStep carries lists of records (a step call's records of one kind; a sink's refused
records), one crossing for many. The lines for a FileSink go as one string holding
several lines.

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
from typing import Iterable, NamedTuple

import orjson
from pyflink.common import Types
from pyflink.common.time import Duration, Time
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, OutputTag, ProcessFunction, TimeDomain
from pyflink.datastream.state import ListStateDescriptor, StateTtlConfig, ValueStateDescriptor

from orion import leadstep
from orion.leadstep import WakeUp
from orion.activities import MS_PER_DAY, Activity, activity_sort_key
from orion.deadletters import DeadLetter
from orion.intake import parse_payload, read_lines
from orion.profiles import EMPTY_RECORD, LeadRecord, decode_profile, encode_profile
from orion.seeding import open_initialised_store
from orion.store.base import write_batch, write_profile_batch

# Elements between Python functions are pickled Python objects (LeadBatches, lists of
# outcomes, dead letters ...); they live in no state. Keys and every state (LeadStep's,
# the sinks' batch buffers) have real Flink types and schema'd, versioned text: a
# checkpoint or savepoint holds no pickle, so a new release of Orion restores it.
PICKLED = Types.PICKLED_BYTE_ARRAY()
LEAD_KEY = Types.TUPLE([Types.STRING(), Types.STRING()])
SHARD_KEY = Types.INT()
# LeadStep's side outputs (its main output is the outcomes), one per kind of record;
# each element a list of records.
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


# At the end of a bounded input LeadStep seeds this many leads new to the job with one
# set of store reads (SeedReads).
SEED_GROUP = 200
# How many leads LeadStep keeps in memory what it knows of (KnownLead) over a bounded
# input; the ones past it are read from state, as after a restore.
LEADS_KNOWN = 500_000
# The readers hand a lead's activities over in one LeadBatch once this many activities
# of their input are held: the batches are as large as the input allows, and a reader's
# memory stays bounded whatever a file or payload holds.
READER_CHUNK = 20_000


class LeadBatch(NamedTuple):
    """Activities of one (tenant, lead), in input order: one element from a reader to
    LeadStep, keyed as an activity of the lead is."""

    tenant: str
    lead_id: str
    activities: tuple  # of Activity


def lead_key(element: LeadBatch | WakeUp) -> tuple[str, str]:
    return element.tenant, element.lead_id


def as_records(element) -> list:
    """An element of a stream that carries lists of records (the step's outputs and the
    sinks'), or a single record (a stream of single records, such as the roll-ups'), as
    a list."""
    return element if isinstance(element, list) else [element]


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
        self.lock = threading.Lock()  # the tally
        self.write_lock = threading.Lock()  # the file
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
        # One write at a time, each of a snapshot taken under the same lock: the thread's
        # write of an older tally can never land after the final one (`write`).
        with self.write_lock:
            with self.lock:
                if not self.changed:
                    return
                snapshot = dict(self.tally)
                self.changed = False
            self._dump(snapshot)

    def _dump(self, snapshot: dict) -> None:
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
    """Lead state expires `days` after its last write (processing time). An expired
    state not cleaned up yet may still be read: the expiry bounds the state's size, it
    decides nothing (a lead read back simply goes on, as one never expired would). With
    NeverReturnExpired PyFlink's process mode would cache neither reads nor writes of
    the state: every access a round trip to the JVM.

    Expired state is cleaned up in the background as Flink's defaults do it, each
    strategy named: incrementally on the heap backend (5 entries an access), by the
    compaction filter on RocksDB (the time queried every 1,000 entries). Named, because
    PyFlink 2.3 builds its default filter strategy whenever the defaults are on, and with
    it a java.time.Duration (a periodic compaction time it never sends to Flink) through a
    py4j gateway; a function opening its state in a TaskManager has none, so PyFlink
    started a JVM of its own for it in every worker, on the job's start."""
    return StateTtlConfig.new_builder(Time.days(days)) \
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite) \
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp) \
        .disable_cleanup_in_background() \
        .cleanup_incrementally(INCREMENTAL_CLEANUP_ENTRIES, False) \
        .cleanup_in_rocksdb_compact_filter(ROCKSDB_CLEANUP_ENTRIES, _NOT_SENT) \
        .build()


# Flink's defaults for cleaning up expired state in the background.
INCREMENTAL_CLEANUP_ENTRIES = 5
ROCKSDB_CLEANUP_ENTRIES = 1000
_NOT_SENT = Duration(None)  # PyFlink 2.3 reads no periodic compaction time (see _ttl_config)


def _attempt_number(runtime_context) -> int | None:
    """Which attempt of its task a function runs in (0: the first; a restart after a
    failure restores the last checkpoint); None when it cannot be told."""
    try:
        return runtime_context.get_attempt_number()
    except AttributeError:
        # PyFlink 2.3's thread mode asks Flink's RuntimeContext for getAttemptNumber,
        # which Flink 2 moved to its TaskInfo.
        try:
            return runtime_context._runtime_context.getTaskInfo().getAttemptNumber()
        except AttributeError:
            return None


def open_compressed(path: str):
    """Files are read in binary, as Beam's ReadMatches does, decompressed by suffix."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


class _Parse:
    """What the two parsing functions share: rules' activity types loaded in open(),
    activities out in LeadBatches, dead letters in lists to DEAD, everything counted."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], counters_dir: str | None):
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        self.types = _load_rules(self.rules_dir, self.template_dirs).activity_types
        self.counts = Counts(runtime_context, self.counters_dir, type(self).__name__)

    def close(self):
        self.counts.write()

    def batches(self, found: Iterable[Activity | DeadLetter]):
        """The activities grouped by lead (a LeadBatch each, in input order), a chunk of
        READER_CHUNK activities at a time, and the dead letters in lists (DEAD) of at
        most as many."""
        groups: dict[tuple[str, str], list[Activity]] = {}
        letters: list[DeadLetter] = []
        read = held = dead = 0
        reasons: collections.Counter = collections.Counter()
        for item in found:
            read += 1
            if isinstance(item, Activity):
                key = (item.tenant, item.lead_id)
                group = groups.get(key)
                if group is None:
                    groups[key] = [item]
                else:
                    group.append(item)
                held += 1
                if held % READER_CHUNK == 0:
                    yield from _lead_batches(groups)
                    groups = {}
            else:
                letters.append(item)
                reasons[item.reason] += 1
                if len(letters) == READER_CHUNK:
                    yield DEAD, letters
                    letters = []
                    dead += READER_CHUNK
        yield from _lead_batches(groups)
        if letters:
            yield DEAD, letters
        counts = self.counts
        counts.inc("events_read", read)
        counts.inc("activities_parsed", held)
        counts.inc("dead_letters", dead + len(letters))
        for reason, n in reasons.items():
            counts.inc(f"dead_letters:{reason}", n)


def _lead_batches(groups: dict[tuple[str, str], list[Activity]]):
    for (tenant, lead_id), activities in groups.items():
        yield LeadBatch(tenant, lead_id, tuple(activities))


class ReadActivityFiles(_Parse, ProcessFunction):
    """(name, absolute path) of a JSONL file -> its activities (main output, a LeadBatch
    per lead and chunk of the file) and dead letters (DEAD, citing `name:line`), read in
    order with the per-file replay lateness, exactly as Beam's ReadActivityFiles."""

    def __init__(self, rules_dir, template_dirs, allowed_lateness_ms: int, counters_dir=None):
        super().__init__(rules_dir, template_dirs, counters_dir)
        self.allowed_lateness_ms = allowed_lateness_ms

    def process_element(self, named_file, ctx):
        name, path = named_file
        with open_compressed(path) as lines:
            yield from self.batches(read_lines(lines, self.types, name, self.allowed_lateness_ms))


class ParseActivities(_Parse, ProcessFunction):
    """A payload (a line of a monitored file, a Kafka record: one activity, a JSON array
    or JSONL) -> its activities (main output, a LeadBatch per lead) and dead letters
    (DEAD)."""

    def __init__(self, rules_dir, template_dirs, source: str, counters_dir=None):
        super().__init__(rules_dir, template_dirs, counters_dir)
        self.source = source

    def process_element(self, payload: str, ctx):
        yield from self.batches(parse_payload(payload, self.types, self.source))


class ActivityTime(TimestampAssigner):
    """A LeadBatch's event time, epoch milliseconds: its newest activity's. The
    bounded-out-of-orderness watermark follows the newest time seen, so it moves as it
    would over the batch's activities one by one."""

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return max(activity.occurred_at for activity in value.activities)


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


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _json_text(data) -> str:
    """Compact JSON text, ASCII only (Flink's STRING is UTF-8, which a lone surrogate from
    a `\\ud800` in the input is not: escaped, it is). Every activity and state record
    is written and read back a few times on its way through the job: orjson, about ten
    times faster than json, writes what it can (ASCII, no lone surrogate, integers of 64
    bits), json the rest."""
    try:
        raw = orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a very large integer
        return _COMPACT_JSON.encode(data)
    return raw.decode("ascii") if raw.isascii() else _COMPACT_JSON.encode(data)


def _json_of(text: str):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # an escaped lone surrogate, which orjson refuses
        return json.loads(text)


def _activity_text(activity: Activity) -> str:
    """An activity as JSON text of its six fields, the shape the intake reads."""
    return _json_text(activity.to_json_dict())


def _activity_of(text: str) -> Activity:
    return Activity(**_json_of(text))


def _record_text(record: LeadRecord) -> str:
    """A LeadRecord as versioned profile JSON with its history counters (valid UTF-8, as
    Flink's STRING needs)."""
    return encode_profile(record, history=True)


class SeedReads:
    """The store reads that seed leads new to the job (`leadstep.LeadStep.seed`: the
    profile, the activity index, the history), made for many leads at once and handed
    out one lead at a time: a KeyedProcessFunction sees one lead per call, and a read per
    lead costs the store a round trip or three. `prefetch` asks the store for a group of
    leads together, as Beam's LeadSteps does for a bundle; the seeding of each lead then
    takes its own answers from here (once) and reads anything not prefetched (a lead
    whose first activity is not the one prefetched for) from the store itself. So a lead
    is seeded as a read of its own would seed it, as long as nothing else writes its rows
    in between: only its own step does, after seeding it. Answers are kept in memory
    only: after a restore, the store is read again. `store` gives the store to read (the
    calling thread's)."""

    def __init__(self, store):
        self.store = store
        self.profiles: dict = {}
        self.indexes: dict = {}
        self.history_reads: dict = {}

    def prefetch(self, rules, leads: list) -> None:
        """Read the store for `leads` (SeedRequests) in one go."""
        from orion.seeding import seed_states

        store = self.store()
        keys = [(lead.tenant, lead.lead_id) for lead in leads]
        self.profiles.update(zip(keys, store.read_profiles(keys)))
        seed_states(rules, _RecordingReads(store, self.indexes, self.history_reads),
                    [(lead.tenant, lead.lead_id, lead.first_ms) for lead in leads])

    def has(self, tenant: str, lead_id: str) -> bool:
        return (tenant, lead_id) in self.profiles

    def read_profiles(self, keys):
        return _answered(self.profiles, keys, self.store().read_profiles)

    def read_indexes(self, reads):
        return _answered(self.indexes, reads, self.store().read_indexes)

    def histories(self, reads):
        return _answered(self.history_reads, reads, self.store().histories)


def _answered(cache: dict, asked, read) -> list:
    """The answers to `asked`: from `cache` (each taken out once used), the rest read."""
    missing = [item for item in asked if item not in cache]
    found = dict(zip(missing, read(missing))) if missing else {}
    return [cache.pop(item) if item in cache else found[item] for item in asked]


class _RecordingReads:
    """A store whose index and history reads are kept, by read, for SeedReads."""

    def __init__(self, store, indexes: dict, history_reads: dict):
        self.store = store
        self.indexes = indexes
        self.history_reads = history_reads

    def read_indexes(self, reads):
        found = self.store.read_indexes(reads)
        self.indexes.update(zip(reads, found))
        return found

    def histories(self, reads):
        found = self.store.histories(reads)
        self.history_reads.update(zip(reads, found))
        return found


class KnownLead:
    """What LeadStep knows of a lead over a bounded input without reading its state:
    how many activities it has buffered, the time of the first (to seed it with), and
    whether it has been replayed yet (a hot lead, early: only then it has a record)."""

    __slots__ = ("buffered", "first_ms", "replayed")

    def __init__(self, first_ms: int | None):
        self.buffered = 0
        self.first_ms = first_ms
        self.replayed = False


class LeadMeta:
    """LeadStep's bookkeeping of a lead, read once and written once (if it changed) per
    call: `released` ((occurred_at, event_id) of the last activity evaluated, read on
    every arrival, so it is kept apart from the larger record), `buffered` (how many
    activities `pending` holds), `due` (the time the release timer is set for),
    `wake_at` (the wake timer's) and `poll_due` (the idle-release timer's, processing
    time). Kept as one state, versioned JSON text: {"v": 1, "released": [ms, id],
    "buffered": n, "due": ms, "wake_at": ms, "poll_due": ms}, the unset left out."""

    VERSION = 1
    __slots__ = ("released", "buffered", "due", "wake_at", "poll_due", "_read")

    def __init__(self, released: tuple[int, str] | None = None, buffered: int = 0, due: int | None = None,
                 wake_at: int | None = None, poll_due: int | None = None):
        self.released = released
        self.buffered = buffered
        self.due = due
        self.wake_at = wake_at
        self.poll_due = poll_due
        self._read = self._fields()

    @classmethod
    def of_text(cls, text: str | None) -> "LeadMeta":
        if text is None:
            return cls()
        data = json.loads(text)
        released = data.get("released")
        return cls(None if released is None else (released[0], released[1]), data.get("buffered", 0),
                   data.get("due"), data.get("wake_at"), data.get("poll_due"))

    def _fields(self) -> tuple:
        return self.released, self.buffered, self.due, self.wake_at, self.poll_due

    def changed(self) -> bool:
        return self._fields() != self._read

    def text(self) -> str | None:
        """The state's text; None when there is nothing to keep."""
        data: dict = {"v": self.VERSION}
        if self.released is not None:
            data["released"] = list(self.released)
        if self.buffered:
            data["buffered"] = self.buffered
        for name in ("due", "wake_at", "poll_due"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        # (ASCII-escaped: an event id may hold a lone surrogate, which Flink's STRING,
        # UTF-8, cannot.)
        return json.dumps(data, separators=(",", ":")) if len(data) > 1 else None


class LeadStep(KeyedProcessFunction):
    """The one stateful step per (tenant, lead), over the engine-neutral core
    (`orion.leadstep.LeadStep`), as Beam's LeadSteps (orion/transforms/evaluate.py) is:
    each activity is evaluated once, in event-time order, and the campaign flows it
    qualifies the lead for run inline, their waits as event-time timers.

    Input: LeadBatches, a lead's activities in the order they came, each activity
    judged on arrival as it would be alone (`LeadStep.arrival`, `over_budget`), with
    one read and one write of the lead's bookkeeping per batch; and WakeUps.

    Keyed state, per (tenant, lead), created in open():
      pending   list of arrived activities not yet evaluated, each as JSON text of its
                six fields (no TTL: the timer drains it);
      record    the lead's orion.profiles.LeadRecord (sequencer progress with the recent
                event ids, lead state with its history counters, running flows, recent
                sends) as versioned profile JSON, `encode_profile(history=True)`;
      lead      the step's bookkeeping (LeadMeta: what was released last, how many
                activities are buffered, the times its timers are set for), versioned
                JSON text.
    Nothing is pickled, so a savepoint survives a new release of Orion. record and lead
    expire `lead_ttl_days` after their last write (Flink's TTL is in processing time):
    a lead silent that long is seeded again from its profile in the store. (Releases
    before 2026-12 kept the bookkeeping in five states: released, buffered, due,
    wake_at, poll_due. Their savepoints restore: a lead with no `lead` state starts its
    bookkeeping afresh, its arrivals judged against the record when released, and its
    timers still fire.)

    A lead new to the job (no record) is seeded from the store at `seed_store_uri`, its
    profile and its history counters (`LeadStep.seed`), before anything is evaluated;
    None: no reads, the lead starts empty. Every change to the record is emitted as the
    lead's profile (PROFILES), which WriteProfiles writes to the store.

    Bounded input (files): each lead is replayed once, at the end of input (an
    event-time timer there): its activities in order (`LeadStep.replay`), then the flow
    waits due by `horizon`, the input's newest activity; later waits stay in the
    profile for the next run. A WakeUp (a lead whose stored profile has a wait due by
    the horizon) only sets that timer. The record is not written back at the end: the
    job reads it no more, and the next run starts from the profile. In a job started
    without state the step keeps in memory what it knows of each lead (KnownLead) and
    reads neither its bookkeeping nor its record, and the leads new to the job are
    seeded SEED_GROUP at a time (SeedReads).

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

    `lineage` (unbounded input): the id of the job's lineage (orion.leadstep.Lineage).
    Every profile the step writes then says the lineage wrote it, and from what earlier
    profile; in an attempt restored from a checkpoint or savepoint (`restored`, or an
    attempt number past 0), a lead the state does not know whose profile this lineage
    wrote within the state's TTL starts from that earlier profile, and the activities
    read again since the checkpoint are evaluated again.

    run_flows False (no outbox): evaluation only, no flow starts.

    Outputs: outcomes (main); STORE, DEAD, EMAILS, OUTBOX and PROFILES (STEP_OUTPUTS);
    each element a list, what one call emitted to that output, in order.
    Counters: the core step's, a bounded set of names (orion.leadstep.COUNTERS),
    `lead_batches` (LeadBatches received) and `leads_woken_from_store` (WakeUps).
    """

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], *, dedup_span_ms: int, bounded: bool,
                 run_flows: bool, max_cascade_depth: int, lead_ttl_days: int, horizon: int | None = None,
                 seed_store_uri: str | None = None, counters_dir: str | None = None,
                 idle_release_ms: int = 60_000, max_pending: int = leadstep.DEFAULT_MAX_PENDING,
                 restored: bool = False, lineage: str | None = None):
        self.max_pending = max_pending
        self.restored = restored
        self.lineage = lineage
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

        # Three states, not one per field: in process mode every state a function
        # registers is looked up, cached and written back per key, each miss a round
        # trip to the JVM.
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.STRING()))
        self.record = runtime_context.get_state(expiring(ValueStateDescriptor("record", Types.STRING())))
        self.lead = runtime_context.get_state(expiring(ValueStateDescriptor("lead", Types.STRING())))
        attempt = _attempt_number(runtime_context)
        lineage = None
        if self.lineage is not None and not self.bounded:
            # (An attempt that cannot tell its number is taken for a restart: a lead its
            # lineage wrote within the TTL that its state does not know is lost state.)
            lineage = leadstep.Lineage(self.lineage, self.restored or attempt != 0, self.lead_ttl_days * MS_PER_DAY)
        self.step = leadstep.LeadStep(_load_rules(self.rules_dir, self.template_dirs),
                                      dedup_span_ms=self.dedup_span_ms, run_flows=self.run_flows,
                                      max_cascade_depth=self.max_cascade_depth, max_pending=self.max_pending,
                                      lineage=lineage)
        self.counts = Counts(runtime_context, self.counters_dir, "LeadStep")
        self.seed_stores = (None if self.seed_store_uri is None
                            else OpenedPerThread(lambda: open_initialised_store(self.seed_store_uri)))
        # Bounded input in a job that started without state (no savepoint, first
        # attempt): a lead this instance has not seen has no state, so what the step
        # knows of the leads it has seen spares it reading their bookkeeping and
        # record: in process mode each read of a lead's state is a round trip to the
        # JVM. After a restore everything is read from state.
        fresh = self.bounded and not self.restored and attempt == 0
        self.known: dict[tuple[str, str], KnownLead] | None = {} if fresh else None
        # Bounded input: the leads known but not seeded yet; at the end of input they
        # are seeded SEED_GROUP at a time (SeedReads).
        self.unseeded: dict[tuple[str, str], KnownLead] = {}
        self.seed_reads = None if self.seed_stores is None else SeedReads(self.seed_stores.get)

    def close(self):
        if getattr(self, "seed_stores", None) is not None:
            self.seed_stores.close()
        self.counts.write()

    # arrivals -----------------------------------------------------------------------

    def process_element(self, element: LeadBatch | WakeUp, ctx):
        timers = ctx.timer_service()
        if isinstance(element, WakeUp):
            self.counts.inc("leads_woken_from_store")
            if self.bounded:
                timers.register_event_time_timer(END_OF_INPUT)
                known = self._known((element.tenant, element.lead_id), self.horizon)
                if known is not None and self.horizon is not None and known.first_ms > self.horizon:
                    known.first_ms = self.horizon
                return
            # Unbounded: a lead waiting in the store when the job starts. Unless the job
            # knows it already, its state comes from its profile and its wake timer is set.
            if self._stored_record() is None:
                result = leadstep.StepResult()
                meta = self._meta()
                record = self._seed(element.tenant, element.lead_id, element.wake_at, result)
                self._store_record(record, meta)
                self._schedule_wake(record, timers.current_watermark(), timers, meta)
                self._store_meta(meta)
                yield from self._emit(result)
            return
        result = leadstep.StepResult()
        result.count("lead_batches")
        if self.bounded:
            self._buffer_until_the_end(element, timers, result)
        else:
            self._buffer_until_released(element, timers, result)
        yield from self._emit(result)

    def _buffer_until_the_end(self, batch: LeadBatch, timers, result: leadstep.StepResult) -> None:
        """Bounded input: buffer the batch's activities for the replay at the end of input
        (one timer there; a lead's later batches find it set). Bounded input releases
        nothing before its end, so no arrival can sort before what was released, except
        after a hot lead's early release, which the replay sorts out."""
        first = min(activity.occurred_at for activity in batch.activities)
        known = self._known((batch.tenant, batch.lead_id), first)
        if known is None:
            meta = self._meta()
            if meta.buffered == 0 and meta.released is None:
                # (No bookkeeping: a new lead, or one an instance that knew it in memory
                # buffered before a restore.)
                meta.buffered = sum(1 for _ in self.pending.get() or ())
            buffered = meta.buffered
        else:
            meta = LeadMeta()
            buffered = known.buffered
            if known.first_ms is None or first < known.first_ms:
                known.first_ms = first
        if not buffered:
            timers.register_event_time_timer(END_OF_INPUT)
        texts = []
        for activity in batch.activities:
            texts.append(_activity_text(activity))
            buffered += 1
            if self.step.over_budget(buffered, result):
                # A hot lead: what it has buffered is replayed now, in order, without the
                # waits (they resume at the end of input).
                self.pending.add_all(texts)
                texts = []
                self._replay(batch.tenant, batch.lead_id, result, meta, horizon=None, known=known)
                buffered = 0
        if texts:
            self.pending.add_all(texts)
        if known is None:
            meta.buffered = buffered
            self._store_meta(meta)
        else:
            known.buffered = buffered

    def _known(self, key: tuple[str, str], first_ms: int | None) -> KnownLead | None:
        """What the step knows of a lead in memory (bounded input, a job started without
        state), a lead seen for the first time made known; None: read its state."""
        if self.known is None:
            return None
        known = self.known.get(key)
        if known is None and len(self.known) < LEADS_KNOWN:
            known = self.known[key] = self.unseeded[key] = KnownLead(first_ms)
            # Its state is empty: saying so spares process mode asking the JVM for it.
            self.pending.clear()
        return known

    def _buffer_until_released(self, batch: LeadBatch, timers, result: leadstep.StepResult) -> None:
        """Unbounded input: each activity of the batch that does not sort before what the
        lead has released is buffered (`LeadStep.arrival`), the release timer set at the
        earliest; past the lead's budget, what it has buffered is released at once."""
        meta = self._meta()
        released, buffered = meta.released, meta.buffered
        texts = []
        earliest = None
        for activity in batch.activities:
            if not self.step.arrival(released, self._seen, activity, result):
                continue
            texts.append(_activity_text(activity))
            if earliest is None or activity.occurred_at < earliest:
                earliest = activity.occurred_at
            buffered += 1
            if self.step.over_budget(buffered, result):
                self.pending.add_all(texts)
                texts = []
                earliest = None
                self._release_all(batch.tenant, batch.lead_id, result, meta)
                released = meta.released
                buffered = 0
        if texts:
            self.pending.add_all(texts)
            meta.buffered = buffered
            self._release_at(earliest, timers, meta)
            if meta.poll_due is None:
                self._poll_later(timers, meta)
        self._store_meta(meta)

    def _release_all(self, tenant: str, lead_id: str, result: leadstep.StepResult, meta: "LeadMeta") -> None:
        """Unbounded: release everything the lead has buffered, whatever the watermark."""
        stored = self._stored_record()
        buffered = self._buffered()
        record = stored
        if record is None:
            record = self._seed(tenant, lead_id, min(a.occurred_at for a in buffered), result)
        record, _ = self.step.release(record, tenant, lead_id, buffered, None, result)
        if record is not stored:
            self._store_record(record, meta)
        self.pending.clear()
        meta.buffered = 0
        meta.due = None

    def _seen(self) -> dict | None:
        """The lead's recent event ids: read only for an arrival that sorts before what
        the lead has released (a redelivery, or late)."""
        record = self._stored_record()
        return None if record is None else record.progress.seen

    # timers -------------------------------------------------------------------------

    def on_timer(self, timestamp: int, ctx):
        tenant, lead_id = ctx.get_current_key()
        result = leadstep.StepResult()
        known = None
        if self.bounded:
            known = None if self.known is None else self.known.get((tenant, lead_id))
            meta = self._meta() if known is None else LeadMeta()
            self._replay(tenant, lead_id, result, meta, known=known)
        else:
            meta = self._meta()
            timers = ctx.timer_service()
            if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
                meta.poll_due = None
                up_to = timers.current_watermark()
            else:
                up_to = max(timestamp, timers.current_watermark())
            self._release_and_wake(tenant, lead_id, up_to, timers, result, meta)
        if known is None:
            self._store_meta(meta)
        yield from self._emit(result)

    _AT_THE_HORIZON = object()

    def _replay(self, tenant: str, lead_id: str, result: leadstep.StepResult, meta: "LeadMeta",
                horizon=_AT_THE_HORIZON, known: KnownLead | None = None) -> None:
        """Bounded input: the lead's buffered activities in order, then its waits due by
        the horizon (at the end of input; a hot lead's early release passes None).
        `known`: what the step knows of the lead in memory, if it does."""
        at_the_end = horizon is self._AT_THE_HORIZON
        horizon = self.horizon if at_the_end else horizon
        if known is not None and not known.buffered:
            buffered = []
        else:
            buffered = sorted(self._buffered(), key=activity_sort_key)
        if buffered:
            self.pending.clear()
        meta.buffered = 0
        if known is not None:
            known.buffered = 0
        if not buffered and horizon is None:
            return
        record = None if known is not None and not known.replayed else self._stored_record()
        if known is not None:
            known.replayed = True
        if record is None:
            record = self._seed(tenant, lead_id, buffered[0].occurred_at if buffered else horizon, result,
                                with_others=at_the_end)
        record = self.step.replay(record, tenant, lead_id, buffered, horizon, result)
        if not at_the_end:
            self._store_record(record, meta)
        # (At the end of the input the lead is done with: nothing in this job reads its
        # record again, and what the next run starts from is its profile, in the store.)

    def _release_and_wake(self, tenant: str, lead_id: str, up_to: int, timers, result: leadstep.StepResult,
                          meta: "LeadMeta") -> None:
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
            self._store_record(record, meta)
        if len(rest) != len(buffered):
            self.pending.clear()
            if rest:
                self.pending.add_all([_activity_text(activity) for activity in rest])
            meta.buffered = len(rest)
        if rest:
            when = rest[0].occurred_at
            if when != meta.due:
                timers.register_event_time_timer(when)
                meta.due = when
            if meta.poll_due is None:
                self._poll_later(timers, meta)
        else:
            meta.due = None
        self._schedule_wake(record, up_to, timers, meta)

    def _release_at(self, when: int, timers, meta: "LeadMeta") -> None:
        current = meta.due
        if current is None or when < current:
            if current is not None:
                timers.delete_event_time_timer(current)
            timers.register_event_time_timer(when)
            meta.due = when

    def _poll_later(self, timers, meta: "LeadMeta") -> None:
        meta.poll_due = timers.current_processing_time() + self.idle_release_ms
        timers.register_processing_time_timer(meta.poll_due)

    def _schedule_wake(self, record: LeadRecord, up_to: int, timers, meta: "LeadMeta") -> None:
        """The wake timer at the record's earliest wait, only ever moved earlier; a timer
        at or before `up_to` has done its work (the waits it was for are resumed)."""
        next_wake = record.next_wake() if self.run_flows else None
        stored = meta.wake_at
        current = stored if stored is not None and stored > up_to else None
        if next_wake is not None and (current is None or next_wake < current):
            timers.register_event_time_timer(next_wake)
            meta.wake_at = next_wake
        elif current is None and stored is not None:
            meta.wake_at = None

    # state and outputs ------------------------------------------------------------

    def _buffered(self) -> list[Activity]:
        return [_activity_of(text) for text in self.pending.get() or ()]

    def _stored_record(self) -> LeadRecord | None:
        text = self.record.value()
        return None if text is None else decode_profile(text)

    def _store_record(self, record: LeadRecord, meta: "LeadMeta") -> None:
        self.record.update(_record_text(record))
        meta.released = record.progress.released

    def _meta(self) -> "LeadMeta":
        return LeadMeta.of_text(self.lead.value())

    def _store_meta(self, meta: "LeadMeta") -> None:
        """Written only when it changed; cleared when there is nothing to keep."""
        if meta.changed():
            text = meta.text()
            if text is None:
                self.lead.clear()
            else:
                self.lead.update(text)

    def _seed(self, tenant: str, lead_id: str, first_ms: int, result: leadstep.StepResult,
              with_others: bool = False) -> LeadRecord:
        """The lead's record from the store. `with_others` (the end of a bounded input,
        when every lead's first activity is known): the store is read for SEED_GROUP
        leads still to seed at once, and the others take their answers when their turn
        comes."""
        if self.seed_stores is None:
            store = None
        else:
            store = self.seed_stores.get()
            unseeded = self.unseeded.pop((tenant, lead_id), None)
            if with_others and (unseeded is not None or self.seed_reads.has(tenant, lead_id)):
                if not self.seed_reads.has(tenant, lead_id):
                    group = [leadstep.SeedRequest(tenant, lead_id, first_ms)]
                    while self.unseeded and len(group) < SEED_GROUP:
                        (other_tenant, other_lead), other = self.unseeded.popitem()
                        if other.first_ms is not None:
                            group.append(leadstep.SeedRequest(other_tenant, other_lead, other.first_ms))
                    self.seed_reads.prefetch(self.step.rules, group)
                store = self.seed_reads
        seeded = self.step.seed(store, [leadstep.SeedRequest(tenant, lead_id, first_ms)], result)[0]
        return seeded or EMPTY_RECORD

    def _emit(self, result: leadstep.StepResult):
        """The call's records, one list per output (in the order the core emitted them),
        and its counts."""
        counts = self.counts
        for name, n in result.counts.items():
            counts.inc(name, n)
        by_output: dict = {}
        for tag, value in result.emitted:
            output = STEP_OUTPUTS[tag]
            records = by_output.get(output)
            if records is None:
                by_output[output] = [value]
            else:
                records.append(value)
        for output, records in by_output.items():
            yield records if output is None else (output, records)


class AssembleEmails(ProcessFunction):
    """EmailRequests -> AssembledEmails (`orion.campaigns.email.EmailAssembler`), a list
    in, a list out; a request whose template fails goes to DEAD (a list too) with the
    reason (template_unsafe, template_failed, template_missing, bad_email_address), as
    Beam's AssembleEmails does."""

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

    def process_element(self, requests, ctx):
        from orion.campaigns.email import assemble_one

        assembled, letters = [], []
        for request in as_records(requests):
            made, counts = assemble_one(self.assembler, request)
            for name, n in counts.items():
                self.counts.inc(name, n)
            (letters if isinstance(made, DeadLetter) else assembled).append(made)
        if assembled:
            yield assembled
        if letters:
            yield DEAD, letters


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

    An element is a list of records (what the lead step emitted to one output in one
    call: one crossing for all of them), or a single record. Flushed when `batch_size`
    records are buffered, `flush_after_ms` of processing time after the first one, and
    at the end of event time (an event-time timer there: the end of a bounded input, or
    a drained job's); records that come after it are written at once. The writer's
    output (dead letters of records it refused) is this function's output, a list per
    flush. State: batch (list of text, a record each), buffered (count), flush_due
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

    def process_element(self, records, ctx):
        records = as_records(records)
        encode = self.writer.encode
        self.batch.add_all([encode(record) for record in records])
        before = self.buffered.value() or 0
        buffered = before + len(records)
        # Past the end of event time no timer fires any more, and records still come:
        # PyFlink forwards the final watermark (a drained or bounded job's) across the
        # network before what the step upstream emits for it.
        timers = ctx.timer_service()
        if buffered >= self.batch_size or timers.current_watermark() >= END_OF_INPUT:
            yield from self._flush()
            return
        self.buffered.update(buffered)
        if not before:
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
        decode = self.writer.decode
        batch = [decode(text) for text in self.batch.get() or ()]
        self.batch.clear()
        self.buffered.clear()
        if batch:
            refused = list(self.writer.write(batch))
            if refused:
                yield refused


# How the writers keep a record in WriteInBatches' state: JSON text, escaped to ASCII (a
# lone surrogate from a `\ud800` in the input is not UTF-8, which Flink's STRING needs).
# The envelopes of profiles and outbox records carry a version, so a later release can
# read what an earlier one buffered.
STATE_FORMAT_VERSION = 1


def _state_text(data: dict) -> str:
    return _json_text(data)


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

        data = _json_of(text)
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

        data = _json_of(text)
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


def output_lines(records) -> str:
    """The lines of a list of outcomes or dead letters (`output_line`), as one string:
    one element for Flink's FileSink, which ends it with a line feed as any line."""
    return "\n".join([output_line(record) for record in as_records(records)])


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
    """Records of one lead (activities, outcomes, profiles) on one shard, in order. A
    list holds records of one lead (one step call's)."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, records) -> int:
        record = as_records(records)[0]
        return shard_of(f"{record.tenant}\x00{record.lead_id}", self.shards)


class ByOutboxKey:
    """Outbox records by their idempotency key's lead (a list: one lead's)."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, records) -> int:
        record = as_records(records)[0]
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
