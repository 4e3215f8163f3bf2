"""The Flink job on a real PyFlink mini-cluster: the same rules and events give the same
outcomes, stored activities, lead profiles, dead letters and queued emails as the Beam
graph on the DirectRunner, and a job stopped with a savepoint, its rules changed and
restarted from the savepoint neither loses nor repeats an activity, an outcome or an
email, and a lead waiting in a campaign flow keeps its place. A lead new to the job is
seeded from the store (its profile and history) on both engines alike; two bounded runs
over consecutive days give what one run over both gives; and each activity is evaluated
once (one stateful step per lead).

Needs Java 17 and apache-flink (PyFlink); without them these tests fail and say so.

    .venv/bin/python -m pytest tests/test_flink_parity.py -q
"""
from __future__ import annotations

import email
import email.policy
import json
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from orion.activities import format_timestamp, parse_timestamp
from orion.runners import direct
from orion.settings import RunConfig

SAMPLES = Path(__file__).resolve().parent.parent / "orion" / "samples"
T0 = parse_timestamp("2026-11-22T10:00:00Z")
SECOND = 1000


def _event(event_id: str, lead: str, type_: str, at: int, tenant: str = "acme", **attributes) -> str:
    return json.dumps({"event_id": event_id, "tenant": tenant, "lead_id": lead, "type": type_,
                       "occurred_at": format_timestamp(at), "attributes": attributes})


def scenario_lines() -> list[str]:
    """Out-of-order, duplicate, late and bad events, for the sample rules: the signup that
    qualifies once is the earlier one in event time, which arrives second."""
    return [
        _event("p-6", "P2", "teleport", T0),  # unknown type
        _event("p-7", "P2", "visit_web_page", T0 + 5 * SECOND, url="https://acme.example/docs"),
        _event("p-3", "P1", "fill_out_form", T0 + 20 * SECOND, form="Signup"),
        _event("p-1", "P1", "fill_out_form", T0 + 10 * SECOND, form="Signup"),
        _event("p-2", "P1", "visit_web_page", T0 + 15 * SECOND, url="https://acme.example/pricing"),
        _event("p-2", "P1", "visit_web_page", T0 + 15 * SECOND, url="https://acme.example/pricing"),  # redelivery
        _event("p-9", "P1", "visit_web_page", T0 + 600 * SECOND, url="https://acme.example/"),
        _event("p-4", "P1", "open_email", T0 + 25 * SECOND, email="Welcome"),  # late: 575 s behind
        '{"event_id": "p-5", "tenant": "acme"',  # malformed
    ]


def output_lines(out_dir: Path, pattern: str) -> list[str]:
    return sorted(line for f in out_dir.glob(pattern) for line in f.read_text(encoding="utf-8").splitlines())


def comparable_profile(text: str) -> str:
    """A profile's text less its origin (which job lineage wrote it, and when: a
    streaming Flink job's bookkeeping, orion.profiles.Origin), as a profile without one
    is written."""
    data = json.loads(text)
    if data.pop("origin", None) is not None:
        data["version"] = 2
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def store_rows(db: Path) -> dict[str, list]:
    """The store's rows, order-free: activities, the index, and the lead profiles (less
    their wall-clock updated_at and their origin)."""
    with sqlite3.connect(db) as connection:
        activities = connection.execute("SELECT * FROM activities ORDER BY 1, 2, 3, 4").fetchall()
        index = connection.execute("SELECT * FROM activity_index ORDER BY 1, 2, 3, 4").fetchall()
        profiles = connection.execute(
            "SELECT tenant, lead_id, data, next_wake FROM lead_profiles ORDER BY 1, 2").fetchall()
    profiles = [(tenant, lead, comparable_profile(data), wake) for tenant, lead, data, wake in profiles]
    return {"activities": activities, "index": index, "profiles": profiles}


def outputs(out_dir: Path, db: Path) -> dict[str, list]:
    """Everything a run left, order-free: outcome and dead-letter lines, store rows."""
    return {"outcomes": output_lines(out_dir, "outcomes-*.jsonl"),
            "dead_letters": output_lines(out_dir, "dead-letters-*.jsonl"), **store_rows(db)}


