"""Email assembly: tokens (lead.* with defaults, campaign.*, my.* overridden by the
request), HTML autoescaped but not text, a valid MIME message with List-Unsubscribe,
the sandbox refusing a template that reaches for Python internals, a template that
fails for one lead dead-lettered while the rest go on, and a template that does not
compile refused at load time with file and line.

    .venv/bin/python -m pytest -q tests/test_email.py
"""
from __future__ import annotations

import email
from email import policy

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from orion.campaigns.email import TEMPLATE_FAILED, TEMPLATE_UNSAFE, AssemblyError, EmailAssembler
from orion.campaigns.flows import EmailRequest
from orion.rules import RuleErrors, load_rules

RULES = """
tenant: acme
campaigns:
  - name: Hello
    triggers: [{activity: open_email}]
    flow:
      - send_email: {template: hello}
      - send_email: {template: nosy}
      - send_email: {template: divide}
"""
HELLO = """{% block subject %}Hi {{ lead.first_name | default("there") }} from {{ campaign.name }}{% endblock %}
{% block html %}<p>Hello {{ lead.first_name | default("there") }} & {{ my.product | default("Orion") }}</p>{% endblock %}
{% block text %}Hello {{ lead.first_name | default("there") }} & {{ my.product | default("Orion") }} ({{ campaign.tenant }}){% endblock %}
"""
NOSY = "{% block subject %}x{% endblock %}{% block text %}{{ ''.__class__.__mro__ }}{% endblock %}"
DIVIDE = "{% block subject %}x{% endblock %}{% block text %}{{ 100 // lead.score }}{% endblock %}"


@pytest.fixture
def rules_dir(tmp_path):
    (tmp_path / "acme.yaml").write_text(RULES)
    own = tmp_path / "templates" / "acme"
    own.mkdir(parents=True)
    (own / "hello.j2").write_text(HELLO)
    (own / "nosy.j2").write_text(NOSY)
    (own / "divide.j2").write_text(DIVIDE)
    load_rules(tmp_path)  # the rules (and their templates) load
    return tmp_path


def request(template="hello", lead_id="1", tokens=None, **lead):
    lead = {"id": lead_id, "email": f"lead{lead_id}@example.com", "score": 0, **lead}
    return EmailRequest("acme", lead_id, "Hello", "e1#0", template, False, 1_800_000_000_000, lead, tokens or {})


def parse(message: bytes):
    parsed = email.message_from_bytes(message, policy=policy.default)
    assert parsed.defects == []
    assert parsed.get_content_type() == "multipart/alternative"
    return parsed


def test_tokens_defaults_and_overrides(rules_dir):
    assembler = EmailAssembler(rules_dir, campaign_tokens={("acme", "Hello"): {"product": "Rockets"}})
    subject, html, text = assembler.render(request(first_name="Ada"))
    assert subject == "Hi Ada from Hello"
    assert html == "<p>Hello Ada & Rockets</p>"  # the template's own markup is kept
    assert text == "Hello Ada & Rockets (acme)"  # not escaped
    subject, _, text = assembler.render(request(tokens={"product": "Satellites"}))
    assert subject == "Hi there from Hello" and "Satellites" in text


