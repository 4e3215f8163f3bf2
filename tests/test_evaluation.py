"""Per-lead evaluation: outcome order, why a lead did not qualify, smart-list filters
(lead attributes, score, lists, activity history), how activities change the lead,
custom activity types, tenant isolation, purity and the JSON form of the lead state.

    .venv/bin/python -m pytest tests/test_evaluation.py -q
"""
from __future__ import annotations

import copy
import json

import pytest

from orion.activities import UNKNOWN_TYPE, Activity, BadActivity, parse_activity
from orion.rules import EMPTY_LEAD_STATE, apply_activity, evaluate, evaluate_lead
from orion.rules.model import LeadState

from conftest import (
    DAY,
    T0,
    WEEK,
    make_activity,
    outcome_map,
    qualified_names,
    run,
)

# --- priority order -------------------------------------------------------------------


PRIORITY_A = """
tenant: acme
campaigns:
  - name: Bravo
    priority: 20
    qualification: every_time
    triggers: [{activity: open_email, where: {email: {is: News}}}]
  - name: Zulu
    priority: 10
    qualification: every_time
    triggers: [{activity: open_email}]
  - name: Charlie
    qualification: every_time
    triggers: [{activity: open_email, where: {email: {in: [news, promo]}}}]
  - name: Retired
    priority: 1
    status: inactive
    triggers: [{activity: open_email}]
"""
PRIORITY_B = """
tenant: acme
campaigns:
  - name: Alpha
    priority: 20
    qualification: every_time
    triggers: [{activity: open_email}]
  - name: Able
    priority: 100
    qualification: every_time
    triggers: [{activity: open_email, where: {email: {starts_with: ne}}}]
  - name: Delta
    priority: -5
    qualification: every_time
    triggers: [{activity: open_email, where: {email: {is: NEWS}}}]
"""


def test_outcomes_come_in_priority_order_then_by_name(rules_dir):
    rules_dir.write(PRIORITY_A, "a.yaml")
    rules_dir.write(PRIORITY_B, "b.yaml")
    rules = rules_dir.load()
    activity = make_activity("open_email", email="news")
    _, outcomes = evaluate(rules, None, activity)
    expected = ["Delta", "Zulu", "Alpha", "Bravo", "Able", "Charlie"]
    assert [o.campaign for o in outcomes] == expected
    assert [o.priority for o in outcomes] == [-5, 10, 20, 20, 100, 100]
    tenant = rules.tenants["acme"]
    assert [c.name for c in tenant.match(activity)] == expected
    assert [c.name for c in tenant.match_brute_force(activity)] == expected


def test_inactive_and_batch_campaigns_never_produce_trigger_outcomes(load):
    rules = load("""
        tenant: acme
        settings:
          lists: [newsletter]
        campaigns:
          - name: Retired
            status: inactive
            triggers: [{activity: open_email}]
          - name: Monthly
            type: batch
            filters: [{member_of_list: newsletter}]
            schedule: {every: {n: 1, unit: months}}
          - name: Live
            triggers: [{activity: open_email}]
    """)
    _, outcomes = evaluate(rules, None, make_activity("open_email", email="x"))
    assert [o.campaign for o in outcomes] == ["Live"]
    assert rules.campaign("acme", "Retired").active is False
    assert rules.campaign("acme", "Monthly").kind == "batch"


