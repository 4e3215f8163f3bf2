"""Batch campaigns: select a campaign's members from the lead profiles and the activity
index with its filters, streaming, and send to each as it is found, so the first email
is queued long before the whole list is known. `--streams N --stream K` splits the
leads by a hash of the lead id (CRC32, computed by the database, so each stream reads
only its own leads): no lead is in two streams, and N streams can run on N workers.

The leads are those of the activity store's MySQL / MariaDB database, the one lead
database the activity graph (`orion run --store mysql://...`) writes:
- `lead_profiles` (the store's profile table, orion/store/mysql.py) holds each lead's
  profile, the one the graph keeps: attributes (the email address, `unsubscribed`,
  `email_invalid`), score, lists, campaign runs and the times of its recent
  non-operational emails. A row written with SQL, with attributes, score and lists but
  no encoded profile, is read from those columns;
- `leads` (the legacy table: one row per tenant and lead id) adds the leads that have no
  profile row, with an empty profile;
- history filters read `activity_index` (counts per lead, type and UTC day) for counters
  without conditions, and the `activities` table for counters with conditions.

Each member's flow runs on its profile: an email to a lead who unsubscribed, whose
address bounced or who has none is held, and the communication limits count the emails
the graph sent it. A send's run id defaults to its scheduled time, so running the same
scheduled send again (a retry, a second worker given the same stream) queues nothing
twice: the outbox key is (tenant, campaign, lead, run). Membership can be computed ahead
of the scheduled time (`orion campaign precompute`) and sent later from the file; given
`--leads` too, the send re-reads each member's profile, so what changed since (an
unsubscribe) still counts. A lead whose profile is unreadable, whose template fails, or
whose flow reaches a wait is dead-lettered with the reason; the send goes on.
docs/campaigns.md has the whole story.

    orion campaign init --leads mysql://root@127.0.0.1:3306/orion
    orion campaign run --rules orion/samples/rules --tenant acme --campaign "Monthly newsletter" \\
        --leads mysql://root@127.0.0.1:3306/orion --outbox mysql://root@127.0.0.1:3306/orion --streams 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import pymysql
import pymysql.cursors

from orion.activities import MS_PER_DAY, Activity, format_timestamp, parse_timestamp
from orion.argtypes import new_file, printable
from orion.deadletters import DeadLetter
from orion.rules.model import LeadState
from orion.store.base import StoreError, text_or_hex

_EPOCH_DAY = date(1970, 1, 1)
BAD_LEAD_PROFILE = "bad_lead_profile"
BAD_HISTORY_ROW = "bad_history_row"
BAD_MEMBERSHIP_LINE = "bad_membership_line"
BATCH_FLOW_WAITS = "batch_flow_waits"
BATCH_SOURCE = "batch_members"
# Rows fetched per round: small at first, so the first member is out at once.
_CHUNKS = (1, 16, 256, 2000)


class Member(NamedTuple):
    """A lead of the send: its state as the filters and the flow see it, and the times of
    its recent non-operational emails (the communication limits count them)."""

    lead_id: str
    state: LeadState
    sent: tuple = ()


class BatchSummary(NamedTuple):
    leads_read: int
    members: int
    queued: int  # new outbox records (emails, held emails, webhooks)
    held: int
    dead_letters: int
    first_queued_s: float | None  # from the start of the send to the first email committed
    elapsed_s: float

    def render(self) -> str:
        first = f"{self.first_queued_s * 1000:.1f} ms" if self.first_queued_s is not None else "none"
        rate = self.queued / self.elapsed_s * 3600 if self.elapsed_s else 0
        return (f"leads read:   {self.leads_read}\nmembers:      {self.members}\nqueued:       {self.queued}\n"
                f"held:         {self.held}\ndead letters: {self.dead_letters}\nfirst queued: {first}\n"
                f"elapsed:      {self.elapsed_s:.2f} s ({rate:,.0f} queued/hour)")

    def __add__(self, other: "BatchSummary") -> "BatchSummary":
        firsts = [f for f in (self.first_queued_s, other.first_queued_s) if f is not None]
        return BatchSummary(self.leads_read + other.leads_read, self.members + other.members,
                            self.queued + other.queued, self.held + other.held,
                            self.dead_letters + other.dead_letters, min(firsts) if firsts else None,
                            max(self.elapsed_s, other.elapsed_s))


def stream_of(lead_id: str, streams: int) -> int:
    """The stream a lead belongs to: CRC32 of its UTF-8 id, modulo the stream count (what
    MySQL's CRC32() computes for the VARBINARY column)."""
    return zlib.crc32(lead_id.encode("utf-8")) % streams


def _connect(uri: str, unbuffered: bool = False):

    from orion.store.mysql import parse_mysql_uri

    return pymysql.connect(**parse_mysql_uri(uri), charset="utf8mb4", autocommit=True, connect_timeout=10,
                           cursorclass=pymysql.cursors.SSCursor if unbuffered else pymysql.cursors.Cursor)


def init_lead_tables(uri: str) -> None:
    """The lead database's tables: the MySQL activity store's (`orion store init`):
    leads, activities, activity_index and lead_profiles. An older lead_profiles table
    (attributes, score and lists only) gains the profile columns."""
    from orion.store.mysql import MysqlStore

    store = MysqlStore(uri)
    try:
        store.init()
    finally:
        store.close()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


class _KeysRead(dict):
    """An empty history that remembers which counter keys a filter asked for."""

    def __init__(self):
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return default


def counters_read_by(campaign, counters, lead_attributes: dict | None = None) -> list:
    """The history counters a send of the campaign reads: those of its filters and of its
    flow steps' choices, each filter tried alone on a lead with an empty, recording
    history (a history filter looks its counter up first). A flow that requests a
    campaign may run any campaign of the tenant (the request is evaluated as an activity),
    so it reads every counter."""
    from orion.campaigns.choices import compile_filter

    history = _KeysRead()
    probe = LeadState({}, 0, frozenset(), {}, history)
    for found in campaign.filters:
        found.test(probe, 0)
    for step in campaign.flow:
        choices = step.get("choices", ())
        if "request_campaign" in step or any("request_campaign" in choice.get("then", {}) for choice in choices):
            return list(counters)
        for choice in choices:
            for spec in choice.get("if", ()):
                compile_filter(spec, lead_attributes or {})(probe, 0)
    return [c for c in counters if c.key in history.asked]


class _Histories:
    """History counters for a chunk of leads: from the activity index when a counter
    has no conditions, else by counting matching rows of the activities table. Only
    the counters the campaign's filters read are loaded."""

    def __init__(self, connection, rules, campaign, dead_letters: Callable | None = None):
        tenant_rules = rules.tenants.get(campaign.tenant)
        counters = [c for found in (tenant_rules.counters_by_type.values() if tenant_rules else ())
                    for c in found]
        self.counters = counters_read_by(campaign, counters, tenant_rules.lead_attributes if tenant_rules else {})
        self.connection = connection
        self.tenant = campaign.tenant
        self.dead_letters = dead_letters
        self.bad_rows = 0  # activities rows left out of the counts: attributes that are not a JSON object

    def load(self, lead_ids: list[str], now: int) -> dict[str, dict]:
        """The leads' history counters as of `now`: what happened after it (a send run
        again for a past time) is not counted (the index by its UTC day: up to now's)."""
        histories: dict[str, dict] = {}
        if not self.counters or not lead_ids:
            return histories
        today = now // MS_PER_DAY
        marks = ", ".join(["%s"] * len(lead_ids))
        with self.connection.cursor() as cursor:
            for counter in self.counters:
                first_day = today - counter.retention_days + 1
                if not counter.conditions:
                    cursor.execute(
                        f"SELECT lead_id, day, activity_count FROM activity_index WHERE tenant = %s AND type = %s "
                        f"AND day >= %s AND day <= %s AND lead_id IN ({marks})",
                        [self.tenant, counter.activity_type, _EPOCH_DAY + timedelta(days=first_day),
                         _EPOCH_DAY + timedelta(days=today), *lead_ids])
                    for lead_id, day, count in cursor.fetchall():
                        per_day = histories.setdefault(_text(lead_id), {}).setdefault(counter.key, {})
                        per_day[(day - _EPOCH_DAY).days] = int(count)
                else:
                    cursor.execute(
                        f"SELECT lead_id, occurred_at, attributes, event_id FROM activities WHERE tenant = %s "
                        f"AND type = %s AND occurred_at >= %s AND occurred_at <= %s AND lead_id IN ({marks})",
                        [self.tenant, counter.activity_type, first_day * MS_PER_DAY, now, *lead_ids])
                    for lead_id, occurred_at, attributes, event_id in cursor.fetchall():
                        try:
                            parsed = json.loads(attributes)
                        except ValueError:
                            parsed = None
                        if not isinstance(parsed, dict):
                            self._bad_row(lead_id, event_id, attributes)
                            continue
                        if counter.counts(parsed, occurred_at):
                            per_day = histories.setdefault(_text(lead_id), {}).setdefault(counter.key, {})
                            day = occurred_at // MS_PER_DAY
                            per_day[day] = per_day.get(day, 0) + 1
        return histories

    def _bad_row(self, lead_id, event_id, attributes) -> None:
        """An activities row whose attributes do not read: left out of the counts, said
        as a dead letter (once per row and counter that reads it)."""
        self.bad_rows += 1
        if self.dead_letters is not None:
            self.dead_letters(DeadLetter(
                {"tenant": self.tenant, "lead_id": text_or_hex(lead_id), "event_id": text_or_hex(event_id),
                 "attributes": text_or_hex(attributes)[:1000]}, BAD_HISTORY_ROW,
                "an activities row whose attributes are not a JSON object; left out of the history counts",
                BATCH_SOURCE))


# A profile's data, or (data NULL: a row written with SQL) the columns it is read from;
# the columns only for such rows, so a profile's bytes cross the network once.
_PROFILE_FIELDS = ("data, IF(data IS NULL, attributes, NULL), IF(data IS NULL, score, NULL), "
                   "IF(data IS NULL, lists, NULL)")
_NO_SUCH_TABLE, _UNKNOWN_COLUMN = 1146, 1054


def _member_queries(connection, tenant: str, streams: int, stream: int) -> list[tuple[str, list]]:
    """The statements that list a tenant's leads of one stream, each in lead id order:
    the profile rows, then the leads of the legacy `leads` table without one (if the
    database has that table)."""
    split, params = "", [tenant]
    if streams > 1:
        split = " AND CRC32({}lead_id) %% %s = %s"
        params += [streams, stream]
    # By lead id alone: with the tenant fixed that is the primary key's order, so the
    # server streams rows as it reads them (ORDER BY tenant, lead_id makes MariaDB
    # 10.11 sort the whole tenant first: seconds for a million leads).
    queries = [(f"SELECT lead_id, {_PROFILE_FIELDS} FROM lead_profiles WHERE tenant = %s{split.format('')} "
                "ORDER BY lead_id", params)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                       "AND TABLE_NAME = 'leads'")
        if cursor.fetchone() is not None:
            queries.append((
                "SELECT l.lead_id, NULL, NULL, NULL, NULL FROM leads l LEFT JOIN lead_profiles p "
                f"ON p.tenant = l.tenant AND p.lead_id = l.lead_id WHERE l.tenant = %s{split.format('l.')} "
                "AND p.lead_id IS NULL ORDER BY l.lead_id", params))
    return queries


def _execute(cursor, sql: str, params: list, leads_uri: str) -> None:
    try:
        cursor.execute(sql, params)
    except pymysql.err.MySQLError as err:
        code = err.args[0] if err.args else None
        if code not in (_NO_SUCH_TABLE, _UNKNOWN_COLUMN):
            raise
        from orion.store.mysql import redact

        raise StoreError(f"the lead database {redact(leads_uri)} lacks the lead profile table or its columns "
                         f"({err.args[-1]}); create or upgrade them with: orion campaign init --leads "
                         f"{redact(leads_uri)}") from err


def stream_members(leads_uri: str, rules, campaign, now: int, *, streams: int = 1, stream: int = 0,
                   counts: list | None = None, dead_letters: Callable | None = None) -> Iterator[Member]:
    """The campaign's members among the tenant's leads of one stream, as they are read:
    the leads with a profile row in lead id order, then the legacy `leads` rows without
    one. `counts`, if given, [leads read, bad rows], is added to as it goes. A lead whose
    profile cannot be read (not a profile, or columns that are not JSON of the right
    shape) is not a member: it goes to `dead_letters` with reason `bad_lead_profile`."""
    if not 0 <= stream < streams:
        raise ValueError(f"stream {stream} is not one of 0..{streams - 1}")
    reader = _connect(leads_uri, unbuffered=True)
    lookups = _connect(leads_uri)
    histories = _Histories(lookups, rules, campaign, dead_letters)
    cursor = reader.cursor()
    finished = False
    try:
        for sql, params in _member_queries(lookups, campaign.tenant, streams, stream):
            _execute(cursor, sql, params, leads_uri)
            round_ = 0
            while True:
                rows = cursor.fetchmany(_CHUNKS[min(round_, len(_CHUNKS) - 1)])
                round_ += 1
                if not rows:
                    break
                if counts is not None:
                    counts[0] += len(rows)
                rows = _readable_ids(rows, campaign.tenant, counts, dead_letters)
                lead_ids = [row[0] for row in rows]
                found = histories.load(lead_ids, now)
                for lead_id, (_, data, attributes, score, lists) in zip(lead_ids, rows):
                    try:
                        state, sent = member_state(data, attributes, score, lists, found.get(lead_id, {}))
                    except ValueError as err:
                        if counts is not None and len(counts) > 1:
                            counts[1] += 1
                        if dead_letters is not None:
                            row = ({"profile": _text(data)} if data is not None else
                                   {"attributes": _text(attributes), "lists": _text(lists)})
                            dead_letters(DeadLetter(
                                {"tenant": campaign.tenant, "lead_id": lead_id, **row}, BAD_LEAD_PROFILE,
                                f"lead {lead_id}: lead_profiles row unreadable: {err}", BATCH_SOURCE))
                        continue
                    if campaign.failed_filters(state, now) is None:
                        yield Member(lead_id, state, sent)
        finished = True
    finally:
        if not finished:
            _abandon(reader, lookups)
        try:
            cursor.close()
        except pymysql.err.MySQLError:
            pass  # the query was killed just above
        reader.close()
        lookups.close()


def _readable_ids(rows, tenant: str, counts, dead_letters) -> list:
    """The rows with their lead id as text; a row whose id is not UTF-8 (written with
    SQL: no lead of the graph's has one) is dead-lettered, not a member."""
    readable = []
    for row in rows:
        try:
            readable.append((_text(row[0]),) + tuple(row[1:]))
        except UnicodeDecodeError:
            if counts is not None and len(counts) > 1:
                counts[1] += 1
            if dead_letters is not None:
                dead_letters(DeadLetter({"tenant": tenant, "lead_id": text_or_hex(row[0])}, BAD_LEAD_PROFILE,
                                        f"lead id {text_or_hex(row[0])} is not UTF-8 text", BATCH_SOURCE))
    return readable


def _abandon(reader, lookups) -> None:
    """A send stopped early: stop the server's query, rather than read (and throw away)
    the rest of a list that may hold millions of leads."""
    try:
        with lookups.cursor() as cursor:
            cursor.execute("KILL QUERY %s", (reader.thread_id(),))
    except pymysql.err.MySQLError:
        pass  # the query has ended on its own


def member_state(data, attributes, score, lists, history: dict) -> tuple[LeadState, tuple]:
    """A lead's state (with `history`) and its recent non-operational send times, from its
    lead_profiles row: the encoded profile when there is one, else the attributes, score
    and lists columns (all None: a lead with no profile). ValueError (ProfileError is
    one) if the row cannot be read."""
    # Imported here, not with the module: every command's parser imports this module (for
    # add_campaign_commands), and the profiles' module loads the rules' compiler.
    from orion.profiles import decode_profile
    from orion.store.profile_columns import lead_state_of_columns

    if data is None:
        return lead_state_of_columns(attributes, score, lists)._replace(history=history), ()
    flows = decode_profile(data).flows
    sent = flows.sent
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in sent):
        raise ValueError("the profile's sent times must be epoch milliseconds")
    return flows.lead._replace(history=history), sent