def test_lead_values_are_escaped_in_html(rules_dir):
    _, html, text = EmailAssembler(rules_dir).render(request(first_name="<script>x</script>"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>x</script>" in text


def test_the_message_is_valid_mime_with_list_unsubscribe(rules_dir):
    built = EmailAssembler(rules_dir).assemble(request(first_name="Zoë"))
    parsed = parse(built.message)
    assert parsed["To"] == "lead1@example.com"
    assert parsed["Subject"] == "Hi Zoë from Hello"
    assert parsed["List-Unsubscribe"].startswith("<https://unsubscribe.acme.example/u?l=1&t=")
    assert "mailto:unsubscribe@acme.example" in parsed["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Orion-Campaign"] == "Hello" and parsed["X-Orion-Run"] == "e1#0"
    assert parsed["Message-ID"].endswith("@acme.orion>")
    assert parsed.get_body(("plain",)).get_content().strip() == "Hello Zoë & Orion (acme)"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Hello Zoë & Orion</p>"


def test_the_message_id_follows_the_idempotency_key(rules_dir):
    assembler = EmailAssembler(rules_dir)
    one = parse(assembler.assemble(request()).message)["Message-ID"]
    same = parse(assembler.assemble(request()).message)["Message-ID"]
    other = parse(assembler.assemble(request(lead_id="2")).message)["Message-ID"]
    assert one == same != other


def test_the_sandbox_refuses_python_internals(rules_dir):
    with pytest.raises(AssemblyError) as refused:
        EmailAssembler(rules_dir).render(request("nosy"))
    assert refused.value.reason == TEMPLATE_UNSAFE
    assert "__class__" in refused.value.detail


def test_a_header_cannot_be_injected_through_a_token(rules_dir):
    built = EmailAssembler(rules_dir).assemble(request(first_name="Ada\r\nBcc: victim@example.com"))
    parsed = parse(built.message)
    assert parsed["Bcc"] is None and "Bcc" in parsed["Subject"]
    with pytest.raises(AssemblyError):
        EmailAssembler(rules_dir).assemble(request(email="a@example.com\nBcc: b@example.com"))


def test_a_template_failing_for_one_lead_dead_letters_that_lead_only(rules_dir):
    from orion.transforms.flows import AssembleEmails

    requests = [request("divide", lead_id=str(i), score=i) for i in range(5)]  # lead 0: division by zero
    pipeline = beam.Pipeline()
    emails, dead = pipeline | beam.Create(requests) | AssembleEmails(str(rules_dir))
    assert_that(emails | "Leads" >> beam.Map(lambda e: e.lead_id), equal_to(["1", "2", "3", "4"]), label="Emails")
    assert_that(dead | "Reasons" >> beam.Map(lambda d: (d.reason, d.element["lead_id"], "ZeroDivisionError" in d.detail)),
                equal_to([(TEMPLATE_FAILED, "0", True)]), label="Dead")
    pipeline.run().wait_until_finish()


def test_a_template_that_does_not_compile_is_refused_at_load_time(rules_dir):
    (rules_dir / "templates" / "acme" / "hello.j2").write_text("{% block subject %}\n{{ lead.x }\n{% endblock %}")
    with pytest.raises(RuleErrors) as errors:
        load_rules(rules_dir)
    message = str(errors.value.errors[0])
    assert "hello.j2:2" in message and "does not compile" in message


def test_a_filter_or_test_the_sandbox_lacks_is_refused_at_load_time_even_inside_an_if(rules_dir):
    # Jinja compiles an unknown filter or test inside {% if %} and fails only when a lead
    # reaches that block: the load refuses it, with the file, the line and a close name.
    for source, wanted in (
            ("{% block subject %}Hi{% endblock %}\n{% block text %}{% if lead.vip %}\n{{ lead.name | uppr }}"
             "{% endif %}{% endblock %}", ["hello.j2:3", "no filter named 'uppr'", "did you mean 'upper'"]),
            ("{% block subject %}{% if lead.score is evn %}Hi{% endif %}{% endblock %}",
             ["hello.j2:1", "no test named 'evn'", "did you mean 'even'"]),
            ("{% block subject %}{{ [1, 2] | select('od') | join }}{% endblock %}", ["hello.j2:1", "no test named 'od'"])):
        (rules_dir / "templates" / "acme" / "hello.j2").write_text(source)
        with pytest.raises(RuleErrors) as errors:
            load_rules(rules_dir)
        message = str(errors.value.errors[0])
        assert "does not compile" in message and all(part in message for part in wanted), message
    (rules_dir / "templates" / "acme" / "hello.j2").write_text(
        "{% block subject %}{% if lead.score is even %}{{ lead.name | upper }}{% endif %}{% endblock %}")
    load_rules(rules_dir)  # known names load


def test_a_template_cannot_change_the_leads_data(rules_dir):
    (rules_dir / "templates" / "acme" / "nosy.j2").write_text(
        "{% block subject %}x{% endblock %}{% block text %}{{ lead.update({'email': 'thief@example.com'}) }}{% endblock %}")
    lead_request = request("nosy")
    with pytest.raises(AssemblyError) as refused:
        EmailAssembler(rules_dir).assemble(lead_request)
    assert refused.value.reason == TEMPLATE_UNSAFE and "update" in refused.value.detail
    assert lead_request.lead["email"] == "lead1@example.com"


def test_a_template_over_its_budget_fails_for_that_lead_only(rules_dir):
    from orion.campaigns.email import TEMPLATE_BUDGET, TEMPLATE_TOO_LARGE

    (rules_dir / "templates" / "acme" / "nosy.j2").write_text(
        "{% block subject %}x{% endblock %}{% block text %}{% for i in range(lead.score) %}"
        "{% for j in range(lead.score) %}.{% endfor %}{% endfor %}{% endblock %}")
    assembler = EmailAssembler(rules_dir)
    assert assembler.render(request("nosy", score=30))[2] == "." * 900
    with pytest.raises(AssemblyError) as refused:
        assembler.render(request("nosy", score=10_000))  # 10**8 loop steps
    assert refused.value.reason in (TEMPLATE_BUDGET, TEMPLATE_TOO_LARGE)
    assert assembler.render(request("nosy", lead_id="2", score=3))[2] == "." * 9


def test_a_template_that_extends_another_renders_the_blocks_it_inherits(rules_dir):
    """A designer's layout: base.j2 holds the subject, the text and an html frame;
    child.j2 extends it and overrides the html, calling super() for the frame's part."""
    own = rules_dir / "templates" / "acme"
    (own / "base.j2").write_text(
        "{% block subject %}News for {{ lead.first_name }}{% endblock %}"
        "{% block html %}<footer>acme</footer>{% endblock %}"
        "{% block text %}Plain news for {{ lead.first_name }}{% endblock %}")
    (own / "child.j2").write_text('{% extends "base" %}{% block html %}<p>child</p>{{ super() }}{% endblock %}')
    (own / "grandchild.j2").write_text('{% extends "child" %}{% block subject %}Re: {{ super() }}{% endblock %}')
    (own / "loop.j2").write_text('{% extends "loop" %}{% block html %}x{% endblock %}')
    assembler = EmailAssembler(rules_dir)
    assert assembler.render(request("child", first_name="Ada")) == (
        "News for Ada", "<p>child</p><footer>acme</footer>", "Plain news for Ada")
    assert assembler.render(request("grandchild", first_name="Ada")) == (
        "Re: News for Ada", "<p>child</p><footer>acme</footer>", "Plain news for Ada")
    with pytest.raises(AssemblyError) as looped:
        assembler.render(request("loop"))
    assert looped.value.reason == TEMPLATE_FAILED and "extends itself" in looped.value.detail


@pytest.mark.parametrize("source, blocks", [
    ("Hello {{ lead.first_name }}", "none"),                            # no block at all
    ("{% block subjet %}Hi{% endblock %}{% block body %}x{% endblock %}", "body, subjet"),  # misspelt
])
def test_a_template_with_none_of_the_email_blocks_is_refused_at_load(rules_dir, source, blocks):
    (rules_dir / "templates" / "acme" / "hello.j2").write_text(source)
    with pytest.raises(RuleErrors) as refused:
        load_rules(rules_dir)
    message = refused.value.errors[0].message
    assert "defines none of the blocks an email renders" in message and f"its blocks: {blocks}" in message
    # a template whose blocks are its layout's is fine
    (rules_dir / "templates" / "acme" / "layout.j2").write_text("{% block subject %}s{% endblock %}")
    (rules_dir / "templates" / "acme" / "hello.j2").write_text('{% extends "layout" %}')
    load_rules(rules_dir)
