"""Campaign flows, engine-neutral: every step type, choices, waits (and a wait across a
restart: the lead's flows serialized, the engine rebuilt from the rules, the flow
resumed), the cascade depth limit, communication limits, and qualification together
with flows. Plus the same flows through the Beam graph into a real SQLite outbox.

    .venv/bin/python -m pytest -q tests/test_flows.py
"""
from __future__ import annotations

import json
import textwrap

import apache_beam as beam
import pytest
from conftest import DAY, HOUR, T0, make_activity

from orion.activities import format_timestamp
from orion.campaigns.flows import (
    CASCADE_DEPTH, HELD_PER_7_DAYS, HELD_PER_DAY, HELD_UNSUBSCRIBED, FlowEngine, LeadFlows,
)
from orion.campaigns.outbox import open_outbox
from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.rules import load_rules

RULES = """
tenant: acme
settings:
  lists: [newsletter, hot]
  communication_limits: {per_day: 2, per_7_days: 3}
  lead_attributes: {industry: string}
campaigns:
  - name: Signup
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    flow:
      - send_email: {template: welcome}
      - change_score: {delta: 10}
      - change_data_value: {attribute: industry, value: Retail}
      - add_to_list: {list: newsletter}
      - webhook: {name: crm_sync}
      - wait: {duration: {n: 2, unit: days}}
      - send_email: {template: follow_up}
        choices:
          - if: [{lead: {industry: {is: Retail}}}, {score: {ge: 100}}]
            logic: any
            then: {send_email: {template: newsletter}}
      - remove_from_list: {list: newsletter}
      - change_score: {set: 3}
  - name: Nurture
    triggers: [{activity: visit_web_page, where: {url: {contains: /blog}}}]
    qualification: every_time
    flow:
      - wait: {until: "2026-12-24T09:00:00Z"}
      - send_email: {template: newsletter}
  - name: Stop nurture
    triggers: [{activity: visit_web_page, where: {url: {contains: /unsubscribe-nurture}}}]
    flow:
      - remove_from_flow: {campaigns: [Nurture]}
  - name: Requester
    triggers: [{activity: visit_web_page, where: {url: {contains: /pricing}}}]
    flow:
      - request_campaign: {campaign: Requested direct}
      - request_campaign: {campaign: Requested by trigger}
  - name: Requested direct
    triggers: [{activity: open_email, where: {email: {is: never}}}]
    flow:
      - add_to_list: {list: hot}
  - name: Requested by trigger
    triggers: [{activity: campaign_requested, where: {campaign: {is: Requested by trigger}}}]
    flow:
      - change_score: {delta: 1}
  - name: Score loop
    triggers: [{activity: change_score}]
    qualification: every_time
    filters: [{lead: {industry: {is: Loop}}}]
    flow:
      - change_score: {delta: 1}
  - name: Operational
    triggers: [{activity: fill_out_form, where: {form: {is: Reset}}}]
    qualification: every_time
    flow:
      - send_email: {template: welcome, operational: true}
  - name: Marketing
    triggers: [{activity: fill_out_form, where: {form: {is: Promo}}}]
    qualification: every_time
    flow:
      - send_email: {template: newsletter}
  - name: Choice without default
    triggers: [{activity: fill_out_form, where: {form: {is: Choose}}}]
    flow:
      - choices:
          - if: [{member_of_list: hot}]
            then: {add_to_list: {list: newsletter}}
"""

EMAIL = "ada@example.com"


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules")
    (folder / "acme.yaml").write_text(RULES)
    return folder


@pytest.fixture(scope="module")
def engine(rules_dir):
    return FlowEngine(load_rules(rules_dir))


def with_email(engine, flows=None, *, at=T0 - HOUR, **more):
    """A lead that has an email address (and whatever else), through real activities."""
    state = flows
    for attribute, value in {"email": EMAIL, **more}.items():
        state, _ = engine.process_activity(state, make_activity(
            "data_value_changes", at=at, attribute=attribute, new_value=value))
    return state


