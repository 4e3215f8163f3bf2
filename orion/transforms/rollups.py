"""Roll-ups in Beam: `RollUpAndWrite` turns what the lead steps emit (stored
activities, outcomes, assembled emails, held emails, webhook calls) into roll-up rows per
tenant and minute, hour and day (orion.analytics.rollup) and upserts them into the
roll-up store.

Streaming (a subscription, a topic):

    records ─► ShardParts ─► RollUpShards ─► roll-up store (rows upserted whole; dead letters of rows refused)
               (per bundle)   (keyed by shard)

ShardParts merges a bundle's records into one aggregate per minute row (most records of
a bundle fall into a few rows) and hands each shard its rows as one element: a shard is a
stable hash of a row's lineage (tenant, kind and the dimensions its hour and day keep), so
a minute, its hour and its day share one. RollUpShards keeps, per shard, every open row's
running total (`BucketState`, in a versioned coder, no pickle): every element merges its
minutes, writes each row that changed whole, with the next version, and passes what the
row gained on to its coarser row in place (hours are built from minutes, days from hours),
then upserts the rows straight into the roll-up store, in one batch. One keyed element
and one state access per shard and bundle, instead of one per row and stage: on the
bundle-based DirectRunner, which copies a key's state on every access, a keyed stage per
row cost more than the lead step itself. A row's state expires an allowed lateness and a
grace period after its bucket ends, in event time (one timer per shard, at its earliest
such time); the bucket comes from the records' own times, never from Beam's windows, so a
record that is late but within the allowed lateness (released later by the lead step)
still lands in its minute and rewrites it. What arrives for an expired row starts a new
state with a new writer id, so it is stored beside the row it cannot see, never over it.

Bounded (files): a row is complete only when the input is, so no state is kept per row:

    lead step (DayParts in it) ─┐
    emails, held, webhooks ─► DayParts ─┴─► GroupDays ─► WriteRollups (day_levels, segments_of_day, upserts)

The bounded lead step (orion.transforms.evaluate, `LeadSteps(rollups=True)`) rolls up the
activities it stores and its outcomes itself, as it emits them: one (tenant-day,
MinuteParts) element per tenant-day and bundle leaves it, where a step of its own would
take each record across (on the FnApiRunner that hand-over cost more than the roll-up).
The flows' records (emails, held emails, webhook calls, after the lead step) get a
DayParts step each, fused with the step that emits them. GroupDays groups the parts by
tenant-day; the step that writes them merges a tenant-day's minute rows, builds its hours
from the minutes and the day from the hours (orion.analytics.segments.day_levels), and
upserts the tenant-day's segments (minutes, hours, day; segments_of_day), under one
writer id for the run, in batches. What crosses to GroupDays is a few MinuteParts, plain
tuples, sets and lead ids (MinutePartsCoder).

    orion run                # the graph writes its roll-ups beside the activities
"""
from __future__ import annotations

import pickle
import struct
import zlib
from itertools import repeat
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import Coder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.analytics.rollup import (
    ACTIVITY, DAY, GRANULARITY_MS, MINUTE, PartialRollups, RollupFacts, RollupKey, RollupRow, RowParts,
    add_to_bucket, decode_state, encode_state, expires_at, flush_bucket, merge_all, new_writer,
)
from orion.analytics.segments import DayParts, MinuteParts, Rows, day_levels, segments_of_day
from orion.deadletters import DeadLetter
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS
from orion.transforms.intake import METRICS_NAMESPACE

_DAY_MS, _MINUTE_MS = GRANULARITY_MS[DAY], GRANULARITY_MS[MINUTE]
ROLLUP_SOURCE = "rollups"  # DeadLetter.source of the rows the store refused
DEFAULT_GRACE_MS = 5 * 60_000  # a row's state lives this long past its bucket and the allowed lateness
DEFAULT_BATCH_SIZE = 200  # segments per upsert: a bounded run writes each segment once, in bulk
_GLOBAL = (GlobalWindow(),)


