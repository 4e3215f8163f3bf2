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
