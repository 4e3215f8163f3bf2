"""Event-time roll-ups, engine-neutral: what the lead step emits goes in, (tenant,
bucket, dimensions) aggregates come out, as Druid rolls rows up at ingest.

A roll-up row is keyed by a `RollupKey`: the tenant, the granularity (minute, hour or
day), the bucket (its start, epoch ms, from the record's event time), the kind of
record and six dimensions:

    kind      dimensions set                     from
    activity  type, source, attribute            every stored activity (input and flow-generated)
    outcome   campaign, source, status, reason   every outcome: status qualified or not_qualified,
                                                 reason (qualification, filters) when not
    flow      campaign, status, reason,          emails queued (status email_queued, attribute:
              attribute                          the template), held (email_held, reason: why),
                                                 webhook calls (webhook, attribute: its name)

`source` is `input` for what came from outside and `flow` for what a campaign flow
generated (an activity, or an outcome of one). `attribute` is the type's selective
attribute (orion.activities: the url as host and path, the form, the email, the event,
the list, ...). Dimensions that do not apply are "". Every value is cut to
MAX_DIMENSION_BYTES of UTF-8, so a row key stays bounded whatever the input.

An `Aggregate` holds the metrics of a row: `records` (a count), `sketch` (a HyperLogLog
sketch of the lead ids, Apache DataSketches, lg_k LG_K: a relative standard error of
RELATIVE_ERROR, about 1.6%, so 95% of estimates fall within twice that) and `sums` (the
tenant's declared numeric attributes of the row's activities: every `number` attribute
of its custom activity types). Aggregates merge: counts and sums add, sketches union; a
lead counted in two rows is one lead in their union.

Hours and days are built from the minutes, by every dimension but an activity's
`attribute`, which only minutes keep (MINUTE_ONLY): each engine keeps one `BucketState`
per row key (the running total and what was merged since it was last written) and,
whenever it writes a row (`flush`), passes what the row gained to the row of the
coarser bucket. A row is written whole (upserted) with a version that grows with every
write, so a late activity within the allowed lateness rewrites its minute (and hour and
day), a replayed write changes nothing, and an older version arriving after a newer one
is ignored by the store. Each state has a `writer` id, part of the stored key: a job that meets a row
another job (or an earlier state of the same row, expired) already wrote adds its own
row beside it, never overwrites it, and queries merge the two.

    python -c "from orion.analytics.rollup import *; a = Aggregate(); a.add('L1'); a.add('L1'); print(a)"
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import struct
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple
from urllib.parse import urlsplit

from orion.activities import Activity, ActivityTypes
from orion.native import import_extension

if TYPE_CHECKING:  # the annotations' name; the module is imported on first use (_DataSketches)
    from datasketches import hll_sketch


class _DataSketches:
    """Apache DataSketches' HLL classes, imported on first use (through import_extension,
    on a thread Python started: see orion.native). Every `orion` command builds its whole
    parser, which imports this module for the dimensions' names; DataSketches and numpy
    would add a seventh of a second to each."""

    def __getattr__(self, name: str):
        module = import_extension("datasketches")
        # kept on the instance: later look-ups are plain attribute reads
        self.hll_sketch, self.hll_union = module.hll_sketch, module.hll_union
        self.HLL_4 = module.tgt_hll_type.HLL_4
        return object.__getattribute__(self, name)


_ds = _DataSketches()

# --- keys --------------------------------------------------------------------------

MINUTE, HOUR, DAY = "minute", "hour", "day"
GRANULARITY_MS = {MINUTE: 60_000, HOUR: 3_600_000, DAY: 86_400_000}
GRANULARITIES = (MINUTE, HOUR, DAY)
MINUTE_MS = GRANULARITY_MS[MINUTE]
COARSER = {MINUTE: HOUR, HOUR: DAY}

ACTIVITY, OUTCOME, FLOW = "activity", "outcome", "flow"
KINDS = (ACTIVITY, OUTCOME, FLOW)
DIMENSIONS = ("type", "source", "attribute", "campaign", "status", "reason")

# Dimensions that only minute rows keep, by kind: an activity's selective attribute (a
# page, a form, an email) takes so many values that an hour's or a day's rows by it
# would be about as many as its minutes' (the benchmark's 20,000 activities: 20,000
# minute rows, 19,000 hour rows, 14,000 day rows). Hours and days of activities are kept
# by type and source; a query by attribute at hour, day or all folds the minutes.
MINUTE_ONLY = {ACTIVITY: frozenset({"attribute"})}

INPUT_SOURCE, FLOW_SOURCE = "input", "flow"
QUALIFIED, NOT_QUALIFIED = "qualified", "not_qualified"
EMAIL_QUEUED, EMAIL_HELD, WEBHOOK_QUEUED = "email_queued", "email_held", "webhook"

# Generated activities' event ids start so (orion.campaigns.flows._generated_event_id).
FLOW_EVENT_PREFIX = "flow-"
MAX_DIMENSION_BYTES = 200


class RollupKey(NamedTuple):
    tenant: str
    granularity: str
    bucket: int  # epoch ms, the bucket's start
    kind: str
    type: str = ""
    source: str = ""
    attribute: str = ""
    campaign: str = ""
    status: str = ""
    reason: str = ""

    def dimensions(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in DIMENSIONS}

    def coarser(self) -> "RollupKey | None":
        """The row this one adds to in the next coarser bucket (a minute's hour, an hour's
        day): the same dimensions, but an activity's `attribute`, which only minutes keep
        (MINUTE_ONLY)."""
        granularity = COARSER.get(self.granularity)
        if granularity is None:
            return None
        bucket = self.bucket
        fields = (self.tenant, granularity, bucket - bucket % GRANULARITY_MS[granularity]) + self[3:]
        if self.attribute and self.kind == ACTIVITY:
            fields = fields[:6] + ("",) + fields[7:]
        return _new_key(fields)

    def text(self) -> str:
        """The key as one string (a Flink key, a log line): fields joined by \\x1f."""
        return "\x1f".join((self.tenant, self.granularity, str(self.bucket)) + self[3:])

    @classmethod
    def of_text(cls, text: str) -> "RollupKey":
        fields = text.split("\x1f")
        fields[2] = int(fields[2])
        return cls(*fields)


# A key from a tuple of all its fields, without the keyword handling of RollupKey(...).
_new_key = functools.partial(tuple.__new__, RollupKey)


def bucket_start(ms: int, granularity: str) -> int:
    size = GRANULARITY_MS[granularity]
    return ms - ms % size  # floors, for times before 1970 too


@functools.lru_cache(maxsize=1 << 16)  # campaign names, forms, emails, pages recur
def dimension_value(value) -> str:
    """A dimension as stored: text, valid UTF-8, at most MAX_DIMENSION_BYTES of it (cut at
    a character boundary); what cannot be encoded becomes U+FFFD."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    encoded = text.encode("utf-8", "replace") if not text.isascii() else text.encode("ascii")
    if len(encoded) <= MAX_DIMENSION_BYTES and encoded.decode("utf-8", "replace") == text:
        return text
    return encoded[:MAX_DIMENSION_BYTES].decode("utf-8", "ignore")


