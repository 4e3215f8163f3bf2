"""The roll-up store on MySQL or MariaDB: table `rollups` in the activity store's
database (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`), through the activity store's
connection handling (orion.store.mysql: retries, reconnects, the database created by
`init` when missing).

One row per (tenant, granularity, bucket, kind, dimensions, writer), the primary key in
that order, so one tenant's time range at one granularity is one index range. Ids and
dimension values are VARBINARY (UTF-8 bytes, compared byte-wise, as in the activity
tables); dimension values are at most 200 bytes (orion.analytics.rollup). A write is an
upsert whose columns change only when the new version is higher: on a tie or an older
version the stored row stays as it was.

    orion store init mysql://root@127.0.0.1:3306/orion      # creates `rollups` too
"""
from __future__ import annotations

import time
from typing import Sequence

from orion.analytics.rollup import DIMENSIONS, MAX_DIMENSION_BYTES, RollupKey, RollupRow
from orion.store.base import StoreError
from orion.store.mysql import MysqlStore, _row_refused, redact
from orion.store.rollups_base import (
    KEY_COLUMNS, RollupStore, RollupWrite, StoredRollup, check_columns, check_order, check_where, latest_rows,
    parse_sums, sums_json,
)

_SCHEMA = f"""
    CREATE TABLE IF NOT EXISTS rollups (
        tenant      VARBINARY(255) NOT NULL,
        granularity VARBINARY(8)   NOT NULL COMMENT 'minute, hour, day',
        bucket      BIGINT         NOT NULL COMMENT 'epoch ms, the bucket start',
        kind        VARBINARY(16)  NOT NULL COMMENT 'activity, outcome, flow',
        {' '.join(f"{name} VARBINARY({MAX_DIMENSION_BYTES}) NOT NULL," for name in DIMENSIONS)}
        writer      VARBINARY(64)  NOT NULL COMMENT 'the state that wrote it',
        version     BIGINT         NOT NULL COMMENT 'a write replaces the row only with a higher one',
        records     BIGINT         NOT NULL,
        leads       DOUBLE         NOT NULL COMMENT 'estimated distinct leads',
        sketch      BLOB           NOT NULL COMMENT 'HyperLogLog, Apache DataSketches compact form',
        sums        TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL COMMENT 'JSON; empty for none',
        updated_at  BIGINT         NOT NULL COMMENT 'wall-clock epoch ms of the last write',
        PRIMARY KEY ({', '.join(KEY_COLUMNS)})
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
_METRIC_COLUMNS = ("records", "leads", "sketch", "sums", "updated_at")
_COLUMNS = KEY_COLUMNS + ("version",) + _METRIC_COLUMNS
# MySQL assigns left to right: every metric compares with the old version before the
# version itself changes, last.
_UPSERT = (
    f"INSERT INTO rollups ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
    "ON DUPLICATE KEY UPDATE "
    + ", ".join(f"{name} = IF(VALUES(version) > version, VALUES({name}), {name})" for name in _METRIC_COLUMNS)
    + ", version = GREATEST(version, VALUES(version))"
)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


# How `scan` turns a column's MySQL value into Python (the others are text).
_COLUMN_TYPES = {"bucket": int, "records": int, "leads": float, "sketch": lambda value: bytes(value or b""),
                 "sums": parse_sums}


class MysqlRollupStore(RollupStore):
    def __init__(self, uri: str):
        self.uri = uri
        # The activity store's connection, transactions and retries, shared rather than copied.
        self._mysql = MysqlStore(uri)

    def __repr__(self) -> str:
        return f"MysqlRollupStore({redact(self.uri)!r})"

    def init(self) -> None:
        self._mysql.init()  # the database (created when missing) and the activity tables
        self._mysql._transaction(lambda cursor: cursor.execute(_SCHEMA))

    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
        import pymysql

        latest = latest_rows(rows, ordered=True)  # InnoDB locks rows: one order for every writer
        if not latest:
            return RollupWrite(0, [])
        now = int(time.time() * 1000)
        values = []
        refused = []
        for row in latest:
            try:
                values.append((row, self._values(row, now)))
            except UnicodeEncodeError as err:
                refused.append((row, f"not valid Unicode text: {err.reason} at {err.start}"))
        try:
            self._mysql._transaction(lambda cursor: cursor.executemany(_UPSERT, [value for _, value in values]))
            return RollupWrite(len(values), refused)
        except pymysql.err.Error as err:
            if not _row_refused(err):
                raise StoreError(f"cannot write roll-ups to MySQL {redact(self.uri)}: {err}") from err
        # Some row is refused (an id too long, say): write them one by one to find it.
        written = 0
        for row, value in values:
            try:
                self._mysql._transaction(lambda cursor, value=value: cursor.execute(_UPSERT, value))
                written += 1
            except pymysql.err.Error as err:
                if not _row_refused(err):
                    raise StoreError(f"cannot write roll-ups to MySQL {redact(self.uri)}: {err}") from err
                refused.append((row, f"MySQL refused the row: {err}"))
        return RollupWrite(written, refused)

    @staticmethod
    def _values(row: RollupRow, now: int) -> tuple:
        aggregate = row.aggregate
        key = tuple(field.encode("utf-8") if isinstance(field, str) else field for field in row.key)
        return (*key, row.writer.encode("ascii"), row.version, aggregate.records, aggregate.estimate(),
                aggregate.sketch_bytes(), sums_json(row), now)

    def read(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None = None,
             where: dict[str, str] | None = None, sketches: bool = True) -> list[StoredRollup]:
        conditions, params = self._conditions(tenant, granularity, start, end, kind, where)
        columns = ", ".join(KEY_COLUMNS) + ", version, records, leads, " + ("sketch" if sketches else "''") + ", sums"
        found = self._mysql._query(f"SELECT {columns} FROM rollups WHERE {conditions} ORDER BY bucket", params)
        width = len(KEY_COLUMNS) - 1
        rows = []
        for row in found:
            key = [_text(field) for field in row[:width]]
            key[2] = int(row[2])
            rows.append(StoredRollup(RollupKey(*key), _text(row[width]), int(row[width + 1]), int(row[width + 2]),
                                     float(row[width + 3]), bytes(row[width + 4] or b""), parse_sums(row[width + 5])))
        return rows

    def scan(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
             kind: str | None = None, where: dict[str, str] | None = None, order: Sequence[str] = ()
             ) -> list[tuple]:
        check_columns(columns)
        check_order(order)
        conditions, params = self._conditions(tenant, granularity, start, end, kind, where)
        found = self._mysql._query(f"SELECT {', '.join(columns)} FROM rollups WHERE {conditions} "
                                   f"ORDER BY {', '.join(('bucket', *order))}", params)
        convert = [_COLUMN_TYPES.get(name, _text) for name in columns]
        return [tuple(to(value) for to, value in zip(convert, row)) for row in found]

    @staticmethod
    def _conditions(tenant, granularity, start, end, kind, where) -> tuple[str, list]:
        conditions = ["tenant = %s", "granularity = %s", "bucket >= %s", "bucket < %s"]
        params: list = [tenant.encode("utf-8"), granularity.encode("ascii"), start, end]
        if kind is not None:
            conditions.append("kind = %s")
            params.append(kind.encode("utf-8"))
        for name, value in sorted(check_where(where).items()):
            conditions.append(f"{name} = %s")
            params.append(value.encode("utf-8", "replace"))
        return " AND ".join(conditions), params

    def count(self) -> int:
        return int(self._mysql._query("SELECT COUNT(*) FROM rollups", ())[0][0])

    def close(self) -> None:
        self._mysql.close()
