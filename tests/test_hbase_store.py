"""What the HBase store does beyond the shared contract (tests/test_store_contract.py runs
that against HBase too): its URIs, the cells and timestamps it writes (read back with bare
Thrift calls, not through the store), the families `init` makes, refusing a row HBase
cannot take while writing the rest, retrying and then reporting rows HBase keeps failing,
a missing table or server named with what to do, an activity deleted by hand and written
again, and connections the Thrift server closes while idle (reopened; a scan resumes after
its last row). A real standalone HBase and its Thrift 2 server (tests/hbase_services.py).

    .venv/bin/python -m pytest -q tests/test_hbase_store.py
"""
from __future__ import annotations

import time

import pytest
from conftest import DAY, T0
from hbase_services import IDLE_CLOSE_MS, hbase_uri

from orion.activities import Activity
from orion.store import StoreError, open_store
from orion.store.base import STORE_WRITE_FAILED, UNSTORABLE, StoredProfile, activity_day
from orion.store.bigtable import activity_row_key, index_row_key, profile_row_key, wake_value
from orion.store.hbase import MAX_ROW_KEY, hbase_thrift, parse_hbase_uri, thrift_client
from orion.testing.emulators import free_port
from orion.testing.hbase import HBaseServer, HBaseUnavailable


@pytest.fixture
def uri(hbase_server):
    return hbase_uri()


@pytest.fixture
def raw(hbase_server):
    """Bare Thrift 2 calls to the session's HBase, each on a connection of its own (the
    server closes idle ones): `raw.cells(table, key)` gives {(family, qualifier):
    [(value, timestamp), ...]} with every version HBase keeps; `raw.call(method, *args)`."""
    host, port = hbase_server.address.split(":")
    thrift = hbase_thrift()

    class Raw:
        def call(self, method: str, *args):
            client = thrift_client(host, int(port))
            try:
                return getattr(client, method)(*args)
            finally:
                client.close()

        def cells(self, table: str, key: bytes) -> dict:
            row, = self.call("getMultiple", table.encode(), [thrift.TGet(key, None, 10)])
            found: dict = {}
            for cell in row.columnValues:
                found.setdefault((cell.family, cell.qualifier), []).append((cell.value, cell.timestamp))
            return found

    return Raw()


def test_uris_name_the_thrift_server_and_the_table():
    assert parse_hbase_uri("hbase://127.0.0.1:9191/activities") == ("127.0.0.1", 9191, "activities")
    assert parse_hbase_uri("hbase://hbase-thrift.example/activities") == ("hbase-thrift.example", 9090, "activities")
    assert parse_hbase_uri("hbase://h:1/marketing:act-1.v2") == ("h", 1, "marketing:act-1.v2")
    for bad in ("hbase://h:1", "hbase://h:1/", "hbase:///t", "hbase://h:x/t", "hbase://h/a/b", "hbase://h/.t",
                "hbase://h/t?framed=1", "hbase://h/hbase:meta", "hbase://h/a b", "hbase://h/ns:", "bigtable://h/t"):
        with pytest.raises(StoreError, match="bad HBase"):
            parse_hbase_uri(bad)
    with pytest.raises(StoreError, match="write hbase://HOST:PORT/TABLE"):
        open_store("hbase://h:1")
    store = open_store("hbase://127.0.0.1:1/activities")  # constructing connects to nothing
    assert (store.table_id, store.index_table_id, store.profile_table_id) == (
        "activities", "activities-index", "activities-profiles")


def test_cells_carry_the_activity_time_so_a_rewrite_keeps_one_version(uri, raw):
    batch = [Activity("e1", "acme", "7", "open_email", T0, {"b": "ü", "a": 1}),
             Activity("e2", "acme", "7", "open_email", T0 + 5, {}),
             Activity("e3", "acme", "7", "open_email", -86_400_001, {})]  # before 1970: timestamp 0
    with open_store(uri) as store:
        store.init()
        for _ in range(2):
            assert store.write(batch) == len(batch)
            store.index_activities(batch)
    table = uri.rsplit("/", 1)[1]
    for a in batch:
        when = max(a.occurred_at, 0)
        assert raw.cells(table, activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id)) == {
            (b"a", b"type"): [(b"open_email", when)],
            (b"a", b"attributes"): [((b'{"a":1,"b":"\xc3\xbc"}' if a.attributes else b"{}"), when)],
            (b"a", b"occurred_at"): [(str(a.occurred_at).encode(), when)],
        }
    for day in {activity_day(a.occurred_at) for a in batch}:
        assert raw.cells(table + "-index", index_row_key("acme", "7", "open_email", day)) == {
            (b"e", a.event_id.encode()): [(str(a.occurred_at).encode(), max(a.occurred_at, 0))]
            for a in batch if activity_day(a.occurred_at) == day}


