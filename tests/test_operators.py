"""Every operator of the rule language, for every attribute type, in both places a
condition can stand (a trigger's `where` on activity attributes, and a `lead` filter on
lead attributes), including missing values; and the load-time type checks, each
reported at the line of the offending condition.

    .venv/bin/python -m pytest tests/test_operators.py -q
"""
from __future__ import annotations

import json

import pytest

from orion.activities import parse_timestamp
from orion.rules.model import LeadState
from orion.rules.operators import OperandError, compile_condition

from conftest import DAY, HOUR, MINUTE, MONTH, T0, WEEK, make_activity, run, single_error

MISSING = object()  # the attribute is absent

SETTINGS = """\
tenant: acme
settings:
  lead_attributes:
    sku: string
    note: string
    amount: number
    gift: boolean
    shipped_at: date
  activity_types:
    purchase:
      attributes:
        sku: string
        note: string
        amount: number
        gift: boolean
        shipped_at: date
        extra: object
      indexed_by: sku
campaigns:
"""


def probe_yaml(place: str, attr: str, ops: dict) -> str:
    """One campaign, Probe, whose only condition is `attr: ops`, in a trigger or a filter."""
    condition = json.dumps(ops)
    if place == "trigger":
        return SETTINGS + (
            "  - name: Probe\n"
            "    qualification: every_time\n"
            "    triggers:\n"
            "      - activity: purchase\n"
            "        where:\n"
            f"          {attr}: {condition}\n"
        )
    return SETTINGS + (
        "  - name: Probe\n"
        "    qualification: every_time\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "    filters:\n"
        "      - lead:\n"
        f"          {attr}: {condition}\n"
    )


def probe_fires(load, place: str, attr: str, ops: dict, value) -> bool:
    """Whether Probe qualifies when `attr` has `value` (on the activity for a trigger, on
    the lead for a filter); the activity happens at T0."""
    rules = load(probe_yaml(place, attr, ops))
    present = {} if value is MISSING else {attr: value}
    if place == "trigger":
        activity = make_activity("purchase", types=rules, **present)
        state = None
    else:
        activity = make_activity("purchase", types=rules, sku="anything")
        state = LeadState(attributes=present)
    _, outcomes = run(rules, [activity], state)
    if place == "trigger":
        assert all(o.qualified for o in outcomes)
        return bool(outcomes)
    assert len(outcomes) == 1, "a Probe without trigger conditions always matches"
    if not outcomes[0].qualified:
        assert outcomes[0].reason == "filters"
    return outcomes[0].qualified


PLACES = ["trigger", "lead_filter"]

