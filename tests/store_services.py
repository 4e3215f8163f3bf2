"""The real services the store tests run against, as session fixtures (conftest.py imports
them): the Bigtable emulator on a free port, and a MariaDB database with a random name on
127.0.0.1:3306 (root, no password), created for the session and dropped after it. A
missing service fails the tests with what to install or start; nothing is skipped or
mocked.

    .venv/bin/python -m pytest -q tests/test_store_contract.py tests/test_store_cli.py
"""
from __future__ import annotations

import os
import uuid

import pytest

from orion.testing.emulators import BigtableEmulator, EmulatorMissing

MYSQL_HOST, MYSQL_PORT, MYSQL_USER = "127.0.0.1", 3306, "root"
BIGTABLE_PROJECT, BIGTABLE_INSTANCE = "orion-test", "orion-local"


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


def _mysql_connect():
    import pymysql

    try:
        return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password="",
                               connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as err:
        pytest.fail(
            f"the MySQL store tests need MariaDB on {MYSQL_HOST}:{MYSQL_PORT}, user root with no "
            f"password (DESIGN.md, Real components), and could not connect: {err}. Install and "
            "start it: apt-get install mariadb-server && service mariadb start",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def mysql_database():
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
    return f"mysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{database}"


def drop_mysql_tables(database: str) -> None:
    """Empty the session database between tests (its tables, not the database)."""
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{database}`.activities, `{database}`.leads, "
                           f"`{database}`.activity_index")
    finally:
        connection.close()


def bigtable_uri(table: str | None = None) -> str:
    """A URI naming a table no other test uses."""
    return f"bigtable://{BIGTABLE_PROJECT}/{BIGTABLE_INSTANCE}/{table or 't' + uuid.uuid4().hex[:16]}"