def outbox_rows(db: Path) -> list[tuple]:
    """Every outbox record (emails, held emails, webhook calls), order-free."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        try:
            return sorted(connection.execute(
                "SELECT tenant, campaign, lead_id, run, kind, status, recipient, template, payload, detail, "
                "queued_at FROM outbox").fetchall())
        except sqlite3.OperationalError:  # the job has not created the table yet
            return []


def message_of(payload: bytes) -> tuple[str, str]:
    """(subject, plain-text body) of a queued MIME message."""
    message = email.message_from_bytes(payload, policy=email.policy.default)
    return str(message["Subject"]), message.get_body(("plain",)).get_content().strip()


def config_for(events: str, rules: Path, out_dir: Path, db: Path, outbox: Path | None = None) -> RunConfig:
    return RunConfig(rules_dir=str(rules), template_dirs=(), events=events, subscription=None,
                     store_uri=f"sqlite:///{db}", out_dir=out_dir, allowed_lateness_ms=60_000,
                     dedup_span_ms=24 * 3_600_000, duration_s=None, beam_args=(),
                     outbox_uri=None if outbox is None else f"sqlite:///{outbox}")


# A tenant whose flow sends an email, changes the score, waits two days and sends
# another (or, as a choice, a different one); the score change triggers a second
# campaign, with a webhook. Leads: one with an address, one without (held), one with an
# unusable address (assembly dead letter), one whose signup arrives twice.
FLOW_RULES = """\
tenant: flowco
settings:
  communication_limits: {per_day: 3, per_7_days: 10}
campaigns:
  - name: Onboarding
    triggers:
      - activity: fill_out_form
        where: {form: {is: Signup}}
    qualification: once
    flow:
      - send_email: {template: welcome}
      - change_score: {delta: 10}
      - wait: {duration: {n: 2, unit: days}}
      - send_email: {template: follow_up}
        choices:
          - if: [{lead: {company: {is: Initrode}}}]
            then: {send_email: {template: newsletter}}
  - name: Warm lead
    triggers:
      - activity: change_score
    filters:
      - score: {ge: 10}
    flow:
      - webhook: {name: crm_sync}
