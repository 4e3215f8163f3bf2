"""The roll-up store: the rows `orion.analytics.rollup` builds, kept behind the same URIs
as the activity store (its tables beside the activity tables), and read back by tenant,
granularity and time range for the query engine.

    sqlite:///PATH                         table `rollups` in the same file
    mysql://USER:PASSWORD@HOST:PORT/DB     table `rollups` in the same database
    bigtable://PROJECT/INSTANCE/TABLE      table TABLE-rollups, keyed TENANT#GRANULARITY#TIME#...

A row is identified by its RollupKey and its writer id, and carries a version: `write`
upserts it, replacing a stored row of the same key and writer only with a higher
version. So a replayed write changes nothing, a late activity's new version of its
minute replaces the old one, and an older version that arrives after a newer one (two
bundles of a sink racing) is ignored. Rows of different writers are kept side by side;
the query engine merges them.

`orion store init URI` creates the roll-up tables with the others (`init` is safe to
rerun). Every backend passes the same contract (tests/test_analytics_store.py).

    python -c "from orion.store.rollups_opening import open_rollup_store; print(open_rollup_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

import abc
import json
from typing import Iterable, NamedTuple, Sequence

from orion.analytics.rollup import DIMENSIONS, RollupKey, RollupRow

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
    def read(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None = None,
             where: dict[str, str] | None = None, sketches: bool = True) -> list[StoredRollup]:
        """The rows of `tenant` at `granularity` whose bucket starts in [start, end), of
        `kind` (None: every kind) and with the dimension values of `where`, ordered by
        bucket. `sketches=False` leaves the sketches out (b"") when only counts, sums
        and single-row estimates are needed."""

    def scan(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
             kind: str | None = None, where: dict[str, str] | None = None, order: Sequence[str] = ()
             ) -> list[tuple]:
        """What `read` reads, as plain tuples of `columns` (SCAN_COLUMNS), ordered by
        bucket, then by the dimensions named in `order`: the query engine's fast path,
        which builds no object per row. A SQL store selects only those columns; this one
        reads whole rows and picks them."""
        check_columns(columns)
        check_order(order)
        rows = self.read(tenant, granularity, start, end, kind=kind, where=where, sketches="sketch" in columns)
        if order:
            rows.sort(key=lambda row: (row.key.bucket, *(getattr(row.key, name) for name in order)))
        pickers = [_PICKERS[name] for name in columns]
        return [tuple(pick(row) for pick in pickers) for row in rows]

    @abc.abstractmethod
    def count(self) -> int:
        """How many roll-up rows the store holds."""

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
