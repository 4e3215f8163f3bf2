"""Roll-ups in the PyFlink job, on the same engine-neutral core as Beam's
(orion.analytics.rollup; orion/transforms/rollups.py), attached by
`orion.runners.flink.build_job` whenever the run's store keeps roll-ups
(`orion.store.rollups_opening.rollup_store_uri`):

  RollupFactsOf       what the lead step emits (outcomes, stored activities, assembled
                      emails, held emails, webhook calls), a list per element -> its
                      minute rows' parts, merged per row and grouped by minute shard (a
                      stable hash of the row key), as one text, keyed by a shard of the
                      list's lead
  GatherParts         keyed by a lead shard (16): keeps the texts as they come (one
                      call an element) and, when it flushes, hands each minute shard the
                      parts gathered for it, one element per shard
  RollUpRows          keyed by a shard, RollUpMinutes (64 shards) and RollUpHoursAndDays
                      (16; an hour shares its day's shard). Keeps what arrives as it
                      comes, too; when it flushes, merges it into its rows (a map state:
                      row key text -> the row's BucketState, the core's versioned bytes
                      as base64 text), upserts every row that changed, whole, straight
                      into the roll-up store, and passes what the rows gained to their
                      coarser rows: an hour's to its day in place, the minutes' to
                      RollUpHoursAndDays, one element per shard there. A row's state
                      expires with its bucket on unbounded input (one event-time timer
                      per shard and expiry time: the bucket's end plus the allowed
                      lateness and a grace period, as Beam's)

    records ─► RollupFacts ─► GatherParts ─► RollUpMinutes ──(what the hours gained)──► RollUpHoursAndDays
                                              │ rows, dead letters                        │ rows, dead letters
                                              └─► roll-up store                           └─► roll-up store

A shard flushes on unbounded input at most every `flush_after_ms` of processing time
(one timer per shard, not per row) and when rows expire; at the end of event time (a
bounded input's, a drained job's: one timer per shard there), where a bounded input's
rows are written, once, all under the job's writer ids (one a stage), as Beam's run
writes its rows once; and past it at once, as no timer fires any more but what the
stage upstream emits at its end still comes (PyFlink forwards the final watermark ahead
of it).

Why shards: every element that crosses between Python functions, every keyed state
access and every timer goes through the JVM, and a keyed element per row with a timer
per row cost more than the lead step itself. Here a list costs one element and one
state call; a flush, one timer, one state update, one batch of upserts and one element
per shard of the next stage. Each shard keeps its rows in memory too (only this
instance touches its keys, so the copy stays right; the state is what a checkpoint
holds, and what a restored instance reads back). The shard counts are fixed, not
derived from the parallelism, so a job restored at another parallelism finds each row's
state where it left it.

Exactly once: the state is the truth. A row is upserted whole, and its version is its
count of records (or one more than its last version, if that is more), so after a
restart from a checkpoint, the rows rebuilt from the checkpointed state and the replayed
input hold everything their writes before the failure held, and their last writes
outrank those. Writer ids derive from the job's (`seed`), which every shard keeps in
state from the job's start (`seeds`), so a restored job writes each row under the id it
had. A row that starts after its bucket expired (a backlog) gets an id of its own,
derived from the watermark then: it is stored beside the expired row, never over it.
The end of event time (a drained job's) expires nothing: a restored job may meet only
there a row the failed attempt wrote, and must write it under the same id.

Past RollupFactsOf the elements are typed (a shard number and text), nothing pickled.
Every state has a Flink type and a versioned encoding, so a savepoint survives a new
release of Orion.

    .venv/bin/python -m orion.runners.flink --events orion/samples/events.jsonl   # roll-ups beside the activities
    .venv/bin/python -m pytest -q tests/test_analytics_flink.py
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json

import orjson
from pyflink.common import Types
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, TimeDomain
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from orion.analytics.rollup import (
    DAY, HOUR, MINUTE, Aggregate, BucketState, PartialRollups, RollupFacts, RollupKey, RollupRow, add_to_bucket,
    decode_state, encode_state, expires_at, flush_bucket, new_writer,
)
from orion.deadletters import DeadLetter
from orion.flink.functions import DEAD, END_OF_INPUT, PICKLED, SHARD_KEY, Counts, OpenedPerThread, as_records, shard_of

DEFAULT_GRACE_MS = 5 * 60_000  # as Beam's (orion.transforms.rollups)
ROLLUP_SOURCE = "rollups"  # DeadLetter.source of the rows the store refused, as Beam's
# The granularities each keyed stage keeps, and its shard count. Fixed: a row's shard
# must not move when a job is restored at another parallelism. Minutes take most of the
# work and are spread widely; hours and days get what a minute shard's flush passes on,
# at most one element per pair of shards, so fewer of them keep those elements few.
MINUTE_STAGE = (MINUTE,)
COARSER_STAGE = (HOUR, DAY)
MINUTE_SHARDS = 64
COARSER_SHARDS = 16
# GatherParts' shards, of the leads: a minute shard gets an element from each per flush.
LEAD_SHARDS = 16
# A shard merges the parts it keeps as they came into its rows at least every this many
# elements (a bounded input writes nothing before its end): its state stays about as
# large as its rows.
COMPACT_AFTER = 5_000
# What crosses into a keyed stage: (shard, text: RollupFactsOf's parts grouped by minute
# shard, or a parts_text).
PARTS = Types.TUPLE([Types.INT(), Types.STRING()])


PARTS_FORMAT = 1  # of the text a list of parts crosses and is kept as


def _json_text(value) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        # A lone surrogate (a tenant from a `\ud800` escape) is no UTF-8, which Flink's
        # STRING needs: escaped.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _json_of(text: str):
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # (an escaped lone surrogate)
        value = json.loads(text)
    if value[0] != PARTS_FORMAT:
        raise ValueError(f"roll-up parts format {value[0]!r} is not one this Orion reads ({PARTS_FORMAT})")
    return value


def parts_text(parts) -> str:
    """(row key text, Aggregate) pairs as versioned JSON text: [PARTS_FORMAT, key, the
    Aggregate's own versioned bytes in base64, key, ...]."""
    flat: list = [PARTS_FORMAT]
    for text, aggregate in parts:
        flat.append(text)
        flat.append(base64.b64encode(aggregate.encode()).decode("ascii"))
    return _json_text(flat)


def parts_of(text: str) -> list[tuple[str, Aggregate]]:
    flat = _json_of(text)
    decode, b64decode = Aggregate.decode, base64.b64decode
    return [(flat[i], decode(b64decode(flat[i + 1]))) for i in range(1, len(flat), 2)]


def seeds(shards: int):
    """(shard, "") for every shard: what GatherParts and RollUpMinutes send the next
    stage first, so that every shard there keeps the job's writer id (`seed`) from the
    job's start, and a job restored from a savepoint finds it for every shard, the ones
    no row had reached yet included."""
    return ((number, "") for number in range(shards))


def shard_key(element) -> int:
    return element[0]


def stage_shard(key: RollupKey, granularities: tuple[str, ...], shards: int) -> int:
    """The shard of a row in the stage keeping `granularities`: that of its coarsest row
    there (an hour's day), so a row passes what it gains to its coarser row in place."""
    top = granularities[-1]
    while key.granularity != top:
        key = key.coarser()
    return shard_of(key.text(), shards)


def _state_text(state: BucketState) -> str:
    # Text, not bytes: PyFlink's thread mode cannot read back an unset byte-array state.
    return base64.b64encode(encode_state(state)).decode("ascii")


def _state_of(text: str) -> BucketState:
    return decode_state(base64.b64decode(text))


def writer_id(*parts) -> str:
    """A writer id (16 hex digits, as orion.analytics.rollup.new_writer's) derived from
    `parts`: the same parts give the same id in every process and after every restart."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def bucket_expired(expiry: int, watermark: int, seen: int | None) -> bool:
    """Whether a row new to an unbounded stage's state comes after its bucket's state
    expired (`expiry`, event time): the watermark has passed it. At the end of event time
    (a drained job's) only the watermarks before the end count (`seen`, the newest): the
    drain is no expiry. A job restored from a checkpoint may meet there, for the first
    time, a row the failed attempt met (and wrote) long before its bucket expired; it
    must write it under the same id, over that write, not beside it."""
    if watermark >= END_OF_INPUT:
        return seen is not None and seen >= expiry
    return watermark >= expiry


def flushed(key: RollupKey, state: BucketState):
    """flush_bucket, the row's version being its count of records (or one more than the
    last version, if that is more): the version grows with every write, and a state
    rebuilt after a restart, which holds what the write before the failure held and
    more, outranks that write."""
    state, row, passed_on = flush_bucket(key, state)
    if row is not None and row.aggregate.records > row.version:
        writer, version, aggregate = row.writer, row.aggregate.records, row.aggregate
        row = _new_row((key, writer, version, aggregate))
        state = _new_state((writer, version, state.total, state.pending))
    return state, row, passed_on


# A row, a state from a tuple of their fields, without NamedTuple's keyword handling.
_new_row = functools.partial(tuple.__new__, RollupRow)
_new_state = functools.partial(tuple.__new__, BucketState)


class RollupFactsOf(FlatMapFunction):
    """Records the lead step emitted (a list of them, what one step call emitted to one
    output, or one record) -> (the shard of their lead among LEAD_SHARDS, their minute
    rows' parts, each row's records merged, grouped by minute shard: versioned JSON
    text, [PARTS_FORMAT, [minute shard, row key text, the Aggregate's versioned bytes in
    base64, key, ...], ...]): one element per list. (RollUpMinutes counts the records,
    `rolled_up`, as it merges them: a count is a call into the JVM.)"""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...]):
        self.rules_dir = rules_dir
        self.template_dirs = tuple(template_dirs)

    def open(self, runtime_context):
        from orion.rules.shared import shared_rules

        self.partial = PartialRollups(RollupFacts.from_rules(shared_rules(self.rules_dir, self.template_dirs)))

    def flat_map(self, element):
        records = as_records(element)
        partial = self.partial
        for record in records:
            partial.add(record)
        groups: dict[int, list] = {}
        for key, aggregate in partial.drain():
            text = key.text()
            number = shard_of(text, MINUTE_SHARDS)
            group = groups.get(number)
            if group is None:
                group = groups[number] = [number]
            group.append(text)
            group.append(base64.b64encode(aggregate.encode()).decode("ascii"))
        if groups:
            owner = getattr(records[0], "request", records[0])  # (a held email's lead is its request's)
            lead_shard = shard_of(f"{owner.tenant}\x1f{owner.lead_id}", LEAD_SHARDS)
            yield lead_shard, _json_text([PARTS_FORMAT, *groups.values()])


class Shard:
    """The in-memory mirror of one shard's state: its rows as of the last compaction
    (row key text -> [RollupKey, BucketState]), the rows merged since they were last
    written (`dirty`), the parts come since the last compaction (`log`, texts as they
    came); on unbounded input the rows by expiry time (`expiring`); and what this
    instance knows of its timers (`timers`, event time; `flush_due`, processing time).
    A bounded input's shard lets go of its rows once it has written them at the end
    (`complete` False): a row is read back from state if more comes for it. Rebuilt
    from state when the instance first meets the shard (after a restore: the
    timers are in the checkpoint, so one registered again is one Flink has already)."""

    __slots__ = ("writer", "rows", "complete", "dirty", "log", "expiring", "timers", "flush_due")

    def __init__(self, writer: str):
        self.writer = writer
        self.rows: dict[str, list] = {}
        self.complete = True  # rows holds every row of the state
        self.dirty: set[str] = set()
        self.log: list[str] = []
        self.expiring: dict[int, set[str]] = {}
        self.timers: set[int] = set()
        self.flush_due: int | None = None


class _Entries(dict):
    """Entries for MapState.put_all, one call for many: PyFlink 2.3 reads them with
    items() in thread mode and iterates them as (key, value) pairs in process mode."""

    def __iter__(self):
        return iter(self.items())


def _gain(coarser: dict[str, list], key: RollupKey, gained: Aggregate, owned: bool) -> None:
    """Add what the row of `key` gained to its coarser row's entry in `coarser` (coarser
    row key text -> [RollupKey, Aggregate, owned]). An Aggregate that is not the stage's
    own (a row's total) is copied before anything is merged into it."""
    up = key.coarser()
    if up is None:
        return
    text = up.text()
    found = coarser.get(text)
    if found is None:
        coarser[text] = [up, gained, owned]
        return
    if not found[2]:
        found[1], found[2] = found[1].copy(), True
    found[1].merge(gained)


class _ShardLog(KeyedProcessFunction):
    """Keyed by a shard number; what arrives for a shard is kept, as text, in its `parts`
    list state (one call an element) and in memory (`Shard`, rebuilt from state when an
    instance first meets the shard), until the shard flushes: at most every
    `flush_after_ms` of processing time on unbounded input, at the end of event time (a
    bounded input's, a drained job's: processing-time timers no longer fire then), when
    COMPACT_AFTER elements have gathered, and at once past the end of event time, when no
    timer fires any more but what the stage upstream emits at its end still comes
    (PyFlink forwards the final watermark ahead of it)."""

    def _open_log(self, runtime_context) -> None:
        self.parts = runtime_context.get_list_state(ListStateDescriptor("parts", Types.STRING()))
        self.mirror: dict[int, Shard] = {}
        # Whether this instance's event time has reached its end: a timer firing there
        # says so; until then only a shard without a timer pending asks the JVM.
        self.ended = False

    def _shard(self, number: int, timers) -> Shard:
        shard = self.mirror.get(number)
        if shard is None:
            shard = self.mirror[number] = self._load(number, timers)
            shard.log.extend(self.parts.get() or ())
            if shard.log or shard.dirty:
                self._wake(shard, timers)
        return shard

    def _load(self, number: int, timers) -> "Shard":
        return Shard(None)

    def _arrive(self, shard: "Shard", text: str, timers) -> bool:
        """Keep `text`; whether the shard is to flush now."""
        self.parts.add(text)
        shard.log.append(text)
        if not self.ended and not shard.timers:
            # (A shard with an event-time timer pending has not passed the end: the
            # timer would have fired, and said so.)
            self.ended = timers.current_watermark() >= END_OF_INPUT
        if self.ended:
            return True
        self._wake(shard, timers)
        return len(shard.log) >= COMPACT_AFTER

    def _wake(self, shard: "Shard", timers) -> None:
        self._timer_at(shard, END_OF_INPUT, timers)
        if not self.bounded and shard.flush_due is None:
            shard.flush_due = timers.current_processing_time() + self.flush_after_ms
            timers.register_processing_time_timer(shard.flush_due)

    def _timer_at(self, shard: "Shard", at: int, timers) -> None:
        """One event-time timer per shard and time."""
        if at not in shard.timers:
            timers.register_event_time_timer(at)
            shard.timers.add(at)

    def _fired(self, timestamp: int, ctx) -> "Shard":
        """The shard whose timer fired, what it knows of its timers brought up to date."""
        timers = ctx.timer_service()
        shard = self._shard(ctx.get_current_key(), timers)
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            if shard.flush_due is not None and timestamp >= shard.flush_due:
                shard.flush_due = None
        else:
            shard.timers.discard(timestamp)
            if not self.ended:
                self.ended = timestamp >= END_OF_INPUT or timers.current_watermark() >= END_OF_INPUT
        return shard


class GatherParts(_ShardLog):
    """Keyed by a shard of the leads: RollupFactsOf's texts in; on each flush, (minute
    shard, parts_text) per minute shard for all the parts gathered since the last, so a
    minute shard gets one element per lead shard and flush, not one per list (and, first,
    `seeds`). State: parts (the texts as they came)."""

    def __init__(self, flush_after_ms: int, bounded: bool):
        self.flush_after_ms = flush_after_ms
        self.bounded = bounded

    def open(self, runtime_context):
        self._open_log(runtime_context)
        self.seeded = False

    def process_element(self, element, ctx):
        number, text = element
        timers = ctx.timer_service()
        shard = self._shard(number, timers)
        if self._arrive(shard, text, timers):
            yield from self._flush(shard)

    def on_timer(self, timestamp: int, ctx):
        yield from self._flush(self._fired(timestamp, ctx))

    def _flush(self, shard: "Shard"):
        if not self.seeded:
            self.seeded = True
            yield from seeds(MINUTE_SHARDS)
        if not shard.log:
            return
        by_shard: dict[int, list] = {}
        for text in shard.log:
            for group in _json_of(text)[1:]:
                found = by_shard.get(group[0])
                if found is None:
                    found = by_shard[group[0]] = [PARTS_FORMAT]
                found += group[1:]
        shard.log = []
        self.parts.clear()
        for number, flat in by_shard.items():
            yield number, _json_text(flat)


class RollUpRows(_ShardLog):
    """Keyed by a shard number: (shard, parts_text of [(row key text, Aggregate), ...])
    in (and (shard, "") first: `seeds`), merged into the shard's rows of
    `granularities` (MINUTE_STAGE or COARSER_STAGE); the changed rows written into the
    roll-up store at `store_uri`, `batch_size` rows to a write; what the rows gained for
    a coarser row this stage does not keep goes out (main output) as (shard of the next
    stage, parts_text) per shard of `next_shards`; the rows the store refused as a list
    of DeadLetters (reason unstorable, source "rollups") to `dead_tag` (None: the main
    output). See the module doc.

    State per shard: parts (list: the texts come since the last compaction, as they
    came), rows (map: row key text -> the row's BucketState, versioned, as base64 text)
    and seed (the writer id of the job the shard first ran in, from which its rows'
    writer ids derive). An element costs one append to `parts`; the parts are merged
    into `rows` (compacted) when the shard writes its rows, and every COMPACT_AFTER
    elements, so the state stays about as large as the rows. `bounded`: the input ends;
    a row's state lives until it does. A store that cannot be reached raises
    StoreError: the job fails and restarts from its last checkpoint. Counters:
    `rolled_up` (minutes: the records merged into rows), `rollup_rows_written`,
    `dead_letters`, `dead_letters:unstorable`."""

    def __init__(self, granularities: tuple[str, ...], shards: int, store_uri: str, seed: str, *,
                 allowed_lateness_ms: int, grace_ms: int, flush_after_ms: int, batch_size: int, bounded: bool,
                 next_granularities: tuple[str, ...] = (), next_shards: int = 0, dead_tag=None,
                 counters_dir: str | None = None, name: str = "RollUpRows"):
        self.granularities = tuple(granularities)
        self.shards = shards
        self.store_uri = store_uri
        self.seed = seed
        self.allowed_lateness_ms = allowed_lateness_ms
        self.grace_ms = grace_ms
        self.flush_after_ms = flush_after_ms
        self.batch_size = batch_size
        self.bounded = bounded
        self.next_granularities = tuple(next_granularities)
        self.next_shards = next_shards
        self.dead_tag = dead_tag
        self.counters_dir = counters_dir
        self.name = name

    def open(self, runtime_context):
        from orion.store.rollups_opening import open_rollup_store

        self._open_log(runtime_context)
        self.rows = runtime_context.get_map_state(MapStateDescriptor("rows", Types.STRING(), Types.STRING()))
        self.seeds = runtime_context.get_state(ValueStateDescriptor("seed", Types.STRING()))
        self.counts = Counts(runtime_context, self.counters_dir, self.name)
        self.seeded = False  # the next stage's shards (seeds)
        # The newest watermark short of the end of event time this instance has seen.
        self.watermark_seen: int | None = None

        def opened():
            store = open_rollup_store(self.store_uri)
            store.init()
            return store

        self.stores = OpenedPerThread(opened)

    def close(self):
        if hasattr(self, "stores"):
            self.stores.close()
        self.counts.write()

    # arrivals -----------------------------------------------------------------------

    def process_element(self, element, ctx):
        number, text = element
        timers = ctx.timer_service()
        shard = self._shard(number, timers)
        if not text:  # (seeds: the shard now keeps its seed)
            return
        if self._arrive(shard, text, timers):
            if self.ended:
                yield from self._flush(shard, timers)
            else:  # many parts gathered: merged into the rows, written later
                changed: set[str] = set()
                self._compact(shard, timers, changed)
                self._store(shard, changed)

    def _load(self, number: int, timers) -> Shard:
        """The shard as its state holds it (empty, unless the job was restored)."""
        seed = self.seeds.value()
        if seed is None:
            seed = self.seed
            self.seeds.update(seed)
        # The shard count is part of the id: were it ever changed, the rows would move to
        # other shards, whose states must not write over the rows left behind.
        shard = Shard(writer_id(seed, self.shards))
        for text, stored in self.rows.items():
            key, state = RollupKey.of_text(text), _state_of(stored)
            shard.rows[text] = [key, state]
            if state.pending is not None:
                shard.dirty.add(text)
            if not self.bounded:
                self._expire_at(shard, key, text, timers)
        return shard

    def _expiry(self, key: RollupKey) -> int:
        return expires_at(key, self.allowed_lateness_ms, self.grace_ms)

    def _expire_at(self, shard: Shard, key: RollupKey, text: str, timers) -> None:
        """Unbounded input: the row expires with its bucket's other rows, at one timer."""
        at = self._expiry(key)
        found = shard.expiring.get(at)
        if found is None:
            found = shard.expiring[at] = set()
        found.add(text)
        self._timer_at(shard, at, timers)

    def _logged(self, shard: Shard) -> dict[str, list]:
        """The parts come since the last compaction, merged per row: row key text ->
        [None (its RollupKey, not parsed yet), Aggregate, True (the Aggregate is the
        stage's own)]; the log taken."""
        grouped: dict[str, list] = {}
        records = 0
        for text in shard.log:
            for key_text, aggregate in parts_of(text):
                records += aggregate.records
                found = grouped.get(key_text)
                if found is None:
                    grouped[key_text] = [None, aggregate, True]
                else:
                    found[1].merge(aggregate)
        shard.log = []
        if self.granularities[0] == MINUTE:
            self.counts.inc("rolled_up", records)
        return grouped

    def _row(self, shard: Shard, text: str) -> list | None:
        found = shard.rows.get(text)
        if found is None and not shard.complete:
            stored = self.rows.get(text)
            if stored is not None:
                found = shard.rows[text] = [RollupKey.of_text(text), _state_of(stored)]
        return found

    def _watermark(self, timers) -> int | None:
        """The current watermark (None on bounded input), noting the newest one short of
        the end of event time."""
        if self.bounded:
            return None
        watermark = timers.current_watermark()
        if watermark < END_OF_INPUT and (self.watermark_seen is None or watermark > self.watermark_seen):
            self.watermark_seen = watermark
        return watermark

    def _writer(self, shard: Shard, key: RollupKey, text: str, watermark: int | None, timers) -> str:
        """The writer id of a row new to the state (unbounded: its expiry timer set)."""
        if self.bounded:
            return shard.writer
        self._expire_at(shard, key, text, timers)
        if bucket_expired(self._expiry(key), watermark, self.watermark_seen):
            # The row's bucket has expired: a new state, under an id of its own, is
            # stored beside the row written before, never over it.
            return writer_id(shard.writer, watermark)
        return shard.writer

    def _compact(self, shard: Shard, timers, changed: set[str]) -> None:
        """Merge the parts come since the last compaction into the rows' states (each
        row's parts merged first), to be written later."""
        watermark = self._watermark(timers)
        for text, (_, aggregate, _) in self._logged(shard).items():
            found = self._row(shard, text)
            if found is None:
                key = RollupKey.of_text(text)
                writer = self._writer(shard, key, text, watermark, timers)
                shard.rows[text] = [key, add_to_bucket(None, aggregate, lambda: writer)]
            else:
                found[1] = add_to_bucket(found[1], aggregate)
            shard.dirty.add(text)
            changed.add(text)

    def _store(self, shard: Shard, changed: set[str], dropped: set[str] = frozenset()) -> None:
        """The compacted rows into state, in one call; the parts' log emptied."""
        rows = shard.rows
        if changed:
            self.rows.put_all(_Entries((text, _state_text(rows[text][1])) for text in changed if text not in dropped))
        for text in dropped:
            self.rows.remove(text)
        self.parts.clear()

    # writes -------------------------------------------------------------------------

    def on_timer(self, timestamp: int, ctx):
        shard = self._fired(timestamp, ctx)
        timers = ctx.timer_service()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from self._flush(shard, timers)
            return
        if self.bounded:
            yield from self._flush(shard, timers)
            # Every row is written, and the input has ended: what little may still come
            # reads its row back from state. Let go of the rest: the more objects a
            # Python process keeps, the more each of its garbage collections costs, and
            # in thread mode every function of the job shares this process.
            shard.rows.clear()
            shard.complete = False
            return
        expired: set[str] = set()
        for at in sorted(at for at in shard.expiring if at <= timestamp):
            expired |= shard.expiring.pop(at)
        if self.ended:
            # The end of event time (a drained job): no row has expired, whatever its
            # timer says. Every row is written and kept, so what still comes past the end
            # merges into it, under its id; and rows let go of, as on bounded input.
            yield from self._flush(shard, timers)
            shard.rows.clear()
            shard.expiring.clear()
            shard.complete = False
            return
        # Expired: written one last time and dropped; whatever comes later for these rows
        # starts a new state (`_writer`).
        yield from self._flush(shard, timers, expired)

    def _flush(self, shard: Shard, timers, expired: set[str] = frozenset()):
        """Write every row of the shard merged since its last write, finer granularities
        first, so what an hour passes to its day in place is written with the day; pass
        on what the rows gained, merged per coarser row; drop the `expired` rows."""
        watermark = self._watermark(timers)
        changed: set[str] = set()
        rows: list[RollupRow] = []
        passed: dict[int, list] = {}
        level = self._logged(shard)  # this granularity's parts: text -> [key, Aggregate, owned]
        for granularity in self.granularities:
            coarser: dict[str, list] = {}
            for text, (key, aggregate, owned) in level.items():
                found = self._row(shard, text)
                if found is None:
                    # A row new to the state is written as it came: what it gained is all
                    # it holds.
                    key = key or RollupKey.of_text(text)
                    if not owned:
                        aggregate = aggregate.copy()
                    writer = self._writer(shard, key, text, watermark, timers)
                    version = max(aggregate.records, 1)
                    shard.rows[text] = [key, _new_state((writer, version, aggregate, None))]
                    rows.append(_new_row((key, writer, version, aggregate)))
                    _gain(coarser, key, aggregate, False)
                else:
                    state, row, passed_on = flushed(found[0], add_to_bucket(found[1], aggregate))
                    found[1] = state
                    shard.dirty.discard(text)
                    rows.append(row)
                    if passed_on is not None:
                        _gain(coarser, found[0], passed_on[1], True)
                changed.add(text)
            # Rows merged by a compaction, and nothing since.
            for text in [text for text in shard.dirty if shard.rows[text][0].granularity == granularity]:
                found = shard.rows[text]
                state, row, passed_on = flushed(found[0], found[1])
                found[1] = state
                shard.dirty.discard(text)
                changed.add(text)
                if row is not None:
                    rows.append(row)
                if passed_on is not None:
                    _gain(coarser, found[0], passed_on[1], True)
            level = {}
            for coarser_text, entry in coarser.items():
                if entry[0].granularity in self.granularities:
                    level[coarser_text] = entry
                else:
                    number = stage_shard(entry[0], self.next_granularities, self.next_shards)
                    found = passed.get(number)
                    if found is None:
                        passed[number] = [(coarser_text, entry[1])]
                    else:
                        found.append((coarser_text, entry[1]))
        for text in expired:
            shard.rows.pop(text, None)
        self._store(shard, changed, expired)
        if self.next_shards and not self.seeded:
            self.seeded = True
            yield from seeds(self.next_shards)
        for number, parts in passed.items():
            yield number, parts_text(parts)
        refused = self._write(rows)
        if refused:
            yield refused if self.dead_tag is None else (self.dead_tag, refused)

    def _write(self, rows: list[RollupRow]) -> list[DeadLetter]:
        from orion.store.base import UNSTORABLE
        from orion.store.rollups_base import row_element

        letters = []
        store = self.stores.get() if rows else None
        for start in range(0, len(rows), self.batch_size):
            done = store.write(rows[start:start + self.batch_size])
            self.counts.inc("rollup_rows_written", done.written)
            if done.refused:
                self.counts.inc("dead_letters", len(done.refused))
                self.counts.inc(f"dead_letters:{UNSTORABLE}", len(done.refused))
            letters += [DeadLetter(row_element(row), UNSTORABLE, detail, ROLLUP_SOURCE) for row, detail in done.refused]
        return letters


def attach_rollups(records: list, store_uri: str, rules_dir: str, template_dirs: tuple[str, ...],
                   allowed_lateness_ms: int, *, bounded: bool, batch_size: int, flush_after_ms: int,
                   counters_dir: str | None = None, grace_ms: int = DEFAULT_GRACE_MS):
    """Roll up `records` (streams of what the lead step emits, each element a list) into
    the roll-up store at `store_uri`; returns the stream of dead letters (a list per
    flush) of the rows the store refused. Every stateful step has a uid, so a savepoint
    maps onto a changed job."""
    seed = new_writer()  # the job's; a job restored from a savepoint keeps the one it had
    stage = dict(allowed_lateness_ms=allowed_lateness_ms, grace_ms=grace_ms, flush_after_ms=flush_after_ms,
                 batch_size=batch_size, bounded=bounded, counters_dir=counters_dir)
    merged = records[0].union(*records[1:]) if len(records) > 1 else records[0]
    parts = (merged.flat_map(RollupFactsOf(rules_dir, template_dirs), output_type=PARTS)
             .name("RollupFacts").uid("rollup-facts")
             .key_by(shard_key, key_type=SHARD_KEY)
             .process(GatherParts(flush_after_ms, bounded), output_type=PARTS)
             .name("GatherRollupParts").uid("rollup-parts-by-lead-shard"))
    minutes = (parts.key_by(shard_key, key_type=SHARD_KEY)
               .process(RollUpRows(MINUTE_STAGE, MINUTE_SHARDS, store_uri, seed, next_granularities=COARSER_STAGE,
                                   next_shards=COARSER_SHARDS, dead_tag=DEAD, name="RollUpMinutes", **stage),
                        output_type=PARTS)
               .name("RollUpMinutes").uid("rollup-minute-shards"))
    coarser = (minutes.key_by(shard_key, key_type=SHARD_KEY)
               .process(RollUpRows(COARSER_STAGE, COARSER_SHARDS, store_uri, seed, name="RollUpHoursAndDays",
                                   **stage),
                        output_type=PICKLED)
               .name("RollUpHoursAndDays").uid("rollup-coarser-shards"))
    return minutes.get_side_output(DEAD).union(coarser)
