"""A hostile tenant's rules, templates and inputs: each attack is refused when the rules
load, with file:line and how to fix it, or becomes a dead letter with its reason while
every other tenant's work completes. The attacks, as the issue reported them:

- `matches: "^(a+)+$"` and a url of 36 `a`s and a `!` (catastrophic backtracking);
- a YAML alias bomb of a few hundred bytes (and very deep nesting, and a huge file);
- templates with nested `range(100000)` loops, `'a' * 10**9`, `9**(9**9)`,
  `'a' * 10**8` (a 100 MB email), a macro calling itself;
- a template named `globex/secret`, or including `globex/secret.j2`, in tenant evil's rules;
- `../` and absolute template names;
- a campaign of N change_score steps that re-triggers itself (exponential cascade);
- a non-ASCII template name (`bienvenue-été`), and one holding a newline (`Bcc:` injection).

The graph-level checks run the real `orion run` (Beam's DirectRunner) in process over two
tenants; memory is bounded by a child process under an address-space limit; the rules
reader is fuzzed with Hypothesis.

    .venv/bin/python -m pytest -q tests/test_hostile_rules.py
"""
from __future__ import annotations

import email
import json
import re
import subprocess
import sys
import tempfile
import textwrap
from email import policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DAY, HOUR, T0, make_activity, single_error

from orion.campaigns.email import (
    TEMPLATE_BUDGET, TEMPLATE_FAILED, TEMPLATE_MISSING, TEMPLATE_TOO_LARGE, EmailAssembler, assemble_one,
)
from orion.campaigns.flows import CASCADE_BUDGET, CASCADE_DEPTH, EmailRequest, FlowEngine
from orion.deadletters import DeadLetter
from orion.rules import RuleError, RuleErrors, check_rules, evaluate, load_rules
from orion.rules.limits import DEFAULT_MAX_CASCADE_ACTIVITIES
from orion.rules.source import MAX_RULE_FILE_BYTES, MAX_YAML_DEPTH, short_repr

ATTACK_URL = "a" * 36 + "!"

# The issue's template bombs, each with the reason its lead is dead-lettered with.
TEMPLATE_BOMBS = {
    "loops": ("{% block subject %}x{% endblock %}{% block text %}{% for i in range(100000) %}"
              "{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}{% endblock %}", TEMPLATE_BUDGET),
    "loops_in_range": ("{% block subject %}x{% endblock %}{% block text %}{% for i in range(10000) %}"
                       "{% for j in range(10000) %}{% endfor %}{% endfor %}{% endblock %}", TEMPLATE_BUDGET),
    "giga": ("{% block subject %}x{% endblock %}{% block text %}{{ 'a' * 10**9 }}{% endblock %}",
             TEMPLATE_TOO_LARGE),
    "power": ("{% block subject %}x{% endblock %}{% block text %}{{ 9**(9**9) }}{% endblock %}",
              TEMPLATE_TOO_LARGE),
    "hundred_mb": ("{% block subject %}x{% endblock %}{% block text %}{{ 'a' * 10**8 }}{% endblock %}",
                   TEMPLATE_TOO_LARGE),
    "recursive": ("{% block subject %}x{% endblock %}{% block text %}"
                  "{% macro again(n) %}{{ again(n + 1) }}{% endmacro %}{{ again(0) }}{% endblock %}", TEMPLATE_BUDGET),
    "include_self": ("{% block subject %}x{% endblock %}{% block text %}{% include 'include_self.j2' %}{% endblock %}",
                     TEMPLATE_FAILED),
}
SECRET = "{% block subject %}TOP SECRET of globex{% endblock %}{% block text %}globex only{% endblock %}"
# What a static check cannot see: the name of another tenant's template, computed.
PEEK = "{% block subject %}peek{% endblock %}{% block text %}{% include 'glo' ~ 'bex/secret.j2' %}{% endblock %}"
WELCOME_UNICODE = "{% block subject %}Bienvenue {{ lead.first_name }}{% endblock %}{% block text %}été{% endblock %}"


def write_rules(folder: Path, files: dict[str, str], templates: dict[str, str] = ()) -> Path:
    """Rule files and templates (path under RULES/templates -> source) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    for name, source in dict(templates).items():
        target = folder / "templates" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
    return folder


def line_of(path: Path, needle: str) -> int:
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


# --- regular expressions --------------------------------------------------------------------

REGEX_RULES = """
tenant: evil
campaigns:
  - name: Regex
    qualification: every_time
    triggers: [{activity: visit_web_page, where: {url: {matches: "^(a+)+$"}}}]
  - name: Regex in a history filter
    triggers: [{activity: open_email}]
    filters:
      - activity_history: {activity: visit_web_page, where: {referrer: {matches: "(x+x+)+y"}}, in_past: {n: 3, unit: days}}
