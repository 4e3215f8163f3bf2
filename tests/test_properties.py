"""Property tests: evaluation is deterministic (also across a JSON round trip of the lead
state, and whatever order the activities arrive in), and the trigger index returns
exactly what a brute-force scan of every campaign returns, for a fixed rich rule set
and for generated rule sets.

    .venv/bin/python -m pytest tests/test_properties.py -q
"""
from __future__ import annotations

import json
import re
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orion.activities import Activity, parse_activity
from orion.rules import evaluate_lead, load_rules
from orion.rules import index as index_module
from orion.rules.index import KeyTrie
from orion.rules.operators import CASEFOLD_SAFE_UNDER_IGNORECASE, required_literal
from orion.rules.model import LeadState

from conftest import DAY, HOUR, T0

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- activity generation -------------------------------------------------------------------

URLS = [
    "https://acme.example/pricing",
    "https://acme.example/pricing/enterprise",
    "https://acme.example/plans",
    "https://acme.example/pricing?utm=x",
    "https://acme.example/Straße",
    "https://acme.example/STRASSE",
    "/contact",
]
WORDS = [
    "Signup", "Contact", "Welcome", "Newsletter", "Promo", "first_open", "cart_abandoned",
    "filter_low", "retired", "Flagship", "Downtown", "Airport", "thermo-12", "thermo-x",
    "Pro", "Free", "gold", "silver", "vip", "newsletter", "Customers", "Alpha", "Straße",
]
EMAILS = ["ana@acme.example", "bob@other.example", "CAROL@ACME.EXAMPLE", ""]


def mixed_case(pool: list[str]) -> st.SearchStrategy[str]:
    """A value from `pool` with each letter's case chosen at random."""
    return st.sampled_from(pool).flatmap(
        lambda s: st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(
            lambda flips: "".join(c.upper() if up else c.lower() for c, up in zip(s, flips))
        )
    )


def text_like(pool: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(pool), mixed_case(pool), st.text(max_size=6))


NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=120),
    st.floats(min_value=-5, max_value=120, allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(text_like(WORDS), NUMBERS, st.booleans())


def optional(strategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def _attributes(**specs) -> st.SearchStrategy[dict]:
    """Attributes where each spec is (strategy, required)."""
    required = {k: s for k, (s, req) in specs.items() if req}
    optional_ = {k: s for k, (s, req) in specs.items() if not req}
    return st.fixed_dictionaries(required, optional=optional_)


# The lead attributes data_value_changes sets, with values of their types (industry and
# employees are declared in RULES; city and unsubscribed are built in).
LEAD_VALUES = {"industry": text_like(WORDS), "employees": NUMBERS, "city": text_like(WORDS),
               "unsubscribed": st.booleans()}

ATTRIBUTES_BY_TYPE = {
    "visit_web_page": _attributes(
        url=(text_like(URLS), True), referrer=(text_like(["https://google.com/", "direct"]), False)
    ),
    "fill_out_form": _attributes(
        form=(text_like(WORDS), True),
        fields=(st.fixed_dictionaries({}, optional={"email": text_like(EMAILS), "size": NUMBERS,
                                                    "plan": SCALARS}), False),
    ),
    "click_link_in_email": _attributes(
        email=(text_like(WORDS), True), link=(text_like(URLS + ["https://x.example/"]), True)
    ),
    "open_email": _attributes(email=(text_like(WORDS), True)),
    "email_bounced": _attributes(email=(text_like(WORDS), True), category=(st.sampled_from(["hard", "soft"]), True)),
    "mobile_app_event": _attributes(
        app=(text_like(["shop", "Shop"]), True),
        event=(text_like(WORDS), True),
        properties=(st.fixed_dictionaries({}, optional={"value": SCALARS, "plan": SCALARS, "flag": SCALARS}), False),
    ),
    "device_event": _attributes(device=(text_like(WORDS), True), event=(text_like(WORDS), True)),
    "change_score": _attributes(delta=(NUMBERS, True), new_score=(NUMBERS, False)),
    "added_to_list": _attributes(list=(text_like(["vip", "newsletter", "Customers"]), True)),
    "removed_from_list": _attributes(list=(text_like(["vip", "newsletter", "Customers"]), True)),
    "unsubscribe_email": _attributes(email=(text_like(WORDS), False)),
    # a new value fits its attribute's declared type (intake refuses one that does not)
    "data_value_changes": st.sampled_from(sorted(LEAD_VALUES)).flatmap(lambda name: _attributes(
        attribute=(st.just(name), True), new_value=(optional(LEAD_VALUES[name]), False))),
    "store_visit": _attributes(
        store=(text_like(WORDS), True),
        minutes=(NUMBERS, False),
        level=(st.sampled_from(["gold", "silver"]), False),
        opened_at=(st.integers(min_value=T0 - 3 * HOUR, max_value=T0 + HOUR), False),
    ),
    "sensor": _attributes(reading=(NUMBERS, False), label=(text_like(WORDS), False)),
}


@st.composite
def raw_activities(draw, tenant: str = "acme", types=tuple(ATTRIBUTES_BY_TYPE), span: int = DAY):
    type_ = draw(st.sampled_from(types))
    attributes = draw(ATTRIBUTES_BY_TYPE[type_])
    return {
        "event_id": "e",  # made unique by the caller
        "tenant": tenant,
        "lead_id": "1",
        "type": type_,
        "occurred_at": draw(st.integers(min_value=T0 - span, max_value=T0 + span)),
        "attributes": attributes,
    }


def parsed(rules, raws: list[dict]):
    """Parse generated activities with unique event ids; every one must be valid."""
    return [parse_activity({**raw, "event_id": f"e{i:04d}"}, rules.activity_types)
            for i, raw in enumerate(raws)]


# --- a fixed rich rule set -------------------------------------------------------------------

RICH_RULES = """
tenant: acme
settings:
  lists: [vip, newsletter, Customers]
  lead_attributes:
    industry: string
    employees: number
  activity_types:
    store_visit:
      attributes:
        store: {type: string, required: true}
        minutes: number
        level: {type: string, enum: [gold, silver]}
        opened_at: date
      indexed_by: store
    sensor:
      attributes:
        reading: number
        label: string
campaigns:
  - name: Pricing exact
    priority: 10
    qualification: every_time
    triggers: [{activity: visit_web_page, where: {url: {is: "https://Acme.example/Pricing"}}}]
  - name: Pricing prefix
    priority: 10
    qualification: {once_every: {n: 1, unit: days}}
    triggers: [{activity: visit_web_page, where: {url: {starts_with: "HTTPS://acme.example/pricing"}}}]
  - name: Pricing or plans
    priority: 5
    triggers:
      - activity: visit_web_page
        where:
          url: {in: ["https://acme.example/pricing", "HTTPS://ACME.EXAMPLE/PLANS"], not_contains: "?"}
  - name: Exact and prefix
    priority: 5
    qualification: every_time
    triggers:
      - activity: visit_web_page
        where: {url: {is: "https://acme.example/pricing", starts_with: https}, referrer: {is_not: direct}}
  - name: Strasse
    qualification: every_time
    triggers: [{activity: visit_web_page, where: {url: {is: "https://acme.example/strasse"}}}]
  - name: Not pricing
    priority: 50
    qualification: every_time
    triggers: [{activity: visit_web_page, where: {url: {is_not: "https://acme.example/pricing"}}}]
    filters:
      - activity_history:
          activity: visit_web_page
          where: {url: {contains: /pricing}}
          at_least: 2
          in_past: {n: 30, unit: days}
  - name: Any visit
    priority: 50
    qualification: {once_every: {n: 2, unit: hours}}
    triggers: [{activity: visit_web_page}]
  - name: Signup form
    priority: 20
    triggers:
      - activity: fill_out_form
        where: {form: {is: Signup}}
      - activity: open_email
        where: {email: {in: [Welcome, NEWSLETTER]}}
    filters:
      - lead: {unsubscribed: {is_not: true}}
  - name: Big company form
    priority: 20
    qualification: every_time
    triggers:
      - activity: fill_out_form
        where: {form: {in: [signup, Contact]}, fields.size: {ge: 50}}
      - activity: fill_out_form
        where: {fields.email: {ends_with: "@ACME.example"}}
    filters:
      - score: {ge: 10}
      - lead: {industry: {in: [retail, Alpha]}}
      - member_of_list: vip
    logic: 1 and (2 or not 3)
  - name: Email engagement
    priority: 30
    qualification: every_time
    triggers:
      - activity: click_link_in_email
        where: {email: {in: [Welcome, Newsletter]}, link: {matches: "^https://acme"}}
      - activity: open_email
        where: {email: {is: newsletter}}
  - name: Hard bounce
    priority: 1
    qualification: every_time
    triggers: [{activity: email_bounced, where: {category: {is: hard}}}]
  - name: Welcome bounce
    priority: 1
    qualification: every_time
    triggers: [{activity: email_bounced, where: {email: {is: welcome}, category: {is: soft}}}]
  - name: Cart
    priority: 20
    qualification: {once_every: {n: 1, unit: days}}
    triggers:
      - activity: mobile_app_event
        where: {event: {is: cart_abandoned}, properties.value: {ge: 50}}
  - name: App opened
    priority: 20
    qualification: every_time
    triggers:
      - activity: mobile_app_event
        where: {event: {in: [first_open, FIRST_OPEN, Promo]}}
      - activity: mobile_app_event
        where: {properties.plan: {is: Pro}}
      - activity: mobile_app_event
        where: {properties.flag: {is: true}, properties.value: {in: [1, gold]}}
  - name: Devices
    qualification: every_time
    triggers:
      - activity: device_event
        where: {event: {is: filter_low}, device: {matches: "^thermo-[0-9]+$"}}
  - name: Score jump
    qualification: every_time
    triggers:
      - activity: change_score
        where: {new_score: {between: [50, 100]}}
      - activity: change_score
        where: {delta: {gt: 100}}
  - name: Lists
    qualification: every_time
    triggers:
      - activity: added_to_list
        where: {list: {is: vip}}
      - activity: added_to_list
        where: {list: {in: [newsletter, Customers]}}
      - activity: removed_from_list
  - name: Store flagship
    priority: 15
    qualification: every_time
    triggers:
      - activity: store_visit
        where: {store: {in: [Flagship, downtown]}, minutes: {gt: 10}}
      - activity: store_visit
        where: {store: {is: FLAGSHIP}, level: {is: gold}}
    filters:
      - activity_history:
          activity: store_visit
          at_least: 2
          in_past: {n: 2, unit: weeks}
  - name: Gold anywhere
    priority: 15
    qualification: every_time
    triggers:
      - activity: store_visit
        where: {level: {is: gold}}
      - activity: store_visit
        where: {opened_at: {in_past: {n: 2, unit: hours}}}
  - name: Sensor
    priority: 15
    qualification: every_time
    triggers:
      - activity: sensor
        where: {reading: {between: [1, 5]}}
      - activity: sensor
        where: {label: {is: alpha}}
  - name: Data change
    qualification: every_time
    triggers:
      - activity: data_value_changes
        where: {attribute: {is: Industry}}
  - name: Retired
    priority: 0
    status: inactive
    triggers: [{activity: visit_web_page}, {activity: store_visit}]
  - name: Monthly
    type: batch
    filters: [{member_of_list: newsletter}]
    schedule: {every: {n: 1, unit: months}}
"""


@pytest.fixture(scope="module")
def rich_rules(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rich_rules")
    (directory / "acme.yaml").write_text(textwrap.dedent(RICH_RULES), encoding="utf-8")
    return load_rules(directory)


@PROPERTY_SETTINGS
@given(raws=st.lists(raw_activities(), min_size=1, max_size=10))
def test_index_finds_the_same_campaigns_as_brute_force(rich_rules, raws):
    tenant = rich_rules.tenants["acme"]
    for activity in parsed(rich_rules, raws):
        indexed = {c.name for c in tenant.match(activity)}
        scanned = {c.name for c in tenant.match_brute_force(activity)}
        assert indexed == scanned, activity


@PROPERTY_SETTINGS
@given(raws=st.lists(raw_activities(), min_size=1, max_size=10))
def test_index_returns_exactly_the_brute_force_list_in_order(rich_rules, raws):
    tenant = rich_rules.tenants["acme"]
    for activity in parsed(rich_rules, raws):
        indexed = [(c.priority, c.name) for c in tenant.match(activity)]
        scanned = [(c.priority, c.name) for c in tenant.match_brute_force(activity)]
        assert indexed == scanned, activity
        assert scanned == sorted(scanned)


def test_the_rich_rule_set_matches_something_for_many_kinds_of_activity(rich_rules):
    # Guards the properties above against a rule set that never matches anything.
    tenant = rich_rules.tenants["acme"]
    samples = [
        ("visit_web_page", {"url": "HTTPS://ACME.EXAMPLE/PRICING"}),
        ("fill_out_form", {"form": "contact", "fields": {"size": 70}}),
        ("mobile_app_event", {"app": "shop", "event": "x", "properties": {"plan": "PRO"}}),
        ("store_visit", {"store": "flagship", "level": "gold"}),
        ("sensor", {"label": "ALPHA"}),
        ("added_to_list", {"list": "CUSTOMERS"}),
    ]
    for i, (type_, attributes) in enumerate(samples):
        activity = parse_activity({"event_id": f"s{i}", "tenant": "acme", "lead_id": "1", "type": type_,
                                   "occurred_at": T0, "attributes": attributes}, rich_rules.activity_types)
        assert tenant.match_brute_force(activity), type_
    pricing = parse_activity({"event_id": "p", "tenant": "acme", "lead_id": "1", "type": "visit_web_page",
                              "occurred_at": T0, "attributes": {"url": "https://ACME.example/pricing"}},
                             rich_rules.activity_types)
    assert len(tenant.match_brute_force(pricing)) >= 5


# --- determinism --------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    raws=st.lists(raw_activities(span=40 * DAY), min_size=1, max_size=25),
    data=st.data(),
)
def test_evaluation_is_deterministic_and_survives_a_json_round_trip_of_the_state(rich_rules, raws, data):
    activities = parsed(rich_rules, raws)
    state, outcomes = evaluate_lead(rich_rules, None, activities)
    again_state, again_outcomes = evaluate_lead(rich_rules, None, activities)
    assert (again_state, again_outcomes) == (state, outcomes)

    shuffled = data.draw(st.permutations(activities), label="arrival order")
    assert evaluate_lead(rich_rules, None, shuffled) == (state, outcomes)

    ordered = sorted(activities, key=lambda a: (a.occurred_at, a.event_id))
    cut = data.draw(st.integers(min_value=0, max_value=len(ordered)), label="cut")
    first_state, first_outcomes = evaluate_lead(rich_rules, None, ordered[:cut])
    restored = LeadState.from_json_dict(json.loads(json.dumps(first_state.to_json_dict())))
    assert restored == first_state
    rest_state, rest_outcomes = evaluate_lead(rich_rules, restored, ordered[cut:])
    assert first_outcomes + rest_outcomes == outcomes
    assert rest_state == state
    assert json.dumps(rest_state.to_json_dict(), sort_keys=True) == json.dumps(state.to_json_dict(), sort_keys=True)


@PROPERTY_SETTINGS
@given(raws=st.lists(raw_activities(span=40 * DAY), min_size=1, max_size=15))
def test_evaluating_twice_from_the_same_state_gives_the_same_result(rich_rules, raws):
    activities = parsed(rich_rules, raws)
    middle, _ = evaluate_lead(rich_rules, None, activities)
    frozen = json.dumps(middle.to_json_dict(), sort_keys=True)
    first = evaluate_lead(rich_rules, middle, activities)
    second = evaluate_lead(rich_rules, middle, activities)
    assert first == second
    assert json.dumps(middle.to_json_dict(), sort_keys=True) == frozen  # never mutated


# --- generated rule sets -------------------------------------------------------------------

STRING_VALUES = ["Signup", "signup", "SIGNUP", "Contact", "Flagship", "downtown", "Straße", "STRASSE",
                 "cart_abandoned", "first_open"]
URL_VALUES = ["https://acme.example/pricing", "HTTPS://Acme.Example/Pricing", "https://acme.example/plans",
              "https://acme.example/Straße"]


def string_condition(pool: list[str]) -> st.SearchStrategy[dict]:
    value = st.sampled_from(pool)
    return st.one_of(
        value.map(lambda v: {"is": v}),
        st.lists(value, min_size=1, max_size=3).map(lambda vs: {"in": vs}),
        value.map(lambda v: {"is_not": v}),
        st.lists(value, min_size=1, max_size=2).map(lambda vs: {"not_in": vs}),
        value.map(lambda v: {"starts_with": v[:4]}),
        value.map(lambda v: {"ends_with": v[-3:]}),
        value.map(lambda v: {"contains": v[2:5]}),
        st.tuples(value, value).map(lambda p: {"is": p[0], "starts_with": p[1][:3]}),
        st.tuples(st.lists(value, min_size=1, max_size=3), value).map(
            lambda p: {"in": p[0], "not_contains": p[1][1:4]}),
        st.just({"is_empty": True}),
        st.just({"is_not_empty": True}),
    )


def number_condition() -> st.SearchStrategy[dict]:
    n = st.integers(min_value=0, max_value=100)
    return st.one_of(
        n.map(lambda v: {"gt": v}),
        n.map(lambda v: {"le": v}),
        n.map(lambda v: {"is": v}),
        st.lists(n, min_size=1, max_size=3).map(lambda vs: {"in": vs}),
        st.tuples(n, n).map(lambda p: {"between": sorted(p)}),
    )


def any_condition() -> st.SearchStrategy[dict]:
    scalar = st.one_of(st.sampled_from(STRING_VALUES), st.integers(min_value=0, max_value=100), st.booleans())
    return st.one_of(
        scalar.map(lambda v: {"is": v}),
        st.lists(scalar, min_size=1, max_size=3).map(lambda vs: {"in": vs}),
        st.integers(min_value=0, max_value=100).map(lambda v: {"ge": v}),
    )


# Per activity type: its attributes and how to generate a condition on each.
WHERE_BY_TYPE = {
    "visit_web_page": {"url": string_condition(URL_VALUES), "referrer": string_condition(STRING_VALUES)},
    "fill_out_form": {"form": string_condition(STRING_VALUES), "fields.size": any_condition(),
                      "fields.plan": any_condition()},
    "mobile_app_event": {"event": string_condition(STRING_VALUES), "app": string_condition(STRING_VALUES),
                         "properties.value": any_condition()},
    "store_visit": {"store": string_condition(STRING_VALUES), "minutes": number_condition(),
                    "note": string_condition(STRING_VALUES)},
}


@st.composite
def triggers(draw):
    type_ = draw(st.sampled_from(sorted(WHERE_BY_TYPE)))
    conditions = WHERE_BY_TYPE[type_]
    chosen = draw(st.lists(st.sampled_from(sorted(conditions)), max_size=2, unique=True))
    trigger = {"activity": type_}
    if chosen:
        trigger["where"] = {attr: draw(conditions[attr]) for attr in chosen}
    return trigger


@st.composite
def rule_files(draw):
    count = draw(st.integers(min_value=1, max_value=8))
    campaigns = []
    for i in range(count):
        campaign = {
            "name": f"C{i} {draw(st.sampled_from(['a', 'B', 'c']))}",
            "priority": draw(st.integers(min_value=1, max_value=3)),
            "qualification": "every_time",
            "triggers": draw(st.lists(triggers(), min_size=1, max_size=3)),
        }
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            campaign["status"] = "inactive"
        campaigns.append(campaign)
    return {
        "tenant": "gen",
        "settings": {
            "activity_types": {
                "store_visit": {
                    "attributes": {"store": {"type": "string", "required": True},
                                   "minutes": "number", "note": "string"},
                    "indexed_by": "store",
                }
            }
        },
        "campaigns": campaigns,
    }


def mostly_from(pool: list[str]) -> st.SearchStrategy[str]:
    """Values the generated conditions name, in any case, and now and then other text."""
    return st.one_of(st.sampled_from(pool), mixed_case(pool), st.sampled_from(pool), st.text(max_size=4))


GENERATED_ATTRIBUTES = {
    "visit_web_page": _attributes(url=(mostly_from(URL_VALUES), True), referrer=(mostly_from(STRING_VALUES), False)),
    "fill_out_form": _attributes(
        form=(mostly_from(STRING_VALUES), True),
        fields=(st.fixed_dictionaries({}, optional={"size": SCALARS, "plan": SCALARS}), False),
    ),
    "mobile_app_event": _attributes(
        app=(mostly_from(STRING_VALUES), True), event=(mostly_from(STRING_VALUES), True),
        properties=(st.fixed_dictionaries({}, optional={"value": SCALARS}), False),
    ),
    "store_visit": _attributes(
        store=(mostly_from(STRING_VALUES), True), minutes=(NUMBERS, False), note=(mostly_from(STRING_VALUES), False)
    ),
}


@st.composite
def generated_activities(draw):
    type_ = draw(st.sampled_from(sorted(GENERATED_ATTRIBUTES)))
    return {"event_id": "e", "tenant": "gen", "lead_id": "1", "type": type_, "occurred_at": T0,
            "attributes": draw(GENERATED_ATTRIBUTES[type_])}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_file=rule_files(), raws=st.lists(generated_activities(), min_size=1, max_size=25))
def test_index_matches_brute_force_for_generated_rule_sets(rule_file, raws):
    with tempfile.TemporaryDirectory() as directory:
        # JSON is YAML; the loader reads it with line numbers like any rule file.
        (Path(directory) / "gen.yaml").write_text(json.dumps(rule_file, ensure_ascii=False, indent=1),
                                                  encoding="utf-8")
        rules = load_rules(directory)
    tenant = rules.tenants["gen"]
    for activity in parsed(rules, raws):
        indexed = [c.name for c in tenant.match(activity)]
        scanned = [c.name for c in tenant.match_brute_force(activity)]
        assert sorted(indexed) == sorted(scanned), activity
        assert indexed == scanned, activity


# --- the index's parts: prefixes, contained texts, literals of regular expressions ----------

# Keys that overlap every way: one a prefix of another, sharing a start, repeated inside
# each other, with regex metacharacters, and whatever casefolding turns 'ß' into.
TRIE_KEYS = ["a", "ab", "abc", "abd", "b", "ba", "bab", "/pricing", "/pricing/", "/pr", "pricing",
             ".*", "a.c", "(x)", "strasse", "ss", "straße".casefold(), "ǆ", "i̇"]


def _keys_and_texts():
    keys = st.lists(st.one_of(st.sampled_from(TRIE_KEYS), st.text(alphabet="abß/.*()S", min_size=1, max_size=4)),
                    min_size=1, max_size=12, unique=True)
    texts = st.one_of(st.text(alphabet="abcdß/.*()SsTRAEtrae", max_size=12),
                      st.sampled_from(["", "abc", "/pricing/plans", "xx/pricing", "STRASSE".casefold(),
                                       "Straße".casefold(), "babab", "a.c(x)"]))
    return keys, st.lists(texts, min_size=1, max_size=10)


@settings(max_examples=300, deadline=None)
@given(*_keys_and_texts())
def test_key_trie_finds_exactly_the_keys_a_text_starts_with_or_contains(keys, texts):
    trie = KeyTrie({key: (key,) for key in keys})  # each key's "group" is the key itself
    for text in texts:
        assert sorted(trie.starting(text)) == sorted(k for k in keys if text.startswith(k)), text
        assert set(trie.inside(text)) == {k for k in keys if k in text}, text


def test_key_trie_without_its_regular_expression_scans_the_keys_and_finds_the_same(monkeypatch):
    def too_deep(keys):
        raise RecursionError

    # The fallback runs only when Python's regex compiler gives up on a huge key set;
    # making it give up is the one way to reach that path with test-sized data.
    monkeypatch.setattr(index_module, "_trie_pattern", too_deep)
    keys = list(dict.fromkeys(TRIE_KEYS))  # 'straße' casefolded is 'strasse' again
    trie = KeyTrie({key: (key,) for key in keys})
    assert trie._match is None
    for text in ["", "abc", "/pricing/plans", "babab", "a.c(x)", "strasse", "xyz"]:
        assert sorted(trie.starting(text)) == sorted(k for k in keys if text.startswith(k))
        assert set(trie.inside(text)) == {k for k in keys if k in text}


def test_key_trie_regular_expression_is_used_and_takes_the_longest_key_first():
    trie = KeyTrie({"/pr": ("short",), "/pricing": ("long",), "/pricing/": ("longer",), "/x": ("other",)})
    assert trie._match is not None  # not the fallback scan
    assert sorted(trie.starting("/pricing/plans")) == ["long", "longer", "short"]
    assert sorted(trie.starting("/pricin")) == ["short"]
    assert trie.starting("pricing") == ()
    assert trie.starting("") == ()
    assert sorted(trie.inside("a/pricing/x/pricing")) == ["long", "long", "longer", "other", "short", "short"]
    assert trie.inside("") == ()


def test_ascii_letters_used_under_ignorecase_match_only_what_casefolds_to_them():
    every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    for char in CASEFOLD_SAFE_UNDER_IGNORECASE:
        for found in re.finditer(re.escape(char), every_character, re.IGNORECASE):
            assert found.group().casefold() == char.casefold(), (char, found.group())


REGEX_PIECES = ["pricing", "PRICING", "Straße", "STRASSE", "/", "-1", r"\d", r"\d?", "$", "^", ".", "a|b",
                "(x)", "s*", "[ab]", "ß", "İ", "ı", "k", "K", "i", "I", "ſ"]
REGEX_TEXTS = ["https://acme.example/pricing-12", "/PRICING-1", "Straße", "STRASSE", "strasse", "x",
               "İ", "ı", "i", "K", "ſ", "s", "ab-1", ""]


@settings(max_examples=500, deadline=None)
@given(flags=st.sampled_from(["", "(?i)"]), pieces=st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=5),
       texts=st.lists(st.one_of(st.sampled_from(REGEX_TEXTS), st.text(alphabet="prcingSTRAßİıkKsſ-1/x", max_size=10)),
                      min_size=1, max_size=8))