def form(name, at=T0, **kw):
    return make_activity("fill_out_form", form=name, at=at, **kw)


def visit(url, at=T0, **kw):
    return make_activity("visit_web_page", url=url, at=at, **kw)


def test_every_lead_changing_step_applies_in_order_and_is_evaluated(engine):
    flows, result = engine.process_activity(with_email(engine), form("Signup"))
    lead = flows.lead
    assert lead.score == 10
    assert lead.attributes["industry"] == "Retail"
    assert "newsletter" in lead.lists
    assert [a.type for a in result.activities] == ["change_score", "data_value_changes", "added_to_list"]
    assert result.activities[0].attributes == {"delta": 10, "new_score": 10}
    assert result.activities[1].attributes == {"attribute": "industry", "old_value": None, "new_value": "Retail"}
    assert all(a.occurred_at == T0 for a in result.activities)
    assert [e.template for e in result.emails] == ["welcome"]
    email = result.emails[0]
    assert email.key() == ("acme", "Signup", "1", f"{form_event(flows)}#0")
    assert email.lead["email"] == EMAIL and email.lead["score"] == 0  # as of the step
    (hook,) = result.webhooks
    assert hook.name == "crm_sync" and hook.lead["industry"] == "Retail"
    # the flow waits at step 7 for two days
    (running,) = flows.running
    assert (running.campaign, running.position, running.wake_at) == ("Signup", 6, T0 + 2 * DAY)


def form_event(flows):
    return flows.running[0].run if flows.running else None


def test_generated_event_ids_are_deterministic(engine):
    lead = with_email(engine)
    activity = form("Signup", event_id="signup-1")
    _, first = engine.process_activity(lead, activity)
    _, again = engine.process_activity(lead, activity)
    assert [a.event_id for a in first.activities] == [a.event_id for a in again.activities]
    assert len({a.event_id for a in first.activities}) == 3


def test_wait_resumes_at_its_time_and_choices_pick_the_first_match(engine):
    flows, _ = engine.process_activity(with_email(engine), form("Signup"))
    early, nothing = engine.wake(flows, "acme", "1", T0 + DAY)
    assert nothing.emails == [] and early.running == flows.running
    done, result = engine.wake(flows, "acme", "1", T0 + 3 * DAY)
    # industry is Retail (choice 1 of `any`): newsletter instead of the default follow_up
    assert [e.template for e in result.emails] == ["newsletter"]
    assert result.emails[0].requested_at == T0 + 2 * DAY  # at the wake-up time, not "now"
    assert [a.type for a in result.activities] == ["removed_from_list", "change_score"]
    assert result.activities[1].attributes == {"delta": 3 - 10, "new_score": 3}
    assert done.lead.score == 3 and "newsletter" not in done.lead.lists
    assert done.running == ()


def test_choice_default_applies_when_no_choice_matches(engine):
    flows, _ = engine.process_activity(with_email(engine), form("Signup"))
    changed, _ = engine.process_activity(flows, make_activity(
        "data_value_changes", at=T0 + HOUR, attribute="industry", new_value="Banking"))
    _, result = engine.wake(changed, "acme", "1", T0 + 2 * DAY)
    assert [e.template for e in result.emails] == ["follow_up"]


def test_a_choice_step_without_default_does_nothing_when_no_choice_matches(engine):
    flows, result = engine.process_activity(with_email(engine), form("Choose"))
    assert result.activities == [] and flows.running == ()


def test_an_activity_after_the_wake_time_resumes_the_flow_first(engine):
    flows, _ = engine.process_activity(with_email(engine), form("Signup"))
    _, result = engine.process_activity(flows, make_activity("open_email", email="x", at=T0 + 5 * DAY))
    assert [e.requested_at for e in result.emails] == [T0 + 2 * DAY]