def test_outcome_names_lead_event_and_time(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Live
            triggers: [{activity: open_email}]
    """)
    activity = make_activity("open_email", email="x", lead="42", event_id="ev-9", at=T0 + 7)
    _, [outcome] = evaluate(rules, None, activity)
    assert outcome.to_json_dict() == {
        "tenant": "acme", "lead_id": "42", "event_id": "ev-9", "occurred_at": T0 + 7,
        "campaign": "Live", "priority": 100, "qualified": True, "reason": None, "detail": None,
    }


# --- filters --------------------------------------------------------------------------

FILTERS = """
tenant: acme
settings:
  lists: [customers, newsletter, blocked]
  lead_attributes:
    industry: string
    employees: number
campaigns:
  - name: Retail big
    qualification: every_time
    triggers: [{activity: open_email}]
    filters:
      - lead: {industry: {is: Retail}, employees: {ge: 100}}
  - name: Scored
    qualification: every_time
    triggers: [{activity: open_email}]
    filters:
      - score: {ge: 20}
  - name: Customers not blocked
    qualification: every_time
    triggers: [{activity: open_email}]
    filters:
      - member_of_list: customers
      - not_member_of_list: blocked
  - name: Subscribed
    qualification: every_time
    triggers: [{activity: open_email}]
    filters:
      - lead: {unsubscribed: {is_not: true}}
  - name: Valid email
    qualification: every_time
    triggers: [{activity: open_email}]
    filters:
      - lead: {email_invalid: {is_not: true}}
"""


def open_at(offset: int = 0) -> Activity:
    return make_activity("open_email", email="news", at=T0 + offset)


def test_lead_attribute_filter_reads_values_set_by_data_value_changes(load):
    rules = load(FILTERS)
    state, outcomes = run(rules, [
        make_activity("data_value_changes", attribute="industry", new_value="retail", at=T0),
        make_activity("data_value_changes", attribute="employees", new_value=250, at=T0 + 1),
        open_at(2),
    ])
    assert state.attributes == {"industry": "retail", "employees": 250}
    assert outcome_map(outcomes)["Retail big"].qualified


def test_lead_attribute_filter_fails_with_which_filter_and_why(load):
    rules = load(FILTERS)
    state = LeadState(attributes={"industry": "Retail", "employees": 99})
    _, outcomes = evaluate(rules, state, open_at())
    outcome = outcome_map(outcomes)["Retail big"]
    assert (outcome.qualified, outcome.reason) == (False, "filters")
    assert outcome.detail.startswith("filter 1 (")
    assert "industry is" in outcome.detail and "employees ge 100" in outcome.detail


def test_failed_filter_description_keeps_a_true_operand(load):
    # `is_not: true` and `is_not: false` are opposite filters; the reason must tell them apart.
    rules = load(FILTERS)
    _, outcomes = evaluate(rules, LeadState(attributes={"unsubscribed": True}), open_at())
    assert outcome_map(outcomes)["Subscribed"].detail == "filter 1 (unsubscribed is_not true) not met"


def test_score_filter_follows_change_score_activities(load):
    rules = load(FILTERS)
    state, outcomes = run(rules, [
        open_at(0),
        make_activity("change_score", delta=15, at=T0 + 1),
        open_at(2),
        make_activity("change_score", delta=5, at=T0 + 3),
        open_at(4),
        make_activity("change_score", delta=-1.5, at=T0 + 5),
        open_at(6),
    ])
    scored = [o for o in outcomes if o.campaign == "Scored"]
    assert [o.qualified for o in scored] == [False, False, True, False]
    assert "score ge 20" in scored[0].detail
    assert state.score == 18.5


def test_change_score_with_new_score_sets_the_score(load):
    rules = load(FILTERS)
    state, _ = run(rules, [
        make_activity("change_score", delta=5, at=T0),
        make_activity("change_score", delta=1, new_score=40, at=T0 + 1),
    ])
    assert state.score == 40


def test_list_membership_filters_follow_list_activities(load):
    rules = load(FILTERS)
    state, outcomes = run(rules, [
        open_at(0),
        make_activity("added_to_list", list="customers", at=T0 + 1),
        open_at(2),
        make_activity("added_to_list", list="blocked", at=T0 + 3),
        open_at(4),
        make_activity("removed_from_list", list="blocked", at=T0 + 5),
        open_at(6),
    ])
    results = [(o.qualified, o.detail) for o in outcomes if o.campaign == "Customers not blocked"]
    assert [q for q, _ in results] == [False, True, False, True]
    assert "1 (member of list 'customers')" in results[0][1]
    assert "2 (not member of list 'blocked')" in results[2][1]
    assert "1 (" not in results[2][1]
    assert state.lists == frozenset({"customers"})


def test_unsubscribe_sets_the_unsubscribed_flag(load):
    rules = load(FILTERS)
    state, outcomes = run(rules, [open_at(0), make_activity("unsubscribe_email", at=T0 + 1), open_at(2)])
    assert state.attributes["unsubscribed"] is True
    assert [o.qualified for o in outcomes if o.campaign == "Subscribed"] == [True, False]


@pytest.mark.parametrize("category, invalid", [("hard", True), ("soft", False)])
def test_only_a_hard_bounce_marks_the_email_invalid(load, category, invalid):
    rules = load(FILTERS)
    state, outcomes = run(rules, [
        make_activity("email_bounced", email="news", category=category, at=T0), open_at(1)
    ])
    assert state.attributes.get("email_invalid", False) is invalid
    assert outcome_map(outcomes)["Valid email"].qualified is not invalid


def test_the_triggering_activity_changes_the_lead_before_its_filters_are_checked(load):
    rules = load("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: Joined VIP
            triggers: [{activity: added_to_list, where: {list: {is: vip}}}]
            filters: [{member_of_list: vip}]
    """)
    _, [outcome] = evaluate(rules, None, make_activity("added_to_list", list="vip"))
    assert outcome.qualified


