"""`orion analytics experiments` over known stored activities, on every store backend
(SQLite; MariaDB and the Bigtable emulator, which the tests start): leads per arm by
their first impression, conversions only inside the goal's window after it, the lift
over control with Katz's interval and the difference with Wald's.

    .venv/bin/python -m pytest -q tests/test_decisions_experiments.py
"""
from __future__ import annotations

import json
import math

import pytest

from orion.activities import Activity
from orion.decisions.experiments import experiment_report, render_report
from orion.rules.compiler import load_experiences
from orion.store import open_store

from conftest import DAY, T0
from hbase_services import hbase_uri
from store_services import bigtable_uri, drop_mysql_tables, mysql_uri

RULES = """
tenant: acme
experiences:
  - name: Hero
    placement: home_hero
    variants:
      - {name: a, weight: 1, json: A}
      - {name: b, weight: 1, json: B}
    control: {weight: 1}
    goal:
      activity: fill_out_form
      where: {form: {is: Demo}}
      within: {n: 7, unit: days}
  - name: Banner
    placement: banner
    variants: [{name: only, weight: 1, json: x}]
"""

# arm -> (leads, conversions inside the window)
PLAN = {"a": (100, 30), "b": (100, 10), "control": (100, 20)}


def stored_activities() -> list[Activity]:
    found = []
    n = 0

    def add(lead: str, type_: str, at: int, tenant: str = "acme", **attributes):
        nonlocal n
        n += 1
        found.append(Activity(f"e{n}", tenant, lead, type_, at, attributes))

    for arm, (leads, converted) in PLAN.items():
        for k in range(leads):
            lead = f"{arm}-{k}"
            first = T0 + k * 60_000
            add(lead, "experience_impression", first, experience="Hero", variant=arm, placement="home_hero",
                control=arm == "control")
            if k % 4 == 0:  # seen again: one more impression, the same lead
                add(lead, "experience_impression", first + DAY, experience="Hero", variant=arm,
                    placement="home_hero", control=arm == "control")
            if k < converted:
                add(lead, "fill_out_form", first + 6 * DAY, form="Demo")
                add(lead, "fill_out_form", first + 6 * DAY + 1, form="Demo")  # converts once
            elif k < converted + 5:
                add(lead, "fill_out_form", first + 8 * DAY, form="Demo")  # after the window
            elif k < converted + 10:
                add(lead, "fill_out_form", first - 1, form="Demo")  # before the first impression
            elif k < converted + 15:
                add(lead, "fill_out_form", first + DAY, form="Contact")  # not the goal
    # another tenant's leads, same experience name: none of acme's business
    add("a-0", "experience_impression", T0, tenant="globex", experience="Hero", variant="a", placement="home_hero")
    add("a-1", "fill_out_form", T0 + DAY, tenant="globex", form="Demo")
    return found


@pytest.fixture
def experiences(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES)
    (rules / "globex.yaml").write_text(RULES.replace("tenant: acme", "tenant: globex"))
    _, found, _ = load_experiences(rules)
    return found["acme"]


@pytest.fixture(params=["sqlite", "mysql", "bigtable", "hbase"])
def store(request, tmp_path):
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "mysql":
        database = request.getfixturevalue("mysql_database")
        drop_mysql_tables(database)
        uri = mysql_uri(database)
    elif request.param == "hbase":
        request.getfixturevalue("hbase_server")
        uri = hbase_uri()
    else:
        request.getfixturevalue("bigtable_emulator")
        uri = bigtable_uri()
    opened = open_store(uri)
    opened.init()
    activities = stored_activities()
    opened.write(activities)
    opened.index_activities(activities)
    yield opened
    opened.close()


def test_the_report_counts_leads_impressions_and_conversions_per_arm(store, experiences):
    report = experiment_report(store, experiences)
    assert report["tenant"] == "acme"
    hero, banner = sorted(report["experiences"], key=lambda e: e["experience"] != "Hero")
    assert hero["goal"] == 'fill_out_form where form is "Demo" within 7 days'
    rows = {row["arm"]: row for row in hero["arms"]}
    for arm, (leads, converted) in PLAN.items():
        assert rows[arm]["leads"] == leads
        assert rows[arm]["impressions"] == leads + leads // 4
        assert rows[arm]["conversions"] == converted
        assert rows[arm]["rate"] == converted / leads
    assert rows["control"]["control"] and "lift" not in rows["control"]
    a = rows["a"]
    assert a["lift"] == pytest.approx(0.5)
    # Katz: ln(1.5) +- 1.96 * sqrt(1/30 - 1/100 + 1/20 - 1/100)
    error = math.sqrt(1 / 30 - 1 / 100 + 1 / 20 - 1 / 100)
    assert a["lift_low"] == pytest.approx(math.exp(math.log(1.5) - 1.959964 * error) - 1, abs=1e-4)
    assert a["lift_high"] == pytest.approx(math.exp(math.log(1.5) + 1.959964 * error) - 1, abs=1e-4)
    assert a["lift_low"] < 0 < 0.5 < a["lift_high"]  # 100 leads an arm: not yet significant
    # Wald: 0.1 +- 1.96 * sqrt(.3 * .7 / 100 + .2 * .8 / 100)
    assert a["difference"] == pytest.approx(0.1)
    assert a["difference_high"] - a["difference"] == pytest.approx(1.959964 * math.sqrt(0.0037), abs=1e-4)
    assert rows["b"]["lift"] == pytest.approx(-0.5)
    assert banner["goal"] is None and banner["first_impression"] is None
    assert [row["leads"] for row in banner["arms"]] == [0]
    text = render_report(report)
    assert "Hero (placement home_hero)" in text and "+50.0%" in text and "-50.0%" in text