def test_a_waiting_lead_keeps_its_place_across_a_restart(rules_dir):
    before = FlowEngine(load_rules(rules_dir))
    flows, _ = before.process_activity(with_email(before), form("Signup"))
    snapshot = json.dumps(flows.to_json_dict())  # what a runner's state backend keeps
    del before, flows
    after = FlowEngine(load_rules(rules_dir))  # a new process: rules loaded anew
    restored = LeadFlows.from_json_dict(json.loads(snapshot))
    assert restored.next_wake() == T0 + 2 * DAY
    done, result = after.wake(restored, "acme", "1", T0 + 2 * DAY)
    assert [e.template for e in result.emails] == ["newsletter"]
    assert done.running == ()


def test_the_flow_state_the_beam_dofn_keeps_resumes_in_a_new_process(rules_dir, tmp_path):
    """What a runner checkpoints for a waiting lead is the lead step's RECORD state,
    written with that state spec's own coder (versioned JSON, not pickle); a new process
    (rules loaded anew) decodes it and the flow goes on at its wake-up time."""
    import subprocess
    import sys

    from orion.profiles import LeadRecord
    from orion.transforms.evaluate import _LeadStepFn

    before = FlowEngine(load_rules(rules_dir))
    flows, _ = before.process_activity(with_email(before), form("Signup"))
    checkpoint = tmp_path / "record.state"
    checkpoint.write_bytes(_LeadStepFn.RECORD.coder.encode(LeadRecord(flows=flows)))
    assert checkpoint.read_bytes().startswith(b"{"), "lead state is JSON with a schema, not a pickle"
    resume = textwrap.dedent("""
        import json, sys
        from orion.campaigns.flows import FlowEngine
        from orion.rules import load_rules
        from orion.transforms.evaluate import _LeadStepFn
        with open(sys.argv[1], "rb") as saved:
            flows = _LeadStepFn.RECORD.coder.decode(saved.read()).flows
        done, result = FlowEngine(load_rules(sys.argv[2])).wake(flows, "acme", "1", flows.next_wake())
        print(json.dumps({"emails": [[e.template, e.requested_at] for e in result.emails],
                          "running": len(done.running), "score": done.lead.score}))
    """)
    found = subprocess.run([sys.executable, "-c", resume, str(checkpoint), str(rules_dir)],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    after = json.loads(found.stdout.strip().splitlines()[-1])
    assert after == {"emails": [["newsletter", T0 + 2 * DAY]], "running": 0, "score": 3}


def test_wait_until_and_remove_from_flow(engine):
    lead = with_email(engine)
    flows, _ = engine.process_activity(lead, visit("https://acme.example/blog/1"))
    flows, _ = engine.process_activity(flows, visit("https://acme.example/blog/2", at=T0 + HOUR))
    assert [f.wake_at for f in flows.running] == [parse("2026-12-24T09:00:00Z")] * 2
    stopped, _ = engine.process_activity(flows, visit("https://acme.example/unsubscribe-nurture", at=T0 + 2 * HOUR))
    assert stopped.running == ()
    _, result = engine.wake(flows, "acme", "1", parse("2026-12-24T09:00:00Z"))
    assert len(result.emails) == 2


def parse(text):
    from orion.activities import parse_timestamp

    return parse_timestamp(text)


def test_request_campaign_runs_a_campaign_directly_or_through_its_trigger(engine):
    flows, result = engine.process_activity(with_email(engine), visit("https://acme.example/pricing"))
    qualified = [o.campaign for o in result.outcomes if o.qualified]
    assert qualified == ["Requested direct", "Requested by trigger"]
    assert "hot" in flows.lead.lists and flows.lead.score == 1
    assert [a.type for a in result.activities] == [
        "campaign_requested", "added_to_list", "campaign_requested", "change_score"]
    assert result.activities[0].attributes == {"campaign": "Requested direct", "source": "flow:Requester"}
    # the direct request obeys the campaign's qualification rule (once): not twice
    again = flows._replace(lead=flows.lead._replace(campaigns={**flows.lead.campaigns}))
    again.lead.campaigns.pop("Requester")
    _, second = engine.process_activity(again, visit("https://acme.example/pricing", at=T0 + DAY))
    blocked = {o.campaign: o for o in second.outcomes}
    assert blocked["Requested direct"].qualified is False
    assert blocked["Requested direct"].reason == "qualification"


def test_cascades_stop_at_the_depth_limit_with_a_dead_letter(rules_dir):
    engine = FlowEngine(load_rules(rules_dir), max_cascade_depth=4)
    lead = with_email(engine, industry="Loop")
    flows, result = engine.process_activity(lead, make_activity("change_score", delta=1))
    # the change_score activity triggers Score loop, whose step changes the score, ...
    assert len(result.activities) == 4
    assert flows.lead.score == 1 + 4
    (dead,) = result.dead_letters
    assert dead.reason == CASCADE_DEPTH and "past the limit of 4" in dead.detail
    assert dead.element["type"] == "change_score"
    assert sum(o.qualified for o in result.outcomes) == 4


def test_communication_limits_hold_non_operational_email_with_the_reason(engine):
    flows = with_email(engine)
    sent = []
    for i in range(3):
        flows, result = engine.process_activity(flows, form("Promo", at=T0 + i * HOUR))
        sent.append((len(result.emails), [h.reason for h in result.held]))
    assert sent == [(1, []), (1, []), (0, [HELD_PER_DAY])]
    # operational email ignores the limits
    flows, result = engine.process_activity(flows, form("Reset", at=T0 + 4 * HOUR))
    assert len(result.emails) == 1 and result.emails[0].operational
    # the next UTC day: 1 more fits the rolling 7 days (3), then the week is full
    flows, result = engine.process_activity(flows, form("Promo", at=T0 + DAY))
    assert len(result.emails) == 1
    flows, result = engine.process_activity(flows, form("Promo", at=T0 + 2 * DAY))
    assert [h.reason for h in result.held] == [HELD_PER_7_DAYS]
    assert "allows 3" in result.held[0].detail
    # a week after the first ones, there is room again
    flows, result = engine.process_activity(flows, form("Promo", at=T0 + 7 * DAY + HOUR))
    assert len(result.emails) == 1


def test_unsubscribed_and_addressless_leads_are_held_not_lost(engine):
    flows = with_email(engine, unsubscribed=True)
    _, result = engine.process_activity(flows, form("Promo"))
    assert [h.reason for h in result.held] == [HELD_UNSUBSCRIBED]
    _, result = engine.process_activity(flows, form("Reset"))
    assert len(result.emails) == 1  # operational mail still goes
    _, result = engine.process_activity(None, form("Promo"))
    assert [h.reason for h in result.held] == ["no_email_address"]


def test_qualification_decides_whether_a_flow_runs_again(engine):
    flows, first = engine.process_activity(with_email(engine), form("Signup"))
    flows, second = engine.process_activity(flows, form("Signup", at=T0 + HOUR))
    assert len(first.emails) == 1 and second.emails == []
    assert len(flows.running) == 1  # still only the first run, waiting
    flows, result = engine.process_activity(flows, visit("https://acme.example/blog/a", at=T0 + 2 * HOUR))
    flows, result = engine.process_activity(flows, visit("https://acme.example/blog/b", at=T0 + 3 * HOUR))
    assert sorted(f.campaign for f in flows.running) == ["Nurture", "Nurture", "Signup"]


# --- the Beam graph ---------------------------------------------------------------------


def test_the_graph_runs_flows_into_the_outbox(rules_dir, tmp_path):
    from orion.transforms.flows import QueueEmails

    outbox_uri = f"sqlite:///{tmp_path / 'outbox.db'}"
    activities = [
        make_activity("data_value_changes", lead="7", at=T0 - HOUR, attribute="email", new_value="g@example.com"),
        make_activity("data_value_changes", lead="7", at=T0 - HOUR, attribute="first_name", new_value="Grace"),
        form("Signup", lead="7"),
        make_activity("data_value_changes", lead="8", at=T0 - HOUR, attribute="email", new_value="l@example.com"),
        make_activity("data_value_changes", lead="8", at=T0 - HOUR, attribute="industry", new_value="Loop"),
        make_activity("change_score", lead="8", delta=1),
        # Another lead, three days on: event time reaches past lead 7's two-day wait.
        make_activity("visit_web_page", lead="99", at=T0 + 3 * DAY, url="https://acme.example/"),
    ]
    pipeline = beam.Pipeline()
    parsed = pipeline | "Activities" >> beam.Create(activities)
    none = pipeline | "NoParseErrors" >> beam.Create([])
    outputs = build_activity_graph(parsed, none, GraphSettings(str(rules_dir), bounded=True, max_cascade_depth=3),
                                   outbox_sink=QueueEmails(outbox_uri))
    from apache_beam.testing.util import assert_that

    def check_dead(letters):
        reasons = sorted(d.reason for d in letters)
        assert reasons == [CASCADE_DEPTH], reasons

    def check_generated(stored):
        by_lead = sorted((a.lead_id, a.type) for a in stored if a.event_id.startswith("flow-"))
        assert by_lead.count(("7", "added_to_list")) == 1 and by_lead.count(("7", "removed_from_list")) == 1
        assert by_lead.count(("8", "change_score")) == 3

    assert_that(outputs.dead_letters, check_dead, label="DeadLetters")
    assert_that(outputs.stored, check_generated, label="Generated")
    pipeline.run().wait_until_finish()
    with open_outbox(outbox_uri) as outbox:
        keys = sorted(outbox.keys())
        counts = outbox.counts()
    # welcome at once, newsletter (the choice) when event time passed the 2-day wait
    assert [(k[1], k[2], k[3].split("#")[1]) for k in keys] == [("Signup", "7", "0"), ("Signup", "7", "6")]
    assert counts["webhook:queued"] == 1
    _ = format_timestamp  # keep the import for readers comparing timestamps by hand


# --- `orion run`: flows into an outbox, through the command line -------------------------


def run_orion(*args: str) -> int:
    from orion.cli import main

    return main(["run", *args])


def test_orion_run_with_an_outbox_queues_the_flow_emails_once_however_often_it_reruns(rules_dir, tmp_path, capsys):
    signup, promo, anonymous = form("Signup", lead="1"), form("Promo", lead="3"), form("Signup", lead="2")
    activities = [
        make_activity("data_value_changes", lead="1", at=T0 - HOUR, attribute="email", new_value="one@example.com"),
        make_activity("data_value_changes", lead="1", at=T0 - HOUR, attribute="first_name", new_value="Ada"),
        make_activity("data_value_changes", lead="3", at=T0 - HOUR, attribute="email", new_value="three@example.com"),
        signup, promo, anonymous,  # lead 2 has no address: held, not lost
        # Another lead, three days on: event time reaches past the Signup flow's two-day wait.
        make_activity("visit_web_page", lead="9", at=T0 + 3 * DAY, url="https://acme.example/"),
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(a.to_json_dict()) + "\n" for a in activities))
    outbox_uri = f"sqlite:///{tmp_path / 'outbox.db'}"
    args = ("--events", str(events), "--rules", str(rules_dir), "--store", f"sqlite:///{tmp_path / 'store.db'}",
            "--out-dir", str(tmp_path / "out"), "--outbox", outbox_uri)

    assert run_orion(*args) == 0
    first = capsys.readouterr().out
    with open_outbox(outbox_uri) as outbox:
        queued = sorted(outbox.keys("queued"))
        held = sorted(outbox.keys("held"))
        counts = outbox.counts()
    # Signup: welcome at once, then (the input reaches past the 2-day wait) the newsletter
    # its choice picks; Promo: one newsletter.
    assert queued == [("acme", "Marketing", "3", f"{promo.event_id}#0"),
                      ("acme", "Signup", "1", f"{signup.event_id}#0"),
                      ("acme", "Signup", "1", f"{signup.event_id}#6")]
    assert held == [("acme", "Signup", "2", f"{anonymous.event_id}#0"),
                    ("acme", "Signup", "2", f"{anonymous.event_id}#6")]
    assert counts == {"email:queued": 3, "email:held": 2, "webhook:queued": 2}
    assert "emails queued:     3 (3 assembled)" in first
    assert "emails held:       2 (held back this run: no_email_address 2)" in first
    assert "webhooks queued:   2" in first and f"outbox:       {outbox_uri}" in first

    assert run_orion(*args) == 0  # a rerun (a retried job) queues nothing twice
    second = capsys.readouterr().out
    with open_outbox(outbox_uri) as outbox:
        assert sorted(outbox.keys("queued")) == queued and outbox.counts() == counts
    # The leads' profiles remember what they went through: nothing is evaluated again.
    assert summary_value(second, "duplicates:") == len(activities)
    assert summary_value(second, "outcomes:") == 0 and "campaign flows:" not in second


