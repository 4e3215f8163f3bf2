"""The decision itself, a pure function: which experience a placement shows (priority,
schedule, context, filters, history), which arm (sticky, by weight, never a switched-off
arm), what content (JSON as written, snippets rendered in the sandbox with budgets), and
what a malformed context is told.

    .venv/bin/python -m pytest -q tests/test_decisions_core.py
"""
from __future__ import annotations

from collections import Counter

import pytest

from orion.decisions.core import (CONTENT_FAILED, NO_MATCH, UNKNOWN_PLACEMENT, ContextError, PlacementIndexes,
                                  SnippetRenderer, assign, decide, parse_context)
from orion.decisions.leads import count_history
from orion.rules.compiler import load_experiences
from orion.rules.model import EMPTY_LEAD_STATE, LeadState
from orion.store import open_store

from conftest import DAY, T0, make_activity

RULES = """
tenant: acme
settings:
  lists: [customers]
  lead_attributes: {industry: string}
experiences:
  - name: Retail hero
    placement: home_hero
    priority: 10
    audience:
      filters:
        - lead: {industry: {is: Retail}}
        - activity_history:
            activity: experience_impression
            where: {experience: {is: Retail hero}}
            at_most: 2
            in_past: {n: 7, unit: days}
      context:
        device: {in: [mobile, desktop]}
    variants:
      - {name: a, weight: 1, json: {headline: A}}
      - {name: b, weight: 1, template: "<b>{{ lead.first_name | default('there') }}</b> on {{ context.device }}"}
    control: {weight: 1}
  - name: Winter sale
    placement: home_hero
    priority: 20
    schedule: {starting: "2026-12-01T00:00:00Z", ending: "2027-01-01T00:00:00Z"}
    variants: [{name: only, weight: 1, json: {headline: Sale}}]
  - name: Default hero
    placement: home_hero
    variants: [{name: only, weight: 1, json: {headline: Welcome}}]
  - name: Night owls
    placement: sidebar
    audience:
      context:
        local_time: {between: ["22:00", "06:00"]}
        country: {in: [US, CA]}
    variants:
      - {name: on, weight: 1, json: night}
      - {name: off, weight: 0, json: never}
  - name: Loop
    placement: footer
    variants:
      - {name: spin, weight: 1, template: "{% for i in range(900) %}{% for j in range(900) %}x{% endfor %}{% endfor %}"}
"""


@pytest.fixture
def acme(rules_dir):
    rules_dir.write(RULES)
    _, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    return experiences["acme"]


RETAIL = LeadState(attributes={"industry": "Retail", "first_name": "<Ada>"})


def one(acme, placement, state=EMPTY_LEAD_STATE, context=None, now=T0, lead="L1"):
    raw = context or {}
    (decision,) = decide(acme, SnippetRenderer(), lead, state, [placement], parse_context(raw, now), raw, now)
    return decision


def test_the_first_experience_whose_audience_admits_the_visitor_is_shown(acme):
    assert one(acme, "home_hero", RETAIL, {"device": "mobile"}).experience == "Retail hero"
    # the same lead on a device the audience leaves out, and another lead: the next ones
    assert one(acme, "home_hero", RETAIL, {"device": "tv"}).experience == "Default hero"
    assert one(acme, "home_hero", LeadState(attributes={"industry": "Banking"}),
               {"device": "mobile"}).experience == "Default hero"


def test_a_schedule_opens_and_closes_an_experience(acme):
    december = T0 + 10 * DAY  # T0 is 2026-11-22
    assert one(acme, "home_hero", now=december).experience == "Winter sale"
    assert one(acme, "home_hero", now=T0).experience == "Default hero"
    assert one(acme, "home_hero", now=T0 + 60 * DAY).experience == "Default hero"


