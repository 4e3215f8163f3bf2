"""The roll-up store on MySQL or MariaDB: tables `rollups` and `rollup_segments` (a
bounded run's segments, orion.analytics.segments, keyed by tenant, granularity, day,
writer and part) in the activity store's database
(`mysql://USER:PASSWORD@HOST:PORT/DATABASE`), through the activity store's connection
handling (orion.store.mysql: retries, reconnects, the database created by `init` when
missing).

`rollups`: one row per (tenant, granularity, bucket, kind, dimensions, writer), the primary key in
that order, so one tenant's time range at one granularity is one index range. Ids and
dimension values are VARBINARY (UTF-8 bytes, compared byte-wise, as in the activity
tables); dimension values are at most 200 bytes (orion.analytics.rollup). A write is an
upsert whose columns change only when the new version is higher: on a tie or an older
version the stored row stays as it was.

    orion store init mysql://root@127.0.0.1:3306/orion      # creates the roll-up tables too
"""
from __future__ import annotations

import time
from typing import Sequence

from orion.analytics.rollup import DIMENSIONS, MAX_DIMENSION_BYTES, RollupKey, RollupRow
from orion.store.base import StoreError
from orion.store.mysql import MysqlStore, _row_refused, redact
from orion.analytics.segments import RollupSegment
from orion.store.rollups_base import (
    KEY_COLUMNS, RollupStore, RollupWrite, StoredRollup, latest_rows, parse_sums, segment_start, sums_json,
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
_SEGMENT_SCHEMA = """
    CREATE TABLE IF NOT EXISTS rollup_segments (
        tenant      VARBINARY(255) NOT NULL,
        granularity VARBINARY(8)   NOT NULL COMMENT 'of its rows: minute, hour, day',
        bucket      BIGINT         NOT NULL COMMENT 'epoch ms, the start of the day it spans',
        writer      VARBINARY(64)  NOT NULL COMMENT 'the run that wrote it',
        part        INT            NOT NULL COMMENT '0, or the part of a segment split in parts',
        version     BIGINT         NOT NULL COMMENT 'a write replaces the segment only with a higher one',
        `rows`      BIGINT         NOT NULL COMMENT 'roll-up rows in its data',
        first       BIGINT         NOT NULL COMMENT 'the first bucket of its rows',
        last        BIGINT         NOT NULL COMMENT 'the last bucket of its rows',
        data        LONGBLOB       NOT NULL COMMENT 'orion.analytics.segments',
        updated_at  BIGINT         NOT NULL COMMENT 'wall-clock epoch ms of the last write',
        PRIMARY KEY (tenant, granularity, bucket, writer, part)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
_SEGMENT_METRIC_COLUMNS = ("`rows`", "first", "last", "data", "updated_at")
_SEGMENT_UPSERT = (
    "INSERT INTO rollup_segments (tenant, granularity, bucket, writer, part, version, `rows`, first, last, data, "
    "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    + ", ".join(f"{name} = IF(VALUES(version) > version, VALUES({name}), {name})" for name in _SEGMENT_METRIC_COLUMNS)
    + ", version = GREATEST(version, VALUES(version))"
)
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
        self._mysql._transaction(lambda cursor: cursor.execute(_SEGMENT_SCHEMA))

    def write(self, rows: Sequence[RollupRow]) -> RollupWrite:
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
        return self._upsert(_UPSERT, values, refused, "row")

    def write_segments(self, segments: Sequence[RollupSegment]) -> RollupWrite:
        now = int(time.time() * 1000)
        values, refused = [], []
        for segment in sorted(segments, key=lambda segment: segment[:5]):  # one lock order for every writer
            try:
                values.append((segment, (segment.tenant.encode("utf-8"), segment.granularity.encode("ascii"),
                                         segment.bucket, segment.writer.encode("ascii"), segment.part,
                                         segment.version, segment.rows, segment.first, segment.last, segment.data,
                                         now)))
            except UnicodeEncodeError as err:
                refused.append((segment, f"not valid Unicode text: {err.reason} at {err.start}"))
        if not values:
            return RollupWrite(0, refused)
        return self._upsert(_SEGMENT_UPSERT, values, refused, "segment")

    def _upsert(self, statement: str, values: list[tuple], refused: list, what: str) -> RollupWrite:
        """Upsert (item, its values) in one transaction; what MySQL refuses (an id too
        long, say) is found by writing them one by one, and added to `refused`."""
        import pymysql

        try:
            self._mysql._transaction(lambda cursor: cursor.executemany(statement, [value for _, value in values]))
            return RollupWrite(len(values), refused)
        except pymysql.err.Error as err:
            if not _row_refused(err):
                raise StoreError(f"cannot write roll-ups to MySQL {redact(self.uri)}: {err}") from err
        written = 0
        for item, value in values:
            try:
                self._mysql._transaction(lambda cursor, value=value: cursor.execute(statement, value))
                written += 1
            except pymysql.err.Error as err:
                if not _row_refused(err):
                    raise StoreError(f"cannot write roll-ups to MySQL {redact(self.uri)}: {err}") from err
                refused.append((item, f"MySQL refused the {what}: {err}"))
        return RollupWrite(written, refused)

    @staticmethod
    def _values(row: RollupRow, now: int) -> tuple:
        aggregate = row.aggregate
        key = tuple(field.encode("utf-8") if isinstance(field, str) else field for field in row.key)
        return (*key, row.writer.encode("ascii"), row.version, aggregate.records, aggregate.estimate(),
                aggregate.sketch_bytes(), sums_json(row), now)

    def _read_rows(self, tenant: str, granularity: str, start: int, end: int, *, kind: str | None,
                   where: dict[str, str], sketches: bool) -> list[StoredRollup]:
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

    def _scan_rows(self, tenant: str, granularity: str, start: int, end: int, columns: Sequence[str], *,
                   kind: str | None, where: dict[str, str], order: Sequence[str]) -> list[tuple]:
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
        for name, value in sorted(where.items()):
            conditions.append(f"{name} = %s")
            params.append(value.encode("utf-8", "replace"))
        return " AND ".join(conditions), params

    def _segments(self, tenant: str, granularity: str, start: int, end: int) -> list[tuple[str, int, bytes]]:
        found = self._mysql._query(
            "SELECT writer, version, data FROM rollup_segments WHERE tenant = %s AND granularity = %s "
            "AND bucket >= %s AND bucket < %s AND first < %s AND last >= %s ORDER BY bucket, first",
            (tenant.encode("utf-8"), granularity.encode("ascii"), segment_start(start), end, end, start))
        return [(_text(writer), int(version), bytes(data)) for writer, version, data in found]

    def _count_rows(self) -> int:
        return int(self._mysql._query("SELECT COUNT(*) FROM rollups", ())[0][0])

    def _count_segment_rows(self) -> int:
        return int(self._mysql._query("SELECT COALESCE(SUM(`rows`), 0) FROM rollup_segments", ())[0][0])

    def close(self) -> None:
        self._mysql.close()