"""
DAY = 86_400 * SECOND


def flow_lines() -> list[str]:
    def attribute(event_id, lead, name, value, at=T0 - 3_600 * SECOND):
        return _event(event_id, lead, "data_value_changes", at, tenant="flowco", attribute=name, new_value=value)

    def signup(event_id, lead, at):
        return _event(event_id, lead, "fill_out_form", at, tenant="flowco", form="Signup")

    # The addresses come first: a file line more than the allowed lateness behind an
    # earlier one would be late.
    return [
        attribute("f-1", "F1", "email", "ada@flowco.example"),
        attribute("f-2", "F1", "first_name", "Ada"),
        attribute("f-3", "F1", "company", "Initrode"),
        attribute("f-5", "F2", "email", "grace@flowco.example"),
        attribute("f-8", "F4", "email", "not an address"),
        signup("f-4", "F1", T0),
        signup("f-6", "F2", T0 + 5 * SECOND),
        signup("f-6", "F2", T0 + 5 * SECOND),  # redelivery: one flow run, one email
        signup("f-7", "F3", T0 + 10 * SECOND),  # no address: held
        signup("f-9", "F4", T0 + 15 * SECOND),  # an address the assembler refuses
        _event("f-10", "F2", "visit_web_page", T0 + DAY, tenant="flowco", url="https://flowco.example/"),
        # The input's newest activity, its horizon: the two-day waits end before it.
        _event("f-11", "F5", "visit_web_page", T0 + 3 * DAY, tenant="flowco", url="https://flowco.example/"),
    ]


@pytest.mark.parametrize("execution_mode", ["process", "thread"])
def test_flink_and_beam_give_identical_outcomes_store_dead_letters_and_emails(flink, tmp_path, execution_mode):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLES / "events.jsonl", inputs / "samples.jsonl")
    (inputs / "scenario.jsonl").write_text("\n".join(scenario_lines()) + "\n", encoding="utf-8")
    (inputs / "flows.jsonl").write_text("\n".join(flow_lines()) + "\n", encoding="utf-8")
    pattern = str(inputs / "*.jsonl")
    rules = tmp_path / "rules"
    shutil.copytree(SAMPLES / "rules", rules)
    (rules / "flowco.yaml").write_text(FLOW_RULES, encoding="utf-8")

    beam_totals = direct.run(config_for(pattern, rules, tmp_path / "beam", tmp_path / "beam.db",
                                        tmp_path / "beam-outbox.db"))
    flink_run = flink.run_flink(config_for(pattern, rules, tmp_path / "flink", tmp_path / "flink.db",
                                           tmp_path / "flink-outbox.db"),
                                options=flink.FlinkOptions(parallelism=2, execution_mode=execution_mode))

    beam = outputs(tmp_path / "beam", tmp_path / "beam.db")
    on_flink = outputs(tmp_path / "flink", tmp_path / "flink.db")
    for part in ("outcomes", "dead_letters", "activities", "index", "profiles"):
        assert on_flink[part] == beam[part], f"{part} differ between Flink and Beam"
    beam_outbox, flink_outbox = outbox_rows(tmp_path / "beam-outbox.db"), outbox_rows(tmp_path / "flink-outbox.db")
    assert [row[:4] for row in flink_outbox] == [row[:4] for row in beam_outbox], "queued keys differ"
    assert flink_outbox == beam_outbox, "queued records (recipients, messages, held reasons) differ"
    for counter in ("events_read", "evaluated", "stored", "duplicates", "dead_letters", "outcomes", "qualified",
                    "emails_requested", "emails_held", "emails_assembled", "webhooks", "flow_activities",
                    "outbox_queued", "outbox_duplicates"):
        assert flink_run.counters.get(counter, 0) == beam_totals.get(counter, 0), counter

    # The flows really ran: the welcome at the signup, the score change stored and
    # triggering the webhook, the two-day wait (over before the input's horizon, f-11),
    # and the email after it (F1's company picks the newsletter); the redelivered signup
    # started one run; F3 is held for want of an address; F4's address is refused at
    # assembly.
    onboarding = {(row[2], row[3].split("#")[1]): row for row in flink_outbox
                  if row[0] == "flowco" and row[1] == "Onboarding"}
    emails = {key: (row[6], row[7], row[10], message_of(row[8])[0])
              for key, row in onboarding.items() if row[4] == "email" and row[5] == "queued"}
    assert emails == {
        ("F1", "0"): ("ada@flowco.example", "welcome", T0, "Welcome, Ada!"),
        ("F1", "3"): ("ada@flowco.example", "newsletter", T0 + 2 * DAY, message_of(onboarding[("F1", "3")][8])[0]),
        ("F2", "0"): ("grace@flowco.example", "welcome", T0 + 5 * SECOND, "Welcome, there!"),
        ("F2", "3"): ("grace@flowco.example", "follow_up", T0 + 5 * SECOND + 2 * DAY, "Following up"),
    }
    assert message_of(onboarding[("F2", "3")][8])[1] == "Hi there, can we help with your evaluation?"
    assert sorted((lead, step, row[9].split(":")[0]) for (lead, step), row in onboarding.items()
                  if row[5] == "held") == [("F3", "0", "no_email_address"), ("F3", "3", "no_email_address")]
    assert sorted(row[2] for row in flink_outbox if row[1] == "Warm lead" and row[4] == "webhook") == \
        ["F1", "F2", "F3", "F4"]
    refused = [json.loads(line) for line in on_flink["dead_letters"]
               if json.loads(line)["reason"] == "bad_email_address"]
    assert sorted(d["element"]["run"].split("#")[1] for d in refused) == ["0", "3"]
    assert {d["element"]["lead_id"] for d in refused} == {"F4"}
    score_changes = sorted(row[1] for row in on_flink["activities"] if row[0] == "flowco" and row[4] == "change_score")
    assert score_changes == ["F1", "F2", "F3", "F4"], "each lead's flow changed its score once, stored"

    # The order-dependent content is really there: the earlier signup, which arrived
    # second, is the one that qualified; the redelivery was evaluated once; the late and
    # bad lines are dead letters.
    welcome = [json.loads(line) for line in on_flink["outcomes"]
               if json.loads(line)["campaign"] == "Welcome new signups" and json.loads(line)["lead_id"] == "P1"]
    assert {(o["event_id"], o["qualified"]) for o in welcome} == {("p-1", True), ("p-3", False)}
    reasons = Counter(json.loads(line)["reason"] for line in on_flink["dead_letters"]
                      if "scenario.jsonl" in (json.loads(line)["source"] or ""))
    assert reasons == {"late": 1, "malformed_json": 1, "unknown_type": 1}
    assert sum(1 for row in on_flink["activities"] if row[3] == "p-2") == 1
    counts = flink_run.counters
    assert counts["events_read"] == (counts["stored"] - counts["flow_activities"]) + counts["duplicates"] + \
        (counts["dead_letters"] - counts["flow_dead_letters"]), "every event is stored, a duplicate or a dead letter"


# --- rolling upgrade: stop with a savepoint, change the rules, restore -----------------

RULES_V1 = """\
tenant: acme
campaigns:
  - name: Every visit
    triggers:
      - activity: visit_web_page
    qualification: every_time
  - name: First visit
    triggers:
      - activity: visit_web_page
    qualification: once
    flow:
      - send_email: {template: welcome}
      - change_score: {delta: 5}
      - wait: {duration: {n: 10, unit: minutes}}
      - send_email: {template: follow_up}