def test_a_regular_expression_matches_only_text_holding_its_required_literal(flags, pieces, texts):
    pattern = flags + "".join(pieces)
    try:
        search = re.compile(pattern).search
    except re.error:
        return
    literal = required_literal(pattern)
    if literal is None:
        return
    for text in texts:
        if search(text) is not None:
            assert literal in text.casefold(), (pattern, text, literal)


@pytest.mark.parametrize("pattern", ["(?i)xi", "(?i)ix", "(?i)kiss", "(?i)STRASSE", "(?i)k-s"])
@pytest.mark.parametrize("text", ["XI", "xı", "İx", "KİSS", "kıss", "Straße", "ſtraſſe", "K-ſ"])
def test_required_literal_holds_where_case_insensitive_matching_is_not_casefolding(pattern, text):
    literal = required_literal(pattern)
    if literal is not None and re.search(pattern, text):
        assert literal in text.casefold()


@pytest.mark.parametrize("pattern, literal", [
    (r"(?i)^webinar invite 12\d?$", "te 12"),  # under (?i), no 'i' (İ and ı match it too)
    (r"/slug-1\d\d$", "/slug-1"),
    ("Straße", "strasse"),
    ("a|bc", None),  # alternatives at the top: no literal every match holds
    ("(abc)", None),  # groups are not looked into
    ("ab*", None),  # a single character is too little to file under
])
def test_required_literal_of_a_regular_expression(pattern, literal):
    assert required_literal(pattern) == literal