def test_state_effects_apply_for_a_tenant_without_rules(load):
    rules = load(FILTERS)
    state, outcomes = run(rules, [
        make_activity("data_value_changes", attribute="city", new_value="Oslo", tenant="nobody"),
        make_activity("change_score", delta=3, tenant="nobody", at=T0 + 1),
        make_activity("added_to_list", list="anything", tenant="nobody", at=T0 + 2),
        make_activity("unsubscribe_email", tenant="nobody", at=T0 + 3),
    ])
    assert outcomes == []
    assert state == LeadState(
        attributes={"city": "Oslo", "unsubscribed": True}, score=3, lists=frozenset({"anything"})
    )


def test_data_value_change_to_null_clears_the_attribute_value(load):
    rules = load(FILTERS)
    state, _ = run(rules, [
        make_activity("data_value_changes", attribute="industry", new_value="Retail", at=T0),
        make_activity("data_value_changes", attribute="industry", new_value=None, at=T0 + 1),
    ])
    assert state.attributes.get("industry") is None


# --- activity history -------------------------------------------------------------------

HISTORY = """
tenant: acme
campaigns:
  - name: Pricing interest
    qualification: every_time
    triggers:
      - activity: visit_web_page
        where: {{url: {{contains: /pricing}}}}
    filters:
      - activity_history:
          activity: visit_web_page
          where: {{url: {{contains: /pricing}}}}
          {bounds}
          in_past: {{n: {n}, unit: {unit}}}
"""


def pricing_visit(offset: int) -> Activity:
    return make_activity("visit_web_page", url="https://acme.example/pricing", at=T0 + offset)


def last_outcome(rules, activities):
    _, outcomes = run(rules, activities)
    return outcomes[-1]


def test_history_at_least_counts_the_triggering_visit_too(load):
    rules = load(HISTORY.format(bounds="at_least: 3", n=30, unit="days"))
    assert last_outcome(rules, [pricing_visit(-2 * DAY), pricing_visit(-DAY), pricing_visit(0)]).qualified
    failed = last_outcome(rules, [pricing_visit(-DAY), pricing_visit(0)])
    assert (failed.qualified, failed.reason) == (False, "filters")
    assert "at least 3 times in past 30 days" in failed.detail


def test_history_older_than_the_window_is_not_counted(load):
    rules = load(HISTORY.format(bounds="at_least: 3", n=30, unit="days"))
    old = [pricing_visit(-40 * DAY), pricing_visit(-35 * DAY), pricing_visit(-32 * DAY)]
    assert not last_outcome(rules, old + [pricing_visit(-DAY), pricing_visit(0)]).qualified
    assert last_outcome(rules, old + [pricing_visit(-29 * DAY), pricing_visit(-DAY), pricing_visit(0)]).qualified


def test_history_only_counts_activities_meeting_its_where(load):
    rules = load(HISTORY.format(bounds="at_least: 3", n=30, unit="days"))
    about = [make_activity("visit_web_page", url="https://acme.example/about", at=T0 - i * DAY)
             for i in (1, 2, 3)]
    assert not last_outcome(rules, about + [pricing_visit(0)]).qualified


def test_history_window_in_weeks(load):
    rules = load(HISTORY.format(bounds="at_least: 2", n=2, unit="weeks"))
    assert last_outcome(rules, [pricing_visit(-10 * DAY), pricing_visit(0)]).qualified
    assert not last_outcome(rules, [pricing_visit(-3 * WEEK), pricing_visit(0)]).qualified


