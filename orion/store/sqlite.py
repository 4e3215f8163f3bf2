"""The embedded activity store: one SQLite file, rows keyed like the Bigtable row key
(tenant, lead, time, event id) so writing the same activity twice leaves one row, the
activity index as a derived table recounted from the stored rows, and the lead profiles
in `lead_profiles`, one row per (tenant, lead), with an index on next_wake for
`due_profiles`. As in the MySQL store, a profile row holds the encoded profile (`data`)
and, derived from it on every write, the lead's attributes, score and lists (JSON as
TEXT); a row with only those columns (data NULL, written with SQL) reads as a profile of
them (orion/store/profile_columns.py). The tenant registry is `tenant_stages`, one row
per tenant (orion/tenants/registry.py).

WAL mode and a busy timeout let the workers of a multi-process DirectRunner write to
the same file; a write and an index update each run in one IMMEDIATE transaction, so a
recount always sees every committed row. A write that finds the file locked by another
writer for longer than BUSY_TIMEOUT_S says so in the log (which store, how long it will
wait) and goes on trying for up to about MAX_BUSY_WAIT_S, saying every half minute that
it still waits, before it fails.

    orion run --store sqlite:///orion-data/activities.db
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import date
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from orion.activities import Activity
from orion.store.base import (
    DEFAULT_TENANT_STAGE,
    UNSTORABLE,
    ActivityStore,
    HistoryRead,
    IndexEntries,
    IndexRead,
    StoredProfile,
    StoreError,
    TenantStage,
    WriteFailure,
    WriteResult,
    attributes_json,
    day_bounds,
    index_keys,
    leads_by_tenant,
    profiles_to_write,
    with_backoff,
)
from orion.store.profile_columns import profile_columns, profile_of_columns

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS activities (
        tenant      TEXT    NOT NULL,
        lead_id     TEXT    NOT NULL,
        occurred_at INTEGER NOT NULL,
        event_id    TEXT    NOT NULL,
        type        TEXT    NOT NULL,
        attributes  TEXT    NOT NULL,
        PRIMARY KEY (tenant, lead_id, occurred_at, event_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS activity_index (
        tenant         TEXT    NOT NULL,
        lead_id        TEXT    NOT NULL,
        type           TEXT    NOT NULL,
        day            TEXT    NOT NULL,  -- UTC day, YYYY-MM-DD
        activity_count INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL,  -- epoch ms of the newest activity that day
        PRIMARY KEY (tenant, lead_id, type, day)
    ) WITHOUT ROWID
    """,
    # A rowid table (not WITHOUT ROWID): profiles run to a few KB, and a WITHOUT ROWID
    # table keeps whole rows in its key b-tree, which suits only small rows.
    """
    CREATE TABLE IF NOT EXISTS lead_profiles (
        tenant     TEXT    NOT NULL,
        lead_id    TEXT    NOT NULL,
        attributes TEXT    NOT NULL DEFAULT '{}',  -- JSON object: email, first_name, ...
        score      REAL    NOT NULL DEFAULT 0,
        lists      TEXT    NOT NULL DEFAULT '[]',  -- JSON array: the lists the lead is in
        data       TEXT,              -- the encoded profile; NULL: a row written with SQL, of its columns only
        next_wake  INTEGER,           -- epoch ms its earliest waiting flow step is due; NULL: none
        updated_at INTEGER,           -- wall-clock epoch ms of the last change by the store, for people only
        PRIMARY KEY (tenant, lead_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS lead_profiles_next_wake ON lead_profiles (next_wake)",
    # The tenant registry (orion/tenants/registry.py): each tenant's rollout stage.
    """
    CREATE TABLE IF NOT EXISTS tenant_stages (
        tenant         TEXT    NOT NULL PRIMARY KEY,
        stage          TEXT    NOT NULL,  -- legacy, passive, active or deactivated
        changed_at     INTEGER NOT NULL,  -- wall-clock epoch ms the stage was set
        previous_stage TEXT               -- the stage before it; NULL: none
    )
    """,
)

_INSERT = ("INSERT OR REPLACE INTO activities "
           "(tenant, lead_id, occurred_at, event_id, type, attributes) VALUES (?, ?, ?, ?, ?, ?)")
# A profile written again unchanged keeps its row as it was, updated_at included. The
# attributes, score and lists follow the data they are derived from.
_UPSERT_PROFILE = (
    "INSERT INTO lead_profiles (tenant, lead_id, data, next_wake, updated_at, attributes, score, lists) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (tenant, lead_id) DO UPDATE SET data = excluded.data, next_wake = excluded.next_wake, "
    "updated_at = excluded.updated_at, attributes = excluded.attributes, score = excluded.score, "
    "lists = excluded.lists "
    "WHERE data IS NOT excluded.data OR next_wake IS NOT excluded.next_wake"
)
# A profile's data, or (data NULL) the columns it is built from.
_READ_PROFILE_COLUMNS = ("lead_id, data, CASE WHEN data IS NULL THEN attributes END, "
                         "CASE WHEN data IS NULL THEN score END, CASE WHEN data IS NULL THEN lists END")


# The columns each table has had since it was first made: a file whose table of that name
# lacks one is another program's database.
_KEY_COLUMNS = {
    "activities": ("tenant", "lead_id", "occurred_at", "event_id", "type", "attributes"),
    "activity_index": ("tenant", "lead_id", "type", "day", "activity_count", "last_seen"),
    "lead_profiles": ("tenant", "lead_id", "attributes", "score", "lists"),
    "tenant_stages": ("tenant", "stage", "changed_at"),
}


def check_tables(connection, path, expected: dict[str, tuple[str, ...]]) -> None:
    """StoreError when a table of the file lacks a column Orion's table of that name has
    (CREATE TABLE IF NOT EXISTS keeps another program's table as it is)."""
    for table, columns in expected.items():
        found = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        missing = [column for column in columns if column not in found]
        if missing:
            raise StoreError(f"the SQLite file {path} holds a table {table!r} without the column(s) "
                             f"{', '.join(missing)}: it is another program's database, not an Orion store; give "
                             "Orion a file of its own")


def unreadable_sqlite(path, err: Exception) -> StoreError:
    """A SQLite file a read cannot use (another program's database, a damaged file, a
    file that is not SQLite) as the StoreError a command says in one line."""
    return StoreError(f"the SQLite store {path} cannot be read ({err}): is it a store `orion store init` made? "
                      "(a damaged file: restore it from a backup)")


def sqlite_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "sqlite" or not parts.path or parts.netloc:
        raise StoreError(f"bad SQLite URI {uri!r}; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return Path(parts.path[1:])


# Leads per statement of histories / read_indexes: four parameters each, under SQLite's
# oldest limit of 999 parameters a statement.
READS_PER_STATEMENT = 200
# Leads (of one tenant) per statement of read_profiles, and tenants per statement of
# due_profiles: one parameter each, plus one.
KEYS_PER_STATEMENT = 500
_NO_EARLIER, _NO_LATER = -(2 ** 62), 2 ** 62


def _by_tenant_and_types(reads) -> list[tuple[tuple, list[int]]]:
    """The reads' positions grouped by (tenant, types), READS_PER_STATEMENT at most a group."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(reads):
        groups.setdefault((r.tenant, None if r.types is None else tuple(r.types)), []).append(i)
    return [(key, members[start:start + READS_PER_STATEMENT])
            for key, members in groups.items() for start in range(0, len(members), READS_PER_STATEMENT)]


def _types_clause(column: str, types: tuple | None) -> str:
    """The condition keeping only `types` (None: any type; empty: none), with a
    parameter per type."""
    if types is None:
        return ""
    return f"AND {column} IN ({', '.join('?' * len(types))})" if types else "AND 0"


def _is_busy(err: Exception) -> bool:
    return isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err))


log = logging.getLogger(__name__)
BUSY_TIMEOUT_S = 5.0  # SQLite's own wait for a lock, each try
MAX_BUSY_WAIT_S = 300.0  # a write's whole wait for another writer's lock, before it fails
_BUSY_REPORT_EVERY_S = 30.0


def _waiting_for_lock(operation, path: Path, clock=time.monotonic, sleep=time.sleep):
    """Run `operation()`, retrying while the file is locked by another writer (each try
    waits up to BUSY_TIMEOUT_S in SQLite), for up to MAX_BUSY_WAIT_S in all; the log says
    when it starts waiting and every half minute after. The last error propagates."""
    started = reported = None
    delay = 0.1
    while True:
        try:
            result = operation()
        except sqlite3.OperationalError as err:
            if not _is_busy(err):
                raise
            now = clock()
            if started is None:
                started = reported = now - BUSY_TIMEOUT_S
                log.warning("the SQLite store %s is locked by another writer (another Orion process, or a tool "
                            "holding a write transaction on it); waiting for it, up to %.0f s", path, MAX_BUSY_WAIT_S)
            elif now - started >= MAX_BUSY_WAIT_S:
                raise
            elif now - reported >= _BUSY_REPORT_EVERY_S:
                reported = now
                log.warning("still waiting for the SQLite store %s (locked by another writer for %.0f s)", path,
                            now - started)
            sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if started is not None:
            log.warning("the SQLite store %s is written again, after %.0f s locked", path, clock() - started)
        return result


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
                # Beam may tear a DoFn down on another thread than the one that set it up.
                connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                             check_same_thread=False)
                # Switching a new file to WAL takes an exclusive lock without waiting on
                # the busy timeout: workers opening the same new store at once see
                # "database is locked" here and must retry.
                with_backoff(lambda: connection.execute("PRAGMA journal_mode=WAL"), _is_busy, attempts=10)
                connection.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise StoreError(f"cannot open SQLite store {self.path}: {err}") from err
            self._connection = connection
        return self._connection

    def init(self) -> None:
        try:
            for statement in _SCHEMA:
                _waiting_for_lock(lambda: self.connection.execute(statement), self.path)
            check_tables(self.connection, self.path, _KEY_COLUMNS)
        except sqlite3.DatabaseError as err:
            raise unreadable_sqlite(self.path, err) from err

    def _transaction(self, body):
        """Run body(connection) in one IMMEDIATE transaction, retrying while the file is
        locked by another writer."""

        def attempt():
            connection = self.connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        try:
            return _waiting_for_lock(attempt, self.path)
        except sqlite3.OperationalError as err:
            raise StoreError(f"cannot write SQLite store {self.path}: {err}") from err

    def _select(self, sql: str, params) -> list[tuple]:
        try:
            return self.connection.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as err:
            if "no such table" in str(err):
                raise StoreError(f"the SQLite store {self.path} has no tables ({err}); "
                                 f"create them with: orion store init {self.uri}") from err
            raise unreadable_sqlite(self.path, err) from err

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        rows, failed = [], []
        for a in activities:
            try:
                rows.append((a, (a.tenant, a.lead_id, a.occurred_at, a.event_id, a.type, attributes_json(a))))
            except ValueError as err:
                failed.append(WriteFailure(a, UNSTORABLE, str(err)))
        if not rows:
            return WriteResult(0, failed)

        def insert(connection):
            try:
                connection.executemany(_INSERT, [values for _, values in rows])
                return 0, []
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError):
                pass
            # Some row of the batch cannot be stored: write the others one by one.
            row_failures = []
            for activity, values in rows:
                try:
                    connection.execute(_INSERT, values)
                except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError) as err:
                    row_failures.append(WriteFailure(activity, UNSTORABLE, f"SQLite refused the row: {err}"))
            return len(row_failures), row_failures

        refused, row_failures = self._transaction(insert)
        return WriteResult(len(rows) - refused, failed + row_failures)

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
        type_list = tuple(types) if types is not None else None
        if type_list is not None:
            sql.append(_types_clause("type", type_list))
            params.extend(type_list)
        sql.append("ORDER BY occurred_at DESC, event_id DESC")
        if limit is not None:
            sql.append("LIMIT ?")
            params.append(limit)
        rows = self._select(" ".join(sql), params)
        return [Activity(e, t, l, ty, at, json.loads(attrs)) for e, t, l, ty, at, attrs in rows]

    def count(self) -> int:
        return self._select("SELECT COUNT(*) FROM activities", ())[0][0]

    def histories(self, reads: Sequence[HistoryRead]) -> list[list[Activity]]:
        # One statement per tenant, types and READS_PER_STATEMENT leads: the reads join
        # the activities as a VALUES table, each with its own time range.
        answers: list[list[Activity]] = [[] for _ in reads]
        for (tenant, types), members in _by_tenant_and_types(reads):
            where_type = _types_clause("a.type", types)
            values = ", ".join("(?, ?, ?, ?)" for _ in members)
            params: list = []
            for i in members:
                r = reads[i]
                params += [i, r.lead_id, _NO_EARLIER if r.since is None else r.since,
                           _NO_LATER if r.until is None else r.until]
            rows = self._select(
                f"WITH r(i, lead_id, since, until) AS (VALUES {values}) "
                "SELECT r.i, a.event_id, a.tenant, a.lead_id, a.type, a.occurred_at, a.attributes "
                "FROM r JOIN activities a ON a.tenant = ? AND a.lead_id = r.lead_id "
                f"AND a.occurred_at >= r.since AND a.occurred_at < r.until {where_type} "
                "ORDER BY r.i, a.occurred_at DESC, a.event_id DESC",
                params + [tenant] + list(types or ()))
            for i, e, t, l, ty, at, attrs in rows:
                answers[i].append(Activity(e, t, l, ty, at, json.loads(attrs)))
        return answers

    def index_activities(self, activities: Sequence[Activity]) -> int:
        keys = index_keys(activities)
        if not keys:
            return 0

        # Set-based statements over all keys (sqlite3 loops over the parameters in C):
        # recount each (tenant, lead, type, day) from the activities and, when some key
        # had no rows (an activity that was not stored, or rows removed since), drop an
        # entry whose day holds none any more.
        params = []
        for tenant, lead_id, type_, day in keys:
            start, end = day_bounds(day)
            params.append((day.isoformat(), tenant, lead_id, type_, start, end))

        def recount(connection):
            before = connection.total_changes  # rows inserted (a replaced row counts once)
            connection.executemany(
                "INSERT OR REPLACE INTO activity_index (tenant, lead_id, type, day, activity_count, last_seen) "
                "SELECT tenant, lead_id, type, ?, COUNT(*), MAX(occurred_at) FROM activities "
                "WHERE tenant = ? AND lead_id = ? AND type = ? AND occurred_at >= ? AND occurred_at < ? "
                "GROUP BY tenant, lead_id, type", params)
            set_entries = connection.total_changes - before
            if set_entries == len(params):
                return set_entries  # every entry was recounted from rows: none to drop
            connection.executemany(
                "DELETE FROM activity_index WHERE day = ? AND tenant = ? AND lead_id = ? AND type = ? "
                "AND NOT EXISTS (SELECT 1 FROM activities WHERE activities.tenant = activity_index.tenant "
                "AND activities.lead_id = activity_index.lead_id AND activities.type = activity_index.type "
                "AND occurred_at >= ? AND occurred_at < ?)", params)
            return set_entries

        return self._transaction(recount)

    def read_index(
        self,
        tenant: str,
        lead_id: str,
        *,
        types: Iterable[str] | None = None,
        since_day: date | None = None,
    ) -> IndexEntries:
        sql = ["SELECT type, day, activity_count, last_seen FROM activity_index WHERE tenant = ? AND lead_id = ?"]
        params: list = [tenant, lead_id]
        type_list = tuple(types) if types is not None else None
        if type_list is not None:
            sql.append(_types_clause("type", type_list))
            params.extend(type_list)
        if since_day is not None:
            sql.append("AND day >= ?")
            params.append(since_day.isoformat())
        rows = self._select(" ".join(sql), params)
        return {(type_, date.fromisoformat(day)): (count, last_seen) for type_, day, count, last_seen in rows}

    def read_indexes(self, reads: Sequence[IndexRead]) -> list[IndexEntries]:
        # As histories: one statement per tenant, types and READS_PER_STATEMENT leads.
        answers: list[IndexEntries] = [{} for _ in reads]
        for (tenant, types), members in _by_tenant_and_types(reads):
            values = ", ".join("(?, ?, ?)" for _ in members)
            params: list = []
            for i in members:
                r = reads[i]
                params += [i, r.lead_id, "" if r.since_day is None else r.since_day.isoformat()]
            rows = self._select(
                f"WITH r(i, lead_id, since_day) AS (VALUES {values}) "
                "SELECT r.i, x.type, x.day, x.activity_count, x.last_seen "
                "FROM r JOIN activity_index x ON x.tenant = ? AND x.lead_id = r.lead_id AND x.day >= r.since_day "
                f"{_types_clause('x.type', types)}",
                params + [tenant] + list(types or ()))
            for i, type_, day, count, last_seen in rows:
                answers[i][(type_, date.fromisoformat(day))] = (count, last_seen)
        return answers

    # lead profiles

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        now = int(time.time() * 1000)
        rows = [(p.tenant, p.lead_id, p.data, p.next_wake, now, *profile_columns(p.data))
                for p in profiles_to_write(profiles)]
        if rows:
            self._transaction(lambda connection: connection.executemany(_UPSERT_PROFILE, rows))
        return len(profiles)

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        # One statement per tenant and KEYS_PER_STATEMENT leads, on the primary key.
        found: dict[tuple[str, str], str] = {}
        for tenant, leads in leads_by_tenant(keys, KEYS_PER_STATEMENT):
            rows = self._select(f"SELECT {_READ_PROFILE_COLUMNS} FROM lead_profiles WHERE tenant = ? "
                                f"AND lead_id IN ({', '.join('?' * len(leads))})", [tenant, *leads])
            found.update(((tenant, lead_id), data if data is not None else profile_of_columns(*columns))
                         for lead_id, data, *columns in rows)
        return [found.get((tenant, lead_id)) for tenant, lead_id in keys]

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        # Through the next_wake index: sorted here, since an ORDER BY would make SQLite walk
        # the primary key (every profile) instead, and `+tenant` keeps it from picking the
        # primary key for the tenant filter (every profile of those tenants).
        sql = "SELECT tenant, lead_id, next_wake FROM lead_profiles WHERE next_wake <= ?"
        if tenants is None:
            due = self._select(sql, [due_by])
        else:
            wanted = sorted(set(tenants))
            due = []
            for start in range(0, len(wanted), KEYS_PER_STATEMENT):
                chunk = wanted[start:start + KEYS_PER_STATEMENT]
                due += self._select(f"{sql} AND +tenant IN ({', '.join('?' * len(chunk))})", [due_by, *chunk])
        return sorted(due)

    def count_profiles(self) -> int:
        return self._select("SELECT COUNT(*) FROM lead_profiles", ())[0][0]

    # the tenant registry

    def read_tenant_stages(self) -> list[TenantStage]:
        rows = self._select("SELECT tenant, stage, changed_at, previous_stage FROM tenant_stages ORDER BY tenant", ())
        return [TenantStage(*row) for row in rows]

    def change_tenant_stage(self, tenant: str, stage: str, changed_at: int) -> tuple[TenantStage, bool]:
        def change(connection):  # an IMMEDIATE transaction: no other writer in between
            found = connection.execute("SELECT tenant, stage, changed_at, previous_stage FROM tenant_stages "
                                       "WHERE tenant = ?", (tenant,)).fetchone()
            current = None if found is None else TenantStage(*found)
            if current is not None and current.stage == stage:
                return current, False
            row = TenantStage(tenant, stage, changed_at, DEFAULT_TENANT_STAGE if current is None else current.stage)
            connection.execute("INSERT OR REPLACE INTO tenant_stages (tenant, stage, changed_at, previous_stage) "
                               "VALUES (?, ?, ?, ?)", tuple(row))
            return row, True

        return self._transaction(change)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