def test_profiles_keep_one_cell_version_and_an_empty_wake_for_a_lead_that_waits_no_more(uri, raw):
    with open_store(uri) as store:
        store.init()
        for _ in range(2):  # a retry rewrites the same cells
            store.write_profiles([StoredProfile("acme", "7", "first", T0)])
        store.write_profiles([StoredProfile("acme", "7", "second", T0 + 1)])
        assert store.count() == 0 and store.history("acme", "7") == []  # nothing in the activity table
        table = uri.rsplit("/", 1)[1] + "-profiles"
        assert raw.cells(table, profile_row_key("acme", "7")) == {
            (b"p", b"data"): [(b"second", 0)], (b"p", b"next_wake"): [(wake_value(T0 + 1), 0)]}
        store.write_profiles([StoredProfile("acme", "7", "third")])  # waits no more
        assert raw.cells(table, profile_row_key("acme", "7")) == {
            (b"p", b"data"): [(b"third", 0)], (b"p", b"next_wake"): [(b"", 0)]}
        assert store.due_profiles(2 ** 62) == []
        store.write_profiles([StoredProfile("acme", "7", "fourth", T0 - DAY)])  # and waits again
        assert store.due_profiles(T0) == [("acme", "7", T0 - DAY)]


def test_init_makes_one_version_families_where_a_delete_hides_only_older_writes(uri, raw):
    with open_store(uri) as store:
        store.init()
        thrift = hbase_thrift()
        for table_id, family in ((store.table_id, b"a"), (store.index_table_id, b"e"), (store.profile_table_id, b"p")):
            descriptor = raw.call("getTableDescriptor", thrift.TTableName(None, table_id.encode()))
            column, = descriptor.columns
            assert (column.name, column.maxVersions, column.attributes[b"NEW_VERSION_BEHAVIOR"]) == (
                family, 1, b"true")
        # An activity deleted by hand and written again (a bootstrap repairing its target)
        # is there again, although its cells are older than the delete.
        activity = Activity("e1", "acme", "7", "open_email", T0 - 365 * DAY, {"n": 1})
        store.write([activity])
        store.delete_rows(store.table_id, [activity_row_key("acme", "7", activity.occurred_at, "e1")])
        assert store.history("acme", "7") == [] and store.count() == 0
        store.write([activity])
        assert store.history("acme", "7") == [activity] and store.count() == 1
        store.write_profiles([StoredProfile("acme", "7", "kept", T0)])
        store.delete_rows(store.profile_table_id, [profile_row_key("acme", "7")])
        store.write_profiles([StoredProfile("acme", "7", "again", T0)])
        assert store.read_profiles([("acme", "7")]) == ["again"] and store.due_profiles(T0) == [("acme", "7", T0)]


def test_rows_hbase_cannot_take_are_unstorable_and_the_rest_written(uri):
    good = [Activity(f"ok{n}", "acme", "7", "open_email", T0 + n, {"n": n}) for n in range(4)]
    long_key = Activity("x" * MAX_ROW_KEY, "acme", "7", "open_email", T0, {})
    # One cell over the server's hbase.client.keyvalue.maxsize (10 MB): the server refuses
    # the request it is in, which the store splits until that row is alone.
    huge = Activity("huge", "acme", "7", "open_email", T0 + 9, {"blob": "x" * 11_000_000})
    with open_store(uri) as store:
        store.init()
        result = store.write_with_failures([good[0], huge, good[1], long_key, good[2], good[3]])
        assert result.written == 4
        assert [(f.activity.event_id, f.reason) for f in result.failed] == [
            ("x" * MAX_ROW_KEY, UNSTORABLE), ("huge", UNSTORABLE)]
        assert "longer than HBase's 32,767" in result.failed[0].detail
        assert "hbase.client.keyvalue.maxsize" in result.failed[1].detail
        assert store.history("acme", "7") == sorted(good, key=lambda a: a.occurred_at, reverse=True)
        with pytest.raises(ValueError, match="refused"):
            store.write_profiles([StoredProfile("acme", "7", "ok"), StoredProfile("acme", "8", "y" * 11_000_000)])