# (attribute, operator, operand, value, whether the condition holds)
STRING_CASES = [
    ("sku", "is", "Contact Us", "contact us", True),
    ("sku", "is", "Contact Us", "CONTACT US", True),
    ("sku", "is", "Contact Us", "Contact", False),
    ("sku", "is", "Contact Us", MISSING, False),
    ("note", "is", "Contact Us", "cOnTaCt uS", True),
    ("note", "is", "Contact Us", "Contact Us!", False),
    ("note", "is_not", "Contact Us", "contact us", False),
    ("note", "is_not", "Contact Us", "Pricing", True),
    ("note", "is_not", "Contact Us", MISSING, True),
    ("note", "contains", "Pricing", "https://acme.example/PRICING/plans", True),
    ("note", "contains", "Pricing", "https://acme.example/", False),
    ("note", "contains", "Pricing", MISSING, False),
    ("note", "not_contains", "Pricing", "/pricing/", False),
    ("note", "not_contains", "Pricing", "/about", True),
    ("note", "not_contains", "Pricing", MISSING, True),
    ("note", "starts_with", "https://Acme", "HTTPS://ACME.example/x", True),
    ("note", "starts_with", "https://Acme", "http://acme.example/", False),
    ("note", "starts_with", "https://Acme", MISSING, False),
    ("sku", "starts_with", "https://Acme", "https://acme.example/", True),
    ("note", "ends_with", ".PDF", "whitepaper.pdf", True),
    ("note", "ends_with", ".PDF", "whitepaper.pdf.html", False),
    ("note", "ends_with", ".PDF", MISSING, False),
    ("note", "matches", "^thermo-[0-9]+$", "thermo-12", True),
    ("note", "matches", "^thermo-[0-9]+$", "THERMO-12", False),  # a regex is case-sensitive
    ("note", "matches", "^thermo-[0-9]+$", "thermo-x", False),
    ("note", "matches", "(?i)^thermo-[0-9]+$", "THERMO-12", True),
    ("note", "matches", "pricing", "https://acme.example/pricing/plans", True),  # search, not full match
    ("note", "matches", "^thermo", MISSING, False),
    ("sku", "in", ["Welcome", "Newsletter"], "WELCOME", True),
    ("sku", "in", ["Welcome", "Newsletter"], "newsletter", True),
    ("sku", "in", ["Welcome", "Newsletter"], "Welcome2", False),
    ("sku", "in", ["Welcome", "Newsletter"], MISSING, False),
    ("note", "in", ["Welcome", "Newsletter"], "NEWSLETTER", True),
    ("note", "not_in", ["Welcome", "Newsletter"], "welcome", False),
    ("note", "not_in", ["Welcome", "Newsletter"], "Promo", True),
    ("note", "not_in", ["Welcome", "Newsletter"], MISSING, True),
    ("note", "is_empty", True, MISSING, True),
    ("note", "is_empty", True, "", True),
    ("note", "is_empty", True, "x", False),
    ("note", "is_not_empty", True, "x", True),
    ("note", "is_not_empty", True, "", False),
    ("note", "is_not_empty", True, MISSING, False),
]

NUMBER_CASES = [
    ("amount", "is", 5, 5, True),
    ("amount", "is", 5, 5.0, True),
    ("amount", "is", 5, 6, False),
    ("amount", "is", 5, MISSING, False),
    ("amount", "is_not", 5, 5, False),
    ("amount", "is_not", 5, 6, True),
    ("amount", "is_not", 5, MISSING, True),
    ("amount", "in", [1, 2.5], 2.5, True),
    ("amount", "in", [1, 2.5], 1, True),
    ("amount", "in", [1, 2.5], 3, False),
    ("amount", "in", [1, 2.5], MISSING, False),
    ("amount", "not_in", [1, 2.5], 1, False),
    ("amount", "not_in", [1, 2.5], 3, True),
    ("amount", "not_in", [1, 2.5], MISSING, True),
    ("amount", "gt", 10, 10.5, True),
    ("amount", "gt", 10, 10, False),
    ("amount", "gt", 10, MISSING, False),
    ("amount", "ge", 10, 10, True),
    ("amount", "ge", 10, 9.99, False),
    ("amount", "ge", 10, MISSING, False),
    ("amount", "lt", 10, 9, True),
    ("amount", "lt", 10, 10, False),
    ("amount", "lt", 10, -20, True),
    ("amount", "lt", 10, MISSING, False),
    ("amount", "le", 10, 10, True),
    ("amount", "le", 10, 10.01, False),
    ("amount", "le", 10, MISSING, False),
    ("amount", "between", [50, 100], 50, True),
    ("amount", "between", [50, 100], 100, True),
    ("amount", "between", [50, 100], 75.5, True),
    ("amount", "between", [50, 100], 49.9, False),
    ("amount", "between", [50, 100], 100.1, False),
    ("amount", "between", [50, 100], MISSING, False),
    ("amount", "between", [7, 7], 7, True),
    ("amount", "is_empty", True, MISSING, True),
    ("amount", "is_empty", True, 0, False),
    ("amount", "is_not_empty", True, 0, True),
    ("amount", "is_not_empty", True, MISSING, False),
]

