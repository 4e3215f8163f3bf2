"""The outbox: where assembled emails (and held emails, and webhook calls) wait for the
send path. Backends by URI:

    mysql://USER:PASSWORD@HOST:PORT/DB     a table `outbox` (MySQL / MariaDB)
    sqlite:///PATH                         a table `outbox` in a SQLite file
    eml:///DIR                             a folder: messages/KEY.eml, held/KEY.json, webhooks/KEY.json

(Three slashes: a relative path; four: an absolute one, as for the stores.)

Every record has an idempotency key, (tenant, campaign, lead, run), kept as a 16-byte
digest with a unique index (the eml folder: the file name). Queueing a record whose key
is already there does nothing, whatever became of the first one (queued, sent, bounced),
so a retried bundle never queues the same email twice.

Records go through: queued -> sending (claimed by one sender, with a lease) -> sent,
bounced, failed or held; a transient failure puts the record back to queued with a later
next_attempt_at. Held emails stay `held` with their reason: held when queued (a flow's
communication limits, or the lead's consent then) or when sent (the lead unsubscribed or
bounced since it was queued: orion.campaigns.send). Each email says whether it is
`operational` (sent even to a lead who unsubscribed). Webhook calls are `queued` records
of kind `webhook` (a webhook sender is not part of this module).

    python -c "from orion.campaigns.outbox import open_outbox; o = open_outbox('sqlite:///orion-data/outbox.db'); o.init(); print(o.counts())"
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import NamedTuple, Sequence
from urllib.parse import urlsplit

from orion.store.base import close_quietly, with_backoff

URI_FORMS = ("mysql://USER:PASSWORD@HOST:PORT/DB", "sqlite:///PATH.db", "eml:///DIR")

EMAIL, WEBHOOK = "email", "webhook"
QUEUED, SENDING, SENT, BOUNCED, FAILED, HELD = "queued", "sending", "sent", "bounced", "failed", "held"
DEFAULT_LEASE_MS = 5 * 60_000


class OutboxError(RuntimeError):
    """An outbox that cannot be opened or written; the message says what to do."""


class OutboxRecord(NamedTuple):
    tenant: str
    campaign: str
    lead_id: str
    run: str
    kind: str  # EMAIL or WEBHOOK
    status: str  # QUEUED or HELD when queued
    recipient: str
    template: str
    payload: bytes  # the MIME message; JSON for held emails and webhooks
    detail: str | None
    queued_at: int
    operational: bool = False  # an email a lead who unsubscribed is still sent

    def key(self) -> tuple[str, str, str, str]:
        return (self.tenant, self.campaign, self.lead_id, self.run)


class Claimed(NamedTuple):
    """An email a sender has claimed: its row id (or file key), and what to send."""

    id: object
    tenant: str
    campaign: str
    lead_id: str
    run: str
    recipient: str
    template: str
    payload: bytes
    attempts: int
    operational: bool = False


def key_digest(key: tuple[str, str, str, str]) -> bytes:
    return hashlib.md5("\x1f".join(key).encode("utf-8")).digest()


def email_record(email, queued_at: int | None = None) -> OutboxRecord:
    """An AssembledEmail as a queued record."""
    return OutboxRecord(email.tenant, email.campaign, email.lead_id, email.run, EMAIL, QUEUED,
                        email.recipient, email.template, email.message, None,
                        email.requested_at if queued_at is None else queued_at, email.operational)


def held_record(held) -> OutboxRecord:
    """A HeldEmail as a held record: the request, so it can be released later."""
    request = held.request
    payload = json.dumps({"request": request._asdict(), "reason": held.reason}, default=str).encode()
    return OutboxRecord(request.tenant, request.campaign, request.lead_id, request.run, EMAIL, HELD,
                        str(request.lead.get("email") or ""), request.template, payload,
                        f"{held.reason}: {held.detail}", request.requested_at, bool(request.operational))


def webhook_record(call) -> OutboxRecord:
    payload = json.dumps(call._asdict(), default=str).encode()
    return OutboxRecord(call.tenant, call.campaign, call.lead_id, call.run, WEBHOOK, QUEUED, "", call.name,
                        payload, None, call.requested_at)


# What an outbox record is, as the counters of the sinks that queue them name it.
QUEUED_EMAILS, QUEUED_HELD, QUEUED_WEBHOOKS = "queued_emails", "queued_held", "queued_webhooks"
RECORD_KINDS = (QUEUED_EMAILS, QUEUED_HELD, QUEUED_WEBHOOKS)


def outbox_record(item, queued_at: int | None = None) -> tuple[str, OutboxRecord]:
    """(kind, record) of what a flow or a batch send produced: an AssembledEmail, a
    HeldEmail or a WebhookCall; the kind is one of RECORD_KINDS."""
    from orion.campaigns.flows import HeldEmail, WebhookCall

    if isinstance(item, HeldEmail):
        return QUEUED_HELD, held_record(item)
    if isinstance(item, WebhookCall):
        return QUEUED_WEBHOOKS, webhook_record(item)
    return QUEUED_EMAILS, email_record(item, queued_at)


def records_by_kind(items) -> dict[str, list[OutboxRecord]]:
    """Outbox records of `items` (see outbox_record), by kind, each kind in the order
    given."""
    by_kind: dict[str, list[OutboxRecord]] = {kind: [] for kind in RECORD_KINDS}
    for item in items:
        kind, record = outbox_record(item)
        by_kind[kind].append(record)
    return by_kind


class Outbox(abc.ABC):
    uri: str

    @abc.abstractmethod
    def init(self) -> None:
        """Create the table (or folders); safe to rerun."""

    @abc.abstractmethod
    def queue(self, records: Sequence[OutboxRecord]) -> int:
        """Queue records; those whose key is already there are left alone. Returns how
        many were new."""

    @abc.abstractmethod
    def claim(self, limit: int, now_ms: int, lease_ms: int = DEFAULT_LEASE_MS) -> list[Claimed]:
        """Up to `limit` queued emails due by now (or claimed by a sender whose lease ran
        out), marked as being sent."""

    @abc.abstractmethod
    def finish(self, claimed: Claimed, status: str, now_ms: int, detail: str | None = None) -> None:
        """Mark a claimed email SENT, BOUNCED or FAILED."""

    @abc.abstractmethod
    def retry_later(self, claimed: Claimed, at_ms: int, detail: str) -> None:
        """Put a claimed email back in the queue, due at `at_ms`, one attempt more."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Records per "kind:status"."""

    @abc.abstractmethod
    def keys(self, status: str | None = None) -> list[tuple[str, str, str, str]]:
        """Every email key (with the given status): for tests and audits."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_outbox(uri: str) -> Outbox:
    scheme = urlsplit(uri).scheme if isinstance(uri, str) and "://" in uri else None
    if scheme == "mysql":
        return SqlOutbox(uri, "mysql")
    if scheme == "sqlite":
        return SqlOutbox(uri, "sqlite")
    if scheme == "eml":
        return EmlOutbox(uri)
    raise OutboxError(f"bad outbox URI {uri!r}; use one of: {'; '.join(URI_FORMS)}")


def _path_of(uri: str, scheme: str) -> Path:
    prefix = f"{scheme}:///"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        raise OutboxError(f"bad outbox URI {uri!r}; write {scheme}:///relative/path or {scheme}:////absolute/path")
    return Path(uri[len(prefix):])


# --- SQL (MySQL, SQLite) ------------------------------------------------------------

_MYSQL_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    key_digest      BINARY(16)      NOT NULL COMMENT 'md5 of tenant, campaign, lead, run',
    tenant          VARBINARY(255)  NOT NULL,
    campaign        VARBINARY(255)  NOT NULL,
    lead_id         VARBINARY(255)  NOT NULL,
    run             VARBINARY(255)  NOT NULL,
    kind            VARCHAR(16)     NOT NULL,
    status          VARCHAR(16)     NOT NULL,
    recipient       VARBINARY(320)  NOT NULL,
    template        VARBINARY(255)  NOT NULL,
    payload         MEDIUMBLOB      NOT NULL,
    detail          TEXT            NULL,
    queued_at       BIGINT          NOT NULL COMMENT 'epoch ms',
    attempts        INT UNSIGNED    NOT NULL DEFAULT 0,
    next_attempt_at BIGINT          NOT NULL DEFAULT 0,
    claimed_by      VARBINARY(64)   NULL,
    claimed_at      BIGINT          NULL,
    finished_at     BIGINT          NULL,
    operational     BOOLEAN         NOT NULL DEFAULT FALSE COMMENT 'sent even to a lead who unsubscribed',
    PRIMARY KEY (id),
    UNIQUE KEY outbox_key (key_digest),
    KEY outbox_due (status, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
_SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_digest BLOB NOT NULL UNIQUE,
    tenant TEXT NOT NULL, campaign TEXT NOT NULL, lead_id TEXT NOT NULL, run TEXT NOT NULL,
    kind TEXT NOT NULL, status TEXT NOT NULL, recipient TEXT NOT NULL, template TEXT NOT NULL,
    payload BLOB NOT NULL, detail TEXT, queued_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT, claimed_at INTEGER, finished_at INTEGER,
    operational INTEGER NOT NULL DEFAULT 0
)
"""
_SQLITE_INDEX = "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at)"
_COLUMNS = ("key_digest, tenant, campaign, lead_id, run, kind, status, recipient, template, payload, detail, "
            "queued_at, operational")