def summary_value(text: str, label: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith(label))
    return int(line[len(label):].split()[0])


def test_a_wait_past_the_end_of_the_input_waits_in_the_profile_for_the_next_run(rules_dir, tmp_path, capsys):
    """Event time never passes the input: a wait that ends after the newest activity
    stays in the lead's stored profile, and the run whose input reaches its time sends
    the email, although the lead does nothing in that run."""
    store = f"sqlite:///{tmp_path / 'store.db'}"
    outbox_uri = f"sqlite:///{tmp_path / 'outbox.db'}"
    signup = form("Signup", lead="1")
    day1 = [make_activity("data_value_changes", lead="1", at=T0 - HOUR, attribute="email", new_value=EMAIL), signup]
    day3 = [make_activity("visit_web_page", lead="2", at=T0 + 3 * DAY, url="https://acme.example/")]
    for name, activities in (("day1", day1), ("day3", day3)):
        events = tmp_path / f"{name}.jsonl"
        events.write_text("".join(json.dumps(a.to_json_dict()) + "\n" for a in activities))
        assert run_orion("--events", str(events), "--rules", str(rules_dir), "--store", store,
                         "--out-dir", str(tmp_path / name), "--outbox", outbox_uri) == 0
        capsys.readouterr()
        with open_outbox(outbox_uri) as outbox:
            runs = sorted(k[3].split("#")[1] for k in outbox.keys("queued") if k[1] == "Signup")
        if name == "day1":
            assert runs == ["0"], "the welcome only: the two-day wait ends after the input"
            from orion.store import open_store
            with open_store(store) as opened:
                assert opened.due_profiles(T0 + 2 * DAY) == [("acme", "1", T0 + 2 * DAY)]
    assert runs == ["0", "6"], "the follow-up once the next run's input passed the wait"


