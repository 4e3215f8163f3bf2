"""Filter logic: `all`, `any` and advanced expressions such as `1 and (2 or not 3)`,
checked against every combination of filter results; malformed logic is refused at
load time with the line of `logic:`.

    .venv/bin/python -m pytest tests/test_logic.py -q
"""
from __future__ import annotations

import itertools

import pytest

from orion.rules.logic import LogicError, parse_logic
from orion.rules.model import LeadState

from conftest import make_activity, run, single_error

THREE_FILTERS = """\
tenant: acme
settings:
  lead_attributes:
    f1: boolean
    f2: boolean
    f3: boolean
campaigns:
  - name: Logic probe
    qualification: every_time
    triggers:
      - activity: open_email
    filters:
      - lead: {{f1: {{is: true}}}}
      - lead: {{f2: {{is: true}}}}
      - lead: {{f3: {{is: true}}}}
    logic: {logic}
"""

LOGIC_CASES = [
    ("all", lambda a, b, c: a and b and c),
    ("ALL", lambda a, b, c: a and b and c),
    ("any", lambda a, b, c: a or b or c),
    ("1 and (2 or 3)", lambda a, b, c: a and (b or c)),
    ("1 and (2 or not 3)", lambda a, b, c: a and (b or not c)),
    ("not 1 or 2 and 3", lambda a, b, c: (not a) or (b and c)),  # and binds tighter than or
    ("1 or 2 and 3", lambda a, b, c: a or (b and c)),
    ("(1 or 2) and 3", lambda a, b, c: (a or b) and c),
    ("NOT (1 OR 2) AND 3", lambda a, b, c: (not (a or b)) and c),
    ("not not 1 and 2 and 3", lambda a, b, c: a and b and c),
    ("3 and not (2 and 1)", lambda a, b, c: c and not (b and a)),
    ("((1))and(2)or 3", lambda a, b, c: (a and b) or c),
]


@pytest.mark.parametrize("logic, expected", LOGIC_CASES, ids=[c[0] for c in LOGIC_CASES])
def test_logic_qualifies_exactly_when_the_expression_holds(load, logic, expected):
    rules = load(THREE_FILTERS.format(logic=logic))
    for f1, f2, f3 in itertools.product([True, False], repeat=3):
        state = LeadState(attributes={"f1": f1, "f2": f2, "f3": f3})
        _, outcomes = run(rules, [make_activity("open_email", email="w")], state)
        assert len(outcomes) == 1
        assert outcomes[0].qualified is bool(expected(f1, f2, f3)), (logic, f1, f2, f3)
        if not outcomes[0].qualified:
            assert outcomes[0].reason == "filters"


def test_failed_advanced_logic_names_the_expression_and_the_unmet_filters(load):
    rules = load(THREE_FILTERS.format(logic="1 and (2 or not 3)"))
    state = LeadState(attributes={"f1": True, "f2": False, "f3": True})
    _, [outcome] = run(rules, [make_activity("open_email", email="w")], state)
    assert not outcome.qualified and outcome.reason == "filters"
    assert "1 and (2 or not 3)" in outcome.detail
    assert "filters not met: 2 (f2 is" in outcome.detail
    assert "1 (" not in outcome.detail and "3 (" not in outcome.detail


def test_failed_all_logic_names_each_unmet_filter(load):
    rules = load(THREE_FILTERS.format(logic="all"))
    state = LeadState(attributes={"f1": False, "f2": True, "f3": False})
    _, [outcome] = run(rules, [make_activity("open_email", email="w")], state)
    assert outcome.reason == "filters"
    assert outcome.detail.startswith("filter 1 (f1 is")
    assert "; 3 (f3 is" in outcome.detail and "2 (" not in outcome.detail


def test_any_logic_with_no_filters_qualifies(load):
    rules = load("""
        tenant: acme
        campaigns:
          - name: No filters
            triggers: [{activity: open_email}]
            logic: any
    """)
    _, [outcome] = run(rules, [make_activity("open_email", email="w")])
    assert outcome.qualified


def test_parse_logic_directly():
    check = parse_logic("1 and (2 or 3)", 3)
    assert check(lambda i: i in (1, 3)) is True
    assert check(lambda i: i in (2, 3)) is False


def test_parse_logic_evaluates_each_filter_at_most_as_needed():
    asked = []
    check = parse_logic("1 or 2", 2)

    def met(i):
        asked.append(i)
        return True

    assert check(met) is True
    assert asked == [1]  # `or` stops at the first filter that holds


MALFORMED = [
    ("1 and", "ends too early"),
    ("1 and (2 or 3", "unclosed"),
    ("1 and (2 or 3))", "unexpected ')'"),
    ("1 2 3", "unexpected '2'"),
    ("1 && 2 && 3", "unexpected '&&'"),
    ("1 and 4 or 2 and 3", "names filter 4"),
    ("0 or 1 and 2 and 3", "names filter 0"),
    ("1 and 2", "does not use filter 3"),
    ("1 or or 2 and 3", "unexpected 'or'"),
    ("()", "unexpected ')'"),
    ("and 1 2 3", "unexpected 'and'"),
    ("1 and 2 xor 3", "unexpected 'xor'"),
]


@pytest.mark.parametrize("logic, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_logic_is_refused_at_its_line(rules_dir, errors_of, logic, fragment):
    errors = errors_of(THREE_FILTERS.format(logic=f'"{logic}"'))
    single_error(errors, rules_dir.file(), rules_dir.line("logic:"), fragment)


@pytest.mark.parametrize("logic, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_parse_logic_raises_logic_error(logic, fragment):
    with pytest.raises(LogicError) as caught:
        parse_logic(logic, 3)
    assert fragment in str(caught.value)


def test_logic_naming_filters_of_a_campaign_without_filters_is_refused(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        campaigns:
          - name: No filters
            triggers: [{activity: open_email}]
            logic: 1 and 2
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("logic:"), "has none")


def test_malformed_logic_in_a_flow_choice_is_refused_at_its_line(rules_dir, errors_of):
    errors = errors_of("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: Chooser
            triggers: [{activity: open_email}]
            flow:
              - choices:
                  - if:
                      - member_of_list: vip
                      - score: {ge: 10}
                    logic: 1 or (2
                    then: {change_score: {delta: 5}}
    """)
    single_error(errors, rules_dir.file(), rules_dir.line("logic: 1 or (2"), "unclosed")
