"""The legacy activity store: MySQL or MariaDB, `mysql://USER:PASSWORD@HOST:PORT/DATABASE`,
through PyMySQL. It keeps the legacy schema the bootstrap migration reads by id range:

- `leads`: one row per (tenant, lead_id), with when the row was created and the first
  and last activity times seen.
- `activities`: an AUTO_INCREMENT `id` (the migration's cursor), unique per
  (tenant, event_id), with `occurred_at` as BIGINT epoch milliseconds UTC (exact, the
  same number as Activity.occurred_at, no time zone or DATETIME rounding in the way) and
  `attributes` as JSON (on MariaDB: LONGTEXT with a JSON_VALID check). History reads
  use the index (tenant, lead_id, occurred_at, event_id).
- `activity_index`: count and last seen per (tenant, lead_id, type, UTC day), a derived
  table recounted from `activities` for every entry a batch touches, in one transaction
  with shared locks on the counted rows, so retries and reruns leave the same index.
- `lead_profiles`: one row per (tenant, lead_id), the lead's profile: the encoded profile
  (`data`, MEDIUMTEXT utf8mb4: at most 16 MiB, and no more than the server's
  max_allowed_packet), when its next waiting flow step is due (`next_wake`, BIGINT epoch
  ms, NULL for none; indexed for `due_profiles`), `updated_at` (wall-clock epoch ms of
  the last change, for people only) and, derived from the profile on every write, the
  lead's `attributes` (JSON), `score` (DOUBLE) and `lists` (JSON array), which SQL users
  and the batch campaigns (orion/campaigns/batch.py) read. A row with only attributes,
  score and lists (data NULL: written with SQL, as the batch campaigns' lead database
  was before the profile existed) reads as a profile of those
  (orion/store/profile_columns.py). `init` adds the profile columns to a lead_profiles
  table made by an older `orion campaign init`.
- `tenant_stages`: the tenant registry, one row per tenant: its rollout stage, when it
  was set and the one before (orion/tenants/registry.py).

Ids and types are VARBINARY (UTF-8 bytes): comparisons are exact and byte-wise, with no
case folding, no trailing-space padding and the same order as the other stores. An event
id names one activity per tenant: writing it again updates that row in place.

Every statement is parameterized; the database name, the only identifier taken from the
URI, is checked against [A-Za-z0-9_$]. `init` creates the database when it is missing
(utf8mb4) and the tables. A password may come from the URI (percent-encoded) or, to keep
it out of command lines, from the MYSQL_PWD environment variable.

    orion store init mysql://root@127.0.0.1:3306/orion
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import date
from typing import Iterable, Sequence
from urllib.parse import unquote, urlsplit

from orion.activities import Activity
from orion.store.base import (
    DEFAULT_TENANT_STAGE,
    UNSTORABLE,
    ActivityStore,
    IndexEntries,
    StoredProfile,
    StoreError,
    TenantStage,
    WriteFailure,
    WriteResult,
    attributes_json,
    close_quietly,
    day_bounds,
    index_keys,
    leads_by_tenant,
    profiles_to_write,
    text_or_hex,
    with_backoff,
)
from orion.store.profile_columns import profile_columns, profile_of_columns

log = logging.getLogger(__name__)

URI_FORM = "mysql://USER:PASSWORD@HOST:PORT/DATABASE"
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_$]{1,64}")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS leads (
        tenant            VARBINARY(255) NOT NULL,
        lead_id           VARBINARY(255) NOT NULL,
        created_at        DATETIME(3)    NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        first_activity_at BIGINT         NOT NULL COMMENT 'epoch ms, UTC',
        last_activity_at  BIGINT         NOT NULL COMMENT 'epoch ms, UTC',
        PRIMARY KEY (tenant, lead_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS activities (
        id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        tenant      VARBINARY(255)  NOT NULL,
        event_id    VARBINARY(255)  NOT NULL,
        lead_id     VARBINARY(255)  NOT NULL,
        type        VARBINARY(255)  NOT NULL,
        occurred_at BIGINT          NOT NULL COMMENT 'epoch ms, UTC',
        attributes  JSON            NOT NULL,
        PRIMARY KEY (id),
        UNIQUE KEY activities_event (tenant, event_id),
        KEY activities_history (tenant, lead_id, occurred_at, event_id),
        KEY activities_lead_type_time (tenant, lead_id, type, occurred_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS activity_index (
        tenant         VARBINARY(255) NOT NULL,
        lead_id        VARBINARY(255) NOT NULL,
        type           VARBINARY(255) NOT NULL,
        day            DATE           NOT NULL COMMENT 'UTC day',
        activity_count INT UNSIGNED   NOT NULL,
        last_seen      BIGINT         NOT NULL COMMENT 'epoch ms of the newest activity that day',
        PRIMARY KEY (tenant, lead_id, type, day)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS lead_profiles (
        tenant     VARBINARY(255) NOT NULL,
        lead_id    VARBINARY(255) NOT NULL,
        attributes JSON           NOT NULL COMMENT 'lead attributes: email, first_name, ...',
        score      DOUBLE         NOT NULL DEFAULT 0,
        lists      JSON           NOT NULL COMMENT 'names of the lists the lead is in',
        data       MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL
                   COMMENT 'the encoded profile; NULL: a row written with SQL, of its columns only',
        next_wake  BIGINT         NULL COMMENT 'epoch ms its earliest waiting flow step is due',
        updated_at BIGINT         NULL COMMENT 'wall-clock epoch ms of the last change by the store',
        PRIMARY KEY (tenant, lead_id),
        KEY lead_profiles_next_wake (next_wake)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS tenant_stages (
        tenant         VARBINARY(255) NOT NULL,
        stage          VARCHAR(16)    NOT NULL COMMENT 'legacy, passive, active or deactivated',
        changed_at     BIGINT         NOT NULL COMMENT 'wall-clock epoch ms the stage was set',
        previous_stage VARCHAR(16)    NULL COMMENT 'the stage before it',
        PRIMARY KEY (tenant)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
)
# What `init` adds to a lead_profiles table an older `orion campaign init` made (tenant,
# lead_id, attributes, score, lists), checked against information_schema, so the same
# statements run on MySQL and MariaDB (only MariaDB has ADD COLUMN IF NOT EXISTS).
_PROFILE_COLUMNS = (
    ("data", "MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL "
             "COMMENT 'the encoded profile; NULL: a row written with SQL, of its columns only'"),
    ("next_wake", "BIGINT NULL COMMENT 'epoch ms its earliest waiting flow step is due'"),
    ("updated_at", "BIGINT NULL COMMENT 'wall-clock epoch ms of the last change by the store'"),
)
_PROFILE_WAKE_INDEX = "lead_profiles_next_wake"

_UPSERT_LEAD = (
    "INSERT INTO leads (tenant, lead_id, first_activity_at, last_activity_at) VALUES (%s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE first_activity_at = LEAST(first_activity_at, VALUES(first_activity_at)), "
    "last_activity_at = GREATEST(last_activity_at, VALUES(last_activity_at))"
)
_UPSERT_ACTIVITY = (
    "INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
    "VALUES (%s, %s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE lead_id = VALUES(lead_id), type = VALUES(type), "
    "occurred_at = VALUES(occurred_at), attributes = VALUES(attributes)"
)

# updated_at first: MySQL assigns left to right, so it still compares with the old row.
# A profile written again unchanged keeps its row as it was, updated_at included. The
# attributes, score and lists follow the data they are derived from.
_UPSERT_PROFILE = (
    "INSERT INTO lead_profiles (tenant, lead_id, data, next_wake, updated_at, attributes, score, lists) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE updated_at = IF(CAST(data AS BINARY) <=> CAST(VALUES(data) AS BINARY) "
    "AND next_wake <=> VALUES(next_wake), updated_at, VALUES(updated_at)), "
    "data = VALUES(data), next_wake = VALUES(next_wake), attributes = VALUES(attributes), "
    "score = VALUES(score), lists = VALUES(lists)"
)
# A profile's data, or (data NULL) the columns it is built from; the columns only for
# such rows, so a profile's bytes cross the network once.
_READ_PROFILE_COLUMNS = ("lead_id, data, IF(data IS NULL, attributes, NULL), IF(data IS NULL, score, NULL), "
                         "IF(data IS NULL, lists, NULL)")
# Leads (of one tenant) per statement of read_profiles, and tenants per statement of
# due_profiles.
KEYS_PER_STATEMENT = 500

# Server and client error codes worth a retry: lock wait timeout, deadlock, too many
# connections, cannot connect, server gone away, lost connection, shutdown in progress.
_TRANSIENT_CODES = {1205, 1213, 1040, 1053, 2003, 2006, 2013, 2055}
_CONNECTION_LOST = {2003, 2006, 2013, 2055, 1053}
_UNKNOWN_DATABASE = 1049
_NO_SUCH_TABLE = 1146
_ROW_REFUSED_CODES = {1366, 1406, 3140, 4025}  # bad string value, too long, bad JSON, check failed


def parse_mysql_uri(uri: str) -> dict:
    """mysql://USER:PASSWORD@HOST:PORT/DATABASE -> PyMySQL connect() arguments.

    Errors never repeat the password."""
    parts = urlsplit(uri)
    shown = redact(uri)
    try:
        port = parts.port or 3306
    except ValueError:
        raise StoreError(f"bad port in MySQL URI {shown!r}; write {URI_FORM}") from None
    database = parts.path[1:] if parts.path.startswith("/") else ""
    if parts.scheme != "mysql" or not parts.hostname or not parts.username:
        raise StoreError(f"bad MySQL URI {shown!r}; write {URI_FORM}, for example mysql://root@127.0.0.1:3306/orion")
    if not _DATABASE_NAME.fullmatch(database):
        raise StoreError(f"bad database name {database!r} in MySQL URI {shown!r}: 1 to 64 letters, digits, '_' or '$'; "
                         f"write {URI_FORM}")
    password = unquote(parts.password) if parts.password is not None else os.environ.get("MYSQL_PWD", "")
    return {
        "host": parts.hostname,
        "port": port,
        "user": unquote(parts.username),
        "password": password,
        "database": database,
    }


def redact(uri: str) -> str:
    """The URI with its password replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _code(err: Exception) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_transient(err: Exception) -> bool:
    import pymysql

    return isinstance(err, pymysql.err.OperationalError) and _code(err) in _TRANSIENT_CODES


