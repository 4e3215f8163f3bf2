"""Rule validation: one test per class of mistake, each asserting the file and line the
error names and that the message helps (a suggestion where one exists); `check_rules`
reports every error of a directory at once; YAML is read as the rule language means it.

    .venv/bin/python -m pytest tests/test_validation.py -q
"""
from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orion.rules import RuleErrors, check_rules, load_rules
from orion.rules.model import LeadState
from orion.rules.source import _QUICKLY_VALID, _VALIDATOR, SafeLineLoader

from conftest import SAMPLE_RULES, T0, make_activity, run, single_error


def test_sample_rules_load_without_errors():
    assert check_rules(SAMPLE_RULES) == []
    rules = load_rules(SAMPLE_RULES)
    assert set(rules.tenants) == {"acme", "globex", "initech"}


def test_load_rules_raises_every_error_with_file_and_line(rules_dir):
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: One
            triggers: [{activity: open_emial}]
          - name: Two
            triggers: [{activity: visit_webpage}]
    """)
    with pytest.raises(RuleErrors) as raised:
        load_rules(rules_dir.path)
    errors = raised.value.errors
    assert [(e.file, e.line) for e in errors] == [
        (rules_dir.file(), rules_dir.line("open_emial")),
        (rules_dir.file(), rules_dir.line("visit_webpage")),
    ]
    assert errors == check_rules(rules_dir.path)
    assert f"{rules_dir.file()}:{rules_dir.line('open_emial')}: unknown activity type" in str(raised.value)


def test_unknown_activity_type(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers:
              - activity: visit_webpage
                where: {url: {contains: pricing}}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("visit_webpage"),
                 "unknown activity type 'visit_webpage'", "did you mean 'visit_web_page'?")


def test_unknown_activity_type_in_a_history_filter(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: store_visit
                  in_past: {n: 3, unit: days}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("store_visit"),
                 "unknown activity type 'store_visit'", "settings.activity_types")


def test_unknown_attribute(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers:
              - activity: visit_web_page
                where:
                  uri: {contains: pricing}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("uri:"),
                 "visit_web_page has no attribute 'uri'", "did you mean 'url'?")


def test_unknown_lead_attribute(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers: [{activity: open_email}]
            filters:
              - lead:
                  contry: {is: NO}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("contry"),
                 "unknown lead attribute 'contry'", "did you mean 'country'?")


def test_field_of_a_non_object_attribute(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers:
              - activity: visit_web_page
                where:
                  url.host: {is: acme.example}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("url.host"), "has no field 'host'")


def test_unknown_operator_with_a_suggestion(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers:
              - activity: visit_web_page
                where:
                  url:
                    containz: pricing
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("containz"),
                 "unknown operator 'containz'", "did you mean 'contains'?")


def test_unknown_operator_in_a_lead_filter(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Pricing
            triggers: [{activity: open_email}]
            filters:
              - lead:
                  city:
                    is: Oslo
                    startswith: O
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("startswith"),
                 "unknown operator 'startswith'", "did you mean 'starts_with'?")


def test_operator_wrong_for_the_attribute_type(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Score jump
            triggers:
              - activity: change_score
                where:
                  delta: {contains: "5"}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("delta:"),
                 "'contains' does not apply to a number attribute", "gt")


def test_bad_regular_expression(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Devices
            triggers:
              - activity: device_event
                where:
                  event: {is: filter_low}
                  device: {matches: "^thermo-[0-9+$"}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("matches"), "bad regular expression")


def test_value_outside_an_attribute_enum(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Bounces
            triggers:
              - activity: email_bounced
                where:
                  category: {in: [hard, permanent]}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("category"), "never 'permanent'")


def test_unknown_template_with_a_suggestion(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Welcome
            triggers: [{activity: open_email}]
            flow:
              - send_email: {template: welcom}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("welcom}"),
                 "unknown template 'welcom'", "did you mean 'welcome'?")


def test_template_of_the_tenant_is_found_and_checked(rules_dir, errors_of):
    rules_dir.template("promo", "{% block subject %}Hi{% endblock %}", tenant="acme")
    rules_dir.template("broken", "{% block subject %}Hi{% endblok %}", tenant="acme")
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Promo
            triggers: [{activity: open_email}]
            flow:
              - send_email: {template: promo}
              - send_email: {template: broken}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("template: broken"),
                 "template 'broken' does not compile")


def test_template_of_one_tenant_is_unknown_to_another(rules_dir):
    rules_dir.template("promo", "{% block subject %}Hi{% endblock %}", tenant="acme")
    rules_dir.write("""
        tenant: beta
        campaigns:
          - name: Promo
            triggers: [{activity: open_email}]
            flow:
              - send_email: {template: promo}
    """)
    single_error(rules_dir.errors(), rules_dir.file(), rules_dir.line("promo}"), "unknown template 'promo'")


def test_unknown_list_with_a_suggestion(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          lists: [newsletter, customers]
        campaigns:
          - name: Join
            triggers: [{activity: open_email}]
            flow:
              - add_to_list: {list: newsleter}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("newsleter"),
                 "unknown list 'newsleter'", "did you mean 'newsletter'?")


@pytest.mark.parametrize("where", [
    "filters: [{member_of_list: vips}]",
    "filters: [{not_member_of_list: vips}]",
    "flow: [{remove_from_list: {list: vips}}]",
])
def test_unknown_list_anywhere_a_list_is_named(rules_dir, errors_of, where):
    errors = errors_of(f"""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: Lists
            triggers: [{{activity: open_email}}]
            {where}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("vips"), "unknown list 'vips'", "'vip'")


