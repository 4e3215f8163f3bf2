"""The real services the store tests run against, as session fixtures (conftest.py imports
them): the Bigtable emulator on a free port, and a MariaDB server that the session starts
itself (mariadbd on a throwaway data dir and a free port, root with no password; see
orion/testing/mariadb.py) with a database with a random name, created for the session
and dropped after it. The server starts only when a test needs it and stops at the end
of the session. With ORION_TEST_MYSQL=HOST:PORT set, that running server is used
instead. A missing service fails the tests with what to install; nothing is skipped or
mocked.

    .venv/bin/python -m pytest -q tests/test_store_contract.py tests/test_store_cli.py
"""
from __future__ import annotations

import os
import uuid

import pytest

from orion.testing.emulators import BigtableEmulator, EmulatorMissing
from orion.testing.mariadb import MariaDBMissing, MariaDBServer, start_or_reuse

BIGTABLE_PROJECT, BIGTABLE_INSTANCE = "orion-test", "orion-local"

# The session's MariaDB server, once the mysql_server fixture has started it; the helpers
# below connect to it.
_session_mysql: MariaDBServer | None = None


@pytest.fixture(scope="session")
def bigtable_emulator():
    """A running cbtemulator; BIGTABLE_EMULATOR_HOST points at it for the session."""
    try:
        emulator = BigtableEmulator.start()
    except EmulatorMissing as err:
        pytest.fail(f"the Bigtable store tests need the Bigtable emulator: {err}", pytrace=False)
    previous = os.environ.get(BigtableEmulator.env_var)
    os.environ[BigtableEmulator.env_var] = emulator.host
    yield emulator
    if previous is None:
        os.environ.pop(BigtableEmulator.env_var, None)
    else:
        os.environ[BigtableEmulator.env_var] = previous
    emulator.stop()


@pytest.fixture(scope="session")
def mysql_server():
    """The session's MariaDB server (started here, stopped when the session ends)."""
    global _session_mysql
    # pytest.fail outside the except clauses, so the report is the message alone, without
    # the exception it replaces chained to it.
    failure = None
    try:
        server = start_or_reuse()
    except MariaDBMissing as err:
        failure = f"the MySQL tests need MariaDB: {err}"
    except Exception as err:  # installed, but it would not start or answer: say why
        failure = f"the MySQL tests could not get a MariaDB server: {err}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    _session_mysql = server
    try:
        yield server
    finally:
        _session_mysql = None
        server.stop()


def _running_mysql() -> MariaDBServer:
    if _session_mysql is None:
        raise RuntimeError("no MariaDB server is running: the test or fixture must request the mysql_server "
                           "(or mysql_database) fixture before connecting")
    return _session_mysql


def _mysql_connect(database: str | None = None):
    """A root connection (autocommit) to the session's server, optionally to `database`."""
    return _running_mysql().connect(database)


@pytest.fixture(scope="session")
def mysql_database(mysql_server):
    """The name of a fresh, empty database, dropped at the end of the session."""
    name = f"orion_test_{uuid.uuid4().hex[:12]}"
    connection = _mysql_connect()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    connection.close()


def mysql_uri(database: str) -> str:
    return _running_mysql().uri(database)


def drop_mysql_tables(database: str) -> None:
    """Empty the session database between tests (its tables, not the database)."""
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{database}`.activities, `{database}`.leads, "
                           f"`{database}`.activity_index, `{database}`.lead_profiles, "
                           f"`{database}`.rollups, `{database}`.rollup_segments, `{database}`.tenant_stages")
    finally:
        connection.close()


def bigtable_uri(table: str | None = None) -> str:
    """A URI naming a table no other test uses."""
    return f"bigtable://{BIGTABLE_PROJECT}/{BIGTABLE_INSTANCE}/{table or 't' + uuid.uuid4().hex[:16]}"