def _row_refused(err: Exception) -> bool:
    """Whether an error is about the row's data (too long, bad value, check failed)
    rather than about the server."""
    import pymysql

    return (isinstance(err, (pymysql.err.DataError, pymysql.err.IntegrityError))
            or isinstance(err, pymysql.err.OperationalError) and _code(err) in _ROW_REFUSED_CODES)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


class MysqlStore(ActivityStore):
    def __init__(self, uri: str):
        self.uri = uri
        self._settings = parse_mysql_uri(uri)
        self._connection = None
        self._said_unreadable = False  # attributes that do not read: logged once

    def __repr__(self) -> str:
        return f"MysqlStore({redact(self.uri)!r})"

    # connections

    def _connect(self, with_database: bool = True):
        import pymysql

        settings = dict(self._settings)
        if not with_database:
            settings.pop("database")
        return pymysql.connect(
            **settings,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=10,
            # Strict mode: an over-long id is an error for that row, never truncated.
            init_command="SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'",
        )

    @property
    def connection(self):
        import pymysql

        if self._connection is None:
            try:
                self._connection = self._connect()
            except pymysql.err.OperationalError as err:
                where = f"{self._settings['host']}:{self._settings['port']}"
                if _code(err) == _UNKNOWN_DATABASE:
                    raise StoreError(f"MySQL database {self._settings['database']!r} does not exist on {where}; "
                                     f"create it and its tables with: orion store init {redact(self.uri)}") from err
                if _is_transient(err):
                    raise
                raise StoreError(f"cannot connect to MySQL at {where} as {self._settings['user']!r}: {err}") from err
        return self._connection

    def _drop_connection(self) -> None:
        close_quietly(self._connection)
        self._connection = None

    def _transaction(self, body):
        """Run body(cursor) in one transaction; deadlocks, lock timeouts and lost
        connections are retried with exponential backoff (reconnecting as needed)."""
        import pymysql

        def attempt():
            connection = self.connection
            try:
                connection.begin()
                with connection.cursor() as cursor:
                    result = body(cursor)
                connection.commit()
                return result
            except BaseException as err:
                if _code(err) in _CONNECTION_LOST:
                    self._drop_connection()
                else:
                    try:
                        connection.rollback()
                    except pymysql.err.Error:
                        self._drop_connection()
                raise

        try:
            return with_backoff(attempt, _is_transient)
        except pymysql.err.ProgrammingError as err:
            if _code(err) != _NO_SUCH_TABLE:
                raise
            raise StoreError(f"the MySQL store {redact(self.uri)} has no tables ({err.args[-1]}); "
                             f"create them with: orion store init {redact(self.uri)}") from err
        except pymysql.err.OperationalError as err:
            if not _is_transient(err):
                raise
            where = f"{self._settings['host']}:{self._settings['port']}"
            raise StoreError(f"MySQL at {where} kept failing: {err}; is the server running?") from err

    def _query(self, sql: str, params: Sequence) -> list[tuple]:
        def run(cursor):
            cursor.execute(sql, params)
            return cursor.fetchall()

        return self._transaction(run)

    def check_existing(self, role: str = "the legacy store") -> None:
        """StoreError unless the database exists and holds an activities table: a store
        Orion reads but never makes (the legacy one, `role`) is checked this way, so a
        mistyped name is said rather than created empty and used."""
        import pymysql

        where = f"{self._settings['host']}:{self._settings['port']}"
        try:
            found = self._query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                                "AND TABLE_NAME = 'activities'", ())
        except StoreError as err:
            if isinstance(err.__cause__, pymysql.err.OperationalError) and _code(err.__cause__) == _UNKNOWN_DATABASE:
                raise StoreError(f"{role} {redact(self.uri)}: MySQL database {self._settings['database']!r} does not "
                                 f"exist on {where}; check the name (it is never created)") from err
            raise
        if not found[0][0]:
            raise StoreError(f"{role} {redact(self.uri)}: database {self._settings['database']!r} on {where} has no "
                             "activities table, so it is not a legacy store; check the name (its tables are never "
                             "created)")

    def init(self, create_database: bool = True) -> None:
        """The database (unless `create_database` is False) and the tables, as needed."""
        import pymysql

        try:
            self._transaction(lambda cursor: None)
        except StoreError as err:
            if (not create_database or not isinstance(err.__cause__, pymysql.err.OperationalError)
                    or _code(err.__cause__) != _UNKNOWN_DATABASE):
                raise
            connection = self._connect(with_database=False)
            try:
                with connection.cursor() as cursor:
                    # An identifier cannot be a parameter; the name matched _DATABASE_NAME.
                    cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{self._settings['database']}` "
                                   "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            finally:
                connection.close()

        def create(cursor):
            for statement in _SCHEMA:
                cursor.execute(statement)
            _add_profile_columns(cursor)

        self._transaction(create)

    # writing

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        import pymysql

        rows, failed = [], []
        for a in activities:
            try:
                rows.append((a, (a.tenant, a.event_id, a.lead_id, a.type, a.occurred_at, attributes_json(a))))
            except ValueError as err:
                failed.append(WriteFailure(a, UNSTORABLE, str(err)))
        if not rows:
            return WriteResult(0, failed)
        rows.sort(key=lambda row: (row[1][0], row[1][1]))  # one lock order for concurrent writers

        def write_all(cursor):
            cursor.executemany(_UPSERT_LEAD, _lead_rows([a for a, _ in rows]))
            cursor.executemany(_UPSERT_ACTIVITY, [values for _, values in rows])

        try:
            self._transaction(write_all)
            return WriteResult(len(rows), failed)
        except pymysql.err.Error as err:
            if not _row_refused(err):
                raise StoreError(f"cannot write to MySQL {redact(self.uri)}: {err}") from err
        # Some row is refused (too long, say): write the rows one by one to find it.
        written = 0
        for activity, values in rows:
            def write_one(cursor, activity=activity, values=values):
                cursor.execute(_UPSERT_LEAD, _lead_rows([activity])[0])
                cursor.execute(_UPSERT_ACTIVITY, values)

            try:
                self._transaction(write_one)
                written += 1
            except pymysql.err.Error as err:
                if not _row_refused(err):
                    raise StoreError(f"cannot write to MySQL {redact(self.uri)}: {err}") from err
                failed.append(WriteFailure(activity, UNSTORABLE, f"MySQL refused the row: {err.args[-1]}"))
        return WriteResult(written, failed)

    # reading

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
               "WHERE tenant = %s AND lead_id = %s"]
        params: list = [tenant, lead_id]
        if since is not None:
            sql.append("AND occurred_at >= %s")
            params.append(since)
        if until is not None:
            sql.append("AND occurred_at < %s")
            params.append(until)
        type_list = list(types) if types is not None else None
        if type_list is not None:
            if not type_list:
                return []
            sql.append(f"AND type IN ({', '.join(['%s'] * len(type_list))})")
            params.extend(type_list)
        sql.append("ORDER BY occurred_at DESC, event_id DESC")
        if limit is not None:
            sql.append("LIMIT %s")
            params.append(max(limit, 0))
        rows = self._query(" ".join(sql), params)
        return [Activity(_text(e), _text(t), _text(l), _text(ty), int(at), self._attributes_of(e, attrs))
                for e, t, l, ty, at, attrs in rows]

    def _attributes_of(self, event_id, text) -> dict:
        """A row's attributes. Orion writes JSON objects; a legacy row may hold NULL or ''
        (no attributes, as the bootstrap reads them: {}) or text that does not read as an
        object, which is read as {} too and logged (the bootstrap dead-letters such a
        row, so a migration's comparison reports it as only in the legacy store)."""
        if text is None or text == "" or text == b"":
            return {}
        try:
            found = json.loads(text)
        except (ValueError, RecursionError):
            found = None
        if isinstance(found, dict):
            return found
        if not self._said_unreadable:  # once: a legacy table may hold many, read on every lead
            self._said_unreadable = True
            log.warning("activity %r of %s: attributes that are not a JSON object, read as none (and any more "
                        "such rows, not logged again)", text_or_hex(event_id)[:120], redact(self.uri))
        return {}

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM activities", ())[0][0])

    # the activity index

    def index_activities(self, activities: Sequence[Activity]) -> int:
        keys = index_keys(activities)
        if not keys:
            return 0

        def recount(cursor):
            set_entries = 0
            for tenant, lead_id, type_, day in keys:
                start, end = day_bounds(day)
                # Shared locks on the counted rows: a concurrent write to this lead, type
                # and day waits for this recount (or deadlocks and is retried).
                cursor.execute(
                    "SELECT COUNT(*), MAX(occurred_at) FROM activities WHERE tenant = %s AND lead_id = %s "
                    "AND type = %s AND occurred_at >= %s AND occurred_at < %s LOCK IN SHARE MODE",
                    (tenant, lead_id, type_, start, end),
                )
                count, last_seen = cursor.fetchone()
                if count:
                    set_entries += 1
                    cursor.execute(
                        "INSERT INTO activity_index (tenant, lead_id, type, day, activity_count, last_seen) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                        "activity_count = VALUES(activity_count), last_seen = VALUES(last_seen)",
                        (tenant, lead_id, type_, day, count, last_seen),
                    )
                else:
                    cursor.execute(
                        "DELETE FROM activity_index WHERE tenant = %s AND lead_id = %s AND type = %s AND day = %s",
                        (tenant, lead_id, type_, day),
                    )
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
        sql = ["SELECT type, day, activity_count, last_seen FROM activity_index WHERE tenant = %s AND lead_id = %s"]
        params: list = [tenant, lead_id]
        type_list = list(types) if types is not None else None
        if type_list is not None:
            if not type_list:
                return {}
            sql.append(f"AND type IN ({', '.join(['%s'] * len(type_list))})")
            params.extend(type_list)
        if since_day is not None:
            sql.append("AND day >= %s")
            params.append(since_day)
        return {(_text(type_), day): (int(count), int(last_seen))
                for type_, day, count, last_seen in self._query(" ".join(sql), params)}

    # lead profiles

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        import pymysql

        now = int(time.time() * 1000)
        # Sorted by key: one lock order for concurrent writers.
        rows = [(p.tenant, p.lead_id, p.data, p.next_wake, now, *profile_columns(p.data))
                for p in profiles_to_write(profiles)]
        if not rows:
            return len(profiles)
        try:
            self._transaction(lambda cursor: cursor.executemany(_UPSERT_PROFILE, rows))
        except pymysql.err.Error as err:
            if _row_refused(err):
                raise ValueError(f"MySQL refused a profile of the batch, which was not written: {err.args[-1]}") from err
            raise StoreError(f"cannot write to MySQL {redact(self.uri)}: {err}") from err
        return len(profiles)

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        found: dict[tuple[str, str], str] = {}
        for tenant, leads in leads_by_tenant(keys, KEYS_PER_STATEMENT):
            rows = self._query(f"SELECT {_READ_PROFILE_COLUMNS} FROM lead_profiles WHERE tenant = %s "
                               f"AND lead_id IN ({', '.join(['%s'] * len(leads))})", [tenant, *leads])
            found.update(((tenant, _text(lead_id)), data if data is not None else profile_of_columns(*columns))
                         for lead_id, data, *columns in rows)
        return [found.get((tenant, lead_id)) for tenant, lead_id in keys]

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        sql = "SELECT tenant, lead_id, next_wake FROM lead_profiles WHERE next_wake <= %s"
        if tenants is None:
            rows = self._query(sql, [due_by])
        else:
            wanted = sorted(set(tenants))
            rows = []
            for start in range(0, len(wanted), KEYS_PER_STATEMENT):
                chunk = wanted[start:start + KEYS_PER_STATEMENT]
                rows += self._query(f"{sql} AND tenant IN ({', '.join(['%s'] * len(chunk))})", [due_by, *chunk])
        # Sorted here (byte order of the UTF-8 ids is the order of their code points).
        return sorted((_text(tenant), _text(lead_id), int(wake)) for tenant, lead_id, wake in rows)

    def count_profiles(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM lead_profiles", ())[0][0])

    # the tenant registry

    def read_tenant_stages(self) -> list[TenantStage]:
        rows = self._query("SELECT tenant, stage, changed_at, previous_stage FROM tenant_stages", ())
        return sorted(TenantStage(_text(tenant), _text(stage), int(changed_at), _text(previous))
                      for tenant, stage, changed_at, previous in rows)

    def change_tenant_stage(self, tenant: str, stage: str, changed_at: int) -> tuple[TenantStage, bool]:
        def change(cursor):
            # FOR UPDATE locks the row (or, with none yet, the gap where it goes): a second
            # change waits for this one, or deadlocks with it and is retried, re-reading.
            cursor.execute("SELECT tenant, stage, changed_at, previous_stage FROM tenant_stages WHERE tenant = %s "
                           "FOR UPDATE", (tenant,))
            found = cursor.fetchone()
            current = None if found is None else TenantStage(_text(found[0]), _text(found[1]), int(found[2]),
                                                              _text(found[3]))
            if current is not None and current.stage == stage:
                return current, False
            row = TenantStage(tenant, stage, changed_at, DEFAULT_TENANT_STAGE if current is None else current.stage)
            cursor.execute("INSERT INTO tenant_stages (tenant, stage, changed_at, previous_stage) "
                           "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE stage = VALUES(stage), "
                           "changed_at = VALUES(changed_at), previous_stage = VALUES(previous_stage)", tuple(row))
            return row, True

        return self._transaction(change)

    def close(self) -> None:
        self._drop_connection()


def _add_profile_columns(cursor) -> None:
    """Bring a lead_profiles table an older `orion campaign init` made up to this
    schema: the profile columns and the next_wake index it lacks (its rows keep their
    attributes, score and lists, and read as profiles of those)."""
    cursor.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                   "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'lead_profiles'")
    have = {_text(name).lower() for name, in cursor.fetchall()}
    changes = [f"ADD COLUMN {name} {definition}" for name, definition in _PROFILE_COLUMNS if name not in have]
    cursor.execute("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                   "AND TABLE_NAME = 'lead_profiles' AND INDEX_NAME = %s LIMIT 1", (_PROFILE_WAKE_INDEX,))
    if cursor.fetchone() is None:
        changes.append(f"ADD KEY {_PROFILE_WAKE_INDEX} (next_wake)")
    if changes:
        cursor.execute(f"ALTER TABLE lead_profiles {', '.join(changes)}")


def _lead_rows(activities: Sequence[Activity]) -> list[tuple[str, str, int, int]]:
    """(tenant, lead_id, first, last) per lead of a batch, sorted."""
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    for a in activities:
        key = (a.tenant, a.lead_id)
        first, last = spans.get(key, (a.occurred_at, a.occurred_at))
        spans[key] = (min(first, a.occurred_at), max(last, a.occurred_at))
    return [(tenant, lead, first, last) for (tenant, lead), (first, last) in sorted(spans.items())]