BOOLEAN_CASES = [
    ("gift", "is", True, True, True),
    ("gift", "is", True, False, False),
    ("gift", "is", True, MISSING, False),
    ("gift", "is", False, False, True),
    ("gift", "is", False, MISSING, False),
    ("gift", "is_not", True, False, True),
    ("gift", "is_not", True, True, False),
    ("gift", "is_not", True, MISSING, True),
    ("gift", "is_empty", True, MISSING, True),
    ("gift", "is_empty", True, False, False),
    ("gift", "is_not_empty", True, False, True),
    ("gift", "is_not_empty", True, MISSING, False),
]

NOV_1 = "2026-11-01T00:00:00Z"
NOV_30 = "2026-11-30T00:00:00Z"
DATE_CASES = [
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, T0 - 7 * DAY, True),
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, T0 - 7 * DAY - 1, False),
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, T0, True),
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, T0 + 1, False),  # the future is not the past
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, "2026-11-20T00:00:00Z", True),
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, "2026-11-10T00:00:00+00:00", False),
    ("shipped_at", "in_past", {"n": 7, "unit": "days"}, MISSING, False),
    ("shipped_at", "before", NOV_1, "2026-10-31T23:59:59Z", True),
    ("shipped_at", "before", NOV_1, NOV_1, False),
    ("shipped_at", "before", NOV_1, "2026-11-01T00:00:00.001Z", False),
    ("shipped_at", "before", NOV_1, MISSING, False),
    ("shipped_at", "after", NOV_1, "2026-11-01T00:00:00.001Z", True),
    ("shipped_at", "after", NOV_1, NOV_1, False),
    ("shipped_at", "after", NOV_1, MISSING, False),
    ("shipped_at", "after", NOV_1, "2026-11-01T01:00:00+02:00", False),  # 23:00Z the day before
    ("shipped_at", "between", [NOV_1, NOV_30], NOV_1, True),
    ("shipped_at", "between", [NOV_1, NOV_30], NOV_30, True),
    ("shipped_at", "between", [NOV_1, NOV_30], "2026-11-15T12:00:00Z", True),
    ("shipped_at", "between", [NOV_1, NOV_30], "2026-11-30T00:00:00.001Z", False),
    ("shipped_at", "between", [NOV_1, NOV_30], "2026-10-31T23:59:59.999Z", False),
    ("shipped_at", "between", [NOV_1, NOV_30], MISSING, False),
    ("shipped_at", "between", [NOV_1, 1_796_000_000_000], parse_timestamp(NOV_30), True),
    ("shipped_at", "is_empty", True, MISSING, True),
    ("shipped_at", "is_empty", True, T0, False),
    ("shipped_at", "is_not_empty", True, T0, True),
]


def _ids(cases):
    return [f"{a}-{op}-{json.dumps(operand)}-{'missing' if v is MISSING else json.dumps(v)}"
            for a, op, operand, v, _ in cases]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("attr, op, operand, value, holds", STRING_CASES, ids=_ids(STRING_CASES))
def test_string_operator(load, place, attr, op, operand, value, holds):
    assert probe_fires(load, place, attr, {op: operand}, value) is holds


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("attr, op, operand, value, holds", NUMBER_CASES, ids=_ids(NUMBER_CASES))
def test_number_operator(load, place, attr, op, operand, value, holds):
    assert probe_fires(load, place, attr, {op: operand}, value) is holds


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("attr, op, operand, value, holds", BOOLEAN_CASES, ids=_ids(BOOLEAN_CASES))
def test_boolean_operator(load, place, attr, op, operand, value, holds):
    assert probe_fires(load, place, attr, {op: operand}, value) is holds


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("attr, op, operand, value, holds", DATE_CASES, ids=_ids(DATE_CASES))
def test_date_operator(load, place, attr, op, operand, value, holds):
    assert probe_fires(load, place, attr, {op: operand}, value) is holds