def test_a_frequency_cap_counts_the_leads_impressions_from_the_store(acme, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    seen = [make_activity("experience_impression", lead="L1", at=T0 - n * DAY, types=impression_types(acme),
                          experience="Retail hero", variant="a", placement="home_hero") for n in range(3)]
    store.write(seen)
    store.index_activities(seen)
    history = count_history(store, "acme", "L1", acme.counters, T0)
    assert sum(sum(days.values()) for days in history.values()) == 3
    capped = RETAIL._replace(history=history)
    assert one(acme, "home_hero", capped, {"device": "mobile"}).experience == "Default hero"
    # two of them fall out of the 7-day window a week later: under the cap again
    later = count_history(store, "acme", "L1", acme.counters, T0 + 6 * DAY)
    assert one(acme, "home_hero", RETAIL._replace(history=later), {"device": "mobile"},
               now=T0 + 6 * DAY).experience == "Retail hero"
    store.close()


def impression_types(acme):
    from orion.activities import ActivityTypes
    from orion.rules.compiler import IMPRESSION_TYPE

    return ActivityTypes({acme.tenant: {"experience_impression": IMPRESSION_TYPE}})


def test_assignment_is_sticky_and_follows_the_weights(acme):
    hero = acme.by_name["Retail hero"]
    arms = [assign("acme", hero, f"L{n}").name for n in range(9000)]
    assert arms == [assign("acme", hero, f"L{n}").name for n in range(9000)]  # the same every time
    counts = Counter(arms)
    assert set(counts) == {"a", "b", "control"}
    assert all(2700 < n < 3300 for n in counts.values()), counts  # three equal weights
    # another tenant's lead of the same id is assigned on its own
    other = [assign("globex", hero, f"L{n}").name for n in range(9000)]
    assert sum(x != y for x, y in zip(arms, other)) > 4000


def test_an_arm_of_weight_zero_is_never_assigned(acme):
    night = acme.by_name["Night owls"]
    assert {assign("acme", night, f"L{n}").name for n in range(2000)} == {"on"}


def test_local_time_windows_run_past_midnight_and_follow_the_time_zone(acme):
    assert one(acme, "sidebar", context={"local_time": "23:30", "country": "us"}).experience == "Night owls"
    assert one(acme, "sidebar", context={"local_time": "05:59:59", "country": "CA"}).experience == "Night owls"
    assert one(acme, "sidebar", context={"local_time": "06:00", "country": "US"}).error == NO_MATCH
    assert one(acme, "sidebar", context={"country": "US"}).error == NO_MATCH  # local time unknown
    # T0 is 10:00 UTC: night in Honolulu (00:00), morning in New York (05:00), not in Paris (11:00)
    assert one(acme, "sidebar", context={"timezone": "Pacific/Honolulu", "country": "US"}).error is None
    assert one(acme, "sidebar", context={"timezone": "America/New_York", "country": "US"}).error is None
    assert one(acme, "sidebar", context={"timezone": "Europe/Paris", "country": "US"}).error == NO_MATCH


def test_content_is_json_as_written_or_a_rendered_autoescaped_snippet(acme):
    hero = acme.by_name["Retail hero"]
    by_arm = {}
    for n in range(200):
        decision = one(acme, "home_hero", RETAIL, {"device": "desktop"}, lead=f"L{n}")
        by_arm.setdefault(decision.variant, decision)
        assert decision.variant == assign("acme", hero, f"L{n}").name
    assert by_arm["a"].content_type == "json" and by_arm["a"].content == {"headline": "A"}
    assert by_arm["b"].content_type == "html" and by_arm["b"].content == "<b>&lt;Ada&gt;</b> on desktop"
    assert by_arm["control"].control and by_arm["control"].content_type == "none"
    assert by_arm["control"].content is None


def test_a_snippet_past_its_budget_fails_its_placement_only(acme):
    decisions = decide(acme, SnippetRenderer(), "L1", EMPTY_LEAD_STATE, ["footer", "home_hero"], {}, {}, T0)
    assert decisions[0].error == CONTENT_FAILED and "template_budget" in decisions[0].detail
    assert decisions[0].experience == "Loop"
    assert decisions[1].experience == "Default hero"


def test_unknown_placements_are_named_and_each_placement_is_answered_once(acme):
    decisions = decide(acme, SnippetRenderer(), "L1", EMPTY_LEAD_STATE, ["nope", "home_hero", "nope"], {}, {}, T0)
    assert [d.placement for d in decisions] == ["nope", "home_hero"]
    assert decisions[0].error == UNKNOWN_PLACEMENT and "home_hero, sidebar" in decisions[0].detail
    assert decide(None, SnippetRenderer(), "L1", EMPTY_LEAD_STATE, ["x"], {}, {}, T0)[0].error == UNKNOWN_PLACEMENT


@pytest.mark.parametrize("context, fragment", [
    ([], "context must be a JSON object"),
    ({"browser": "x"}, "unknown field 'browser'"),
    ({"device": 3}, "context.device must be text, not a number"),
    ({"url": "x" * 5000}, "at most 4,096"),
    ({"local_time": "25:00"}, "not a time of day"),
    ({"local_time": "9:30"}, "not a time of day"),
    ({"local_time": "\u0661\u0662:\u0663\u0660"}, "not a time of day"),  # Arabic-Indic digits, which int() reads
    ({"local_time": "\uff10\uff19:\uff11\uff15"}, "not a time of day"),  # fullwidth digits
    ({"timezone": "Mars/Olympus"}, "not a time zone"),
    ({"timezone": "../../etc/passwd"}, "not a time zone"),
])
def test_a_malformed_context_is_told_what_is_wrong(context, fragment):
    with pytest.raises(ContextError) as raised:
        parse_context(context, T0)
    assert fragment in str(raised.value)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_lead_cache_is_bounded_in_time_and_size(acme, tmp_path):
    from orion.decisions.leads import KNOWN, UNKNOWN, LeadReader
    from orion.profiles import LeadRecord, encode_profile
    from orion.store.base import StoredProfile

    def profile(lead: str, industry: str) -> StoredProfile:
        record = LeadRecord()
        record = record._replace(flows=record.flows._replace(lead=LeadState(attributes={"industry": industry})))
        return StoredProfile("acme", lead, encode_profile(record))

    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    store.write_profiles([profile("L1", "Retail")])
    clock = Clock()
    reader = LeadReader(store, ttl_s=0.5, max_entries=10, clock=clock)
    view = reader.read("acme", "L1", (), T0)
    assert view.status == KNOWN and view.state.attributes["industry"] == "Retail"
    store.write_profiles([profile("L1", "Banking")])
    assert reader.cached("acme", "L1").state.attributes["industry"] == "Retail"  # within the TTL
    clock.now += 0.5
    assert reader.cached("acme", "L1") is None  # the TTL is the staleness bound
    assert reader.read("acme", "L1", (), T0).state.attributes["industry"] == "Banking"
    for n in range(30):
        assert reader.read("acme", f"nobody-{n}", (), T0).status == UNKNOWN
    assert len(reader._cache) <= 10
    store.close()


def test_history_counted_when_first_asked_for_equals_history_counted_at_once(acme, tmp_path):
    from orion.decisions.leads import LeadReader

    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    seen = [make_activity("experience_impression", lead="L1", at=T0 - n * DAY, types=impression_types(acme),
                          experience="Retail hero", variant="a", placement="home_hero") for n in range(4)]
    store.write(seen)
    store.index_activities(seen)
    eager = LeadReader(store, ttl_s=0).read("acme", "L1", acme.counters, T0).state
    lazy = LeadReader(store, ttl_s=0).read("acme", "L1", acme.counters, T0, lazy_history=True).state
    (key,) = [c.key for c in acme.counters]
    assert lazy.history.get(key) == eager.history.get(key) and sum(eager.history[key].values()) == 4
    for state in (eager, lazy):  # four impressions this week: past the cap of two
        assert one(acme, "home_hero", state._replace(attributes={"industry": "Retail"}),
                   {"device": "mobile"}).experience == "Default hero"
    store.close()


def test_filters_joined_by_any_or_an_expression_admit_as_written(rules_dir):
    rules_dir.write("""
tenant: acme
settings:
  lists: [customers]
  lead_attributes: {industry: string}
experiences:
  - name: Either
    placement: one
    audience:
      filters:
        - lead: {industry: {is: Retail}}
        - member_of_list: customers
      logic: any
    variants: [{name: only, weight: 1, json: either}]
  - name: Expression
    placement: two
    audience:
      filters:
        - lead: {industry: {is: Retail}}
        - member_of_list: customers
        - score: {ge: 10}
      logic: 1 and (2 or 3)
    variants: [{name: only, weight: 1, json: expression}]
""")
    _, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    acme = experiences["acme"]
    retail, customer = LeadState(attributes={"industry": "Retail"}), LeadState(lists=frozenset({"customers"}))
    assert one(acme, "one", retail).experience == "Either"
    assert one(acme, "one", customer).experience == "Either"
    assert one(acme, "one", EMPTY_LEAD_STATE).error == NO_MATCH
    assert one(acme, "two", retail).error == NO_MATCH  # 1, but neither 2 nor 3
    assert one(acme, "two", retail._replace(score=12)).experience == "Expression"
    assert one(acme, "two", retail._replace(lists=frozenset({"customers"}))).experience == "Expression"
    assert one(acme, "two", customer._replace(score=12)).error == NO_MATCH  # not 1


SNIPPETS = """
tenant: acme
settings:
  lead_attributes: {industry: string}
experiences:
  - name: Greeting
    placement: greeting
    variants:
      - {name: only, weight: 1, template: "<b>{{ lead.first_name | default('there') }}</b> on {{ context['device'] }}"}
  - name: Everything
    placement: everything
    variants: [{name: only, weight: 1, template: "{{ lead | tojson }}"}]
"""


@pytest.fixture
def snippets(rules_dir):
    rules_dir.write(SNIPPETS)
    _, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    return experiences["acme"]


def rendered(acme, renderer, placement, attributes, context, lead="L1"):
    (decision,) = decide(acme, renderer, lead, LeadState(attributes=attributes), [placement],
                         parse_context(context, T0), context, T0)
    assert decision.error is None, decision
    return decision.content


def test_a_snippet_renders_once_for_the_same_values_of_what_it_reads(snippets):
    renderer = SnippetRenderer()
    ada = rendered(snippets, renderer, "greeting", {"first_name": "Ada", "industry": "Retail"}, {"device": "mobile"})
    assert ada == "<b>Ada</b> on mobile" and renderer.renders == 1
    # another lead, another attribute the snippet does not read, another context field: kept
    assert rendered(snippets, renderer, "greeting", {"first_name": "Ada", "industry": "Banking"},
                    {"device": "mobile", "country": "FR"}, lead="L2") == ada
    assert renderer.renders == 1
    # a value it reads changes: rendered again, with that value
    assert rendered(snippets, renderer, "greeting", {"first_name": "Bob"}, {"device": "mobile"}) == \
        "<b>Bob</b> on mobile"
    assert rendered(snippets, renderer, "greeting", {"first_name": "Ada"}, {"device": "tablet"}) == \
        "<b>Ada</b> on tablet"
    assert rendered(snippets, renderer, "greeting", {}, {}) == "<b>there</b> on "
    assert renderer.renders == 4
    # values that are equal in Python but render differently are kept apart
    assert rendered(snippets, renderer, "greeting", {"first_name": True}, {}) == "<b>True</b> on "
    assert rendered(snippets, renderer, "greeting", {"first_name": 1}, {}) == "<b>1</b> on "
    assert rendered(snippets, renderer, "greeting", {"first_name": 0.0}, {}) == "<b>0.0</b> on "
    assert rendered(snippets, renderer, "greeting", {"first_name": -0.0}, {}) == "<b>-0.0</b> on "
    # a value that is not plain (a list) is rendered every time
    for _ in range(2):
        assert rendered(snippets, renderer, "greeting", {"first_name": ["A", "B"]}, {}) == \
            "<b>[&#39;A&#39;, &#39;B&#39;]</b> on "
    assert renderer.renders == 10


def test_a_snippet_that_reads_a_whole_token_renders_every_time(snippets):
    renderer = SnippetRenderer()
    for industry in ("Retail", "Retail", "Banking"):
        assert rendered(snippets, renderer, "everything", {"industry": industry}, {}) == \
            f'{{"id": "L1", "industry": "{industry}", "score": 0}}'
    assert renderer.renders == 3


def test_kept_renders_are_bounded_and_a_failed_render_is_not_kept(snippets, acme):
    renderer = SnippetRenderer(entries=10)
    for n in range(30):
        assert rendered(snippets, renderer, "greeting", {"first_name": f"N{n}"}, {}) == f"<b>N{n}</b> on "
    assert len(renderer._rendered) <= 10
    assert rendered(snippets, renderer, "greeting", {"first_name": "N29"}, {}) == "<b>N29</b> on "
    assert renderer.renders == 30  # the newest were kept
    failing = SnippetRenderer()
    for _ in range(2):
        (decision,) = decide(acme, failing, "L1", EMPTY_LEAD_STATE, ["footer"], {}, {}, T0)
        assert decision.error == CONTENT_FAILED
    assert failing.renders == 2


@pytest.mark.parametrize("source, inputs", [
    ("{{ lead.first_name }} {{ context['device'] }} {{ experience.name }}",
     (("context", "device"), ("lead", "first_name"))),
    ("{{ lead.score + 1 }}{% if context.url %}{{ lead.first_name.upper() }}{% endif %}",
     (("context", "url"), ("lead", "first_name"), ("lead", "score"))),
    ("{{ experience }} {% for i in range(3) %}{{ i }}{% endfor %}", ()),
    ("{{ lead }}", None),
    ("{{ lead | tojson }}", None),
    ("{% for k, v in lead.items() %}{{ k }}{% endfor %}", None),
    ("{{ lead.get('first_name') }}", None),
    ("{% set name = 'device' %}{{ context[name] }}", None),
    ("{% set lead = {} %}{{ lead.first_name }}", None),
    ("{% for context in [1] %}{{ context }}{% endfor %}", None),
    ("{{ [1, 2] | random }}", None),
    ("{{ ['a'] | map('random') | list }}", None),
    ("{{ lipsum(1) }}", None),
])
def test_what_a_snippet_reads_is_known_or_it_is_rendered_every_time(source, inputs):
    from orion.decisions.core import snippet_inputs
    from orion.templates.sandbox import TemplateSandbox

    assert snippet_inputs(TemplateSandbox(autoescape=True), source) == inputs


def test_expired_leads_leave_the_cache(acme, tmp_path):
    from orion.decisions.leads import LeadReader

    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    clock = Clock()
    reader = LeadReader(store, ttl_s=0.5, max_entries=100, clock=clock)
    for n in range(20):
        reader.read("acme", f"L{n}", (), T0)
    assert len(reader._cache) == 20
    clock.now += 0.5
    reader.read("acme", "L20", (), T0)
    # expired: never answered, and dropped together a quarter of the TTL later
    assert all(reader.cached("acme", f"L{n}") is None for n in range(20)) and len(reader._cache) == 21
    clock.now += 0.125
    reader.read("acme", "L21", (), T0)
    assert list(reader._cache) == [("acme", "L20"), ("acme", "L21")]  # kept no longer than that
    # a lead read again is kept for the TTL from its last read
    clock.now += 0.3
    reader.read("acme", "L1", (), T0)
    clock.now += 0.3
    reader.read("acme", "L2", (), T0)
    assert reader.cached("acme", "L1") is not None and reader.cached("acme", "L20") is None
    assert set(reader._cache) == {("acme", "L1"), ("acme", "L2")}
    store.close()


INDEXED_RULES = """
tenant: acme
settings:
  lists: [customers]
  lead_attributes: {industry: string, size: number}
experiences:
  - name: Capped first
    placement: home_hero
    priority: 0
    audience:
      filters:
        - activity_history:
            activity: experience_impression
            where: {experience: {is: Capped first}}
            at_most: 1
            in_past: {n: 7, unit: days}
        - lead: {industry: {is: Retail}}
      context:
        device: {in: [mobile, tablet]}
  - name: Desktop from search
    placement: home_hero
    priority: 1
    audience:
      context:
        device: {is: desktop}
        referrer: {starts_with: "https://search."}
  - name: Pricing page, not US
    placement: home_hero
    priority: 2
    audience:
      filters: [{score: {ge: 10}}]
      context:
        url: {contains: /pricing}
        country: {not_in: [US]}
  - name: Evenings
    placement: home_hero
    priority: 3
    audience:
      context:
        local_time: {between: ["18:00", "23:00"]}
        device: {is_not: tv}
  - name: Either
    placement: home_hero
    priority: 4
    audience:
      logic: any
      filters:
        - member_of_list: customers
        - lead: {size: {gt: 100}}
  - name: December only
    placement: home_hero
    priority: 5
    schedule: {starting: "2026-12-01T00:00:00Z", ending: "2027-01-01T00:00:00Z"}
    variants: [{name: only, weight: 1, json: december}]
  - name: Unknown device
    placement: home_hero
    priority: 6
    audience:
      context:
        device: {is_empty: true}
    variants: [{name: only, weight: 1, json: anonymous}]
"""


def with_variants(text: str) -> str:
    """The rules with one JSON variant for each experience written without any."""
    for name in ("Capped first", "Desktop from search", "Pricing page, not US", "Evenings", "Either"):
        text = text.replace(f"  - name: {name}\n",
                            f"  - name: {name}\n    variants: [{{name: only, weight: 1, json: x}}]\n")
    return text


@pytest.fixture
def indexed(rules_dir):
    rules_dir.write(with_variants(INDEXED_RULES))
    _, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    return experiences["acme"]


class CountedHistory(dict):
    """A history that counts how often a filter reads it."""

    reads = 0

    def get(self, key, default=None):
        CountedHistory.reads += 1
        return dict.get(self, key, default)


def test_the_placement_index_chooses_what_testing_every_experience_chooses(indexed):
    """Every combination of context values, lead and time: the index's answer is the
    one the plain walk (choose) gives, found or not."""
    import itertools

    from orion.decisions.core import PlacementIndex, choose

    experiences = indexed.by_placement["home_hero"]
    index = PlacementIndex(experiences)
    capped_key = [c.key for c in indexed.counters][0]
    states = [EMPTY_LEAD_STATE, LeadState(attributes={"industry": "Retail"}),
              LeadState(attributes={"industry": "retail", "size": 500}, score=20),
              LeadState(attributes={"industry": "Retail"}, lists=frozenset({"customers"}),
                        history={capped_key: {T0 // DAY: 2}}),
              LeadState(score=10, history={capped_key: {T0 // DAY - 30: 5}})]
    found = set()
    for device, referrer, url, country, local_time, state, now in itertools.product(
            (None, "mobile", "desktop", "TV", "Tablet"), (None, "https://search.example/q", "https://elsewhere/"),
            (None, "https://x.example/pricing?a=1", "https://x.example/"), (None, "US", "de"),
            (None, "19:30", "09:00"), states, (T0, T0 + 10 * DAY)):
        raw = {k: v for k, v in (("device", device), ("referrer", referrer), ("url", url), ("country", country),
                                 ("local_time", local_time)) if v is not None}
        context = parse_context(raw, now)
        expected = choose(experiences, state, context, now)
        got = index.choose(state, context, now)
        assert (got.experience if got is not None else None) is expected, (raw, state, now)
        found.add(expected.name if expected is not None else None)
    # the cases reach every experience, and none
    assert found == {e.name for e in experiences} | {None}


def test_an_experience_the_context_admits_is_found_and_one_it_excludes_is_not(indexed):
    index_of = PlacementIndexes()
    experiences = indexed.by_placement["home_hero"]
    index = index_of.index(experiences)
    assert index_of.index(experiences) is index  # built once
    retail = LeadState(attributes={"industry": "Retail"})
    assert index.choose(retail, {"device": "mobile"}, T0).experience.name == "Capped first"
    # the same lead on a desktop from search: the first one's device excludes it
    desktop = {"device": "desktop", "referrer": "https://search.example/"}
    assert index.choose(retail, desktop, T0).experience.name == "Desktop from search"
    assert index.choose(retail, {"device": "desktop", "referrer": "https://other/"}, T0) is None
    assert index.choose(retail, {}, T0).experience.name == "Unknown device"  # no device: is_empty
    # values past what the index keeps are worked out each time, with the same answers
    small = PlacementIndexes()
    from orion.decisions import core

    original = core.INDEXED_VALUES
    core.INDEXED_VALUES = 2
    try:
        kept = small.index(experiences)
        for n in range(5):
            assert kept.choose(retail, {"device": f"watch-{n}"}, T0) is None
        assert kept.choose(retail, {"device": "Tablet"}, T0).experience.name == "Capped first"
        assert len(kept._admitted["device"]) == 2
    finally:
        core.INDEXED_VALUES = original


def test_a_filter_on_one_text_attribute_of_the_lead_is_known_as_such(indexed):
    """Only a filter that tests one string attribute of the lead names it: its test then
    depends on that value alone, and the index may prune by it."""
    capped, either = indexed.by_name["Capped first"], indexed.by_name["Either"]
    named = [found.attribute for found in capped.filters]
    assert named[0] is None  # the history filter
    assert named[1][0] == "industry" and named[1][1]("RETAIL", T0) and not named[1][1]("Banking", T0)
    assert [found.attribute for found in either.filters] == [None, None]  # a list, a number attribute


def test_the_index_prunes_by_the_lead_s_text_attributes_and_answers_as_the_walk_does(indexed):
    """The experiences a lead's value of a text attribute refuses are left out before the
    walk; every value, kept or past what is kept, and values that are not text, give the
    answer of the plain walk."""
    from orion.decisions import core
    from orion.decisions.core import PlacementIndex, choose

    experiences = indexed.by_placement["home_hero"]
    capped_bit = 1 << [e.name for e in experiences].index("Capped first")
    index = PlacementIndex(experiences)
    assert index._pruned(index.everyone, {"industry": "Banking"}, T0) == index.everyone & ~capped_bit
    assert index._pruned(index.everyone, {"industry": "retail"}, T0) == index.everyone
    assert index._pruned(index.everyone, {}, T0) == index.everyone & ~capped_bit  # no industry: refused too
    original = core.INDEXED_VALUES
    core.INDEXED_VALUES = 2
    try:
        index = PlacementIndex(experiences)
        for value in ("Retail", "Banking", "RETAIL", "Health", None, ["Retail"], 7, "retail "):
            state = LeadState(attributes={} if value is None else {"industry": value})
            for context in ({"device": "mobile"}, {"device": "desktop", "referrer": "https://search.example/"}, {}):
                expected = choose(experiences, state, context, T0)
                got = index.choose(state, context, T0)
                assert (got.experience if got is not None else None) is expected, (value, context)
        assert len(index._by_attribute[0][1]) == 2  # values past the two kept are worked out each time
    finally:
        core.INDEXED_VALUES = original


def test_history_filters_are_tested_after_the_cheap_ones(indexed):
    """`all`: the lead's history (a store read) is not read when a cheaper filter already
    says no, though the history filter is written first."""
    from orion.decisions.core import reads_history

    capped = indexed.by_name["Capped first"]
    assert [reads_history(f.test) for f in capped.filters] == [True, False]
    CountedHistory.reads = 0
    banking = LeadState(attributes={"industry": "Banking"}, history=CountedHistory())
    assert PlacementIndexes().index(indexed.by_placement["home_hero"]).choose(
        banking, {"device": "mobile"}, T0) is None
    assert CountedHistory.reads == 0
    retail = banking._replace(attributes={"industry": "Retail"})
    assert PlacementIndexes().index(indexed.by_placement["home_hero"]).choose(
        retail, {"device": "mobile"}, T0).experience is capped
    assert CountedHistory.reads == 1


def test_assignment_is_the_hash_of_tenant_experience_and_lead():
    """The arm a lead gets is fixed by the documented hash, whatever the code around it:
    a change would move leads between arms of running experiments."""
    import bisect
    import hashlib

    _, experiences, _ = load_experiences_text(RULES)
    hero = experiences["acme"].by_name["Retail hero"]
    for lead in [f"L{n}" for n in range(500)] + ["é-lead", "リード", "\udcff-odd"]:
        key = f"acme\x1fRetail hero\x1f{lead}".encode("utf-8", "surrogatepass")
        point = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0 ** 64
        expected = hero.arms[min(bisect.bisect_right(hero.cumulative, point * hero.cumulative[-1]),
                                 len(hero.arms) - 1)]
        assert assign("acme", hero, lead) == expected
        (decision,) = decide(experiences["acme"], SnippetRenderer(), lead, RETAIL, ["home_hero"], {"device": "mobile"},
                             {"device": "mobile"}, T0)
        assert decision.variant == expected.name


def load_experiences_text(text: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "acme.yaml").write_text(text)
        return load_experiences(Path(directory))


def test_a_profile_is_read_for_its_lead_alone_as_the_full_decode_reads_it(tmp_path):
    from pathlib import Path

    from orion.decisions.leads import lead_state_of_profile
    from orion.profiles import LeadRecord, ProfileError, decode_profile, encode_profile

    state = LeadState(attributes={"industry": "Retail", "first_name": "Ada", "big": 2 ** 70}, score=12.5,
                      lists=frozenset({"customers", "newsletter"}), campaigns={"Welcome": (1, T0)})
    texts = [encode_profile(LeadRecord()), encode_profile(LeadRecord()._replace(
        flows=LeadRecord().flows._replace(lead=state))),
        (Path(__file__).parent / "data" / "profile-v1.json").read_text(),
        '{"version": 2, "lead": {"attributes": {"name": "\\udcff"}}}']
    for text in texts:
        full = decode_profile(text).flows.lead
        mine = lead_state_of_profile(text)
        assert (mine.attributes, mine.score, mine.lists) == (full.attributes, full.score, full.lists)
    for bad in ("not json", "[1]", '{"version": 99}', '{"version": 2, "lead": {"lists": 7}}',
                '{"version": 2, "lead": {"attributes": [1]}}', '{"version": 2, "lead": []}'):
        with pytest.raises(ProfileError):
            lead_state_of_profile(bad)


def test_counters_one_store_read_answers_are_counted_together(tmp_path, rules_dir):
    """Two frequency caps on impressions: the first asked for counts both from one read
    of the lead's impressions; the counts are those counted one by one."""
    from orion.decisions.leads import LeadReader

    text = INDEXED_RULES.replace("  - name: Desktop from search\n", """  - name: Second cap
    placement: sidebar
    variants: [{name: only, weight: 1, json: x}]
    audience:
      filters:
        - activity_history:
            activity: experience_impression
            where: {experience: {is: Second cap}}
            at_most: 1
            in_past: {n: 30, unit: days}
  - name: Desktop from search
""")
    rules_dir.write(with_variants(text))
    _, experiences, refused = load_experiences(rules_dir.path)
    assert refused == {}
    acme = experiences["acme"]
    assert len(acme.counters) == 2
    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    types = impression_types(acme)
    seen = [make_activity("experience_impression", lead="L1", at=T0 - n * DAY, types=types, experience=name,
                          variant="only", placement="home_hero")
            for n, name in enumerate(["Capped first", "Second cap", "Second cap", "Other"] * 3)]
    store.write(seen)
    reads = []
    history = store.history
    store.history = lambda *args, **kwargs: reads.append(args) or history(*args, **kwargs)
    lazy = LeadReader(store, ttl_s=0).read("acme", "L1", acme.counters, T0, lazy_history=True).state.history
    first, second = (c.key for c in acme.counters)
    assert lazy.get(first) == count_history(store, "acme", "L1", [acme.counters[0]], T0)[first]
    reads.clear()
    assert lazy.get(second) == count_history(store, "acme", "L1", [acme.counters[1]], T0)[second]
    assert len(reads) == 1  # the one count_history just made: the lead's view read nothing more
    assert sum(lazy.get(first).values()) == 2 and sum(lazy.get(second).values()) == 6
    store.close()


def test_a_leads_history_is_read_once_within_the_ttl_and_afresh_after_it(acme, tmp_path):
    """The counts a history filter reads are kept with the lead's profile, for the same
    TTL: asked again within it, the store is not read again; past it, a new impression
    stored meanwhile is counted."""
    from orion.decisions.leads import LeadReader

    store = open_store(f"sqlite:///{tmp_path}/a.db")
    store.init()
    types = impression_types(acme)

    def seen(n: int):
        return make_activity("experience_impression", lead="L1", at=T0 - n * DAY, types=types,
                             experience="Retail hero", variant="a", placement="home_hero")

    store.write([seen(1), seen(2)])
    reads = []
    history = store.history
    store.history = lambda *args, **kwargs: reads.append(args) or history(*args, **kwargs)
    clock = Clock()
    reader = LeadReader(store, ttl_s=0.25, clock=clock)
    (key,) = [c.key for c in acme.counters]
    view = reader.read("acme", "L1", acme.counters, T0, lazy_history=True)
    assert sum(view.state.history.get(key).values()) == 2 and len(reads) == 1
    store.write([seen(3)])
    clock.now += 0.2
    again = reader.cached("acme", "L1")
    assert again is view and sum(again.state.history.get(key).values()) == 2 and len(reads) == 1
    clock.now += 0.1  # past the TTL
    assert reader.cached("acme", "L1") is None
    fresh = reader.read("acme", "L1", acme.counters, T0, lazy_history=True)
    assert sum(fresh.state.history.get(key).values()) == 3 and len(reads) == 2
    assert fresh.state.history.get("no such counter", "none") == "none" and len(reads) == 2
    store.close()


def test_an_arm_without_a_snippet_is_one_decision_for_every_lead_and_a_snippet_each_leads_own(acme):
    hero = acme.by_name["Retail hero"]
    arms: dict[str, list[str]] = {}
    for n in range(200):
        arms.setdefault(assign("acme", hero, f"L{n}").name, []).append(f"L{n}")
    renderer, indexes = SnippetRenderer(), PlacementIndexes()

    def decided(lead: str, name: str):
        state = LeadState(attributes={"industry": "Retail", "first_name": name})
        context = {"device": "mobile"}
        (decision,) = decide(acme, renderer, lead, state, ["home_hero"], parse_context(context, T0), context, T0,
                             indexes)
        return decision

    first, second = decided(arms["a"][0], "Ada"), decided(arms["a"][1], "Grace")
    assert first is second  # made once, when the placement's index was built
    assert first == ("home_hero", "Retail hero", "a", False, "json", {"headline": "A"}, None, None)
    control = decided(arms["control"][0], "Ada")
    assert control[:6] == ("home_hero", "Retail hero", "control", True, "none", None)
    ada, grace = decided(arms["b"][0], "<Ada>"), decided(arms["b"][1], "Grace")
    assert (ada.content, grace.content) == ("<b>&lt;Ada&gt;</b> on mobile", "<b>Grace</b> on mobile")
    assert decided(arms["b"][0], "Barbara").content == "<b>Barbara</b> on mobile"