# What `init` adds to an outbox table made before the column was: its rows read as not
# operational, so a lead who unsubscribed since they were queued is not sent them.
_MYSQL_ADD_OPERATIONAL = ("ALTER TABLE outbox ADD COLUMN operational BOOLEAN NOT NULL DEFAULT FALSE "
                          "COMMENT 'sent even to a lead who unsubscribed'")
_SQLITE_ADD_OPERATIONAL = "ALTER TABLE outbox ADD COLUMN operational INTEGER NOT NULL DEFAULT 0"


class SqlOutbox(Outbox):
    """The outbox table in MySQL/MariaDB or SQLite; one code path, two dialects."""

    def __init__(self, uri: str, dialect: str):
        self.uri = uri
        self.dialect = dialect
        self._connection = None
        self.worker = uuid.uuid4().hex
        mark = "%s" if dialect == "mysql" else "?"
        self.mark = mark
        values = "(" + ", ".join([mark] * 13) + ")"
        if dialect == "mysql":
            from orion.store.mysql import parse_mysql_uri, redact

            self._settings = parse_mysql_uri(uri)
            self.shown = redact(uri)
            # No-op on a duplicate key (unlike INSERT IGNORE, other errors still raise).
            self.insert = f"INSERT INTO outbox ({_COLUMNS}) VALUES {values} ON DUPLICATE KEY UPDATE id = id"
        else:
            self.path = _path_of(uri, "sqlite")
            self.shown = uri
            self.insert = f"INSERT INTO outbox ({_COLUMNS}) VALUES {values} ON CONFLICT (key_digest) DO NOTHING"

    @property
    def connection(self):
        if self._connection is None:
            if self.dialect == "mysql":
                import pymysql

                try:
                    self._connection = pymysql.connect(
                        **self._settings, charset="utf8mb4", autocommit=True, connect_timeout=10,
                        init_command="SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")
                except pymysql.err.OperationalError as err:
                    raise OutboxError(f"cannot open the outbox {self.shown}: {err}") from err
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                self._connection = connection
        return self._connection

    def _is_transient(self, err: Exception) -> bool:
        if self.dialect == "sqlite":
            return isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err))
        import pymysql

        if isinstance(err, pymysql.err.OperationalError) and err.args and err.args[0] in (
                1205, 1213, 1040, 2003, 2006, 2013, 2055):
            if err.args[0] in (2006, 2013, 2055, 2003):
                self.close()
            return True
        return False

    def _transaction(self, body):
        def attempt():
            connection = self.connection
            if self.dialect == "mysql":
                connection.begin()
                try:
                    with connection.cursor() as cursor:
                        result = body(cursor)
                    connection.commit()
                except BaseException:
                    if self._connection is not None:
                        try:
                            connection.rollback()
                        except Exception:  # noqa: BLE001 - a broken connection; it is dropped next
                            self.close()
                    raise
                return result
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(connection.cursor())
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        return with_backoff(attempt, self._is_transient)

    def init(self) -> None:
        if self.dialect == "mysql":
            def create(cursor):
                cursor.execute(_MYSQL_TABLE)
                cursor.execute("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() "
                               "AND table_name = 'outbox' AND column_name = 'operational'")
                if not cursor.fetchone()[0]:
                    cursor.execute(_MYSQL_ADD_OPERATIONAL)
        else:
            def create(cursor):
                cursor.execute(_SQLITE_TABLE)
                cursor.execute(_SQLITE_INDEX)
                if "operational" not in {row[1] for row in cursor.execute("PRAGMA table_info(outbox)")}:
                    cursor.execute(_SQLITE_ADD_OPERATIONAL)
        self._transaction(create)

    def queue(self, records: Sequence[OutboxRecord]) -> int:
        if not records:
            return 0
        rows = [(key_digest(r.key()), r.tenant, r.campaign, r.lead_id, r.run, r.kind, r.status, r.recipient,
                 r.template, r.payload, r.detail, r.queued_at, bool(r.operational)) for r in records]

        def insert(cursor):
            cursor.executemany(self.insert, rows)
            return cursor.rowcount

        written = self._transaction(insert)
        if self.dialect == "sqlite":
            return written
        return written  # MySQL: 1 per new row, 0 per duplicate left alone

    def claim(self, limit: int, now_ms: int, lease_ms: int = DEFAULT_LEASE_MS) -> list[Claimed]:
        m = self.mark
        token = f"{self.worker}:{now_ms}:{uuid.uuid4().hex[:8]}"

        def take(cursor):
            if self.dialect == "mysql":
                cursor.execute(
                    f"UPDATE outbox SET status = '{SENDING}', claimed_by = {m}, claimed_at = {m} "
                    f"WHERE kind = '{EMAIL}' AND status = '{QUEUED}' AND next_attempt_at <= {m} ORDER BY id LIMIT {m}",
                    (token, now_ms, now_ms, limit))
                cursor.execute(
                    f"UPDATE outbox SET claimed_by = {m}, claimed_at = {m} WHERE kind = '{EMAIL}' "
                    f"AND status = '{SENDING}' AND claimed_at < {m} ORDER BY id LIMIT {m}",
                    (token, now_ms, now_ms - lease_ms, limit))
            else:
                cursor.execute(
                    f"UPDATE outbox SET status = '{SENDING}', claimed_by = ?, claimed_at = ? WHERE id IN ("
                    f"SELECT id FROM outbox WHERE kind = '{EMAIL}' AND ((status = '{QUEUED}' AND next_attempt_at <= ?)"
                    f" OR (status = '{SENDING}' AND claimed_at < ?)) ORDER BY id LIMIT ?)",
                    (token, now_ms, now_ms, now_ms - lease_ms, limit))
            cursor.execute(
                f"SELECT id, tenant, campaign, lead_id, run, recipient, template, payload, attempts, operational "
                f"FROM outbox "
                f"WHERE claimed_by = {m} AND status = '{SENDING}' ORDER BY id", (token,))
            return cursor.fetchall()

        return [Claimed(row[0], *(_text(v) for v in row[1:7]), bytes(row[7]), row[8], bool(row[9]))
                for row in self._transaction(take)]

    def finish(self, claimed: Claimed, status: str, now_ms: int, detail: str | None = None) -> None:
        m = self.mark
        self._transaction(lambda cursor: cursor.execute(
            f"UPDATE outbox SET status = {m}, finished_at = {m}, detail = {m}, attempts = attempts + 1, "
            f"claimed_by = NULL WHERE id = {m}", (status, now_ms, detail, claimed.id)))

    def retry_later(self, claimed: Claimed, at_ms: int, detail: str) -> None:
        m = self.mark
        self._transaction(lambda cursor: cursor.execute(
            f"UPDATE outbox SET status = '{QUEUED}', next_attempt_at = {m}, detail = {m}, attempts = attempts + 1, "
            f"claimed_by = NULL WHERE id = {m}", (at_ms, detail, claimed.id)))

    def counts(self) -> dict[str, int]:
        def count(cursor):
            cursor.execute("SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status")
            return cursor.fetchall()

        return {f"{kind}:{status}": n for kind, status, n in self._transaction(count)}

    def keys(self, status: str | None = None) -> list[tuple[str, str, str, str]]:
        m = self.mark

        def select(cursor):
            if status is None:
                cursor.execute(f"SELECT tenant, campaign, lead_id, run FROM outbox WHERE kind = '{EMAIL}'")
            else:
                cursor.execute(f"SELECT tenant, campaign, lead_id, run FROM outbox WHERE kind = '{EMAIL}' "
                               f"AND status = {m}", (status,))
            return cursor.fetchall()

        return [tuple(_text(v) for v in row) for row in self._transaction(select)]

    def close(self) -> None:
        close_quietly(self._connection)
        self._connection = None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


