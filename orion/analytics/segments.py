"""Roll-up segments: how a bounded run (files) stores its roll-ups, as Druid's batch
ingestion publishes segments (segment granularity a day, rows by minute). For each
tenant-day the run writes three segments: its minute rows, its hour rows and its day
row(s), instead of a stored row per roll-up row. The per-row layout
(orion.store.rollups_base) stays for streaming runs, whose rows change while they are
open; queries read both and merge them.

A segment's rows are the rows the per-row layout would hold (orion.analytics.rollup:
the same keys, records and sums), all under the segment's writer (the run's) and
version. Its unique leads:
- a row of at most SMALL_LEADS distinct leads keeps their ids (`LeadIds`): the ids that
  a HyperLogLog sketch in its exact list mode would hash. A query that merges the row
  feeds them to its union, so the result is the one the row's own sketch would give. Its
  estimate is that sketch's estimate for so many leads (`small_estimate`);
- a larger row keeps its Apache DataSketches sketch (compact form) and its estimate.

So a run builds no sketch for the many rows of a few leads (most minutes of most
tenants), and writes three stored rows a tenant-day where the per-row layout wrote
hundreds: what the roll-ups cost is counting, not storing.

A segment holds at most MAX_SEGMENT_ROWS rows; a larger one is split into parts (0, 1,
...), each a range of buckets (`first` to `last`), stored on its own, so a query reads
the parts that hold its range. Its data is versioned bytes of columns (encode_columns):
a query parses only the columns it needs, each in C, and picks and zips its rows in C
(no step per row and field in Python).
Rows are in bucket order. A retried write of a run's segment holds the same
rows, so it changes no answer.

    python -c "from orion.analytics.segments import *; print(small_estimate(3))"
"""
from __future__ import annotations

import base64
import functools
import struct
from bisect import bisect_left
from itertools import compress, repeat
from operator import and_, itemgetter
from typing import Iterable, NamedTuple, Sequence

import orjson

from orion.activities import Activity
from orion.analytics.rollup import (
    ACTIVITY, DAY, DIMENSIONS, GRANULARITY_MS, HOUR, LG_K, MINUTE, LeadIds, RollupFacts, _ds,
)

SMALL_LEADS = 8  # a row of at most this many distinct leads keeps their ids, not a sketch
MAX_SEGMENT_ROWS = 20_000  # rows per stored part of a segment
SEGMENT_SPAN = GRANULARITY_MS[DAY]  # every segment holds rows of one tenant-day
SEGMENT_MAGIC = b"ORS"
_FORMAT = 1
_DAY_MS = GRANULARITY_MS[DAY]


class RollupSegment(NamedTuple):
    """One stored segment: (tenant, granularity of its rows, bucket: the start of the day
    it spans, writer, part) identify it; a write replaces it only with a higher version.
    `rows`: how many roll-up rows its data holds; `first` and `last`: its rows' first and
    last bucket (a query reads only the parts that hold some of its range)."""

    tenant: str
    granularity: str
    bucket: int
    writer: str
    part: int
    version: int
    rows: int
    first: int
    last: int
    data: bytes


@functools.lru_cache(maxsize=None)
def small_estimate(leads: int) -> float:
    """What a DataSketches HLL sketch (lg_k LG_K) estimates for `leads` distinct leads in
    its list mode: a function of the count alone, taken from a sketch of so many ids."""
    sketch = _ds.hll_sketch(LG_K, _ds.HLL_4)
    for n in range(leads):
        sketch.update(f"orion-small-estimate-{n}")
    return sketch.get_estimate()


_ONE = None  # small_estimate(1), set when DataSketches is first needed (segments_of_day)


def sketch_of(leads: Iterable[str]):
    """The HLL sketch of lead ids (what the row's sketch would be)."""
    sketch = _ds.hll_sketch(LG_K, _ds.HLL_4)
    for lead in leads:
        sketch.update(lead)
    return sketch


def sketch_bytes_of(value) -> bytes:
    """A scanned `sketch` value as sketch bytes: LeadIds become the sketch they stand for."""
    if isinstance(value, LeadIds):
        return sketch_of(value).serialize_compact() if value else b""
    return value