def test_unknown_list_in_a_list_trigger(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: Joined
            triggers:
              - activity: added_to_list
                where: {list: {is: VIPs}}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("VIPs"), "unknown list 'VIPs'")


def test_duplicate_campaign_name_in_one_file(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Welcome
            triggers: [{activity: open_email}]
          - name: Welcome
            triggers: [{activity: visit_web_page}]
    """)
    first = rules_dir.line("- name: Welcome", nth=1)
    single_error(errors, rules_dir.file(), rules_dir.line("- name: Welcome", nth=2),
                 "campaign 'Welcome' is already defined at", f"{rules_dir.file()}:{first}")


def test_duplicate_campaign_name_across_two_files_of_one_tenant(rules_dir):
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: Welcome
            triggers: [{activity: open_email}]
    """, "a.yaml")
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: Other
            triggers: [{activity: open_email}]
          - name: Welcome
            triggers: [{activity: open_email}]
    """, "b.yaml")
    single_error(rules_dir.errors(), rules_dir.file("b.yaml"), rules_dir.line("Welcome", "b.yaml"),
                 f"already defined at {rules_dir.file('a.yaml')}:{rules_dir.line('Welcome', 'a.yaml')}")


def test_same_campaign_name_in_two_tenants_is_allowed(rules_dir):
    for tenant in ("acme", "beta"):
        rules_dir.write(f"""
            tenant: {tenant}
            campaigns:
              - name: Welcome
                triggers: [{{activity: open_email}}]
        """, f"{tenant}.yaml")
    assert rules_dir.errors() == []


def test_request_campaign_cycle_of_two(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Ping
            triggers: [{activity: open_email}]
            flow:
              - request_campaign: {campaign: Pong}
          - name: Pong
            triggers: [{activity: campaign_requested}]
            flow:
              - request_campaign: {campaign: Ping}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("campaign: Pong}"),
                 "request_campaign cycle: Ping -> Pong -> Ping")


def test_request_campaign_cycle_through_three_campaigns_in_two_files(rules_dir):
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: A
            triggers: [{activity: open_email}]
            flow: [{request_campaign: {campaign: B}}]
          - name: B
            triggers: [{activity: campaign_requested}]
            flow: [{request_campaign: {campaign: C}}]
    """, "a.yaml")
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: C
            triggers: [{activity: campaign_requested}]
            flow:
              - choices:
                  - if: [{score: {ge: 1}}]
                    then: {request_campaign: {campaign: A}}
    """, "c.yaml")
    single_error(rules_dir.errors(), rules_dir.file("a.yaml"), rules_dir.line("campaign: B}", "a.yaml"),
                 "A -> B -> C -> A")


def test_campaign_requesting_itself(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Loop
            triggers: [{activity: open_email}]
            flow:
              - change_score: {delta: 1}
              - request_campaign: {campaign: Loop}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("campaign: Loop}"), "Loop -> Loop")


def test_request_chain_without_a_cycle_is_fine(rules_dir, errors_of):
    assert errors_of("""
        tenant: acme
        campaigns:
          - name: A
            triggers: [{activity: open_email}]
            flow: [{request_campaign: {campaign: B}}, {request_campaign: {campaign: C}}]
          - name: B
            triggers: [{activity: campaign_requested}]
            flow: [{request_campaign: {campaign: C}}]
          - name: C
            triggers: [{activity: campaign_requested}]
    """) == []


def test_request_of_an_unknown_campaign(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Welcome
            triggers: [{activity: open_email}]
            flow:
              - request_campaign: {campaign: Nurture}
          - name: Nurtur
            triggers: [{activity: campaign_requested}]
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("campaign: Nurture}"),
                 "unknown campaign 'Nurture'", "did you mean 'Nurtur'?")


def test_bad_advanced_logic(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: Mixed
            triggers: [{activity: open_email}]
            filters:
              - member_of_list: vip
              - score: {ge: 10}
            logic: 1 and or 2
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("logic:"), "unexpected 'or'")


def test_yaml_syntax_error_bad_indentation(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Broken
            triggers:
              - activity: open_email
             flow: []
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("flow:"), "YAML syntax error")


def test_yaml_syntax_error_mapping_in_a_plain_value(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Broken
            description: Price: 10 EUR
            triggers: [{activity: open_email}]
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("description"), "YAML syntax error")


def test_yaml_syntax_error_in_one_file_does_not_hide_errors_in_another(rules_dir):
    rules_dir.write("tenant: acme\ncampaigns:\n  - name: [unclosed\n", "a.yaml")
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: Fine
            triggers: [{activity: open_emial}]
    """, "b.yaml")
    errors = rules_dir.errors()
    assert [e.file for e in errors] == [rules_dir.file("a.yaml"), rules_dir.file("b.yaml")]
    assert "YAML syntax error" in errors[0].message
    assert errors[1].line == rules_dir.line("open_emial", "b.yaml")


