"""The embedded roll-up store: tables `rollups` and `rollup_segments` (a bounded run's
segments, orion.analytics.segments) in the activity store's SQLite file. `rollups`: one
row per (tenant, granularity, bucket, kind, dimensions, writer), its primary key
ordered so that one tenant's time range at one granularity is one contiguous range of
the table itself (WITHOUT ROWID: a write is one b-tree insert, a query one range scan;
most rows are small, a sketch of a few leads). A write is an upsert that replaces a row
only with a higher version (see orion.store.rollups_base); the estimate of distinct
leads is kept beside the sketch, so a query that merges nothing reads no sketch.
`rollup_segments`: one row per (tenant, granularity, day, writer, part), with the
part's first and last bucket, so a query reads only the parts that hold its range.

    orion store init sqlite:///orion-data/activities.db     # creates the roll-up tables too
"""
from __future__ import annotations

import sqlite3
import time
from typing import Sequence

from orion.analytics.rollup import DIMENSIONS, RollupKey, RollupRow
from orion.store.base import StoreError, with_backoff
from orion.analytics.segments import RollupSegment
from orion.store.rollups_base import (
    KEY_COLUMNS, RollupStore, RollupWrite, StoredRollup, latest_rows, parse_sums, segment_start, sums_json,
)
from orion.store.sqlite import check_tables, sqlite_path, unreadable_sqlite

_SCHEMA = (
    f"""
    CREATE TABLE IF NOT EXISTS rollups (
        tenant      TEXT    NOT NULL,
        granularity TEXT    NOT NULL,  -- minute, hour, day
        bucket      INTEGER NOT NULL,  -- epoch ms, the bucket's start
        kind        TEXT    NOT NULL,  -- activity, outcome, flow
        {' '.join(f"{name} TEXT NOT NULL," for name in DIMENSIONS)}
        writer      TEXT    NOT NULL,  -- the state that wrote it (orion.analytics.rollup)
        version     INTEGER NOT NULL,  -- a write replaces a row only with a higher one
        records     INTEGER NOT NULL,
        leads       REAL    NOT NULL,  -- the sketch's estimate of distinct leads
        sketch      BLOB    NOT NULL,  -- HyperLogLog, Apache DataSketches compact form
        sums        TEXT    NOT NULL,  -- JSON object of the declared numeric attributes; '' for none
        updated_at  INTEGER NOT NULL,  -- wall-clock epoch ms of the last write, for people only
        PRIMARY KEY ({', '.join(KEY_COLUMNS)})
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS rollup_segments (
        tenant      TEXT    NOT NULL,
        granularity TEXT    NOT NULL,  -- of its rows: minute, hour, day
        bucket      INTEGER NOT NULL,  -- epoch ms, the start of the day it spans
        writer      TEXT    NOT NULL,  -- the run that wrote it
        part        INTEGER NOT NULL,  -- 0, or the part of a segment split in parts
        version     INTEGER NOT NULL,  -- a write replaces a segment only with a higher one
        rows        INTEGER NOT NULL,  -- roll-up rows in its data
        first       INTEGER NOT NULL,  -- the first and last bucket of its rows
        last        INTEGER NOT NULL,
        data        BLOB    NOT NULL,  -- orion.analytics.segments
        updated_at  INTEGER NOT NULL,  -- wall-clock epoch ms of the last write, for people only
        PRIMARY KEY (tenant, granularity, bucket, writer, part)
    ) WITHOUT ROWID
    """,
)
SEGMENT_KEY_COLUMNS = ("tenant", "granularity", "bucket", "writer", "part")


def _upsert(table: str, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """An upsert into `table` that replaces a stored row of the same `keys` only with a
    higher version (every column of `values`, the version first, is replaced)."""
    columns = keys + values
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in values)
            + f" WHERE excluded.version > {table}.version")


_UPSERT = _upsert("rollups", KEY_COLUMNS, ("version", "records", "leads", "sketch", "sums", "updated_at"))
_SEGMENT_UPSERT = _upsert("rollup_segments", SEGMENT_KEY_COLUMNS,
                          ("version", "rows", "first", "last", "data", "updated_at"))
_READ_COLUMNS = ("tenant, granularity, bucket, kind, " + ", ".join(DIMENSIONS) +
                 ", writer, version, records, leads, {sketch}, sums")


# What a row's own values can raise (text that is not UTF-8, numbers out of range).
_ROW_REFUSED = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError, UnicodeEncodeError)


def _is_busy(err: Exception) -> bool:
    return isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err))


def row_values(row: RollupRow, now: int) -> tuple:
    key, writer, version, aggregate = row
    return (*key, writer, version, aggregate.records, aggregate.estimate(), aggregate.sketch_bytes(),
            sums_json(row) if aggregate.sums else "", now)


