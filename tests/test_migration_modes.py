"""Reads the graph makes from the store, and the migration modes.

A lead new to the graph has its history counters seeded from the store (the activity
index for plain counts, the history for counts with conditions), so a history filter sees
what earlier runs or `orion bootstrap` stored. `--mode passive` writes both stores,
serves those reads from MySQL and reports every difference with the new store; `--mode
active` serves from the new store and still compares; going back to `--mode legacy`
finds every activity written meanwhile in MySQL. Real MariaDB, a real Bigtable emulator and
a real HBase as the new store, the real DirectRunner.

    .venv/bin/python -m pytest -q tests/test_migration_modes.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DAY, T0
from hbase_services import hbase_uri
from store_services import bigtable_uri, drop_mysql_tables, mysql_uri

from orion import cli
from orion.activities import Activity, ActivityTypes, format_timestamp, parse_activity
from orion.rules import evaluate, load_rules
from orion.runners.direct import RunConfig, run
from orion.seeding import seed_state, seed_states
from orion.transforms.evaluate import SEED_BATCH
from orion.store import StoredProfile, open_store
from orion.store.migrating import migration_store_uri

RULES = """
tenant: acme
campaigns:
  - name: Pricing fan
    qualification: every_time
    triggers: [{activity: fill_out_form, where: {form: {is: Contact}}}]
    filters:
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: "/pricing"}}
          at_least: 3
          in_past: {n: 30, unit: days}
    flow:
      - change_score: {delta: 10}
  - name: Regular reader
    qualification: every_time
    triggers: [{activity: fill_out_form, where: {form: {is: Contact}}}]
    filters:
      - activity_history: {activity: open_email, at_least: 2, in_past: {n: 7, unit: days}}