def test_history_window_in_months_is_thirty_days(load):
    rules = load(HISTORY.format(bounds="at_least: 2", n=1, unit="months"))
    assert last_outcome(rules, [pricing_visit(-29 * DAY), pricing_visit(0)]).qualified
    assert not last_outcome(rules, [pricing_visit(-32 * DAY), pricing_visit(0)]).qualified


def test_history_at_most(load):
    rules = load(HISTORY.format(bounds="at_most: 2", n=7, unit="days"))
    visits = [pricing_visit(-3 * DAY), pricing_visit(-DAY), pricing_visit(0)]
    assert last_outcome(rules, visits[1:]).qualified  # 2 visits
    failed = last_outcome(rules, visits)  # 3 visits
    assert not failed.qualified and "at most 2 times in past 7 days" in failed.detail
    # Visits older than the window no longer count against at_most.
    assert last_outcome(rules, [pricing_visit(-20 * DAY), pricing_visit(-10 * DAY), pricing_visit(0)]).qualified


def test_history_between_at_least_and_at_most(load):
    rules = load(HISTORY.format(bounds="at_least: 2\n          at_most: 3", n=30, unit="days"))
    visits = [pricing_visit(-i * DAY) for i in (4, 3, 2, 1, 0)]
    assert [last_outcome(rules, visits[-k:]).qualified for k in (1, 2, 3, 4, 5)] == [
        False, True, True, False, False
    ]


def test_history_of_another_activity_type(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Never filled a form
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: fill_out_form
                  at_most: 0
                  in_past: {n: 14, unit: days}
          - name: Filled the signup form
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: fill_out_form
                  where: {form: {is: signup}}
                  in_past: {n: 14, unit: days}
    """)
    nothing = outcome_map(run(rules, [open_at(0)])[1])
    assert nothing["Never filled a form"].qualified and not nothing["Filled the signup form"].qualified
    filled = outcome_map(run(rules, [
        make_activity("fill_out_form", form="SignUp", at=T0 - DAY), open_at(0)
    ])[1])
    assert not filled["Never filled a form"].qualified and filled["Filled the signup form"].qualified
    contact = outcome_map(run(rules, [
        make_activity("fill_out_form", form="contact", at=T0 - DAY), open_at(0)
    ])[1])
    assert not contact["Never filled a form"].qualified and not contact["Filled the signup form"].qualified


def test_history_of_another_type_ages_out_of_the_window_without_new_activity(load):
    # Nothing new is counted after the old form fills, so only the window check drops them.
    rules = load("""
        tenant: acme
        campaigns:
          - name: Recent form
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: fill_out_form
                  in_past: {n: 14, unit: days}
    """)
    fills = [make_activity("fill_out_form", form="a", at=T0 - 20 * DAY),
             make_activity("fill_out_form", form="b", at=T0 - 16 * DAY)]
    _, outcomes = run(rules, fills + [open_at(-10 * DAY), open_at(0)])
    assert [o.qualified for o in outcomes] == [True, False]


def test_filters_with_different_windows_over_the_same_history(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Month
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - activity_history: {activity: visit_web_page, at_least: 2, in_past: {n: 1, unit: months}}
          - name: Week
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - activity_history: {activity: visit_web_page, at_least: 2, in_past: {n: 1, unit: weeks}}
    """)
    visits = [make_activity("visit_web_page", url="/a", at=T0 - 20 * DAY),
              make_activity("visit_web_page", url="/b", at=T0 - DAY)]
    outcomes = outcome_map(run(rules, visits + [open_at(0)])[1])
    assert outcomes["Month"].qualified
    assert not outcomes["Week"].qualified


def test_history_is_counted_per_day_and_old_days_are_dropped(load):
    rules = load(HISTORY.format(bounds="at_least: 1", n=7, unit="days"))
    state, _ = run(rules, [pricing_visit(-30 * DAY), pricing_visit(-DAY), pricing_visit(-DAY + 1), pricing_visit(0)])
    [per_day] = state.history.values()
    today = T0 // DAY
    assert per_day == {today - 1: 2, today: 1}