# --- string conditions of every kind on the selective attribute --------------------------------

INDEXED_RULES = """
tenant: acme
settings:
  activity_types:
    store_visit:
      attributes:
        store: {type: string, required: true}
        minutes: number
        tags: object
      indexed_by: store
campaigns:
  - {name: Prefix pricing, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {starts_with: "https://ACME.example/pricing"}}}]}
  - {name: Prefix pricing slash, priority: 5, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {starts_with: "https://acme.example/pricing/"}}}]}
  - {name: Prefix h, priority: 7, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {starts_with: "h"}}}]}
  - {name: Contains pricing, priority: 3, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {contains: Pricing}}}]}
  - {name: Contains ss, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {contains: ss}}}]}
  - {name: Contains strasse, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {contains: STRASSE}}}]}
  - {name: Contains straße, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {contains: straße}}}]}
  - {name: Starts strasse with referrer, qualification: every_time,
     triggers: [{activity: visit_web_page,
                 where: {url: {starts_with: "https://acme.example/straße", not_contains: "?"},
                         referrer: {contains: google}}}]}
  - {name: Matches pricing, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {matches: "/pricing-\\\\d+$"}}}]}
  - {name: Matches pricing any case, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {matches: "(?i)/PRICING/plans?$"}}}]}
  - {name: Matches no literal, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {matches: "^(a|h)"}}}]}
  - {name: Ends with, qualification: every_time,
     triggers: [{activity: visit_web_page, where: {url: {ends_with: /plans}}}]}
  - {name: Store prefix, qualification: every_time,
     triggers: [{activity: store_visit, where: {store: {starts_with: Flag}, minutes: {ge: 10}}}]}
  - {name: Store contains, qualification: every_time,
     triggers: [{activity: store_visit, where: {store: {contains: ship}}},
                {activity: store_visit, where: {store: {contains: SHIP}}}]}
  - {name: Store any, priority: 200, qualification: every_time, triggers: [{activity: store_visit}]}
  - name: History user
    qualification: every_time
    triggers: [{activity: fill_out_form}]
    filters:
      - activity_history: {activity: visit_web_page, where: {url: {starts_with: "https://acme.example/pricing"}},
                           at_least: 1, in_past: {n: 1, unit: days}}
      - activity_history: {activity: visit_web_page, where: {url: {contains: ß}}, at_least: 1,
                           in_past: {n: 7, unit: days}}
      - activity_history: {activity: visit_web_page, where: {url: {matches: "\\\\d$"}}, at_least: 1,
                           in_past: {n: 7, unit: days}}
      - activity_history: {activity: store_visit, where: {store: {contains: ship}}, at_least: 1,
                           in_past: {n: 7, unit: days}}
    logic: any
"""