@pytest.mark.parametrize(
    "unit, span", [("minutes", MINUTE), ("hours", HOUR), ("days", DAY), ("weeks", WEEK), ("months", MONTH)]
)
def test_date_in_past_spans_exactly_n_units_for_every_unit(load, unit, span):
    ops = {"in_past": {"n": 3, "unit": unit}}
    assert probe_fires(load, "lead_filter", "shipped_at", ops, T0 - 3 * span) is True
    assert probe_fires(load, "lead_filter", "shipped_at", ops, T0 - 3 * span - 1) is False


def test_date_in_past_month_is_thirty_days(load):
    ops = {"in_past": {"n": 1, "unit": "months"}}
    assert probe_fires(load, "lead_filter", "shipped_at", ops, T0 - 30 * DAY) is True
    assert probe_fires(load, "lead_filter", "shipped_at", ops, T0 - 31 * DAY) is False


def test_lead_date_text_that_is_not_a_date_never_matches_a_date_condition(load):
    for ops in ({"before": NOV_30}, {"after": NOV_1}, {"in_past": {"n": 1, "unit": "months"}}):
        assert probe_fires(load, "lead_filter", "shipped_at", ops, "last tuesday") is False


def test_several_operators_on_one_attribute_must_all_hold(load):
    ops = {"ge": 10, "lt": 20, "is_not": 15}
    assert probe_fires(load, "trigger", "amount", ops, 10) is True
    assert probe_fires(load, "trigger", "amount", ops, 15) is False
    assert probe_fires(load, "trigger", "amount", ops, 20) is False


def test_exact_value_and_another_operator_on_the_indexed_attribute_both_apply(load):
    ops = {"in": ["Alpha-1", "Beta-2"], "ends_with": "-1"}
    assert probe_fires(load, "trigger", "sku", ops, "ALPHA-1") is True
    assert probe_fires(load, "trigger", "sku", ops, "beta-2") is False


def test_value_of_the_wrong_type_for_the_operator_does_not_match(load):
    # A lead attribute may hold a value of another type than declared: set before intake
    # checked data_value_changes against the declaration, or by an attribute declared since.
    assert probe_fires(load, "lead_filter", "amount", {"gt": 1}, "5") is False
    assert probe_fires(load, "lead_filter", "note", {"contains": "5"}, 5) is False
    assert probe_fires(load, "lead_filter", "note", {"is": "5"}, 5) is False
    assert probe_fires(load, "lead_filter", "gift", {"is": True}, 1) is False
    assert probe_fires(load, "lead_filter", "amount", {"is": 1}, True) is False
    assert probe_fires(load, "lead_filter", "note", {"not_contains": "5"}, 5) is True


# --- values inside object attributes: no declared type ---------------------------------

OBJECT_CASES = [
    ({"is": "Gold"}, {"tier": "GOLD"}, True),
    ({"is": 1}, {"tier": True}, False),  # true is never the number 1
    ({"is": True}, {"tier": 1}, False),
    ({"is": True}, {"tier": True}, True),
    ({"ge": 50}, {"tier": 50}, True),
    ({"ge": 50}, {"tier": "50"}, False),
    ({"in": ["a", 2]}, {"tier": 2}, True),
    ({"in": ["a", 2]}, {"tier": "A"}, True),
    ({"in": ["a", 2]}, {"tier": "2"}, False),
    ({"contains": "old"}, {"tier": "GOLD"}, True),
    ({"is_empty": True}, {}, True),
    ({"is_not": "gold"}, {}, True),
]


@pytest.mark.parametrize("ops, extra, holds", OBJECT_CASES)
def test_object_field_conditions_compare_by_the_value_found(load, ops, extra, holds):
    rules = load(SETTINGS + (
        "  - name: Probe\n"
        "    qualification: every_time\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "        where:\n"
        f"          extra.tier: {json.dumps(ops)}\n"
    ))
    _, outcomes = run(rules, [make_activity("purchase", types=rules, extra=extra)])
    assert bool(outcomes) is holds


