"""What one backend does beyond the shared contract: the Bigtable row-key layout, Bigtable
retrying and then reporting rows it keeps refusing, the Bigtable store merging raw
ReadRows chunks and resuming a read, MySQL refusing over-long ids row by row and creating
its database, URIs that never show a password, and where each backend keeps lead profiles.

    .venv/bin/python -m pytest -q tests/test_store_backends.py
"""
from __future__ import annotations

import time
import uuid

import pytest
from conftest import T0
from hbase_services import hbase_uri
from store_services import (
    BIGTABLE_INSTANCE,
    BIGTABLE_PROJECT,
    _mysql_connect,
    bigtable_uri,
    drop_mysql_tables,
    mysql_uri,
)

from orion.activities import Activity
from orion.store import StoreError, open_store
from orion.store.base import STORE_WRITE_FAILED, UNSTORABLE, StoredProfile, activity_day
from orion.store.bigtable import (
    SALT_BUCKETS,
    activity_row_key,
    cell_timestamp,
    index_row_key,
    lead_prefix,
    lead_salt,
    merge_row_chunks,
    parse_activity_row_key,
    parse_index_row_key,
    parse_profile_row_key,
    parse_wake_value,
    profile_row_key,
    read_rows_request,
    wake_value,
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


def _raw_read(store, request) -> list:
    """The ReadRowsResponse messages (the client's type) the emulator answers request with."""
    return list(store._client.table_data_client.read_rows(request=request))


def _rechunked(responses: list, piece: int, per_response: int) -> list:
    """The rows of real responses sent the other ways the protocol allows: every value
    split into chunks of at most `piece` bytes, family and qualifier omitted when they
    repeat the previous cell's, every row first begun and reset, and the chunks spread
    over responses of `per_response` chunks."""
    from google.cloud.bigtable_v2.types import bigtable

    raw = bigtable.ReadRowsResponse.pb()
    rows, row = [], []
    for response in responses:
        for chunk in bigtable.ReadRowsResponse.pb(response).chunks:
            row.append(chunk)
            if chunk.commit_row:
                rows.append(row)
                row = []
    holder = raw()  # chunks are built in it, then copied out
    chunks = []
    for row in rows:
        begun = holder.chunks.add()
        begun.CopyFrom(row[0])
        begun.commit_row = False
        chunks += [begun, holder.chunks.add(reset_row=True)]
        family = qualifier = None
        for n, cell in enumerate(row):
            value = cell.value
            pieces = [value[i:i + piece] for i in range(0, len(value), piece)] or [b""]
            for i, part in enumerate(pieces):
                chunk = holder.chunks.add(value=part)
                if i == 0:
                    if n == 0:
                        chunk.row_key = cell.row_key
                    if cell.family_name.value != family:
                        chunk.family_name.value = family = cell.family_name.value
                        qualifier = None
                    if cell.qualifier.value != qualifier:
                        chunk.qualifier.value = qualifier = cell.qualifier.value
                    chunk.timestamp_micros = cell.timestamp_micros
                if i < len(pieces) - 1:
                    chunk.value_size = len(value)
                chunks.append(chunk)
            chunk.commit_row = n == len(row) - 1
    out = []
    for start in range(0, len(chunks), per_response):
        response = raw()
        for chunk in chunks[start:start + per_response]:
            response.chunks.add().CopyFrom(chunk)
        out.append(bigtable.ReadRowsResponse.wrap(response))
    return out


def test_bigtable_reads_merge_values_split_over_chunks_and_reset_rows(bigtable_emulator):
    """The store merges ReadRows chunks itself. The emulator sends every cell whole, in one
    chunk; Bigtable may split a large value over several chunks, omit a repeated family
    and qualifier, and reset a row it has begun. The same real rows, sent those ways, must
    merge to the same rows, cells and timestamps."""
    from google.cloud.bigtable import row_filters as rf

    big = Activity("e-big", "acme", "7", "open_email", T0, {"blob": "ü" * 300_000})
    small = [Activity(f"e{n}", "acme", "7", ("click", "open_email")[n % 2], T0 + n, {"n": n}) for n in range(5)]
    uri = bigtable_uri()
    with open_store(uri) as store:
        store.init()
        store.write([big, *small])
        request = read_rows_request(store._table(store.table_id).name, [(None, None)],
                                    rf.CellsColumnLimitFilter(1))
        responses = _raw_read(store, request)
        expected = list(merge_row_chunks(responses))
        assert [row.key for row in expected] == sorted(
            activity_row_key(a.tenant, a.lead_id, a.occurred_at, a.event_id) for a in [big, *small])
        by_key = {row.key: row for row in expected}
        big_row = by_key[activity_row_key("acme", "7", T0, "e-big")]
        assert big_row.cells["a"][b"attributes"][0].value == ('{"blob":"' + "ü" * 300_000 + '"}').encode()
        assert {q: [tuple(c) for c in v] for q, v in big_row.cells["a"].items() if q != b"attributes"} == {
            b"type": [(b"open_email", T0 * 1000)], b"occurred_at": [(str(T0).encode(), T0 * 1000)]}
        for piece, per_response in ((1 << 20, 1), (1_000, 3), (7, 500)):
            assert list(merge_row_chunks(_rechunked(responses, piece, per_response))) == expected
        assert store.history("acme", "7") == sorted([big, *small], key=lambda a: (a.occurred_at, a.event_id), reverse=True)


def test_bigtable_history_with_a_type_filter_and_a_limit_reads_only_what_it_needs(bigtable_emulator):
    lead = [Activity(f"e{n:02d}", "acme", "7", ("click", "open_email", "visit")[n % 3], T0 + n // 2, {"n": n})
            for n in range(30)]  # two activities per time: ties broken by event id
    with open_store(bigtable_uri()) as store:
        store.init()
        store.write(lead)
        newest_first = sorted(lead, key=lambda a: (a.occurred_at, a.event_id), reverse=True)
        for types, limit in ((["click"], 3), (["click", "visit"], 5), (["visit"], None), (["nothing"], 2)):
            wanted = [a for a in newest_first if a.type in types]
            assert store.history("acme", "7", types=types, limit=limit) == wanted[:limit]
        assert store.history("acme", "7", types=["open_email"], since=T0 + 3, until=T0 + 9, limit=2) == [
            a for a in newest_first if a.type == "open_email" and T0 + 3 <= a.occurred_at < T0 + 9][:2]
        assert store.count() == len(lead)


@pytest.mark.parametrize("backend", ["bigtable", "hbase"])
def test_a_scan_for_some_types_gets_only_those_rows(backend, request):
    """What the experiments report reads of a tenant: its key range, only the rows of the
    types asked for, chosen by the store's servers (Bigtable: a condition on the type
    cell; HBase: a SingleColumnValueFilter), however odd a type's name."""
    if backend == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        uri = bigtable_uri()
    else:
        request.getfixturevalue("hbase_server")
        uri = hbase_uri()
    types = ("click", "it's", "a) OR (b", "a.b|c", "ünï©ødé")
    both = [Activity(f"e{n:02d}", tenant, f"L{n % 4}", types[n % 5], T0 + n, {"n": n})
            for n in range(30) for tenant in ("acme", "globex")]
    with open_store(uri) as store:
        store.init()
        store.write(both)
        start, end = b"acme#", b"acme$"
        everything = list(store.scan(start, end))
        assert sorted(a.event_id for a in everything) == sorted(a.event_id for a in both if a.tenant == "acme")
        for wanted in (["click"], ["it's", "ünï©ødé"], ["a.b|c"], ["a.b", "it", "a"], ["nothing"], []):
            assert list(store.scan(start, end, types=wanted)) == [a for a in everything if a.type in wanted], wanted


def test_bigtable_resumed_reads_ask_only_for_the_rows_after_the_last_one_delivered(bigtable_emulator):
    """What a read retried mid-stream sends: every range cut after the last row delivered."""
    lead = [Activity(f"e{n}", "acme", "7", ("click", "open_email", "visit")[n % 3], T0 + n * 86_400_000, {})
            for n in range(9)]
    with open_store(bigtable_uri()) as store:
        store.init()
        store.write(lead)
        store.index_activities(lead)
        index = store._table(store.index_table_id).name
        ranges = [((lead_prefix("acme", "7") + t + "#").encode(), (lead_prefix("acme", "7") + t + "$").encode())
                  for t in ("click", "visit")]  # all days of two types
        everything = [row.key for row in merge_row_chunks(_raw_read(store, read_rows_request(index, ranges)))]
        assert len(everything) == 6
        for done in range(1, 6):
            request = read_rows_request(index, ranges, after=everything[done - 1])
            assert [row.key for row in merge_row_chunks(_raw_read(store, request))] == everything[done:]
        assert read_rows_request(index, ranges, after=ranges[-1][1]) is None  # nothing left to read
        limited = read_rows_request(index, ranges, rows_limit=2)
        assert [row.key for row in merge_row_chunks(_raw_read(store, limited))] == everything[:2]
        assert store.read_index("acme", "7", types=["click", "visit"], since_day=activity_day(T0 + 3 * 86_400_000)) == {
            (a.type, activity_day(a.occurred_at)): (1, a.occurred_at) for a in lead[3:] if a.type != "open_email"}


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
    connection = _mysql_connect(mysql_database)
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
        connection = _mysql_connect()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


def test_mysql_uris_never_show_the_password():
    store = open_store("mysql://orion:s3cr%40t@db.example:3307/orion")
    assert "s3cr" not in repr(store)
    assert store._settings["password"] == "s3cr@t" and store._settings["port"] == 3307


# --- lead profiles -------------------------------------------------------------------


def test_profile_row_key_layout():
    assert profile_row_key("acme", "7") == f"acme#{lead_salt('7')}#7".encode()
    assert profile_row_key("a#b", "ü 1") == f"a%23b#{lead_salt('ü 1')}#%C3%BC%201".encode()
    for tenant in ODD:
        for lead in ODD:
            assert parse_profile_row_key(profile_row_key(tenant, lead)) == (tenant, lead)
    times = [-62_135_596_800_000, -1, 0, 1, 9, 10, T0, 253_402_300_799_999]
    assert sorted(wake_value(t) for t in times) == [wake_value(t) for t in times]  # byte order is time order
    assert {len(wake_value(t)) for t in times} == {15}
    assert [parse_wake_value(wake_value(t)) for t in times] == times


def test_bigtable_profiles_have_a_table_of_their_own_and_keep_one_cell_version(bigtable_emulator):
    from google.cloud import bigtable

    uri = bigtable_uri()
    with open_store(uri) as store:
        store.init()
        for _ in range(2):  # a retry rewrites the same cells
            store.write_profiles([StoredProfile("acme", "7", "first", T0)])
        store.write_profiles([StoredProfile("acme", "7", "second", T0 + 1)])
        assert store.count() == 0 and store.history("acme", "7") == []  # nothing in the activity table
    table_id = uri.rsplit("/", 1)[1]
    table = bigtable.Client(project=BIGTABLE_PROJECT).instance(BIGTABLE_INSTANCE).table(table_id + "-profiles")

    def cells():
        row = table.read_row(profile_row_key("acme", "7"))
        return {name: [(c.value, c.timestamp.timestamp()) for c in versions] for name, versions in row.cells["p"].items()}

    assert cells() == {b"data": [(b"second", 0)], b"next_wake": [(wake_value(T0 + 1), 0)]}
    with open_store(uri) as store:
        store.write_profiles([StoredProfile("acme", "7", "third")])  # waits no more: the wake cell goes
    assert cells() == {b"data": [(b"third", 0)]}


def test_bigtable_profile_reads_ask_for_their_keys_and_resume_after_the_last_one_delivered(bigtable_emulator):
    with open_store(bigtable_uri()) as store:
        store.init()
        store.write_profiles([StoredProfile("acme", str(n), f"profile {n}") for n in range(6)])
        table = store._table(store.profile_table_id).name
        keys = sorted(profile_row_key("acme", str(n)) for n in (0, 2, 3, 5, 9))  # no profile for 9
        everything = [row.key for row in merge_row_chunks(_raw_read(store, read_rows_request(table, (), keys=keys)))]
        assert everything == [key for key in keys if key != profile_row_key("acme", "9")]
        for done in range(1, 4):
            request = read_rows_request(table, (), after=everything[done - 1], keys=keys)
            assert [row.key for row in merge_row_chunks(_raw_read(store, request))] == everything[done:]
        assert read_rows_request(table, (), after=keys[-1], keys=keys) is None  # nothing left to read
        assert store.read_profiles([("acme", "5"), ("acme", "9"), ("acme", "0")]) == ["profile 5", None, "profile 0"]


def test_mysql_profiles_are_the_batch_campaigns_lead_profiles_and_an_older_table_is_upgraded(
        mysql_database, mysql_store_uri):
    """`orion campaign init` used to make lead_profiles with attributes, score and lists
    only; `orion store init` (which `orion campaign init` now is) adds the profile columns,
    its rows read as profiles of those columns, and a profile the store writes fills them."""
    from orion.campaigns.batch import init_lead_tables
    from orion.profiles import LeadRecord, decode_profile, encode_profile
    from orion.campaigns.flows import LeadFlows
    from orion.rules.model import LeadState

    connection = _mysql_connect(mysql_database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE lead_profiles (tenant VARBINARY(255) NOT NULL, lead_id VARBINARY(255) NOT NULL, "
                           "attributes JSON NOT NULL, score DOUBLE NOT NULL DEFAULT 0, lists JSON NOT NULL, "
                           "PRIMARY KEY (tenant, lead_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
            cursor.execute("INSERT INTO lead_profiles VALUES ('acme', 'old', '{\"email\": \"o@example.com\"}', 12, "
                           "'[\"vip\"]')")
        init_lead_tables(mysql_store_uri)
        init_lead_tables(mysql_store_uri)  # safe to rerun
        with open_store(mysql_store_uri) as store:
            old, = store.read_profiles([("acme", "old")])
            lead = decode_profile(old).flows.lead
            assert (lead.attributes, lead.score, lead.lists) == ({"email": "o@example.com"}, 12, frozenset({"vip"}))
            assert store.count_profiles() == 1 and store.due_profiles(2 ** 62) == []
            state = LeadState({"email": "n@example.com", "unsubscribed": True}, 3, frozenset({"b", "a"}))
            text = encode_profile(LeadRecord(flows=LeadFlows(lead=state, sent=(T0,))))
            store.write_profiles([StoredProfile("acme", "new", text, T0), StoredProfile("acme", "old", "not a profile")])
            assert store.read_profiles([("acme", "new"), ("acme", "old")]) == [text, "not a profile"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT lead_id, attributes, score, lists, data, next_wake FROM lead_profiles ORDER BY lead_id")
            assert cursor.fetchall() == (
                (b"new", '{"email":"n@example.com","unsubscribed":true}', 3.0, '["a","b"]', text, T0),
                (b"old", "{}", 0.0, "[]", "not a profile", None))  # opaque text: no attributes to derive
            cursor.execute("SHOW INDEX FROM lead_profiles WHERE Key_name = 'lead_profiles_next_wake'")
            assert cursor.fetchall()
    finally:
        connection.close()


def test_sql_profile_rows_written_with_sql_read_as_profiles_of_their_columns(tmp_path, mysql_database,
                                                                              mysql_store_uri):
    """A lead_profiles row with attributes, score and lists but no data (an `orion campaign
    init` user's row) is a profile of those on both SQL stores; one whose columns are
    unreadable gives a text that is not a profile and says why (the graph dead-letters it)."""
    from orion.profiles import ProfileError, decode_profile

    rows = [("acme", "legacy", '{"email": "l@example.com", "unsubscribed": true}', 7, '["news"]'),
            ("acme", "broken", '["not", "an object"]', 0, '[]')]
    sqlite_uri = f"sqlite:///{tmp_path / 'activities.db'}"
    for uri in (sqlite_uri, mysql_store_uri):
        with open_store(uri) as store:
            store.init()
            if uri == sqlite_uri:
                store.connection.executemany("INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) "
                                             "VALUES (?, ?, ?, ?, ?)", rows)
            else:
                store._transaction(lambda cursor: cursor.executemany(
                    "INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) VALUES (%s, %s, %s, %s, %s)",
                    rows))
            legacy, broken, missing = store.read_profiles([("acme", "legacy"), ("acme", "broken"), ("acme", "x")])
            lead = decode_profile(legacy).flows.lead
            assert lead.attributes == {"email": "l@example.com", "unsubscribed": True}, uri
            assert (lead.score, lead.lists, missing) == (7, frozenset({"news"}), None)
            assert "attributes must be a JSON object" in broken and '["not", "an object"]' in broken
            with pytest.raises(ProfileError):
                decode_profile(broken)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_sql_profiles_keep_their_row_unchanged_when_written_again_unchanged(backend, tmp_path, request):
    if backend == "mysql":
        uri = request.getfixturevalue("mysql_store_uri")
    else:
        uri = f"sqlite:///{tmp_path / 'activities.db'}"

    def updated_at():
        return store._query("SELECT updated_at FROM lead_profiles", ()) if backend == "mysql" else \
            store._select("SELECT updated_at FROM lead_profiles", ())

    with open_store(uri) as store:
        store.init()
        store.write_profiles([StoredProfile("acme", "7", "same", T0)])
        first = updated_at()
        time.sleep(0.01)
        store.write_profiles([StoredProfile("acme", "7", "same", T0)])
        assert updated_at() == first
        store.write_profiles([StoredProfile("acme", "7", "same", None)])
        assert updated_at() > first
        changed = updated_at()
        time.sleep(0.01)
        store.write_profiles([StoredProfile("acme", "7", "same ", None)])  # a trailing space is a change
        assert updated_at() > changed
        assert store.read_profiles([("acme", "7")]) == ["same "]


def test_mysql_refuses_a_batch_of_profiles_with_an_over_long_id_and_writes_none(mysql_store_uri):
    with open_store(mysql_store_uri) as store:
        store.init()
        with pytest.raises(ValueError, match="refused"):
            store.write_profiles([StoredProfile("acme", "7", "ok"), StoredProfile("acme", "x" * 256, "too long")])
        assert store.count_profiles() == 0
        big = "ü" * 2_000_000  # 4 MB of UTF-8: MEDIUMTEXT holds up to 16 MiB
        store.write_profiles([StoredProfile("acme", "7", big)])
        assert store.read_profiles([("acme", "7")]) == [big]