def refreshed(members: Iterable[Member], leads_uri: str, tenant: str, *, chunk: int = 500,
              counts: list | None = None, dead_letters: Callable | None = None) -> Iterator[Member]:
    """Precomputed members with what their profiles say now: each member's attributes,
    score, lists, campaign runs and send times are read again from lead_profiles (in
    chunks of `chunk` leads), so a lead who unsubscribed, bounced or was sent an email
    since the list was computed is held as a live send would hold it. Membership stays
    as computed; so do the history counters. A member whose profile row is gone has an
    empty profile, as a lead only in `leads` has (no address: its email is held); one
    whose row is now unreadable is dead-lettered, not sent.
    `counts`, if given, [members read, bad rows], is added to as it goes."""
    connection = _connect(leads_uri)
    try:
        pending: list[Member] = []
        for member in members:
            pending.append(member)
            if len(pending) >= chunk:
                yield from _refresh(connection, pending, tenant, counts, dead_letters)
                pending = []
        if pending:
            yield from _refresh(connection, pending, tenant, counts, dead_letters)
    finally:
        connection.close()


def _refresh(connection, members: list[Member], tenant: str, counts, dead_letters) -> list[Member]:
    marks = ", ".join(["%s"] * len(members))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT lead_id, {_PROFILE_FIELDS} FROM lead_profiles WHERE tenant = %s "
                       f"AND lead_id IN ({marks})", [tenant, *(m.lead_id for m in members)])
        rows = {_text(row[0]): row[1:] for row in cursor.fetchall()}
    if counts is not None:
        counts[0] += len(members)
    fresh = []
    for member in members:
        try:
            state, sent = member_state(*rows.get(member.lead_id, (None,) * 4), member.state.history)
        except ValueError as err:
            if counts is not None and len(counts) > 1:
                counts[1] += 1
            if dead_letters is not None:
                dead_letters(DeadLetter({"tenant": tenant, "lead_id": member.lead_id}, BAD_LEAD_PROFILE,
                                        f"lead {member.lead_id}: lead_profiles row unreadable at send time: {err}",
                                        BATCH_SOURCE))
            continue
        fresh.append(Member(member.lead_id, state, sent))
    return fresh


