"""Batch campaigns over a real MariaDB: 100,000 leads with profiles, an activity index and
raw activities, bulk-loaded once for the module. Half the profiles are written by the
store as the activity graph writes them (the encoded profile, its attributes, score and
lists derived beside it), half are rows written with SQL (attributes, score and lists
only), and some leads are only in the legacy `leads` table. The expected members are
computed here, in plain Python, from the rows this file generated (not with Orion's
filter code), and the outbox must hold exactly them, once each, whether the send runs as
1, 2 or 4 streams (worker processes). Also: membership is streamed (the first email is
committed before the list has been read), precomputed membership sent later, schedules,
a lead whose template fails is dead-lettered while the rest goes on, an unreadable
profile is dead-lettered, and a flow with a wait is refused lead by lead, with the
reason. And the one lead database: what the activity graph (`orion run` into the same
MySQL store) did to a lead holds the batch's email (an unsubscribe, an email the graph
sent under a communication limit), and a row written with SQL is a member the batch
mails and a lead the graph seeds from.

    .venv/bin/python -m pytest -q tests/test_batch.py
"""
from __future__ import annotations

import email
import json
import random
import shutil
import sqlite3
import uuid
import zlib
from datetime import date, timedelta
from email import policy

import pytest
from store_services import _mysql_connect

from orion.activities import MS_PER_DAY, parse_timestamp
from orion.campaigns.batch import (
    BAD_LEAD_PROFILE, BATCH_FLOW_WAITS, init_lead_tables, next_run_at, run_stream, run_streams, send_batch,
    stream_members,
)
from orion.campaigns.flows import LeadFlows
from orion.campaigns.outbox import open_outbox
from orion.profiles import LeadRecord, encode_profile
from orion.rules import load_rules
from orion.rules.model import LeadState
from orion.store import StoredProfile, open_store

LEADS = 100_000
SEND_AT = parse_timestamp("2026-11-01T09:00:00Z")  # the scheduled time every send here uses
TODAY = SEND_AT // MS_PER_DAY
EPOCH = date(1970, 1, 1)

RULES = """
tenant: acme
settings:
  lists: [newsletter, customers]
campaigns:
  - name: Autumn offer
    type: batch
    filters:
      - lead: {country: {in: [DE, FR]}}
      - member_of_list: newsletter
      - score: {ge: 70}
      - activity_history: {activity: visit_web_page, at_least: 3, in_past: {n: 30, unit: days}}
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: /pricing}}
          at_least: 1
          in_past: {n: 7, unit: days}
    logic: 1 and 2 and (3 or 4 or 5)
    schedule: {at: "2026-11-01T09:00:00Z"}
    flow:
      - send_email: {template: offer}
"""
SMALL_RULES = """
tenant: initech
settings:
  lists: [maintenance]
  lead_attributes: {parts: number}
campaigns:
  - name: Parts notice
    type: batch
    filters:
      - member_of_list: maintenance
    schedule: {every: {n: 1, unit: weeks}, starting: "2026-11-02T08:00:00Z"}
    flow:
      - send_email: {template: parts}
      - webhook: {name: crm_sync}
  - name: Drip
    type: batch
    flow:
      - send_email: {template: parts}
      - wait: {duration: {n: 1, unit: days}}
      - send_email: {template: parts}
"""
OFFER = """{% block subject %}An offer for {{ lead.first_name | default("you") }}{% endblock %}
{% block html %}<p>Hello {{ lead.first_name }}, {{ my.offer | default("10% off") }}</p>{% endblock %}
{% block text %}Hello {{ lead.first_name }}, {{ my.offer | default("10% off") }}{% endblock %}
"""
PARTS = """{% block subject %}Parts{% endblock %}
{% block text %}{{ 100 // lead.parts }} per part{% endblock %}
"""


def lead_id(n: int) -> str:
    return f"L{n:06d}"


