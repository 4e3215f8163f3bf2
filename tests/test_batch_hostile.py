"""Batch campaigns against what a lead database written by hand, a hand-edited membership
file and a mistyped command line hold, over a real MariaDB (a small database of its own):

- an inactive campaign is not sent, and `schedule` says it is inactive;
- `every` without `starting` has the same next send whenever it is asked for;
- consent flags written with SQL as 1, "true" or an unreadable value hold the email;
- flow choices and filters read the history as of the send's time, no later;
- a lead id that is not UTF-8, an activities row whose attributes are not an object and a
  bad membership line are dead-lettered, and the rest is sent;
- a precompute that fails leaves no membership file;
- what cannot work (the outbox, the lead database, the output files, --streams, --run-id)
  is said in one line before any wait.

    .venv/bin/python -m pytest -q tests/test_batch_hostile.py
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import date, timedelta

import pytest
from store_services import _mysql_connect

from orion.activities import MS_PER_DAY, parse_timestamp
from orion.campaigns.batch import Member, init_lead_tables, next_run_at, write_membership
from orion.rules import RuleErrors, load_rules
from orion.rules.model import LeadState

SEND_AT = parse_timestamp("2026-11-01T09:00:00Z")
TODAY = SEND_AT // MS_PER_DAY
EPOCH = date(1970, 1, 1)
RULES = """
tenant: zeta
settings:
  lists: [news]
campaigns:
  - name: Paused
    type: batch
    status: inactive
    schedule: {every: {n: 1, unit: days}, starting: "2026-11-01T09:00:00Z"}
    filters: [{member_of_list: news}]
    flow: [{send_email: {template: hello}}]
  - name: Daily
    type: batch
    schedule: {every: {n: 1, unit: days}}
    filters: [{member_of_list: news}]
    flow: [{send_email: {template: hello}}]
  - name: News
    type: batch
    filters: [{member_of_list: news}]
    flow:
      - send_email: {template: cold}
        choices:
          - if: [{activity_history: {activity: visit_web_page, at_least: 1, in_past: {n: 7, unit: days}}}]
            then: {send_email: {template: hot}}
  - name: Pricing
    type: batch
    filters:
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: /pricing}}
          at_least: 1
          in_past: {n: 7, unit: days}
    flow: [{send_email: {template: hello}}]
