"""What one backend does beyond the shared contract: the Bigtable row-key layout, Bigtable
retrying and then reporting rows it keeps refusing, MySQL refusing over-long ids row by
row and creating its database, and URIs that never show a password.

    .venv/bin/python -m pytest -q tests/test_store_backends.py
"""
from __future__ import annotations

import time
import uuid

import pymysql
import pytest
from conftest import T0
from store_services import (
    BIGTABLE_INSTANCE,
    BIGTABLE_PROJECT,
    MYSQL_HOST,
    MYSQL_PORT,
    bigtable_uri,
    drop_mysql_tables,
    mysql_uri,
)

from orion.activities import Activity
from orion.store import StoreError, open_store
from orion.store.base import STORE_WRITE_FAILED, UNSTORABLE, activity_day
from orion.store.bigtable import (
    SALT_BUCKETS,
    activity_row_key,
    cell_timestamp,
    index_row_key,
    lead_salt,
    parse_activity_row_key,
    parse_index_row_key,
)

@pytest.fixture
def mysql_store_uri(mysql_database):
    """The session database, emptied after the test."""
    yield mysql_uri(mysql_database)
    drop_mysql_tables(mysql_database)


ODD = ["", "a#b", "%23", "a/b", "ü😀", "x" * 300, "a\nb", "##", "%"]


def test_activity_row_key_layout():
    key = activity_row_key("acme", "7", T0, "e1")
    tenant, salt, lead, reversed_time, event = key.decode("ascii").split("#")
    assert (tenant, lead, event) == ("acme", "7", "e1")
    assert salt == lead_salt("7") and len(salt) == 2 and int(salt, 16) < SALT_BUCKETS
    assert reversed_time == f"{253_402_300_799_999 - T0:015d}"
    assert activity_row_key("ac#me", "l/7", T0, "e#1") == f"ac%23me#{lead_salt('l/7')}#l%2F7#{reversed_time}#e%231".encode()


def test_row_keys_round_trip_any_id_and_never_confuse_fields():
    keys = set()
    for tenant in ODD:
        for lead in ODD:
            for event in ODD:
                key = activity_row_key(tenant, lead, T0, event)
                assert key.count(b"#") == 4
                assert parse_activity_row_key(key) == (tenant, lead, T0, event)
                keys.add(key)
    assert len(keys) == len(ODD) ** 3
    index_key = index_row_key("a#b", "%23", "custom type#1", activity_day(T0))
    assert parse_index_row_key(index_key) == ("a#b", "%23", "custom type#1", activity_day(T0))


def test_newer_activities_sort_first_within_a_lead():
    times = [-62_135_596_800_000, -1, 0, 1, T0, 253_402_300_799_999]
    keys = [activity_row_key("acme", "7", t, "e") for t in times]
    assert sorted(keys) == list(reversed(keys))
    assert len({len(k) for k in keys}) == 1  # fixed width


def test_the_salt_is_stable_and_spreads_leads():
    assert lead_salt("lead-42") == lead_salt("lead-42") == "d5"  # the same in every process, forever
    assert len({lead_salt(f"lead-{n}") for n in range(10_000)}) == SALT_BUCKETS


def test_bigtable_retries_then_reports_rows_it_keeps_refusing(bigtable_emulator):
    from google.cloud import bigtable

    uri = bigtable_uri()
    table_id = uri.rsplit("/", 1)[1]
    client = bigtable.Client(project=BIGTABLE_PROJECT, admin=True)
    # A table without the store's column family: the emulator refuses every row.
    client.instance(BIGTABLE_INSTANCE).table(table_id).create(column_families={"other": None})
    store = open_store(uri)
    store.first_delay = 0.05
    batch = [Activity("e1", "acme", "7", "open_email", T0, {}), Activity("e2", "acme", "8", "open_email", T0, {})]
    started = time.monotonic()
    result = store.write_with_failures(batch)
    elapsed = time.monotonic() - started
    assert result.written == 0
    assert [(f.activity, f.reason) for f in result.failed] == [(a, STORE_WRITE_FAILED) for a in batch]
    assert all(f"after {store.attempts} attempts" in f.detail for f in result.failed)
    assert elapsed >= 0.05 * (2 ** (store.attempts - 1) - 1)  # exponential backoff between attempts
    store.close()