# --- building: a bounded run's records -> its tenant-days' segments ------------------------


class MinuteParts(dict):
    """{minute key (a plain tuple of RollupKey's fields): its part}: a bundle's minute rows
    of one tenant-day, or a tenant-day's, merged. A part is the lead id of a row of one
    record without sums (most rows: no container for the garbage collector to follow),
    else [records, set of lead ids, sums or None]. No sketch is built here (see the
    module doc)."""

    def merge(self, other) -> "MinuteParts":
        """Add another's rows (a dict or Rows) to these."""
        for key, part in pairs(other):
            found = self.get(key)
            self[key] = part if found is None else _merged(found, part)
        return self


class Rows(NamedTuple):
    """A level's rows as two lists, their keys and their parts: how MinuteParts cross
    between steps (MinutePartsCoder), so that no dict is built again from them unless
    two bundles' parts must be merged."""

    keys: list
    parts: list


def pairs(rows):
    """(key, part) of each row of a dict or of Rows."""
    return rows.items() if isinstance(rows, dict) else zip(rows.keys, rows.parts)


def _merged(found, part, copy: bool = False) -> list:
    """Part `part` added to part `found` (see MinuteParts): a list, `found` itself when it
    is one, but a copy when `copy` (`found` is another row's)."""
    if found.__class__ is str:
        found = [1, {found}, None]
    elif copy:
        found = [found[0], set(found[1]), dict(found[2]) if found[2] else None]
    if part.__class__ is str:
        found[0] += 1
        found[1].add(part)
        return found
    records, leads, sums = part
    found[0] += records
    found[1] |= leads
    if sums:
        found[2] = _added(found[2], sums)
    return found


def _added(mine: dict | None, sums: dict) -> dict:
    if mine is None:
        return dict(sums)
    for name, value in sums.items():
        mine[name] = mine.get(name, 0) + value
    return mine


class DayParts:
    """A bundle's records -> {(tenant, day start): MinuteParts}: each record's minute row
    (RollupFacts), merged in memory."""

    def __init__(self, facts: RollupFacts):
        self.of = facts.of
        self.activity = facts._activity  # what most records are: no dispatch
        self.days: dict[tuple[str, int], MinuteParts] = {}

    def add(self, record) -> bool:
        found = self.activity(record) if record.__class__ is Activity else self.of(record)
        if found is None:
            return False
        key, lead, sums = found
        bucket = key[2]
        day = (key[0], bucket - bucket % _DAY_MS)
        parts = self.days.get(day)
        if parts is None:
            parts = self.days[day] = MinuteParts()
        part = parts.get(key)
        if part is None:
            parts[key] = [1, {lead}, dict(sums)] if sums else lead
        else:
            parts[key] = _merged(part, [1, {lead}, sums] if sums else lead)
        return True

    def drain(self) -> list[tuple[tuple[str, int], MinuteParts]]:
        days, self.days = self.days, {}
        return list(days.items())


def coarser_rows(level, granularity: str) -> dict:
    """Rows of one granularity -> the rows of the next coarser one they add to (a minute's
    hour, an hour's day), by every dimension but an activity's attribute (MINUTE_ONLY).
    A coarser row of one finer row is that row's part until a second one is added."""
    size = GRANULARITY_MS[granularity]
    coarser: dict = {}
    shared: set = set()  # coarser keys whose part is still a finer row's
    keys, parts = (level.keys(), level.values()) if isinstance(level, dict) else level
    # Each row's coarser key, in one comprehension (no step of the loop below per field).
    ups = [(tenant, granularity, bucket - bucket % size, kind, type_, source, "" if kind == ACTIVITY else attribute,
            campaign, status, reason)
           for tenant, _, bucket, kind, type_, source, attribute, campaign, status, reason in keys]
    get = coarser.get
    for up, part in zip(ups, parts):
        found = get(up)
        if found is None:
            coarser[up] = part
            if part.__class__ is not str:
                shared.add(up)
        elif up in shared:
            coarser[up] = _merged(found, part, copy=True)
            shared.discard(up)
        else:
            coarser[up] = _merged(found, part)
    return coarser