@functools.lru_cache(maxsize=1 << 16)  # a site's pages recur: parse each once
def url_dimension(url: str) -> str:
    """A page's url as the value of a dimension (url_host_and_path, then dimension_value)."""
    return dimension_value(url_host_and_path(url))


# A plain http(s) url: scheme, host (no user, port or brackets), path, then a query, a
# fragment or the end; what urlsplit would split the same way, without its Python steps.
_PLAIN_URL = re.compile(r"https?://([A-Za-z0-9.-]+)(/[^?#\s]*)?(?:[?#]|$)", re.ASCII)


def url_host_and_path(url: str) -> str:
    """A page's url as a dimension: host (lower case) and path, without scheme, query or
    fragment, so one page is one value however it was linked."""
    url = url.strip()
    plain = _PLAIN_URL.match(url)
    if plain is not None:
        host, path = plain.groups()
        return host.lower() + (path or "/")
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    host = (parts.hostname or "").lower()
    if not host and not parts.netloc:
        return parts.path or url
    return host + (parts.path or "/")


# --- metrics -----------------------------------------------------------------------

LG_K = 12
# The relative standard error of an estimate from a merged sketch (1.04 / sqrt(2^LG_K)).
RELATIVE_ERROR = 1.04 / math.sqrt(1 << LG_K)
_FORMAT = 1  # the encoding's version: bump it, and keep reading the old ones
_HEADER = struct.Struct(">BqI")  # format, records, length of the sums' JSON


