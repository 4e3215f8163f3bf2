"""The send path: drain an outbox to an SMTP server, with a per-tenant rate limit and
retries, and feed `email_delivered` / `email_bounced` activities back into intake (a
JSONL file the graph reads, or a Pub/Sub topic it subscribes to). It runs apart from the
flows: the graph queues, this sends, at its own pace.

A 2xx answer is delivered. A 5xx answer for the recipient (or the message) is a hard
bounce. A 4xx answer or a lost connection is retried with exponential backoff; after
`max_attempts` it is a soft bounce. Feedback event ids derive from the outbox key, so a
record sent twice after a crash feeds back one activity (intake drops the duplicate).

An email waits in the outbox between its flow and its send: behind a rate limit, a
retry, a large batch. Its lead may unsubscribe, or bounce another email, in between. So
each email is checked again against its lead's profile as it is sent (`ConsentCheck`,
the profiles of `--store`, read for a few emails at a time just before they go): an
email to a lead who has no address now, whose address bounced hard, or who unsubscribed
(unless the email is operational) is not sent; it becomes `held` with the reason, as a
flow holds one, and is counted. A lead with no profile is sent its email (nothing says
otherwise); one whose profile does not read is held (`bad_lead_profile`). A store that
does not answer stops the send, sending nothing more: the emails it had claimed are
sent by a later run, once their lease ends.

    orion send --outbox sqlite:///orion-data/outbox.db --store sqlite:///orion-data/activities.db \
        --smtp 127.0.0.1:2525 --feedback orion-data/feedback.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import smtplib
import sys
import time
from typing import Callable, NamedTuple, Sequence

from orion.activities import Activity
from orion.argtypes import new_file, non_negative, positive_float, positive_int
from orion.campaigns.outbox import BOUNCED, FAILED, HELD, SENT, Claimed, Outbox, open_outbox

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_DELAY_MS = 30_000
# Emails checked against their leads' profiles at once, just before they are sent (with
# a rate limit, each is checked alone, once its turn has come).
CHECK_AT_ONCE = 50
BAD_LEAD_PROFILE = "bad_lead_profile"  # as a batch send names it


class ConsentCheck:
    """Whether each claimed email may still go, from its lead's profile as it is now in
    `store` (an ActivityStore: the one the graph writes the profiles to): `blocks` gives,
    per email, None or the (reason, detail) it is held for (flows.consent_block)."""

    def __init__(self, store):
        self.store = store

    def blocks(self, claimed: Sequence[Claimed]) -> list[tuple[str, str] | None]:
        """StoreError when the store does not answer."""
        from orion.campaigns.flows import consent_block
        from orion.profiles import ProfileError, decode_profile

        from orion.store.base import store_error

        try:
            texts = self.store.read_profiles([(item.tenant, item.lead_id) for item in claimed])
        except Exception as err:  # noqa: BLE001 - a store client's own error (past its deadline) is a StoreError
            said = store_error(err)
            if said is None:
                raise
            raise said from err
        found: list[tuple[str, str] | None] = []
        for item, text in zip(claimed, texts):
            if text is None:
                found.append(None)
                continue
            try:
                attributes = decode_profile(text).flows.lead.attributes
            except ProfileError as err:
                found.append((BAD_LEAD_PROFILE, f"the lead's profile does not read: {err}"))
                continue
            found.append(consent_block(attributes, item.operational))
        return found

    def close(self) -> None:
        self.store.close()


class RateLimiter:
    """A token bucket per tenant: at most `per_second` messages a second, bursts of up
    to one second's worth. `acquire` sleeps until the tenant may send."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.per_second = per_second
        self.clock = clock
        self.sleep = sleep
        self.buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def acquire(self, tenant: str) -> None:
        if not self.per_second:
            return
        capacity = max(1.0, self.per_second)
        tokens, at = self.buckets.get(tenant, (capacity, self.clock()))
        while True:
            now = self.clock()
            tokens = min(capacity, tokens + (now - at) * self.per_second)
            at = now
            if tokens >= 1.0 - 1e-9:  # float sums of sleeps land a hair under 1
                self.buckets[tenant] = (max(0.0, tokens - 1.0), at)
                return
            self.sleep((1.0 - tokens) / self.per_second)


