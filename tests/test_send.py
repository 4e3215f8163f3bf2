"""The send path against a real SMTP server on loopback (aiosmtpd): flows -> assembly ->
outbox -> `orion send` -> SMTP. Every message received parses as valid MIME with the
lead's own tokens; a 5xx recipient is a hard bounce, a 4xx one is retried (then a soft
bounce), and every outcome is fed back as an activity intake accepts. The per-tenant
rate limit is a token bucket, checked with a controlled clock.

    .venv/bin/python -m pytest -q tests/test_send.py
"""
from __future__ import annotations

import argparse
import email
import json
import socket
import sqlite3
from email import policy

import pytest

from orion.activities import ActivityTypes, parse_activity
from orion.campaigns.email import EmailAssembler
from orion.campaigns.flows import FlowEngine
from orion.campaigns.outbox import email_record, open_outbox
from orion.campaigns.send import ConsentCheck, RateLimiter, Sender, add_send_command
from orion.rules import load_rules

try:
    from aiosmtpd.controller import Controller
except ImportError:  # pragma: no cover - the message says what to install
    Controller = None

RULES = """
tenant: acme
campaigns:
  - name: Welcome
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    flow:
      - send_email: {template: welcome}
"""
T0 = 1_800_000_000_000


class Mailbox:
    """Accepts mail, except: recipients hard*@ get 550, soft*@ always 451, flaky*@ 451 once."""

    def __init__(self):
        self.messages: list[tuple[list[str], bytes]] = []
        self.flaked: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("hard"):
            return "550 5.1.1 no such user"
        if address.startswith("soft"):
            return "451 4.3.0 mailbox busy"
        if address.startswith("flaky") and address not in self.flaked:
            self.flaked.add(address)
            return "451 4.3.0 try again"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    if Controller is None:
        pytest.fail("the send tests need aiosmtpd: .venv/bin/pip install -e '.[test]' (or pip install aiosmtpd)",
                    pytrace=False)
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield mailbox, controller.hostname, controller.port
    controller.stop()


@pytest.fixture
def queued_outbox(tmp_path):
    """Ten leads through the Welcome flow, assembled, queued in a SQLite outbox."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "acme.yaml").write_text(RULES)
    rules = load_rules(tmp_path / "rules")
    engine = FlowEngine(rules)
    assembler = EmailAssembler(tmp_path / "rules")
    names = ["ok0", "ok1", "ok2", "ok3", "ok4", "ok5", "hard0", "soft0", "flaky0", "ok6"]
    records = []
    for i, name in enumerate(names):
        lead = str(100 + i)
        state = None
        for attribute, value in (("email", f"{name}@example.com"), ("first_name", name.capitalize())):
            state, _ = engine.process_activity(state, parse_activity({
                "event_id": f"d{i}{attribute}", "tenant": "acme", "lead_id": lead, "type": "data_value_changes",
                "occurred_at": T0 - 1000, "attributes": {"attribute": attribute, "new_value": value}}, ActivityTypes()))
        _, result = engine.process_activity(state, parse_activity({
            "event_id": f"s{i}", "tenant": "acme", "lead_id": lead, "type": "fill_out_form", "occurred_at": T0,
            "attributes": {"form": "Signup"}}, ActivityTypes()))
        records += [email_record(assembler.assemble(r)) for r in result.emails]
    uri = f"sqlite:///{tmp_path / 'outbox.db'}"
    with open_outbox(uri) as outbox:
        outbox.init()
        assert outbox.queue(records) == 10
    return uri


def send_command(argv):
    parser = argparse.ArgumentParser(prog="orion")
    add_send_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["send", *argv])
    return args.handler(args)


def test_orion_send_delivers_valid_mime_and_feeds_back_activities(smtp_server, queued_outbox, tmp_path):
    mailbox, host, port = smtp_server
    feedback = tmp_path / "feedback.jsonl"
    assert send_command(["--outbox", queued_outbox, "--no-consent-check", "--smtp", f"{host}:{port}", "--feedback", str(feedback),
                         "--retry-delay", "0", "--max-attempts", "3"]) == 0
    # flaky0 was retried (delay 0: due at once) and delivered on the next round
    received = {rcpts[0]: data for rcpts, data in mailbox.messages}
    assert sorted(received) == sorted(f"{n}@example.com" for n in
                                      ["ok0", "ok1", "ok2", "ok3", "ok4", "ok5", "ok6", "flaky0"])
    for address, data in received.items():
        parsed = email.message_from_bytes(data, policy=policy.default)
        assert parsed.defects == [] and parsed.get_content_type() == "multipart/alternative"
        name = address.split("@")[0].capitalize()
        assert parsed["To"] == address
        assert parsed["Subject"] == f"Welcome, {name}!"
        assert f"Hi {name}," in parsed.get_body(("plain",)).get_content()
        assert f"<p>Hi {name},</p>" in parsed.get_body(("html",)).get_content()
        assert parsed["List-Unsubscribe"] and parsed["X-Orion-Campaign"] == "Welcome"
    activities = [parse_activity(json.loads(line), ActivityTypes()) for line in feedback.read_text().splitlines()]
    kinds = sorted((a.type, a.attributes.get("category")) for a in activities)
    assert kinds == [("email_bounced", "hard"), ("email_bounced", "soft")] + [("email_delivered", None)] * 8
    assert all(a.tenant == "acme" and a.attributes["email"] == "welcome" for a in activities)
    with open_outbox(queued_outbox) as outbox:
        assert outbox.counts() == {"email:sent": 8, "email:bounced": 1, "email:failed": 1}
    # a second run sends nothing again
    assert send_command(["--outbox", queued_outbox, "--no-consent-check", "--smtp", f"{host}:{port}"]) == 0
    assert len(mailbox.messages) == 8


def test_a_server_that_is_down_leaves_the_mail_queued_for_a_retry(queued_outbox):
    with open_outbox(queued_outbox) as outbox:
        summary = Sender(outbox, "127.0.0.1", free_port(), consent=None, retry_delay_ms=60_000).drain()
        assert summary.retried == 10 and summary.delivered == 0
        assert outbox.counts() == {"email:queued": 10}


def test_the_rate_limit_is_per_tenant():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(5, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire("acme")
    assert slept == []  # a second's worth of burst
    limiter.acquire("acme")
    assert slept == [pytest.approx(0.2)]
    limiter.acquire("globex")  # another tenant has its own bucket
    assert len(slept) == 1
    for _ in range(10):
        limiter.acquire("acme")
    assert now[0] == pytest.approx(0.2 + 10 * 0.2)


CONSENT_RULES = """
tenant: acme
campaigns:
  - name: Promo
    triggers: [{activity: fill_out_form, where: {form: {is: Promo}}}]
    qualification: every_time
    flow:
      - send_email: {template: newsletter}
  - name: Receipt
    triggers: [{activity: fill_out_form, where: {form: {is: Order}}}]
    qualification: every_time
    flow:
      - send_email: {template: welcome, operational: true}
