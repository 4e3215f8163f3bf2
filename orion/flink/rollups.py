"""Roll-ups in the PyFlink job, on the same engine-neutral core as Beam's
(orion.analytics.rollup; orion/transforms/rollups.py), attached by
`orion.runners.flink.build_job` whenever the run's store keeps roll-ups
(`orion.store.rollups_opening.rollup_store_uri`):

  RollupFactsOf     what the lead step emits (outcomes, stored activities, assembled
                    emails, held emails, webhook calls), a list per element -> (minute
                    row key, encoded Aggregate) per minute row the list falls in
  RollUpBuckets     keyed by a row key: the row's BucketState in keyed state (the core's
                    versioned bytes as base64 text, no pickle); merges what arrives, and
                    at most every `flush_after_ms` of processing time writes the row
                    whole with its next version (main output) and passes what it gained
                    to the coarser row (side output COARSER): minutes feed hours, hours
                    feed days. An event-time timer writes what is left: on unbounded
                    input at the bucket's end plus the allowed lateness and a grace
                    period, where it also drops the state (what comes later starts a
                    new state, with a new writer id); on bounded input at the end of the
                    input, keeping the state, so a bounded run writes each row under one
                    writer id, as Beam's does. What arrives after the end of event time
                    is written at once (no timer fires any more)
  RollupWriter      for WriteInBatches (orion.flink.functions): upserts the rows in
                    batches; a row is (its key text, its versioned JSON text), the text
                    being what the batch buffer keeps; a row the store refuses is a
                    dead letter

    records ─► RollupFacts ─► RollUpMinutes ─► RollUpHours ─► RollUpDays
                               │ rows           │ rows         │ rows
                               └────────────────┴──────────────┴─► WriteRollups (roll-up store) ─► dead letters

Elements between these functions are pickled in flight only, and past RollupFactsOf
they hold only text and bytes: an aggregate crosses as its own versioned bytes
(`Aggregate.encode`), a row as its JSON text, which PyFlink's process mode (cloudpickle)
and thread mode pickle alike and cheaply. Every state has a Flink type and a versioned
encoding, so a savepoint survives a new release of Orion.

    .venv/bin/python -m orion.runners.flink --events orion/samples/events.jsonl   # roll-ups beside the activities
    .venv/bin/python -m pytest -q tests/test_analytics_flink.py
"""
from __future__ import annotations

import base64
import json

from pyflink.common import Types
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, OutputTag, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from orion.analytics.rollup import (
    Aggregate, BucketState, PartialRollups, RollupFacts, RollupKey, RollupRow, add_to_bucket, decode_state,
    encode_state, expires_at, flush_bucket,
)
from orion.deadletters import DeadLetter
from orion.flink.functions import END_OF_INPUT, PICKLED, Counts, OpenedPerThread, WriteInBatches, as_records, shard_of

ROW_KEY = Types.STRING()  # RollupKey.text()
COARSER = OutputTag("rollup-coarser", PICKLED)  # (coarser row key text, encoded Aggregate gained)
DEFAULT_GRACE_MS = 5 * 60_000  # as Beam's (orion.transforms.rollups)
STATE_FORMAT_VERSION = 1  # of a row as WriteInBatches buffers it
ROLLUP_SOURCE = "rollups"  # DeadLetter.source of the rows the store refused, as Beam's


def row_key_of(element) -> str:
    return element[0]