def test_duplicate_yaml_key(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Twice
            priority: 10
            triggers: [{activity: open_email}]
            priority: 20
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("priority: 20"), "duplicate key 'priority'")


def test_duplicate_yaml_key_in_a_condition(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Twice
            triggers:
              - activity: visit_web_page
                where:
                  url: {contains: pricing, contains: plans}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("url:"), "duplicate key 'contains'")


def test_unknown_campaign_key_with_a_suggestion(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Typo
            prioirty: 10
            triggers: [{activity: open_email}]
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("prioirty"),
                 "unknown key 'prioirty'", "did you mean 'priority'?")


@pytest.mark.parametrize("text, needle, fragment", [
    ("tenant: acme\ncampaign:\n  - name: X\n", "campaign:", "did you mean 'campaigns'?"),
    ("tenant: acme\nsettings:\n  list: [vip]\n", "list:", "did you mean 'lists'?"),
    ("tenant: acme\ncampaigns:\n  - name: X\n    triggers:\n      - activity: open_email\n"
     "        were: {email: {is: x}}\n", "were:", "did you mean 'where'?"),
    ("tenant: acme\ncampaigns:\n  - name: X\n    triggers: [{activity: open_email}]\n"
     "    flow:\n      - send_mail: {template: welcome}\n", "send_mail", "did you mean 'send_email'?"),
    ("tenant: acme\ncampaigns:\n  - name: X\n    triggers: [{activity: open_email}]\n"
     "    filters:\n      - lead_attribute: {city: {is: Oslo}}\n", "lead_attribute", "unknown key"),
])
def test_unknown_keys_anywhere(rules_dir, errors_of, text, needle, fragment):
    errors = errors_of(text)
    single_error(errors, rules_dir.file(), rules_dir.line(needle), fragment)