# --- a folder of .eml files ---------------------------------------------------------


class EmlOutbox(Outbox):
    """messages/KEY.eml (queued emails), held/KEY.json, webhooks/KEY.json, and per email
    state files: state/KEY.json ({"status", "attempts", "next_attempt_at", ...}). A new
    file is linked into place, which fails if the key is there: the idempotency check.
    Meant for one sender at a time (local development, inspection by eye)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = _path_of(uri, "eml")

    def init(self) -> None:
        for folder in ("messages", "held", "webhooks", "state", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def name(key: tuple[str, str, str, str]) -> str:
        return key_digest(key).hex()

    def _place(self, folder: str, name: str, data: bytes) -> bool:
        final = self.root / folder / name
        if final.exists():
            return False
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def queue(self, records: Sequence[OutboxRecord]) -> int:
        new = 0
        for r in records:
            name = self.name(r.key())
            if r.kind == WEBHOOK:
                new += self._place("webhooks", name + ".json", r.payload)
            elif r.status == HELD:
                new += self._place("held", name + ".json", r.payload)
            else:
                header = (f"X-Orion-Queued-At: {r.queued_at}\n").encode()
                if self._place("messages", name + ".eml", header + r.payload):
                    self._write_state(name, {"status": QUEUED, "attempts": 0, "next_attempt_at": 0,
                                             "key": list(r.key()), "recipient": r.recipient,
                                             "template": r.template, "operational": bool(r.operational)})
                    new += 1
        return new

    def _state(self, name: str) -> dict | None:
        try:
            return json.loads((self.root / "state" / f"{name}.json").read_text())
        except FileNotFoundError:
            return None

    def _write_state(self, name: str, state: dict) -> None:
        tmp = self.root / "tmp" / f"{name}.state.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.root / "state" / f"{name}.json")

    def claim(self, limit: int, now_ms: int, lease_ms: int = DEFAULT_LEASE_MS) -> list[Claimed]:
        found = []
        for path in sorted((self.root / "messages").glob("*.eml")):
            name = path.stem
            state = self._state(name)
            if state is None:
                continue
            due = (state["status"] == QUEUED and state["next_attempt_at"] <= now_ms) or (
                state["status"] == SENDING and state.get("claimed_at", 0) < now_ms - lease_ms)
            if not due:
                continue
            state.update(status=SENDING, claimed_at=now_ms)
            self._write_state(name, state)
            payload = path.read_bytes().split(b"\n", 1)[1]
            tenant, campaign, lead_id, run = state["key"]
            found.append(Claimed(name, tenant, campaign, lead_id, run, state["recipient"], state["template"],
                                 payload, state["attempts"], bool(state.get("operational", False))))
            if len(found) >= limit:
                break
        return found

    def finish(self, claimed: Claimed, status: str, now_ms: int, detail: str | None = None) -> None:
        state = self._state(claimed.id)
        state.update(status=status, finished_at=now_ms, detail=detail, attempts=state["attempts"] + 1)
        self._write_state(claimed.id, state)

    def retry_later(self, claimed: Claimed, at_ms: int, detail: str) -> None:
        state = self._state(claimed.id)
        state.update(status=QUEUED, next_attempt_at=at_ms, detail=detail, attempts=state["attempts"] + 1)
        self._write_state(claimed.id, state)

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for path in (self.root / "state").glob("*.json"):
            status = json.loads(path.read_text())["status"]
            totals[f"{EMAIL}:{status}"] = totals.get(f"{EMAIL}:{status}", 0) + 1
        held = sum(1 for _ in (self.root / "held").glob("*.json"))
        hooks = sum(1 for _ in (self.root / "webhooks").glob("*.json"))
        if held:  # held when queued; those held when sent are among the states
            totals[f"{EMAIL}:{HELD}"] = totals.get(f"{EMAIL}:{HELD}", 0) + held
        if hooks:
            totals[f"{WEBHOOK}:{QUEUED}"] = hooks
        return totals

    def keys(self, status: str | None = None) -> list[tuple[str, str, str, str]]:
        found = []
        for path in (self.root / "state").glob("*.json"):
            state = json.loads(path.read_text())
            if status is None or state["status"] == status:
                found.append(tuple(state["key"]))
        if status in (None, HELD):
            for path in (self.root / "held").glob("*.json"):
                request = json.loads(path.read_text())["request"]
                found.append((request["tenant"], request["campaign"], request["lead_id"], request["run"]))
        return found


def now_ms() -> int:
    return int(time.time() * 1000)