"""


def test_a_catastrophic_regular_expression_runs_in_linear_time(tmp_path):
    rules = load_rules(write_rules(tmp_path / "rules", {"evil.yaml": REGEX_RULES}))
    activity = make_activity("visit_web_page", tenant="evil", url=ATTACK_URL, referrer="x" * 5000)
    state, outcomes = evaluate(rules, None, activity)  # Python's re backtracks for hours here
    assert outcomes == []
    _, outcomes = evaluate(rules, state, make_activity("visit_web_page", tenant="evil", url="a" * 36))
    assert [o.campaign for o in outcomes] == ["Regex"]


@pytest.mark.parametrize("pattern, fragment", [
    (r"(a)\\1", "backreferences"),
    (r"(?=pricing)", "look-ahead"),
    (r"(?<!x)y", "look-behind"),
    (r"a*+", "possessive"),
    (r"end\\Z", "\\z"),
    (r"a{1001}", "at most 1000"),
])
def test_a_pattern_re2_does_not_take_is_refused_at_load_with_file_line_and_a_fix(tmp_path, pattern, fragment):
    folder = write_rules(tmp_path / "rules", {"evil.yaml": f"""
        tenant: evil
        campaigns:
          - name: Regex
            triggers: [{{activity: visit_web_page, where: {{url: {{matches: "{pattern}"}}}}}}]
    """})
    errors = check_rules(folder)
    single_error(errors, str(folder / "evil.yaml"), line_of(folder / "evil.yaml", "matches"),
                 "bad regular expression", fragment)


# --- YAML ----------------------------------------------------------------------------------

# 9 levels of 9 aliases: ~387 million strings once expanded, in a few hundred bytes.
ALIAS_BOMB = """tenant: evil
campaigns:
  - name: Bomb
    description: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    flow: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    filters: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    logic: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    priority: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    status: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    type: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    schedule: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    triggers: [{activity: visit_web_page, where: {url: {in: [*h,*h,*h,*h,*h,*h,*h,*h,*h]}}}]
"""


def test_a_yaml_alias_bomb_is_refused_at_the_first_alias(tmp_path):
    assert len(ALIAS_BOMB.encode()) < 600
    folder = write_rules(tmp_path / "rules", {"evil.yaml": ALIAS_BOMB, "acme.yaml": "tenant: acme\n"})
    errors = check_rules(folder)
    single_error(errors, str(folder / "evil.yaml"), line_of(folder / "evil.yaml", "flow: &b"),
                 "YAML aliases (*name) are not allowed", "write the value out")
    assert len(str(errors[0])) < 400


def test_orion_rules_validate_reports_the_alias_bomb_and_exits_1(tmp_path, capsys):
    from orion.cli import main

    folder = write_rules(tmp_path / "rules", {"evil.yaml": ALIAS_BOMB})
    assert main(["rules", "validate", str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"evil.yaml:{line_of(folder / 'evil.yaml', 'flow: &b')}: YAML aliases" in captured.out + captured.err


def test_yaml_nested_deeper_than_the_limit_is_refused_with_its_line(tmp_path):
    depth = MAX_YAML_DEPTH + 10
    folder = write_rules(tmp_path / "rules", {"evil.yaml": (
        "tenant: evil\ncampaigns:\n  - name: Deep\n    description:\n      " + "[" * depth + "1" + "]" * depth + "\n")})
    errors = check_rules(folder)
    single_error(errors, str(folder / "evil.yaml"), 5, f"nests deeper than {MAX_YAML_DEPTH} levels")


def test_a_rule_file_larger_than_the_limit_is_refused_unread(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "evil.yaml").write_text("tenant: evil\n# " + "x" * MAX_RULE_FILE_BYTES + "\n")
    errors = check_rules(folder)
    single_error(errors, str(folder / "evil.yaml"), 1, f"larger than {MAX_RULE_FILE_BYTES:,} bytes",
                 "split the tenant's campaigns")


def test_messages_show_a_bounded_part_of_any_value(tmp_path):
    huge = ["lol"] * 9
    for _ in range(9):  # shared lists: 9**10 items if expanded
        huge = [huge] * 9
    shown = short_repr(huge)
    assert len(shown) <= 80 and shown.startswith("[[[")
    assert short_repr("x" * 10_000_000).endswith("...") and len(short_repr("x" * 10_000_000)) <= 80
    assert short_repr({"a": 1}) == "{'a': 1}" and short_repr("pricing") == "'pricing'"
    assert short_repr(10 ** 5000).startswith("<a number of")
    # A long value in a YAML file is shown cut short in its error.
    folder = write_rules(tmp_path / "rules", {"evil.yaml": f"""
        tenant: evil
        campaigns:
          - name: Long
            triggers: [{{activity: open_email}}]
            filters: [{{score: {{gt: "{'9' * 100_000}"}}}}]
    """})
    (error,) = check_rules(folder)
    assert len(error.message) < 500 and "..." in error.message


# --- the rules reader never raises ---------------------------------------------------------

FUZZ_BASE = """tenant: acme
settings:
  lists: [newsletter, hot]
  communication_limits: {per_day: 2, per_7_days: 5}
  limits: {max_email_bytes: 200000, max_cascade_activities: 50}
  lead_attributes: {industry: string, seats: number, vip: boolean, renew: date}
  activity_types:
    store_visit:
      attributes:
        store: {type: string, required: true, enum: [a, b]}
        minutes: number
        tags: object
      indexed_by: store