def test_orion_run_with_no_arguments_queues_the_sample_flows_emails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_orion() == 0
    out = capsys.readouterr().out
    with open_outbox("sqlite:///orion-data/outbox.db") as outbox:
        counts = outbox.counts()
        tenants = {k[0] for k in outbox.keys("queued")}
    assert counts["email:queued"] > 0 and counts["email:held"] > 0 and counts["webhook:queued"] > 0
    assert f"emails queued:     {counts['email:queued']} " in out
    assert tenants == {"acme", "globex", "initech"}  # every sample tenant's flows send email


def test_orion_run_with_outbox_none_runs_no_flows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_orion("--outbox", "none") == 0
    assert "campaign flows:" not in capsys.readouterr().out
    assert not (tmp_path / "orion-data" / "outbox.db").exists()


def test_cascades_stop_at_the_activity_budget_with_one_dead_letter(rules_dir):
    from orion.campaigns.flows import CASCADE_BUDGET

    engine = FlowEngine(load_rules(rules_dir), max_cascade_depth=50, max_cascade_activities=10)
    lead = with_email(engine, industry="Loop")
    flows, result = engine.process_activity(lead, make_activity("change_score", delta=1))
    assert len(result.activities) == 10 and flows.lead.score == 1 + 10
    (dead,) = result.dead_letters
    assert dead.reason == CASCADE_BUDGET and "generated 10 activities" in dead.detail
    # A fresh budget for the lead's next activity.
    _, result = engine.process_activity(flows, make_activity("change_score", delta=1, at=T0 + HOUR))
    assert len(result.activities) == 10
