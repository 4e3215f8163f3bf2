"""Roll-ups in Beam: `RollUp` turns what the lead steps emit (stored activities,
outcomes, assembled emails, held emails, webhook calls) into roll-up rows per tenant and
minute, hour and day (orion.analytics.rollup), and `WriteRollups` upserts them into the
roll-up store.

Streaming (a subscription, a topic):

    records ─► PartialRollups ─► RollUpMinutes ─► MergeHourParts ─► RollUpHours ─► MergeDayParts ─► RollUpDays
               (per bundle)      (keyed state) │                    (keyed state) │                 (keyed state)
                                               └──── rows ──────────────────────┴──── rows ─────────────┴─► WriteRollups

PartialRollups merges a bundle's records into one aggregate per minute row (most
records of a bundle fall into a few rows), so keyed state sees one element per row and
bundle, not one per record. Each RollUp stage keeps, per row key, the row's running
total (`BucketState`, a versioned coder, no pickle); every partial it merges makes it
write the row whole, with the next version, and pass what the row gained on to the row
of the coarser bucket: hours are built from minutes and days from hours. A row's
state expires an allowed lateness and a grace period after its bucket ends, in event
time; the bucket comes from the records' own times, never from Beam's windows, so a
record that is late but within the allowed lateness (released later by the lead step)
still lands in its minute and rewrites it.

Bounded (files): a row is complete only when the input is, so no state is kept per row:

    records ─► DayParts (per bundle, per tenant-day) ─► GroupDays ─► WriteRollups (day_rows, then upserts)

Each kind of record (stored activities, outcomes, ...) gets its own PartialRollups or
DayParts step, fused with the lead step that emits it, and only their partials meet.

The step that writes them builds each tenant-day's minute rows, its hours from them and
the day from the hours (day_rows), and upserts each once, under one writer id for the
run: the rows never cross to another step one by one. What crosses to GroupDays is one
RowParts per bundle and tenant-day, columns of plain values (RowPartsCoder). RollUp
alone (bounded) yields the same rows as elements (DayRows).

    orion run                # the graph writes its roll-ups beside the activities
"""
from __future__ import annotations

import functools
import pickle
from typing import Any, Tuple

import apache_beam as beam
from apache_beam.coders import Coder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from orion.analytics.rollup import (
    DAY, Aggregate, BucketState, PartialRollups, RollupFacts, RollupKey, RollupRow, RowParts, add_to_bucket,
    bucket_start, decode_state, encode_state, expires_at, flush_bucket, merge_all, new_writer,
)
from orion.deadletters import DeadLetter
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS
from orion.transforms.intake import METRICS_NAMESPACE

COARSER = "coarser"  # the output tag of what a stage passes on to the next
ROLLUP_SOURCE = "rollups"  # DeadLetter.source of the rows the store refused
DEFAULT_GRACE_MS = 5 * 60_000  # a row's state lives this long past its bucket and the allowed lateness
DEFAULT_BATCH_SIZE = 2000  # rows per upsert: a bounded run writes each row once, in bulk
_GLOBAL = (GlobalWindow(),)
_new_row = functools.partial(tuple.__new__, RollupRow)  # a row from its fields, without RollupRow(...)'s checks