campaigns:
  - name: Pricing
    priority: 5
    qualification: {once_every: {n: 7, unit: days}}
    triggers:
      - activity: visit_web_page
        where: {url: {matches: "^https://acme\\\\.example/", starts_with: "https"}, referrer: {is_empty: true}}
      - activity: store_visit
        where: {store: {in: [a]}, minutes: {between: [1, 5]}, tags.x: {is: 3}}
    filters:
      - activity_history: {activity: visit_web_page, where: {url: {contains: x}}, at_least: 2, at_most: 9, in_past: {n: 7, unit: days}}
      - lead: {industry: {in: [Retail, Banking]}, renew: {in_past: {n: 2, unit: days}}, seats: {gt: 3}}
      - score: {ge: 10}
      - member_of_list: hot
    logic: 1 and (2 or not 3) and 4
    flow:
      - send_email: {template: welcome, operational: true}
      - wait: {until: "2026-12-01T09:00:00Z"}
      - change_data_value: {attribute: renew, value: "2026-12-01T09:00:00Z"}
      - change_score: {set: 5}
      - remove_from_flow: {campaigns: [News]}
      - request_campaign: {campaign: News}
      - webhook: {name: crm}
      - send_email: {template: follow_up}
        choices:
          - if: [{lead: {vip: {is: true}}}]
            logic: all
            then: {send_email: {template: newsletter}}
  - name: News
    type: batch
    filters: [{member_of_list: newsletter}]
    schedule: {every: {n: 1, unit: months}, starting: "2026-12-01T09:00:00Z"}
    flow:
      - send_email: {template: newsletter}