"""
RULES_V2 = RULES_V1.replace("name: Every visit", "name: Every visit v2")
LEADS = 5
VISITS = 120  # one every 10 s of event time, round robin over the leads
LATENESS_MS = 60_000
# A lead's first visit (L0 at 0 s ... L4 at 40 s) starts its flow: the welcome at once,
# the follow-up 10 minutes later (600 s ... 640 s of event time), past where the first
# run's watermark gets (its newest visit, 590 s, minus the lateness): every lead is
# waiting in its flow when the first run stops, and the wait ends in the second run.
FLOW_WAIT_MS = 600 * SECOND


def address_lines() -> list[str]:
    return [_event(f"a-{n}", f"L{n}", "data_value_changes", T0 - SECOND, attribute="email",
                   new_value=f"l{n}@acme.example") for n in range(LEADS)]


def visit_lines(numbers) -> list[str]:
    return [_event(f"v-{n:04d}", f"L{n % LEADS}", "visit_web_page", T0 + n * 10 * SECOND,
                   url=f"https://acme.example/{n}") for n in numbers]


def queued_emails(outbox: Path) -> list[tuple[str, str, int]]:
    """(lead, run, queued_at) of every email in the outbox."""
    return sorted((row[2], row[3], row[10]) for row in outbox_rows(outbox) if row[4] == "email")


def drop_file(directory: Path, name: str, lines: list[str]) -> None:
    """Written beside, then renamed in: the monitor never sees half a file."""
    hidden = directory / f".{name}.tmp"  # Flink's file source skips hidden files
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hidden.rename(directory / name)


def stored_event_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as connection:
            return [row[0] for row in connection.execute("SELECT event_id FROM activities")]
    except sqlite3.OperationalError:  # the job has not created the table yet
        return []


def wait_for(condition, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def released_before(numbers, newest: int) -> set[str]:
    """The visits the watermark (newest event time - allowed lateness) has passed."""
    watermark = T0 + newest * 10 * SECOND - LATENESS_MS - 1
    return {f"v-{n:04d}" for n in numbers if T0 + n * 10 * SECOND <= watermark}


def test_stop_with_savepoint_change_rules_restore_loses_and_repeats_nothing(flink, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULES_V1, encoding="utf-8")
    watched = tmp_path / "incoming"
    watched.mkdir()
    db, outbox = tmp_path / "store.db", tmp_path / "outbox.db"
    config = config_for(str(watched), rules, tmp_path / "out", db, outbox)._replace(allowed_lateness_ms=LATENESS_MS)
    streaming = flink.FlinkOptions(watch=True, monitor_interval_s=0.5, flush_after_ms=200, idle_release_s=1.0)
    first_visits = {f"L{n}": (f"v-{n:04d}", T0 + n * 10 * SECOND) for n in range(LEADS)}
    welcomes = sorted((lead, f"{visit}#0", at) for lead, (visit, at) in first_visits.items())
    follow_ups = sorted((lead, f"{visit}#3", at + FLOW_WAIT_MS) for lead, (visit, at) in first_visits.items())

    first, second = range(0, 60), range(60, VISITS)
    drop_file(watched, "part-1.jsonl", address_lines() + visit_lines(first))
    job = flink.start_flink(config, streaming)
    released_first = released_before(first, newest=first[-1])
    wait_for(lambda: released_first <= set(stored_event_ids(db)), "the first file's released visits")
    wait_for(lambda: queued_emails(outbox) == welcomes, "the welcome emails")
    # The functions write their counts every second while they run (a job stopped with a
    # savepoint in thread mode does not close them).
    wait_for(lambda: flink.read_counters(tmp_path / "out").get("emails_requested") == LEADS, "the first job's counts")
    savepoint = job.stop_with_savepoint(str(tmp_path / "savepoints"))
    after_first_run = set(stored_event_ids(db))
    waiting = {f"v-{n:04d}" for n in first} - after_first_run
    assert released_first <= after_first_run and waiting, "visits within the lateness wait in the savepoint"
    assert queued_emails(outbox) == welcomes, "every lead waits in its flow: no follow-up before the restore"

    (rules / "acme.yaml").write_text(RULES_V2, encoding="utf-8")
    # The second file repeats three visits of the first (a redelivery after the restart).
    drop_file(watched, "part-2.jsonl", visit_lines(second) + visit_lines([3, 58, 59]))
    job = flink.start_flink(config, streaming._replace(from_savepoint=savepoint))
    everything = {f"v-{n:04d}" for n in range(VISITS)}
    released_all = released_before(range(VISITS), newest=VISITS - 1)
    wait_for(lambda: released_all <= set(stored_event_ids(db)), "the second file's released visits")
    # The waits end as event time passes them, before the drain below would end them.
    wait_for(lambda: queued_emails(outbox) == sorted(welcomes + follow_ups), "the follow-up emails after the wait")
    # Draining advances event time to the end: the visits still waiting are released.
    job.stop_with_savepoint(str(tmp_path / "savepoints"), drain=True)

    stored = stored_event_ids(db)
    assert sorted(e for e in stored if e.startswith("v-")) == sorted(everything), "every visit is stored once"
    assert queued_emails(outbox) == sorted(welcomes + follow_ups), \
        "each lead got its welcome and, after the wait that spanned the restore, one follow-up at its place"
    counters = flink.read_counters(tmp_path / "out")
    assert (counters.get("emails_requested"), counters.get("outbox_duplicates", 0)) == (2 * LEADS, 0), \
        "no email was requested twice (the outbox would hide a repeat; the flows did not make one)"
    score_changes = [e for e in stored if e.startswith("flow-")]
    assert len(score_changes) == LEADS and counters.get("flow_activities") == LEADS, \
        "each flow changed its lead's score once"
    outcomes = [json.loads(line) for f in (tmp_path / "out").glob("outcomes-*.jsonl")
                for line in f.read_text(encoding="utf-8").splitlines()]
    every = Counter(o["event_id"] for o in outcomes if o["campaign"].startswith("Every visit"))
    assert every == Counter(everything), "each visit is evaluated exactly once across the two runs"
    by_rules = {o["event_id"]: o["campaign"] for o in outcomes if o["campaign"].startswith("Every visit")}
    assert {e for e, c in by_rules.items() if c == "Every visit"} <= after_first_run
    assert all(by_rules[e] == "Every visit v2" for e in waiting), \
        "visits waiting in the savepoint are evaluated after the restore, under the new rules"
    first_visit = [o for o in outcomes if o["campaign"] == "First visit"]
    assert Counter(o["lead_id"] for o in first_visit if o["qualified"]) == {f"L{n}": 1 for n in range(LEADS)}, \
        "lead state survived the savepoint: `once` still qualified each lead only once"
    assert len(first_visit) == VISITS
    assert not list((tmp_path / "out").glob("dead-letters-*.jsonl")) or all(
        not f.read_text().strip() for f in (tmp_path / "out").glob("dead-letters-*.jsonl"))


# --- a lead new to the job, with a history in the store already -------------------------

HISTORY_RULES = """\
tenant: acme
campaigns:
  - name: Pricing regular
    triggers:
      - activity: visit_web_page
        where: {url: {contains: /pricing}}
    filters:
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: /pricing}}
          at_least: 3
          in_past: {n: 30, unit: days}
    qualification: every_time