class Data:
    """What was generated, kept so the expected members can be computed independently."""

    def __init__(self, seed: int = 5):
        rng = random.Random(seed)
        self.profiles: dict[str, tuple[dict, float, list]] = {}
        self.visits: dict[str, dict[int, int]] = {}  # lead -> {day: count} (activity_index)
        self.pricing: dict[str, list[int]] = {}  # lead -> days of /pricing visits (activities)
        self.activity_rows: list[tuple] = []
        for n in range(LEADS):
            lead = lead_id(n)
            if rng.random() < 0.02:
                continue  # no profile at all
            attributes = {"country": rng.choice(["DE", "FR", "US", "GB"]), "first_name": f"N{n}"}
            if rng.random() < 0.97:
                attributes["email"] = f"{lead.lower()}@example.com"
            lists = [name for name in ("newsletter", "customers") if rng.random() < 0.5]
            self.profiles[lead] = (attributes, float(rng.randint(0, 100)), lists)
            if rng.random() < 0.25:
                self.visits[lead] = {TODAY - rng.randint(0, 45): rng.randint(1, 2) for _ in range(rng.randint(1, 3))}
            if rng.random() < 0.04:
                days = [TODAY - rng.randint(0, 12) for _ in range(rng.randint(1, 2))]
                for i, day in enumerate(days):
                    url = "https://acme.example/pricing" if rng.random() < 0.7 else "https://acme.example/blog"
                    if "pricing" in url:
                        self.pricing.setdefault(lead, []).append(day)
                    self.activity_rows.append((f"{lead}-{i}", lead, "visit_web_page", day * MS_PER_DAY + 3_600_000,
                                               json.dumps({"url": url})))

    def expected_members(self) -> set[str]:
        members = set()
        for lead, (attributes, score, lists) in self.profiles.items():
            visits = sum(c for day, c in self.visits.get(lead, {}).items() if day >= TODAY - 30)
            pricing = sum(1 for day in self.pricing.get(lead, ()) if day >= TODAY - 7)
            if attributes["country"] in ("DE", "FR") and "newsletter" in lists and (
                    score >= 70 or visits >= 3 or pricing >= 1):
                members.add(lead)
        return members


def profile_text(attributes: dict, score: float, lists, sent=()) -> str:
    """A lead's profile as the activity graph writes it."""
    return encode_profile(LeadRecord(flows=LeadFlows(lead=LeadState(attributes, score, frozenset(lists)),
                                                     sent=tuple(sent))))


def bulk_load(uri: str, database: str, data: Data) -> None:
    init_lead_tables(uri)
    connection = _mysql_connect()
    connection.select_db(database)
    # Every lead in `leads`, but for one in 50 of those with a profile: its profile row is all there is of it.
    rows = [("acme", lead_id(n), SEND_AT, SEND_AT) for n in range(LEADS)
            if n % 50 != 1 or lead_id(n) not in data.profiles]
    # Even-numbered leads: profiles the store writes; the others: rows written with SQL.
    encoded = [StoredProfile("acme", lead, profile_text(a, score, lists))
               for lead, (a, score, lists) in data.profiles.items() if int(lead[1:]) % 2 == 0]
    with open_store(uri) as store:
        for start in range(0, len(encoded), 5000):
            store.write_profiles(encoded[start:start + 5000])
    profiles = [("acme", lead, json.dumps(a), score, json.dumps(lists))
                for lead, (a, score, lists) in data.profiles.items() if int(lead[1:]) % 2]
    index = [("acme", lead, "visit_web_page", EPOCH + timedelta(days=day), count, day * MS_PER_DAY)
             for lead, days in data.visits.items() for day, count in days.items()]
    with connection.cursor() as cursor:
        for sql, values in (
                ("INSERT INTO leads (tenant, lead_id, first_activity_at, last_activity_at) VALUES (%s, %s, %s, %s)",
                 rows),
                ("INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) VALUES (%s, %s, %s, %s, %s)",
                 profiles),
                ("INSERT INTO activity_index (tenant, lead_id, type, day, activity_count, last_seen) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", index),
                ("INSERT INTO activities (tenant, event_id, lead_id, type, occurred_at, attributes) "
                 "VALUES ('acme', %s, %s, %s, %s, %s)", data.activity_rows)):
            for start in range(0, len(values), 5000):
                cursor.execute("BEGIN")
                cursor.executemany(sql, values[start:start + 5000])
                cursor.execute("COMMIT")
    connection.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, mysql_server):
    """A database of its own on the session's MariaDB (dropped afterwards) with the
    100,000 leads, an outbox database, and a rules directory with the campaigns and their
    templates."""
    name = f"orion_test_batch_{uuid.uuid4().hex[:10]}"
    connection = _mysql_connect()
    with connection.cursor() as cursor:
        for db in (name, f"{name}_outbox"):
            cursor.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    uri = mysql_server.uri(name)
    rules_dir = tmp_path_factory.mktemp("batch-rules")
    (rules_dir / "acme.yaml").write_text(RULES)
    (rules_dir / "initech.yaml").write_text(SMALL_RULES)
    (rules_dir / "templates").mkdir()
    (rules_dir / "templates" / "offer.j2").write_text(OFFER)
    (rules_dir / "templates" / "parts.j2").write_text(PARTS)
    data = Data()
    bulk_load(uri, name, data)
    try:
        yield {"leads": uri, "outbox": mysql_server.uri(f"{name}_outbox"),
               "rules_dir": str(rules_dir), "rules": load_rules(rules_dir), "data": data,
               "expected": data.expected_members()}
    finally:
        with connection.cursor() as cursor:
            for db in (name, f"{name}_outbox"):
                cursor.execute(f"DROP DATABASE IF EXISTS `{db}`")
        connection.close()


