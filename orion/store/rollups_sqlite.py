"""The embedded roll-up store: table `rollups` in the activity store's SQLite file, one
row per (tenant, granularity, bucket, kind, dimensions, writer), its primary key
ordered so that one tenant's time range at one granularity is one contiguous range of
the table itself (WITHOUT ROWID: a write is one b-tree insert, a query one range scan;
most rows are small, a sketch of a few leads). A write is an upsert that replaces a row only with a higher version (see
orion.store.rollups_base); the estimate of distinct leads is kept beside the sketch, so
a query that merges nothing reads no sketch.

    orion store init sqlite:///orion-data/activities.db     # creates `rollups` too
"""
from __future__ import annotations

import sqlite3
import time
from typing import Sequence

from orion.analytics.rollup import DIMENSIONS, RollupKey, RollupRow
from orion.store.base import StoreError, with_backoff
from orion.store.rollups_base import (
    KEY_COLUMNS, RollupStore, RollupWrite, StoredRollup, check_columns, check_order, check_where, latest_rows,
    parse_sums, sums_json,
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
)
_COLUMNS = KEY_COLUMNS + ("version", "records", "leads", "sketch", "sums", "updated_at")
_UPSERT = (
    f"INSERT INTO rollups ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET version = excluded.version, "
    "records = excluded.records, leads = excluded.leads, sketch = excluded.sketch, sums = excluded.sums, "
    "updated_at = excluded.updated_at WHERE excluded.version > rollups.version"
)
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
            check_tables(self.connection, self.path, {"rollups": KEY_COLUMNS})
        except sqlite3.DatabaseError as err:
            raise unreadable_sqlite(self.path, err) from err

    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
        latest = latest_rows(rows)
        if not latest:
            return RollupWrite(0, [])
        now = int(time.time() * 1000)
        values = [(row, row_values(row, now)) for row in latest]

        def upsert(connection):
            try:
                connection.executemany(_UPSERT, [value for _, value in values])
                return []
            except _ROW_REFUSED:
                pass
            # Some row cannot be stored: write the others one by one.
            refused = []
            for row, value in values:
                try:
                    connection.execute(_UPSERT, value)
                except _ROW_REFUSED as err:
                    refused.append((row, f"SQLite refused the row: {err}"))
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
        return RollupWrite(len(latest) - len(refused), refused)

    def _no_tables(self, err) -> StoreError:
        return StoreError(f"the SQLite store {self.path} has no roll-up table ({err}); "
                          f"create it with: orion store init {self.uri}")

    def read(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None = None,
             where: dict[str, str] | None = None, sketches: bool = True) -> list[StoredRollup]:
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

    def scan(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
             kind: str | None = None, where: dict[str, str] | None = None, order: Sequence[str] = ()
             ) -> list[tuple]:
        check_columns(columns)
        check_order(order)
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
        for name, value in sorted(check_where(where).items()):
            conditions.append(f"{name} = ?")
            params.append(value)
        return " AND ".join(conditions), params

    def count(self) -> int:
        try:
            return self.connection.execute("SELECT COUNT(*) FROM rollups").fetchone()[0]
        except sqlite3.DatabaseError as err:
            if "no such table" in str(err):
                raise self._no_tables(err) from err
            raise unreadable_sqlite(self.path, err) from err

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
