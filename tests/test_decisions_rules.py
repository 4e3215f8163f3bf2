"""Experiences in the rule YAML: what compiles, in what order, and one test per class of
mistake, each asserting the file and line the error names and what the message says.

    .venv/bin/python -m pytest -q tests/test_decisions_rules.py
"""
from __future__ import annotations

import pytest

from orion.rules import load_serving_rules
from orion.rules.compiler import load_experiences
from orion.rules.model import history_digest

from conftest import SAMPLE_RULES, make_activity, single_error

VALID = """
    tenant: acme
    settings:
      lists: [customers]
      lead_attributes: {industry: string}
    campaigns:
      - name: Saw the hero
        qualification: every_time
        triggers:
          - activity: experience_impression
            where: {experience: {is: Retail hero}}
    experiences:
      - name: Retail hero
        placement: home_hero
        priority: 10
        audience:
          filters:
            - lead: {industry: {is: Retail}}
            - not_member_of_list: customers
          logic: 1 and 2
          context:
            device: {in: [mobile, desktop]}
            local_time: {between: ["22:00", "06:00"]}
        variants:
          - {name: a, weight: 3, json: {headline: A}}
          - {name: b, weight: 1, template: "Hi {{ lead.first_name }}"}
        control: {weight: 1}
        goal:
          activity: fill_out_form
          where: {form: {is: Demo}}
          within: {n: 14, unit: days}
      - name: Default hero
        placement: home_hero
        variants: [{name: only, weight: 1, json: "plain text is JSON too"}]
      - name: Early hero
        placement: home_hero
        priority: 5
        schedule: {starting: "2026-01-01T00:00:00Z", ending: "2026-02-01T00:00:00Z"}
        variants: [{name: only, weight: 1, json: null}]
      - name: Parked
        placement: footer
        status: inactive
        variants: [{name: only, weight: 1, json: {}}]
"""


def test_experiences_compile_in_priority_order_with_their_arms(rules_dir):
    rules_dir.write(VALID)
    rules, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    acme = experiences["acme"]
    assert [e.name for e in acme.by_placement["home_hero"]] == ["Early hero", "Retail hero", "Default hero"]
    assert acme.by_placement["footer"] == ()  # known placement, nothing active in it
    hero = acme.by_name["Retail hero"]
    assert [(arm.name, arm.kind, arm.control) for arm in hero.arms] == [
        ("a", "json", False), ("b", "template", False), ("control", "none", True)]
    assert hero.cumulative == (3.0, 4.0, 5.0)
    assert hero.goal.activity_type == "fill_out_form" and hero.goal.within_ms == 14 * 86_400_000
    assert acme.by_name["Early hero"].starting < acme.by_name["Early hero"].ending
    # the campaign triggers on the impressions: the tenant has the activity type
    impression = make_activity("experience_impression", types=rules, experience="Retail hero", variant="a",
                               placement="home_hero")
    assert [c.name for c in rules.tenants["acme"].match(impression)] == ["Saw the hero"]


def test_audience_history_counters_are_counted_by_the_graph_too_for_the_profile(rules_dir):
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: Nudge
            triggers: [{activity: visit_web_page}]
            filters:
              - activity_history:
                  activity: experience_impression
                  where: {experience: {is: Capped}}
                  in_past: {n: 30, unit: days}
            flow: [{change_score: {delta: 1}}]
        experiences:
          - name: Capped
            placement: home_hero
            audience:
              filters:
                - activity_history:
                    activity: experience_impression
                    where: {experience: {is: Capped}}
                    at_most: 2
                    in_past: {n: 7, unit: days}
                - activity_history: {activity: visit_web_page, in_past: {n: 3, unit: days}}
            variants: [{name: only, weight: 1, json: 1}]
    """)
    rules, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}, refused
    found = experiences["acme"].counters
    assert sorted((c.activity_type, c.retention_days) for c in found) == [
        ("experience_impression", 8), ("visit_web_page", 4)]
    # The graph counts them (each key once, for the longest filter of a campaign or an
    # experience), and names them for the profile by their digest.
    counted = {c.activity_type: c.retention_days for found_type in rules.tenants["acme"].counters_by_type.values()
               for c in found_type}
    assert counted == {"experience_impression": 31, "visit_web_page": 4}
    assert rules.tenants["acme"].decision_history == (history_digest(found), tuple(sorted(c.key for c in found)))
    other = history_digest([found[0]._replace(retention_days=9), *found[1:]])
    assert other != history_digest(found), "the days kept are part of the digest"


def test_a_tenant_without_experiences_has_no_impression_type(rules_dir):
    rules_dir.write("tenant: plain\ncampaigns: []\n")
    rules, experiences, _ = load_experiences(rules_dir.path)
    assert "experience_impression" not in rules.activity_types.names("plain")
    assert experiences["plain"].by_placement == {}


def test_the_sample_rules_ship_experiences():
    _, experiences, refused = load_experiences(SAMPLE_RULES)
    assert refused == {}
    assert set(experiences["acme"].by_placement) == {"home_hero", "sidebar"}


EXPERIENCE_HEAD = """
    tenant: acme
    settings:
      lead_attributes: {industry: string}
    experiences:
      - name: Hero
        placement: home_hero
