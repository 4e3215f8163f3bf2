"""A lead's state is durable: two runs over consecutive parts of the input, into one store
and one outbox, give exactly what one run over the whole input gives. On the
DirectRunner, into SQLite, MariaDB, the Bigtable emulator and HBase.

Each fact a lead carries across runs has its own lead and its own assertion: a `once`
campaign does not qualify again, `once_every` waits its interval, an unsubscribed lead is
not mailed, the email address, score and lists set in the first run are seen in the
second, the communication limit counts the first run's emails of the same day, and a lead
waiting in a flow gets its follow-up in the run whose input passes the wait, although it
does nothing in that run. The `evaluated` counter shows each activity is evaluated once.

    .venv/bin/python -m pytest -q tests/test_lead_profiles.py
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import DAY, HOUR, T0, make_activity
from hbase_services import hbase_uri
from store_services import _mysql_connect, bigtable_uri, mysql_uri

from orion.profiles import PROFILE_VERSION, decode_profile, encode_profile
from orion.store import open_store

DATA = Path(__file__).parent / "data"

RULES = """
tenant: acme
settings:
  lists: [vip]
  communication_limits: {per_day: 1}
campaigns:
  - name: Welcome
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    qualification: once
    flow:
      - send_email: {template: welcome}
      - change_score: {delta: 10}
      - add_to_list: {list: vip}
      - wait: {duration: {n: 1, unit: days}}
      - send_email: {template: follow_up}
  - name: Digest
    triggers: [{activity: visit_web_page, where: {url: {contains: /blog}}}]
    qualification: {once_every: {n: 7, unit: days}}
    flow:
      - send_email: {template: newsletter}
  - name: VIP offer
    triggers: [{activity: visit_web_page, where: {url: {contains: /pricing}}}]
    qualification: every_time
    filters: [{score: {ge: 10}}, {member_of_list: vip}]
    flow:
      - webhook: {name: vip_offer}
  - name: Promo
    triggers: [{activity: fill_out_form, where: {form: {is: Promo}}}]
    qualification: every_time
    flow:
      - send_email: {template: newsletter}