def config(world, run_id: str, streams: int, **more) -> dict:
    return {"rules": world["rules"], "rules_dir": world["rules_dir"], "template_dirs": [], "tenant": "acme",
            "campaign": "Autumn offer", "leads": world["leads"], "outbox": world["outbox"], "streams": streams,
            "now": SEND_AT, "run_id": run_id, "tokens": {}, **more}


def queued_leads(world, run_id: str, campaign: str = "Autumn offer") -> list[str]:
    with open_outbox(world["outbox"]) as outbox:
        return [lead for _, name, lead, run in outbox.keys() if name == campaign and run.startswith(f"{run_id}#")]


def test_the_generated_data_makes_every_filter_matter(world):
    data, expected = world["data"], world["expected"]
    assert 5_000 < len(expected) < 30_000
    by_score = {lead for lead in expected if data.profiles[lead][1] >= 70}
    by_visits_only = expected - by_score - set(data.pricing)
    assert by_score and by_visits_only and expected & set(data.pricing) - by_score
    assert any("email" not in data.profiles[lead][0] for lead in expected)  # some are held, not sent
    for kind in (0, 1):  # members among the encoded profiles and among the rows written with SQL
        assert sum(1 for lead in expected if int(lead[1:]) % 2 == kind) > 1000
    assert any(int(lead[1:]) % 50 == 1 for lead in expected)  # and among the leads with no `leads` row


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_a_batch_send_queues_exactly_the_members_once_each_in_any_number_of_streams(world, streams):
    run_id = f"streams-{streams}"
    expected = world["expected"]
    total = run_streams(config(world, run_id, streams), range(streams))
    queued = queued_leads(world, run_id)
    assert len(queued) == len(set(queued)) == total.queued == len(expected)
    assert set(queued) == expected
    # every lead read once (those with a profile row, and those of `leads` without one):
    # no lead read or sent by two streams
    assert total.leads_read == LEADS and total.members == len(expected)
    assert total.held == sum(1 for lead in expected if "email" not in world["data"].profiles[lead][0])
    assert total.dead_letters == 0
    if streams > 1:
        # each stream holds the leads whose CRC32 falls to it, computed here independently
        for k in range(streams):
            found = {m.lead_id for m in stream_members(world["leads"], world["rules"], campaign(world), SEND_AT,
                                                       streams=streams, stream=k)}
            assert found == {lead for lead in expected if zlib.crc32(lead.encode()) % streams == k}
        # a stream run again (a retried worker) queues nothing twice
        again = run_stream(config(world, run_id, streams), 1)
        assert again.queued == 0 and again.members == sum(
            1 for lead in expected if zlib.crc32(lead.encode()) % streams == 1)
        assert sorted(queued_leads(world, run_id)) == sorted(queued)


