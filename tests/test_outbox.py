"""The outbox on every backend (SQLite, a folder of .eml files, and MySQL on the real
MariaDB): queueing is idempotent by (tenant, campaign, lead, run), also when the sink
retries a whole bundle; claim, finish and retry move an email through its states; held
emails and webhook calls are kept.

    .venv/bin/python -m pytest -q tests/test_outbox.py
"""
from __future__ import annotations

import pytest
from store_services import _mysql_connect, mysql_uri

from orion.campaigns.flows import EmailRequest, HeldEmail, WebhookCall
from orion.campaigns.outbox import (
    BOUNCED, HELD, QUEUED, SENT, email_record, held_record, open_outbox, webhook_record,
)
from orion.campaigns.email import AssembledEmail

T0 = 1_800_000_000_000


@pytest.fixture(params=["sqlite", "eml", "mysql"])
def outbox_uri(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    if request.param == "eml":
        return f"eml:///{tmp_path / 'outbox'}"
    database = request.getfixturevalue("mysql_database")
    uri = mysql_uri(database)
    connection = _mysql_connect(database)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS outbox")
    connection.close()
    return uri


def assembled(lead: str, run: str = "e1#0") -> AssembledEmail:
    message = f"To: {lead}@example.com\nSubject: hi\n\nhello {lead}\n".encode()
    return AssembledEmail("acme", "Welcome", lead, run, "welcome", f"{lead}@example.com", message, T0)


def test_queueing_twice_queues_once(outbox_uri):
    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        outbox.init()  # safe to rerun
        records = [email_record(assembled(str(i))) for i in range(10)]
        assert outbox.queue(records) == 10
        assert outbox.queue(records) == 0
        assert outbox.queue(records[:3] + [email_record(assembled("10"))]) == 1
        assert sorted(outbox.keys()) == sorted(("acme", "Welcome", str(i), "e1#0") for i in range(11))
        assert outbox.counts() == {"email:queued": 11}


def test_an_email_already_sent_is_not_queued_again(outbox_uri):
    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        outbox.queue([email_record(assembled("1")), email_record(assembled("2"))])
        claimed = outbox.claim(10, T0)
        assert sorted(c.lead_id for c in claimed) == ["1", "2"]
        assert outbox.claim(10, T0) == []  # claimed: nobody else gets them
        one, two = sorted(claimed, key=lambda c: c.lead_id)
        assert one.payload.endswith(b"hello 1\n") and one.recipient == "1@example.com"
        outbox.finish(one, SENT, T0 + 1)
        outbox.retry_later(two, T0 + 60_000, "451 try later")
        assert outbox.queue([email_record(assembled("1"))]) == 0
        assert outbox.claim(10, T0 + 1) == []  # not due yet
        (again,) = outbox.claim(10, T0 + 60_000)
        assert again.lead_id == "2" and again.attempts == 1
        outbox.finish(again, BOUNCED, T0 + 60_001, "550 no such user")
        assert outbox.counts() == {"email:sent": 1, "email:bounced": 1}
        assert outbox.keys(SENT) == [("acme", "Welcome", "1", "e1#0")]


def test_a_claim_whose_lease_ran_out_is_taken_again(outbox_uri):
    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        outbox.queue([email_record(assembled("1"))])
        assert len(outbox.claim(10, T0)) == 1  # that sender dies
        assert outbox.claim(10, T0 + 1000, lease_ms=60_000) == []
        assert len(outbox.claim(10, T0 + 61_000, lease_ms=60_000)) == 1


def test_held_emails_and_webhooks_are_kept(outbox_uri):
    request = EmailRequest("acme", "1", "Promo", "e9#0", "newsletter", False, T0, {"email": "a@example.com"}, {})
    held = HeldEmail(request, "communication_limit_per_day", "2 already sent")
    hook = WebhookCall("acme", "1", "Promo", "e9#1", "crm_sync", T0, {"id": "1"})
    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        assert outbox.queue([held_record(held), webhook_record(hook)]) == 2
        assert outbox.queue([held_record(held), webhook_record(hook)]) == 0
        assert outbox.counts() == {"email:held": 1, "webhook:queued": 1}
        assert outbox.keys(HELD) == [("acme", "Promo", "1", "e9#0")]
        assert outbox.claim(10, T0) == []  # held mail is not sent


def test_a_retried_bundle_of_the_sink_queues_nothing_twice(outbox_uri):
    from orion.transforms.flows import _QueueEmailsFn

    bundle = [assembled(str(i)) for i in range(25)]

    def run_bundle(fn, fail_after=None):
        fn.start_bundle()
        for n, email in enumerate(bundle):
            if fail_after is not None and n == fail_after:
                raise RuntimeError("worker lost")  # the runner will retry the whole bundle
            fn.process(email)
        fn.finish_bundle()

    fn = _QueueEmailsFn(outbox_uri, batch_size=10)
    fn.setup()
    with pytest.raises(RuntimeError):
        run_bundle(fn, fail_after=17)  # the first 10 were flushed before the failure
    run_bundle(fn)  # the retry
    run_bundle(fn)  # and a duplicate execution of the same bundle
    fn.teardown()
    with open_outbox(outbox_uri) as outbox:
        keys = outbox.keys(QUEUED)
    assert sorted(keys) == sorted(("acme", "Welcome", str(i), "e1#0") for i in range(25))


def test_each_email_says_whether_it_is_operational_and_a_sender_can_hold_it(outbox_uri):
    """The send path's consent check needs to know which emails go even to a lead who
    unsubscribed; an email it holds ends `held` with the reason, beside those held when
    queued."""
    with open_outbox(outbox_uri) as outbox:
        outbox.init()
        receipt = assembled("1", "e1#0")._replace(operational=True)
        outbox.queue([email_record(receipt), email_record(assembled("2", "e2#0"))])
        claimed = {item.lead_id: item for item in outbox.claim(10, T0)}
        assert {lead: item.operational for lead, item in claimed.items()} == {"1": True, "2": False}
        outbox.finish(claimed["2"], HELD, T0, "unsubscribed: the lead unsubscribed (found when sending)")
        outbox.finish(claimed["1"], SENT, T0)
        assert outbox.counts() == {"email:held": 1, "email:sent": 1}
        assert outbox.keys(HELD) == [("acme", "Welcome", "2", "e2#0")]


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_an_outbox_made_before_emails_said_operational_gains_the_column(dialect, tmp_path, request):
    """`init` adds the column to an older outbox table; its rows read as not operational,
    so a lead who unsubscribed since they were queued is not sent them."""
    old_table = ("CREATE TABLE outbox (id {id}, key_digest {blob} NOT NULL UNIQUE, tenant {text} NOT NULL, "
                 "campaign {text} NOT NULL, lead_id {text} NOT NULL, run {text} NOT NULL, kind {short} NOT NULL, "
                 "status {short} NOT NULL, recipient {text} NOT NULL, template {text} NOT NULL, payload {blob2} "
                 "NOT NULL, detail TEXT, queued_at BIGINT NOT NULL, attempts INT NOT NULL DEFAULT 0, "
                 "next_attempt_at BIGINT NOT NULL DEFAULT 0, claimed_by {text}, claimed_at BIGINT, "
                 "finished_at BIGINT)")
    row = ("INSERT INTO outbox (key_digest, tenant, campaign, lead_id, run, kind, status, recipient, template, "
           "payload, queued_at) VALUES ({m}, 'acme', 'Welcome', 'old', 'e0#0', 'email', 'queued', "
           "'old@example.com', 'welcome', {m}, 1)")
    if dialect == "sqlite":
        import sqlite3

        uri = f"sqlite:///{tmp_path / 'old.db'}"
        with sqlite3.connect(tmp_path / "old.db") as connection:
            connection.execute(old_table.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", text="TEXT",
                                                short="TEXT", blob2="BLOB"))
            connection.execute(row.format(m="?"), (b"0123456789abcdef", b"hello"))
    else:
        database = request.getfixturevalue("mysql_database")
        uri = mysql_uri(database)
        connection = _mysql_connect(database)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS outbox")
            cursor.execute(old_table.format(id="BIGINT AUTO_INCREMENT PRIMARY KEY", blob="BINARY(16)",
                                            text="VARBINARY(255)", short="VARCHAR(16)", blob2="MEDIUMBLOB"))
            cursor.execute(row.format(m="%s"), (b"0123456789abcdef", b"hello"))
        connection.commit()
        connection.close()
    with open_outbox(uri) as outbox:
        outbox.init()
        outbox.init()  # safe to rerun
        outbox.queue([email_record(assembled("new")._replace(operational=True))])
        claimed = {item.lead_id: item.operational for item in outbox.claim(10, T0)}
    assert claimed == {"old": False, "new": True}