"""
FUZZ_VALUES = ["1e999", "-1e999", ".nan", ".inf", "99999999999999999999999999999999", "-5", "0", "null", "[]", "{}", '""',
          "true", "2026-13-45", "\"2026-12-01T09:00:00Z\"", "[1, 2]", "[b, a]", "{n: 1}", "'x'", "1.5", "!!binary aGk=",
          "9" * 400, "-9" * 200, "{n: 99999999999999999999, unit: days}", "[[1]]"]
FUZZ_SCALAR = re.compile(r"(?<=: )[^{}\[\],\n]+|(?<=\[)[^\[\],\]\n]+|(?<=, )[^{}\[\],\n]+")

YAML_PIECES = list("&*!|>{}[]:,-#'\"%@`?\n\t ") + ["&a ", "*a", "<<: ", "!!binary ", "!!python/object ", "---\n",
                                                   "\n  - ", ": [", "\\", "é", "\x00", "{{", "((", "..", "/"]


@st.composite
def mutated_yaml(draw):
    text = FUZZ_BASE
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 8))
        piece = draw(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)))
        text = text[:at] + piece + text[at + cut:]
    return text


@st.composite
def mutated_values(draw):
    """The base with some of its values replaced by values of the wrong kind or size."""
    text = FUZZ_BASE
    for _ in range(draw(st.integers(1, 4))):
        spot = draw(st.sampled_from(list(FUZZ_SCALAR.finditer(text))))
        text = text[:spot.start()] + draw(st.sampled_from(FUZZ_VALUES)) + text[spot.end():]
    return text


def test_the_fuzzed_base_is_valid(tmp_path):
    (tmp_path / "fuzz.yaml").write_text(FUZZ_BASE)
    assert check_rules(tmp_path) == []


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(mutated_yaml(), mutated_values(), st.text(max_size=200)))
def test_the_rules_reader_loads_or_reports_file_line_errors_and_never_raises(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        errors = check_rules(folder)
        for error in errors:
            assert isinstance(error, RuleError) and error.file == str(path)
            assert isinstance(error.line, int) and error.line >= 1 and error.message
        try:
            load_rules(folder)
        except RuleErrors as raised:
            assert raised.errors == errors and errors
        else:
            assert errors == []


# --- templates -----------------------------------------------------------------------------


def assembler_rules(tmp_path: Path, max_email_bytes: int | None = None) -> Path:
    limits = f"  limits: {{max_email_bytes: {max_email_bytes}}}\n" if max_email_bytes else ""
    templates = {f"evil/{name}.j2": source for name, (source, _) in TEMPLATE_BOMBS.items()}
    templates.update({"globex/secret.j2": SECRET, "evil/peek.j2": PEEK, "evil/bienvenue-été.j2": WELCOME_UNICODE,
                      "evil/big.j2": "{% block subject %}big{% endblock %}{% block text %}"
                                     "{{ 'x' * 50000 }}{% endblock %}"})
    return write_rules(tmp_path / "rules", {
        "evil.yaml": "tenant: evil\nsettings:\n" + (limits or "  lists: []\n"),
        "globex.yaml": "tenant: globex\ncampaigns:\n  - name: Secret\n    triggers: [{activity: open_email}]\n"
                       "    flow: [{send_email: {template: secret}}]\n",
    }, templates)


def request(template: str, tenant: str = "evil", lead_id: str = "1") -> EmailRequest:
    lead = {"id": lead_id, "email": f"lead{lead_id}@example.com", "first_name": "Zoë", "score": 0}
    return EmailRequest(tenant, lead_id, "Campaign", "e1#0", template, False, T0, lead, {})


@pytest.mark.parametrize("name", sorted(TEMPLATE_BOMBS))
def test_a_template_bomb_is_a_dead_letter_with_its_reason(tmp_path, name):
    assembler = EmailAssembler(assembler_rules(tmp_path))
    made, counts = assemble_one(assembler, request(name))
    assert isinstance(made, DeadLetter), made
    assert made.reason == TEMPLATE_BOMBS[name][1], made.detail
    assert counts[f"dead_letters:{made.reason}"] == 1 and len(made.detail) < 1000
    # The same assembler goes on with the next lead, and with other tenants.
    made, _ = assemble_one(assembler, request("secret", tenant="globex", lead_id="2"))
    assert not isinstance(made, DeadLetter) and b"TOP SECRET" in made.message


def test_the_email_size_limit_is_the_tenants_setting(tmp_path):
    made, _ = assemble_one(EmailAssembler(assembler_rules(tmp_path)), request("big"))
    assert not isinstance(made, DeadLetter)  # 50,000 characters fit the default 1 MB
    made, _ = assemble_one(EmailAssembler(assembler_rules(tmp_path / "small", max_email_bytes=20_000)), request("big"))
    assert isinstance(made, DeadLetter) and made.reason == TEMPLATE_TOO_LARGE
    assert "20,000" in made.detail


@pytest.mark.parametrize("value, fragment", [
    (0, "at least 10000"), (10 ** 9, "at most 10000000"), ("1MB", "must be an integer")])
def test_the_email_size_setting_is_checked_by_the_schema(tmp_path, value, fragment):
    folder = write_rules(tmp_path / "rules", {"evil.yaml": f"tenant: evil\nsettings:\n  limits: {{max_email_bytes: {value}}}\n"})
    single_error(check_rules(folder), str(folder / "evil.yaml"), 3, "max_email_bytes", fragment)


def test_a_name_in_another_tenants_folder_is_not_found_at_render(tmp_path):
    assembler = EmailAssembler(assembler_rules(tmp_path))
    for name in ("globex/secret", "globex/secret.j2", "../globex/secret", "templates/globex/secret"):
        made, _ = assemble_one(assembler, request(name))
        assert isinstance(made, DeadLetter) and made.reason == TEMPLATE_MISSING, (name, made)
    made, _ = assemble_one(assembler, request("peek"))  # an include whose name is computed
    assert isinstance(made, DeadLetter) and made.reason == TEMPLATE_FAILED and "TemplateNotFound" in made.detail
    assert "TOP SECRET" not in json.dumps(made.element) + made.detail


def test_a_template_of_another_tenant_is_refused_at_load_by_name_or_include(tmp_path):
    folder = write_rules(tmp_path / "rules", {"evil.yaml": """
        tenant: evil
        campaigns:
          - name: Steal
            triggers: [{activity: open_email}]
            flow:
              - send_email: {template: globex/secret}
              - send_email: {template: sneaky}
    """}, {"globex/secret.j2": SECRET, "evil/sneaky.j2": "{% include 'globex/secret.j2' %}"})
    errors = check_rules(folder)
    assert [(e.file, e.line) for e in errors] == [
        (str(folder / "evil.yaml"), line_of(folder / "evil.yaml", "globex/secret")),
        (str(folder / "evil.yaml"), line_of(folder / "evil.yaml", "sneaky"))]
    assert "unknown template 'globex/secret'" in errors[0].message
    assert "refers to 'globex/secret.j2', which is not a template tenant 'evil' has" in errors[1].message
    # The same names are fine for globex itself, and a shared template is fine for both.
    (folder / "templates" / "shared.j2").write_text("{% block subject %}shared{% endblock %}")
    write_rules(folder, {"evil.yaml": """
        tenant: evil
        campaigns:
          - {name: Shared, triggers: [{activity: open_email}], flow: [{send_email: {template: shared}}]}
    """, "globex.yaml": """
        tenant: globex
        campaigns:
          - {name: Own, triggers: [{activity: open_email}], flow: [{send_email: {template: secret}}]}
    """})
    assert check_rules(folder) == []


def test_a_symbolic_link_into_another_tenants_folder_is_not_followed(tmp_path):
    folder = assembler_rules(tmp_path)
    (folder / "templates" / "evil" / "link.j2").symlink_to(folder / "templates" / "globex" / "secret.j2")
    made, _ = assemble_one(EmailAssembler(folder), request("link"))
    assert isinstance(made, DeadLetter) and made.reason == TEMPLATE_MISSING


@pytest.mark.parametrize("name, fragment", [
    ("../outside", "'..'"),
    ("../../etc/passwd", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("a\\\\b", "backslash"),
    ("welcome\\nBcc: victim@example.com", "control character U+000A"),
    ("welcome\\rReply-To: x@example.com", "control character U+000D"),
    (" ", "is empty"),
])
def test_a_bad_template_name_is_refused_at_load_and_no_file_is_read(tmp_path, name, fragment):
    (tmp_path / "outside.j2").write_text("{% block subject %}{{ 'outside' }}{% endblock %}")
    folder = write_rules(tmp_path / "rules", {"evil.yaml": f"""
        tenant: evil
        campaigns:
          - name: Paths
            triggers: [{{activity: open_email}}]
            flow:
              - send_email: {{template: "{name}"}}
    """})
    errors = check_rules(folder)
    single_error(errors, str(folder / "evil.yaml"), line_of(folder / "evil.yaml", "send_email"),
                 "template name", fragment)


def test_a_non_ascii_template_name_is_assembled_with_an_encoded_header(tmp_path):
    folder = assembler_rules(tmp_path)
    write_rules(folder, {"evil.yaml": """
        tenant: evil
        campaigns:
          - {name: Bienvenue, triggers: [{activity: open_email}], flow: [{send_email: {template: bienvenue-été}}]}
    """})
    assert check_rules(folder) == []
    made, _ = assemble_one(EmailAssembler(folder), request("bienvenue-été"))
    assert not isinstance(made, DeadLetter), made
    made.message.decode("ascii")  # the wire format stays ASCII
    parsed = email.message_from_bytes(made.message, policy=policy.default)
    assert parsed.defects == [] and parsed["X-Orion-Template"] == "bienvenue-été"
    assert parsed["Subject"] == "Bienvenue Zoë"


def test_no_header_can_be_injected_through_a_template_name(tmp_path):
    folder = assembler_rules(tmp_path)
    (folder / "templates" / "evil" / "welcome\nBcc: victim@example.com.j2").write_text(WELCOME_UNICODE)
    made, _ = assemble_one(EmailAssembler(folder), request("welcome\nBcc: victim@example.com"))
    assert isinstance(made, DeadLetter) and made.reason == TEMPLATE_MISSING and "U+000A" in made.detail
    # Header values are folded onto one line whatever they hold.
    from orion.campaigns.email import _header_text

    assert "\n" not in _header_text("X-Orion-Template", "a\r\nBcc: victim@example.com").replace("\n ", " ")


# --- cascades --------------------------------------------------------------------------------


def cascade_rules(steps: int, budget: int | None = None) -> str:
    limits = f"settings:\n  limits: {{max_cascade_activities: {budget}}}\n" if budget else ""
    flow = "\n".join("      - change_score: {delta: 1}" for _ in range(steps))
    return f"""tenant: evil
{limits}campaigns:
  - name: Again
    qualification: every_time
    triggers: [{{activity: change_score}}]
    flow:
{flow}
  - name: Meanwhile
    priority: 200
    triggers: [{{activity: fill_out_form, where: {{form: {{is: Cascade}}}}}}]
    flow:
      - change_score: {{delta: 1}}
      - send_email: {{template: welcome}}
      - webhook: {{name: crm}}