class Aggregate:
    """The metrics of one roll-up row (see the module doc); mutable, merged in place.

    The sketch's compact bytes and its estimate are kept once computed, and an
    aggregate decoded from bytes keeps them without building the sketch: a row that is
    passed on, copied and written unchanged (an hour of one minute) serializes its
    sketch once and never deserializes it. (So bytes that are no sketch raise
    ValueError when the sketch is first needed, not when they are decoded.)"""

    __slots__ = ("records", "_sketch", "_compact", "_estimate", "sums")

    def __init__(self, records: int = 0, sketch: hll_sketch | None = None, sums: dict[str, float] | None = None):
        self.records = records
        self._sketch = sketch
        self._compact = None  # the sketch's compact bytes, once known (b"": no sketch)
        self._estimate = None
        self.sums = sums if sums is not None else {}

    @property
    def sketch(self) -> hll_sketch | None:
        if self._sketch is None and self._compact:
            self._sketch = of_sketch_bytes(self._compact)
        return self._sketch

    @sketch.setter
    def sketch(self, sketch: hll_sketch | None) -> None:
        self._sketch = sketch
        self._compact = self._estimate = None

    def add(self, lead_id: str, sums: dict[str, float] | None = None) -> None:
        """One record of a lead."""
        self.records += 1
        sketch = self._sketch
        if sketch is None:
            sketch = self.sketch  # decoded from its bytes, if it has some
            if sketch is None:
                sketch = self._sketch = _ds.hll_sketch(LG_K, _ds.HLL_4)
        sketch.update(lead_id)
        self._compact = self._estimate = None
        if sums:
            mine = self.sums
            for name, value in sums.items():
                mine[name] = mine.get(name, 0) + value

    def merge(self, other: "Aggregate") -> "Aggregate":
        """Add `other` into this one; returns this one."""
        self.records += other.records
        if self._sketch is None and not self._compact:
            # Nothing of ours to union with: take other's sketch as bytes (never shared).
            compact = other.sketch_bytes()
            if compact:
                self._compact, self._estimate = compact, other._estimate
        elif other._sketch is not None or other._compact:
            union = _ds.hll_union(LG_K)
            union.update(self.sketch)
            union.update(other.sketch)
            self.sketch = union.get_result(_ds.HLL_4)
        if other.sums:
            mine = self.sums
            for name, value in other.sums.items():
                mine[name] = mine.get(name, 0) + value
        return self

    def copy(self) -> "Aggregate":
        return Aggregate().merge(self)

    def estimate(self) -> float:
        """The estimated number of distinct leads."""
        if self._estimate is None:
            sketch = self.sketch
            self._estimate = 0.0 if sketch is None else sketch.get_estimate()
        return self._estimate

    def bounds(self, std_devs: int = 2) -> tuple[float, float]:
        """The interval the true count of distinct leads lies in with the confidence of
        `std_devs` standard deviations (1: 68%, 2: 95%, 3: 99.7%)."""
        sketch = self.sketch
        if sketch is None:
            return 0.0, 0.0
        return sketch.get_lower_bound(std_devs), sketch.get_upper_bound(std_devs)

    def sketch_bytes(self) -> bytes:
        if self._compact is None:
            self._compact = b"" if self._sketch is None else self._sketch.serialize_compact()
        return self._compact

    def encode(self) -> bytes:
        """Versioned bytes: header, the sums as JSON, the compact sketch."""
        sums = json.dumps(self.sums, separators=(",", ":"), sort_keys=True).encode("utf-8") if self.sums else b""
        return _HEADER.pack(_FORMAT, self.records, len(sums)) + sums + self.sketch_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "Aggregate":
        version, records, sums_length = _HEADER.unpack_from(data)
        if version != _FORMAT:
            raise ValueError(f"roll-up aggregate format {version} is newer than this Orion reads ({_FORMAT})")
        start = _HEADER.size
        aggregate = cls(records, None, json.loads(data[start:start + sums_length]) if sums_length else {})
        aggregate._compact = bytes(data[start + sums_length:])  # the sketch is built when first needed
        return aggregate

    def __reduce__(self):
        return Aggregate.decode, (self.encode(),)

    def __eq__(self, other) -> bool:
        # Sketches are compared by their estimate: a union and a sketch fed the same leads
        # may hold them in different forms.
        return (isinstance(other, Aggregate) and self.records == other.records and self.sums == other.sums
                and math.isclose(self.estimate(), other.estimate(), rel_tol=1e-9))

    def __repr__(self) -> str:
        return f"Aggregate(records={self.records}, leads~{self.estimate():.0f}, sums={self.sums})"