def membership_header(path: str | Path) -> dict:
    """The first line of a precomputed membership file: tenant, campaign, the send's
    scheduled time (`now`) and the streams it was split into."""
    with open(path, encoding="utf-8") as lines:
        header = json.loads(lines.readline() or "{}")
    if "membership_of" not in header:
        raise ValueError(f"{path} is not a membership file written by `orion campaign precompute`")
    return header["membership_of"]


def read_membership(path: str | Path, *, streams: int = 1, stream: int = 0, tenant: str = "",
                    dead_letters: Callable | None = None, counts: list | None = None,
                    count_members: bool = False) -> Iterator[Member]:
    """Members precomputed by `write_membership` (JSONL, after a header line), those of
    stream `stream` of `streams` only, so several streams can share one file. A line that
    is not a member (not JSON, a member whose state does not read) goes to `dead_letters`
    with reason `bad_membership_line` and its line number, and the rest is read; `counts`,
    if given, [members read (with `count_members`), bad lines], is added to."""
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a member is a JSON object, not {type(record).__name__}")
                if "membership_of" in record:
                    continue
                lead_id = record["lead_id"]
                if not isinstance(lead_id, str) or not lead_id:
                    raise ValueError("lead_id must be non-empty text")
                lead_id.encode("utf-8")
                if streams > 1 and stream_of(lead_id, streams) != stream:
                    continue
                state = LeadState.from_json_dict(record["state"])
                sent = tuple(record.get("sent", ()))
                if not all(isinstance(t, int) and not isinstance(t, bool) for t in sent):
                    raise ValueError("sent must be a list of epoch milliseconds")
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeError) as err:
                if counts is not None and len(counts) > 1:
                    counts[1] += 1
                if dead_letters is not None:
                    text = line.rstrip("\n").encode("utf-8", "replace").decode("utf-8")
                    dead_letters(DeadLetter(text[:1000], BAD_MEMBERSHIP_LINE,
                                            f"{path}:{number}: not a member: {type(err).__name__}: {str(err)[:200]}",
                                            BATCH_SOURCE))
                continue
            if count_members and counts is not None:
                counts[0] += 1
            yield Member(lead_id, state, sent)