"""


def test_a_lead_new_to_the_job_is_seeded_from_the_store_on_flink_as_on_beam(flink, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(HISTORY_RULES, encoding="utf-8")
    earlier, later = tmp_path / "earlier.jsonl", tmp_path / "later.jsonl"
    earlier.write_text("\n".join(_event(f"h-{n}", "S1", "visit_web_page", T0 + n * SECOND,
                                        url="https://acme.example/pricing") for n in range(3)) + "\n")
    later.write_text(_event("h-9", "S1", "visit_web_page", T0 + 2 * DAY, url="https://acme.example/pricing") + "\n")
    # An earlier run stored the lead's three pricing visits; both engines then start
    # afresh (no lead state) over a copy of that store.
    direct.run(config_for(str(earlier), rules, tmp_path / "first", tmp_path / "first.db"))
    shutil.copy(tmp_path / "first.db", tmp_path / "beam.db")
    shutil.copy(tmp_path / "first.db", tmp_path / "flink.db")

    beam_totals = direct.run(config_for(str(later), rules, tmp_path / "beam", tmp_path / "beam.db"))
    flink_run = flink.run_flink(config_for(str(later), rules, tmp_path / "flink", tmp_path / "flink.db"))

    beam, on_flink = outputs(tmp_path / "beam", tmp_path / "beam.db"), outputs(tmp_path / "flink", tmp_path / "flink.db")
    assert on_flink == beam
    (outcome,) = [json.loads(line) for line in on_flink["outcomes"]]
    assert (outcome["event_id"], outcome["qualified"]) == ("h-9", True), \
        "the stored history counts: without it one visit would not pass the filter"
    assert flink_run.counters.get("leads_seeded_from_store") == beam_totals.get("leads_seeded_from_store") == 1


# --- two bounded runs over consecutive days: the lead's state is durable -----------------

DAY_RULES = """\
tenant: dayco
settings:
  communication_limits: {per_day: 5, per_7_days: 20}