def merge_all(aggregates: list["Aggregate"]) -> "Aggregate":
    """A new Aggregate of several: one union for all the sketches (cheaper than merging
    them pairwise). A single one is returned as it is."""
    if len(aggregates) == 1:
        return aggregates[0]
    union = _ds.hll_union(LG_K)
    records = 0
    sums: dict = {}
    for aggregate in aggregates:
        records += aggregate.records
        if aggregate.sketch is not None:
            union.update(aggregate.sketch)
        for name, value in aggregate.sums.items():
            sums[name] = sums.get(name, 0) + value
    return Aggregate(records, None if union.is_empty() else union.get_result(_ds.HLL_4), sums)


def of_sketch_bytes(data: bytes | None) -> hll_sketch | None:
    """A sketch back from its serialized bytes (b"" or None: no sketch). The bytes come
    from a store or a state Orion wrote; a broken one raises ValueError."""
    if not data:
        return None
    try:
        return _ds.hll_sketch.deserialize(bytes(data))
    except RuntimeError as err:  # what the library raises for bytes that are no sketch
        raise ValueError(f"not a HyperLogLog sketch: {err}") from None


class LeadIds(tuple):
    """A row's few distinct lead ids, kept instead of its sketch (orion.analytics.segments):
    the ids its sketch, in the exact list mode, would hash."""


def merged_estimate(sketches: Iterable) -> tuple[float, float, float]:
    """(estimate, lower, upper at 95%) of the union of serialized sketches (bytes) and
    LeadIds (each id fed to the union: the same as the sketch of those ids)."""
    union = _ds.hll_union(LG_K)
    for data in sketches:
        if isinstance(data, LeadIds):
            for lead in data:
                union.update(lead)
            continue
        sketch = of_sketch_bytes(data)
        if sketch is not None:
            union.update(sketch)
    if union.is_empty():
        return 0.0, 0.0, 0.0
    return union.get_estimate(), union.get_lower_bound(2), union.get_upper_bound(2)


# --- records in ----------------------------------------------------------------------