def campaign(world, name: str = "Autumn offer", tenant: str = "acme"):
    return world["rules"].campaign(tenant, name)


def test_the_emails_carry_each_leads_own_tokens(world):
    with open_outbox(world["outbox"]) as outbox:
        claimed = outbox.claim(5, SEND_AT + 1)
    assert len(claimed) == 5
    for item in claimed:
        message = email.message_from_bytes(item.payload, policy=policy.default)
        n = int(item.lead_id[1:])
        assert message["Subject"] == f"An offer for N{n}" and message["To"] == item.recipient
        assert message["List-Unsubscribe"]
        assert f"Hello N{n}, 10% off" in message.get_body(("plain",)).get_content()
        assert item.lead_id in world["expected"]


def test_membership_is_streamed_the_first_email_is_queued_before_the_list_is_read(world):
    counts = [0, 0]
    seen_at_first_commit = []
    stop = []

    def on_queued(new, members_so_far):
        # queued_leads reads through another connection: the email is committed
        seen_at_first_commit.append((counts[0], members_so_far, len(queued_leads(world, "streamed"))))
        stop.append(True)

    def until_first_commit(members):
        for member in members:
            if stop:
                return
            yield member

    members = stream_members(world["leads"], world["rules"], campaign(world), SEND_AT, counts=counts)
    send_batch(until_first_commit(members), world["rules"], world["rules_dir"], [], world["outbox"], "acme",
               "Autumn offer", now=SEND_AT, run_id="streamed", counts=counts, on_queued=on_queued)
    (leads_read, members_so_far, in_outbox), = seen_at_first_commit
    assert members_so_far == 1 and in_outbox == 1
    assert leads_read < 1000, f"{leads_read} of {LEADS} leads were read before the first email was queued"


def small_world(world, leads: int = 40, parts=lambda n: n + 1):
    """Tenant initech: `leads` leads in list maintenance with `parts` each."""
    connection = _mysql_connect()
    connection.select_db(world["leads"].rsplit("/", 1)[1])
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM leads WHERE tenant = 'initech'")
        cursor.execute("DELETE FROM lead_profiles WHERE tenant = 'initech'")
        cursor.executemany("INSERT INTO leads (tenant, lead_id, first_activity_at, last_activity_at) "
                           "VALUES ('initech', %s, 0, 0)", [(f"D{n:03d}",) for n in range(leads)])
        cursor.executemany("INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) "
                           "VALUES ('initech', %s, %s, 0, %s)",
                           [(f"D{n:03d}", json.dumps({"email": f"d{n}@example.com", "parts": parts(n)}),
                             '["maintenance"]') for n in range(leads)])
    return connection


def small_config(world, run_id: str, name: str = "Parts notice", **more) -> dict:
    return {**config(world, run_id, 1), "tenant": "initech", "campaign": name, **more}


def test_a_template_failing_for_one_lead_dead_letters_that_lead_and_the_rest_goes_on(world):
    small_world(world, parts=lambda n: 0 if n == 7 else n + 1).close()  # D007: 100 // 0
    letters = []
    summary = run_stream(small_config(world, "template", on_dead_letter=letters.append), 0)
    assert [(d.reason, d.element["lead_id"]) for d in letters] == [("template_failed", "D007")]
    assert "ZeroDivisionError" in letters[0].detail and "parts" in letters[0].detail
    assert sorted(queued_leads(world, "template", "Parts notice")) == [f"D{n:03d}" for n in range(40) if n != 7]
    assert summary.members == 40 and summary.dead_letters == 1
    assert summary.queued == 39 + 40  # the emails, and every member's webhook (the flow went on)