class BucketStateCoder(Coder):
    """BucketState <-> versioned bytes (orion.analytics.rollup.encode_state)."""

    def encode(self, state: BucketState) -> bytes:
        return encode_state(state)

    def decode(self, encoded: bytes) -> BucketState:
        return decode_state(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return BucketState


class RowPartsCoder(Coder):
    """RowParts <-> bytes, for what crosses from DayParts to GroupDays within a run
    (pickled as columns, see orion.analytics.rollup.RowParts; never kept as state). Its
    size estimate encodes nothing: the runner samples the size of what crosses between
    steps, and a tenant-day's parts are few and large, so sampling would encode most of
    them a second time."""

    ROW_BYTES = 100  # about what one minute row of a few leads takes, pickled

    def encode(self, parts: RowParts) -> bytes:
        return pickle.dumps(parts, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> RowParts:
        return pickle.loads(encoded)

    def estimate_size(self, parts: RowParts) -> int:
        return self.ROW_BYTES * len(parts)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return RowParts


beam.coders.registry.register_coder(RowParts, RowPartsCoder)


def _at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class _PartialRollupsFn(beam.DoFn):
    """Records -> (row key text, Aggregate) per minute row, merged per bundle; emitted at
    the end of the bundle, at the bucket's time. Counter: `rolled_up` (records)."""

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

    def finish_bundle(self):
        self.rolled_up.inc(self.records)
        for key, aggregate in self.partial.drain():
            yield WindowedValue((key.text(), aggregate), _at(key.bucket), _GLOBAL)


class _MergePartsFn(beam.DoFn):
    """(row key text, Aggregate) -> the same, merged per bundle: what one stage passes on
    to the next, one element per row and bundle."""

    def start_bundle(self) -> None:
        self.parts: dict[str, tuple[int, Aggregate]] = {}

    def process(self, element):
        key, aggregate = element
        found = self.parts.get(key)
        if found is None:
            self.parts[key] = (RollupKey.of_text(key).bucket, aggregate)
        else:
            found[1].merge(aggregate)
        return ()

    def finish_bundle(self):
        parts, self.parts = self.parts, {}
        for key, (bucket, aggregate) in parts.items():
            yield WindowedValue((key, aggregate), _at(bucket), _GLOBAL)


class _RollUpBucketsFn(beam.DoFn):
    """Keyed by a row key (text): merges each partial into the row's state, emits the row
    whole with its next version (main output) and what it gained, keyed by the coarser
    row (tag COARSER; a day has none).

    State: BUCKET, the row's BucketState. Timer (streaming): EXPIRE, in event time, the
    row's bucket end plus the allowed lateness and the grace period: the state is
    dropped; what arrives for the row later starts a new state with a new writer id, so
    it is stored beside the row it cannot see, never over it."""

    BUCKET = ReadModifyWriteStateSpec("bucket", BucketStateCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, allowed_lateness_ms: int, grace_ms: int, expires: bool):
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms
        self.expires = expires

    def process(self, element, bucket=beam.DoFn.StateParam(BUCKET), expire=beam.DoFn.TimerParam(EXPIRE)):
        text, partial = element
        key = RollupKey.of_text(text)
        current = bucket.read()
        if current is None and self.expires:
            expire.set(_at(expires_at(key, self.allowed_lateness_ms, self.grace_ms)))
        state, row, passed_on = flush_bucket(key, add_to_bucket(current, partial))
        bucket.write(state)
        if row is not None:
            yield row
        if passed_on is not None:
            coarser, gained = passed_on
            yield beam.pvalue.TaggedOutput(COARSER, (coarser.text(), gained))

    @on_timer(EXPIRE)
    def on_expire(self, bucket=beam.DoFn.StateParam(BUCKET)):
        bucket.clear()


class _DayPartsFn(_PartialRollupsFn):
    """Bounded input: records -> ((tenant, day), {minute RollupKey: Aggregate}), the
    bundle's minute rows merged, one element per tenant-day and bundle, emitted at the
    end of the bundle. Counter: `rolled_up` (records)."""

    def finish_bundle(self):
        self.rolled_up.inc(self.records)
        days: dict = {}
        for key, aggregate in self.partial.drain():
            day = (key.tenant, bucket_start(key.bucket, DAY))
            found = days.get(day)
            if found is None:
                found = days[day] = RowParts()
            found[key] = aggregate
        for day, parts in days.items():
            yield WindowedValue((day, parts), _at(day[1]), _GLOBAL)


def day_rows(element, writer: str) -> list[RollupRow]:
    """((tenant, day), its bundles' minute rows) -> its RollupRows: its minutes (merged),
    hours (built from the minutes) and the day (built from the hours), each written once
    (version 1) under `writer`. An hour of one minute (a day of one hour) shares that
    row's aggregate: nothing is merged or serialized twice."""
    _, bundles = element  # the tenant-day's minute rows, one RowParts per bundle that had some
    level = None
    for parts in bundles:
        level = parts if level is None else level.merge(parts)
    rows = []
    while level:
        coarser: dict = {}
        for key, aggregate in level.items():
            rows.append(_new_row((key, writer, 1, aggregate)))
            up = key.coarser()
            if up is not None:
                found = coarser.get(up)
                if found is None:
                    coarser[up] = [aggregate]
                else:
                    found.append(aggregate)
        level = {key: merge_all(members) for key, members in coarser.items()}
    return rows


class _WriteRollupsFn(beam.DoFn):
    """Buffers a bundle's rows and upserts them every `batch_size` rows and at the end of
    the bundle (the store keeps the highest version of each). Outputs a DeadLetter (reason
    unstorable, source "rollups") per row the store refused. Counters:
    `rollup_rows_written`, `dead_letters`, `dead_letters:unstorable`."""

    def __init__(self, store_uri: str, batch_size: int):
        self.store_uri = store_uri
        self.batch_size = batch_size

    def setup(self) -> None:
        from orion.store.rollups_opening import open_rollup_store

        self.store = open_rollup_store(self.store_uri)
        self.store.init()

    def start_bundle(self) -> None:
        self.batch: list = []

    def process(self, row):
        self.batch.append(row)  # the store keeps the highest version of each row of a batch
        if len(self.batch) >= self.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for letter in self._flush():
            yield WindowedValue(letter, Timestamp.now(), _GLOBAL)

    def _flush(self):
        if not self.batch:
            return
        from orion.store.base import UNSTORABLE
        from orion.store.rollups_base import row_element

        rows, self.batch = self.batch, []
        done = self.store.write(rows)
        Metrics.counter(METRICS_NAMESPACE, "rollup_rows_written").inc(done.written)
        if done.refused:
            Metrics.counter(METRICS_NAMESPACE, "dead_letters").inc(len(done.refused))
            Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{UNSTORABLE}").inc(len(done.refused))
        for row, detail in done.refused:
            yield DeadLetter(row_element(row), UNSTORABLE, detail, ROLLUP_SOURCE)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class _WriteDayRowsFn(_WriteRollupsFn):
    """Bounded input: ((tenant, day), its bundles' minute rows) -> the tenant-day's rows
    (day_rows, under the run's writer id), upserted as _WriteRollupsFn does. Building
    the rows where they are written keeps them from crossing to another step one by one
    (each crossing, and the runner's sampling of what crosses, costs as much as the
    row's own arithmetic)."""

    def __init__(self, store_uri: str, batch_size: int, writer: str):
        super().__init__(store_uri, batch_size)
        self.writer = writer

    def process(self, element):
        self.batch += day_rows(element, self.writer)
        if len(self.batch) >= self.batch_size:
            yield from self._flush()


class GroupDayParts(beam.PTransform):
    """Bounded input: a tuple of PCollections of what the lead steps emit -> ((tenant,
    day), its bundles' minute rows): each bundle's records merged per tenant-day
    (DayParts, fused with the step that emits them), then grouped by tenant-day
    (GroupDays: no keyed state per row; each bundle's parts are merged already, so they
    are grouped, not combined again)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = ()):
        super().__init__()
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)

    def expand(self, inputs):
        day_parts = [records | f"DayParts{i}" >> beam.ParDo(_DayPartsFn(self.rules_dir, self.template_dirs)
                                                            ).with_output_types(Tuple[Tuple[str, int], RowParts])
                     for i, records in enumerate(inputs)]
        return tuple(day_parts) | "AllDayParts" >> beam.Flatten() | "GroupDays" >> beam.GroupByKey()


class RollUp(beam.PTransform):
    """A tuple of PCollections of what the lead steps emit -> roll-up rows
    (orion.analytics.rollup.RollupRow) of every granularity.

    `bounded`: the input ends, so every row is complete only then: a bundle's records
    are merged per tenant-day (DayParts), grouped by tenant-day (GroupDays: no keyed
    state per row) and merged into its minute rows, and its hours and day built from its
    minutes (DayRows), every row written once under the run's writer id.
    Streaming: the keyed stages of the module doc; a row's state expires
    `allowed_lateness_ms` + `grace_ms` after its bucket ends (event time)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS, grace_ms: int = DEFAULT_GRACE_MS,
                 bounded: bool = True):
        super().__init__()
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms
        self.bounded = bounded

    def expand(self, inputs):
        # One partial-merging step per input, each fused with the step that emits it:
        # a Flatten of the records would make the runner encode every record again to
        # hand it over; the partials are few.
        if self.bounded:
            # Each row is complete once the input is: one combine per tenant-day, no
            # per-row state. The run's rows share one writer id, fixed here, so a retried
            # bundle rewrites the same rows.
            return (inputs | "GroupDayParts" >> GroupDayParts(self.rules_dir, self.template_dirs)
                    | "DayRows" >> beam.FlatMap(day_rows, new_writer()).with_output_types(RollupRow))
        minute_parts = [records | f"PartialRollups{i}" >> beam.ParDo(
            _PartialRollupsFn(self.rules_dir, self.template_dirs)).with_output_types(Tuple[str, Any])
            for i, records in enumerate(inputs)]
        parts = tuple(minute_parts) | "AllPartialRollups" >> beam.Flatten()
        rows = []
        for granularity in ("Minutes", "Hours", "Days"):
            if granularity != "Minutes":
                parts = parts | f"Merge{granularity[:-1]}Parts" >> beam.ParDo(
                    _MergePartsFn()).with_output_types(Tuple[str, Any])
            stage = parts | f"RollUp{granularity}" >> beam.ParDo(
                _RollUpBucketsFn(self.allowed_lateness_ms, self.grace_ms, not self.bounded)
            ).with_outputs(COARSER, main="rows")
            rows.append(stage.rows)
            parts = stage[COARSER]
        return tuple(rows) | "AllRows" >> beam.Flatten()


class WriteRollups(beam.PTransform):
    """Roll-up rows -> the roll-up store of `store_uri` (orion.store.rollups_base), in
    batches; returns the dead letters of the rows it refused."""

    def __init__(self, store_uri: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.store_uri = store_uri
        self.batch_size = batch_size

    def expand(self, rows):
        return rows | "Upsert" >> beam.ParDo(_WriteRollupsFn(self.store_uri, self.batch_size))


class RollUpAndWrite(beam.PTransform):
    """RollUp, then WriteRollups: what the graph attaches to the lead steps' outputs.
    Returns the dead letters of the rows the store refused. Bounded, each tenant-day's
    rows are built by the step that writes them (GroupDayParts, then WriteDayRows), all
    under one writer id for the run, fixed here, so a retried bundle rewrites the same
    rows."""

    def __init__(self, store_uri: str, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS, grace_ms: int = DEFAULT_GRACE_MS,
                 bounded: bool = True, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.store_uri = store_uri
        self.bounded = bounded
        self.batch_size = batch_size
        self.rollup = RollUp(rules_dir, template_dirs, allowed_lateness_ms=allowed_lateness_ms, grace_ms=grace_ms,
                             bounded=bounded)

    def expand(self, inputs):
        if self.bounded:
            days = inputs | "RollUp" >> GroupDayParts(self.rollup.rules_dir, self.rollup.template_dirs)
            return days | "WriteRollups" >> beam.ParDo(
                _WriteDayRowsFn(self.store_uri, self.batch_size, new_writer()))
        return inputs | "RollUp" >> self.rollup | "WriteRollups" >> WriteRollups(self.store_uri, self.batch_size)