class RollupFacts:
    """Turns what the lead step emits (stored activities, outcomes, assembled emails,
    held emails, webhook calls) into minute-bucket facts: (RollupKey, lead id, sums).

    `types`: the tenants' activity types (for each type's selective attribute and the
    numeric attributes a tenant declared)."""

    def __init__(self, types: ActivityTypes | None = None):
        self.types = types or ActivityTypes()
        self._numeric: dict[tuple[str, str], tuple[str, ...]] = {}
        for tenant, declared in self.types.custom().items():
            for name, type_ in declared.items():
                numbers = tuple(sorted(attr for attr, spec in type_.attributes.items() if spec.type == "number"))
                if numbers:
                    self._numeric[(tenant, name)] = numbers
        self._selective: dict[tuple[str, str], str | None] = {}
        self._types: dict[tuple[str, str], tuple] = {}

    @classmethod
    def from_rules(cls, rules) -> "RollupFacts":
        """From a compiled RuleSet (orion.rules.index)."""
        return cls(rules.activity_types)

    def numeric_attributes(self, tenant: str, type_: str) -> tuple[str, ...]:
        return self._numeric.get((tenant, type_), ())

    def _selective_of(self, tenant: str, type_: str) -> str | None:
        key = (tenant, type_)
        if key not in self._selective:
            found = self.types.lookup(tenant, type_)
            self._selective[key] = None if found is None else found.indexed_by
        return self._selective[key]

    def of(self, record) -> tuple[tuple, str, dict | None] | None:
        """The fact of one record, at minute granularity: (its minute row's key, as a
        plain tuple of RollupKey's fields, the lead id, the sums or None); None for what
        is not rolled up. (A plain tuple hashes and compares as the RollupKey of the same
        fields: what keeps rows builds a RollupKey once per row, not once per record.)"""
        if record.__class__ is Activity:
            return self._activity(record)
        kind = type(record).__name__
        if kind == "Outcome":
            source = FLOW_SOURCE if record.event_id.startswith(FLOW_EVENT_PREFIX) else INPUT_SOURCE
            qualified = record.qualified
            at = record.occurred_at
            key = (record.tenant, MINUTE, at - at % MINUTE_MS, OUTCOME, "", source, "",
                   dimension_value(record.campaign), QUALIFIED if qualified else NOT_QUALIFIED,
                   "" if qualified else dimension_value(record.reason or "unknown"))
            return key, record.lead_id, None
        if kind == "AssembledEmail":
            key = (record.tenant, MINUTE, bucket_start(record.requested_at, MINUTE), FLOW, "", "",
                   dimension_value(record.template), dimension_value(record.campaign), EMAIL_QUEUED, "")
            return key, record.lead_id, None
        if kind == "HeldEmail":
            request = record.request
            key = (request.tenant, MINUTE, bucket_start(request.requested_at, MINUTE), FLOW, "", "",
                   dimension_value(request.template), dimension_value(request.campaign), EMAIL_HELD,
                   dimension_value(record.reason))
            return key, request.lead_id, None
        if kind == "WebhookCall":
            key = (record.tenant, MINUTE, bucket_start(record.requested_at, MINUTE), FLOW, "", "",
                   dimension_value(record.name), dimension_value(record.campaign), WEBHOOK_QUEUED, "")
            return key, record.lead_id, None
        if isinstance(record, Activity):
            return self._activity(record)
        return None

    def _type_facts(self, tenant: str, type_: str) -> tuple:
        """(selective attribute, numeric attributes, the type as a dimension, the function
        that makes a string value of the selective attribute a dimension) of a type."""
        key = (tenant, type_)
        found = self._types.get(key)
        if found is None:
            selective = self._selective_of(tenant, type_)
            found = self._types[key] = (selective, self._numeric.get(key), dimension_value(type_),
                                        url_dimension if selective == "url" else dimension_value)
        return found

    def _activity(self, activity: Activity):
        event_id, tenant, lead_id, type_name, at, attributes = activity  # one unpacking, no attribute look-ups
        found = self._types.get((tenant, type_name))
        if found is None:
            found = self._type_facts(tenant, type_name)
        selective, numbers, type_, dimension = found
        value = "" if selective is None else attributes.get(selective)
        if value.__class__ is not str:
            if value is None or isinstance(value, (dict, list)):
                value = ""
            else:
                value = dimension(value) if isinstance(value, str) else dimension_value(json.dumps(value))
        elif value:
            value = dimension(value)
        sums = None
        if numbers:
            sums = {}
            for name in numbers:
                number = attributes.get(name)
                if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
                    sums[name] = number
        # (the first character first: a method call for every id costs more than the rest of the key)
        flow = event_id[0] == "f" and event_id.startswith(FLOW_EVENT_PREFIX)
        return ((tenant, MINUTE, at - at % MINUTE_MS, ACTIVITY, type_, FLOW_SOURCE if flow else INPUT_SOURCE, value,
                 "", "", ""), lead_id, sums)


class RowParts(dict):
    """{RollupKey: Aggregate}: rows being merged (a bundle's, a tenant-day's). Pickled as
    columns (the keys' fields, the counts, the sketches' compact bytes, their estimates,
    the sums), plain lists of str, int, float and bytes that the C pickler writes in one
    go, instead of a key and an aggregate object per row; the estimate travels with the
    sketch, so a row written as it arrives never deserializes its sketch."""

    def merge(self, other: dict) -> "RowParts":
        """Merge `other`'s rows into these (its aggregates may be taken over)."""
        for key, aggregate in other.items():
            found = self.get(key)
            if found is None:
                self[key] = aggregate
            else:
                found.merge(aggregate)
        return self

    def __reduce__(self):
        aggregates = self.values()
        return RowParts.of_columns, ([tuple(key) for key in self], [a.records for a in aggregates],
                                     [a.sketch_bytes() for a in aggregates], [a.estimate() for a in aggregates],
                                     [a.sums or None for a in aggregates])

    @classmethod
    def of_columns(cls, keys, records, sketches, estimates, sums) -> "RowParts":
        parts = cls()
        for fields, count, compact, estimate, summed in zip(keys, records, sketches, estimates, sums):
            aggregate = Aggregate(count, None, summed)
            aggregate._compact, aggregate._estimate = compact, estimate
            parts[_new_key(fields)] = aggregate
        return parts

    @classmethod
    def of_pairs(cls, pairs) -> "RowParts":
        """RowParts pickled by an earlier release: (key fields, encoded aggregate) pairs."""
        make, decode = RollupKey._make, Aggregate.decode
        return cls((make(fields), decode(data)) for fields, data in pairs)