campaigns:
  - name: Welcome
    triggers:
      - activity: fill_out_form
        where: {form: {is: Signup}}
    qualification: once
    flow:
      - send_email: {template: welcome}
      - change_score: {delta: 10}
      - wait: {duration: {n: 1, unit: days}}
      - send_email: {template: follow_up}
  - name: Pricing
    triggers:
      - activity: visit_web_page
        where: {url: {contains: /pricing}}
    qualification: every_time
    flow:
      - send_email: {template: newsletter}
"""
HOUR = 3_600 * SECOND


def _day_event(event_id: str, lead: str, type_: str, at: int, **attributes) -> str:
    return _event(event_id, lead, type_, at, tenant="dayco", **attributes)


def day_one_lines() -> list[str]:
    """A, B and D have addresses; A and B sign up (a one-day wait each); C, with an
    address too, unsubscribes. The horizon of the day is E's visit, four hours in."""
    return [_day_event(f"d1-email-{lead}", lead, "data_value_changes", T0 - HOUR, attribute="email",
                       new_value=f"{lead.lower()}@dayco.example") for lead in "ABCD"] + [
        _day_event("d1-signup-A", "A", "fill_out_form", T0, form="Signup"),
        _day_event("d1-signup-B", "B", "fill_out_form", T0 + 60 * SECOND, form="Signup"),
        _day_event("d1-unsubscribe-C", "C", "unsubscribe_email", T0 + 120 * SECOND, email="Welcome"),
        _day_event("d1-visit-E", "E", "visit_web_page", T0 + 4 * HOUR, url="https://dayco.example/"),
    ]


def day_two_lines() -> list[str]:
    """A signs up again (`once`: no second run), after its wait has ended; B does nothing
    (its wait ends all the same); C, unsubscribed yesterday, visits pricing (its
    newsletter is held); D signs up, its wait ending after this day's horizon (F's visit)."""
    return [
        _day_event("d2-signup-A", "A", "fill_out_form", T0 + DAY + 2 * HOUR, form="Signup"),
        _day_event("d2-pricing-C", "C", "visit_web_page", T0 + DAY + 3 * HOUR, url="https://dayco.example/pricing"),
        _day_event("d2-signup-D", "D", "fill_out_form", T0 + DAY + 5 * HOUR, form="Signup"),
        _day_event("d2-visit-F", "F", "visit_web_page", T0 + DAY + 6 * HOUR, url="https://dayco.example/"),
    ]


def qualified_outcomes(*out_dirs: Path) -> set[tuple[str, str, str]]:
    """(lead, campaign, event id) of every qualified outcome the runs wrote."""
    found = set()
    for out_dir in out_dirs:
        for line in output_lines(out_dir, "outcomes-*.jsonl"):
            outcome = json.loads(line)
            if outcome["qualified"]:
                found.add((outcome["lead_id"], outcome["campaign"], outcome["event_id"]))
    return found