class RollupFactsOf(FlatMapFunction):
    """Records the lead step emitted (a list of them, what one step call emitted to one
    output, or one record) -> (minute row key text, encoded Aggregate) per minute row
    they fall in, merged: one crossing per row and list, not per record. Counter:
    `rolled_up` (records)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], counters_dir: str | None = None):
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)
        self.counters_dir = counters_dir

    def open(self, runtime_context):
        from orion.rules.shared import shared_rules

        self.partial = PartialRollups(RollupFacts.from_rules(shared_rules(self.rules_dir, self.template_dirs)))
        self.counts = Counts(runtime_context, self.counters_dir, type(self).__name__)

    def close(self):
        self.counts.write()

    def flat_map(self, element):
        partial = self.partial
        records = sum(partial.add(record) for record in as_records(element))
        self.counts.inc("rolled_up", records)
        for key, aggregate in partial.drain():
            yield key.text(), aggregate.encode()


class RollUpBuckets(KeyedProcessFunction):
    """Keyed by a row key (text): (row key text, encoded Aggregate) in; rows out, each as
    (row key text, RollupWriter's text of the row), and (COARSER) what the coarser row
    gained, as what comes in. See the module doc. State: bucket (the encoded
    BucketState, versioned: orion.analytics.rollup.encode_state, as base64 text),
    flush_due (the processing time a write is set for). `bounded`: the input ends, and
    a row's state lives until it does."""

    def __init__(self, allowed_lateness_ms: int, grace_ms: int, flush_after_ms: int, bounded: bool = False):
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms
        self.flush_after_ms = flush_after_ms
        self.bounded = bounded

    def open(self, runtime_context):
        # The encoded BucketState as base64 text: PyFlink's thread mode cannot read back an
        # unset byte-array state.
        self.bucket = runtime_context.get_state(ValueStateDescriptor("bucket", Types.STRING()))
        self.flush_due = runtime_context.get_state(ValueStateDescriptor("flush_due", Types.LONG()))

    def process_element(self, element, ctx):
        text, partial = element
        stored = self.bucket.value()
        timers = ctx.timer_service()
        state = add_to_bucket(None if stored is None else _state_of(stored), Aggregate.decode(partial))
        if timers.current_watermark() >= END_OF_INPUT:
            # Past the end of event time no timer fires any more, and what the stage
            # upstream emits when its input ends still comes (PyFlink forwards the final
            # watermark ahead of it): written at once.
            yield from self._flush(text, state)
            return
        if stored is None:
            timers.register_event_time_timer(
                END_OF_INPUT if self.bounded
                else expires_at(RollupKey.of_text(text), self.allowed_lateness_ms, self.grace_ms))
        self.bucket.update(_state_text(state))
        if self.flush_due.value() is None:
            due = timers.current_processing_time() + self.flush_after_ms
            timers.register_processing_time_timer(due)
            self.flush_due.update(due)

    def on_timer(self, timestamp: int, ctx):
        stored = self.bucket.value()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.flush_due.clear()
        if stored is None:
            return
        state = _state_of(stored)
        if ctx.time_domain() == TimeDomain.EVENT_TIME and not self.bounded:
            # Expired: whatever comes later for the row starts a new state, with a new
            # writer id, so it is stored beside this row, never over it.
            self.bucket.clear()
            yield from self._emit(*flush_bucket(RollupKey.of_text(ctx.get_current_key()), state)[1:])
            return
        yield from self._flush(ctx.get_current_key(), state)

    def _flush(self, text: str, state: BucketState):
        """Write the row if it gained anything since its last write; keep the state."""
        state, row, passed_on = flush_bucket(RollupKey.of_text(text), state)
        self.bucket.update(_state_text(state))
        yield from self._emit(row, passed_on)

    @staticmethod
    def _emit(row: RollupRow | None, passed_on):
        if row is not None:
            yield row.key.text(), RollupWriter.row_text(row)
        if passed_on is not None:
            coarser, gained = passed_on
            yield COARSER, (coarser.text(), gained.encode())


def _state_text(state: BucketState) -> str:
    return base64.b64encode(encode_state(state)).decode("ascii")


def _state_of(text: str) -> BucketState:
    return decode_state(base64.b64decode(text))


class ByRollupKey:
    """Rows of one key on one shard, so a batch holds its versions in order."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, row: tuple[str, str]) -> int:
        return shard_of(row[0], self.shards)


class RollupWriter:
    """Upserts batches of roll-up rows into the roll-up store of `store_uri`
    (orion.store.rollups_base: the highest version of a row wins, so a batch written
    again after a restart changes nothing); yields a DeadLetter (reason unstorable,
    source "rollups") per row the store refused. A store that cannot be reached raises
    StoreError: the job fails and restarts from its last checkpoint. Counters:
    `rollup_rows_written`, `dead_letters`, `dead_letters:unstorable`. A row comes as
    (key text, its text) and is buffered as its text, versioned JSON: {"v", "key": [the
    RollupKey's fields], "writer", "version", "aggregate": the Aggregate's own
    versioned bytes in base64}."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri

    @staticmethod
    def row_text(row: RollupRow) -> str:
        # ASCII-escaped, as every buffered text: Flink's STRING must be valid UTF-8.
        return json.dumps({"v": STATE_FORMAT_VERSION, "key": list(row.key), "writer": row.writer,
                           "version": row.version,
                           "aggregate": base64.b64encode(row.aggregate.encode()).decode("ascii")},
                          separators=(",", ":"), ensure_ascii=True)

    @staticmethod
    def encode(element: tuple[str, str]) -> str:
        return element[1]  # the row's text, made once where the row was

    @staticmethod
    def decode(text: str) -> RollupRow:
        data = json.loads(text)
        if data.get("v") != STATE_FORMAT_VERSION:
            raise ValueError(f"buffered roll-up row format {data.get('v')!r} is not one this Orion reads "
                             f"({STATE_FORMAT_VERSION})")
        return RollupRow(RollupKey(*data["key"]), data["writer"], data["version"],
                         Aggregate.decode(base64.b64decode(data["aggregate"])))

    def open(self, counts: Counts) -> None:
        from orion.store.rollups_opening import open_rollup_store

        self.counts = counts

        def opened():
            store = open_rollup_store(self.store_uri)
            store.init()
            return store

        self.stores = OpenedPerThread(opened)

    def write(self, batch: list[RollupRow]):
        from orion.store.base import UNSTORABLE
        from orion.store.rollups_base import row_element

        done = self.stores.get().write(batch)
        self.counts.inc("rollup_rows_written", done.written)
        if done.refused:
            self.counts.inc("dead_letters", len(done.refused))
            self.counts.inc(f"dead_letters:{UNSTORABLE}", len(done.refused))
        for row, detail in done.refused:
            yield DeadLetter(row_element(row), UNSTORABLE, detail, ROLLUP_SOURCE)

    def close(self) -> None:
        if hasattr(self, "stores"):
            self.stores.close()


def attach_rollups(records: list, store_uri: str, rules_dir: str, template_dirs: tuple[str, ...],
                   allowed_lateness_ms: int, *, bounded: bool, batch_size: int, flush_after_ms: int, shards: int,
                   counters_dir: str | None = None, grace_ms: int = DEFAULT_GRACE_MS):
    """Roll up `records` (streams of what the lead step emits, each element a list) into
    the roll-up store at `store_uri`; returns the stream of dead letters (a list per
    flush) of the rows the store refused. Every stateful step has a uid, so a savepoint
    maps onto a changed job."""
    merged = records[0].union(*records[1:]) if len(records) > 1 else records[0]
    parts = (merged.flat_map(RollupFactsOf(rules_dir, template_dirs, counters_dir), output_type=PICKLED)
             .name("RollupFacts").uid("rollup-facts"))
    rows = []
    for label in ("Minutes", "Hours", "Days"):
        stage = (parts.key_by(row_key_of, key_type=ROW_KEY)
                 .process(RollUpBuckets(allowed_lateness_ms, grace_ms, flush_after_ms, bounded), output_type=PICKLED)
                 .name(f"RollUp{label}").uid(f"rollup-{label.lower()}"))
        rows.append(stage)
        parts = stage.get_side_output(COARSER)
    return (rows[0].union(*rows[1:])
            .key_by(ByRollupKey(shards), key_type=Types.INT())
            .process(WriteInBatches(RollupWriter(store_uri), batch_size, flush_after_ms, counters_dir),
                     output_type=PICKLED)
            .name("WriteRollups").uid("write-rollups"))
