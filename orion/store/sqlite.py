"""The embedded activity store: one SQLite file, rows keyed like the Bigtable row key
(tenant, lead, time, event id) so writing the same activity twice leaves one row.

WAL mode and a busy timeout let the workers of a multi-process DirectRunner write to
the same file.

    orion run --store sqlite:///orion-data/activities.db
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from orion.activities import Activity
from orion.store.base import ActivityStore, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS activities (
    tenant      TEXT    NOT NULL,
    lead_id     TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    attributes  TEXT    NOT NULL,
    PRIMARY KEY (tenant, lead_id, occurred_at, event_id)
) WITHOUT ROWID
"""


def sqlite_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "sqlite" or not parts.path or parts.netloc:
        raise StoreError(f"bad SQLite URI {uri!r}; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return Path(parts.path[1:])


class SqliteStore(ActivityStore):
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
                connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise StoreError(f"cannot open SQLite store {self.path}: {err}") from err
            self._connection = connection
        return self._connection

    def init(self) -> None:
        self.connection.execute(_SCHEMA)

    def write(self, activities: Sequence[Activity]) -> int:
        if not activities:
            return 0
        rows = [
            (a.tenant, a.lead_id, a.occurred_at, a.event_id, a.type,
             json.dumps(a.attributes, ensure_ascii=False, sort_keys=True, separators=(",", ":")))
            for a in activities
        ]
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO activities "
                "(tenant, lead_id, occurred_at, event_id, type, attributes) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return len(rows)

    def history(
        self,
        tenant: str,
        lead_id: str,
        *,
        since: int | None = None,
        until: int | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Activity]:
        sql = ["SELECT event_id, tenant, lead_id, type, occurred_at, attributes FROM activities "
               "WHERE tenant = ? AND lead_id = ?"]
        params: list = [tenant, lead_id]
        if since is not None:
            sql.append("AND occurred_at >= ?")
            params.append(since)
        if until is not None:
            sql.append("AND occurred_at < ?")
            params.append(until)
        type_list = list(types) if types is not None else None
        if type_list is not None:
            sql.append(f"AND type IN ({', '.join('?' * len(type_list))})" if type_list else "AND 0")
            params.extend(type_list)
        sql.append("ORDER BY occurred_at DESC, event_id DESC")
        if limit is not None:
            sql.append("LIMIT ?")
            params.append(limit)
        rows = self.connection.execute(" ".join(sql), params).fetchall()
        return [Activity(e, t, l, ty, at, json.loads(attrs)) for e, t, l, ty, at, attrs in rows]

    def count(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM activities").fetchone()[0]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