def test_object_field_path_missing_object_counts_as_missing(load):
    rules = load(SETTINGS + (
        "  - name: Probe\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "        where:\n"
        '          extra.tier.level: {"is": "x"}\n'
    ))
    assert run(rules, [make_activity("purchase", types=rules, extra={"tier": "x"})])[1] == []
    assert run(rules, [make_activity("purchase", types=rules)])[1] == []
    fired = run(rules, [make_activity("purchase", types=rules, extra={"tier": {"level": "X"}})])[1]
    assert [o.campaign for o in fired] == ["Probe"]


def test_compile_condition_can_be_used_directly():
    assert compile_condition("gt", 3, "number")(5, 0) is True
    assert compile_condition("is", "Contact Us", "string")("CONTACT US", 0) is True
    with pytest.raises(OperandError):
        compile_condition("gt", 3, "string")


# --- load-time type checks, each at the line of the condition ---------------------------

TYPE_CHECKS = [
    ("note", "gt", 3, ["operator 'gt' does not apply to a string attribute"]),
    ("amount", "contains", "5", ["operator 'contains' does not apply to a number attribute"]),
    ("gift", "gt", 1, ["operator 'gt' does not apply to a boolean attribute"]),
    ("shipped_at", "is", NOV_1, ["operator 'is' does not apply to a date attribute"]),
    ("note", "is", 5, ["needs text", "quote it"]),
    ("note", "in", ["a", 5], ["needs text"]),
    ("amount", "is", "five", ["needs a number"]),
    ("amount", "in", [1, "two"], ["needs a number"]),
    ("amount", "gt", "10", ["needs a number"]),
    ("gift", "is", "yes", ["needs true or false"]),
    ("shipped_at", "before", "soon", ["needs a date"]),
    ("shipped_at", "after", "2026-11-01", ["needs a date"]),
    ("shipped_at", "in_past", {"n": 0, "unit": "days"}, ["in_past needs"]),
    ("shipped_at", "in_past", {"n": 2, "unit": "years"}, ["in_past needs"]),
    ("shipped_at", "in_past", 7, ["in_past needs"]),
    ("note", "matches", "thermo-[0-9", ["bad regular expression"]),
    ("note", "matches", "(?P<x>a", ["bad regular expression"]),
    ("amount", "between", [100, 50], ["low <= high"]),
    ("shipped_at", "between", [NOV_30, NOV_1], ["low <= high"]),
    ("amount", "between", [1], ["between needs [low, high]"]),
    ("note", "in", [], ["non-empty list"]),
    ("note", "not_in", "Welcome", ["non-empty list"]),
    ("note", "contains", "", ["non-empty text"]),
    ("note", "is_empty", False, ["is_empty: true"]),
    ("note", "is_not_empty", "yes", ["is_not_empty: true"]),
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "attr, op, operand, fragments", TYPE_CHECKS,
    ids=[f"{a}-{op}-{json.dumps(v)}" for a, op, v, _ in TYPE_CHECKS],
)
def test_load_time_type_check_reports_the_condition_line(
    rules_dir, errors_of, place, attr, op, operand, fragments
):
    text = probe_yaml(place, attr, {op: operand})
    errors = errors_of(text)
    line = text.splitlines().index(f"          {attr}: {json.dumps({op: operand})}") + 1
    single_error(errors, rules_dir.file(), line, attr, *fragments)


def test_score_filter_is_type_checked_as_a_number(rules_dir, errors_of):
    errors = errors_of(SETTINGS + (
        "  - name: Probe\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "    filters:\n"
        "      - member_of_list: nowhere\n"
        '      - score: {"contains": "1"}\n'
    ))
    by_line = {e.line: e.message for e in errors}
    assert set(by_line) == {rules_dir.line("member_of_list"), rules_dir.line("score:")}
    assert "does not apply to a number" in by_line[rules_dir.line("score:")]