def test_an_unreadable_profile_and_a_flow_that_waits_are_dead_lettered_with_the_reason(world):
    connection = small_world(world, leads=5)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE lead_profiles SET lists = '{\"not\": \"a list\"}' WHERE tenant = 'initech' "
                       "AND lead_id = 'D002'")
    connection.close()
    letters = []
    with open_store(world["leads"]) as store:  # and one the store wrote that is not a profile
        store.write_profiles([StoredProfile("initech", "D004", '{"version": 2, "lead": {"attributes": [1]}}')])
    summary = run_stream(small_config(world, "bad-row", on_dead_letter=letters.append), 0)
    assert [(d.reason, d.element["lead_id"]) for d in letters] == [(BAD_LEAD_PROFILE, "D002"),
                                                                   (BAD_LEAD_PROFILE, "D004")]
    assert "lists must be a JSON array" in letters[0].detail and letters[0].element["lists"] == '{"not": "a list"}'
    assert "bad field" in letters[1].detail and letters[1].element["profile"].startswith('{"version": 2')
    assert summary.leads_read == 5 and summary.members == 3 and summary.dead_letters == 2
    small_world(world, leads=5).close()
    letters.clear()
    summary = run_stream(small_config(world, "drip", name="Drip", on_dead_letter=letters.append), 0)
    assert {d.reason for d in letters} == {BATCH_FLOW_WAITS} and len(letters) == 5
    assert "stopped at the wait, step 2" in letters[0].detail and summary.dead_letters == 5
    assert len(queued_leads(world, "drip", "Drip")) == 5  # the steps before the wait were done


def run_cli(*args: str) -> int:
    from orion.cli import main

    return main(["campaign", *args])


def test_membership_precomputed_ahead_of_the_send_is_what_the_send_uses(world, tmp_path, capsys):
    small_world(world, leads=10).close()
    members = tmp_path / "members.jsonl"
    common = ("--rules", world["rules_dir"], "--tenant", "initech", "--campaign", "Parts notice")
    assert run_cli("precompute", *common, "--leads", world["leads"], "--at", "2026-11-02T08:00:00Z",
                   "--streams", "2", "--out", str(members)) == 0
    assert "10 members of 'Parts notice'" in capsys.readouterr().out
    # after the list was computed, one lead leaves the list and another joins the tenant
    connection = small_world(world, leads=11)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE lead_profiles SET lists = '[]' WHERE tenant = 'initech' AND lead_id = 'D000'")
    connection.close()
    # the send, with 2 streams over the one file: the precomputed members, at the precomputed time
    assert run_cli("run", *common, "--membership", str(members), "--streams", "2",
                   "--outbox", world["outbox"]) == 0
    out = capsys.readouterr().out
    assert "members:      10" in out and "queued:       20" in out
    with open_outbox(world["outbox"]) as outbox:
        runs = {(lead, run) for _, name, lead, run in outbox.keys() if name == "Parts notice"
                and run.startswith("batch:2026-11-02")}
    assert {lead for lead, _ in runs} == {f"D{n:03d}" for n in range(10)}
    assert {run for _, run in runs} == {"batch:2026-11-02T08:00:00.000Z#0"}
    # the same send from the live list queues only what is new: D010 (D000 has left; the rest are there)
    assert run_cli("run", *common, "--leads", world["leads"], "--at", "2026-11-02T08:00:00Z",
                   "--outbox", world["outbox"]) == 0
    assert "members:      10\nqueued:       2" in capsys.readouterr().out


def test_schedules_once_and_recurring(world, capsys):
    once = campaign(world).schedule
    assert next_run_at(once, SEND_AT - 1) == SEND_AT and next_run_at(once, SEND_AT) == SEND_AT
    assert next_run_at(once, SEND_AT + 1) is None  # a one-off send in the past
    weekly = campaign(world, "Parts notice", "initech").schedule
    start = parse_timestamp("2026-11-02T08:00:00Z")
    week = 7 * MS_PER_DAY
    assert next_run_at(weekly, start - 5) == start
    assert next_run_at(weekly, start + 1) == start + week
    assert next_run_at(weekly, start + 3 * week) == start + 3 * week
    assert run_cli("schedule", "--rules", world["rules_dir"], "--after", "2026-11-10T00:00:00Z") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "acme\tAutumn offer\tnone" in lines
    assert "initech\tParts notice\t2026-11-16T08:00:00.000Z" in lines
    assert "initech\tDrip\ton demand" in lines  # no schedule: sent by `orion campaign run` only