def day_levels(minutes) -> dict:
    """A tenant-day's minute rows (a dict or Rows) -> {granularity: its rows}: the minutes,
    the hours built from them and the day built from the hours."""
    hours = coarser_rows(minutes, HOUR)
    return {MINUTE: minutes, HOUR: hours, DAY: coarser_rows(hours, DAY)}


def _metric_columns(parts: list) -> tuple[list, list, list | None, list]:
    """Parts -> their (records, leads, sums or None when no part has any, lead ids or
    sketch) columns: a row of at most SMALL_LEADS leads keeps their ids (sorted), a larger
    one its sketch (compact, base64) and its estimate. Rows of one record (most) take no
    Python step of their own."""
    records = [1 if part.__class__ is str else part[0] for part in parts]
    leads = [_ONE] * len(parts)
    sketches = [[part] if part.__class__ is str else None for part in parts]
    sums = None
    for at in [at for at, part in enumerate(parts) if part.__class__ is not str]:
        _, members, summed = parts[at]
        if summed:
            if sums is None:
                sums = [None] * len(parts)
            sums[at] = summed
        if len(members) <= SMALL_LEADS:
            leads[at] = small_estimate(len(members))
            sketches[at] = sorted(members)
        else:
            built = sketch_of(sorted(members))  # in one order: the same leads give the same bytes
            leads[at] = built.get_estimate()
            sketches[at] = base64.b64encode(built.serialize_compact()).decode("ascii")
    return records, leads, sums, sketches


_BUCKET_OF = itemgetter(2)


def segments_of_day(levels: dict, writer: str, version: int = 1,
                    max_rows: int = MAX_SEGMENT_ROWS) -> list[RollupSegment]:
    """A tenant-day's rows ({granularity: a dict or Rows}, as day_levels gives them) ->
    its segments: its minutes, its hours, its day; each split into parts of at most
    `max_rows` rows, each part a range of buckets."""
    global _ONE
    if _ONE is None:
        _ONE = small_estimate(1)
    segments = []
    for granularity, rows in levels.items():
        keys, parts = (list(rows), list(rows.values())) if isinstance(rows, dict) else rows
        if not keys:
            continue
        # In bucket order (a part is a range of buckets); within a bucket as they came.
        buckets = list(map(_BUCKET_OF, keys))
        order = sorted(range(len(keys)), key=buckets.__getitem__)
        keys = list(map(keys.__getitem__, order))
        key_columns = list(zip(*keys))[2:]  # bucket, kind and the dimensions (tenant and granularity are one)
        metrics = _metric_columns(list(map(parts.__getitem__, order)))
        buckets = key_columns[0]
        day = buckets[0] - buckets[0] % _DAY_MS
        if buckets[-1] >= day + _DAY_MS:
            raise ValueError(f"the {granularity} rows given span more than one day")
        for part_number, first in enumerate(range(0, len(keys), max_rows)):
            last = min(first + max_rows, len(keys))
            if first == 0 and last == len(keys):
                columns, values = key_columns, metrics  # one part: no copies
            else:
                columns = [column[first:last] for column in key_columns]
                values = [None if column is None else column[first:last] for column in metrics]
            segments.append(RollupSegment(keys[0][0], granularity, day, writer, part_number, version, last - first,
                                          buckets[first], buckets[last - 1], encode_columns(columns, values)))
    return segments


# --- stored bytes: columns ------------------------------------------------------------------