def test_history_is_counted_even_for_activities_that_trigger_nothing(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Form fan
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: fill_out_form
                  at_least: 2
                  in_past: {n: 7, unit: days}
    """)
    state, outcomes = run(rules, [
        make_activity("fill_out_form", form="a", at=T0 - 2 * DAY),
        make_activity("fill_out_form", form="b", at=T0 - DAY),
        open_at(0),
    ])
    assert [o.qualified for o in outcomes] == [True]
    assert sum(n for days in state.history.values() for n in days.values()) == 2


# --- custom activity types ----------------------------------------------------------------

CUSTOM = """
tenant: globex
settings:
  lists: [vip]
  activity_types:
    store_visit:
      description: A lead checked in at a physical store.
      attributes:
        store: {type: string, required: true}
        minutes: number
        level: {type: string, enum: [gold, silver]}
      indexed_by: store
campaigns:
  - name: Flagship visitor
    qualification: every_time
    triggers:
      - activity: store_visit
        where:
          store: {in: [Flagship, Downtown]}
          minutes: {gt: 10}
  - name: Regular
    qualification: every_time
    triggers:
      - activity: store_visit
    filters:
      - activity_history:
          activity: store_visit
          where: {level: {is: gold}}
          at_least: 2
          in_past: {n: 2, unit: weeks}
"""
ACME = """
tenant: acme
campaigns:
  - name: Anything
    triggers: [{activity: open_email}]
"""


def store_visit(tenant="globex", **attributes) -> dict:
    return {"event_id": "s1", "tenant": tenant, "lead_id": "1", "type": "store_visit",
            "occurred_at": T0, "attributes": attributes}


def test_custom_type_is_accepted_for_its_tenant_and_unknown_for_another(rules_dir):
    rules_dir.write(CUSTOM, "globex.yaml")
    rules_dir.write(ACME, "acme.yaml")
    rules = rules_dir.load()
    accepted = parse_activity(store_visit(store="Flagship", minutes=12), rules.activity_types)
    assert accepted.type == "store_visit"
    with pytest.raises(BadActivity) as refused:
        parse_activity(store_visit(tenant="acme", store="Flagship"), rules.activity_types)
    assert refused.value.reason == UNKNOWN_TYPE


def test_custom_type_attributes_are_checked_as_declared(load):
    rules = load(CUSTOM)
    for bad in ({"minutes": 3}, {"store": "x", "minutes": "3"}, {"store": "x", "level": "bronze"},
                {"store": "x", "mood": "happy"}):
        with pytest.raises(BadActivity) as refused:
            parse_activity(store_visit(**bad), rules.activity_types)
        assert refused.value.reason == "bad_attribute", bad


def test_trigger_on_a_custom_type_fires(load):
    rules = load(CUSTOM)
    fire = parse_activity(store_visit(store="FLAGSHIP", minutes=11), rules.activity_types)
    short = parse_activity(store_visit(store="Flagship", minutes=10), rules.activity_types)
    other = parse_activity(store_visit(store="Airport", minutes=60), rules.activity_types)
    assert qualified_names(evaluate(rules, None, fire)[1]) == ["Flagship visitor"]
    assert "Flagship visitor" not in [o.campaign for o in evaluate(rules, None, short)[1]]
    assert "Flagship visitor" not in [o.campaign for o in evaluate(rules, None, other)[1]]


def test_history_filter_on_a_custom_type(load):
    rules = load(CUSTOM)
    visits = [
        make_activity("store_visit", tenant="globex", store="a", level="gold", at=T0 - DAY, types=rules),
        make_activity("store_visit", tenant="globex", store="b", level="silver", at=T0 - 1, types=rules),
        make_activity("store_visit", tenant="globex", store="c", level="gold", at=T0, types=rules),
    ]
    _, outcomes = run(rules, visits)
    assert [o.qualified for o in outcomes if o.campaign == "Regular"] == [False, False, True]


# --- tenant isolation -------------------------------------------------------------------

TENANT_ALPHA = """
tenant: alpha
settings:
  lists: [customers]
  lead_attributes:
    industry: string
  activity_types:
    kiosk_scan:
      attributes: {kiosk: string}
      indexed_by: kiosk
campaigns:
  - name: Welcome
    qualification: every_time
    triggers:
      - activity: fill_out_form
        where: {form: {is: Signup}}
  - name: Kiosk
    qualification: every_time
    triggers: [{activity: kiosk_scan}]
"""
TENANT_BETA = """
tenant: beta
campaigns:
  - name: Welcome
    qualification: every_time
    triggers:
      - activity: fill_out_form
        where: {form: {is: Contact}}
"""


@pytest.fixture
def two_tenants(rules_dir):
    rules_dir.write(TENANT_ALPHA, "alpha.yaml")
    rules_dir.write(TENANT_BETA, "beta.yaml")
    return rules_dir.load()


def test_tenant_rules_never_fire_for_another_tenants_leads(two_tenants):
    rules = two_tenants
    signup = {"form": "Signup"}
    alpha = evaluate(rules, None, make_activity("fill_out_form", tenant="alpha", lead="7", **signup))[1]
    beta = evaluate(rules, None, make_activity("fill_out_form", tenant="beta", lead="7", **signup))[1]
    gamma = evaluate(rules, None, make_activity("fill_out_form", tenant="gamma", lead="7", **signup))[1]
    assert [(o.tenant, o.campaign) for o in alpha] == [("alpha", "Welcome")]
    assert beta == [] and gamma == []
    contact = evaluate(rules, None, make_activity("fill_out_form", tenant="beta", lead="7", form="Contact"))[1]
    assert [(o.tenant, o.campaign) for o in contact] == [("beta", "Welcome")]


def test_same_campaign_name_in_two_tenants_is_two_campaigns(two_tenants, rules_dir):
    alpha = two_tenants.campaign("alpha", "Welcome")
    beta = two_tenants.campaign("beta", "Welcome")
    assert alpha.tenant == "alpha" and alpha.file == rules_dir.file("alpha.yaml")
    assert beta.tenant == "beta" and beta.file == rules_dir.file("beta.yaml")
    assert two_tenants.campaign("beta", "Kiosk") is None


def test_a_custom_type_of_one_tenant_never_triggers_for_another(two_tenants):
    forged = Activity("k1", "beta", "7", "kiosk_scan", T0, {"kiosk": "lobby"})
    assert evaluate(two_tenants, None, forged)[1] == []
    genuine = make_activity("kiosk_scan", tenant="alpha", kiosk="lobby", types=two_tenants)
    assert qualified_names(evaluate(two_tenants, None, genuine)[1]) == ["Kiosk"]


def test_lists_and_lead_attributes_are_per_tenant(rules_dir):
    rules_dir.write(TENANT_ALPHA, "alpha.yaml")
    rules_dir.write("""
        tenant: beta
        campaigns:
          - name: Welcome
            triggers: [{activity: open_email}]
            filters:
              - member_of_list: customers
              - lead: {industry: {is: retail}}
    """, "beta.yaml")
    errors = rules_dir.errors()
    assert {(e.file, e.line) for e in errors} == {
        (rules_dir.file("beta.yaml"), rules_dir.line("member_of_list", "beta.yaml")),
        (rules_dir.file("beta.yaml"), rules_dir.line("industry", "beta.yaml")),
    }
    assert any("unknown list 'customers'" in e.message for e in errors)
    assert any("unknown lead attribute 'industry'" in e.message for e in errors)


def test_a_tenant_split_over_two_files_shares_its_settings(rules_dir):
    rules_dir.write("""
        tenant: acme
        settings:
          lists: [vip]
    """, "settings.yaml")
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: VIP
            triggers: [{activity: open_email}]
            filters: [{member_of_list: vip}]
    """, "campaigns.yaml")
    rules = rules_dir.load()
    state = LeadState(lists=frozenset({"vip"}))
    assert qualified_names(evaluate(rules, state, make_activity("open_email", email="x"))[1]) == ["VIP"]