class SqliteRollupStore(RollupStore):
    def __init__(self, uri: str):
        self.uri = uri
        self.path = sqlite_path(uri)
        self._connection: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._connection is None:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                connection = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                # The activity store's settings: WAL, so readers (queries) never wait on the graph's writes.
                with_backoff(lambda: connection.execute("PRAGMA journal_mode=WAL"), _is_busy, attempts=10)
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise StoreError(f"cannot open SQLite store {self.path}: {err}") from err
            self._connection = connection
        return self._connection

    def init(self) -> None:
        try:
            for statement in _SCHEMA:
                with_backoff(lambda: self.connection.execute(statement), _is_busy)
            check_tables(self.connection, self.path, {"rollups": KEY_COLUMNS, "rollup_segments": SEGMENT_KEY_COLUMNS})
        except sqlite3.DatabaseError as err:
            raise unreadable_sqlite(self.path, err) from err

    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
        latest = latest_rows(rows)
        if not latest:
            return RollupWrite(0, [])
        now = int(time.time() * 1000)
        return self._write(_UPSERT, [(row, row_values(row, now)) for row in latest], "row")

    def write_segments(self, segments: Sequence[RollupSegment]) -> RollupWrite:
        if not segments:
            return RollupWrite(0, [])
        now = int(time.time() * 1000)
        return self._write(_SEGMENT_UPSERT, [(segment, (*segment, now)) for segment in segments], "segment")

    def _write(self, statement: str, values: list[tuple], what: str) -> RollupWrite:
        """Upsert (item, its values) in one transaction; (item, why) for each SQLite refused."""

        def upsert(connection):
            try:
                connection.executemany(statement, [value for _, value in values])
                return []
            except _ROW_REFUSED:
                pass
            # Some item cannot be stored: write the others one by one.
            refused = []
            for item, value in values:
                try:
                    connection.execute(statement, value)
                except _ROW_REFUSED as err:
                    refused.append((item, f"SQLite refused the {what}: {err}"))
            return refused

        def attempt():
            connection = self.connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = upsert(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        try:
            refused = with_backoff(attempt, _is_busy)
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                raise self._no_tables(err) from err
            raise StoreError(f"cannot write SQLite store {self.path}: {err}") from err
        return RollupWrite(len(values) - len(refused), refused)

    def _no_tables(self, err) -> StoreError:
        return StoreError(f"the SQLite store {self.path} has no roll-up table ({err}); "
                          f"create it with: orion store init {self.uri}")

    def _read_rows(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None,
                   where: dict[str, str], sketches: bool) -> list[StoredRollup]:
        conditions, params = self._conditions(tenant, granularity, start, end, kind, where)
        columns = _READ_COLUMNS.format(sketch="sketch" if sketches else "x''")
        try:
            found = self.connection.execute(
                f"SELECT {columns} FROM rollups WHERE {conditions} ORDER BY bucket", params).fetchall()
        except sqlite3.DatabaseError as err:
            if "no such table" in str(err):
                raise self._no_tables(err) from err
            raise unreadable_sqlite(self.path, err) from err
        width = len(KEY_COLUMNS) - 1
        return [StoredRollup(RollupKey(*row[:width]), row[width], row[width + 1], row[width + 2], row[width + 3],
                             row[width + 4], parse_sums(row[width + 5]))
                for row in found]

    def _scan_rows(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
                   kind: str | None, where: dict[str, str], order: Sequence[str]) -> list[tuple]:
        conditions, params = self._conditions(tenant, granularity, start, end, kind, where)
        selected = ", ".join(columns)
        if kind is not None and tuple(order) == DIMENSIONS[:len(order)]:
            # The primary key's order (bucket, kind, then the dimensions in this order)
            # is already the order asked for: SQLite need not sort each bucket's rows.
            order = ()
        try:
            rows = self.connection.execute(
                f"SELECT {selected} FROM rollups WHERE {conditions} ORDER BY {', '.join(('bucket', *order))}",
                params).fetchall()
        except sqlite3.DatabaseError as err:
            if "no such table" in str(err):
                raise self._no_tables(err) from err
            raise unreadable_sqlite(self.path, err) from err
        if "sums" in columns:
            at = list(columns).index("sums")
            rows = [row[:at] + (parse_sums(row[at]),) + row[at + 1:] for row in rows]
        return rows

    @staticmethod
    def _conditions(tenant, granularity, start, end, kind, where) -> tuple[str, list]:
        conditions = ["tenant = ?", "granularity = ?", "bucket >= ?", "bucket < ?"]
        params: list = [tenant, granularity, start, end]
        if kind is not None:
            conditions.append("kind = ?")
            params.append(kind)
        for name, value in sorted(where.items()):
            conditions.append(f"{name} = ?")
            params.append(value)
        return " AND ".join(conditions), params

    def _segments(self, tenant: str, granularity: str, start: int, end: int) -> list[tuple[str, int, bytes]]:
        return self._select("SELECT writer, version, data FROM rollup_segments WHERE tenant = ? AND granularity = ? "
                            "AND bucket >= ? AND bucket < ? AND first < ? AND last >= ? ORDER BY bucket, first",
                            (tenant, granularity, segment_start(start), end, end, start))

    def _count_rows(self) -> int:
        return self._select("SELECT COUNT(*) FROM rollups", ())[0][0]

    def _count_segment_rows(self) -> int:
        return self._select("SELECT COALESCE(SUM(rows), 0) FROM rollup_segments", ())[0][0]

    def _select(self, statement: str, params) -> list:
        try:
            return self.connection.execute(statement, params).fetchall()
        except sqlite3.DatabaseError as err:
            if "no such table" in str(err):
                raise self._no_tables(err) from err
            raise unreadable_sqlite(self.path, err) from err

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
