"""The tenant registry and per-tenant stages in the store path: the registry on every
backend `orion store init` creates it in (SQLite, the real MariaDB, the real Bigtable
emulator); `orion tenants list | set | report`; a migrating store in mode tenants routing
each tenant's writes and reads by its stage and switching a tenant only once its view of
the registry is refreshed; the Prometheus files it writes; and `orion bootstrap --tenant`
copying and verifying one tenant alone. The streaming runs that switch tenants with
activities in flight are tests/test_tenants_streaming.py.

    .venv/bin/python -m pytest -q tests/test_tenants.py
"""
from __future__ import annotations

import json

import pytest
from conftest import DAY, T0
from store_services import _mysql_connect, bigtable_uri, drop_mysql_tables, mysql_uri

from orion import cli
from orion.activities import Activity
from orion.store import StoredProfile, open_store
from orion.store.base import TenantStage
from orion.store.migrating import MigratingStore, migration_store_uri
from orion.tenants import metrics
from orion.tenants.registry import TenantStages, set_stage


def drop_registry_and_tables(database: str) -> None:
    """The store tables, the registry and the roll-up tables (`orion store init` makes them too)."""
    drop_mysql_tables(database)
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{database}`.tenant_stages, `{database}`.rollups, "
                           f"`{database}`.rollup_segments")
    finally:
        connection.close()


@pytest.fixture
def legacy(mysql_database):
    """The legacy MySQL store's URI, its tables (and registry) dropped afterwards."""
    drop_registry_and_tables(mysql_database)
    yield mysql_uri(mysql_database)
    drop_registry_and_tables(mysql_database)


def visit(event_id: str, tenant: str, lead: str = "L1", at: int = T0) -> Activity:
    return Activity(event_id, tenant, lead, "visit_web_page", at, {"url": f"https://{tenant}.example/"})


def tenant_event_ids(uri: str, tenant: str, leads=("L1", "L2")) -> set[str]:
    with open_store(uri) as store:
        return {a.event_id for lead in leads for a in store.history(tenant, lead)}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the registry in every store ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "mysql", "bigtable"])
def registry_store(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    elif request.param == "mysql":
        yield request.getfixturevalue("legacy")
    else:
        request.getfixturevalue("bigtable_emulator")
        yield bigtable_uri()


def test_store_init_creates_the_registry_and_each_tenant_keeps_its_stage_when_and_the_one_before(registry_store):
    assert cli.main(["store", "init", registry_store]) == 0
    with open_store(registry_store) as store:
        assert store.read_tenant_stages() == []
        row, changed = set_stage(store, "acme", "passive", now_ms=T0)
        assert changed and row == TenantStage("acme", "passive", T0, "legacy")
        set_stage(store, "bänk #1/é", "active", now_ms=T0 + 1)  # any characters, one row
        assert set_stage(store, "acme", "passive", now_ms=T0 + 5) == (row, False), \
            "setting the stage it has changes nothing, its time included"
        set_stage(store, "acme", "deactivated", now_ms=T0 + 9)
    with open_store(registry_store) as store:  # a new connection reads what was written
        assert store.read_tenant_stages() == [
            TenantStage("acme", "deactivated", T0 + 9, "passive"), TenantStage("bänk #1/é", "active", T0 + 1, "legacy")]
    assert cli.main(["store", "init", registry_store]) == 0  # init again keeps the rows
    with open_store(registry_store) as store:
        assert [row.stage for row in store.read_tenant_stages()] == ["deactivated", "active"]
        with pytest.raises(ValueError, match="unknown stage 'activ'"):
            set_stage(store, "acme", "activ")


def test_changes_at_the_same_moment_each_record_the_stage_the_other_left(registry_store):
    """Three changes of one tenant at once, each on its own connection: the store applies
    them one after the other, so their previous stages chain from legacy to the last
    (with a read, then a write, two could both record legacy and lose a step)."""
    import threading

    assert cli.main(["store", "init", registry_store]) == 0
    stages = ("passive", "active", "deactivated")
    for round_ in range(8):
        tenant = f"racing-{round_}"
        stores = [open_store(registry_store) for _ in stages]
        start = threading.Barrier(len(stages))
        results: dict[str, tuple] = {}

        def change(store, stage):
            start.wait()
            results[stage] = set_stage(store, tenant, stage, now_ms=T0 + round_)

        threads = [threading.Thread(target=change, args=pair) for pair in zip(stores, stages)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for store in stores:
            store.close()
        assert all(changed for _, changed in results.values()) and len(results) == len(stages)
        previous = sorted(row.previous_stage for row, _ in results.values())
        with open_store(registry_store) as store:
            final = {row.tenant: row for row in store.read_tenant_stages()}[tenant]
        assert previous == sorted(["legacy", *(s for s in stages if s != final.stage)]), \
            f"round {round_}: the changes recorded previous stages {previous}, ending at {final.stage}"


def test_tenants_list_set_and_report_on_the_command_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert cli.main(["tenants", "list", "--store", uri]) == 2
    assert "orion store init" in capsys.readouterr().err, "a store without the registry says how to create it"
    assert cli.main(["store", "init", uri]) == 0
    assert cli.main(["tenants", "list", "--store", uri]) == 0
    assert "every tenant is legacy" in capsys.readouterr().out
    assert cli.main(["tenants", "set", "acme", "--stage", "passive", "--store", uri]) == 0
    assert "acme: legacy -> passive" in capsys.readouterr().out
    assert cli.main(["tenants", "set", "acme", "--stage", "passive", "--store", uri]) == 0
    assert "already passive" in capsys.readouterr().out
    assert cli.main(["tenants", "set", "bank", "--stage", "active", "--store", uri]) == 0
    capsys.readouterr()
    for odd in ("acme ", "ac\nme", "x" * 300):  # a name no activity of the tenant carries
        assert cli.main(["tenants", "set", odd, "--stage", "active", "--store", uri]) == 2
        assert "tenant" in capsys.readouterr().err
    assert cli.main(["tenants", "list", "--store", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["acme", "passive"], ["bank", "active"]]
    assert lines[1].split()[3] == "legacy", "the stage before"

    # The report reads what a job wrote into its --out-dir: two workers' metrics files
    # and a difference report.
    out = tmp_path / "out"
    out.mkdir()
    first, second = metrics.TenantMetrics(out), metrics.TenantMetrics(out)
    first.add(metrics.ACTIVITIES, "acme", "legacy", 4)
    first.add(metrics.ACTIVITIES, "acme", "passive", 3)
    second.add(metrics.ACTIVITIES, "acme", "passive", 2)
    second.add(metrics.COMPARED, "acme", "history", 6)
    second.add(metrics.ACTIVITIES, "bank", "active", 50)
    first.flush(), second.flush()
    records = [{"at": f"2026-11-22T10:00:0{n}.000Z", "mode": "tenants", "stage": "passive", "kind": kind,
                "tenant": "acme", "lead_id": f"L{n}", "served_from": "legacy mysql", "detail": f"difference {n}"}
               for n, kind in enumerate(["index", "history", "history"])]
    records.append({**records[0], "tenant": "bank", "detail": "not acme's"})
    (out / "differences-abc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    assert cli.main(["tenants", "report", "acme", "--store", uri, "--report-dir", str(out), "--examples", "2"]) == 0
    text = capsys.readouterr().out
    assert "tenant acme: stage passive since" in text and "(before: legacy)" in text
    assert "activities written, by the stage each was handled under: 9" in text
    assert "reads compared: 6 (history 6)" in text
    assert "differences: 3 (history 2, index 1)" in text
    assert "difference 0" in text and "difference 1" in text and "difference 2" not in text, "the first two, oldest first"
    assert cli.main(["tenants", "report", "acme", "--store", uri, "--report-dir", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["activities_by_stage"] == {"legacy": 4, "passive": 5, "active": 0, "deactivated": 0}
    assert report["differences_by_kind"] == {"history": 2, "index": 1}
    assert cli.main(["tenants", "report", "nobody", "--store", uri, "--report-dir", str(out)]) == 0
    assert "not in the registry, so legacy" in capsys.readouterr().out

    # A folder the job never wrote to is not an all-clear.
    for folder in (tmp_path / "no-such-dir", tmp_path):
        assert cli.main(["tenants", "report", "acme", "--store", uri, "--report-dir", str(folder)]) == 2
        assert "give the running job's --out-dir" in capsys.readouterr().err
    # Lines that do not read are left out, and said; the rest is counted.
    with open(next(out.glob("tenant-metrics-*.prom")), "a", encoding="utf-8") as extra:
        extra.write('orion_tenant_activities_total{tenant="acme",stage="passive",writer="w"} abc\n'
                    'orion_tenant_activities_total{tenant="acme",stage="passive",writer="x"} NaN\n')
    with open(out / "differences-abc.jsonl", "ab") as extra:
        extra.write(b'[1, 2]\n\xff\xfe\n{"tenant": "acme", "at": 5, "kind": "index"}\n'
                    b'{"tenant": "acme", "at": "x", "kind": "index"}\n')
    assert cli.main(["tenants", "report", "acme", "--store", uri, "--report-dir", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["activities_by_stage"]["passive"] == 5 and report["differences"] == 5
    assert len(report["unreadable"]) == 4, report["unreadable"]


def test_the_metrics_files_are_prometheus_text_exposition(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    written = metrics.TenantMetrics(tmp_path)
    odd = 'a "quoted"\\tenant\nwith a newline'
    written.add(metrics.ACTIVITIES, odd, "passive", 7)
    written.add(metrics.DIFFERENCES, "acme", "history", 2)
    written.set_stages({odd: "passive", "acme": "active"})
    written.flush()
    text = written.path.read_text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["orion_tenant_activities"].type == "counter"
    [sample] = families["orion_tenant_activities"].samples
    assert sample.labels == {"tenant": odd, "stage": "passive", "writer": written.writer} and sample.value == 7
    assert {s.labels["tenant"]: s.labels["stage"] for s in families["orion_tenant_stage"].samples} == {
        odd: "passive", "acme": "active"}
    assert metrics.totals(metrics.read_samples(tmp_path), metrics.ACTIVITIES, odd, "stage") == {"passive": 7}


# --- a migrating store in mode tenants ---------------------------------------------------------


def test_each_tenant_is_written_and_read_as_its_stage_says_and_a_change_applies_at_the_next_refresh(legacy, tmp_path):
    new = f"sqlite:///{tmp_path / 'new.db'}"
    for uri in (legacy, new):
        with open_store(uri) as store:
            store.init()
    with open_store(new) as registry:
        set_stage(registry, "acme", "passive")
        set_stage(registry, "bank", "active")
        set_stage(registry, "zed", "deactivated")
    clock = Clock()
    stages = TenantStages(refresh_s=10, clock=clock)
    report_dir = tmp_path / "report"
    uri = migration_store_uri("tenants", legacy, new, report_dir, refresh_s=10)
    store = MigratingStore(uri, open_store, stages)
    store.init()
    # One batch, four tenants (nobody is not in the registry: legacy).
    batch = [visit(f"{tenant}-1", tenant) for tenant in ("acme", "bank", "zed", "nobody")]
    assert store.write_with_failures(batch).written == 4
    store.index_activities(batch)
    store.write_profiles([StoredProfile(t, "L1", f"{t}'s profile", T0) for t in ("acme", "bank", "zed", "nobody")])
    assert {t: tenant_event_ids(legacy, t) for t in ("acme", "bank", "zed", "nobody")} == {
        "acme": {"acme-1"}, "bank": {"bank-1"}, "zed": {"zed-1"}, "nobody": {"nobody-1"}}, "MySQL gets every stage"
    assert {t: tenant_event_ids(new, t) for t in ("acme", "bank", "zed", "nobody")} == {
        "acme": {"acme-1"}, "bank": {"bank-1"}, "zed": set(), "nobody": set()}, "the new store: passive and active only"
    with open_store(new) as single:
        assert single.read_profiles([("acme", "L1"), ("zed", "L1")]) == ["acme's profile", None]

    # A difference in each migrating tenant: an activity only the new store has.
    with open_store(new) as single:
        single.write([visit("acme-new-only", "acme", at=T0 - DAY), visit("bank-new-only", "bank", at=T0 - DAY)])
    assert [a.event_id for a in store.history("acme", "L1")] == ["acme-1"], "passive: MySQL's answer"
    assert [a.event_id for a in store.history("bank", "L1")] == ["bank-1", "bank-new-only"], "active: the new store's"
    assert [a.event_id for a in store.history("zed", "L1")] == ["zed-1"]
    assert store.read_profiles([("bank", "L1"), ("zed", "L1"), ("acme", "L1")]) == [
        "bank's profile", "zed's profile", "acme's profile"]
    assert store.due_profiles(T0) == [("acme", "L1", T0), ("bank", "L1", T0), ("nobody", "L1", T0), ("zed", "L1", T0)]

    # acme is deactivated: this process's view still has it passive until the refresh.
    with open_store(new) as registry:
        set_stage(registry, "acme", "deactivated")
    store.write_with_failures([visit("acme-2", "acme", lead="L2")])
    assert tenant_event_ids(new, "acme") == {"acme-1", "acme-new-only", "acme-2"}, "still passive: both written"
    clock.now += 10
    store.write_with_failures([visit("acme-3", "acme", lead="L2")])
    assert "acme-3" not in tenant_event_ids(new, "acme") and "acme-3" in tenant_event_ids(legacy, "acme")
    assert [a.event_id for a in store.history("acme", "L1")] == ["acme-1"]
    # The index update of each goes where it was written, though the stage changed since.
    store.index_activities([visit("acme-2", "acme", lead="L2"), visit("acme-3", "acme", lead="L2")])
    with open_store(new) as single:
        assert [count for count, _ in single.read_index("acme", "L2").values()] == [1]
    with open_store(legacy) as single:
        assert [count for count, _ in single.read_index("acme", "L2").values()] == [2]

    # The registry cannot be read: the stages read before stay in force, and it is reported.
    import sqlite3

    with sqlite3.connect(tmp_path / "new.db") as connection:
        connection.execute("ALTER TABLE tenant_stages RENAME TO tenant_stages_away")
    clock.now += 10
    store.write_with_failures([visit("bank-2", "bank", lead="L2")])
    assert "bank-2" in tenant_event_ids(new, "bank"), "bank is still active"
    store.close()

    differences = [json.loads(line) for f in report_dir.glob("differences-*.jsonl") for line in f.read_text().splitlines()]
    assert sorted((d["tenant"], d["stage"], d["kind"], d["served_from"]) for d in differences) == [
        ("", "tenants", "unavailable", "legacy mysql"),
        ("acme", "passive", "history", "legacy mysql"),
        ("bank", "active", "history", "new sqlite")]
    samples = metrics.read_samples(report_dir)
    assert metrics.totals(samples, metrics.ACTIVITIES, "acme", "stage") == {"passive": 2, "deactivated": 1}, \
        "each write counted under the one stage it was made in"
    assert metrics.totals(samples, metrics.ACTIVITIES, "bank", "stage") == {"active": 2}
    assert metrics.totals(samples, metrics.ACTIVITIES, "zed", "stage") == {"deactivated": 1}
    assert metrics.totals(samples, metrics.ACTIVITIES, "nobody", "stage") == {"legacy": 1}
    compared = metrics.totals(samples, metrics.COMPARED, "bank", "kind")
    assert compared["history"] == 1 and compared["profile"] >= 2
    assert metrics.totals(samples, metrics.DIFFERENCES, "acme", "kind") == {"history": 1}
    assert metrics.totals(samples, metrics.STAGE, "acme", "stage") == {"deactivated": 1}


def test_a_fixed_mode_counts_per_tenant_as_well(legacy, tmp_path):
    new = f"sqlite:///{tmp_path / 'new.db'}"
    with open_store(legacy) as store:  # the legacy store is there before the migration (never made by it)
        store.init()
    with open_store(migration_store_uri("passive", legacy, new, tmp_path / "report")) as store:
        store.init()
        store.write([visit("a-1", "acme"), visit("a-2", "acme"), visit("b-1", "bank")])
        store.history("acme", "L1")
    samples = metrics.read_samples(tmp_path / "report")
    assert metrics.totals(samples, metrics.ACTIVITIES, "acme", "stage") == {"passive": 2}
    assert metrics.totals(samples, metrics.COMPARED, "acme", "kind") == {"history": 1}


# --- orion bootstrap --tenant ----------------------------------------------------------------


def _legacy_rows(database: str, rows: list[tuple]) -> None:
    connection = _mysql_connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.executemany("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
                               "VALUES (%s, %s, %s, %s, %s, %s)", rows)
    finally:
        connection.close()


def test_bootstrap_of_one_tenant_copies_and_verifies_that_tenant_alone(legacy, mysql_database, bigtable_emulator,
                                                                       tmp_path, capsys):
    with open_store(legacy) as store:
        store.init()
    # Interleaved ids: the tenant's rows are spread over the whole id span.
    _legacy_rows(mysql_database, [(tenant, f"{tenant}-{n}", f"L{n % 7}", "visit_web_page", T0 + n, "{}")
                                  for n in range(60) for tenant in ("acme", "bank")])
    target = bigtable_uri()
    args = ["bootstrap", "--from", legacy, "--to", target, "--tenant", "acme", "--workers", "1", "--splits", "4",
            "--dead-letters", str(tmp_path / "dead")]
    assert cli.main(args) == 0, capsys.readouterr()
    out = capsys.readouterr()
    assert "tenant 'acme' alone" in out.err and "verification OK" in out.out
    assert "activities in target: 60" in out.out
    with open_store(target) as store:
        assert store.count() == 60, "acme's rows, none of bank's"
        assert {a.event_id for n in range(7) for a in store.history("acme", f"L{n}")} == {f"acme-{n}" for n in range(60)}
        # Another tenant's row in the target is not this bootstrap's business ...
        store.write([visit("bank-written-by-the-job", "bank")])
    assert cli.main(args + ["--verify-only"]) == 0
    capsys.readouterr()
    # ... but a row of acme missing is.
    with open_store(legacy) as store:
        store.write([visit("acme-new-in-mysql", "acme")])
    assert cli.main(args + ["--verify-only"]) == 1
    assert "MISMATCH tenant 'acme'" in capsys.readouterr().out


def test_rows_the_running_job_writes_during_a_tenants_bootstrap_are_verified_not_reported(
        legacy, mysql_database, bigtable_emulator, tmp_path):
    """During a tenant's rollout the job keeps writing the tenant, to both stores
    (passive): rows it writes after the bootstrap planned its id span are compared too,
    so they match; a row written to the legacy store alone since then is a difference."""
    from orion.migration import plan_bootstrap
    from orion.pipelines.bootstrap import BootstrapSettings, run_bootstrap

    with open_store(legacy) as store:
        store.init()
    _legacy_rows(mysql_database, [("acme", f"acme-{n}", f"L{n % 7}", "visit_web_page", T0 + n, "{}")
                                  for n in range(30)])
    target = bigtable_uri()
    settings = BootstrapSettings(dead_letter_prefix=str(tmp_path / "dead"), workers=1)
    plan = plan_bootstrap(legacy, target, 4, "acme")
    for uri in (legacy, target):  # the job, in passive mode: both stores
        with open_store(uri) as store:
            store.write([visit("acme-by-the-job", "acme", lead="L3", at=T0 + DAY)])
    verification, _ = run_bootstrap(plan, settings, out=open("/dev/null", "w"))
    assert verification.ok and verification.late_rows == 1, verification.render()
    assert "written since the plan: 1 legacy rows" in verification.render()

    plan = plan_bootstrap(legacy, target, 4, "acme")
    with open_store(legacy) as store:  # the legacy store alone: not in the target
        store.write([visit("acme-legacy-only", "acme", lead="L4", at=T0 + DAY)])
    verification, _ = run_bootstrap(plan, settings._replace(copy=False), out=open("/dev/null", "w"))
    assert not verification.ok and verification.late_rows == 1 and len(verification.differing) == 1