"""


@pytest.mark.parametrize("steps", [10, 20])
def test_a_self_triggering_cascade_stops_at_the_budget_with_one_dead_letter(tmp_path, steps):
    engine = FlowEngine(load_rules(write_rules(tmp_path / "rules", {"evil.yaml": cascade_rules(steps)})))
    lead, _ = engine.process_activity(None, make_activity("data_value_changes", tenant="evil", at=T0 - HOUR,
                                                           attribute="email", new_value="e@example.com"))
    flows, result = engine.process_activity(lead, make_activity("fill_out_form", tenant="evil", form="Cascade"))
    assert len(result.activities) == DEFAULT_MAX_CASCADE_ACTIVITIES
    reasons = [d.reason for d in result.dead_letters]
    assert reasons.count(CASCADE_BUDGET) == 1
    assert set(reasons) <= {CASCADE_BUDGET, CASCADE_DEPTH} and len(reasons) <= steps + 1
    budget = next(d for d in result.dead_letters if d.reason == CASCADE_BUDGET)
    assert "max_cascade_activities" in budget.detail and budget.element["type"] == "change_score"
    # The lead's other work goes on: the rest of the Meanwhile flow ran.
    assert [e.template for e in result.emails] == ["welcome"] and [w.name for w in result.webhooks] == ["crm"]
    assert flows.lead.score == DEFAULT_MAX_CASCADE_ACTIVITIES
    # The budget is per call: the next input activity has a fresh one.
    _, again = engine.process_activity(flows, make_activity("change_score", tenant="evil", at=T0 + HOUR, delta=1))
    assert len(again.activities) == DEFAULT_MAX_CASCADE_ACTIVITIES


def test_the_cascade_budget_is_the_tenants_setting_and_the_depth_limit_still_holds(tmp_path):
    engine = FlowEngine(load_rules(write_rules(tmp_path / "rules", {"evil.yaml": cascade_rules(10, budget=7)})))
    _, result = engine.process_activity(None, make_activity("change_score", tenant="evil", delta=1))
    assert len(result.activities) == 7
    # One step a flow: a chain, stopped by the depth limit long before the budget.
    engine = FlowEngine(load_rules(write_rules(tmp_path / "one", {"evil.yaml": cascade_rules(1)})), max_cascade_depth=5)
    _, result = engine.process_activity(None, make_activity("change_score", tenant="evil", delta=1))
    assert len(result.activities) == 5 and [d.reason for d in result.dead_letters] == [CASCADE_DEPTH]


@pytest.mark.parametrize("value, fragment", [(0, "at least 1"), (100_000, "at most 10000")])
def test_the_cascade_budget_setting_is_checked_by_the_schema(tmp_path, value, fragment):
    folder = write_rules(tmp_path / "rules", {"evil.yaml": f"tenant: evil\nsettings:\n  limits: {{max_cascade_activities: {value}}}\n"})
    single_error(check_rules(folder), str(folder / "evil.yaml"), 3, "max_cascade_activities", fragment)


# --- the graph: one hostile tenant, one ordinary tenant, the real job ----------------------------

GRAPH_EVIL = """
tenant: evil
campaigns:
  - name: Regex
    qualification: every_time
    triggers: [{activity: visit_web_page, where: {url: {matches: "^(a+)+$"}}}]
    flow: [{webhook: {name: regex}}]
  - name: Bombs
    triggers: [{activity: fill_out_form, where: {form: {is: Bombs}}}]
    flow:
      - send_email: {template: loops}
      - send_email: {template: giga}
      - send_email: {template: power}
      - send_email: {template: hundred_mb}
      - send_email: {template: recursive}
      - send_email: {template: peek}
      - send_email: {template: bienvenue-été}
  - name: Again
    qualification: every_time
    triggers: [{activity: change_score}]
    flow:
""" + "\n".join("      - change_score: {delta: 1}" for _ in range(10)) + "\n"
GRAPH_ACME = """
tenant: acme
campaigns:
  - name: Signup
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    flow: [{send_email: {template: welcome}}]
"""


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """`orion run` over a hostile tenant's attacks and an ordinary tenant's signup."""
    from orion.cli import main

    base = tmp_path_factory.mktemp("hostile")
    templates = {f"evil/{name}.j2": TEMPLATE_BOMBS[name][0]
                 for name in ("loops", "giga", "power", "hundred_mb", "recursive")}
    templates.update({"globex/secret.j2": SECRET, "evil/peek.j2": PEEK, "evil/bienvenue-été.j2": WELCOME_UNICODE})
    rules = write_rules(base / "rules", {"evil.yaml": GRAPH_EVIL, "acme.yaml": GRAPH_ACME}, templates)
    activities = [
        make_activity("data_value_changes", tenant="acme", lead="a1", at=T0 - HOUR, attribute="email",
                      new_value="ada@acme.example"),
        make_activity("data_value_changes", tenant="evil", lead="e1", at=T0 - HOUR, attribute="email",
                      new_value="eve@evil.example"),
        make_activity("visit_web_page", tenant="evil", lead="e1", url=ATTACK_URL),
        make_activity("fill_out_form", tenant="evil", lead="e1", at=T0 + 1, form="Bombs"),
        make_activity("change_score", tenant="evil", lead="e2", delta=1),
        make_activity("fill_out_form", tenant="acme", lead="a1", at=T0 + 2, form="Signup"),
        make_activity("visit_web_page", tenant="acme", lead="a1", at=T0 + DAY, url="https://acme.example/"),
    ]
    events = base / "events.jsonl"
    events.write_text("".join(json.dumps(a.to_json_dict()) + "\n" for a in activities))
    store, outbox = f"sqlite:///{base / 'store.db'}", base / "outbox"
    status = main(["run", "--events", str(events), "--rules", str(rules), "--store", store,
                   "--out-dir", str(base / "out"), "--outbox", f"eml:///{outbox}"])
    dead = [json.loads(line) for path in (base / "out").glob("dead-letters-*.jsonl")
            for line in path.read_text(encoding="utf-8").splitlines()]
    messages = [email.message_from_bytes(p.read_bytes(), policy=policy.default)
                for p in sorted((outbox / "messages").glob("*"))]
    from orion.store import open_store

    with open_store(store) as opened:
        history = {(tenant, lead): opened.history(tenant, lead)
                   for tenant, lead in (("acme", "a1"), ("evil", "e1"), ("evil", "e2"))}
    return {"status": status, "dead": dead, "messages": messages, "history": history}


def test_the_job_completes_and_the_other_tenant_is_served(hostile_run):
    assert hostile_run["status"] == 0
    acme = hostile_run["history"][("acme", "a1")]
    assert sorted(a.type for a in acme) == ["data_value_changes", "fill_out_form", "visit_web_page"]
    (welcome,) = [m for m in hostile_run["messages"] if m["X-Orion-Tenant"] == "acme"]
    assert welcome["To"] == "ada@acme.example" and welcome["X-Orion-Template"] == "welcome"


def test_the_backtracking_regular_expression_is_evaluated_in_the_graph(hostile_run):
    visits = [a for a in hostile_run["history"][("evil", "e1")] if a.type == "visit_web_page"]
    assert [a.attributes["url"] for a in visits] == [ATTACK_URL]


def test_every_template_bomb_is_a_dead_letter_and_the_rest_is_mailed(hostile_run):
    by_template = {d["element"]["template"]: d["reason"] for d in hostile_run["dead"]
                   if d["reason"].startswith("template_")}
    assert by_template == {"loops": TEMPLATE_BUDGET, "giga": TEMPLATE_TOO_LARGE, "power": TEMPLATE_TOO_LARGE,
                           "hundred_mb": TEMPLATE_TOO_LARGE, "recursive": TEMPLATE_BUDGET, "peek": TEMPLATE_FAILED}
    evil = [m for m in hostile_run["messages"] if m["X-Orion-Tenant"] == "evil"]
    assert [m["X-Orion-Template"] for m in evil] == ["bienvenue-été"]
    assert all("TOP SECRET" not in m.as_string() for m in hostile_run["messages"])
    assert all(len(m.as_bytes()) < 100_000 for m in hostile_run["messages"])


def test_the_exponential_cascade_stops_at_the_budget_in_the_graph(hostile_run):
    generated = [a for a in hostile_run["history"][("evil", "e2")] if a.event_id.startswith("flow-")]
    assert len(generated) == DEFAULT_MAX_CASCADE_ACTIVITIES
    cascade = [d["reason"] for d in hostile_run["dead"] if d["reason"].startswith("cascade_")]
    assert cascade.count(CASCADE_BUDGET) == 1 and len(cascade) <= 11


# --- memory: the attacks under an address-space limit ------------------------------------------

CHILD = """
import resource, sys
limit = 2 * 1024 ** 3
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from orion.rules import check_rules
from orion.campaigns.email import EmailAssembler, assemble_one
from orion.campaigns.flows import EmailRequest