def test_rows_hbase_keeps_failing_are_retried_then_reported(uri, raw):
    table = uri.rsplit("/", 1)[1]
    thrift = hbase_thrift()
    # A table without the store's column family: HBase fails every put of the store.
    raw.call("createTable", thrift.TTableDescriptor(thrift.TTableName(None, table.encode()),
                                                    [thrift.TColumnFamilyDescriptor(b"other")]), None)
    store = open_store(uri)
    store.first_delay = 0.05
    slept = []
    store.sleep = slept.append  # the backoff, recorded instead of waited for
    batch = [Activity("e1", "acme", "7", "open_email", T0, {}), Activity("e2", "acme", "8", "open_email", T0, {})]
    result = store.write_with_failures(batch)
    store.close()
    assert result.written == 0
    assert [(f.activity, f.reason) for f in result.failed] == [(a, STORE_WRITE_FAILED) for a in batch]
    assert all(f"after {store.attempts} attempts" in f.detail and "NoSuchColumnFamily" in f.detail
               for f in result.failed)
    # exponential backoff between attempts
    assert slept == [min(0.05 * 2 ** n, store.max_delay) for n in range(store.attempts - 1)]
    with open_store(uri) as store:
        store.init()  # adds the missing family
        assert store.write(batch) == 2


def test_a_missing_table_says_to_run_init(uri):
    with open_store(uri) as store:
        for operation in (lambda: store.write([Activity("e1", "acme", "7", "open_email", T0, {})]),
                          lambda: store.history("acme", "7"),
                          lambda: store.read_profiles([("acme", "7")]),
                          lambda: store.write_profiles([StoredProfile("acme", "7", "x")])):
            with pytest.raises(StoreError, match=f"missing; create it with: orion store init {uri}"):
                operation()


def test_a_server_that_is_not_there_is_named_with_how_to_start_it():
    port = free_port()
    store = open_store(f"hbase://127.0.0.1:{port}/activities")
    store.first_delay = 0.01
    with pytest.raises(StoreError, match=f"cannot reach HBase's Thrift server at 127.0.0.1:{port}.*"
                                         f"hbase thrift2 start -p {port}"):
        store.history("acme", "7")


def test_a_connection_the_server_closed_while_idle_is_reopened(uri):
    with open_store(uri) as store:
        store.init()
        store.write([Activity("e1", "acme", "7", "open_email", T0, {})])
        first = store._client
        time.sleep(IDLE_CLOSE_MS / 1000 + 1)  # the Thrift server closes the connection meanwhile
        store.write([Activity("e2", "acme", "7", "open_email", T0 + 1, {})])
        assert store._client is not first, "the write went through a new connection"
        assert [a.event_id for a in store.history("acme", "7")] == ["e2", "e1"]


def test_a_scan_whose_connection_breaks_resumes_after_its_last_row(uri):
    lead = [Activity(f"e{n:05d}", "acme", "7", "visit_web_page", T0 + n, {"n": n}) for n in range(5_000)]
    with open_store(uri) as store:
        store.init()
        store.write(lead)
        rows = store.scan()
        first = [next(rows) for _ in range(10)]  # the scanner has handed over its first batch
        time.sleep(IDLE_CLOSE_MS / 1000 + 1)  # the connection is closed under the open scanner
        rest = list(rows)
    assert first + rest == sorted(lead, key=lambda a: activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id))


def test_starting_hbase_without_java_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(HBaseUnavailable, match="apt-get install openjdk-17-jre-headless"):
        HBaseServer(tmp_path / "hbase").start()


def test_the_type_filter_survives_quotes_parentheses_and_non_ascii(uri):
    """history(types=...) runs as HBase filter-language string literals on the region
    server; what a type holds must not change what they match."""
    types = ["it's", "a) OR (b", "ünï©ødé", "binary:x", "''", "t,=,"]
    batch = [Activity(f"e{n}", "acme", "7", t, T0 + n, {"t": t}) for n, t in enumerate(types)]
    with open_store(uri) as store:
        store.init()
        store.write(batch)
        for activity in batch:
            assert store.history("acme", "7", types=[activity.type]) == [activity]
        assert store.history("acme", "7", types=types[:2], limit=1) == [batch[1]]
        assert store.history("acme", "7", types=["it", "a", "b", "binary", "'"]) == []
