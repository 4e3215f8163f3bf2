"""The roll-up store on Bigtable: table TABLE-rollups beside the activity store's
`bigtable://PROJECT/INSTANCE/TABLE` (on the emulator when BIGTABLE_EMULATOR_HOST is set),
through the activity store's client handling (orion.store.bigtable: raw MutateRows and
ReadRows, retries, backoff).

One row per roll-up row, keyed so that one tenant's time range at one granularity is one
contiguous, time-ordered key range (a query is one scan):

    TENANT#GRANULARITY#TIME#KIND#TYPE#SOURCE#ATTRIBUTE#CAMPAIGN#STATUS#REASON#WRITER

Every part is percent-encoded UTF-8 (orion.store.bigtable.encode_id: '#' only ever
separates); TIME is the bucket's start minus MIN_MS as 15 zero-padded digits (byte
order is time order from year 1 to 9999). Family "r" holds `records`, `leads` (the
estimate of distinct leads), `sketch` (HyperLogLog, DataSketches compact form), `sums`
(JSON, empty for none) and `version`, every cell written with the cell timestamp
version x 1 ms. Reads take the newest cell of each column, so the highest version
wins whatever order writes arrive in (an older version written later only adds an
older cell, which the family's one-version GC rule removes); a rewrite of the same
version sets the same cells. No salt: a tenant's roll-ups are aggregates, a few rows a
minute, and a time-ordered key is what makes a range query one scan.

A bounded run's segments (orion.analytics.segments) are rows of the same table, keyed

    TENANT#segment-GRANULARITY#DAY#WRITER#PART

(their own key range: no row scan meets them), cells `data`, `rows`, `first`, `last`
(the part's first and last bucket) and `version`, written as the rows' cells are. A
read takes the days its range touches and keeps the parts that hold some of it.

    BIGTABLE_EMULATOR_HOST=127.0.0.1:8086 orion store init bigtable://demo/local-dev/activities
"""
from __future__ import annotations

import json
from typing import Sequence

from orion.analytics.rollup import DIMENSIONS, RollupKey, RollupRow
from orion.store.base import MIN_MS, StoreError, with_backoff
from orion.store.bigtable import (
    SEPARATOR, TIME_DIGITS, BigtableStore, _close_client, _transient, decode_id, encode_id,
)
from orion.analytics.segments import RollupSegment
from orion.store.rollups_base import RollupStore, RollupWrite, StoredRollup, latest_rows, segment_start, sums_json

ROLLUP_FAMILY = "r"
ROLLUP_TABLE_SUFFIX = "-rollups"
_METRIC_COLUMNS = (b"records", b"leads", b"sums", b"version")


def time_part(bucket: int) -> str:
    return f"{bucket - MIN_MS:0{TIME_DIGITS}d}"


def range_prefix(tenant: str, granularity: str) -> str:
    return SEPARATOR.join((encode_id(tenant), granularity)) + SEPARATOR


SEGMENT_PREFIX = "segment-"  # a segment's key: TENANT#segment-GRANULARITY#TIME#WRITER#PART


def segment_range_prefix(tenant: str, granularity: str) -> str:
    return SEPARATOR.join((encode_id(tenant), SEGMENT_PREFIX + granularity)) + SEPARATOR


def segment_row_key(segment: RollupSegment) -> bytes:
    return (segment_range_prefix(segment.tenant, segment.granularity)
            + SEPARATOR.join((time_part(segment.bucket), encode_id(segment.writer), str(segment.part)))).encode("ascii")


def rollup_row_key(key: RollupKey, writer: str) -> bytes:
    """TENANT#GRANULARITY#TIME#KIND#dimensions...#WRITER, ASCII."""
    parts = [encode_id(key.tenant), key.granularity, time_part(key.bucket), key.kind]
    parts += [encode_id(getattr(key, name)) for name in DIMENSIONS]
    parts.append(encode_id(writer))
    return SEPARATOR.join(parts).encode("ascii")


def parse_rollup_row_key(row_key: bytes) -> tuple[RollupKey, str]:
    tenant, granularity, time_text, kind, *rest = row_key.decode("ascii").split(SEPARATOR)
    dimensions, writer = rest[:len(DIMENSIONS)], rest[len(DIMENSIONS)]
    key = RollupKey(decode_id(tenant), granularity, int(time_text) + MIN_MS, kind,
                    *(decode_id(value) for value in dimensions))
    return key, decode_id(writer)


def _is_segment_key(row_key: bytes) -> bool:
    return row_key.split(SEPARATOR.encode("ascii"), 2)[1].startswith(SEGMENT_PREFIX.encode("ascii"))