"""
TEMPLATES = {name: f"{{% block subject %}}{name}{{% endblock %}}\n{{% block text %}}{name}{{% endblock %}}\n"
             for name in ("hello", "cold", "hot")}
# lead -> attributes (rows written with SQL: attributes, score and lists columns)
LEADS = {
    "Z1": {"email": "z1@example.com"},  # visited in the week before the send: the hot branch
    "Z2": {"email": "z2@example.com"},  # never visited: the cold branch
    "Z5": {"email": "z5@example.com"},  # visited only after the send's time
    "B1": {"email": "b1@example.com", "unsubscribed": 1},
    "B2": {"email": "b2@example.com", "email_invalid": "true"},
    "B3": {"email": "b3@example.com", "unsubscribed": "maybe"},
    "B4": {"email": "b4@example.com", "unsubscribed": 0},
}


@pytest.fixture(scope="module")
def db(mysql_server, tmp_path_factory):
    name = f"orion_test_hostile_{uuid.uuid4().hex[:10]}"
    connection = _mysql_connect()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    uri = mysql_server.uri(name)
    init_lead_tables(uri)
    connection.select_db(name)
    with connection.cursor() as cursor:
        for lead, attributes in LEADS.items():
            cursor.execute("INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) "
                           "VALUES ('zeta', %s, %s, 0, '[\"news\"]')", (lead, json.dumps(attributes)))
        # A lead id that is not UTF-8 (only SQL can write one), amid the others.
        cursor.execute("INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) "
                       "VALUES ('zeta', 0x5A33FF, '{\"email\": \"x@example.com\"}', 0, '[\"news\"]')")
        for lead, day, count in (("Z1", TODAY - 1, 2), ("Z5", TODAY + 19, 1)):
            cursor.execute("INSERT INTO activity_index (tenant, lead_id, type, day, activity_count, last_seen) "
                           "VALUES ('zeta', %s, 'visit_web_page', %s, %s, %s)",
                           (lead, EPOCH + timedelta(days=day), count, day * MS_PER_DAY))
        for event_id, lead, at, attributes in (
                ("p1", "Z1", SEND_AT - MS_PER_DAY, '{"url": "https://zeta.example/pricing"}'),
                ("p2", "Z2", SEND_AT - MS_PER_DAY, '["not", "an", "object"]'),
                ("p5", "Z5", SEND_AT + MS_PER_DAY, '{"url": "https://zeta.example/pricing"}')):
            cursor.execute("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
                           "VALUES ('zeta', %s, %s, 'visit_web_page', %s, %s)", (event_id, lead, at, attributes))
    rules = tmp_path_factory.mktemp("hostile-rules")
    (rules / "zeta.yaml").write_text(RULES)
    (rules / "templates").mkdir()
    for name, text in TEMPLATES.items():
        (rules / "templates" / f"{name}.j2").write_text(text)
    try:
        yield {"leads": uri, "rules": str(rules)}
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


def campaign_cli(*args: str) -> int:
    from orion.cli import main

    return main(["campaign", *args])


def send(db, tmp_path, campaign: str, *more: str) -> int:
    return campaign_cli("run", "--rules", db["rules"], "--tenant", "zeta", "--campaign", campaign,
                        "--leads", db["leads"], "--outbox", f"sqlite:///{tmp_path / 'outbox.db'}",
                        "--at", "2026-11-01T09:00:00Z", "--dead-letters", str(tmp_path / "dead.jsonl"), *more)


def emails(tmp_path) -> dict[str, tuple[str, str, str]]:
    """lead -> (status, reason, template) of each email in the outbox."""
    with sqlite3.connect(tmp_path / "outbox.db") as connection:
        rows = connection.execute("SELECT lead_id, status, detail, template FROM outbox WHERE kind = 'email'")
        return {lead: (status, (detail or "").split(":")[0], template) for lead, status, detail, template in rows}


def dead_letters(tmp_path) -> list[dict]:
    path = tmp_path / "dead.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_inactive_campaign_is_not_sent_and_its_schedule_says_so(db, tmp_path, capsys):
    assert send(db, tmp_path, "Paused") == 2
    said = capsys.readouterr().err
    assert "batch campaign 'Paused' of tenant 'zeta' is inactive" in said and "zeta.yaml:" in said
    assert not (tmp_path / "outbox.db").exists(), "nothing was queued"
    assert campaign_cli("schedule", "--rules", db["rules"], "--after", "2026-11-05T00:00:00Z") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "zeta\tPaused\tinactive" in lines


def test_every_without_starting_has_the_same_next_send_whenever_asked(db, capsys):
    daily = load_rules(db["rules"]).campaign("zeta", "Daily").schedule
    midnight = parse_timestamp("2026-11-02T00:00:00Z")
    assert {next_run_at(daily, SEND_AT + offset) for offset in (0, 1, 3_600_000, 14 * 3_600_000)} == {midnight}
    assert next_run_at(daily, midnight) == midnight
    shown = []
    for _ in range(2):
        assert campaign_cli("schedule", "--rules", db["rules"]) == 0
        shown.append([line for line in capsys.readouterr().out.splitlines() if "\tDaily\t" in line])
        time.sleep(0.01)
    assert shown[0] == shown[1] and shown[0][0].endswith("T00:00:00.000Z"), shown


def test_consent_flags_written_with_sql_hold_the_email_and_choices_read_the_history(db, tmp_path):
    assert send(db, tmp_path, "News") == 0
    found = emails(tmp_path)
    assert found["B1"][:2] == ("held", "unsubscribed"), "unsubscribed: 1 is an unsubscribe"
    assert found["B2"][:2] == ("held", "email_invalid"), 'email_invalid: "true" is a bounced address'
    assert found["B3"][:2] == ("held", "unsubscribed"), "a flag that does not read is never taken for consent"
    assert found["B4"][0] == "queued", "unsubscribed: 0 is not an unsubscribe"
    # The step's choice reads the visits of the week before the send, and only those.
    assert (found["Z1"][0], found["Z1"][2]) == ("queued", "hot")
    assert (found["Z2"][0], found["Z2"][2]) == ("queued", "cold")
    assert (found["Z5"][0], found["Z5"][2]) == ("queued", "cold"), "a visit after the send's time is not counted"
    # The lead whose id is not UTF-8 is a dead letter; everyone else was sent to.
    assert set(found) == set(LEADS)
    (letter,) = [d for d in dead_letters(tmp_path) if d["reason"] == "bad_lead_profile"]
    assert "0x5a33ff" in letter["detail"]


def test_a_history_row_that_does_not_read_is_dead_lettered_and_the_send_goes_on(db, tmp_path):
    assert send(db, tmp_path, "Pricing") == 0
    assert set(emails(tmp_path)) == {"Z1"}, "Z1 visited /pricing before the send; Z5's visit came after it"
    (letter,) = [d for d in dead_letters(tmp_path) if d["reason"] == "bad_history_row"]
    assert letter["element"]["event_id"] == "p2" and letter["element"]["lead_id"] == "Z2"


def test_bad_lines_of_a_membership_file_are_dead_lettered_and_the_rest_is_sent(db, tmp_path, capsys):
    members = tmp_path / "members.jsonl"
    assert campaign_cli("precompute", "--rules", db["rules"], "--tenant", "zeta", "--campaign", "News",
                        "--leads", db["leads"], "--at", "2026-11-01T09:00:00Z", "--out", str(members)) == 0
    lines = members.read_text().splitlines()
    assert len(lines) == 1 + len(LEADS)
    members.write_text("\n".join(lines[:2] + ["", '{"lead_id": "BAD"', '{"lead_id": "Z9", "state": {"attributes": '
                                             '"x"}}', "[1, 2]"] + lines[2:]) + "\n")
    capsys.readouterr()
    assert campaign_cli("run", "--rules", db["rules"], "--tenant", "zeta", "--campaign", "News", "--membership",
                        str(members), "--outbox", f"sqlite:///{tmp_path / 'outbox.db'}",
                        "--dead-letters", str(tmp_path / "dead.jsonl")) == 0
    assert set(emails(tmp_path)) == set(LEADS), "every member after the bad lines was sent to"
    summary = capsys.readouterr().out
    assert f"members:      {len(LEADS)}" in summary and f"leads read:   {len(LEADS)}" in summary, summary
    assert "dead letters: 4" in summary, summary
    bad = [d for d in dead_letters(tmp_path) if d["reason"] == "bad_membership_line"]
    assert [d["detail"].split(": ")[0] for d in bad] == [f"{members}:{n}" for n in (3, 4, 5, 6)]


def test_a_precompute_that_fails_leaves_no_membership_file(tmp_path):
    def members():
        yield Member("Z1", LeadState({"email": "z1@example.com"}))
        raise ConnectionResetError("the lead database went away")

    path = tmp_path / "members.jsonl"
    with pytest.raises(ConnectionResetError):
        write_membership(members(), path, {"tenant": "zeta"})
    assert list(tmp_path.iterdir()) == [], "neither the file nor its partial copy"
    assert write_membership(iter([Member("Z1", LeadState())]), path, {"tenant": "zeta"}) == 1
    assert len(path.read_text().splitlines()) == 2


def test_what_cannot_work_is_said_in_one_line_before_any_wait(db, tmp_path, capsys):
    from orion.activities import format_timestamp

    # A send a few seconds ahead: were a refusal to come after the wait, "waiting" would be printed.
    soon = format_timestamp(int(time.time() * 1000) + 3_000)
    common = ("run", "--rules", db["rules"], "--tenant", "zeta", "--campaign", "News", "--at", soon)
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database, just notes\n" * 100)
    unknown = db["leads"].rsplit("/", 1)[0] + "/no_such_database"
    cases = [
        ((*common, "--leads", db["leads"], "--outbox", f"sqlite:///{not_sqlite}"), "the outbox"),
        ((*common, "--leads", db["leads"], "--outbox", f"sqlite:///{tmp_path}"), "the outbox"),
        ((*common, "--leads", unknown, "--outbox", f"sqlite:///{tmp_path / 'o.db'}"), "no_such_database"),
        ((*common, "--leads", db["leads"], "--outbox", f"sqlite:///{tmp_path / 'o.db'}", "--dead-letters",
          str(tmp_path)), "--dead-letters"),
        ((*common, "--leads", db["leads"], "--outbox", f"sqlite:///{tmp_path / 'o.db'}", "--streams", "0"),
         "--streams must be at least 1"),
        ((*common, "--leads", db["leads"], "--outbox", f"sqlite:///{tmp_path / 'o.db'}", "--streams", "1000"),
         "--stream K"),
    ]
    for args, expected in cases:
        assert campaign_cli(*args) == 2, args
        said = capsys.readouterr()
        assert said.err.startswith("orion: ") and expected in said.err and "Traceback" not in said.err, said.err
        assert "waiting" not in said.out, "said before the wait"
    with pytest.raises(SystemExit) as refused:
        campaign_cli(*common, "--leads", db["leads"], "--outbox", "sqlite:///o.db", "--run-id", "r" * 300)
    assert refused.value.code == 2 and "1 to 200 bytes" in capsys.readouterr().err


def test_a_campaign_name_past_the_outbox_key_is_refused_at_load(tmp_path):
    (tmp_path / "zeta.yaml").write_text(RULES.replace("name: Daily", "name: " + "Daily " * 50))
    with pytest.raises(RuleErrors) as refused:
        load_rules(tmp_path)
    (error,) = [e for e in refused.value.errors if "bytes in UTF-8" in str(e)]
    assert "zeta.yaml:" in str(error) and "at most 255" in str(error)