def test_the_command_refuses_what_is_not_a_batch_campaign_or_a_bad_stream(world, capsys):
    common = ("--rules", world["rules_dir"], "--tenant", "acme", "--outbox", world["outbox"], "--leads", world["leads"])
    assert run_cli("run", *common, "--campaign", "Nope") == 2
    assert "batch campaigns: Autumn offer" in capsys.readouterr().err
    assert run_cli("run", *common, "--campaign", "Autumn offer", "--streams", "2", "--stream", "2") == 2
    assert "--stream must be 0..1" in capsys.readouterr().err


# --- one lead database: the activity graph and the batch -----------------------------------

GRAPH_RULES = """
tenant: umbrella
settings:
  communication_limits: {per_day: 1}
campaigns:
  - name: Promo
    triggers: [{activity: fill_out_form, where: {form: {is: Promo}}}]
    qualification: every_time
    flow:
      - send_email: {template: promo}
  - name: Newsletter
    type: batch
    flow:
      - send_email: {template: promo}
"""
PROMO = """{% block subject %}News{% endblock %}
{% block text %}Hello {{ lead.first_name | default("there") }}{% endblock %}
"""
DAY_START = parse_timestamp("2026-11-20T00:00:00Z")  # the graph's activities and the batch send: one UTC day


def graph_event(event_id: str, lead: str, hour: int, type_: str, **attributes) -> dict:
    return {"event_id": event_id, "tenant": "umbrella", "lead_id": lead, "type": type_,
            "occurred_at": DAY_START + hour * 3_600_000, "attributes": attributes}