"""


@pytest.mark.parametrize("body, needle, fragments", [
    ("""        colour: blue
        variants: [{name: a, weight: 1, json: 1}]
""", "colour", ["unknown key 'colour'", "expected one of"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          filters: [{lead: {industri: {is: Retail}}}]
""", "industri", ["unknown lead attribute 'industri'", "did you mean 'industry'"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          context:
            url: {gt: 3}
""", "gt: 3", ["context.url", "operator 'gt' does not apply to a string attribute"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          context:
            browser: {is: firefox}
""", "browser", ["unknown key 'browser'", "url, referrer, device, country, local_time"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          context:
            local_time: {between: ["9am", "17:00"]}
""", "9am", ["context.local_time", "'9am' is not a time of day", "HH:MM"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          context:
            local_time: {between: ["09:00"]}
""", "09:00", ["at least 2 item(s)"]),
    ("""        variants:
          - {name: a, weight: 1, json: 1}
          - {name: control, weight: 1, json: 2}
""", "name: control", ["names the control group"]),
    ("""        variants:
          - {name: a, weight: 1, json: 1}
          - {name: a, weight: 1, json: 2}
""", "json: 2", ["variant 'a' is already defined"]),
    ("""        variants:
          - {name: a, weight: 1, json: 1, template: "x"}
""", "name: a", ["as json: or as template:, not both"]),
    ("""        variants:
          - {name: a, weight: 1}
""", "name: a", ["needs its content: json:"]),
    ("""        variants:
          - name: a
            weight: 1
            template: "{% if lead.x %}unclosed"
""", "template:", ["the template does not compile", "its line 1"]),
    ("""        variants:
          - name: a
            weight: 1
            template: "{% if lead.x %}{{ lead.x | titel }}{% endif %}"
""", "template:", ["the template does not compile", "its line 1", "no filter named 'titel'",
                  "did you mean 'title'"]),
    ("""        variants:
          - name: a
            weight: 1
            template: "{% include 'footer' %}"
""", "template:", ["cannot include, import or extend"]),
    ("""        variants:
          - {name: a, weight: 0, json: 1}
        control: {weight: 0}
""", "variants:", ["every weight of the experience is 0"]),
    ("""        variants:
          - {name: a, weight: -1, json: 1}
""", "weight: -1", ["must be at least 0"]),
    ("""        variants: [{name: a, weight: 1, json: .nan}]
""", "json: .nan", ["not a number a rule can use"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        schedule: {starting: "2026-02-01T00:00:00Z", ending: "2026-01-01T00:00:00Z"}
""", "schedule:", ["ending must come after"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        schedule: {starting: "tomorrow"}
""", "tomorrow", ["schedule.starting", "not RFC 3339"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        goal: {activity: fill_out_from, within: {n: 7, unit: days}}
""", "fill_out_from", ["unknown activity type 'fill_out_from'", "did you mean 'fill_out_form'"]),
    ("""        variants: [{name: a, weight: 1, json: 1}]
        audience:
          filters: [{score: {ge: 1}}]
          logic: 1 and 2
""", "logic:", ["filter 2"]),
])
def test_experience_mistakes_name_file_and_line(rules_dir, errors_of, body, needle, fragments):
    errors = errors_of(EXPERIENCE_HEAD + body)
    single_error(errors, rules_dir.file(), rules_dir.line(needle), *fragments)


def test_a_placement_name_is_a_plain_name(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        experiences:
          - name: Hero
            placement: "home hero!"
            variants: [{name: a, weight: 1, json: 1}]
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("home hero!"), "may hold only letters, digits")


def test_experience_names_are_unique_within_a_tenant_across_files(rules_dir):
    rules_dir.write("""
        tenant: acme
        experiences:
          - name: Hero
            placement: home_hero
            variants: [{name: a, weight: 1, json: 1}]
    """, "one.yaml")
    rules_dir.write("""
        tenant: acme
        experiences:
          - name: Hero
            placement: sidebar
            variants: [{name: a, weight: 1, json: 1}]
    """, "two.yaml")
    errors = rules_dir.errors()
    single_error(errors, rules_dir.file("two.yaml"), rules_dir.line("name: Hero", "two.yaml"),
                 "experience 'Hero' is already defined at", "one.yaml")


def test_the_impression_type_name_is_reserved(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          activity_types:
            experience_impression:
              attributes: {what: string}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("experience_impression:"),
                 "the activity type of experience impressions")


def test_a_broken_experience_refuses_its_tenant_only(rules_dir):
    rules_dir.write("""
        tenant: acme
        experiences:
          - name: Hero
            placement: home_hero
            variants: [{name: a, weight: 1, jsn: 1}]
    """, "acme.yaml")
    rules_dir.write("""
        tenant: globex
        experiences:
          - name: Hero
            placement: home_hero
            variants: [{name: a, weight: 1, json: 1}]
    """, "globex.yaml")
    rules, refused = load_serving_rules(rules_dir.path)
    assert set(rules.tenants) == {"globex"} and set(refused) == {"acme"}
    assert refused["acme"][0].line == rules_dir.line("jsn", "acme.yaml")
    _, experiences, _ = load_experiences(rules_dir.path)
    assert set(experiences) == {"globex"}