# --- purity and the JSON form of the state -----------------------------------------------

RICH = FILTERS + """
  - name: Pricing interest
    qualification: {once_every: {n: 1, unit: days}}
    triggers:
      - activity: visit_web_page
    filters:
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: /pricing}}
          at_least: 2
          in_past: {n: 30, unit: days}
"""


def rich_activities() -> list[Activity]:
    return [
        make_activity("visit_web_page", url="https://acme.example/pricing", at=T0 - 3 * DAY),
        make_activity("data_value_changes", attribute="industry", new_value="Retail", at=T0 - 2 * DAY),
        make_activity("data_value_changes", attribute="employees", new_value=500, at=T0 - 2 * DAY + 1),
        make_activity("change_score", delta=25, at=T0 - DAY),
        make_activity("added_to_list", list="customers", at=T0 - DAY + 1),
        make_activity("visit_web_page", url="https://acme.example/pricing", at=T0 - 5),
        open_at(-4),
        make_activity("email_bounced", email="news", category="hard", at=T0 - 3),
        make_activity("unsubscribe_email", at=T0 - 2),
        make_activity("removed_from_list", list="customers", at=T0 - 1),
        make_activity("visit_web_page", url="https://acme.example/pricing", at=T0),
        open_at(1),
    ]


def test_evaluation_never_mutates_the_input_state(load):
    rules = load(RICH)
    state, _ = run(rules, rich_activities()[:7])
    assert state.history and state.campaigns and state.lists and state.attributes
    frozen = copy.deepcopy(state)
    for activity in rich_activities()[7:] + rich_activities()[:7]:
        evaluate(rules, state, activity)
        assert state == frozen, f"{activity.type} changed the input state"
    assert EMPTY_LEAD_STATE == LeadState() and EMPTY_LEAD_STATE.attributes == {}