class _PartsCoder(Coder):
    """Parts of roll-up rows <-> bytes, for what crosses between two steps of a run
    (pickled; never kept as state nor stored). Its size estimate encodes nothing: the
    runner samples the size of what crosses between steps, and parts are few and large,
    so sampling would encode most of them a second time."""

    ROW_BYTES = 100  # about what one minute row of a few leads takes, pickled
    parts_type: type = dict

    def encode(self, parts) -> bytes:
        return pickle.dumps(parts, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def estimate_size(self, parts) -> int:
        return self.ROW_BYTES * len(parts)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return self.parts_type


class RowPartsCoder(_PartsCoder):
    """Streaming: RowParts from ShardParts to RollUpShards (pickled as columns, see
    orion.analytics.rollup.RowParts)."""

    parts_type = RowParts


class MinutePartsCoder(_PartsCoder):
    """Bounded: one tenant-day's MinuteParts (orion.analytics.segments) from the lead step
    and DayParts to GroupDays, decoded as Rows: the step that writes them builds no dict of
    them again unless it merges two bundles'. Pickled as columns: the tenant and the day
    once, each row's minute of the day (a small number: a bucket in epoch ms pickles as a
    long), its kind and dimensions, and the parts."""

    parts_type = MinuteParts

    def encode(self, parts) -> bytes:
        keys, values = (parts.keys, parts.parts) if isinstance(parts, Rows) else (list(parts), list(parts.values()))
        if not keys:
            return pickle.dumps(None)
        columns = list(zip(*keys))
        buckets = columns[2]
        day = buckets[0] - buckets[0] % _DAY_MS
        minutes = [(bucket - day) // _MINUTE_MS for bucket in buckets]
        return pickle.dumps((keys[0][0], day, minutes, columns[3:], values), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Rows:
        found = pickle.loads(encoded)
        if found is None:
            return Rows([], [])
        tenant, day, minutes, columns, values = found
        buckets = [day + minute * _MINUTE_MS for minute in minutes]
        return Rows(list(zip(repeat(tenant), repeat(MINUTE), buckets, *columns)), values)


beam.coders.registry.register_coder(RowParts, RowPartsCoder)
beam.coders.registry.register_coder(MinuteParts, MinutePartsCoder)


def _at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class _PartialRollupsFn(beam.DoFn):
    """Records -> their minute rows, merged per bundle (what subclasses emit at the end of
    the bundle). Counter: `rolled_up` (records)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...]):
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs

    def setup(self) -> None:
        from orion.rules.shared import shared_rules

        self.facts = RollupFacts.from_rules(shared_rules(self.rules_dir, tuple(self.template_dirs)))
        self.rolled_up = Metrics.counter(METRICS_NAMESPACE, "rolled_up")

    def start_bundle(self) -> None:
        self.partial = PartialRollups(self.facts)
        self.records = 0

    def process(self, record):
        # The global-window DoFn asks for no timestamp (see orion.transforms.sinks).
        self.records += self.partial.add(record)
        return ()


SHARDS = 64  # RollUpShards' keys. Fixed: a row's shard must not move between jobs (`--update`).


def lineage_shard(key: RollupKey, shards: int = SHARDS) -> int:
    """The shard of a row and of every row it adds to (its hour, its day): a stable hash
    of what they share, the tenant, the kind and the dimensions but an activity's
    `attribute` (only minutes keep it), never of the granularity or the bucket."""
    fields = key[3:6] + (("",) if key.kind == ACTIVITY else key[6:7]) + key[7:]
    text = "\x1f".join((key.tenant,) + fields)
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % shards


class _ShardPartsFn(_PartialRollupsFn):
    """Streaming: records -> (shard, RowParts: the bundle's minute rows of that shard,
    merged), one element per shard and bundle, emitted at the end of the bundle at the
    time of its earliest minute."""

    def finish_bundle(self):
        self.rolled_up.inc(self.records)
        shards: dict[int, RowParts] = {}
        for key, aggregate in self.partial.drain():
            shard = lineage_shard(key)
            found = shards.get(shard)
            if found is None:
                found = shards[shard] = RowParts()
            found[key] = aggregate
        for shard, parts in shards.items():
            yield WindowedValue((shard, parts), _at(min(key.bucket for key in parts)), _GLOBAL)


def _gather(groups: dict, key, value) -> None:
    """Add `value` to the list of `key` in `groups`: what a coarser row gains, by row."""
    found = groups.get(key)
    if found is None:
        groups[key] = [value]
    else:
        found.append(value)


class ShardRows(dict):
    """{RollupKey: BucketState}: the open rows of one shard (minutes, hours and days)."""

    def merge(self, parts: dict) -> list[RollupRow]:
        """Merge minute rows' partial aggregates ({RollupKey: Aggregate}) into their rows
        and, level by level, what those gained into their hours and days; returns every
        row that changed, whole, with its next version."""
        written = []
        level = parts
        while level:
            gains: dict = {}
            for key, partial in level.items():
                state, row, passed_on = flush_bucket(key, add_to_bucket(self.get(key), partial))
                self[key] = state
                if row is not None:
                    written.append(row)
                if passed_on is not None:
                    _gather(gains, *passed_on)
            level = {key: merge_all(members) for key, members in gains.items()}
        return written

    def next_expiry(self, allowed_lateness_ms: int, grace_ms: int) -> int | None:
        return min((expires_at(key, allowed_lateness_ms, grace_ms) for key in self), default=None)

    def expire(self, up_to_ms: int, allowed_lateness_ms: int, grace_ms: int) -> int:
        """Drop the rows whose state expires by event time `up_to_ms`; returns how many."""
        expired = [key for key in self if expires_at(key, allowed_lateness_ms, grace_ms) <= up_to_ms]
        for key in expired:
            del self[key]
        return len(expired)


_SHARD_FORMAT = 1
_SHARD_HEADER = struct.Struct(">BI")  # format, rows
_SHARD_ENTRY = struct.Struct(">II")  # length of the key's text, of the state


class ShardRowsCoder(Coder):
    """ShardRows <-> versioned bytes: each row's key as text (RollupKey.text) and its
    state as the core's versioned bytes (encode_state). No pickle: a job updated to a
    new release of Orion reads it back."""

    def encode(self, rows: ShardRows) -> bytes:
        out = [_SHARD_HEADER.pack(_SHARD_FORMAT, len(rows))]
        for key, state in rows.items():
            text = key.text().encode("utf-8", "surrogatepass")
            data = encode_state(state)
            out += (_SHARD_ENTRY.pack(len(text), len(data)), text, data)
        return b"".join(out)

    def decode(self, encoded: bytes) -> ShardRows:
        fmt, count = _SHARD_HEADER.unpack_from(encoded)
        if fmt != _SHARD_FORMAT:
            raise ValueError(f"roll-up shard state format {fmt} is newer than this Orion reads ({_SHARD_FORMAT})")
        rows = ShardRows()
        at = _SHARD_HEADER.size
        view = memoryview(encoded)
        for _ in range(count):
            text_length, data_length = _SHARD_ENTRY.unpack_from(encoded, at)
            at += _SHARD_ENTRY.size
            text = bytes(view[at:at + text_length]).decode("utf-8", "surrogatepass")
            at += text_length
            rows[RollupKey.of_text(text)] = decode_state(view[at:at + data_length])
            at += data_length
        return rows

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return ShardRows


class _RollUpShardsFn(beam.DoFn):
    """Keyed by shard: (shard, RowParts) -> merged into the shard's rows (ShardRows.merge),
    every row that changed upserted into the roll-up store of `store_uri` in one batch;
    outputs a DeadLetter (reason unstorable, source "rollups") per row the store refused.

    State: ROWS, the shard's open rows. A row expires at its bucket's end plus the
    allowed lateness and the grace period, in event time: its state is dropped when the
    shard's data reaches that time (an element's newest minute), or when the watermark
    does (timer EXPIRE, at the earliest such time of the shard's rows), whichever comes
    first. (Dropping a row early is safe, only less compact: what comes for it later
    starts a row beside it, under a new writer id, and queries add the two.) Counters: `rollup_rows_written`,
    `dead_letters`, `dead_letters:unstorable`."""

    ROWS = ReadModifyWriteStateSpec("rows", ShardRowsCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, store_uri: str, allowed_lateness_ms: int, grace_ms: int):
        self.store_uri = store_uri
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms

    def setup(self) -> None:
        from orion.store.rollups_opening import open_rollup_store

        self.store = open_rollup_store(self.store_uri)
        self.store.init()

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    def process(self, element, rows_state=beam.DoFn.StateParam(ROWS), expire=beam.DoFn.TimerParam(EXPIRE)):
        _, parts = element
        rows = rows_state.read() or ShardRows()
        before = rows.next_expiry(self.allowed_lateness_ms, self.grace_ms)
        written = rows.merge(parts)
        # The shard's own data is a clock too: rows that expire by its newest minute go
        # now (written already), not one timer round each: the runner fires a key's
        # timer once a round, and a watermark that leaps hours would take a round per
        # expiry time passed.
        rows.expire(max(key.bucket for key in parts), self.allowed_lateness_ms, self.grace_ms)
        if not rows:
            rows_state.clear()
            return self._write(written)
        rows_state.write(rows)
        after = rows.next_expiry(self.allowed_lateness_ms, self.grace_ms)
        if after is not None and after != before:
            expire.set(_at(after))
        return self._write(written)

    @on_timer(EXPIRE)
    def on_expire(self, fired=beam.DoFn.TimestampParam, rows_state=beam.DoFn.StateParam(ROWS),
                  expire=beam.DoFn.TimerParam(EXPIRE)):
        rows = rows_state.read()
        if rows is None:
            return
        rows.expire(fired.micros // 1000, self.allowed_lateness_ms, self.grace_ms)
        if not rows:
            rows_state.clear()
            return
        rows_state.write(rows)
        expire.set(_at(rows.next_expiry(self.allowed_lateness_ms, self.grace_ms)))

    def _write(self, rows: list[RollupRow]) -> list[DeadLetter]:
        if not rows:
            return []
        from orion.store.base import UNSTORABLE
        from orion.store.rollups_base import row_element

        done = self.store.write(rows)
        Metrics.counter(METRICS_NAMESPACE, "rollup_rows_written").inc(done.written)
        if not done.refused:
            return []
        Metrics.counter(METRICS_NAMESPACE, "dead_letters").inc(len(done.refused))
        Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{UNSTORABLE}").inc(len(done.refused))
        return [DeadLetter(row_element(row), UNSTORABLE, detail, ROLLUP_SOURCE) for row, detail in done.refused]


class _DayPartsFn(_PartialRollupsFn):
    """Bounded input: records -> ((tenant, day), MinuteParts: the bundle's minute rows of
    that tenant-day, merged), one element per tenant-day and bundle, emitted at the end of
    the bundle. Counter: `rolled_up` (records)."""

    def start_bundle(self) -> None:
        self.partial = DayParts(self.facts)
        self.records = 0

    def finish_bundle(self):
        self.rolled_up.inc(self.records)
        for day, parts in self.partial.drain():
            yield WindowedValue((day, parts), _at(day[1]), _GLOBAL)


def day_levels_of(element) -> dict:
    """((tenant, day), its bundles' parts, Rows) -> its rows by granularity (day_levels):
    one bundle's as they are, several merged."""
    _, bundles = element
    bundles = list(bundles)
    if len(bundles) == 1:
        return day_levels(bundles[0])
    minutes = MinuteParts()
    for parts in bundles:
        minutes.merge(parts)
    return day_levels(minutes)


class _WriteDaySegmentsFn(beam.DoFn):
    """Bounded input: ((tenant, day), its bundles' MinuteParts) -> the tenant-day's
    segments (orion.analytics.segments: its minutes, its hours, its day; under
    the run's writer id, version 1), upserted every `batch_size` segments and at the end
    of the bundle. Outputs a DeadLetter (reason unstorable, source "rollups") per row of
    a segment the store refused. Counters: `rollup_rows_written` (rows in the segments
    written), `rollup_segments_written`, `dead_letters`, `dead_letters:unstorable`."""

    def __init__(self, store_uri: str, batch_size: int, writer: str):
        self.store_uri = store_uri
        self.batch_size = batch_size
        self.writer = writer

    def setup(self) -> None:
        from orion.store.rollups_opening import open_rollup_store

        self.store = open_rollup_store(self.store_uri)
        self.store.init()

    def start_bundle(self) -> None:
        self.batch: list = []

    def process(self, element):
        self.batch += segments_of_day(day_levels_of(element), self.writer)
        if len(self.batch) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for letter in self._flush():
            yield WindowedValue(letter, Timestamp.now(), _GLOBAL)

    def _flush(self):
        if not self.batch:
            return
        from orion.store.base import UNSTORABLE
        from orion.store.rollups_base import segment_elements

        segments, self.batch = self.batch, []
        done = self.store.write_segments(segments)
        Metrics.counter(METRICS_NAMESPACE, "rollup_segments_written").inc(done.written)
        Metrics.counter(METRICS_NAMESPACE, "rollup_rows_written").inc(
            sum(segment.rows for segment in segments) - sum(segment.rows for segment, _ in done.refused))
        for segment, detail in done.refused:
            letters = segment_elements(segment)
            Metrics.counter(METRICS_NAMESPACE, "dead_letters").inc(len(letters))
            Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{UNSTORABLE}").inc(len(letters))
            for element in letters:
                yield DeadLetter(element, UNSTORABLE, detail, ROLLUP_SOURCE)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class GroupDayParts(beam.PTransform):
    """Bounded input: a tuple of PCollections of what the lead steps emit -> ((tenant,
    day), its bundles' minute rows): each bundle's records merged per tenant-day
    (DayParts, fused with the step that emits them), then grouped by tenant-day
    (GroupDays: no keyed state per row; each bundle's parts are merged already, so they
    are grouped, not combined again). The last `rolled_up` inputs are such parts made
    already (the lead step's own, LeadSteps.rollup_parts), grouped with them."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), rolled_up: int = 0):
        super().__init__()
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.rolled_up = rolled_up

    def expand(self, inputs):
        split = len(inputs) - self.rolled_up
        day_parts = [records | f"DayParts{i}" >> beam.ParDo(_DayPartsFn(self.rules_dir, self.template_dirs)
                                                            ).with_output_types(Tuple[Tuple[str, int], MinuteParts])
                     for i, records in enumerate(inputs[:split])]
        return (tuple(day_parts) + tuple(inputs[split:]) | "AllDayParts" >> beam.Flatten()
                | "GroupDays" >> beam.GroupByKey())


class RollUpAndWrite(beam.PTransform):
    """What the graph attaches to the lead steps' outputs: their roll-up rows, written to
    the roll-up store of `store_uri`. Returns the dead letters of the rows the store
    refused.

    `bounded`: each tenant-day's rows are built by the step that writes them as segments
    (GroupDayParts, then WriteRollups: orion.analytics.segments), all under one writer id
    for the run, fixed here, so a retried bundle rewrites the same segments. Streaming: ShardParts, then RollUpShards
    (the module doc); a row's state expires `allowed_lateness_ms` + `grace_ms` after its
    bucket ends (event time).

    `rolled_up` (bounded): how many of the inputs, the last ones, are parts rolled up
    already, ((tenant, day), MinuteParts) (LeadSteps.rollup_parts), not records."""

    def __init__(self, store_uri: str, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS, grace_ms: int = DEFAULT_GRACE_MS,
                 bounded: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, rolled_up: int = 0):
        super().__init__()
        self.rolled_up = rolled_up
        self.store_uri = store_uri
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms
        self.bounded = bounded
        self.batch_size = batch_size

    def expand(self, inputs):
        if self.bounded:
            days = inputs | "RollUp" >> GroupDayParts(self.rules_dir, self.template_dirs, self.rolled_up)
            return days | "WriteRollups" >> beam.ParDo(
                _WriteDaySegmentsFn(self.store_uri, self.batch_size, new_writer()))
        # One shard-merging step per input, each fused with the step that emits it: a
        # Flatten of the records would make the runner encode every record again to hand
        # it over; the shards' parts are few.
        shard_parts = [records | f"ShardParts{i}" >> beam.ParDo(
            _ShardPartsFn(self.rules_dir, self.template_dirs)).with_output_types(Tuple[int, RowParts])
            for i, records in enumerate(inputs)]
        return (tuple(shard_parts) | "AllShardParts" >> beam.Flatten()
                | "RollUpShards" >> beam.ParDo(_RollUpShardsFn(self.store_uri, self.allowed_lateness_ms,
                                                                self.grace_ms)))
