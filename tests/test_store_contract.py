"""The activity store contract: one suite, run unchanged against every backend (SQLite,
Bigtable on its emulator, HBase standalone through its Thrift server, MySQL on the local
MariaDB). A backend is correct when it
passes all of it.

    .venv/bin/python -m pytest -q tests/test_store_contract.py
"""
from __future__ import annotations

from datetime import date

import pytest
from conftest import DAY, HOUR, MINUTE, T0
from hbase_services import hbase_uri
from store_services import bigtable_uri, drop_mysql_tables, mysql_uri

from orion.activities import Activity
from orion.store import open_store
from orion.store.base import UNSTORABLE, HistoryRead, IndexRead, StoredProfile, StoreWriteError, activity_day

BACKENDS = ("sqlite", "bigtable", "hbase", "mysql")

# Ids that break naive key layouts: separators, escapes, path characters, Unicode.
ODD_IDS = ["a#b", "a%23b", "a/b", "#", "%", "a b", "tab\there", "new\nline", "ünï©ødé", "😀", "a\\b", "a:b@c+d", "'; DROP TABLE activities; --"]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """An initialized, empty store of each backend."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'activities.db'}"
    elif request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        uri = bigtable_uri()
    elif request.param == "hbase":
        request.getfixturevalue("hbase_server")
        uri = hbase_uri()
    else:
        database = request.getfixturevalue("mysql_database")
        uri = mysql_uri(database)
    opened = open_store(uri)
    opened.init()
    yield opened
    opened.close()
    if request.param == "mysql":
        drop_mysql_tables(database)


def act(event_id: str, *, at: int = T0, type_: str = "visit_web_page", tenant: str = "acme",
        lead: str = "7", **attributes) -> Activity:
    return Activity(event_id, tenant, lead, type_, at, attributes or {"url": f"/page/{event_id}"})


def ids(activities) -> list[str]:
    return [a.event_id for a in activities]


# --- writing -----------------------------------------------------------------------


def test_writing_the_same_batch_twice_leaves_one_copy(store):
    batch = [act("e1", at=T0), act("e2", at=T0 + MINUTE), act("e3", at=T0 + HOUR, lead="8")]
    assert store.write_with_failures(batch) == (3, [])
    assert store.write_with_failures(batch) == (3, [])
    assert store.write(list(reversed(batch))) == 3
    assert store.count() == 3
    assert store.history("acme", "7") == [batch[1], batch[0]]
    assert store.history("acme", "8") == [batch[2]]


def test_rewriting_an_activity_replaces_its_attributes(store):
    store.write([act("e1", url="/old")])
    store.write([act("e1", url="/new")])
    assert store.history("acme", "7") == [act("e1", url="/new")]
    assert store.count() == 1


def test_an_empty_batch_writes_nothing(store):
    assert store.write_with_failures([]) == (0, [])
    assert store.write([]) == 0
    assert store.count() == 0


def test_rows_no_store_can_hold_are_reported_and_the_rest_written(store):
    good = [act("ok1", at=T0), act("ok2", at=T0 + 1)]
    bad_lead = act("bad1", lead="lone \ud800 surrogate")
    not_json = act("bad2", url={"a", "set"})
    result = store.write_with_failures([good[0], bad_lead, not_json, good[1]])
    assert result.written == 2
    assert [(f.activity, f.reason) for f in result.failed] == [(bad_lead, UNSTORABLE), (not_json, UNSTORABLE)]
    assert all(f.detail for f in result.failed)
    assert store.history("acme", "7") == [good[1], good[0]]
    with pytest.raises(StoreWriteError) as raised:
        store.write([not_json])
    assert [f.activity for f in raised.value.failures] == [not_json]


# --- history -----------------------------------------------------------------------


def test_history_is_newest_first_with_ties_by_event_id_descending(store):
    # Ids whose order differs once percent-encoded or compared case-insensitively.
    tied = ["e#1", "e%", "e-", "e/", "eA", "ea", "é", "e", "e ", "E"]
    batch = [act(i, at=T0) for i in tied] + [act("older", at=T0 - 1), act("newer", at=T0 + 1)]
    store.write(batch)
    assert ids(store.history("acme", "7")) == ["newer", *sorted(tied, reverse=True), "older"]


def test_since_is_inclusive_and_until_is_exclusive(store):
    store.write([act(f"e{i}", at=T0 + i * MINUTE) for i in range(5)])
    assert ids(store.history("acme", "7", since=T0 + MINUTE)) == ["e4", "e3", "e2", "e1"]
    assert ids(store.history("acme", "7", until=T0 + 3 * MINUTE)) == ["e2", "e1", "e0"]
    assert ids(store.history("acme", "7", since=T0 + MINUTE, until=T0 + 3 * MINUTE)) == ["e2", "e1"]
    assert store.history("acme", "7", since=T0 + 3 * MINUTE, until=T0 + 3 * MINUTE) == []
    assert store.history("acme", "7", since=T0 + 4 * MINUTE, until=T0) == []


def test_types_filter_keeps_only_the_given_types(store):
    store.write([
        act("v1", at=T0, type_="visit_web_page"),
        act("o1", at=T0 + 1, type_="open_email", email="welcome"),
        act("f1", at=T0 + 2, type_="fill_out_form", form="demo"),
        act("c1", at=T0 + 3, type_="custom.type+x|y", thing=1),
    ])
    assert ids(store.history("acme", "7", types=["open_email"])) == ["o1"]
    assert ids(store.history("acme", "7", types=["open_email", "visit_web_page"])) == ["o1", "v1"]
    assert ids(store.history("acme", "7", types=["custom.type+x|y"])) == ["c1"]
    assert ids(store.history("acme", "7", types=("custom",))) == []
    assert store.history("acme", "7", types=[]) == []
    assert ids(store.history("acme", "7", types=None)) == ["c1", "f1", "o1", "v1"]


def test_limit_returns_the_newest_and_respects_ties(store):
    store.write([act("a", at=T0), act("b", at=T0 + 1), act("c", at=T0 + 1), act("d", at=T0 + 2)])
    assert ids(store.history("acme", "7", limit=1)) == ["d"]
    assert ids(store.history("acme", "7", limit=2)) == ["d", "c"]  # cut inside a tie: the larger id first
    assert ids(store.history("acme", "7", limit=3)) == ["d", "c", "b"]
    assert ids(store.history("acme", "7", limit=10)) == ["d", "c", "b", "a"]


def test_filters_combine(store):
    store.write([act(f"v{i}", at=T0 + i * HOUR) for i in range(6)]
                + [act(f"o{i}", at=T0 + i * HOUR, type_="open_email", email="x") for i in range(6)])
    found = store.history("acme", "7", since=T0 + HOUR, until=T0 + 5 * HOUR, types=["open_email"], limit=3)
    assert ids(found) == ["o4", "o3", "o2"]


def test_tenants_never_see_each_others_activities(store):
    acme, globex = act("e1", tenant="acme", url="/acme"), act("e1", tenant="globex", url="/globex")
    store.write([acme, globex])
    assert store.history("acme", "7") == [acme]
    assert store.history("globex", "7") == [globex]
    assert store.history("ACME", "7") == []
    assert store.count() == 2


def test_leads_whose_ids_share_a_prefix_stay_apart(store):
    leads = ["1", "12", "1#2", "1%232", "1/2", "1 ", "1#"]
    store.write([act(f"e-{n}", lead=lead) for n, lead in enumerate(leads)])
    for n, lead in enumerate(leads):
        assert ids(store.history("acme", lead)) == [f"e-{n}"], lead


def test_odd_ids_and_attributes_round_trip(store):
    batch = [act(f"ev-{odd}", tenant=f"t-{odd}", lead=odd, type_=f"custom {odd}", at=T0 + n)
             for n, odd in enumerate(ODD_IDS)]
    batch += [
        Activity("empty", "acme", "7", "open_email", T0, {}),
        Activity("empty-ish", "acme", "7", "open_email", T0 + 2, {"": "", "none": None, "list": [], "obj": {}}),
        Activity("nested", "acme", "7", "form", T0 + 1, {
            "fields": {"name": "Zoë", "tags": ["a", {"b": [1, 2.5, None, True, False]}], "": ""},
            "ключ": "значение", "quote\"d": "back\\slash", "big": 2 ** 53, "neg": -0.125,
        }),
    ]
    store.write(batch)
    store.write(batch)
    for activity in batch:
        assert activity in store.history(activity.tenant, activity.lead_id), activity
    for n, odd in enumerate(ODD_IDS):
        assert store.history(f"t-{odd}", odd, types=[f"custom {odd}"]) == [batch[n]]
    assert store.count() == len(batch)


def test_times_from_year_1_to_9999_keep_their_order(store):
    first, epoch, before_epoch, last = -62_135_596_800_000, 0, -1, 253_402_300_799_999
    store.write([act("first", at=first), act("before", at=before_epoch), act("epoch", at=epoch), act("last", at=last)])
    assert ids(store.history("acme", "7")) == ["last", "epoch", "before", "first"]
    assert ids(store.history("acme", "7", since=before_epoch, until=last)) == ["epoch", "before"]
    assert [a.occurred_at for a in store.history("acme", "7")] == [last, epoch, before_epoch, first]


def test_history_of_an_unknown_lead_is_empty(store):
    store.write([act("e1")])
    assert store.history("acme", "nobody") == []
    assert store.history("nobody", "7") == []


def test_init_twice_keeps_the_data(store):
    store.write([act("e1")])
    store.index_activities([act("e1")])
    store.init()
    store.init()
    assert store.history("acme", "7") == [act("e1")]
    assert store.read_index("acme", "7") == {("visit_web_page", activity_day(T0)): (1, T0)}


# --- the activity index ------------------------------------------------------------


def write_and_index(store, batch):
    result = store.write_with_failures(batch)
    failed = {id(f.activity) for f in result.failed}
    store.index_activities([a for a in batch if id(a) not in failed])


def test_activity_index_counts_per_type_and_day_with_last_seen(store):
    day0, day1 = activity_day(T0), activity_day(T0 + DAY)
    batch = [
        act("v1", at=T0), act("v2", at=T0 + HOUR), act("v3", at=T0 + DAY),
        act("o1", at=T0 + 2 * HOUR, type_="open_email", email="x"),
        act("other-lead", lead="8"), act("other-tenant", tenant="globex"),
    ]
    write_and_index(store, batch)
    assert store.read_index("acme", "7") == {
        ("visit_web_page", day0): (2, T0 + HOUR),
        ("visit_web_page", day1): (1, T0 + DAY),
        ("open_email", day0): (1, T0 + 2 * HOUR),
    }
    assert store.read_index("acme", "8") == {("visit_web_page", day0): (1, T0)}
    assert store.read_index("globex", "7") == {("visit_web_page", day0): (1, T0)}
    assert store.read_index("acme", "nobody") == {}


def test_activity_index_days_are_utc_days(store):
    midnight = T0 - T0 % DAY
    write_and_index(store, [act("before", at=midnight - 1), act("at", at=midnight), act("after", at=midnight + DAY - 1)])
    assert store.read_index("acme", "7") == {
        ("visit_web_page", date.fromordinal(activity_day(midnight).toordinal() - 1)): (1, midnight - 1),
        ("visit_web_page", activity_day(midnight)): (2, midnight + DAY - 1),
    }


def test_activity_index_is_unchanged_by_rewrites_and_reindexing(store):
    batch = [act(f"v{i}", at=T0 + i * MINUTE) for i in range(5)] + [act("o", type_="open_email", email="x")]
    write_and_index(store, batch)
    expected = store.read_index("acme", "7")
    write_and_index(store, batch)
    store.index_activities(batch)
    write_and_index(store, list(reversed(batch)))
    assert store.read_index("acme", "7") == expected == {
        ("visit_web_page", activity_day(T0)): (5, T0 + 4 * MINUTE),
        ("open_email", activity_day(T0)): (1, T0),
    }


def test_activity_index_adds_later_batches_of_the_same_day(store):
    write_and_index(store, [act("v1", at=T0), act("v2", at=T0 + MINUTE)])
    write_and_index(store, [act("v2", at=T0 + MINUTE), act("v3", at=T0 - MINUTE)])  # one repeat, one older
    assert store.read_index("acme", "7") == {("visit_web_page", activity_day(T0)): (3, T0 + MINUTE)}


def test_activity_index_filters_by_type_and_since_day(store):
    write_and_index(store, [act(f"v{d}", at=T0 + d * DAY) for d in range(4)]
                    + [act(f"o{d}", at=T0 + d * DAY, type_="open_email", email="x") for d in range(4)]
                    + [act("c", at=T0, type_="custom.type+x|y", thing=1)])
    day = [activity_day(T0 + d * DAY) for d in range(4)]
    assert store.read_index("acme", "7", types=["open_email"], since_day=day[2]) == {
        ("open_email", day[2]): (1, T0 + 2 * DAY),
        ("open_email", day[3]): (1, T0 + 3 * DAY),
    }
    assert set(store.read_index("acme", "7", since_day=day[3])) == {("visit_web_page", day[3]), ("open_email", day[3])}
    assert store.read_index("acme", "7", types=["custom.type+x|y"]) == {("custom.type+x|y", day[0]): (1, T0)}
    assert store.read_index("acme", "7", types=[]) == {}
    assert len(store.read_index("acme", "7")) == 9


def test_activity_index_ignores_rows_that_were_not_stored(store):
    bad = act("bad", lead="lone \ud800 surrogate")
    write_and_index(store, [act("ok"), bad])
    assert store.index_activities([bad]) == 0
    assert store.read_index("acme", "7") == {("visit_web_page", activity_day(T0)): (1, T0)}


def test_activity_index_ignores_rows_refused_for_their_attributes(store):
    # Valid ids and time, attributes no store can hold: written nowhere, so indexed nowhere.
    refused = act("nan", at=T0 + DAY, url=float("nan"))
    write_and_index(store, [act("ok"), refused])
    assert store.index_activities([refused]) == 0
    assert store.read_index("acme", "7") == {("visit_web_page", activity_day(T0)): (1, T0)}


# --- many leads at once (what seeding reads) ---------------------------------------------


def many_leads(store):
    """Leads of two tenants (odd ids among them), each with a few activities over three
    days; more leads than one statement of a batching store takes."""
    leads = [("acme", f"L{n}") for n in range(230)] + [("globex", lead) for lead in ODD_IDS]
    batch = []
    for n, (tenant, lead) in enumerate(leads):
        for k in range(n % 4):
            batch.append(act(f"{lead}-v{k}", tenant=tenant, lead=lead, at=T0 + k * DAY + n))
            batch.append(act(f"{lead}-o{k}", tenant=tenant, lead=lead, at=T0 + k * DAY + n + 1,
                             type_="open_email", email="welcome"))
    write_and_index(store, batch)
    return leads


def test_histories_answer_each_read_as_history_would(store):
    leads = many_leads(store)
    reads = [HistoryRead(tenant, lead, since=T0 + (n % 3) * DAY if n % 5 else None,
                         until=T0 + (n % 3 + 1) * DAY + n if n % 7 else None,
                         types=(None, ("open_email",), (), ("open_email", "visit_web_page"))[n % 4])
             for n, (tenant, lead) in enumerate(leads)]
    reads += [HistoryRead("acme", "nobody"), HistoryRead("initech", "L1")]
    answers = store.histories(reads)
    assert answers == [store.history(r.tenant, r.lead_id, since=r.since, until=r.until, types=r.types)
                       for r in reads]
    assert sum(map(len, answers)) > 100  # the reads found rows, not only nothing


def test_read_indexes_answer_each_read_as_read_index_would(store):
    leads = many_leads(store)
    reads = [IndexRead(tenant, lead, types=(None, ("open_email",), (), ("visit_web_page",))[n % 4],
                       since_day=activity_day(T0 + (n % 3) * DAY) if n % 5 else None)
             for n, (tenant, lead) in enumerate(leads)]
    reads += [IndexRead("acme", "nobody"), IndexRead("initech", "L1")]
    answers = store.read_indexes(reads)
    assert answers == [store.read_index(r.tenant, r.lead_id, types=r.types, since_day=r.since_day)
                       for r in reads]
    assert sum(map(len, answers)) > 100


# --- lead profiles -----------------------------------------------------------------------


def profile(lead: str = "7", data: str | None = None, next_wake: int | None = None, tenant: str = "acme") -> StoredProfile:
    return StoredProfile(tenant, lead, data if data is not None else f'{{"v":1,"lead":"{lead}"}}', next_wake)


def test_a_profile_round_trips(store):
    big = '{"v":1,"attributes":{"name":"Zoë 😀"},"pad":"' + "x" * 6000 + '"}'
    assert store.write_profiles([profile("7", big, T0), profile("8", "", None)]) == 2
    assert store.read_profiles([("acme", "7"), ("acme", "8")]) == [big, ""]
    assert store.count_profiles() == 2


def test_writing_a_profile_again_replaces_it(store):
    store.write_profiles([profile("7", "first", T0)])
    store.write_profiles([profile("7", "second", T0 + HOUR)])
    assert store.read_profiles([("acme", "7")]) == ["second"]
    assert store.due_profiles(T0 + HOUR) == [("acme", "7", T0 + HOUR)]
    # In one batch, the last profile given for a lead wins.
    assert store.write_profiles([profile("7", "third", T0), profile("8", "other"), profile("7", "fourth", None)]) == 3
    assert store.read_profiles([("acme", "7"), ("acme", "8")]) == ["fourth", "other"]
    assert store.due_profiles(T0 + DAY) == []
    assert store.count_profiles() == 2


def test_writing_the_same_profile_twice_leaves_one_row(store):
    batch = [profile("7", next_wake=T0), profile("8")]
    store.write_profiles(batch)
    store.write_profiles(batch)
    store.write_profiles(list(reversed(batch)))
    assert store.count_profiles() == 2
    assert store.read_profiles([("acme", "7"), ("acme", "8")]) == [batch[0].data, batch[1].data]
    assert store.due_profiles(T0) == [("acme", "7", T0)]


def test_reading_leads_without_a_profile_gives_none_in_their_places(store):
    assert store.read_profiles([]) == []
    assert store.read_profiles([("acme", "7")]) == [None]
    store.write_profiles([profile("7", "seven"), profile("9", "nine")])
    assert store.read_profiles([("acme", "1"), ("acme", "7"), ("acme", "8"), ("acme", "9"), ("acme", "7"),
                                ("globex", "7")]) == [None, "seven", None, "nine", "seven", None]
    assert store.write_profiles([]) == 0
    assert store.count_profiles() == 2


def test_many_profiles_are_read_in_one_call_in_order(store):
    leads = ([("acme", f"L{n}") for n in range(1200)]
             + [("globex", odd) for odd in ODD_IDS] + [("globex", f"{odd} {n}") for n, odd in enumerate(ODD_IDS)]
             + [("globex", lead) for lead in ("L1", "", " ", "L1 ", "l1", "ü", "ü ", "a#b#c")])
    assert len(set(leads)) == 1234
    store.write_profiles([StoredProfile(tenant, lead, f"{tenant}|{lead}|ünï") for tenant, lead in leads])
    missing = [("acme", "L1200"), ("globex", "L0"), ("initech", "L1"), ("acme", "l1"),
               ("acme", "L1 "), ("acme", "L1#"), ("globex", "a#"), ("globex", "%23")]
    keys = leads[::-1] + missing[:4] + leads[::2] + missing[4:] + leads[1::7]
    expected = [None if key in missing else f"{key[0]}|{key[1]}|ünï" for key in keys]
    assert store.read_profiles(keys) == expected
    assert store.count_profiles() == 1234


def test_tenants_never_see_each_others_profiles(store):
    store.write_profiles([profile("7", "acme's", T0, tenant="acme"), profile("7", "globex's", T0 + 1, tenant="globex")])
    assert store.read_profiles([("acme", "7"), ("globex", "7"), ("ACME", "7")]) == ["acme's", "globex's", None]
    assert store.due_profiles(T0 + 1, tenants=["globex"]) == [("globex", "7", T0 + 1)]
    assert store.due_profiles(T0 + 1) == [("acme", "7", T0), ("globex", "7", T0 + 1)]
    assert store.count_profiles() == 2


def test_due_profiles_are_those_whose_wake_has_come(store):
    store.write_profiles([
        profile("due-early", next_wake=T0 - DAY), profile("due-now", next_wake=T0), profile("later", next_wake=T0 + 1),
        profile("never"), profile("a#b", next_wake=T0 - 1), profile("ünï", next_wake=T0 - 2),
        profile("other", next_wake=T0, tenant="globex"), profile("x", next_wake=T0 - 5, tenant="a#b"),
        profile("first", next_wake=-62_135_596_800_000), profile("last", next_wake=253_402_300_799_999),
    ])
    due = [("a#b", "x", T0 - 5), ("acme", "a#b", T0 - 1), ("acme", "due-early", T0 - DAY), ("acme", "due-now", T0),
           ("acme", "first", -62_135_596_800_000), ("acme", "ünï", T0 - 2), ("globex", "other", T0)]
    assert store.due_profiles(T0) == due  # == due_by counts as due
    assert store.due_profiles(T0 - 1) == [d for d in due if d[2] <= T0 - 1]
    assert store.due_profiles(T0 + 1) == sorted(due + [("acme", "later", T0 + 1)])
    assert store.due_profiles(-62_135_596_800_001) == []
    assert len(store.due_profiles(2 ** 62)) == 9  # "never" never is
    assert store.due_profiles(T0, tenants=["acme"]) == [d for d in due if d[0] == "acme"]
    assert store.due_profiles(T0, tenants=("globex", "a#b", "nobody")) == [due[0], due[-1]]
    assert store.due_profiles(T0, tenants=iter(["globex"])) == [due[-1]]
    assert store.due_profiles(T0, tenants=[]) == []
    assert store.due_profiles(T0, tenants=["ACME", "a"]) == []


def test_a_profile_written_without_a_wake_is_no_longer_due(store):
    store.write_profiles([profile("7", "waiting", T0), profile("8", "waiting", T0)])
    store.write_profiles([profile("7", "done waiting", None)])
    assert store.due_profiles(T0 + DAY) == [("acme", "8", T0)]
    assert store.read_profiles([("acme", "7")]) == ["done waiting"]
    store.write_profiles([profile("7", "waiting again", T0 + HOUR)])
    assert store.due_profiles(T0 + DAY) == [("acme", "7", T0 + HOUR), ("acme", "8", T0)]


def test_profiles_no_store_can_hold_are_refused_before_anything_is_written(store):
    for bad in (profile("lone \ud800 surrogate"), profile("7", "data \udfff"), profile("7", next_wake=1.5),
                profile("7", next_wake=True), profile("7", next_wake=253_402_300_800_000), StoredProfile("acme", "7", None)):
        with pytest.raises(ValueError):
            store.write_profiles([profile("ok"), bad])
    assert store.count_profiles() == 0


def test_init_twice_keeps_the_profiles(store):
    store.write_profiles([profile("7", "kept", T0)])
    store.init()
    store.init()
    assert store.read_profiles([("acme", "7")]) == ["kept"]
    assert store.due_profiles(T0) == [("acme", "7", T0)]
    assert store.count_profiles() == 1


def test_profiles_and_activities_keep_apart(store):
    store.write([act("e1")])
    store.write_profiles([profile("7", "profile", T0)])
    assert store.history("acme", "7") == [act("e1")]
    assert store.count() == 1
    assert store.count_profiles() == 1