class SegmentColumns:
    """A segment's data, each column parsed when first asked for (a query parses the few
    it needs: no object per row and field it does not use). Raises ValueError for bytes
    that are no segment."""

    def __init__(self, data: bytes):
        head = len(SEGMENT_MAGIC)
        view = memoryview(data)
        if bytes(view[:head]) != SEGMENT_MAGIC or len(view) < head + 2:
            raise ValueError("not a roll-up segment")
        if view[head] != _FORMAT:
            raise ValueError(f"roll-up segment format {view[head]} is newer than this Orion reads ({_FORMAT})")
        count = view[head + 1]
        at = head + 2 + 4 * count
        if count != len(COLUMNS) or len(view) < at:
            raise ValueError("a damaged roll-up segment: its column table is cut short")
        self._spans = {}
        for name, length in zip(COLUMNS, struct.unpack_from(f"<{count}I", view, head + 2)):
            self._spans[name] = (at, at + length)
            at += length
        if at != len(view):
            raise ValueError("a damaged roll-up segment: its columns do not add up to its length")
        self._view = view
        self._found: dict = {}
        self.rows = len(self.column("bucket"))

    def column(self, name: str) -> list:
        """One value per row: bucket, kind and the dimensions (text), records, leads, sums
        (a dict, {} for none), sketch (LeadIds or sketch bytes)."""
        found = self._found.get(name)
        if found is not None:
            return found
        start, end = self._spans[name]
        try:
            found = orjson.loads(self._view[start:end])
        except orjson.JSONDecodeError as err:
            raise ValueError(f"a damaged roll-up segment: column {name}: {err}") from None
        if name == "sums":
            found = [{}] * self.rows if found is None else [sums or {} for sums in found]
        elif name == "sketch":
            found = [LeadIds(value) if value.__class__ is list else base64.b64decode(value) for value in found]
        if not isinstance(found, list) or ("bucket" in self._found and len(found) != self.rows):
            raise ValueError(f"a damaged roll-up segment: column {name} is not one value per row")
        self._found[name] = found
        return found

    def rows_of(self) -> list[tuple]:
        """Every row whole, as a tuple of COLUMNS."""
        return list(zip(*(self.column(name) for name in COLUMNS)))


COLUMNS = ("bucket", "kind") + DIMENSIONS + ("records", "leads", "sums", "sketch")
COLUMN = {name: i for i, name in enumerate(COLUMNS)}


def encode_columns(keys: list, metrics: list) -> bytes:
    """A segment's rows as columns -> its bytes. `keys`: the bucket, kind and dimension
    columns; `metrics`: the records, leads, sums (or None) and lead ids or sketch columns
    (_metric_columns), in the order of COLUMNS. The bytes: SEGMENT_MAGIC, the format, the
    number of columns, each column's length (32 bits, little-endian), then the columns,
    each a JSON list of one value per row (sums: null when no row has any; sketch: a
    row's lead ids, a list, or its sketch, base64)."""
    blobs = list(map(orjson.dumps, (*keys, *metrics)))
    return (SEGMENT_MAGIC + bytes((_FORMAT, len(blobs))) + struct.pack(f"<{len(blobs)}I", *map(len, blobs))
            + b"".join(blobs))


def scan_segments(segments: Iterable[tuple[str, int, bytes]], start: int, end: int, columns: Sequence[str],
                  kind: str | None, where: dict[str, str]) -> list[tuple]:
    """Tuples of `columns` (COLUMNS and "writer", "version") of the rows of (writer,
    version, data) segments whose bucket is in [start, end), of `kind` and with the
    dimension values of `where`: each column decoded whole, the rows picked and zipped in
    C, never a Python step per row and column."""
    conditions = ([("kind", kind)] if kind is not None else []) + sorted(where.items())
    found: list = []
    for writer, version, data in segments:
        segment = SegmentColumns(data)
        buckets = segment.column("bucket")  # in bucket order
        low, high = bisect_left(buckets, start), bisect_left(buckets, end)
        if low >= high:
            continue
        selected = None
        for name, value in conditions:
            values = segment.column(name)[low:high]
            having = values.count(value)
            if not having:
                selected = ()
                break
            if having == len(values):
                continue  # every row has it (a segment's rows are mostly of one kind)
            matches = map(value.__eq__, values)
            selected = list(matches if selected is None else map(and_, selected, matches))
        if selected == ():
            continue
        picked = []
        for name in columns:
            if name == "writer":
                picked.append(repeat(writer, high - low))
            elif name == "version":
                picked.append(repeat(version, high - low))
            else:
                picked.append(segment.column(name)[low:high])
        rows = zip(*picked)
        found += rows if selected is None else compress(rows, selected)
    return found


def decode_rows(data: bytes) -> list[tuple]:
    """A segment's rows, whole (tuples of COLUMNS); ValueError for data that is no segment."""
    return SegmentColumns(data).rows_of()