def write_membership(members: Iterable[Member], path: str | Path, header: dict | None = None) -> int:
    """Write members (after a header line, if given) and return how many. The file is
    written beside `path` and renamed into place once whole: a precompute that fails or
    is killed part-way leaves no membership file a send could take for the whole list."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    n = 0
    try:
        with open(partial, "w", encoding="utf-8") as out:
            if header is not None:
                out.write(json.dumps({"membership_of": header}) + "\n")
            for member in members:
                out.write(json.dumps({"lead_id": member.lead_id, "state": member.state.to_json_dict(),
                                      "sent": list(member.sent)}) + "\n")
                n += 1
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return n


def sent_activity(request) -> Activity:
    """The `email_sent` activity of an email a batch send queued (an EmailRequest). Fed
    to the activity graph, it counts toward the lead's communication limits there as
    the graph's own sends do, so a lead the newsletter reached this morning is not sent
    a second marketing email by a trigger this afternoon. Its event id is the email's
    outbox key (event ids are unique per tenant, as in the legacy store), so the same
    send run again gives the same activity, counted once."""
    digest = hashlib.sha1(f"{request.campaign}\x1f{request.run}\x1f{request.lead_id}".encode()).hexdigest()
    return Activity(f"sent-{digest[:24]}", request.tenant, request.lead_id, "email_sent",
                    request.requested_at, {"email": request.template, "campaign": request.campaign,
                                           "run": request.run, "operational": request.operational})


def default_run_id(now: int) -> str:
    return f"batch:{format_timestamp(now)}"


def send_batch(members: Iterable[Member], rules, rules_dir: str, template_dirs, outbox_uri: str,
               tenant: str, campaign_name: str, *, now: int, run_id: str | None = None,
               tokens: dict | None = None, sender=None, batch_size: int = 1000,
               dead_letters: Callable | None = None, activities_out: Callable | None = None,
               clock: Callable[[], float] = time.perf_counter, started: float | None = None,
               counts: list | None = None, on_queued: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Run the campaign's flow for each member and queue what it sends. A member's
    emails are held as the graph holds them (no address, a bounced address, an
    unsubscribe, a communication limit counting the sends in the member's profile). The
    first record is committed on its own, so it is queued as soon as the first member is
    assembled; the rest in batches of `batch_size`, committed on a thread of their own
    while the next batch is assembled. `on_queued(new records, members so far)` is
    called after each commit. A member's template that fails, or a flow that
    would wait (a batch send has no timers: the steps after a wait would be lost), goes
    to `dead_letters` with the reason, and the send goes on."""
    from orion.campaigns.email import EmailAssembler, SenderSettings, assemble_one
    from orion.campaigns.flows import FlowEngine, LeadFlows
    from orion.campaigns.outbox import open_outbox, outbox_record
    from orion.deadletters import DeadLetter
    from orion.rules.model import Outcome

    started = clock() if started is None else started
    run_id = run_id or default_run_id(now)
    engine = FlowEngine(rules)
    # Each member's flow starts as FlowEngine.run_batch starts it (the campaign's flow
    # from its first step, run id as event id, at the send's time), but from the
    # member's LeadFlows, so the communication limits count the sends in its profile.
    found = rules.campaign(tenant, campaign_name)
    priority = found.priority if found is not None else 0
    assembler = EmailAssembler(rules_dir, template_dirs, sender or SenderSettings(), rules=rules)
    outbox = open_outbox(outbox_uri)
    writer = _BehindQueue(outbox)
    records: list = []
    n_members = queued = held = dead = 0
    first_queued = None

    def settle(done: list[tuple[int, int]]) -> None:
        nonlocal queued
        for new, members_so_far in done:
            queued += new
            if on_queued is not None:
                on_queued(new, members_so_far)

    try:
        writer.call(outbox.init)
        for member in members:
            n_members += 1
            flows, result = engine.run_flow(LeadFlows(lead=member.state, sent=member.sent),
                                            Outcome(tenant, member.lead_id, run_id, now, campaign_name, priority,
                                                    True), tokens=tokens)
            if flows.running:
                dead += 1
                if dead_letters is not None:
                    waiting = flows.running[0]
                    dead_letters(DeadLetter(
                        {"tenant": tenant, "lead_id": member.lead_id, "flow": waiting._asdict()}, BATCH_FLOW_WAITS,
                        f"batch campaign {campaign_name!r} has a wait step; a batch send runs its flow at once, "
                        f"so lead {member.lead_id} stopped at the wait, step {waiting.position}; the steps after "
                        "it were not run", BATCH_SOURCE))
            for request in result.emails:
                made, _ = assemble_one(assembler, request)
                if isinstance(made, DeadLetter):
                    dead += 1
                    if dead_letters is not None:
                        dead_letters(made)
                else:
                    records.append(outbox_record(made, queued_at=now)[1])
                    if activities_out is not None:
                        activities_out(sent_activity(request))
            held += len(result.held)
            records.extend(outbox_record(item)[1] for item in (*result.held, *result.webhooks))
            for letter in result.dead_letters:
                dead += 1
                if dead_letters is not None:
                    dead_letters(letter)
            if activities_out is not None:
                for activity in result.activities:
                    activities_out(activity)
            if records and first_queued is None:
                new = writer.call(outbox.queue, records)  # the first on its own, at once
                first_queued = clock() - started
                settle([(new, n_members)])
                records = []
            elif len(records) >= batch_size:
                settle(writer.submit(records, n_members))
                records = []
        if records:  # (the first record was queued on its own, so first_queued is set)
            settle(writer.submit(records, n_members))
        settle(writer.wait())
    finally:
        writer.close()
    read = counts[0] if counts else n_members
    bad_rows = counts[1] if counts and len(counts) > 1 else 0
    return BatchSummary(read, n_members, queued, held, dead + bad_rows, first_queued, clock() - started)