def test_the_goal_and_its_window_can_be_given_for_the_report(store, experiences):
    report = experiment_report(store, experiences, only=["Hero"], goal_type="fill_out_form", days=9)
    (hero,) = report["experiences"]
    rows = {row["arm"]: row for row in hero["arms"]}
    # any form now, within 9 days: the late ones (day 8) and the contact forms count too
    for arm, (leads, converted) in PLAN.items():
        assert rows[arm]["conversions"] == converted + 5 + 5, arm
    assert hero["goal"] == "fill_out_form within 9 days"
    json.dumps(report)  # JSON-ready


def test_an_unknown_experience_is_named(store, experiences):
    from orion.decisions.experiments import ReportError

    with pytest.raises(ReportError) as raised:
        experiment_report(store, experiences, only=["Hreo"])
    assert "no experience 'Hreo'" in str(raised.value) and "Banner, Hero" in str(raised.value)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_store_the_report_cannot_read_is_named_not_a_traceback(request, tmp_path, experiences, backend, capsys):
    """A store without its tables (never initialised): the driver's error is a
    StoreError naming the store and saying what to do, and the command says it in one
    line with exit code 2."""
    from orion.cli import main
    from orion.store.base import StoreError

    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        database = request.getfixturevalue("mysql_database")
        drop_mysql_tables(database)
        uri = mysql_uri(database)
    store = open_store(uri)  # no init: no activities table
    try:
        with pytest.raises(StoreError) as raised:
            experiment_report(store, experiences)
    finally:
        store.close()
    said = str(raised.value)
    assert "could not read tenant 'acme'" in said and ("SQLite" if backend == "sqlite" else "MySQL") in said
    assert "orion store init" in said
    assert ("empty.db" in said) if backend == "sqlite" else ("mysql://" in said)

    rules = tmp_path / "rules"  # written by the experiences fixture
    assert main(["analytics", "experiments", "--tenant", "acme", "--store", uri, "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orion: the experiments report could not read") and "Traceback" not in err


def test_a_period_reports_the_leads_first_exposed_in_it_and_its_impressions(store, experiences):
    """Leads k of each arm are first exposed at T0 + k minutes, 1 in 4 again a day later:
    the period [T0 + 10 min, T0 + 1 day + 50 min) holds the first impressions of leads 10
    to 99, and the second impressions of leads 0, 4, ..., 48, of which those before 10
    are not in the cohort (their first came before it). Conversions are counted within
    the goal's window, past the period."""
    since, until = T0 + 10 * 60_000, T0 + DAY + 50 * 60_000
    report = experiment_report(store, experiences, only=["Hero"], since=since, until=until)
    (hero,) = report["experiences"]
    rows = {row["arm"]: row for row in hero["arms"]}
    for arm, (leads, converted) in PLAN.items():
        assert rows[arm]["leads"] == 90, arm
        assert rows[arm]["impressions"] == 90 + 13, arm
        assert rows[arm]["conversions"] == converted - 10, arm
    assert report["since"].startswith("20") and report["until"].startswith("20")
    assert "leads first exposed from" in render_report(report)
    assert hero["first_impression"] is not None
    whole = experiment_report(store, experiences, only=["Hero"])
    assert {row["arm"]: row["leads"] for row in whole["experiences"][0]["arms"]} == \
        {arm: leads for arm, (leads, _) in PLAN.items()}


def test_the_command_takes_a_period_and_refuses_an_empty_or_unreadable_one(tmp_path, capsys):
    from orion.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    opened = open_store(uri)
    opened.init()
    activities = stored_activities()
    opened.write(activities)
    opened.index_activities(activities)
    opened.close()
    base = ["analytics", "experiments", "--tenant", "acme", "--store", uri, "--rules", str(rules), "--json",
            "--experience", "Hero"]
    assert main(base + ["--since", str(T0 + 99 * 60_000)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["leads"] for row in report["experiences"][0]["arms"]] == [1, 1, 1]
    assert main(base + ["--since", str(T0 + DAY), "--until", str(T0)]) == 2
    assert "the period is empty" in capsys.readouterr().err
    assert main(base + ["--since", "yesterday-ish"]) == 2
    assert "--since/--until" in capsys.readouterr().err


def test_the_command_refuses_a_goal_that_is_no_activity_type_and_reports_an_experience_once(tmp_path, capsys):
    from orion.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(uri) as opened:
        opened.init()
        opened.write(stored_activities())
    base = ["analytics", "experiments", "--tenant", "acme", "--store", uri, "--rules", str(rules), "--json"]
    assert main(base + ["--goal", "no_such_type"]) == 2
    said = capsys.readouterr().err
    assert "--goal 'no_such_type' is not an activity type of tenant 'acme'" in said and "fill_out_form" in said
    assert main(base + ["--experience", "Hero", "--experience", "Hero"]) == 0
    assert [found["experience"] for found in json.loads(capsys.readouterr().out)["experiences"]] == ["Hero"]
    assert main(base + ["--experience", "Nope"]) == 2
    assert "has no experience 'Nope'" in capsys.readouterr().err