def outbox_rows(path) -> dict[tuple[str, str], tuple]:
    """(campaign, lead) -> (status, reason, recipient) of each email record."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT campaign, lead_id, status, detail, recipient FROM outbox "
                                  "WHERE kind = 'email'").fetchall()
    return {(campaign, lead): (status, (detail or "").split(":")[0], recipient)
            for campaign, lead, status, detail, recipient in rows}


def test_the_batch_reads_the_profiles_the_activity_graph_writes(mysql_server, tmp_path, capsys):
    """One MySQL database for both: `orion run` over a day's activities into it, then
    `orion campaign run` over it, later the same day. A lead the graph saw unsubscribe is
    held `unsubscribed`; one the graph sent an email that day is held by the per-day
    limit; a row written with SQL (no encoded profile) is a member and is mailed at the
    address in its columns; the graph seeds a lead from such a row; a lead only in the
    legacy `leads` table is a member with no address. The other way: the batch's sends,
    fed to the graph as email_sent activities, hold a trigger email later that day."""
    from orion.cli import main

    name = f"orion_test_batch_graph_{uuid.uuid4().hex[:10]}"
    uri = mysql_server.uri(name)
    rules_dir = tmp_path / "rules"
    (rules_dir / "templates").mkdir(parents=True)
    (rules_dir / "umbrella.yaml").write_text(GRAPH_RULES)
    (rules_dir / "templates" / "promo.j2").write_text(PROMO)
    try:
        assert main(["campaign", "init", "--leads", uri]) == 0  # the store's tables (`orion store init`)
        connection = _mysql_connect(name)
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO lead_profiles (tenant, lead_id, attributes, score, lists) VALUES ('umbrella', %s, %s, %s, %s)",
                [("legacy", json.dumps({"email": "legacy@example.com", "first_name": "Lee"}), 5, "[]"),
                 ("seeded", json.dumps({"email": "seeded@example.com", "first_name": "Sid"}), 0, "[]")])
            cursor.execute("INSERT INTO leads (tenant, lead_id, first_activity_at, last_activity_at) "
                           "VALUES ('umbrella', 'bare', 0, 0)")
        events = [
            graph_event("u1", "unsub", 8, "data_value_changes", attribute="email", new_value="unsub@example.com"),
            graph_event("u2", "unsub", 9, "unsubscribe_email", email="unsub@example.com"),
            graph_event("m1", "mailed", 8, "data_value_changes", attribute="email", new_value="mailed@example.com"),
            graph_event("m2", "mailed", 9, "fill_out_form", form="Promo"),
            graph_event("f1", "fresh", 8, "data_value_changes", attribute="email", new_value="fresh@example.com"),
            graph_event("s1", "seeded", 10, "fill_out_form", form="Promo"),  # its address: from the SQL row
        ]
        events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))  # a day's export, in time order
        (tmp_path / "day.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        graph_outbox = tmp_path / "graph-outbox.db"
        assert main(["run", "--events", str(tmp_path / "day.jsonl"), "--rules", str(rules_dir), "--store", uri,
                     "--outbox", f"sqlite:///{graph_outbox}", "--out-dir", str(tmp_path / "out")]) == 0
        assert outbox_rows(graph_outbox) == {
            ("Promo", "mailed"): ("queued", "", "mailed@example.com"),
            ("Promo", "seeded"): ("queued", "", "seeded@example.com"),  # seeded from the row's columns
        }
        with connection.cursor() as cursor:
            cursor.execute("SELECT lead_id, attributes, data IS NOT NULL FROM lead_profiles ORDER BY lead_id")
            columns = {lead.decode(): (json.loads(attributes), has_data) for lead, attributes, has_data in cursor}
        assert columns["seeded"] == ({"email": "seeded@example.com", "first_name": "Sid"}, 1)
        assert columns["unsub"][0]["unsubscribed"] is True and columns["legacy"][1] == 0
        connection.close()
        capsys.readouterr()

        batch_outbox = tmp_path / "batch-outbox.db"
        letters = tmp_path / "dead.jsonl"
        assert main(["campaign", "run", "--rules", str(rules_dir), "--tenant", "umbrella", "--campaign", "Newsletter",
                     "--leads", uri, "--outbox", f"sqlite:///{batch_outbox}", "--at", "2026-11-20T15:00:00Z",
                     "--dead-letters", str(letters), "--activities-out", str(tmp_path / "sent.jsonl")]) == 0
        out = capsys.readouterr().out
        assert "leads read:   6" in out and "members:      6" in out and "held:         4" in out
        assert not letters.exists() or letters.read_text() == ""
        assert {lead: row for (_, lead), row in outbox_rows(batch_outbox).items()} == {
            "unsub": ("held", "unsubscribed", "unsub@example.com"),
            "mailed": ("held", "communication_limit_per_day", "mailed@example.com"),
            "seeded": ("held", "communication_limit_per_day", "seeded@example.com"),
            "fresh": ("queued", "", "fresh@example.com"),
            "legacy": ("queued", "", "legacy@example.com"),  # a row written with SQL
            "bare": ("held", "no_email_address", ""),  # in `leads` only
        }

        # The batch's sends, fed back to the graph, count toward its communication limits:
        # an email_sent activity for each email queued (not for those held), and a trigger
        # email later that day to a lead the newsletter reached is held; a lead it did not
        # reach is mailed.
        sent = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
        assert sorted((a["lead_id"], a["type"], a["attributes"]["campaign"], a["occurred_at"]) for a in sent) == [
            ("fresh", "email_sent", "Newsletter", DAY_START + 15 * 3_600_000),
            ("legacy", "email_sent", "Newsletter", DAY_START + 15 * 3_600_000)]
        later = [graph_event("n1", "newcomer", 15, "data_value_changes", attribute="email",
                             new_value="newcomer@example.com"),
                 graph_event("f2", "fresh", 16, "fill_out_form", form="Promo"),
                 graph_event("n2", "newcomer", 16, "fill_out_form", form="Promo")]
        (tmp_path / "later.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sent + sent + later))
        later_outbox = tmp_path / "later-outbox.db"
        assert main(["run", "--events", str(tmp_path / "later.jsonl"), "--rules", str(rules_dir), "--store", uri,
                     "--outbox", f"sqlite:///{later_outbox}", "--out-dir", str(tmp_path / "out-later")]) == 0
        assert outbox_rows(later_outbox) == {
            ("Promo", "fresh"): ("held", "communication_limit_per_day", "fresh@example.com"),
            ("Promo", "newcomer"): ("queued", "", "newcomer@example.com"),
        }
        connection = _mysql_connect(name)
        with connection.cursor() as cursor:  # stored once each, though fed in twice
            cursor.execute("SELECT lead_id, COUNT(*) FROM activities WHERE type = 'email_sent' GROUP BY lead_id")
            assert sorted((lead.decode() if isinstance(lead, bytes) else lead, n) for lead, n in cursor) == [
                ("fresh", 1), ("legacy", 1)]
        connection.close()
    finally:
        connection = _mysql_connect()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()


def test_a_send_from_precomputed_membership_reads_each_profile_again(world, tmp_path, capsys):
    """Members computed ahead of the send; then one unsubscribes, another is sent an
    email that day (as the graph would write it) and a third's profile is deleted. Given
    --leads, the send sees all three."""
    small_world(world, leads=4).close()
    members = tmp_path / "members.jsonl"
    common = ("--rules", world["rules_dir"], "--tenant", "initech", "--campaign", "Parts notice")
    at = "2026-11-09T08:00:00Z"
    assert run_cli("precompute", *common, "--leads", world["leads"], "--at", at, "--out", str(members)) == 0
    with open_store(world["leads"]) as store:
        store.write_profiles([
            StoredProfile("initech", "D001", profile_text({"email": "d1@example.com", "parts": 2, "unsubscribed": True},
                                                          0, ["maintenance"])),
            StoredProfile("initech", "D002", profile_text({"email": "d2@example.com", "parts": 3}, 0, ["maintenance"],
                                                          sent=[parse_timestamp("2026-11-09T07:00:00Z")])),
        ])
    connection = _mysql_connect(world["leads"].rsplit("/", 1)[1])
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM lead_profiles WHERE tenant = 'initech' AND lead_id = 'D003'")
    connection.close()
    # A per-day limit for initech (the module's rules have none), so D002's send counts.
    rules_dir = tmp_path / "rules"
    shutil.copytree(world["rules_dir"], rules_dir)
    (rules_dir / "initech.yaml").write_text(SMALL_RULES.replace(
        "  lists: [maintenance]\n", "  lists: [maintenance]\n  communication_limits: {per_day: 1}\n"))
    assert run_cli("run", "--rules", str(rules_dir), *common[2:], "--membership", str(members),
                   "--leads", world["leads"], "--outbox", world["outbox"], "--run-id", "refreshed") == 0
    assert "members:      4" in capsys.readouterr().out
    connection = _mysql_connect(world["outbox"].rsplit("/", 1)[1])
    with connection.cursor() as cursor:
        cursor.execute("SELECT lead_id, status, detail FROM outbox WHERE campaign = 'Parts notice' "
                       "AND run = 'refreshed#0' ORDER BY lead_id")
        found = [(lead.decode(), status, (detail or "").split(":")[0]) for lead, status, detail in cursor.fetchall()]
    connection.close()
    assert found == [("D000", "queued", ""), ("D001", "held", "unsubscribed"),
                     ("D002", "held", "communication_limit_per_day"), ("D003", "held", "no_email_address")]
    # Without --leads the members go as computed (and the command says so).
    assert run_cli("run", "--rules", str(rules_dir), *common[2:], "--membership", str(members),
                   "--outbox", world["outbox"], "--run-id", "as-computed") == 0
    assert "without --leads the members are sent as precomputed" in capsys.readouterr().err