class _BehindQueue:
    """Queues batches in the outbox on a thread of its own, one batch in flight, so the
    next batch is assembled while the database commits the last one (pymysql lets go of
    the GIL while it waits on the socket). Results come back in order. Every use of the
    outbox, from init to close, runs on that one thread (a SQLite connection may only be
    used on the thread that opened it); the caller does not touch the outbox itself."""

    def __init__(self, outbox):
        self.outbox = outbox
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.pending: tuple | None = None  # (future, members so far)

    def call(self, method, *args):
        """`method(*args)` on the outbox's thread, once the batch in flight is committed;
        its result."""
        if self.pending is not None:
            raise RuntimeError("a batch is in flight: wait() for it first")
        return self.pool.submit(method, *args).result()

    def submit(self, records: list, members_so_far: int) -> list[tuple[int, int]]:
        """Queue `records` behind; returns (new records, members so far) of the batch
        that was in flight, once it is committed."""
        done = self.wait()
        self.pending = (self.pool.submit(self.outbox.queue, records), members_so_far)
        return done

    def wait(self) -> list[tuple[int, int]]:
        if self.pending is None:
            return []
        future, members_so_far = self.pending
        self.pending = None
        return [(future.result(), members_so_far)]

    def close(self) -> None:
        """Close the outbox (on its thread) and stop the thread; a batch still in flight
        (the send stopped early) is committed or fails first."""
        try:
            self.pool.submit(self.outbox.close).result()
        finally:
            self.pool.shutdown(wait=True)