class PartialRollups:
    """Facts merged in memory before they reach keyed state (a bundle's, in Beam): one
    Aggregate per minute row instead of one element per record."""

    def __init__(self, facts: RollupFacts):
        self.facts = facts
        self.parts: dict[RollupKey, Aggregate] = {}

    def add(self, record) -> bool:
        found = self.facts.of(record)
        if found is None:
            return False
        key, lead_id, sums = found
        part = self.parts.get(key)
        if part is None:
            part = self.parts[_new_key(key)] = Aggregate()
        part.add(lead_id, sums)
        return True

    def __len__(self) -> int:
        return len(self.parts)

    def drain(self) -> list[tuple[RollupKey, Aggregate]]:
        parts, self.parts = self.parts, {}
        return list(parts.items())


# --- rows out: the per-row state both engines keep ------------------------------------


class RollupRow(NamedTuple):
    """One row as the store keeps it: written whole; the highest version of a (key,
    writer) wins."""

    key: RollupKey
    writer: str
    version: int
    aggregate: Aggregate


class BucketState(NamedTuple):
    """What an engine keeps per row key: the writer id of this state, the version last
    written, the running total and what was merged since the last write (`pending`,
    to pass on to the coarser bucket)."""

    writer: str
    version: int
    total: Aggregate
    pending: Aggregate | None


# Writer ids: 64 random bits, from a generator seeded from the OS (again in a forked
# child, so no two processes share a sequence). A new streaming row takes one; uuid4 cost
# a system call each.
_writer_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _writer_ids.seed(os.urandom(32)))


def new_writer() -> str:
    """A new writer id: 16 hex digits."""
    return f"{_writer_ids.getrandbits(64):016x}"


def add_to_bucket(state: BucketState | None, partial: Aggregate,
                  writer: Callable[[], str] = new_writer) -> BucketState:
    """Merge a partial aggregate into a row's state (a new state, with a new writer id,
    when there is none)."""
    if state is None:
        return BucketState(writer(), 0, partial.copy(), partial.copy())
    state.total.merge(partial)
    if state.pending is None:
        return state._replace(pending=partial.copy())
    state.pending.merge(partial)
    return state


def flush_bucket(key: RollupKey, state: BucketState) -> tuple[BucketState, RollupRow | None,
                                                                tuple[RollupKey, Aggregate] | None]:
    """Write a row whose state changed: (the new state, the row to upsert, what the
    coarser bucket gains: (its key, the partial) or None for a day). Nothing to write
    when nothing was merged since the last flush."""
    if state.pending is None:
        return state, None, None
    version = state.version + 1
    row = RollupRow(key, state.writer, version, state.total.copy())
    coarser = key.coarser()
    passed_on = None if coarser is None else (coarser, state.pending)
    return BucketState(state.writer, version, state.total, None), row, passed_on


_STATE_HEADER = struct.Struct(">BqII")  # format, version, length of the writer, length of the total


def encode_state(state: BucketState) -> bytes:
    """A BucketState as versioned bytes (Beam's and Flink's keyed state: no pickle)."""
    writer = state.writer.encode("ascii")
    total = state.total.encode()
    pending = b"" if state.pending is None else state.pending.encode()
    return _STATE_HEADER.pack(_FORMAT, state.version, len(writer), len(total)) + writer + total + pending


def decode_state(data: bytes) -> BucketState:
    fmt, version, writer_length, total_length = _STATE_HEADER.unpack_from(data)
    if fmt != _FORMAT:
        raise ValueError(f"roll-up state format {fmt} is newer than this Orion reads ({_FORMAT})")
    start = _STATE_HEADER.size
    writer = bytes(data[start:start + writer_length]).decode("ascii")
    start += writer_length
    total = Aggregate.decode(bytes(data[start:start + total_length]))
    rest = bytes(data[start + total_length:])
    return BucketState(writer, version, total, Aggregate.decode(rest) if rest else None)


def expires_at(key: RollupKey, allowed_lateness_ms: int, grace_ms: int) -> int:
    """When (event time) a row's state may be dropped: its bucket's end plus the allowed
    lateness and a grace period. Whatever arrives later starts a new state, with a new
    writer id, so it adds a row instead of overwriting one."""
    return key.bucket + GRANULARITY_MS[key.granularity] + allowed_lateness_ms + grace_ms
