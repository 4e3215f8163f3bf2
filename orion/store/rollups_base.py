"""The roll-up store: the rows `orion.analytics.rollup` builds, kept behind the same URIs
as the activity store (its tables beside the activity tables), and read back by tenant,
granularity and time range for the query engine.

    sqlite:///PATH                         tables `rollups`, `rollup_segments` in the same file
    mysql://USER:PASSWORD@HOST:PORT/DB     tables `rollups`, `rollup_segments` in the same database
    bigtable://PROJECT/INSTANCE/TABLE      table TABLE-rollups, keyed TENANT#GRANULARITY#TIME#...

A row is identified by its RollupKey and its writer id, and carries a version: `write`
upserts it, replacing a stored row of the same key and writer only with a higher
version. So a replayed write changes nothing, a late activity's new version of its
minute replaces the old one, and an older version that arrives after a newer one (two
bundles of a sink racing) is ignored. Rows of different writers are kept side by side;
the query engine merges them.

A bounded run stores its rows as segments instead (orion.analytics.segments: one per
tenant-day and granularity, holding all its rows; `write_segments`), upserted the same
way by (tenant, granularity, day, writer, part) and version. `read`, `scan` and `count`
take rows and segments' rows alike; a backend provides the per-row reads
(`_read_rows`, `_scan_rows`) and the segments of a range (`_segments`).

`orion store init URI` creates the roll-up tables with the others (`init` is safe to
rerun). Every backend passes the same contract (tests/test_analytics_store.py).

    python -c "from orion.store.rollups_opening import open_rollup_store; print(open_rollup_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

import abc
import json
from itertools import islice
from operator import itemgetter, le
from typing import Iterable, NamedTuple, Sequence

from orion.analytics.rollup import DIMENSIONS, RollupKey, RollupRow
from orion.analytics.segments import (
    COLUMN, SEGMENT_SPAN, RollupSegment, decode_rows, scan_segments, sketch_bytes_of,
)

ROLLUP_URI_FORMS = (
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
    "bigtable://PROJECT/INSTANCE/TABLE",
    "mysql://USER:PASSWORD@HOST:PORT/DATABASE",
)
KEY_COLUMNS = ("tenant", "granularity", "bucket", "kind") + DIMENSIONS + ("writer",)


class RollupWrite(NamedTuple):
    """What a `write` did: how many rows it upserted (a row a higher stored version kept
    counts as written), and the rows the store refused, each with what went wrong."""

    written: int
    refused: list  # of (RollupRow, detail)


class StoredRollup(NamedTuple):
    """One stored row: its key and writer, the version written, and its metrics:
    `records`, the estimated distinct `leads`, the serialized `sketch` (b"" when the
    read did not ask for sketches) and `sums`."""

    key: RollupKey
    writer: str
    version: int
    records: int
    leads: float
    sketch: bytes
    sums: dict


def latest_rows(rows: Iterable[RollupRow], ordered: bool = False) -> list[RollupRow]:
    """One row per (key, writer): the highest version; `ordered`: sorted by key, so
    concurrent writers of a store with row locks take them in one order."""
    latest: dict[tuple, RollupRow] = {}
    for row in rows:
        ident = (row.key, row.writer)
        found = latest.get(ident)
        if found is None or row.version > found.version:
            latest[ident] = row
    return [latest[ident] for ident in sorted(latest)] if ordered else list(latest.values())


def row_element(row: RollupRow) -> dict:
    """A row as the dead letter of a refused write shows it."""
    return {"key": row.key._asdict(), "writer": row.writer, "version": row.version,
            "records": row.aggregate.records, "sums": row.aggregate.sums}


def segment_elements(segment: RollupSegment) -> list[dict]:
    """The rows of a refused segment as their dead letters show them (row_element)."""
    return [{"key": RollupKey(segment.tenant, segment.granularity, *row[:_RECORDS])._asdict(),
             "writer": segment.writer, "version": segment.version, "records": row[_RECORDS], "sums": row[_SUMS]}
            for row in decode_rows(segment.data)]


_RECORDS, _SUMS = COLUMN["records"], COLUMN["sums"]


def segment_start(start: int) -> int:
    """The earliest bucket (day) a segment holding some of a range from `start` on may
    have."""
    return start - SEGMENT_SPAN + 1


def sums_json(row: RollupRow) -> str:
    return json.dumps(row.aggregate.sums, separators=(",", ":"), sort_keys=True) if row.aggregate.sums else ""


def parse_sums(text) -> dict:
    if not text:
        return {}
    return json.loads(text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else text)


class RollupStore(abc.ABC):
    """Roll-up rows by (tenant, granularity, bucket, kind, dimensions, writer)."""

    uri: str

    @abc.abstractmethod
    def init(self) -> None:
        """Create the roll-up tables; safe to run on an initialized store."""

    @abc.abstractmethod
    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
        """Upsert rows (see the module doc), the highest version of each key and writer
        given; a row the store cannot hold (ids that are no UTF-8 text, too long for its
        columns) is refused, the others written. Transient errors are retried with
        backoff; a store that cannot be reached raises StoreError."""

    @abc.abstractmethod
    def write_segments(self, segments: Sequence[RollupSegment]) -> RollupWrite:
        """Upsert segments (orion.analytics.segments) as `write` upserts rows: a stored
        segment of the same (tenant, granularity, bucket, writer, part) is replaced only
        by a higher version. `written` counts segments; `refused` holds (segment,
        detail)."""

    @abc.abstractmethod
    def _read_rows(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None,
                   where: dict[str, str], sketches: bool) -> list[StoredRollup]:
        """`read` of the per-row layout alone."""

    @abc.abstractmethod
    def _segments(self, tenant: str, granularity: str, start: int, end: int) -> list[tuple[str, int, bytes]]:
        """(writer, version, data) of the stored segments (parts) of `tenant` with rows of
        `granularity` whose buckets overlap [start, end) (first <= end - 1, last >= start),
        ordered by bucket."""

    def read(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None = None,
             where: dict[str, str] | None = None, sketches: bool = True) -> list[StoredRollup]:
        """The rows of `tenant` at `granularity` whose bucket starts in [start, end), of
        `kind` (None: every kind) and with the dimension values of `where`, ordered by
        bucket: stored one by one or in segments. `sketches=False` leaves the sketches
        out (b"") when only counts, sums and single-row estimates are needed."""
        where = check_where(where)
        rows = self._read_rows(tenant, granularity, start, end, kind=kind, where=where, sketches=sketches)
        segments = self._segments(tenant, granularity, start, end)
        if not segments:
            return rows
        columns = ("bucket", "kind") + DIMENSIONS + ("writer", "version", "records", "leads", "sums") + (
            ("sketch",) if sketches else ())
        for found in scan_segments(segments, start, end, columns, kind, where):
            rows.append(StoredRollup(RollupKey(tenant, granularity, *found[:8]), *found[8:12],
                                     sketch_bytes_of(found[13]) if sketches else b"", found[12]))
        rows.sort(key=lambda row: row.key.bucket)
        return rows

    def scan(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
             kind: str | None = None, where: dict[str, str] | None = None, order: Sequence[str] = ()
             ) -> list[tuple]:
        """What `read` reads, as plain tuples of `columns` (SCAN_COLUMNS), ordered by
        bucket, then by the dimensions named in `order`: the query engine's fast path,
        which builds no object per row. A `sketch` of a segment's row of a few leads is
        their LeadIds (orion.analytics.rollup.merged_estimate takes both)."""
        check_columns(columns)
        check_order(order)
        where = check_where(where)
        segments = self._segments(tenant, granularity, start, end)
        if not segments:
            return self._scan_rows(tenant, granularity, start, end, columns, kind=kind, where=where, order=order)
        # The columns that order the rows, picked too when not asked for, and dropped after.
        ordering = ("bucket", *order)
        picked = tuple(columns) + tuple(name for name in ordering if name not in columns)
        found = self._scan_rows(tenant, granularity, start, end, picked, kind=kind, where=where, order=order)
        found += scan_segments(segments, start, end, picked, kind, where)
        _sort_unless_sorted(found, [picked.index(name) for name in ordering])
        return found if picked == tuple(columns) else [row[:len(columns)] for row in found]

    def _scan_rows(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
                   kind: str | None, where: dict[str, str], order: Sequence[str]) -> list[tuple]:
        """`scan` of the per-row layout alone. A SQL store selects only those columns; this
        one reads whole rows and picks them."""
        rows = self._read_rows(tenant, granularity, start, end, kind=kind, where=where, sketches="sketch" in columns)
        if order:
            rows.sort(key=lambda row: (row.key.bucket, *(getattr(row.key, name) for name in order)))
        pickers = [_PICKERS[name] for name in columns]
        return [tuple(pick(row) for pick in pickers) for row in rows]

    def count(self) -> int:
        """How many roll-up rows the store holds, one by one and in segments."""
        return self._count_rows() + self._count_segment_rows()

    @abc.abstractmethod
    def _count_rows(self) -> int:
        """How many rows the per-row layout holds."""

    @abc.abstractmethod
    def _count_segment_rows(self) -> int:
        """How many rows the stored segments hold (their `rows`)."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "RollupStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