@pytest.mark.parametrize("text, needle, fragment", [
    ("priority: high", "priority", "must be an integer"),
    ("qualification: twice", "qualification", "'twice'"),
    ("qualification: {once_every: {n: 0, unit: days}}", "qualification", "at least 1"),
    ("qualification: {once_every: {n: 1, unit: dayz}}", "qualification", "did you mean 'days'?"),
    ("status: paused", "status", "expected one of active, inactive"),
])
def test_wrong_values_for_campaign_keys(rules_dir, errors_of, text, needle, fragment):
    errors = errors_of(f"""
        tenant: acme
        campaigns:
          - name: Values
            triggers: [{{activity: open_email}}]
            {text}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line(needle), fragment)


def test_history_window_must_be_whole_days(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Recent
            triggers: [{activity: open_email}]
            filters:
              - activity_history:
                  activity: open_email
                  in_past: {n: 12, unit: hours}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("in_past"), "days, weeks or months")


def test_trigger_campaign_without_triggers(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Nothing
            flow: [{change_score: {delta: 1}}]
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("Nothing"), "needs at least one entry under triggers")


def test_check_rules_reports_all_errors_of_several_broken_files(rules_dir):
    rules_dir.write("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: One
            triggers:
              - activity: visit_webpage
          - name: Two
            triggers:
              - activity: visit_web_page
                where:
                  url: {containz: pricing}
            flow:
              - add_to_list: {list: vips}
    """, "acme.yaml")
    rules_dir.write("""
        tenant: beta
        campaigns:
          - name: Three
            triggers: [{activity: open_email}]
            filters:
              - score: {ge: 1}
            logic: 1 or 2
            flow:
              - send_email: {template: no_such_template}
    """, "beta.yaml")
    rules_dir.write("tenant: gamma\ncampaigns: [\n", "gamma.yaml")
    rules_dir.write("""
        tenant: acme
        campaigns:
          - name: One
            triggers: [{activity: open_email}]
    """, "more/acme-extra.yaml")
    errors = rules_dir.errors()
    found = {(e.file, e.line) for e in errors}
    expected = {
        (rules_dir.file("acme.yaml"), rules_dir.line("visit_webpage", "acme.yaml")),
        (rules_dir.file("acme.yaml"), rules_dir.line("containz", "acme.yaml")),
        (rules_dir.file("acme.yaml"), rules_dir.line("vips", "acme.yaml")),
        (rules_dir.file("beta.yaml"), rules_dir.line("logic:", "beta.yaml")),
        (rules_dir.file("beta.yaml"), rules_dir.line("no_such_template", "beta.yaml")),
        (rules_dir.file("gamma.yaml"), 3),
        (rules_dir.file("more/acme-extra.yaml"), rules_dir.line("One", "more/acme-extra.yaml")),
    }
    assert found == expected, "\n".join(map(str, errors))
    assert len(errors) == len(expected)
    assert errors == sorted(errors, key=lambda e: (e.file, e.line, e.message))


def test_missing_directory_and_empty_directory_are_errors(tmp_path):
    [missing] = check_rules(tmp_path / "nowhere")
    assert "no such rules directory" in missing.message
    [empty] = check_rules(tmp_path)
    assert "no rule files" in empty.message


def test_a_file_that_is_not_a_mapping(rules_dir, errors_of):
    single_error(errors_of("- tenant: acme\n"), rules_dir.file(), 1, "a rule file is a mapping")


# --- how YAML is read -------------------------------------------------------------------


def test_yaml_no_stays_the_text_no(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Norway
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - lead: {country: {is: NO}}
    """)
    _, [norway] = run(rules, [make_activity("open_email", email="x")], LeadState(attributes={"country": "no"}))
    _, [sweden] = run(rules, [make_activity("open_email", email="x")], LeadState(attributes={"country": "SE"}))
    assert norway.qualified and not sweden.qualified


def test_yaml_loader_keeps_yes_no_on_off_and_dates_as_text():
    doc = yaml.load(
        "a: NO\nb: yes\nc: off\nd: 2026-12-01\ne: 2026-12-01T09:00:00Z\nf: true\ng: False\nh: 12\n",
        Loader=SafeLineLoader,
    )
    assert doc == {"a": "NO", "b": "yes", "c": "off", "d": "2026-12-01",
                   "e": "2026-12-01T09:00:00Z", "f": True, "g": False, "h": 12}
    assert doc.line == 1 and doc.key_lines["e"] == 5


def test_unquoted_dates_in_rules_are_parsed_by_the_rule_language(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: Recent signups
            qualification: every_time
            triggers: [{activity: open_email}]
            filters:
              - lead: {created_at: {after: 2026-11-01T00:00:00Z}}
          - name: Monthly
            type: batch
            schedule: {every: {n: 1, unit: months}, starting: 2026-12-01T09:00:00Z}
    """)
    assert rules.campaign("acme", "Monthly").schedule["starting"] == T0 + 9 * 86_400_000 - 3_600_000
    recent = LeadState(attributes={"created_at": "2026-11-10T00:00:00Z"})
    old = LeadState(attributes={"created_at": "2026-10-10T00:00:00Z"})
    assert run(rules, [make_activity("open_email", email="x")], recent)[1][0].qualified
    assert not run(rules, [make_activity("open_email", email="x")], old)[1][0].qualified