def run_stream(config: dict, stream: int) -> BatchSummary:
    """One stream of a batch send, from a picklable config (for worker processes)."""
    from orion.rules import load_rules

    started = time.perf_counter() if config.get("started") is None else config["started"]
    rules = config.get("rules") or load_rules(config["rules_dir"], config["template_dirs"])
    campaign = rules.campaign(config["tenant"], config["campaign"])
    counts = [0, 0]
    dead_path, activities_path = config.get("dead_letters"), config.get("activities_out")
    dead_file = open(_stream_file(dead_path, stream, config["streams"]), "a", encoding="utf-8") if dead_path else None
    activity_file = (open(_stream_file(activities_path, stream, config["streams"]), "a", encoding="utf-8")
                     if activities_path else None)
    dead_letters = config.get("on_dead_letter") or (
        (lambda d: dead_file.write(d.to_json() + "\n")) if dead_file else None)
    if config.get("membership"):
        # (with --leads, the members are counted as their profiles are read again)
        members = read_membership(config["membership"], streams=config["streams"], stream=stream,
                                  tenant=config["tenant"], dead_letters=dead_letters, counts=counts,
                                  count_members=not config.get("leads"))
        if config.get("leads"):
            members = refreshed(members, config["leads"], config["tenant"], counts=counts, dead_letters=dead_letters)
    else:
        members = stream_members(config["leads"], rules, campaign, config["now"], streams=config["streams"],
                                 stream=stream, counts=counts, dead_letters=dead_letters)
    try:
        return send_batch(
            members, rules, config["rules_dir"], config["template_dirs"], config["outbox"], config["tenant"],
            config["campaign"], now=config["now"], run_id=config.get("run_id"), tokens=config.get("tokens"),
            batch_size=config.get("batch_size", 1000), dead_letters=dead_letters,
            activities_out=(lambda a: activity_file.write(json.dumps(a.to_json_dict()) + "\n"))
            if activity_file else None,
            started=started, counts=counts, on_queued=config.get("on_queued"))
    finally:
        for f in (dead_file, activity_file):
            if f is not None:
                f.close()


def run_streams(config: dict, streams: Iterable[int]) -> BatchSummary:
    """Several streams, one worker process each; their summaries added up."""
    streams = list(streams)
    if len(streams) == 1:
        return run_stream(config, streams[0])
    # Each worker loads its own rules; in-process hooks do not cross to worker processes.
    config = {k: v for k, v in config.items() if k not in ("rules", "on_queued", "on_dead_letter")}
    context = multiprocessing.get_context("fork")
    with context.Pool(len(streams)) as pool:
        results = pool.starmap(run_stream, [(config, k) for k in streams])
    total = results[0]
    for result in results[1:]:
        total = total + result
    return total