def test_apply_activity_never_mutates_the_input_state(load):
    rules = load(RICH)
    state, _ = run(rules, rich_activities())
    frozen = copy.deepcopy(state)
    for activity in rich_activities():
        apply_activity(rules.tenants["acme"], state, activity)
    assert state == frozen


def test_evaluating_a_lead_from_scratch_leaves_the_empty_state_empty(load):
    rules = load(RICH)
    run(rules, rich_activities())
    run(rules, rich_activities(), EMPTY_LEAD_STATE)
    assert EMPTY_LEAD_STATE == LeadState(attributes={}, score=0, lists=frozenset(), campaigns={}, history={})
    assert LeadState().attributes == {} and LeadState().history == {} and LeadState().campaigns == {}


def test_lead_state_json_round_trip(load):
    rules = load(RICH)
    state, outcomes = run(rules, rich_activities())
    assert any(o.qualified for o in outcomes)
    text = json.dumps(state.to_json_dict())
    restored = LeadState.from_json_dict(json.loads(text))
    assert restored == state
    assert restored.to_json_dict() == state.to_json_dict()


def test_lead_state_json_form_is_plain_json():
    state = LeadState(
        attributes={"city": "Oslo"}, score=2.5, lists=frozenset({"b", "a"}),
        campaigns={"Welcome": (2, T0)}, history={"k": {20000: 3}},
    )
    assert state.to_json_dict() == {
        "attributes": {"city": "Oslo"}, "score": 2.5, "lists": ["a", "b"],
        "campaigns": {"Welcome": [2, T0]}, "history": {"k": {"20000": 3}},
    }
    assert LeadState.from_json_dict({}) == LeadState()


def test_evaluation_continues_identically_from_a_round_tripped_state(load):
    rules = load(RICH)
    activities = rich_activities()
    whole_state, whole_outcomes = evaluate_lead(rules, None, activities)
    first, first_outcomes = evaluate_lead(rules, None, activities[:6])
    restored = LeadState.from_json_dict(json.loads(json.dumps(first.to_json_dict())))
    rest_state, rest_outcomes = evaluate_lead(rules, restored, activities[6:])
    assert first_outcomes + rest_outcomes == whole_outcomes
    assert rest_state == whole_state


def test_evaluate_lead_orders_by_event_time_then_event_id(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: First open
            triggers: [{activity: open_email}]
    """)
    late = make_activity("open_email", email="x", at=T0 + 1, event_id="a")
    tie_b = make_activity("open_email", email="x", at=T0, event_id="b")
    tie_a = make_activity("open_email", email="x", at=T0, event_id="a")
    _, outcomes = evaluate_lead(rules, None, [late, tie_b, tie_a])
    assert [(o.event_id, o.occurred_at, o.qualified) for o in outcomes] == [
        ("a", T0, True), ("b", T0, False), ("a", T0 + 1, False)
    ]