"""

# The first run's input ends at T0 + 3 h; the second's starts at T0 + 4 h, on the same
# UTC day, and runs into the next day.
SPLIT = T0 + 3 * HOUR + 30 * 60_000


def email(lead: str, at: int):
    return make_activity("data_value_changes", lead=lead, at=at, attribute="email", new_value=f"{lead}@example.com")


def form(name: str, lead: str, at: int):
    return make_activity("fill_out_form", lead=lead, at=at, form=name)


def visit(url: str, lead: str, at: int):
    return make_activity("visit_web_page", lead=lead, at=at, url=f"https://acme.example{url}")


ACTIVITIES = [
    # once, score, lists: Welcome in the first run; again in the second, not qualified;
    # the second run's pricing visit passes VIP offer's filters on the first run's score
    # and list; once_every: a blog visit in each run, 25 hours apart.
    email("once", T0 - HOUR), form("Signup", "once", T0), visit("/blog/1", "once", T0 + HOUR),
    form("Signup", "once", T0 + 5 * HOUR), visit("/pricing", "once", T0 + DAY + 2 * HOUR),
    visit("/blog/2", "once", T0 + DAY + 3 * HOUR),
    # unsubscribed in the first run, a Promo in the second.
    email("unsub", T0 - HOUR), make_activity("unsubscribe_email", lead="unsub", at=T0 + 2 * HOUR, email="x"),
    form("Promo", "unsub", T0 + 5 * HOUR),
    # communication limit: a Promo email in each run, on the same UTC day.
    email("limit", T0 - HOUR), form("Promo", "limit", T0 + HOUR), form("Promo", "limit", T0 + 4 * HOUR),
    # the email address, set in the first run only.
    email("address", T0 - HOUR), form("Promo", "address", T0 + 6 * HOUR),
    # waiting in a flow across runs: signs up in the first run, nothing in the second.
    email("waiting", T0 - HOUR), form("Signup", "waiting", T0 + 2 * HOUR),
]


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    (folder / "acme.yaml").write_text(RULES)
    return folder


@pytest.fixture(params=["sqlite", "mysql", "bigtable", "hbase"])
def store_uris(request, tmp_path):
    """A function that gives a fresh, empty store URI of the backend each call."""
    made = []

    def fresh(name: str) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        if request.param == "bigtable":
            request.getfixturevalue("bigtable_emulator")
            return bigtable_uri()
        if request.param == "hbase":
            request.getfixturevalue("hbase_server")
            return hbase_uri()
        # `store init` creates the database: one per store, dropped at the end.
        database = f"{request.getfixturevalue('mysql_database')}_{name}"
        made.append(database)
        return mysql_uri(database)

    yield fresh
    if made:
        connection = _mysql_connect()
        try:
            with connection.cursor() as cursor:
                for database in made:
                    cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            connection.close()


def write_events(path: Path, activities) -> Path:
    """A file in event-time order, as a day's export would be (a file line older than an
    earlier one by more than the allowed lateness is late)."""
    ordered = sorted(activities, key=lambda a: (a.occurred_at, a.event_id))
    path.write_text("".join(json.dumps(a.to_json_dict()) + "\n" for a in ordered))
    return path


def run_orion(rules_dir, events: Path, store: str, outbox: str, out: Path, capsys) -> str:
    from orion.cli import main

    assert main(["run", "--events", str(events), "--rules", str(rules_dir), "--store", store,
                 "--outbox", outbox, "--out-dir", str(out)]) == 0
    return capsys.readouterr().out


def outbox_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT tenant, campaign, lead_id, run, kind, status, detail, template, recipient, queued_at "
            "FROM outbox ORDER BY tenant, campaign, lead_id, run").fetchall()


def outcomes(*out_dirs: Path) -> list[tuple]:
    found = []
    for out in out_dirs:
        for path in out.glob("outcomes-*.jsonl"):
            for line in path.read_text().splitlines():
                o = json.loads(line)
                found.append((o["lead_id"], o["event_id"], o["campaign"], o["qualified"], o["reason"]))
    return sorted(found)


def store_contents(uri: str) -> tuple[list, list]:
    leads = sorted({a.lead_id for a in ACTIVITIES})
    with open_store(uri) as store:
        history = sorted((a.lead_id, a.event_id, a.type, a.occurred_at, json.dumps(a.attributes, sort_keys=True))
                         for lead in leads for a in store.history("acme", lead))
        profiles = store.read_profiles([("acme", lead) for lead in leads])
    return history, profiles


def summary_value(text: str, label: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith(label))
    return int(line[len(label):].split()[0])


def test_two_runs_over_consecutive_inputs_give_what_one_run_over_both_gives(rules_dir, store_uris, tmp_path, capsys):
    first = write_events(tmp_path / "first.jsonl", [a for a in ACTIVITIES if a.occurred_at < SPLIT])
    second = write_events(tmp_path / "second.jsonl", [a for a in ACTIVITIES if a.occurred_at >= SPLIT])
    both = write_events(tmp_path / "both.jsonl", ACTIVITIES)

    one_store, one_outbox = store_uris("one"), tmp_path / "one-outbox.db"
    one_summary = run_orion(rules_dir, both, one_store, f"sqlite:///{one_outbox}", tmp_path / "one", capsys)
    two_store, two_outbox = store_uris("two"), tmp_path / "two-outbox.db"
    run_orion(rules_dir, first, two_store, f"sqlite:///{two_outbox}", tmp_path / "run1", capsys)
    after_first = outbox_rows(two_outbox)
    run_orion(rules_dir, second, two_store, f"sqlite:///{two_outbox}", tmp_path / "run2", capsys)

    assert outbox_rows(two_outbox) == outbox_rows(one_outbox)
    assert outcomes(tmp_path / "run1", tmp_path / "run2") == outcomes(tmp_path / "one")
    assert store_contents(two_store) == store_contents(one_store)

    # Each activity is evaluated once: the input's and those the flows generated, which
    # are exactly what was stored.
    assert summary_value(one_summary, "evaluated:") == summary_value(one_summary, "stored:")

    # And each fact, one by one, in the two-run case.
    rows = outbox_rows(two_outbox)
    found = outcomes(tmp_path / "run2")
    welcome_again = [o for o in found if o[0] == "once" and o[2] == "Welcome"]
    assert [(o[3], o[4]) for o in welcome_again] == [(False, "qualification")], "once: not again in run 2"
    digest_again = [o for o in found if o[0] == "once" and o[2] == "Digest"]
    assert [(o[3], o[4]) for o in digest_again] == [(False, "qualification")], "once_every: 7 days not passed"
    assert [o[3] for o in found if o[0] == "once" and o[2] == "VIP offer"] == [True], \
        "score and list from run 1 pass the filters in run 2"
    unsubscribed = [r for r in rows if r[2] == "unsub" and r[1] == "Promo"]
    assert [(r[5], r[6].split(":")[0]) for r in unsubscribed] == [("held", "unsubscribed")]
    limited = sorted((r[9], r[5], (r[6] or "").split(":")[0]) for r in rows if r[2] == "limit")
    assert [(status, detail) for _, status, detail in limited] == [
        ("queued", ""), ("held", "communication_limit_per_day")], "run 1's email counts on the same day"
    address = [r for r in rows if r[2] == "address"]
    assert [(r[5], r[8]) for r in address] == [("queued", "address@example.com")], "the address from run 1"
    waiting = sorted((r[3].split("#")[1], r[7], r[5]) for r in rows if r[2] == "waiting")
    assert waiting == [("0", "welcome", "queued"), ("4", "follow_up", "queued")]
    assert not any(r[2] == "waiting" and r[7] == "follow_up" for r in after_first), \
        "the follow-up waits for the run whose input passes the wait"


def test_a_replayed_input_changes_no_profile(rules_dir, tmp_path, capsys):
    store, outbox = f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'outbox.db'}"
    events = write_events(tmp_path / "all.jsonl", ACTIVITIES)
    run_orion(rules_dir, events, store, outbox, tmp_path / "a", capsys)
    before = store_contents(store)
    again = run_orion(rules_dir, events, store, outbox, tmp_path / "b", capsys)
    assert store_contents(store) == before
    assert summary_value(again, "evaluated:") == 0 and summary_value(again, "duplicates:") == len(ACTIVITIES)


def test_a_profile_written_by_an_older_orion_loads():
    """tests/data/profile-v1.json is the flow state Orion kept before profiles had a
    version (LeadFlows.to_json_dict); it loads with its lead, flows and sends."""
    record = decode_profile((DATA / "profile-v1.json").read_text())
    lead = record.flows.lead
    assert lead.attributes["email"] == "ada@example.com" and lead.attributes["unsubscribed"] is True
    assert lead.score == 13 and lead.lists == frozenset({"newsletter"})
    assert lead.campaigns == {"Signup": (1, T0)} and lead.history == {"k": {20414: 1}}
    assert [(f.campaign, f.position, f.wake_at) for f in record.flows.running] == [("Signup", 6, T0 + 2 * DAY)]
    assert record.flows.sent == (T0,)
    assert record.progress.released is None, "version 1 had no sequencer progress"
    # Written again, it is version 2 (the current version of a profile without an origin,
    # tests/test_profile_lineage.py), and reads back the same.
    text = encode_profile(record, history=True)
    assert json.loads(text)["version"] == 2 < PROFILE_VERSION
    assert decode_profile(text) == record


def test_a_profile_from_a_newer_orion_is_refused_with_a_clear_message():
    from orion.profiles import ProfileError

    with pytest.raises(ProfileError, match="newer Orion"):
        decode_profile(json.dumps({"version": PROFILE_VERSION + 1}))


# --- a streaming job restarted without a savepoint ----------------------------------------


@pytest.fixture(scope="module")
def pubsub():
    from orion.testing.emulators import EmulatorMissing, PubSubEmulator

    try:
        emulator = PubSubEmulator.start()
    except EmulatorMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    yield emulator
    emulator.stop()


def test_a_streaming_job_restarted_without_a_savepoint_mails_no_lead_twice(rules_dir, pubsub, tmp_path, monkeypatch):
    """Two streaming jobs one after the other, on one subscription, store and outbox, the
    second with no state of the first: the second still knows the lead went through
    Welcome (once), that another unsubscribed, and the event ids already evaluated."""
    import subprocess
    import sys
    import time

    from orion.testing.emulators import emulator_environment

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    from google.cloud import pubsub_v1

    topic, subscription = "projects/orion-test/topics/restart", "projects/orion-test/subscriptions/restart"
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    subscriber = pubsub_v1.SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": subscription, "topic": topic, "enable_message_ordering": True})
    base = int(time.time() * 1000) - 600_000  # behind the wall-clock watermark: released at once

    def event(event_id: str, lead: str, at: int, type_: str, **attributes) -> dict:
        return {"event_id": event_id, "tenant": "acme", "lead_id": lead, "type": type_,
                "occurred_at": base + at, "attributes": attributes}

    def publish_and_run(events: list[dict], name: str) -> subprocess.CompletedProcess:
        for future in [publisher.publish(topic, json.dumps(e).encode(), ordering_key=e["lead_id"]) for e in events]:
            future.result(timeout=30)
        result = subprocess.run(
            [str(Path(sys.executable).with_name("orion")), "run", "--rules", str(rules_dir),
             "--subscription", subscription, "--store", f"sqlite:///{tmp_path / 'store.db'}",
             "--outbox", f"sqlite:///{tmp_path / 'outbox.db'}", "--out-dir", str(tmp_path / name),
             "--allowed-lateness", "1", "--duration", "25"],
            env=emulator_environment(pubsub), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    signup = event("s1", "L", 1000, "fill_out_form", form="Signup")
    publish_and_run([event("a1", "L", 0, "data_value_changes", attribute="email", new_value="l@example.com"),
                     signup,
                     event("a2", "U", 0, "data_value_changes", attribute="email", new_value="u@example.com"),
                     event("u1", "U", 1000, "unsubscribe_email", email="u@example.com")], "first")
    second = publish_and_run([signup,  # redelivered: already evaluated
                              event("s2", "L", 5000, "fill_out_form", form="Signup"),
                              event("p1", "U", 5000, "fill_out_form", form="Promo")], "second")

    rows = outbox_rows(tmp_path / "outbox.db")
    assert [(r[1], r[2], r[5]) for r in rows if r[4] == "email"] == [
        ("Promo", "U", "held"), ("Welcome", "L", "queued")], rows
    assert "unsubscribed" in next(r[6] for r in rows if r[2] == "U")
    assert summary_value(second.stdout, "duplicates:") == 1
    found = outcomes(tmp_path / "second")
    assert [(o[1], o[2], o[3], o[4]) for o in found if o[2] == "Welcome"] == [("s2", "Welcome", False, "qualification")]


def test_a_new_streaming_job_resumes_the_waits_of_leads_in_the_store(rules_dir, tmp_path, capsys):
    """A lead left waiting in a flow by an earlier job (here a run over a file) and silent
    since: a streaming job that starts without that job's state finds it in the store
    and sends the follow-up when event time passes the wait."""
    from typing import Any, Tuple

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
    from orion.transforms.evaluate import waiting_leads
    from orion.transforms.flows import QueueEmails
    from orion.transforms.intake import ParseActivities
    from orion.transforms.sinks import WriteActivities, WriteProfiles

    store, outbox = f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "outbox.db"
    first = write_events(tmp_path / "first.jsonl", [email("waiting", T0 - HOUR), form("Signup", "waiting", T0)])
    run_orion(rules_dir, first, store, f"sqlite:///{outbox}", tmp_path / "run1", capsys)
    assert [r[7] for r in outbox_rows(outbox) if r[2] == "waiting"] == ["welcome"]
    found = waiting_leads(store, str(rules_dir))
    assert [(key, wake.wake_at) for key, wake in found] == [(("acme", "waiting"), T0 + DAY)]

    later = visit("/", "other", T0 + 2 * DAY)
    stream = (TestStream()
              .advance_watermark_to((T0 + DAY - HOUR) / 1000)
              .add_elements([TimestampedValue(json.dumps(later.to_json_dict()).encode(), later.occurred_at / 1000)])
              .advance_watermark_to((T0 + 3 * DAY) / 1000)
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        activities, dead = pipeline | stream | ParseActivities(str(rules_dir))
        waiting = pipeline | beam.Create(found).with_output_types(Tuple[Tuple[str, str], Any])
        # (Without `waiting_leads`, the lead would stay waiting: this job never sees it.)
        build_activity_graph(activities, dead, GraphSettings(str(rules_dir), bounded=False, seed_store_uri=store,
                                                             one_watermark_per_stage=True),
                             store_sink=WriteActivities(store), profile_sink=WriteProfiles(store),
                             outbox_sink=QueueEmails(f"sqlite:///{outbox}"), waiting_leads=waiting)
    assert sorted((r[7], r[9]) for r in outbox_rows(outbox) if r[2] == "waiting") == [
        ("follow_up", T0 + DAY), ("welcome", T0)], "the follow-up, at the time its wait ended"
    with open_store(store) as opened:
        assert opened.due_profiles(T0 + 10 * DAY) == [], "nothing waits any more"


def test_a_profile_keeps_the_decision_counters_counts_under_their_digest_and_nothing_else_reads_them():
    from orion.decisions.leads import lead_state_of_profile
    from orion.profiles import LeadRecord
    from orion.rules.model import LeadState

    state = LeadState(attributes={"industry": "Retail"}, history={"imp": {20_000: 2, 20_001: 1}, "campaign": {20_001: 4},
                                                                   "unseen": {}})
    record = LeadRecord()._replace(flows=LeadRecord().flows._replace(lead=state))
    text = encode_profile(record, decisions=("d1", ("imp", "unseen", "visits")))
    data = json.loads(text)
    # only the decision counters, and only those with a count
    assert data["decisions"] == {"of": "d1", "history": {"imp": {"20000": 2, "20001": 1}}}
    assert "history" not in data["lead"]
    assert decode_profile(text).flows.lead.history == {}, "the graph seeds its own counters, as before"
    assert decode_profile(text) == decode_profile(encode_profile(record))
    assert lead_state_of_profile(text, None, "d1").history == {"imp": {20_000: 2, 20_001: 1}}
    stored = {"from": "store"}
    assert lead_state_of_profile(text, stored, "d2").history is stored, "counted under other rules: not used"
    for bad in ({"of": "d1", "history": {"imp": {"x": 1}}}, {"of": "d1", "history": {"imp": {"1": "2"}}},
                {"of": "d1", "history": []}, "d1"):
        broken = json.dumps({**data, "decisions": bad})
        assert lead_state_of_profile(broken, stored, "d1").history is stored, bad
        assert lead_state_of_profile(broken, stored, "d1").attributes == {"industry": "Retail"}