def next_run_at(schedule: dict, after: int) -> int | None:
    """The first scheduled time at or after `after`; None for a one-off send in the past,
    or a campaign with no schedule (sent on demand only)."""
    if not schedule:
        return None
    if "at" in schedule:
        return schedule["at"] if schedule["at"] >= after else None
    # Without `starting`, the sends are counted from 1970-01-01T00:00:00Z (every day: at
    # midnight UTC), so the next one is the same whenever it is asked for: a retried
    # `--at next` is the same send, with the same run id.
    start = schedule.get("starting", 0)
    every = schedule["every_ms"]
    if start >= after:
        return start
    return start + -(-(after - start) // every) * every


# --- command line -------------------------------------------------------------------


def _run_id(text: str) -> str:
    size = len(text.encode("utf-8", "surrogatepass"))
    if not text or size > 200:
        raise argparse.ArgumentTypeError(f"a run id has 1 to 200 bytes in UTF-8 (the outbox keeps it with the "
                                         f"step's number in a 255-byte key), not {size}")
    return text


def _token(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _when(text: str) -> int | str:
    if text in ("now", "next"):
        return text
    try:
        return parse_timestamp(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _common(parser, precompute: bool = False) -> None:
    from orion.settings import SAMPLE_RULES

    parser.add_argument("--rules", type=Path, default=SAMPLE_RULES, help="rules directory")
    parser.add_argument("--templates", type=Path, action="append", default=[], help="extra template folder")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--campaign", required=True, help="the batch campaign's name")
    parser.add_argument("--leads", help="the lead database (the MySQL activity store the graph writes lead "
                        "profiles to): mysql://USER@HOST:PORT/DB")
    parser.add_argument("--streams", type=int, default=1, metavar="N", help="split the leads into N streams")
    parser.add_argument("--stream", type=int, metavar="K",
                        help="run stream K (0..N-1) only; without it, all N run here, one process each")
    parser.add_argument("--at", type=_when, default=None, metavar="now|next|TIME",
                        help="the send's scheduled time: now, the campaign's next scheduled time, or RFC 3339; "
                        + ("the members are computed as of it, at once (run --membership sends at that time; "
                           "default: now)" if precompute else
                           "the command waits for it (default: now; with --membership, the time the members "
                           "were computed for)"))


def add_campaign_commands(commands) -> None:
    parser = commands.add_parser("campaign",
                                 help="batch campaigns: run a send, precompute its members, schedules, lead tables")
    sub = parser.add_subparsers(dest="campaign_command", required=True)
    run = sub.add_parser(
        "run", help="send a batch campaign now (or at its scheduled time)",
        description="Select the campaign's members from the lead profiles and the activity index with its "
        "filters, streaming, run its flow for each on the lead's profile (unsubscribed, bounced and "
        "communication limits hold an email) and queue the emails in the outbox.")
    _common(run)
    run.add_argument("--outbox", required=True, help="outbox URI: mysql://..., sqlite:///PATH, eml:///DIR")
    run.add_argument("--membership", type=Path,
                     help="use members precomputed by `orion campaign precompute` (the send's time is then "
                     "the one they were computed for, unless --at says otherwise); with --leads, each member's "
                     "profile is read again at send time, so an unsubscribe or a send since then counts")
    run.add_argument("--run-id", type=_run_id, help="the send's id in the outbox key (default: "
                     "batch:SCHEDULED-TIME); a rerun with the same id (or the same --at TIME) queues nothing twice")
    run.add_argument("--token", type=_token, action="append", default=[], metavar="NAME=VALUE",
                     help="a my.* program token for this send (repeatable)")
    run.add_argument("--dead-letters", help="append dead letters (JSONL) here (with several streams run here, "
                     "each stream's to FILE.K)")
    run.add_argument("--activities-out", help="append the activities flow steps generate, and an email_sent "
                     "activity per email queued, here (JSONL): fed to the activity graph (`orion run --events`, "
                     "or published to its topic), they update the leads' profiles, so the graph's communication "
                     "limits count the batch's sends (with several streams run here, each stream's to FILE.K: "
                     "give the graph FILE.*)")
    run.set_defaults(handler=_run)
    pre = sub.add_parser("precompute", help="compute a batch send's members ahead of its scheduled time",
                         description="Write the members of one stream (or all) to a JSONL file that "
                         "`orion campaign run --membership` sends to at the scheduled time.")
    _common(pre, precompute=True)
    pre.add_argument("--out", type=new_file, required=True)
    pre.add_argument("--dead-letters", help="append dead letters (JSONL) here: leads whose profile is unreadable")
    pre.set_defaults(handler=_precompute)
    init = sub.add_parser("init", help="create the lead tables a batch send reads (safe to rerun)",
                          description="Create the MySQL activity store's tables (what `orion store init` "
                          "creates): leads, activities, activity_index and lead_profiles (one profile per "
                          "lead: the encoded profile and its attributes, score and lists as columns). An "
                          "older lead_profiles table gains the profile columns; its rows are kept.")
    init.add_argument("--leads", required=True, help="the lead database: mysql://USER@HOST:PORT/DB")
    init.set_defaults(handler=_init)
    schedule = sub.add_parser("schedule", help="list batch campaigns and their next scheduled send")
    schedule.add_argument("--rules", type=Path, default=None)
    schedule.add_argument("--after", type=_when, default="now")
    schedule.set_defaults(handler=_schedule)


def _load(args):
    from orion.rules import RuleErrors, load_rules

    try:
        rules = load_rules(args.rules, args.templates)
    except RuleErrors as errors:
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return None, None
    campaign = rules.campaign(args.tenant, args.campaign)
    if campaign is None or campaign.kind != "batch":
        known = sorted(c.name for c in rules.tenants.get(args.tenant).campaigns.values()
                       if c.kind == "batch") if args.tenant in rules.tenants else []
        print(f"orion: tenant {args.tenant!r} has no batch campaign {args.campaign!r} "
              f"(batch campaigns: {', '.join(known) or 'none'})", file=sys.stderr)
        return None, None
    if not campaign.active:
        print(f"orion: batch campaign {args.campaign!r} of tenant {args.tenant!r} is inactive ({campaign.file}:"
              f"{campaign.line}); set its status to active to send it", file=sys.stderr)
        return None, None
    return rules, campaign


def _scheduled_time(args, campaign) -> int:
    now = int(time.time() * 1000)
    if args.at in (None, "now"):
        return now
    when = next_run_at(campaign.schedule or {}, now) if args.at == "next" else args.at
    if when is None:
        raise SystemExit(f"orion: campaign {campaign.name!r} has no scheduled send after now")
    return when


def _wait_until(when: int) -> None:
    delay = when / 1000 - time.time()
    if delay > 0:
        print(f"waiting {delay:.0f} s for {format_timestamp(when)} ...", flush=True)
        while delay > 0:  # in steps: one sleep of a far-off time overflows the platform's clock
            time.sleep(min(delay, 3600.0))
            delay = when / 1000 - time.time()


MAX_LOCAL_STREAMS = 32  # streams one command runs itself, a worker process each


def _check_streams(args, processes: bool = True) -> list[int] | None:
    """The streams to run here; `processes`: each in a worker process of its own."""
    if args.streams < 1:
        print(f"orion: --streams must be at least 1, not {args.streams}", file=sys.stderr)
        return None
    if args.stream is not None and not 0 <= args.stream < args.streams:
        print(f"orion: --stream must be 0..{args.streams - 1}", file=sys.stderr)
        return None
    if processes and args.stream is None and args.streams > MAX_LOCAL_STREAMS:
        print(f"orion: --streams {args.streams} would start {args.streams} worker processes here, each with its "
              f"own database connections; run at most {MAX_LOCAL_STREAMS} here, or give --stream K to run one "
              "stream on each of several machines", file=sys.stderr)
        return None
    return [args.stream] if args.stream is not None else list(range(args.streams))


def _run(args: argparse.Namespace) -> int:
    rules, campaign = _load(args)
    streams = _check_streams(args)
    if rules is None or streams is None:
        return 2
    if args.leads is None and args.membership is None:
        print("orion: give --leads mysql://... (or --membership FILE)", file=sys.stderr)
        return 2
    if args.membership is not None:
        try:
            header = membership_header(args.membership)
        except (OSError, ValueError) as err:
            print(f"orion: {err}", file=sys.stderr)
            return 2
        if (header["tenant"], header["campaign"]) != (args.tenant, args.campaign):
            print(f"orion: {args.membership} holds the members of {header['tenant']}/{header['campaign']}, "
                  f"not {args.tenant}/{args.campaign}", file=sys.stderr)
            return 2
        # The send happens at the time the members were computed for, unless --at says otherwise.
        when = header["now"] if args.at is None else _scheduled_time(args, campaign)
        if args.leads is None:
            print("orion: note: without --leads the members are sent as precomputed; a lead who unsubscribed "
                  "or was sent an email since is not seen", file=sys.stderr)
    else:
        when = _scheduled_time(args, campaign)
    # What cannot work is said now, not by a worker after the wait.
    refusal = (_outbox_refusal(args.outbox) or (_leads_refusal(args.leads) if args.leads else None)
               or _files_refusal(args, streams))
    if refusal is not None:
        print(f"orion: {refusal}", file=sys.stderr)
        return 2
    _wait_until(when)
    config = {
        "rules": rules, "rules_dir": str(args.rules), "template_dirs": [str(t) for t in args.templates],
        "tenant": args.tenant, "campaign": args.campaign, "leads": args.leads, "outbox": args.outbox,
        "streams": args.streams, "now": when, "run_id": args.run_id, "tokens": dict(args.token),
        "membership": str(args.membership) if args.membership else None,
        "dead_letters": args.dead_letters, "activities_out": args.activities_out,
    }
    try:
        summary = run_streams(config, streams)
    except Exception as err:  # noqa: BLE001 - a store's or the outbox's (or their clients'), said in one line
        said = _said(err)
        if said is None:
            raise
        print(f"orion: {said}", file=sys.stderr)
        return 2
    print(summary.render())
    for option, path in (("dead letters", args.dead_letters), ("activities", args.activities_out)):
        if path and len(streams) > 1:
            print(f"{option}: {', '.join(_stream_file(path, k, args.streams) for k in streams)}")
    return 0


def _stream_file(path: str, stream: int, streams: int) -> str:
    """Where a stream appends its dead letters or activities: FILE itself for one stream,
    FILE.K when the send is split into streams."""
    return f"{path}.{stream}" if streams > 1 else path


def _said(err: BaseException) -> str | None:
    """A store's, the outbox's or their clients' error as one line; None for a fault of ours."""
    from orion.campaigns.outbox import OutboxError
    from orion.store.base import store_error

    if isinstance(err, OutboxError):
        return str(err)
    if isinstance(err, pymysql.err.MySQLError):
        return f"the lead database or the outbox did not answer: {type(err).__name__}: {err}"
    said = store_error(err)
    return None if said is None else str(said)


def _outbox_refusal(uri: str) -> str | None:
    """What is wrong with the outbox: it is opened and its tables made, as the send does."""
    from orion.campaigns.outbox import OutboxError, open_outbox

    try:
        outbox = open_outbox(uri)
        try:
            outbox.init()
        finally:
            outbox.close()
    except OutboxError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a client's own (a file that is not SQLite, a server that refuses)
        return f"the outbox {_shown_uri(uri)} cannot be used: {type(err).__name__}: {str(err)[:300]}"
    return None


def _leads_refusal(uri: str) -> str | None:
    """What is wrong with the lead database: connected to, as the send does."""
    from orion.store.mysql import redact

    try:
        _connect(uri).close()
    except StoreError as err:
        return str(err)
    except pymysql.err.MySQLError as err:
        return f"cannot connect to the lead database {redact(uri)}: {err.args[-1] if err.args else err}"
    return None


def _shown_uri(uri: str) -> str:
    from orion.store.mysql import redact

    return redact(uri) if uri.startswith("mysql:") else uri


def _files_refusal(args, streams: list[int]) -> str | None:
    """What is wrong with the files the send appends to: each is opened (made if new)."""
    for option, path in (("--dead-letters", getattr(args, "dead_letters", None)),
                         ("--activities-out", getattr(args, "activities_out", None))):
        if not path:
            continue
        for stream in streams:
            target = _stream_file(path, stream, args.streams)
            try:
                with open(target, "a", encoding="utf-8"):
                    pass
            except OSError as err:
                return f"{option} {target}: {err.strerror or err}"
    return None


def _precompute(args: argparse.Namespace) -> int:
    rules, campaign = _load(args)
    streams = _check_streams(args, processes=False)
    if rules is None or streams is None:
        return 2
    if args.leads is None:
        print("orion: give --leads mysql://...", file=sys.stderr)
        return 2
    when = _scheduled_time(args, campaign)
    header = {"tenant": args.tenant, "campaign": args.campaign, "now": when, "streams": args.streams,
              "stream_list": streams}
    counts = [0, 0]
    refusal, dead_file = _leads_refusal(args.leads), None
    if refusal is None and args.dead_letters:
        try:
            dead_file = open(args.dead_letters, "a", encoding="utf-8")
        except OSError as err:
            refusal = f"--dead-letters {args.dead_letters}: {err.strerror or err}"
    if refusal is not None:
        print(f"orion: {refusal}", file=sys.stderr)
        return 2
    try:
        members = (m for k in streams for m in stream_members(
            args.leads, rules, campaign, when, streams=args.streams, stream=k, counts=counts,
            dead_letters=(lambda d: dead_file.write(d.to_json() + "\n")) if dead_file else None))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        n = write_membership(members, args.out, header)
    except Exception as err:  # noqa: BLE001 - a store's (or its client's), said in one line; no file is left
        said = _said(err)
        if said is None:
            raise
        print(f"orion: {said}; no membership file was written", file=sys.stderr)
        return 2
    finally:
        if dead_file is not None:
            dead_file.close()
    print(f"{n} members of {campaign.name!r} (streams {streams} of {args.streams}) as of "
          f"{format_timestamp(when)} -> {args.out}")
    if counts[1]:
        print(f"{counts[1]} lead(s) with an unreadable profile left out"
              + (f" (dead letters: {args.dead_letters})" if args.dead_letters else ""), file=sys.stderr)
    return 0


def _init(args: argparse.Namespace) -> int:
    from orion.store.mysql import redact

    try:
        init_lead_tables(args.leads)
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    print(f"lead tables ready in {redact(args.leads)}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from orion.settings import SAMPLE_RULES
    from orion.rules import load_rules

    from orion.rules import RuleErrors

    try:
        rules = load_rules(args.rules or SAMPLE_RULES)
    except RuleErrors as errors:
        print(f"orion: the rules in {args.rules or SAMPLE_RULES} have {len(errors.errors)} error(s):", file=sys.stderr)
        for error in errors.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    after = int(time.time() * 1000) if args.after in ("now", "next") else args.after
    for tenant, tenant_rules in sorted(rules.tenants.items()):
        for campaign in tenant_rules.campaigns.values():
            if campaign.kind == "batch":
                when = next_run_at(campaign.schedule or {}, after)
                if not campaign.active:
                    shown = "inactive"
                elif when is not None:
                    try:
                        shown = format_timestamp(when)
                    except (ValueError, OverflowError):  # past the year 9999
                        shown = "none"
                else:
                    shown = "none" if campaign.schedule else "on demand"
                print(f"{printable(tenant)}\t{printable(campaign.name)}\t{shown}")
    return 0