def test_yaml_yes_no_on_off_are_text_but_an_unquoted_number_is_not(rules_dir, errors_of, load):
    # yes/no/on/off are text; 42 is a number and must be quoted for a string attribute.
    rules = load(SETTINGS + (
        "  - name: Probe\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "        where:\n"
        "          note: {in: [yes, NO, on, Off]}\n"
    ))
    for value in ("yes", "no", "ON", "off"):
        assert run(rules, [make_activity("purchase", types=rules, note=value)])[1]
    errors = errors_of(SETTINGS + (
        "  - name: Probe\n"
        "    triggers:\n"
        "      - activity: purchase\n"
        "        where:\n"
        "          note: {is: 42}\n"
    ))
    single_error(errors, rules_dir.file(), rules_dir.line("note: {is: 42}"), "quote it")


# --- `matches` runs on RE2 -------------------------------------------------------------------

import re2  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from orion.rules.regex import CASEFOLD_SAFE_UNDER_IGNORECASE, compile_search, required_literal  # noqa: E402


def test_matches_takes_re2_syntax_python_re_does_not_know(load):
    rules = load(probe_yaml("trigger", "note", {"matches": r"^\pL+-\d+\z"}))
    assert run(rules, [make_activity("purchase", types=rules, note="thermo-12")])[1]
    assert not run(rules, [make_activity("purchase", types=rules, note="thermo-12\n")])[1]


def test_matches_searches_text_with_any_unicode_and_even_a_lone_surrogate():
    search = compile_search("(?i)straße")
    assert search("Hauptstraße 1") and search("HAUPTSTRASSE") is False
    assert compile_search("x")("\ud800x") and not compile_search("y")("\ud800x")


def test_ascii_letters_used_under_ignorecase_match_in_re2_only_what_casefolds_to_them():
    every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    for char in CASEFOLD_SAFE_UNDER_IGNORECASE:
        for found in re2.finditer("(?i)" + re2.escape(char), every_character):
            assert found.group().casefold() == char.casefold(), (char, found.group())


RE2_PIECES = ["pricing", "PRICING", "Straße", "/", "-1", r"\d", r"\pL", r"\p{Greek}", r"\x{41}", r"\x41", r"\Q.*\E",
              "[[:alpha:]]", "]", "[]a]", "{2}", "{,3}", "{", "}", "(?i)", "(?i:ab)", "(?s)", "a|b", "(x)", "s*",
              "?", "+?", "$", "^", ".", r"\.", r"\z", "ß", "k", "K", "ſ", "i", "I", "é"]
RE2_TEXTS = ["https://acme.example/pricing-12", "/PRICING-1", "Straße", "STRASSE", "ab-1", "A", "]x", "{,3}",
             "a{2}", "K-ſ", "x", ".*", "é", "É", ""]


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(st.sampled_from(RE2_PIECES), min_size=1, max_size=6),
       texts=st.lists(st.one_of(st.sampled_from(RE2_TEXTS), st.text(alphabet="prcingSTRAßkKsſ-1/x.{},]é", max_size=10)),
                      min_size=1, max_size=8))
def test_a_pattern_matches_in_re2_only_text_holding_its_required_literal(pieces, texts):
    pattern = "".join(pieces)
    try:
        search = compile_search(pattern)
    except ValueError:
        return
    literal = required_literal(pattern)
    if literal is None:
        return
    for text in texts:
        if search(text):
            assert literal in text.casefold(), (pattern, text, literal)


@pytest.mark.parametrize("pattern, literal", [
    (r"\p{Greek}abc", "abc"),  # the class's name is not text to match
    ("[[:alpha:]]]x", "]x"),  # RE2's named class, then a literal ]
    (r"\Q.*\E", None),  # quoted text: not read
    ("ab{,3}", "ab{,3}"),  # not a repeat in RE2: literal braces
    ("abc{2}d", "ab"),
    (r"a\.b\.c", "a.b.c"),
    ("xy(?i)cd", "xy"),  # (?i) changes what follows
])
def test_required_literal_reads_re2_syntax(pattern, literal):
    assert required_literal(pattern) == literal