def day_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The rules directory and the two days' files."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "dayco.yaml").write_text(DAY_RULES, encoding="utf-8")
    days = tmp_path / "in"
    days.mkdir()
    (days / "day-1.jsonl").write_text("\n".join(day_one_lines()) + "\n", encoding="utf-8")
    (days / "day-2.jsonl").write_text("\n".join(day_two_lines()) + "\n", encoding="utf-8")
    return rules, days / "day-1.jsonl", days / "day-2.jsonl"


def test_two_bounded_runs_over_consecutive_days_give_what_one_run_over_both_gives(flink, tmp_path):
    rules, day_one, day_two = day_inputs(tmp_path)
    both = str(day_one.parent / "day-*.jsonl")
    options = flink.FlinkOptions(parallelism=2)
    whole = flink.run_flink(config_for(both, rules, tmp_path / "whole", tmp_path / "whole.db",
                                       tmp_path / "whole-outbox.db"), options=options)
    db, outbox = tmp_path / "days.db", tmp_path / "days-outbox.db"
    first = flink.run_flink(config_for(str(day_one), rules, tmp_path / "run-1", db, outbox), options=options)
    after_first = outbox_rows(outbox)
    second = flink.run_flink(config_for(str(day_two), rules, tmp_path / "run-2", db, outbox), options=options)

    assert store_rows(db) == store_rows(tmp_path / "whole.db"), "the store (activities, index, profiles) differs"
    assert outbox_rows(outbox) == outbox_rows(tmp_path / "whole-outbox.db"), "the outbox differs"
    assert qualified_outcomes(tmp_path / "run-1", tmp_path / "run-2") == qualified_outcomes(tmp_path / "whole") == {
        ("A", "Welcome", "d1-signup-A"), ("B", "Welcome", "d1-signup-B"), ("D", "Welcome", "d2-signup-D"),
        ("C", "Pricing", "d2-pricing-C"),
    }, "`once` kept A from qualifying again in the second run"
    for run in (whole, first, second):
        assert not run.counters.get("dead_letters"), run.counters

    # What each fact looks like in the outbox: (lead, campaign, step, kind, status, queued_at).
    queued = sorted((row[2], row[1], row[3].split("#")[1], row[4], row[5], row[10]) for row in outbox_rows(outbox))
    assert queued == [
        ("A", "Welcome", "0", "email", "queued", T0),
        ("A", "Welcome", "3", "email", "queued", T0 + DAY),  # the wait ended in run 2, at its own time
        ("B", "Welcome", "0", "email", "queued", T0 + 60 * SECOND),
        ("B", "Welcome", "3", "email", "queued", T0 + DAY + 60 * SECOND),  # B was not in day 2's input
        ("C", "Pricing", "0", "email", "held", T0 + DAY + 3 * HOUR),
        ("D", "Welcome", "0", "email", "queued", T0 + DAY + 5 * HOUR),
    ]
    (held,) = [row for row in outbox_rows(outbox) if row[5] == "held"]
    assert held[9].split(":")[0] == "unsubscribed", "C's unsubscribe in run 1 holds run 2's newsletter"
    assert [row[:4] for row in after_first] == [row[:4] for row in outbox_rows(outbox)
                                                if row[10] < T0 + DAY], "run 1 queued only day 1's emails"
    assert (second.counters.get("outbox_duplicates", 0), second.counters.get("leads_woken_from_store")) == (0, 2), \
        "run 2 repeated nothing, and woke A and B (both due by its horizon) from their stored profiles"
    waiting = {row[1]: row[3] for row in store_rows(db)["profiles"] if row[3] is not None}
    assert waiting == {"D": T0 + 2 * DAY + 5 * HOUR}, "D's wait, past run 2's horizon, waits in its profile"