SCAN_COLUMNS = ("bucket", "kind") + DIMENSIONS + ("writer", "records", "leads", "sketch", "sums")
_PICKERS = {
    "bucket": lambda row: row.key.bucket, "kind": lambda row: row.key.kind,
    **{name: (lambda row, name=name: getattr(row.key, name)) for name in DIMENSIONS},
    "writer": lambda row: row.writer, "records": lambda row: row.records, "leads": lambda row: row.leads,
    "sketch": lambda row: row.sketch, "sums": lambda row: row.sums,
}


def _sort_unless_sorted(rows: list[tuple], positions: list[int]) -> None:
    """Sort rows by the values at `positions`, in place, unless they are in that order
    already (checked in C: segments are written in key order, so most scans are)."""
    keys = list(zip(*(map(itemgetter(at), rows) for at in positions))) if len(positions) > 1 else \
        list(map(itemgetter(positions[0]), rows))
    if all(map(le, keys, islice(keys, 1, None))):
        return
    rows.sort(key=itemgetter(*positions))


def check_columns(columns: Sequence[str]) -> None:
    unknown = [name for name in columns if name not in SCAN_COLUMNS]
    if unknown:
        raise ValueError(f"unknown roll-up column(s) {', '.join(unknown)}; the columns are {', '.join(SCAN_COLUMNS)}")


def check_order(order: Sequence[str]) -> None:
    unknown = [name for name in order if name not in DIMENSIONS]
    if unknown:
        raise ValueError(f"cannot order by {', '.join(unknown)}; the dimensions are {', '.join(DIMENSIONS)}")


def check_where(where: dict[str, str] | None) -> dict[str, str]:
    """`where` with only known dimension names (ValueError naming them otherwise)."""
    where = dict(where or {})
    unknown = sorted(set(where) - set(DIMENSIONS))
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(unknown)}; the dimensions are {', '.join(DIMENSIONS)}")
    return where