def test_bigtable_cells_carry_the_activity_time_so_a_rewrite_keeps_one_version(bigtable_emulator):
    """The store builds its MutateRows requests itself (raw protobuf): every cell, of the
    activity and of its index entry, must hold the activity's time (clamped at the epoch)
    as its timestamp, so rewriting and reindexing replace cells instead of adding any."""
    from google.cloud import bigtable

    batch = [Activity("e1", "acme", "7", "open_email", T0, {"b": "ü", "a": 1}),
             Activity("e2", "acme", "7", "open_email", T0 + 5, {}),
             Activity("e3", "acme", "7", "open_email", -86_400_001, {})]  # before 1970
    uri = bigtable_uri()
    with open_store(uri) as store:
        store.init()
        for _ in range(2):
            assert store.write(batch) == len(batch)
            store.index_activities(batch)
    table_id = uri.rsplit("/", 1)[1]
    instance = bigtable.Client(project=BIGTABLE_PROJECT).instance(BIGTABLE_INSTANCE)
    for a in batch:
        cells = instance.table(table_id).read_row(activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id)).cells["a"]
        assert {name: [(c.value, c.timestamp) for c in versions] for name, versions in cells.items()} == {
            b"type": [(b"open_email", cell_timestamp(a.occurred_at))],
            b"attributes": [((b'{"a":1,"b":"\xc3\xbc"}' if a.attributes else b"{}"), cell_timestamp(a.occurred_at))],
            b"occurred_at": [(str(a.occurred_at).encode(), cell_timestamp(a.occurred_at))],
        }
    for day in {activity_day(a.occurred_at) for a in batch}:
        cells = instance.table(table_id + "-index").read_row(index_row_key("acme", "7", "open_email", day)).cells["e"]
        assert {event: [(c.value, c.timestamp) for c in versions] for event, versions in cells.items()} == {
            a.event_id.encode(): [(str(a.occurred_at).encode(), cell_timestamp(a.occurred_at))]
            for a in batch if activity_day(a.occurred_at) == day
        }


def test_bigtable_store_on_a_missing_table_says_to_run_init(bigtable_emulator):
    uri = bigtable_uri()
    with open_store(uri) as store:
        with pytest.raises(StoreError, match=f"orion store init {uri}"):
            store.write([Activity("e1", "acme", "7", "open_email", T0, {})])


def test_mysql_refuses_an_over_long_id_and_writes_the_rest(mysql_store_uri):
    with open_store(mysql_store_uri) as store:
        store.init()
        good = [Activity("ok1", "acme", "7", "open_email", T0, {}), Activity("ok2", "acme", "7", "open_email", T0 + 1, {})]
        too_long = Activity("x" * 256, "acme", "7", "open_email", T0, {})
        result = store.write_with_failures([good[0], too_long, good[1]])
        assert result.written == 2
        assert [(f.activity, f.reason) for f in result.failed] == [(too_long, UNSTORABLE)]
        assert "too long" in result.failed[0].detail
        assert store.history("acme", "7") == [good[1], good[0]]


def test_mysql_keeps_the_legacy_schema(mysql_database, mysql_store_uri):
    with open_store(mysql_store_uri) as store:
        store.init()
        store.write([Activity("e1", "acme", "7", "open_email", T0, {"email": "x"}),
                     Activity("e2", "acme", "7", "open_email", T0 + 5, {"email": "y"})])
        store.write([Activity("e1", "acme", "7", "open_email", T0, {"email": "x"})])
    connection = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", database=mysql_database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, event_id FROM activities ORDER BY id")
            rows = cursor.fetchall()
            assert [event for _, event in rows] == [b"e1", b"e2"]  # a rewrite keeps the row and its id
            cursor.execute("SELECT tenant, lead_id, first_activity_at, last_activity_at FROM leads")
            assert cursor.fetchall() == ((b"acme", b"7", T0, T0 + 5),)
    finally:
        connection.close()


def test_mysql_init_creates_a_missing_database(mysql_database):  # the fixture checks the server
    name = f"orion_test_{uuid.uuid4().hex[:12]}"
    try:
        with open_store(mysql_uri(name)) as store:
            with pytest.raises(StoreError, match="does not exist.*orion store init"):
                store.history("acme", "7")
            store.init()
            assert store.history("acme", "7") == []
    finally:
        connection = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root")
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


def test_mysql_uris_never_show_the_password():
    store = open_store("mysql://orion:s3cr%40t@db.example:3307/orion")
    assert "s3cr" not in repr(store)
    assert store._settings["password"] == "s3cr@t" and store._settings["port"] == 3307