"""


def _event(event_id: str, lead: str, at: int, type_: str, **attributes) -> str:
    return json.dumps({"event_id": event_id, "tenant": "acme", "lead_id": lead, "type": type_,
                       "occurred_at": at, "attributes": attributes}) + "\n"


def _graph(tmp_path, name: str, lines: list[str], store: str, outbox: str) -> None:
    from orion.cli import main

    events = tmp_path / f"{name}.jsonl"
    events.write_text("".join(lines))
    assert main(["run", "--events", str(events), "--rules", str(tmp_path / "rules"), "--store", store,
                 "--outbox", outbox, "--out-dir", str(tmp_path / name)]) == 0


def test_an_email_whose_lead_unsubscribed_or_bounced_after_it_was_queued_is_held_when_sent(
        smtp_server, tmp_path, capsys):
    """The graph queues emails; before `orion send` drains them, the graph reads that one
    lead unsubscribed and another's address bounced hard. The send reads the profiles the
    graph wrote: the unsubscribed lead's promotion and the bounced lead's are held with
    the reason, the unsubscribed lead's operational receipt and everyone else's mail go."""
    mailbox, host, port = smtp_server
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "acme.yaml").write_text(CONSENT_RULES)
    store, outbox = f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'outbox.db'}"
    queued = []
    for n, lead in enumerate(("unsub", "bounced", "ok")):
        queued += [_event(f"e{n}", lead, T0, "data_value_changes", attribute="email", new_value=f"{lead}@example.com"),
                   _event(f"p{n}", lead, T0 + 1000, "fill_out_form", form="Promo")]
    queued.append(_event("o0", "unsub", T0 + 2000, "fill_out_form", form="Order"))
    _graph(tmp_path, "queued", queued, store, outbox)
    with open_outbox(outbox) as opened:
        assert opened.counts() == {"email:queued": 4}, "every email queued: nobody had unsubscribed yet"
    # Later activity, read by the graph before the outbox is drained.
    _graph(tmp_path, "later", [_event("u0", "unsub", T0 + 60_000, "unsubscribe_email", email="newsletter"),
                               _event("b0", "bounced", T0 + 60_000, "email_bounced", email="newsletter",
                                      category="hard")], store, outbox)
    capsys.readouterr()

    assert send_command(["--outbox", outbox, "--store", store, "--smtp", f"{host}:{port}"]) == 0
    printed = capsys.readouterr().out
    assert "delivered: 2" in printed and "held:      2" in printed, printed
    received = sorted((rcpts[0], email.message_from_bytes(data)["X-Orion-Campaign"])
                      for rcpts, data in mailbox.messages)
    assert received == [("ok@example.com", "Promo"), ("unsub@example.com", "Receipt")]
    with sqlite3.connect(tmp_path / "outbox.db") as connection:
        rows = dict(((lead, campaign), (status, detail)) for lead, campaign, status, detail in connection.execute(
            "SELECT lead_id, campaign, status, detail FROM outbox"))
    assert rows[("unsub", "Promo")][0] == "held" and rows[("unsub", "Promo")][1].startswith("unsubscribed:")
    assert rows[("bounced", "Promo")][0] == "held" and rows[("bounced", "Promo")][1].startswith("email_invalid:")
    assert rows[("unsub", "Receipt")][0] == rows[("ok", "Promo")][0] == "sent"
    # A second send finds nothing to send or hold.
    assert send_command(["--outbox", outbox, "--store", store, "--smtp", f"{host}:{port}"]) == 0
    assert len(mailbox.messages) == 2


def test_a_send_checks_its_emails_against_the_profiles_as_they_are_just_before_each_goes(smtp_server, tmp_path):
    """With a rate limit, a few emails are checked at a time, just before they go: a lead
    who unsubscribes while earlier emails are being sent is not sent the later one."""
    from orion.profiles import LeadRecord, encode_profile
    from orion.rules.model import LeadState
    from orion.store import open_store
    from orion.store.base import StoredProfile

    mailbox, host, port = smtp_server
    store_uri = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(store_uri)
    store.init()

    def profile(lead: str, **attributes) -> StoredProfile:
        record = LeadRecord()
        state = LeadState(attributes={"email": f"{lead}@example.com", **attributes})
        return StoredProfile("acme", lead, encode_profile(record._replace(flows=record.flows._replace(lead=state))))

    leads = [f"ok{n}" for n in range(4)]
    store.write_profiles([profile(lead) for lead in leads])
    outbox_uri = f"sqlite:///{tmp_path / 'outbox.db'}"
    from orion.campaigns.outbox import EMAIL, QUEUED, OutboxRecord
    records = [OutboxRecord("acme", "Promo", lead, "r1", EMAIL, QUEUED, f"{lead}@example.com", "newsletter",
                            b"Subject: hi\r\n\r\nhi\r\n", None, T0) for lead in leads]
    sleeps = []

    def sleep(seconds):  # the rate limit's wait: meanwhile, the last lead unsubscribes
        sleeps.append(seconds)
        store.write_profiles([profile("ok3", unsubscribed=True)])

    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        outbox.queue(records)
        sender = Sender(outbox, host, port, consent=ConsentCheck(open_store(store_uri)), rate_per_second=2,
                        sleep=sleep)
        summary = sender.drain()
    store.close()
    assert sleeps, "the rate limit waited between the checks"
    assert (summary.delivered, summary.held) == (3, 1)
    assert sorted(rcpts[0] for rcpts, _ in mailbox.messages) == ["ok0@example.com", "ok1@example.com",
                                                                  "ok2@example.com"]


def test_orion_send_needs_the_profiles_or_an_explicit_choice_to_send_without_them(queued_outbox, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        send_command(["--outbox", queued_outbox, "--smtp", f"127.0.0.1:{free_port()}"])
    assert exited.value.code == 2
    assert "--store" in capsys.readouterr().err
    # a store that is not there is refused, not made empty (it would hold nothing back)
    missing = tmp_path / "nowhere.db"
    assert send_command(["--outbox", queued_outbox, "--store", f"sqlite:///{missing}",
                         "--smtp", f"127.0.0.1:{free_port()}"]) == 2
    assert "no SQLite store" in capsys.readouterr().err and not missing.exists()
    with open_outbox(queued_outbox) as outbox:
        assert outbox.counts() == {"email:queued": 10}, "nothing was claimed"


def test_a_store_that_stops_answering_is_said_in_one_line_and_nothing_unchecked_is_sent(
        smtp_server, queued_outbox, monkeypatch, capsys):
    """A Bigtable store that does not answer within its read deadline:
    `orion send` says so and exits 2 before claiming anything; a send already draining
    stops with a StoreError (orion send: exit 1) and sends nothing it could not check."""
    from orion.store import open_store
    from orion.store.base import StoreError
    from orion.store.bigtable import BigtableStore

    mailbox, host, port = smtp_server
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(BigtableStore, "read_deadline", 2.0)  # the client's retries end sooner than in production
    store_uri = "bigtable://demo/local-dev/activities"

    assert send_command(["--outbox", queued_outbox, "--store", store_uri, "--smtp", f"{host}:{port}"]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"orion: cannot read the lead profiles in --store: {store_uri} did not answer within 2 s: "
                           "ServiceUnavailable"), said
    assert "Traceback" not in said

    with open_outbox(queued_outbox) as outbox:
        assert outbox.counts() == {"email:queued": 10}, "nothing was claimed"
        sender = Sender(outbox, host, port, consent=ConsentCheck(open_store(store_uri)))
        with pytest.raises(StoreError, match="did not answer within 2 s"):
            sender.drain()
        sender.consent.close()
    assert mailbox.messages == [], "no email went unchecked"