class BigtableRollupStore(RollupStore):
    """See the module docstring for the layout."""

    def __init__(self, uri: str):
        self.uri = uri
        # The activity store's clients, writes and reads, shared rather than copied.
        self._bigtable = BigtableStore(uri)
        self.table_id = self._bigtable.table_id + ROLLUP_TABLE_SUFFIX

    def init(self) -> None:
        from google.api_core import exceptions
        from google.cloud.bigtable import column_family

        client = self._bigtable._new_client(admin=True)
        try:
            table = client.instance(self._bigtable.instance_id).table(self.table_id)
            one_version = column_family.MaxVersionsGCRule(1)
            try:
                with_backoff(lambda: table.create(column_families={ROLLUP_FAMILY: one_version}), _transient)
            except exceptions.AlreadyExists:
                pass
        except exceptions.GoogleAPICallError as err:
            raise StoreError(f"cannot create the roll-up table of {self.uri}: {err}; the instance "
                             f"{self._bigtable.instance_id!r} must exist and the credentials need Bigtable "
                             "admin rights") from err
        finally:
            _close_client(client)

    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
        pending, refused = [], []
        for row in latest_rows(rows):
            try:
                row_key = rollup_row_key(row.key, row.writer)
                sums = sums_json(row).encode("utf-8")
            except (UnicodeEncodeError, ValueError) as err:
                refused.append((row, f"cannot be a Bigtable row key: {err}"))
                continue
            micros = row.version * 1000  # Bigtable keeps millisecond cell timestamps
            aggregate = row.aggregate
            cells = ((b"records", str(aggregate.records).encode("ascii"), micros),
                     (b"leads", repr(aggregate.estimate()).encode("ascii"), micros),
                     (b"sketch", aggregate.sketch_bytes(), micros),
                     (b"sums", sums, micros),
                     (b"version", str(row.version).encode("ascii"), micros))
            pending.append((row, row_key, cells))
        written, failed = self._bigtable._mutate(self.table_id, ROLLUP_FAMILY, pending)
        refused += [(failure.activity, failure.detail) for failure in failed]
        return RollupWrite(written, refused)

    def write_segments(self, segments: Sequence[RollupSegment]) -> RollupWrite:
        pending, refused = [], []
        for segment in segments:
            try:
                row_key = segment_row_key(segment)
            except (UnicodeEncodeError, ValueError) as err:
                refused.append((segment, f"cannot be a Bigtable row key: {err}"))
                continue
            micros = segment.version * 1000  # as rows: the newest cell is the highest version
            cells = ((b"data", segment.data, micros), (b"rows", str(segment.rows).encode("ascii"), micros),
                     (b"first", str(segment.first).encode("ascii"), micros),
                     (b"last", str(segment.last).encode("ascii"), micros),
                     (b"version", str(segment.version).encode("ascii"), micros))
            pending.append((segment, row_key, cells))
        written, failed = self._bigtable._mutate(self.table_id, ROLLUP_FAMILY, pending)
        refused += [(failure.activity, failure.detail) for failure in failed]
        return RollupWrite(written, refused)

    def _segments(self, tenant: str, granularity: str, start: int, end: int) -> list[tuple[str, int, bytes]]:
        from google.cloud.bigtable import row_filters

        prefix = segment_range_prefix(tenant, granularity)
        scan = ((prefix + time_part(segment_start(start))).encode("ascii"), (prefix + time_part(end)).encode("ascii"))
        found = []
        for row in self._bigtable._read(self.table_id, (scan,), row_filters.CellsColumnLimitFilter(1)):
            cells = row.cells[ROLLUP_FAMILY]
            first, last = int(cells[b"first"][0].value), int(cells[b"last"][0].value)
            if first < end and last >= start:  # (a day's parts are read whole, then kept or not)
                writer = decode_id(row.key.decode("ascii").split(SEPARATOR)[3])
                found.append((first, writer, int(cells[b"version"][0].value), cells[b"data"][0].value))
        found.sort(key=lambda segment: segment[0])
        return [segment[1:] for segment in found]

    def _read_rows(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None,
                   where: dict[str, str], sketches: bool) -> list[StoredRollup]:
        from google.cloud.bigtable import row_filters

        prefix = range_prefix(tenant, granularity)
        newest = row_filters.CellsColumnLimitFilter(1)
        if not sketches:
            wanted = b"^(" + b"|".join(_METRIC_COLUMNS) + b")$"
            newest = row_filters.RowFilterChain([row_filters.ColumnQualifierRegexFilter(wanted), newest])
        scan = ((prefix + time_part(start)).encode("ascii"), (prefix + time_part(end)).encode("ascii"))
        found = []
        for row in self._bigtable._read(self.table_id, (scan,), newest):
            key, writer = parse_rollup_row_key(row.key)
            if kind is not None and key.kind != kind:
                continue
            if any(getattr(key, name) != value for name, value in where.items()):
                continue
            cells = row.cells[ROLLUP_FAMILY]
            value = lambda name: cells[name][0].value if name in cells else b""  # noqa: E731
            sums = value(b"sums")
            found.append(StoredRollup(key, writer, int(value(b"version")), int(value(b"records")),
                                      float(value(b"leads")), value(b"sketch") if sketches else b"",
                                      json.loads(sums) if sums else {}))
        return found

    def _count_rows(self) -> int:
        from google.cloud.bigtable import row_filters

        keys_only = row_filters.RowFilterChain([row_filters.CellsRowLimitFilter(1),
                                                row_filters.StripValueTransformerFilter(True)])
        return sum(1 for row in self._bigtable._read(self.table_id, row_filter=keys_only)
                   if not _is_segment_key(row.key))

    def _count_segment_rows(self) -> int:
        from google.cloud.bigtable import row_filters

        rows_only = row_filters.RowFilterChain([row_filters.ColumnQualifierRegexFilter(b"^rows$"),
                                                row_filters.CellsColumnLimitFilter(1)])
        return sum(int(row.cells[ROLLUP_FAMILY][b"rows"][0].value)
                   for row in self._bigtable._read(self.table_id, row_filter=rows_only) if _is_segment_key(row.key))

    def close(self) -> None:
        self._bigtable.close()