def test_date_without_a_time_is_refused_with_its_line(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: Recent signups
            triggers: [{activity: open_email}]
            filters:
              - lead:
                  created_at: {after: 2026-11-01}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("created_at"), "needs a date")


# --- the quick schema check ---------------------------------------------------------------

def _sample_documents() -> list:
    return [yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLineLoader)
            for path in sorted(SAMPLE_RULES.rglob("*.yaml"))]


def test_valid_rule_files_pass_the_quick_check_so_jsonschema_is_skipped():
    documents = _sample_documents()
    assert documents
    for doc in documents:
        assert _QUICKLY_VALID(doc)
        assert list(_VALIDATOR.iter_errors(doc)) == []


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.0, 0.5, -1.0]),
              st.sampled_from(["", "x", "is", "visit_web_page", "once", "days", "string", "bad tenant!", "acme"])),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["name", "is", "n", "unit", "where", "x", "type"]),
                                               children, max_size=3)),
    max_leaves=6,
)


def _nodes(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nodes(item, path + (i,))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_quick_check_never_passes_a_file_jsonschema_finds_fault_with(data):
    doc = _plain(data.draw(st.sampled_from(_sample_documents()), label="file"))
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        path = data.draw(st.sampled_from(list(_nodes(doc))), label="where")
        kind = data.draw(st.sampled_from(["replace", "add key", "drop"]), label="change")
        *parent_path, last = path if path else (None,)
        parent = doc
        for step in parent_path:
            parent = parent[step]
        if kind == "replace" and path:
            parent[last] = data.draw(JSON_VALUES, label="value")
        elif kind == "add key":
            target = parent[last] if path else doc
            if isinstance(target, dict):
                target[data.draw(st.sampled_from(["nmae", "is", "x", "where", "unit"]))] = data.draw(JSON_VALUES)
        elif kind == "drop" and path:
            if isinstance(parent, dict):
                del parent[last]
            elif isinstance(parent, list):
                del parent[last]
    if _QUICKLY_VALID(doc):
        assert list(_VALIDATOR.iter_errors(doc)) == []


# --- settings.limits -----------------------------------------------------------------------------


def test_tenant_limits_load_and_are_kept_with_the_tenant(load):
    rules = load("""
        tenant: acme
        settings:
          limits: {max_email_bytes: 250000, max_cascade_activities: 20}
    """)
    assert rules.tenants["acme"].limits == {"max_email_bytes": 250000, "max_cascade_activities": 20}


def test_unknown_limit_with_a_suggestion(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          limits: {max_email_byte: 250000}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("max_email_byte"),
                 "unknown key 'max_email_byte'", "did you mean 'max_email_bytes'?")


def test_a_limit_set_in_two_files_of_one_tenant(rules_dir):
    rules_dir.write("tenant: acme\nsettings:\n  limits: {max_cascade_activities: 20}\n", "a.yaml")
    rules_dir.write("tenant: acme\nsettings:\n  limits: {max_cascade_activities: 30}\n", "b.yaml")
    single_error(rules_dir.errors(), rules_dir.file("b.yaml"), 3,
                 "limits.max_cascade_activities of tenant 'acme' is already set at", rules_dir.file("a.yaml"))


def test_a_key_that_is_not_text_is_an_error_at_its_line(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          lead_attributes: {industry: string, 42: number}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("42: number"), "the key 42 is not text")


def test_logic_nested_too_deep_is_refused_at_its_line(rules_dir, errors_of):
    errors = errors_of(f"""
        tenant: acme
        campaigns:
          - name: Deep
            triggers: [{{activity: open_email}}]
            filters: [{{score: {{ge: 1}}}}]
            logic: "{'(' * 60}1{')' * 60}"
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("logic:"), "more than 50 deep")