"""


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "acme.yaml").write_text(RULES)
    return directory


def activity(event_id: str, lead: str, type_: str, at: int, **attributes) -> Activity:
    return parse_activity({"event_id": event_id, "tenant": "acme", "lead_id": lead, "type": type_,
                           "occurred_at": at, "attributes": attributes}, ActivityTypes())


def history_of(lead: str, visits: int, opens: int, prefix: str = "h") -> list[Activity]:
    """`visits` pricing visits and `opens` email opens within the last days before T0,
    plus noise the filters must not count (another url, and opens 8+ days old)."""
    found = [activity(f"{prefix}-{lead}-v{i}", lead, "visit_web_page", T0 - (i + 1) * DAY,
                      url="https://acme.example/pricing") for i in range(visits)]
    found += [activity(f"{prefix}-{lead}-o{i}", lead, "open_email", T0 - i * 3_600_000 - 60_000, email="News")
              for i in range(opens)]
    found += [activity(f"{prefix}-{lead}-x", lead, "visit_web_page", T0 - DAY, url="https://acme.example/blog"),
              activity(f"{prefix}-{lead}-old", lead, "open_email", T0 - 9 * DAY, email="News")]
    return found


def store_history(uri: str, activities: list[Activity]) -> None:
    with open_store(uri) as store:
        store.init()
        store.write(activities)
        store.index_activities(activities)


def contact(lead: str, at: int = T0, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"c-{lead}", "tenant": "acme", "lead_id": lead, "type": "fill_out_form",
            "occurred_at": format_timestamp(at), "attributes": {"form": "Contact"}}


def fired(out_dir: Path) -> set[tuple[str, str]]:
    """(lead, campaign) of the qualified outcomes a run wrote."""
    return {(o["lead_id"], o["campaign"]) for f in out_dir.glob("outcomes-*.jsonl")
            for o in map(json.loads, f.read_text().splitlines()) if o["qualified"]}


def run_graph(rules_dir: Path, events: list[dict], tmp_path: Path, name: str, store_uri: str, **modes) -> dict:
    events_file = tmp_path / f"{name}.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    config = RunConfig(rules_dir=str(rules_dir), template_dirs=(), events=str(events_file), subscription=None,
                       store_uri=store_uri, out_dir=tmp_path / name, allowed_lateness_ms=60_000,
                       dedup_span_ms=86_400_000, duration_s=None, beam_args=(), **modes)
    return run(config, out=open("/dev/null", "w"))


def new_store_name(uri: str) -> str:
    """How a difference report names the new store: "new" and its URI scheme."""
    return "new " + uri.split("://", 1)[0]


def report(out_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(out_dir.glob("differences-*.jsonl")) for line in f.read_text().splitlines()]


# --- seeding from the store ----------------------------------------------------------------


def test_seeded_counters_equal_evaluating_the_whole_history(rules_dir, tmp_path):
    rules = load_rules(rules_dir)
    past = history_of("L1", visits=3, opens=2)
    uri = f"sqlite:///{tmp_path / 's.db'}"
    store_history(uri, past)
    with open_store(uri) as store:
        seeded = seed_state(rules, store, "acme", "L1", T0)
    state = None
    for a in sorted(past, key=lambda a: (a.occurred_at, a.event_id)):
        state, _ = evaluate(rules, state, a)
    assert seeded.history == state.history
    # a second seed of the same lead is the same (the read is idempotent)
    with open_store(uri) as store:
        assert seed_state(rules, store, "acme", "L1", T0) == seeded


def test_only_what_was_stored_before_the_first_activity_is_counted(rules_dir, tmp_path):
    rules = load_rules(rules_dir)
    uri = f"sqlite:///{tmp_path / 's.db'}"
    store_history(uri, history_of("L1", visits=3, opens=2))
    with open_store(uri) as store:
        # Seeding as of a time before the visits: nothing of them counts.
        early = seed_state(rules, store, "acme", "L1", T0 - 10 * DAY)
        assert early is None or all(sum(days.values()) == 0 for days in early.history.values())
        assert seed_state(rules, store, "acme", "nobody", T0) is None


def test_a_second_run_sees_the_history_the_first_one_stored(rules_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    first = [{"event_id": a.event_id, "tenant": a.tenant, "lead_id": a.lead_id, "type": a.type,
              "occurred_at": a.occurred_at, "attributes": a.attributes}
             for a in sorted(history_of("L1", 3, 2), key=lambda a: a.occurred_at)]  # in time order: none late
    run_graph(rules_dir, first, tmp_path, "first", uri)
    totals = run_graph(rules_dir, [contact("L1"), contact("L9")], tmp_path, "second", uri)
    assert fired(tmp_path / "second") == {("L1", "Pricing fan"), ("L1", "Regular reader")}
    assert totals["leads_seeded_from_store"] == 1
    # Running the same input again counts nothing twice: the leads' profiles know it was
    # evaluated, so nothing is evaluated or fires again.
    again = run_graph(rules_dir, [contact("L1"), contact("L9")], tmp_path, "again", uri)
    assert fired(tmp_path / "again") == set()
    assert again["duplicates"] == 2 and again.get("evaluated", 0) == 0


def test_leads_seeded_together_each_count_their_own_history(rules_dir, tmp_path):
    # The bounded graph seeds leads in groups (SEED_BATCH): more leads than a group,
    # each with its own history and its own first time, some with none.
    rules = load_rules(rules_dir)
    uri = f"sqlite:///{tmp_path / 's.db'}"
    leads = [f"L{n}" for n in range(SEED_BATCH + 50)]
    store_history(uri, [a for n, lead in enumerate(leads) if n % 5
                        for a in history_of(lead, visits=n % 4 + 1, opens=n % 3)])
    asked = [("acme", lead, T0 - (n % 2) * DAY) for n, lead in enumerate(leads)]
    with open_store(uri) as store:
        together = seed_states(rules, store, asked)
        one_by_one = [seed_state(rules, store, *lead) for lead in asked]
    assert together == one_by_one
    assert sum(state is not None for state in together) > SEED_BATCH // 2
    # The graph evaluates each lead with its own counters: qualified exactly where the
    # lead's own history says so (3 pricing visits; 2 opens in the last 7 days).
    totals = run_graph(rules_dir, [contact(lead) for lead in leads], tmp_path, "grouped", uri)
    expected = {(lead, "Pricing fan") for n, lead in enumerate(leads) if n % 5 and n % 4 + 1 >= 3}
    expected |= {(lead, "Regular reader") for n, lead in enumerate(leads) if n % 5 and n % 3 >= 2}
    assert fired(tmp_path / "grouped") == expected
    assert totals["leads_seeded_from_store"] == sum(1 for n in range(len(leads)) if n % 5)


def test_the_campaign_flows_see_the_stored_history_too(rules_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'a.db'}"
    first = [{"event_id": a.event_id, "tenant": a.tenant, "lead_id": a.lead_id, "type": a.type,
              "occurred_at": a.occurred_at, "attributes": a.attributes}
             for a in sorted(history_of("L1", 3, 2), key=lambda a: a.occurred_at)]
    run_graph(rules_dir, first, tmp_path, "first", uri, outbox_uri=f"sqlite:///{tmp_path / 'outbox.db'}")
    run_graph(rules_dir, [contact("L1")], tmp_path, "second", uri, outbox_uri=f"sqlite:///{tmp_path / 'outbox.db'}")
    # The flows evaluate the lead themselves: seeded as well, they run Pricing fan's flow.
    with open_store(uri) as store:
        changes = store.history("acme", "L1", types=["change_score"])
    assert [a.attributes["delta"] for a in changes] == [10]


# --- passive, active, back to legacy ----------------------------------------------------------


@pytest.fixture(params=["bigtable", "hbase"])
def two_stores(request, mysql_database):
    """The legacy MySQL store and a new store (Bigtable, HBase) holding the same history (as
    after `orion bootstrap`): L1 with 3 pricing visits and 2 opens, L2 with 2 visits and 2 opens."""
    if request.param == "bigtable":
        request.getfixturevalue("bigtable_emulator")
        new = bigtable_uri()
    else:
        request.getfixturevalue("hbase_server")
        new = hbase_uri()
    legacy = mysql_uri(mysql_database)
    past = history_of("L1", 3, 2) + history_of("L2", 2, 2)
    store_history(legacy, past)
    store_history(new, past)
    yield legacy, new
    drop_mysql_tables(mysql_database)


def test_passive_mode_serves_mysql_and_reports_a_difference_injected_into_the_new_store(rules_dir, tmp_path, two_stores):
    legacy, new = two_stores
    # The differences: one more pricing visit for L2 in the new store only (read through the
    # history: the counter has a condition), one more email open for L3 two days ago in
    # MySQL only (read through the activity index: the counter has none).
    store_history(new, [activity("only-in-new-store", "L2", "visit_web_page", T0 - 2 * DAY - 5,
                                 url="https://acme.example/pricing")])
    store_history(legacy, [activity("only-in-mysql", "L3", "open_email", T0 - 2 * DAY, email="News"),
                           activity("both-L3", "L3", "open_email", T0 - 2 * DAY + 5, email="News")])
    store_history(new, [activity("both-L3", "L3", "open_email", T0 - 2 * DAY + 5, email="News")])
    totals = run_graph(rules_dir, [contact("L1"), contact("L2"), contact("L3")], tmp_path, "passive", new,
                       mode="passive", legacy_store_uri=legacy)
    # MySQL's answers are used: L2 has 2 pricing visits there, not enough; L3 2 opens.
    assert fired(tmp_path / "passive") == {("L1", "Pricing fan"), ("L1", "Regular reader"),
                                           ("L2", "Regular reader"), ("L3", "Regular reader")}
    differences = {(d["tenant"], d["lead_id"], d["kind"]): d for d in report(tmp_path / "passive")}
    assert set(differences) == {("acme", "L2", "history"), ("acme", "L3", "index")}
    history, index = differences["acme", "L2", "history"], differences["acme", "L3", "index"]
    assert history["only_in_other"] == ["only-in-new-store"] and history["served_from"] == "legacy mysql"
    assert [(d["type"], d["serving"][0], d["other"][0]) for d in index["differing"]] == [("open_email", 2, 1)]
    assert totals["migration_differences"] == 2
    # Both stores received the new activities.
    for uri in (legacy, new):
        with open_store(uri) as store:
            assert [a.event_id for a in store.history("acme", "L2", since=T0)] == ["c-L2"]


def test_active_mode_serves_the_new_store_and_going_back_to_legacy_loses_nothing(rules_dir, tmp_path, two_stores):
    legacy, new = two_stores
    store_history(new, [activity("only-in-new-store", "L2", "visit_web_page", T0 - 2 * DAY - 5,
                                 url="https://acme.example/pricing")])
    run_graph(rules_dir, [contact("L1"), contact("L2")], tmp_path, "active", new,
              mode="active", legacy_store_uri=legacy)
    # The new store's answer is used now: L2 has 3 pricing visits there.
    assert ("L2", "Pricing fan") in fired(tmp_path / "active")
    differences = report(tmp_path / "active")
    assert [(d["lead_id"], d["kind"], d["served_from"], d["only_in_serving"]) for d in differences] == [
        ("L2", "history", new_store_name(new), ["only-in-new-store"])]
    # Roll back: legacy mode reads MySQL alone, which has what active mode wrote.
    later = [contact("L1", T0 + DAY, "c2-L1"), contact("L3", T0 + DAY, "c2-L3")]
    run_graph(rules_dir, later, tmp_path, "legacy", new, mode="legacy", legacy_store_uri=legacy)
    with open_store(legacy) as store:
        ids = {a.event_id for lead in ("L1", "L2", "L3") for a in store.history("acme", lead, since=T0)}
    assert ids == {"c-L1", "c-L2", "c2-L1", "c2-L3"}
    assert report(tmp_path / "legacy") == []
    # The index was kept in MySQL too: L1's contact forms on two days.
    with open_store(legacy) as store:
        index = store.read_index("acme", "L1", types=["fill_out_form"])
    assert sorted(count for count, _ in index.values()) == [1, 1]


def test_profiles_are_written_to_both_stores_and_read_from_the_serving_one(tmp_path, two_stores):
    legacy, new = two_stores
    with open_store(migration_store_uri("passive", legacy, new, tmp_path / "writes")) as store:
        assert store.write_profiles([StoredProfile("acme", "L1", "one", T0), StoredProfile("acme", "L2", "two")]) == 2
    for uri in (legacy, new):
        with open_store(uri) as single:
            assert single.read_profiles([("acme", "L1"), ("acme", "L2")]) == ["one", "two"]
            assert single.due_profiles(T0) == [("acme", "L1", T0)]
    assert report(tmp_path / "writes") == []
    # Behind the migrating store's back, L1's profile becomes different in each store.
    with open_store(legacy) as single:
        single.write_profiles([StoredProfile("acme", "L1", "legacy's", T0)])
    with open_store(new) as single:
        single.write_profiles([StoredProfile("acme", "L1", "new's", T0 + DAY)])
    for mode, served, wake, served_from in (("passive", "legacy's", T0, "legacy mysql"),
                                            ("active", "new's", T0 + DAY, new_store_name(new))):
        with open_store(migration_store_uri(mode, legacy, new, tmp_path / mode)) as store:
            assert store.read_profiles([("acme", "L1"), ("acme", "L2"), ("acme", "L3")]) == [served, "two", None]
            assert store.due_profiles(T0 + DAY) == [("acme", "L1", wake)]
            assert store.count_profiles() == 2
        differences = report(tmp_path / mode)
        assert [(d["lead_id"], d["kind"], d["served_from"]) for d in differences] == [
            ("L1", "profile", served_from), ("L1", "profile", served_from)]
        assert differences[1]["serving"] == wake


def test_a_mode_needs_the_legacy_store(capsys):
    assert cli.main(["run", "--mode", "passive", "--store", "sqlite:///x.db"]) == 2
    assert "--legacy-store" in capsys.readouterr().err


def test_a_mistyped_legacy_database_is_refused_never_created(rules_dir, tmp_path, mysql_database, capsys):
    from store_services import _mysql_connect

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(contact("L1")) + "\n")
    missing = f"{mysql_database}_typo"
    common = ["run", "--events", str(events), "--rules", str(rules_dir), "--store", f"sqlite:///{tmp_path / 'new.db'}",
              "--out-dir", str(tmp_path / "out"), "--outbox", "none", "--no-rollups"]
    for mode in ("passive", "legacy"):
        assert cli.main(common + ["--mode", mode, "--legacy-store", mysql_uri(missing)]) == 2
        said = capsys.readouterr().err
        assert f"MySQL database {missing!r} does not exist" in said and "never created" in said, said
    connection = _mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE %s", (missing,))
            assert cursor.fetchone() is None, "the mistyped database was not made"
            # A database that exists but holds no activities table is no legacy store either.
            cursor.execute(f"CREATE DATABASE `{missing}`")
        assert cli.main(common + ["--mode", "passive", "--legacy-store", mysql_uri(missing)]) == 2
        assert "has no activities table" in capsys.readouterr().err
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW TABLES IN `{missing}`")
            assert cursor.fetchall() == (), "no table was made in it"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{missing}`")
        connection.close()


def test_legacy_rows_with_null_or_empty_attributes_read_as_none(mysql_database):
    from store_services import _mysql_connect

    legacy = mysql_uri(mysql_database)
    try:
        with open_store(legacy) as store:
            store.init()
        connection = _mysql_connect(mysql_database)
        with connection.cursor() as cursor:
            # Rows from before the column was JSON, as the bootstrap reads them: no attributes.
            cursor.execute("ALTER TABLE activities MODIFY attributes LONGTEXT NULL")
            for n, stored in enumerate((None, "", '{"url": "https://acme.example/"}', "{broken")):
                cursor.execute("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
                               "VALUES ('acme', %s, 'L1', 'visit_web_page', %s, %s)", (f"old-{n}", T0 + n, stored))
        connection.close()
        with open_store(legacy) as store:
            found = {a.event_id: a.attributes for a in store.history("acme", "L1")}
        assert found == {"old-0": {}, "old-1": {}, "old-2": {"url": "https://acme.example/"}, "old-3": {}}
    finally:
        drop_mysql_tables(mysql_database)
