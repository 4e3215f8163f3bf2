"""The bootstrap migration, MySQL (the real MariaDB) -> Bigtable (the real emulator) and
-> HBase (a real standalone HBase, through its Thrift server): 100,000 legacy activities
with odd data, a bootstrap killed halfway and rerun, the verification catching a row
deleted from the target, and the conversion rules.

The legacy data (see orion/migration.py for the rules it is converted by):
- one lead with 10,000 activities; 3 tenants, one with a non-ASCII name;
- NULL and '' attributes (the column predates its JSON check: it is altered to nullable
  LONGTEXT here), '{}', unicode (emoji, right-to-left, NUL), big and float numbers;
- repeated event ids: the legacy key is (tenant, event_id), so "repeated" is the same id
  in two tenants (1,000 of them, same lead ids too), and ids that differ only in case or
  a trailing space; ids holding '#', '%', '/', spaces;
- timestamps at the edges: epoch 0, -1 ms, 1 ms, a day before 1970, 2**31 s, year 1 and
  year 9999 to the millisecond;
- id holes (500 rows deleted after insert), so the id ranges are not dense;
- 7 bad rows that must end in the dead letters with their reason.

    .venv/bin/python -m pytest -q tests/test_bootstrap.py
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import date

import pytest
from hbase_services import hbase_uri
from store_services import BIGTABLE_INSTANCE, BIGTABLE_PROJECT, _mysql_connect, bigtable_uri

from orion.activities import BAD_FIELD, BAD_TIMESTAMP, Activity, BadActivity
from orion.migration import (
    BAD_ATTRIBUTES,
    LegacyRow,
    RangeSums,
    activity_from_legacy,
    plan_splits,
    target_scan_ranges,
)
from orion.store import open_store
from orion.store.base import MAX_MS, MIN_MS, activity_day
from orion.store.bigtable import activity_row_key, lead_salt

T0 = 1_700_000_000_000
MINUTE = 60_000
TOTAL = 100_000
BIG_LEAD = ("acme", "big-lead")
TYPES = ("visit_web_page", "open_email", "fill_out_form")
EDGE_TIMES = (0, -1, 1, -86_400_000, 2_147_483_647_000, MIN_MS, MAX_MS)
UNICODE = {"name": "Zoë 😀", "rtl": "שלום", "nul": "a\u0000b", "cjk": "李雷"}
NUMBERS = {"big": 2**63, "f": 0.1, "tiny": -1e-7, "nested": {"a": [1, {"b": None}]}}

# (tenant, event_id, lead_id, type, occurred_at, attributes) -> expected dead-letter reason
BAD_ROWS = [
    ((b"acme", b"bad-json", b"odd", b"visit_web_page", T0, "{broken"), BAD_ATTRIBUTES),
    ((b"acme", b"bad-array", b"odd", b"visit_web_page", T0, "[1, 2]"), BAD_ATTRIBUTES),
    ((b"acme", b"bad-surrogate", b"odd", b"visit_web_page", T0, '{"a": "\\ud800"}'), BAD_ATTRIBUTES),
    ((b"acme", b"bad-late", b"odd", b"visit_web_page", MAX_MS + 1, "{}"), BAD_TIMESTAMP),
    ((b"acme", b"bad-early", b"odd", b"visit_web_page", MIN_MS - 1, "{}"), BAD_TIMESTAMP),
    ((b"acme", b"bad-lead", b"\xff\xfe", b"visit_web_page", T0, "{}"), BAD_FIELD),
    ((b"acme", b"", b"odd", b"visit_web_page", T0, "{}"), BAD_FIELD),
]

INSERT = ("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
          "VALUES (%s, %s, %s, %s, %s, %s)")


def legacy_rows() -> tuple[list[tuple], list[Activity]]:
    """(rows to insert, the activities the good ones are); exactly TOTAL rows, plus
    500 `gap-` rows that are deleted after the insert to leave holes in the ids."""
    rows: list[tuple] = []
    expected: list[Activity] = []

    def add(tenant: str, event_id: str, lead: str, type_: str, at: int, stored, attributes: dict) -> None:
        rows.append((tenant.encode(), event_id.encode(), lead.encode(), type_.encode(), at, stored))
        expected.append(Activity(event_id, tenant, lead, type_, at, attributes))

    for n in range(10_000):
        attributes = {"url": f"https://acme.example/p/{n % 50}", "n": n}
        add(*BIG_LEAD[:1], f"big-{n:05d}", BIG_LEAD[1], TYPES[n % 3], T0 + n * MINUTE, json.dumps(attributes), attributes)
    odd = [  # (event_id, occurred_at, stored attributes, attributes)
        ("null-attributes", T0, None, {}),
        ("empty-attributes", T0 + 1, "", {}),
        ("empty-object", T0 + 2, "{}", {}),
        ("unicode", T0 + 3, json.dumps(UNICODE, ensure_ascii=False), UNICODE),
        ("escaped-unicode", T0 + 4, json.dumps(UNICODE), UNICODE),
        ("numbers", T0 + 5, json.dumps(NUMBERS), NUMBERS),
        ("Case-1", T0 + 6, "{}", {}), ("case-1", T0 + 6, "{}", {}), ("case-1 ", T0 + 6, "{}", {}),
        ("a#b", T0 + 7, "{}", {}), ("100%", T0 + 7, "{}", {}), ("x/y z", T0 + 7, "{}", {}),
        ("é-ü-😀", T0 + 8, "{}", {}),
    ]
    odd += [(f"edge-{n}", at, "{}", {}) for n, at in enumerate(EDGE_TIMES)]
    for event_id, at, stored, attributes in odd:
        add("acme", event_id, "odd", "visit_web_page", at, stored, attributes)
    for n in range(1_000):  # the same event ids and lead ids in two tenants
        for tenant in ("acme", "bank"):
            add(tenant, f"shared-{n}", f"lead-{n % 300}", "open_email", T0 + n, '{"email": "welcome"}', {"email": "welcome"})
    tenants = ("acme", "bank", "ünïcode-tenant")
    n = 0
    while len(rows) < TOTAL - len(BAD_ROWS):
        tenant = tenants[n % 3]
        attributes = None if n % 97 == 0 else {"n": n, "page": f"/p/{n % 13}"}
        add(tenant, f"ev-{n}", f"lead-{n % 4000}", TYPES[n % 3], T0 - n * 7_919, None if attributes is None else json.dumps(attributes),
            attributes or {})
        n += 1
    rows += [row for row, _ in BAD_ROWS]
    # Holes: a gap row every 200 rows, deleted again after the insert.
    with_gaps = []
    for index, row in enumerate(rows):
        if index % 200 == 0:
            with_gaps.append((b"acme", f"gap-{index}".encode(), b"gap", b"visit_web_page", T0, "{}"))
        with_gaps.append(row)
    return with_gaps, expected


@pytest.fixture(scope="module")
def legacy(mysql_server):
    """A fresh legacy database of TOTAL activities; yields (URI, expected activities)."""
    name = f"orion_legacy_{uuid.uuid4().hex[:12]}"
    admin = _mysql_connect()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    uri = mysql_server.uri(name)
    try:
        with open_store(uri) as store:
            store.init()
        rows, expected = legacy_rows()
        with admin.cursor() as cursor:
            cursor.execute(f"USE `{name}`")
            # Rows from before the column was JSON: NULL, '' and broken text exist.
            cursor.execute("ALTER TABLE activities MODIFY attributes LONGTEXT NULL")
            for start in range(0, len(rows), 10_000):
                cursor.executemany(INSERT, rows[start:start + 10_000])
            cursor.execute("DELETE FROM activities WHERE lead_id = %s", (b"gap",))
            cursor.execute("SELECT COUNT(*) FROM activities")
            assert cursor.fetchone()[0] == TOTAL
        yield uri, expected
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def bootstrap_command(source: str, target: str, dead_letters, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orion.pipelines.bootstrap_command", "bootstrap", "--from", source, "--to", target,
            "--dead-letters", str(dead_letters), "--splits", "8", *extra]


def bootstrap(source: str, target: str, dead_letters, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(bootstrap_command(source, target, dead_letters, *extra),
                          capture_output=True, text=True, timeout=600)


PROGRESS = re.compile(r"bootstrap: ([\d,]+) of ([\d,]+) legacy rows read .*?, ([\d,]+) written")


@pytest.fixture(scope="module", params=["bigtable", "hbase"])
def migrated(request, legacy, tmp_path_factory):
    """A bootstrap into each target backend killed (SIGKILL) halfway, then rerun to the
    end. Yields the URIs, the expected activities, the written count at the kill, the
    rerun and its dead letter prefix."""
    source, expected = legacy
    if request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        target = bigtable_uri()
    else:
        request.getfixturevalue("hbase_server")
        target = hbase_uri()
    dead_letters = tmp_path_factory.mktemp("bootstrap") / "dead"
    command = bootstrap_command(source, target, dead_letters, "--progress-every", "0.2", "--workers", "1")
    first = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    killed_at = None
    try:
        for line in first.stderr:
            found = PROGRESS.search(line)
            if found and int(found.group(3).replace(",", "")) >= 5_000:
                killed_at = found.groups()
                os.killpg(first.pid, signal.SIGKILL)
                break
    finally:
        if first.poll() is None and killed_at is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    assert killed_at is not None, "the first bootstrap ended before any progress line showed writes"
    with open_store(target) as store:
        partial = store.count()
    rerun = bootstrap(source, target, dead_letters, "--workers", "2")
    yield source, target, expected, partial, rerun, dead_letters


def test_a_bootstrap_killed_halfway_and_rerun_migrates_every_row_exactly_once(migrated):
    _, target, expected, partial, rerun, _ = migrated
    assert 0 < partial < len(expected), "the kill came halfway through the copy"
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert "verification OK" in rerun.stdout
    assert f"legacy rows read:     {TOTAL:,}" in rerun.stdout
    assert f"activities in target: {len(expected):,}" in rerun.stdout
    assert re.search(r"lead ranges compared: [\d,]+ \(tenant x salt bucket\), 0 differ", rerun.stdout)
    assert "legacy rows read (100%)" in rerun.stderr, "progress lines on stderr"
    with open_store(target) as store:
        assert store.count() == len(expected)


def test_the_lead_with_ten_thousand_activities_reads_back_complete_and_indexed(migrated):
    _, target, expected, _, _, _ = migrated
    mine = sorted((a for a in expected if (a.tenant, a.lead_id) == BIG_LEAD),
                  key=lambda a: (a.occurred_at, a.event_id), reverse=True)
    assert len(mine) == 10_000
    with open_store(target) as store:
        assert store.history(*BIG_LEAD) == mine
        index = store.read_index(*BIG_LEAD)
    by_key: dict[tuple[str, date], list[int]] = {}
    for a in mine:
        by_key.setdefault((a.type, activity_day(a.occurred_at)), []).append(a.occurred_at)
    assert index == {key: (len(times), max(times)) for key, times in by_key.items()}


def test_odd_legacy_data_arrives_as_the_conversion_rules_say(migrated):
    _, target, expected, _, _, _ = migrated
    with open_store(target) as store:
        odd = store.history("acme", "odd")
        assert odd == sorted((a for a in expected if (a.tenant, a.lead_id) == ("acme", "odd")),
                             key=lambda a: (a.occurred_at, a.event_id), reverse=True)
        by_id = {a.event_id: a for a in odd}
        assert by_id["null-attributes"].attributes == by_id["empty-attributes"].attributes == {}
        assert by_id["unicode"].attributes == by_id["escaped-unicode"].attributes == UNICODE
        assert by_id["numbers"].attributes == NUMBERS
        assert {"Case-1", "case-1", "case-1 ", "a#b", "100%", "x/y z", "é-ü-😀"} <= set(by_id)
        assert sorted(a.occurred_at for a in odd if a.event_id.startswith("edge-")) == sorted(EDGE_TIMES)
        # The same event id in two tenants is two activities.
        for tenant in ("acme", "bank"):
            assert {a.event_id for a in store.history(tenant, "lead-7") if a.event_id.startswith("shared-")} == \
                {f"shared-{n}" for n in range(1_000) if n % 300 == 7}
        assert store.history("ünïcode-tenant", "lead-2")


def test_bad_legacy_rows_end_in_the_dead_letters_with_their_reason(migrated):
    _, _, _, _, rerun, dead_letters = migrated
    letters = [json.loads(line) for path in dead_letters.parent.glob(dead_letters.name + "-*.jsonl")
               for line in path.read_text(encoding="utf-8").splitlines()]
    found = sorted((d["element"]["event_id"], d["reason"]) for d in letters)
    wanted = sorted((row[1].decode(), reason) for row, reason in BAD_ROWS)
    assert found == wanted, "every bad row exactly once, from the rerun only"
    assert all(d["detail"] and d["source"].startswith("legacy activities id=") for d in letters)
    assert next(d for d in letters if d["element"]["event_id"] == "bad-lead")["element"]["lead_id"] == "0xfffe"
    assert f"dead letters:         {len(BAD_ROWS)}" in rerun.stdout


def test_rows_read_back_raw_match(migrated):
    """The rows as the backend itself shows them: on Bigtable through a client we did not
    write (cbt, from the Google Cloud CLI), on HBase through a bare Thrift call, cells and
    their timestamps as the row design says."""
    _, target, _, _, _, _ = migrated
    if target.startswith("hbase://"):
        from orion.store.hbase import hbase_thrift, parse_hbase_uri, thrift_client

        host, port, table = parse_hbase_uri(target)
        client = thrift_client(host, port)
        try:
            row, = client.getMultiple(table.encode(), [hbase_thrift().TGet(activity_row_key("acme", "odd", T0 + 3,
                                                                                             "unicode"))])
        finally:
            client.close()
        cells = {(cell.family, cell.qualifier): (cell.value, cell.timestamp) for cell in row.columnValues}
        assert cells == {(b"a", b"type"): (b"visit_web_page", T0 + 3),
                         (b"a", b"attributes"): (json.dumps(UNICODE, ensure_ascii=False, sort_keys=True,
                                                            separators=(",", ":")).encode(), T0 + 3),
                         (b"a", b"occurred_at"): (str(T0 + 3).encode(), T0 + 3)}
        return
    cbt = shutil.which("cbt")
    if cbt is None:
        pytest.fail("the cbt test needs the cbt tool: apt-get install google-cloud-cli-cbt", pytrace=False)
    table = target.rsplit("/", 1)[1]
    key = activity_row_key("acme", "odd", T0 + 3, "unicode").decode()
    result = subprocess.run([cbt, "-project", BIGTABLE_PROJECT, "-instance", BIGTABLE_INSTANCE, "lookup", table, key],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert key in result.stdout and "a:attributes" in result.stdout and "a:type" in result.stdout
    assert "visit_web_page" in result.stdout


def test_verification_catches_a_row_deleted_from_the_target_and_a_rerun_repairs_it(migrated):
    source, target, expected, _, _, dead_letters = migrated
    victim = next(a for a in expected if (a.tenant, a.lead_id) == BIG_LEAD)
    with open_store(target) as store:
        key = activity_row_key(victim.tenant, victim.lead_id, victim.occurred_at, victim.event_id)
        if target.startswith("hbase://"):
            store.delete_rows(store.table_id, [key])
        else:
            row = store._table(store.table_id).direct_row(key)
            row.delete()
            row.commit()
        assert store.count() == len(expected) - 1

    check = bootstrap(source, target, dead_letters, "--verify-only", "--workers", "1")
    assert check.returncode == 1, check.stdout + check.stderr[-3000:]
    assert f"MISMATCH tenant 'acme' salt {lead_salt(BIG_LEAD[1])}: source" in check.stdout
    assert re.search(r"lead ranges compared: [\d,]+ \(tenant x salt bucket\), 1 differ", check.stdout)
    assert f"activities in target: {len(expected) - 1:,}" in check.stdout
    assert "verification FAILED" in check.stdout

    repair = bootstrap(source, target, dead_letters, "--workers", "1")
    assert repair.returncode == 0, repair.stdout + repair.stderr[-3000:]
    with open_store(target) as store:
        assert store.count() == len(expected)


# --- the core, without services ------------------------------------------------------


def legacy_row(event_id=b"e1", *, tenant=b"acme", lead=b"7", at=T0, attributes='{"a": 1}') -> LegacyRow:
    return LegacyRow(1, tenant, event_id, lead, b"visit_web_page", at, attributes)


@pytest.mark.parametrize("row, reason", [
    (legacy_row(attributes="{broken"), BAD_ATTRIBUTES),
    (legacy_row(attributes="[1]"), BAD_ATTRIBUTES),
    (legacy_row(attributes='"text"'), BAD_ATTRIBUTES),
    (legacy_row(attributes='{"a": NaN}'), BAD_ATTRIBUTES),
    (legacy_row(attributes='{"a": "\\udc00"}'), BAD_ATTRIBUTES),
    (legacy_row(at=MAX_MS + 1), BAD_TIMESTAMP),
    (legacy_row(at=MIN_MS - 1), BAD_TIMESTAMP),
    (legacy_row(lead=b"\xc3"), BAD_FIELD),
    (legacy_row(b""), BAD_FIELD),
    (legacy_row(tenant=b""), BAD_FIELD),
    # MySQL's JSON functions read the first of a repeated key, a parser the last: refused
    (legacy_row(attributes='{"a": 1, "a": 2}'), BAD_ATTRIBUTES),
    # nested past what a parser reads (the column allows it): refused, not a crash
    (legacy_row(attributes='{"a": ' + "[" * 5000 + "]" * 5000 + "}"), BAD_ATTRIBUTES),
])
def test_a_bad_legacy_row_is_refused_with_its_reason(row, reason):
    with pytest.raises(BadActivity) as refused:
        activity_from_legacy(row)
    assert refused.value.reason == reason and refused.value.detail


def test_null_and_empty_attributes_mean_no_attributes():
    for stored in (None, "", "{}", b"{}"):
        activity, text = activity_from_legacy(legacy_row(attributes=stored))
        assert activity.attributes == {} and text == "{}"
    activity, _ = activity_from_legacy(legacy_row("é", tenant="ü".encode(), at=MIN_MS, attributes='{"b": 1, "a": [2]}'))
    assert activity == Activity("é", "ü", "7", "visit_web_page", MIN_MS, {"a": [2], "b": 1})


def test_splits_cover_the_id_span_without_overlap():
    for low, high, count in [(1, 100_000, 16), (5, 5, 4), (1, 3, 8), (10, 1_000_003, 7)]:
        splits = plan_splits(low, high, count)
        assert splits[0][0] == low and splits[-1][1] == high and len(splits) == min(count, high - low + 1)
        assert all(a[1] + 1 == b[0] and a[0] <= a[1] for a, b in zip(splits, splits[1:]))
    assert plan_splits(None, None, 4) == ()


def test_target_scan_ranges_cover_every_key_once_in_order():
    ranges = target_scan_ranges(["b", "a", "a#", "ü", "a-"], per_tenant=4)
    assert ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start < end for start, end in ranges[1:-1])
    for tenant, lead in [("a", "1"), ("a#", "x"), ("zz", "q"), ("0", "l"), ("ü", "lead-9"), ("a-", "7")]:
        key = activity_row_key(tenant, lead, T0, "e")
        assert sum((s is None or s <= key) and (e is None or key < e) for s, e in ranges) == 1


def test_range_checksums_ignore_order_and_see_any_change():
    activities = [Activity(f"e{n}", "acme", f"l{n % 5}", "visit_web_page", T0 + n, {"n": n}) for n in range(50)]

    def sums(items):
        found = RangeSums()
        for a in items:
            found.add(a)
        return dict(found.items())

    assert sums(activities) == sums(reversed(activities))
    changed = activities[:-1] + [activities[-1]._replace(attributes={"n": -1})]
    assert sums(changed) != sums(activities)
    assert sums(activities + activities[:1]) != sums(activities), "a duplicate shows"


# --- lead profiles -------------------------------------------------------------------


def test_the_lead_profiles_are_copied_verified_and_a_rerun_repairs_only_what_differs(
        mysql_server, bigtable_emulator, tmp_path):
    """The legacy lead_profiles (an encoded profile, a row written with SQL) reach the
    target: a lead's state (an unsubscribe, a campaign run) is not in its activities."""
    from orion.campaigns.flows import LeadFlows
    from orion.profiles import LeadRecord, decode_profile, encode_profile
    from orion.rules.model import LeadState
    from orion.store.base import StoredProfile

    name = f"orion_legacy_{uuid.uuid4().hex[:12]}"
    admin = _mysql_connect()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    source, target = mysql_server.uri(name), bigtable_uri()
    try:
        profiles = [StoredProfile("acme", f"L{n}", encode_profile(LeadRecord(flows=LeadFlows(lead=LeadState(
            {"email": f"l{n}@example.com", "unsubscribed": n % 2 == 0}, n, frozenset({"news"}))))),
            T0 + n if n == 3 else None) for n in range(1200)]  # more than one chunk
        with open_store(source) as store:
            store.init()
            store.write([Activity("e1", "acme", "L1", "visit_web_page", T0, {})])
            store.write_profiles(profiles + [StoredProfile("bank", "B1", profiles[0].data)])
        with admin.cursor() as cursor:
            cursor.execute(f"INSERT INTO `{name}`.lead_profiles (tenant, lead_id, attributes, score, lists) "
                           "VALUES ('acme', 'S1', %s, 5, '[]')",
                           (json.dumps({"email": "s1@example.com", "unsubscribed": True}),))
        dead_letters = tmp_path / "dead"

        first = bootstrap(source, target, dead_letters, "--workers", "1")
        assert first.returncode == 0, first.stdout + first.stderr[-3000:]
        assert "lead profiles: 1,202 in the legacy store, 1,202 copied, 0 not the same" in first.stdout
        assert "profile verification OK" in first.stdout
        with open_store(target) as store:
            copied = store.read_profiles([(p.tenant, p.lead_id) for p in profiles] + [("acme", "S1"), ("bank", "B1")])
            assert copied[:-2] == [p.data for p in profiles]
            assert decode_profile(copied[-2]).flows.lead.attributes["unsubscribed"] is True
            assert store.due_profiles(T0 + 10) == [("acme", "L3", T0 + 3)]

        again = bootstrap(source, target, dead_letters, "--workers", "1")
        assert again.returncode == 0 and "1,202 copied" not in again.stdout and " 0 copied" in again.stdout, \
            again.stdout
        # The legacy store changes one lead; the target lacks another.
        with open_store(source) as store:
            store.write_profiles([profiles[5]._replace(data=profiles[4].data)])
        with admin.cursor() as cursor:
            cursor.execute(f"UPDATE `{name}`.lead_profiles SET data = %s WHERE lead_id = 'L7'", (profiles[6].data,))
        check = bootstrap(source, target, dead_letters, "--verify-only", "--workers", "1")
        assert check.returncode == 1 and "2 not the same in the target" in check.stdout, check.stdout
        assert "profile verification FAILED" in check.stdout
        repair = bootstrap(source, target, dead_letters, "--workers", "1")
        assert repair.returncode == 0 and "2 copied, 0 not the same" in repair.stdout, repair.stdout
        with open_store(target) as store:
            assert store.read_profiles([("acme", "L5"), ("acme", "L7")]) == [profiles[4].data, profiles[6].data]
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_a_tenant_the_legacy_store_does_not_know_is_refused(legacy, bigtable_emulator, tmp_path):
    source, _ = legacy
    refused = bootstrap(source, bigtable_uri(), tmp_path / "dead", "--tenant", "ACME")
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert "no activity and no lead profile of tenant 'ACME'; its tenants: 'acme'" in refused.stderr


def test_the_report_says_when_the_target_holds_rows_the_legacy_store_no_longer_has():
    from orion.migration import RangeChecksum, RangeComparison, Verification

    extra = Verification([RangeComparison("acme", "01", RangeChecksum(2, 5), RangeChecksum(3, 9))], 2, 2, 0, 0, {})
    missing = Verification([RangeComparison("acme", "01", RangeChecksum(3, 9), RangeChecksum(2, 5))], 3, 3, 0, 0, {})
    assert "a rerun does not remove them" in extra.render()
    assert "a rerun does not remove them" not in missing.render() and "verification FAILED" in missing.render()