INDEXED_URLS = ["https://acme.example/pricing", "HTTPS://ACME.EXAMPLE/PRICING/PLANS", "https://acme.example/pricing-12",
                "https://acme.example/Straße", "https://acme.example/STRASSE?x", "https://acme.example/strasse/plans",
                "h", "", "ß", "SS", "/pricing/plan", "https://acme.example/pricing/plans?"]


@pytest.fixture(scope="module")
def indexed_rules(tmp_path_factory):
    directory = tmp_path_factory.mktemp("indexed_rules")
    (directory / "acme.yaml").write_text(textwrap.dedent(INDEXED_RULES), encoding="utf-8")
    return load_rules(directory)


def test_string_conditions_are_filed_in_the_index_not_tested_one_by_one(indexed_rules):
    bucket = indexed_rules.tenants["acme"].index["visit_web_page"]
    assert len(bucket.prefixes.keys) == 4 and len(bucket.contained.keys) >= 5
    # Left to test for every visit: ends_with, and the expression without a literal.
    assert sorted(c.name for group in bucket.unkeyed for c in group[1]) == [
        "Ends with", "Matches no literal"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(urls=st.lists(st.one_of(mostly_from(INDEXED_URLS), st.text(max_size=8)), min_size=1, max_size=8),
       stores=st.lists(st.one_of(mostly_from(["Flagship", "FLAGSHIP", "shipyard", "Flag", "x"]), st.text(max_size=3)),
                       min_size=1, max_size=4),
       minutes=st.one_of(st.none(), NUMBERS, st.booleans(), st.text(max_size=2)),
       referrer=st.one_of(st.none(), st.sampled_from(["https://google.com/", "direct"])))
def test_indexed_string_conditions_match_what_brute_force_matches(indexed_rules, urls, stores, minutes, referrer):
    tenant = indexed_rules.tenants["acme"]
    raws = [{"event_id": "e", "tenant": "acme", "lead_id": "1", "type": "visit_web_page", "occurred_at": T0,
             "attributes": {"url": url, **({"referrer": referrer} if referrer else {})}} for url in urls]
    raws += [{"event_id": "e", "tenant": "acme", "lead_id": "1", "type": "store_visit", "occurred_at": T0,
              "attributes": {"store": store, **({"minutes": minutes} if minutes is not None else {})}}
             for store in stores]
    activities = [a for a in (_parsed_or_none(indexed_rules, raw, i) for i, raw in enumerate(raws)) if a]
    for activity in activities * 2:  # the second time from the index's memo
        assert [c.name for c in tenant.match(activity)] == [c.name for c in tenant.match_brute_force(activity)]
        counted = [c.key for c in tenant.counters_by_type.get(activity.type, ())
                   if c.counts(activity.attributes, activity.occurred_at)]
        assert [c.key for c in tenant.counting(activity)] == counted


def _parsed_or_none(rules, raw: dict, i: int):
    try:
        return parse_activity({**raw, "event_id": f"e{i}"}, rules.activity_types)
    except ValueError:  # a value the parser refuses (a non-text store, ...)
        return None


def test_unicode_case_folding_through_the_index(indexed_rules):
    tenant = indexed_rules.tenants["acme"]

    def names(type_, **attributes):
        activity = parse_activity({"event_id": "u", "tenant": "acme", "lead_id": "1", "type": type_,
                                   "occurred_at": T0, "attributes": attributes}, indexed_rules.activity_types)
        found = [c.name for c in tenant.match(activity)]
        assert found == [c.name for c in tenant.match_brute_force(activity)]
        return set(found)

    # 'ß' casefolds to 'ss': STRASSE, Straße and strasse all contain "strasse" and "ss".
    for url in ("https://acme.example/STRASSE", "https://acme.example/Straße", "https://acme.example/strasse"):
        assert {"Contains ss", "Contains strasse", "Contains straße"} <= names("visit_web_page", url=url)
    assert "Starts strasse with referrer" in names("visit_web_page", url="https://ACME.example/STRASSE",
                                                   referrer="https://google.com/")
    assert "Starts strasse with referrer" not in names("visit_web_page", url="https://ACME.example/STRASSE?",
                                                       referrer="https://google.com/")
    assert names("visit_web_page", url="") == set()
    assert names("store_visit", store="FLAGSHIP", minutes=12) == {"Store prefix", "Store contains", "Store any"}
    assert names("store_visit", store="FLAGSHIP", minutes=9.5) == {"Store contains", "Store any"}


MISSING_VALUE = object()


@pytest.mark.parametrize("value", [12, None, True, ["https://acme.example/pricing"], {"a": "ss"}, MISSING_VALUE])
def test_a_selective_value_that_is_not_text_meets_only_the_triggers_that_need_no_text(indexed_rules, value):
    # The parser refuses such activities; the index must still agree with brute force.
    tenant = indexed_rules.tenants["acme"]
    for type_, attribute in (("visit_web_page", "url"), ("store_visit", "store")):
        attributes = {} if value is MISSING_VALUE else {attribute: value}
        activity = Activity("e", "acme", "1", type_, T0, attributes)
        assert [c.name for c in tenant.match(activity)] == [c.name for c in tenant.match_brute_force(activity)]
        counted = [c.key for c in tenant.counters_by_type.get(type_, ()) if c.counts(attributes, T0)]
        assert [c.key for c in tenant.counting(activity)] == counted


def test_the_index_memo_starts_over_when_full_and_answers_the_same(indexed_rules, monkeypatch):
    tenant = indexed_rules.tenants["acme"]
    bucket = tenant.index["visit_web_page"]
    # A small memo, so that a test-sized run fills it and starts over many times.
    monkeypatch.setattr(type(bucket), "MEMO_SIZE", 3)
    bucket.forget()
    for i, url in enumerate(INDEXED_URLS * 3):
        activity = parse_activity({"event_id": f"m{i}", "tenant": "acme", "lead_id": "1", "type": "visit_web_page",
                                   "occurred_at": T0, "attributes": {"url": url}}, indexed_rules.activity_types)
        assert [c.name for c in tenant.match(activity)] == [c.name for c in tenant.match_brute_force(activity)]
        assert len(bucket.memo) <= 3