for error in check_rules(sys.argv[1]):
    print("rules:", error)
assembler = EmailAssembler(sys.argv[2])
for name in sys.argv[3:]:
    lead = {"id": "1", "email": "a@example.com"}
    made, _ = assemble_one(assembler, EmailRequest("evil", "1", "C", "r#0", name, False, 0, lead, {}))
    print("template:", name, getattr(made, "reason", "assembled"))
"""


def test_the_attacks_complete_within_a_2_gb_address_space(tmp_path):
    bomb = write_rules(tmp_path / "bomb", {"evil.yaml": ALIAS_BOMB})
    templates = assembler_rules(tmp_path)
    names = sorted(TEMPLATE_BOMBS)
    result = subprocess.run([sys.executable, "-c", CHILD, str(bomb), str(templates), *names],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("rules:")]) == 1
    assert "YAML aliases (*name) are not allowed" in lines[0]
    assert lines[1:] == [f"template: {name} {TEMPLATE_BOMBS[name][1]}" for name in names]


BIG = "1" + "0" * 400


@pytest.mark.parametrize("value, fragment", [
    ("!!int abc", "a value does not read"),
    ("!!float abc", "a value does not read"),
    ("!!bool maybe", "a value does not read"),
    ("!!timestamp foo", "a value does not read"),
    ("!!map [1]", "a value does not read"),
    ("!!seq {a: 1}", "a value does not read"),
    ("1" * 4400, "more digits than a rule can use"),
    ("0x" + "f" * 4000, "more digits than a rule can use"),
    (".nan", "not a number a rule can use"),
    ("-.inf", "not a number a rule can use"),
    ("1.0", "must be an integer, got number 1.0"),
])
def test_a_value_yaml_or_a_rule_cannot_use_is_refused_at_its_line(tmp_path, value, fragment):
    """Values a tag or a number's size makes unreadable, and numbers no rule can use,
    are refused with the file and line, not raised out of the reader."""
    folder = write_rules(tmp_path / "rules", {"evil.yaml": (
        f"tenant: evil\ncampaigns:\n  - name: X\n    triggers: [{{activity: open_email}}]\n"
        f"    priority: {value}\n")})
    single_error(check_rules(folder), str(folder / "evil.yaml"), 5, fragment)


@pytest.mark.parametrize("text, line, fragment", [
    ("tenant: evil\ncampaigns: true\n", 2, "campaigns must be an array"),
    ("tenant: \"evil\\n\"\n", 1, "may hold only letters"),
    ("tenant: evil\ncampaigns:\n  - name: X\n    triggers: [{activity: open_email}]\n    flow:\n"
     "      - wait: {duration: {n: 100000000000000000000, unit: months}}\n", 6, "longer than 100 years"),
    ("tenant: evil\ncampaigns:\n  - name: X\n    type: batch\n    schedule: {every: {n: 100000, unit: months}}\n"
     "    flow: [{send_email: {template: welcome}}]\n", 5, "longer than 100 years"),
    ("tenant: evil\ncampaigns:\n  - name: X\n    triggers: [{activity: open_email}]\n    flow:\n"
     "      - wait: {duration: {n: 1.0, unit: minutes}}\n", 6, "must be an integer"),
    ("tenant: evil\ncampaigns:\n  - name: X\n    triggers: [{activity: open_email}]\n    flow:\n"
     "      - change_score: {delta: 10000000000}\n", 6, "must be at most 1000000000"),
    (f"tenant: evil\nexperiences:\n  - name: E\n    placement: p\n    variants: [{{name: a, weight: {BIG}, json: 1}}]\n",
     5, "must be at most 1000000000"),
    (f"tenant: evil\nexperiences:\n  - name: E\n    placement: p\n    variants: [{{name: a, weight: 1, json: 1}}]\n"
     f"    control: {{weight: {BIG}}}\n", 6, "must be at most 1000000000"),
])
def test_rules_that_would_fail_or_overflow_when_run_are_refused_at_load(tmp_path, text, line, fragment):
    """Each of these loaded and then raised (a list that is not one, a weight too large
    for a float) or put times past the year 9999 or times that are not whole
    milliseconds into the profiles (a duration of 10**20 months, n: 1.0)."""
    folder = write_rules(tmp_path / "rules", {"evil.yaml": text})
    single_error(check_rules(folder), str(folder / "evil.yaml"), line, fragment)


@pytest.mark.parametrize("broken", [
    "tenant: evil\ncampaigns:\n  - name: X\n\ttriggers: []\n",                     # a tab
    "tenant: evil\nsettings: {lists: [&x a, *x]}\n",                               # an alias
    "tenant: evil\ncampaigns: [unclosed\n",                                         # a syntax error
    "tenant: 'evil'  # the tenant\nsettings: {lists: [\xff]}\n",                    # not UTF-8 (written as latin-1)
])
def test_a_file_that_does_not_read_refuses_the_tenant_it_names_and_no_other(tmp_path, broken):
    from orion.rules.compiler import load_serving_rules

    folder = write_rules(tmp_path / "rules", {"evil-extra.yaml": "tenant: evil\n", "acme.yaml": "tenant: acme\n"})
    (folder / "evil.yaml").write_bytes(broken.encode("latin-1"))
    rules, refused = load_serving_rules(folder)
    assert list(refused) == ["evil"] and refused["evil"][0].file == str(folder / "evil.yaml")
    assert "acme" in rules.tenants and "evil" not in rules.tenants


def test_a_tenants_patterns_share_one_budget_of_compiled_program_and_another_tenant_has_its_own(tmp_path):
    """Small patterns that each compile to a large program (\\pN{1000}: 233,000 RE2
    instructions) stalled a load for minutes by the hundred; past the tenant's budget
    the rest are refused, uncompiled, each at its line, and other tenants load."""
    from orion.rules.compiler import load_serving_rules
    from orion.rules.regex import MAX_TENANT_PROGRAM

    heavy = "".join(f'  - {{name: c{n}, triggers: [{{activity: device_event, where: {{device: {{matches: '
                    f'"\\\\pN{{1000}}<{n}>"}}}}}}]}}\n' for n in range(300))
    folder = write_rules(tmp_path / "rules", {"evil.yaml": "tenant: evil\ncampaigns:\n" + heavy})
    (folder / "acme.yaml").write_text("tenant: acme\ncampaigns:\n" + "".join(
        f'  - {{name: c{n}, triggers: [{{activity: visit_web_page, where: {{url: {{matches: "^/p{n}"}}}}}}]}}\n'
        for n in range(300)))
    rules, refused = load_serving_rules(folder)
    assert list(refused) == ["evil"] and "acme" in rules.tenants
    over = [error for error in refused["evil"] if f"more than {MAX_TENANT_PROGRAM:,} RE2 instructions" in error.message]
    assert len(over) == len(refused["evil"]) and 280 <= len(over) < 300, len(over)
    assert over[0].line == 3 + 300 - len(over)  # the first pattern past the budget, and each after it


def test_a_tenants_templates_share_one_budget_of_source_compiled_at_load(tmp_path, monkeypatch):
    """Each template file is compiled once at load, whatever includes it, and a tenant's
    templates hold at most MAX_TENANT_TEMPLATE_BYTES in all (here made small): past it
    the template is refused at its line, and the next tenant is not slowed."""
    from orion.rules import compiler

    # The budget made small, not a mock: reaching the real 3,000,000 characters means
    # compiling megabytes of Jinja (about 30 s); the counting is the same either way.
    monkeypatch.setattr(compiler, "MAX_TENANT_TEMPLATE_BYTES", 40_000)
    body = "{% block subject %}s{% endblock %}{% block text %}" + "{{ lead.first_name }} " * 500 + "{% endblock %}"
    templates = {f"evil/t{n}.j2": body for n in range(4)}  # about 11,000 characters each
    templates["evil/all.j2"] = "".join(f"{{% include 't{n}.j2' %}}" for n in range(3)) + \
        "{% block subject %}all{% endblock %}"
    folder = write_rules(tmp_path / "rules", {"evil.yaml": """
        tenant: evil
        campaigns:
          - name: X
            triggers: [{activity: open_email}]
            flow:
              - send_email: {template: all}
              - send_email: {template: t0}
              - send_email: {template: t1}
              - send_email: {template: t3}
    """}, templates)
    errors = check_rules(folder)
    # all, with the three it includes, fits (t0 and t1 are not compiled again); t3 does not
    assert [(e.line, "past 40,000 characters of source in all" in e.message) for e in errors] == [(9, True)], errors