def test_each_activity_is_evaluated_once_input_and_flow_generated(flink, tmp_path):
    rules, day_one, day_two = day_inputs(tmp_path)
    # A redelivery of day 2's last line: a duplicate, stored and evaluated once.
    with day_two.open("a", encoding="utf-8") as lines:
        lines.write(day_two_lines()[-1] + "\n")
    db = tmp_path / "store.db"
    run = flink.run_flink(config_for(str(day_one.parent / "day-*.jsonl"), rules, tmp_path / "out", db,
                                     tmp_path / "outbox.db"), options=flink.FlinkOptions(parallelism=2))

    counts = run.counters
    with sqlite3.connect(db) as connection:
        (rows,) = connection.execute("SELECT COUNT(*) FROM activities").fetchone()
    assert counts["flow_activities"] == 3 and counts["duplicates"] == 1, counts
    assert counts["evaluated"] == counts["stored"] == rows == \
        counts["activities_parsed"] - counts["duplicates"] + counts["flow_activities"], \
        "each stored activity, from the input or a flow step, was evaluated exactly once"


# --- a hot lead ------------------------------------------------------------------------------


def test_a_hot_lead_is_released_in_bounded_chunks_on_flink_as_on_beam(flink, tmp_path):
    """A lead with more activities than the step buffers (max_pending 3): released a
    chunk at a time, nothing lost, each evaluated once, the same as Beam."""
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(
        [_event(f"h{n:02d}", "HOT", "visit_web_page", T0 + n * SECOND, url="https://acme.example/")
         for n in range(10)]
        + [_event("calm", "CALM", "visit_web_page", T0, url="https://acme.example/")]) + "\n", encoding="utf-8")
    db = tmp_path / "store.db"
    run = flink.run_flink(config_for(str(events), SAMPLES / "rules", tmp_path / "out", db, None),
                          options=flink.FlinkOptions(max_pending=3))
    with sqlite3.connect(db) as connection:
        stored = sorted(row[0] for row in connection.execute("SELECT event_id FROM activities"))
    assert stored == sorted([f"h{n:02d}" for n in range(10)] + ["calm"])
    assert run.counters["hot_lead_releases"] == 2, "chunks of 4 and 4 past the bound of 3, then the last 2"
    assert run.counters["evaluated"] == 11 and not run.counters.get("dead_letters")


# --- batches: a lead's activities cross to its step as one element ---------------------------


def test_a_leads_activities_reach_its_step_as_one_element_per_file_and_give_what_beam_gives(flink, tmp_path):
    """The readers group what they read by lead: the step gets one LeadBatch per lead and
    file, not an element per activity, and the outputs (the lists the step emits, the
    lines the files get several to a string) are those of the Beam graph."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    visit = "visit_web_page"
    (inputs / "a.jsonl").write_text("\n".join([
        _event("b-1", "A", visit, T0 + 3 * SECOND, url="https://acme.example/pricing"),
        _event("b-2", "B", "fill_out_form", T0, form="Signup"),
        _event("b-3", "A", visit, T0 + SECOND, url="https://acme.example/"),  # before b-1 in event time
        _event("b-4", "B", visit, T0 + 2 * SECOND, url="https://acme.example/docs"),
        _event("b-5", "A", "fill_out_form", T0 + 2 * SECOND, form="Signup"),
        '{"event_id": "b-x"',
        _event("b-3", "A", visit, T0 + SECOND, url="https://acme.example/"),  # a redelivery
    ]) + "\n", encoding="utf-8")
    (inputs / "b.jsonl").write_text("\n".join([
        _event("b-6", "C", visit, T0, url="https://acme.example/pricing"),
        _event("b-7", "A", visit, T0 + 4 * SECOND, url="https://acme.example/pricing"),
        _event("b-8", "C", "fill_out_form", T0 + SECOND, form="Signup"),
    ]) + "\n", encoding="utf-8")
    pattern = str(inputs / "*.jsonl")
    beam_totals = direct.run(config_for(pattern, SAMPLES / "rules", tmp_path / "beam", tmp_path / "beam.db"))
    run = flink.run_flink(config_for(pattern, SAMPLES / "rules", tmp_path / "flink", tmp_path / "flink.db"))

    assert run.counters["lead_batches"] == 4, "A and B of a.jsonl, A and C of b.jsonl: one element each"
    assert run.counters["events_read"] == 10 and run.counters["evaluated"] == 8, run.counters
    beam, on_flink = outputs(tmp_path / "beam", tmp_path / "beam.db"), outputs(tmp_path / "flink", tmp_path / "flink.db")
    assert on_flink == beam
    assert len(on_flink["outcomes"]) == beam_totals["outcomes"] > 1, "one line per outcome, several per lead"
    assert [json.loads(line)["reason"] for line in on_flink["dead_letters"]] == ["malformed_json"]