class SendSummary(NamedTuple):
    delivered: int
    bounced: int
    retried: int
    failed: int
    held: int = 0  # not sent: the lead's profile forbade it when it was to go (ConsentCheck)

    def render(self) -> str:
        return (f"delivered: {self.delivered}\nbounced:   {self.bounced}\nretried:   {self.retried}\n"
                f"failed:    {self.failed}\nheld:      {self.held} (the lead unsubscribed, bounced or has no "
                "address now)")


def feedback_activity(claimed: Claimed, kind: str, at_ms: int, category: str | None = None) -> Activity:
    """email_delivered or email_bounced for a claimed email; the event id derives from
    the outbox key, so it is the same however often the email is tried."""
    digest = hashlib.sha1("\x1f".join((claimed.tenant, claimed.campaign, claimed.lead_id, claimed.run)).encode()
                          ).hexdigest()[:24]
    attributes = {"email": claimed.template}
    if kind == "email_bounced":
        attributes["category"] = category
    return Activity(f"{kind}-{digest}", claimed.tenant, claimed.lead_id, kind, at_ms, attributes)


class JsonLinesFeedback:
    """Appends feedback activities to a JSONL file (one the graph can read as events)."""

    def __init__(self, path: str):
        self.file = open(path, "a", encoding="utf-8")

    def publish(self, activity: Activity) -> None:
        self.file.write(json.dumps(activity.to_json_dict(), ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class PubSubFeedback:
    """Publishes feedback activities to a Pub/Sub topic (the emulator through
    PUBSUB_EMULATOR_HOST), the one `orion run --subscription` reads."""

    def __init__(self, topic: str):
        from google.cloud import pubsub_v1

        self.topic = topic
        self.client = pubsub_v1.PublisherClient()
        self.pending = []

    def publish(self, activity: Activity) -> None:
        data = json.dumps(activity.to_json_dict(), ensure_ascii=False).encode()
        self.pending.append(self.client.publish(self.topic, data))
        if len(self.pending) >= 500:
            self._wait()

    def _wait(self) -> None:
        for future in self.pending:
            future.result(timeout=60)
        self.pending = []

    def close(self) -> None:
        self._wait()


class _NoFeedback:
    def publish(self, activity: Activity) -> None:
        pass

    def close(self) -> None:
        pass


def _envelope_sender(template: str, tenant: str) -> str:
    return template.format(tenant=tenant)


class Sender:
    """Drains an outbox to one SMTP server. The SMTP connection is opened lazily and
    reopened after it drops; time and sleep are parameters so tests control them.
    `consent`: the ConsentCheck each email passes just before it is sent (None: none,
    every claimed email is sent)."""

    def __init__(self, outbox: Outbox, smtp_host: str, smtp_port: int, *, consent: ConsentCheck | None,
                 feedback=None,
                 rate_per_second: float | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 retry_delay_ms: int = DEFAULT_RETRY_DELAY_MS, envelope_from: str = "bounces@{tenant}.example",
                 batch_size: int = 200, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 sleep: Callable[[float], None] = time.sleep, timeout_s: float = 30.0):
        self.outbox = outbox
        self.consent = consent
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port
        self.feedback = feedback or _NoFeedback()
        self.limiter = RateLimiter(rate_per_second, sleep=sleep)
        self.max_attempts = max_attempts
        self.retry_delay_ms = retry_delay_ms
        self.envelope_from = envelope_from
        self.batch_size = batch_size
        self.clock_ms = clock_ms
        self.sleep = sleep
        self.timeout_s = timeout_s
        self.smtp: smtplib.SMTP | None = None
        self.delivered = self.bounced = self.retried = self.failed = self.held = 0

    def summary(self) -> SendSummary:
        return SendSummary(self.delivered, self.bounced, self.retried, self.failed, self.held)

    def _connection(self) -> smtplib.SMTP:
        if self.smtp is None:
            self.smtp = smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_s)
        return self.smtp

    def _drop(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
            self.smtp = None

    def drain(self, follow: bool = False, poll_s: float = 1.0, until: Callable[[], bool] | None = None) -> SendSummary:
        """Send until the outbox has nothing due (or, with follow, until `until()`)."""
        try:
            while True:
                claimed = self.outbox.claim(self.batch_size, self.clock_ms())
                for start in range(0, len(claimed), CHECK_AT_ONCE):
                    self.send_checked(claimed[start:start + CHECK_AT_ONCE])
                if not claimed:
                    if not follow or (until is not None and until()):
                        break
                    self.sleep(poll_s)
        finally:
            self._drop()
            self.feedback.close()
        return self.summary()

    def send_checked(self, claimed: Sequence[Claimed]) -> None:
        """Send the emails their leads' profiles still allow, hold the others: checked
        together just before they go or, with a rate limit, each once its turn has come
        (the limit may make it wait)."""
        if self.consent is None:
            for item in claimed:
                self.send_one(item)
        elif self.limiter.per_second:
            for item in claimed:
                self.limiter.acquire(item.tenant)
                self._send_or_hold(item, self.consent.blocks([item])[0], acquired=True)
        else:
            for item, block in zip(claimed, self.consent.blocks(claimed)):
                self._send_or_hold(item, block)

    def _send_or_hold(self, item: Claimed, block: tuple[str, str] | None, acquired: bool = False) -> None:
        if block is None:
            self.send_one(item, acquired)
            return
        reason, detail = block
        self.outbox.finish(item, HELD, self.clock_ms(), f"{reason}: {detail} (found when sending)")
        self.held += 1

    def send_one(self, item: Claimed, acquired: bool = False) -> None:
        """Send one email (`acquired`: its turn under the rate limit has been taken)."""
        if not acquired:
            self.limiter.acquire(item.tenant)
        sender = _envelope_sender(self.envelope_from, item.tenant)
        try:
            refused = self._connection().sendmail(sender, [item.recipient], item.payload)
        except smtplib.SMTPRecipientsRefused as err:
            code, message = err.recipients.get(item.recipient, (550, b"refused"))
            self._answer(item, code, _decode(message))
            return
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as err:
            self._answer(item, err.smtp_code, _decode(err.smtp_error))
            return
        except (smtplib.SMTPException, OSError) as err:
            self._drop()
            self._transient(item, f"{type(err).__name__}: {err}")
            return
        if refused:  # one recipient per message, so this is never partial
            code, message = refused[item.recipient]
            self._answer(item, code, _decode(message))
            return
        now = self.clock_ms()
        self.outbox.finish(item, SENT, now)
        self.feedback.publish(feedback_activity(item, "email_delivered", now))
        self.delivered += 1

    def _answer(self, item: Claimed, code: int, message: str) -> None:
        if 500 <= code < 600:
            now = self.clock_ms()
            self.outbox.finish(item, BOUNCED, now, f"{code} {message}")
            self.feedback.publish(feedback_activity(item, "email_bounced", now, "hard"))
            self.bounced += 1
        else:
            self._transient(item, f"{code} {message}")

    def _transient(self, item: Claimed, detail: str) -> None:
        now = self.clock_ms()
        if item.attempts + 1 >= self.max_attempts:
            self.outbox.finish(item, FAILED, now, f"gave up after {item.attempts + 1} attempts: {detail}")
            self.feedback.publish(feedback_activity(item, "email_bounced", now, "soft"))
            self.failed += 1
            return
        delay = self.retry_delay_ms * (2 ** item.attempts)
        self.outbox.retry_later(item, now + delay, detail)
        self.retried += 1


def _decode(message) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, (bytes, bytearray)) else str(message)


def parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (a port from 1 to 65535), got {text!r}")
    return host, int(port)


def add_send_command(commands) -> None:
    parser = commands.add_parser(
        "send",
        help="drain an outbox to an SMTP server; feed delivered/bounced activities back",
        description="Send the queued emails of an outbox through an SMTP server, at most --rate "
        "messages a second per tenant, retrying transient failures; write an email_delivered or "
        "email_bounced activity per email to --feedback (JSONL, readable by orion run --events) or "
        "publish it to --feedback-topic (Pub/Sub). Each email is checked against its lead's profile "
        "in --store just before it goes: one to a lead who unsubscribed (unless operational), bounced "
        "hard or has no address since it was queued is held, not sent.",
    )
    parser.add_argument("--outbox", required=True, help="outbox URI: mysql://..., sqlite:///PATH, eml:///DIR")
    consent = parser.add_mutually_exclusive_group(required=True)
    consent.add_argument("--store", metavar="URI",
                         help="the store holding the lead profiles the graph writes (orion run --store; for batch "
                         "sends, their --leads database): each email is checked against its lead's profile as it "
                         "is sent")
    consent.add_argument("--no-consent-check", action="store_true",
                         help="send every queued email without reading the leads' profiles again (a lead who "
                         "unsubscribed after an email was queued is sent it)")
    parser.add_argument("--smtp", required=True, type=parse_host_port, metavar="HOST:PORT")
    parser.add_argument("--rate", type=positive_float, metavar="N", help="at most N messages a second per tenant")
    feedback = parser.add_mutually_exclusive_group()
    feedback.add_argument("--feedback", metavar="FILE.jsonl", type=new_file, help="append feedback activities here")
    feedback.add_argument("--feedback-topic", metavar="projects/P/topics/T", help="publish feedback here")
    parser.add_argument("--max-attempts", type=positive_int, default=DEFAULT_MAX_ATTEMPTS)
    parser.add_argument("--retry-delay", type=non_negative, default=DEFAULT_RETRY_DELAY_MS / 1000, metavar="SECONDS",
                        help="first retry delay, doubled per attempt (default: %(default)s)")
    parser.add_argument("--envelope-from", default="bounces@{tenant}.example",
                        help="SMTP envelope sender; {tenant} is replaced (default: %(default)s)")
    parser.add_argument("--follow", action="store_true", help="keep polling for new emails until Ctrl-C")
    parser.set_defaults(handler=_send)


def _send(args: argparse.Namespace) -> int:
    from orion.campaigns.outbox import OutboxError

    from orion.store.base import StoreError, store_error

    consent = None
    if args.store:
        from orion.store.opening import open_existing_store

        try:
            # (a SQLite store that is not there would be made empty, with no profile to hold an email for)
            store = open_existing_store(args.store)
            store.read_profiles([("", "")])  # a store that cannot be read is said now, not at the first email
        except Exception as err:  # noqa: BLE001 - a store's, its client's (past its deadline), or a bad URI
            said = err if isinstance(err, ValueError) else store_error(err)
            if said is None:
                raise
            print(f"orion: cannot read the lead profiles in --store: {said}", file=sys.stderr)
            return 2
        consent = ConsentCheck(store)
    try:
        outbox = open_outbox(args.outbox)
        outbox.init()
    except Exception as err:  # noqa: BLE001 - OutboxError, or a client's own (a file that is not SQLite)
        print(f"orion: {err}" if isinstance(err, OutboxError) else
              f"orion: the outbox cannot be opened: {type(err).__name__}: {err}", file=sys.stderr)
        if consent is not None:
            consent.close()
        return 2
    feedback = (JsonLinesFeedback(args.feedback) if args.feedback
                else PubSubFeedback(args.feedback_topic) if args.feedback_topic else None)
    host, port = args.smtp
    sender = Sender(outbox, host, port, consent=consent, feedback=feedback, rate_per_second=args.rate,
                    max_attempts=args.max_attempts, retry_delay_ms=int(args.retry_delay * 1000),
                    envelope_from=args.envelope_from)
    status = 0
    try:
        summary = sender.drain(follow=args.follow)
    except KeyboardInterrupt:
        summary = sender.summary()
    except StoreError as err:
        summary = sender.summary()
        print(f"orion: the lead store did not answer ({err}); stopped without sending the emails it could "
              "not check: a later orion send sends them once their lease ends (5 minutes)", file=sys.stderr)
        status = 1
    finally:
        outbox.close()
        if consent is not None:
            consent.close()
    print(summary.render())
    return status
