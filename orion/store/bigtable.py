"""The Bigtable activity store: `bigtable://PROJECT/INSTANCE/TABLE`, on Cloud Bigtable or,
when BIGTABLE_EMULATOR_HOST is set, on the emulator (cbtemulator).

One row per activity in TABLE, keyed so that one lead's history is one contiguous,
newest-first range:

    TENANT#SALT#LEAD#REVERSED_TIME#EVENT_ID

- TENANT, LEAD and EVENT_ID are percent-encoded UTF-8 (`urllib.parse.quote`, so '#',
  '%', '/', spaces, control and non-ASCII characters become %XX): the key is ASCII, '#'
  only ever separates, and every id, whatever characters it holds, has exactly one key.
- SALT is two hex digits from a SHA-256 of the lead id (SALT_BUCKETS buckets): one
  tenant's leads spread over the key space instead of hotspotting one tablet.
- REVERSED_TIME is MAX_MS - occurred_at as 15 zero-padded digits (fixed width for every
  time from year 1 to 9999), so a prefix scan returns newest first.

Family "a" holds the columns `type`, `attributes` (JSON) and `occurred_at` (decimal
epoch ms). Every cell is written with the cell timestamp occurred_at (clamped at the
epoch), so a retried or rerun write replaces the same cells and never adds a version;
the families keep one version (GC rule max versions 1).

The activity index lives in TABLE-index, one row per (tenant, lead, type, UTC day):

    TENANT#SALT#LEAD#TYPE#YYYY-MM-DD

with one cell per distinct event id in family "e" (qualifier: the event id, value: its
occurred_at). Count = number of cells, last seen = their maximum value. Writing the same
event id again sets the same cell, and concurrent writers only ever add cells, so the
index is exact under retries, reruns and parallel workers without any read-modify-write.

Lead profiles live in TABLE-profiles, one row per (tenant, lead):

    TENANT#SALT#LEAD

with the same encoding and salt as the activity keys, family "p", two columns: `data` (the
encoded profile, UTF-8, opaque to the store) and `next_wake` (when the lead's earliest
waiting flow step is due: next_wake - MIN_MS as 15 zero-padded digits, so that byte
order is time order from year 1 to 9999; no cell when the lead waits in no flow). A
table of their own, not a family of TABLE: history reads scan a lead's key range of
TABLE, and `count`, `scan` and the bootstrap's verification read all of TABLE, so every
row there must be an activity. Every cell is written with the one explicit cell
timestamp PROFILE_CELL_MICROS, so each write of a lead's profile sets the same cells: a
retry rewrites them, a later write replaces them, and no versions pile up (the family
keeps one version, reads take one). `due_profiles` scans the profile rows (all of them,
or the key ranges of the tenants asked for) with a server-side filter that returns only
the `next_wake` cells due, so it reads every profile row on the server but sends back
only the due ones: a cost proportional to the number of profiles, fine for a periodic
sweep, not for a per-event call.

The tenant registry lives in TABLE-tenants, one row per tenant (key: the percent-encoded
tenant), family "t", columns `stage`, `changed_at` (decimal epoch ms) and
`previous_stage`, each cell at the one timestamp PROFILE_CELL_MICROS, as the profiles'
(orion/tenants/registry.py).

    BIGTABLE_EMULATOR_HOST=127.0.0.1:8086 orion store init bigtable://demo/local-dev/activities
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Iterator, NamedTuple, Sequence
from urllib.parse import quote, unquote

from orion.activities import Activity
from orion.store.base import (
    DEFAULT_TENANT_STAGE,
    MAX_MS,
    MIN_MS,
    STORE_WRITE_FAILED,
    UNSTORABLE,
    ActivityStore,
    IndexEntries,
    StoredProfile,
    StoreError,
    TenantStage,
    WriteFailure,
    WriteResult,
    activity_day,
    attributes_json,
    profiles_to_write,
    with_backoff,
)

SEPARATOR = "#"
SALT_BUCKETS = 256  # two hex digits
TIME_DIGITS = 15  # len(str(MAX_MS - MIN_MS))
ACTIVITY_FAMILY = "a"
INDEX_FAMILY = "e"
INDEX_TABLE_SUFFIX = "-index"
PROFILE_FAMILY = "p"
PROFILE_TABLE_SUFFIX = "-profiles"
PROFILE_CELL_MICROS = 0  # the cell timestamp of every profile cell (see the module docstring)
_PROFILE_CELL_TIME = datetime.fromtimestamp(PROFILE_CELL_MICROS / 1e6, tz=timezone.utc)
# Tries of a tenant registry change that another change keeps overtaking.
CHANGE_ATTEMPTS = 10
TENANT_FAMILY = "t"
TENANT_TABLE_SUFFIX = "-tenants"  # the tenant registry (see the module docstring)
READ_KEYS_PER_REQUEST = 2000  # row keys per ReadRows of read_profiles
BATCH_SIZE = 500  # rows per MutateRows request

_TABLE_ID = re.compile(r"[_a-zA-Z0-9][-_.a-zA-Z0-9]*")
_INSTANCE_ID = re.compile(r"[a-z][-a-z0-9]{5,32}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# gRPC status codes. A row refused with one of _ROW_FAULT is the row's own fault
# (UNSTORABLE); _RETRYABLE ones are retried with backoff; anything else is the store's.
_RETRYABLE = {4, 8, 10, 13, 14}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE
_ROW_FAULT = {3, 9, 11}  # INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE


# --- row keys (plain Python; the layout is part of the engine-neutral core) ---------


def encode_id(text: str) -> str:
    """An id as it appears in a row key: percent-encoded UTF-8, never containing '#'."""
    return quote(text, safe="@:+")


def decode_id(text: str) -> str:
    return unquote(text, errors="strict")


@functools.lru_cache(maxsize=1 << 16)  # every row key needs it, and a lead has many activities
def lead_salt(lead_id: str) -> str:
    """Two hex digits, stable across processes and machines (unlike hash())."""
    return f"{hashlib.sha256(lead_id.encode('utf-8')).digest()[0] % SALT_BUCKETS:02x}"


def reversed_time(occurred_at: int) -> str:
    return f"{MAX_MS - occurred_at:0{TIME_DIGITS}d}"


@functools.lru_cache(maxsize=1 << 16)
def lead_prefix(tenant: str, lead_id: str) -> str:
    """The key prefix every row of one lead starts with (activities and index alike)."""
    return SEPARATOR.join((encode_id(tenant), lead_salt(lead_id), encode_id(lead_id))) + SEPARATOR


def activity_row_key(tenant: str, lead_id: str, occurred_at: int, event_id: str) -> bytes:
    """TENANT#SALT#LEAD#REVERSED_TIME#EVENT_ID, ASCII."""
    return (lead_prefix(tenant, lead_id) + reversed_time(occurred_at) + SEPARATOR
            + encode_id(event_id)).encode("ascii")


def parse_activity_row_key(key: bytes) -> tuple[str, str, int, str]:
    """(tenant, lead_id, occurred_at, event_id) back from an activity row key."""
    tenant, _salt, lead_id, reverse, event_id = key.decode("ascii").split(SEPARATOR)
    return decode_id(tenant), decode_id(lead_id), MAX_MS - int(reverse), decode_id(event_id)


def index_row_key(tenant: str, lead_id: str, type_: str, day: date) -> bytes:
    """TENANT#SALT#LEAD#TYPE#YYYY-MM-DD, ASCII."""
    return (lead_prefix(tenant, lead_id) + encode_id(type_) + SEPARATOR + day.isoformat()).encode("ascii")


def prefix_end(prefix: str) -> str:
    """The smallest key after every key starting with prefix (which ends in '#')."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def index_key_ranges(tenant: str, lead_id: str, types: Iterable[str] | None,
                     since_day: date | None) -> list[tuple[bytes, bytes]]:
    """The [start, stop) row-key ranges of a lead's index rows: all of them, or those of
    `types` from `since_day` on (none for an empty `types`). The HBase store's too."""
    prefix = lead_prefix(tenant, lead_id)
    if types is None:
        return [(prefix.encode("ascii"), prefix_end(prefix).encode("ascii"))]
    first_day = since_day.isoformat() if since_day is not None else ""
    return [((type_prefix + first_day).encode("ascii"), prefix_end(type_prefix).encode("ascii"))
            for type_prefix in sorted({prefix + encode_id(t) + SEPARATOR for t in types})]


def parse_index_row_key(key: bytes) -> tuple[str, str, str, date]:
    """(tenant, lead_id, type, day) back from an index row key."""
    tenant, _salt, lead_id, type_, day = key.decode("ascii").split(SEPARATOR)
    return decode_id(tenant), decode_id(lead_id), decode_id(type_), date.fromisoformat(day)


def profile_row_key(tenant: str, lead_id: str) -> bytes:
    """TENANT#SALT#LEAD, ASCII: a lead's row in the profile table."""
    return lead_prefix(tenant, lead_id)[:-1].encode("ascii")


def parse_profile_row_key(key: bytes) -> tuple[str, str]:
    """(tenant, lead_id) back from a profile row key."""
    tenant, _salt, lead_id = key.decode("ascii").split(SEPARATOR)
    return decode_id(tenant), decode_id(lead_id)


def wake_value(next_wake: int) -> bytes:
    """A next_wake (epoch ms, years 1 to 9999) as its cell holds it: fixed-width digits
    whose byte order is time order, so a value range filter can select the due ones."""
    return f"{next_wake - MIN_MS:0{TIME_DIGITS}d}".encode("ascii")


def parse_wake_value(value: bytes) -> int:
    return int(value) + MIN_MS


def cell_timestamp(occurred_at: int) -> datetime:
    """The explicit cell timestamp of an activity's cells (Bigtable has none before 1970)."""
    return _EPOCH + timedelta(milliseconds=max(occurred_at, 0))


def cell_timestamp_micros(occurred_at: int) -> int:
    """cell_timestamp as Bigtable stores it: epoch microseconds, whole milliseconds."""
    return max(occurred_at, 0) * 1000


def parse_bigtable_uri(uri: str) -> tuple[str, str, str]:
    """bigtable://PROJECT/INSTANCE/TABLE -> (project, instance, table)."""
    form = "bigtable://PROJECT/INSTANCE/TABLE"
    if not uri.startswith("bigtable://"):
        raise StoreError(f"bad Bigtable URI {uri!r}; write {form}")
    parts = uri[len("bigtable://"):].split("/")
    if len(parts) != 3 or not all(parts):
        raise StoreError(f"bad Bigtable URI {uri!r}; write {form}, for example bigtable://my-project/my-instance/activities")
    project, instance, table = parts
    if not _INSTANCE_ID.fullmatch(instance):
        raise StoreError(f"bad Bigtable instance id {instance!r} in {uri!r}: 6 to 33 characters, "
                         "lower-case letters, digits and '-', starting with a letter")
    longest_suffix = max(len(INDEX_TABLE_SUFFIX), len(PROFILE_TABLE_SUFFIX))  # table ids: 50 characters at most
    if not _TABLE_ID.fullmatch(table) or len(table) + longest_suffix > 50:
        raise StoreError(f"bad Bigtable table id {table!r} in {uri!r}: letters, digits, '_', '-', '.', "
                         f"at most {50 - longest_suffix} characters")
    return project, instance, table


def _re2_literal(text: str) -> bytes:
    """A regular expression (RE2, as Bigtable and its emulator use) matching exactly text."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char.isalnum() and byte < 0x80 or char == "_" or byte >= 0x80:
            out.append(byte)
        elif 0x20 < byte < 0x7F:
            out += b"\\" + bytes([byte])
        else:
            out += f"\\x{byte:02x}".encode("ascii")
    return bytes(out)


# --- MutateRows requests -------------------------------------------------------------
#
# Requests are built as raw protocol buffers, in place. The client's DirectRow.set_cell
# and Table.mutate_rows wrap every row and cell in proto-plus messages, which costs about
# 100 µs of Python per row: more than everything else the bootstrap does with a row. The
# raw request carries the same bytes for a small fraction of that.

# (qualifier, value, timestamp in epoch microseconds); a value of None deletes the column.
Cells = Sequence[tuple[bytes, bytes | None, int]]


class _Messages(NamedTuple):
    request: type  # the client's (proto-plus) MutateRowsRequest; .wrap() takes a raw one
    response: type  # the client's MutateRowsResponse; .pb(response) is the raw one
    raw_request: type


@functools.lru_cache(maxsize=None)
def _messages() -> _Messages:
    from google.cloud.bigtable_v2.types import bigtable

    return _Messages(bigtable.MutateRowsRequest, bigtable.MutateRowsResponse, bigtable.MutateRowsRequest.pb())


def mutate_rows_request(table_name: str, family: str, rows: Iterable[tuple[bytes, Cells]]):
    """A MutateRowsRequest (the client's type, over a raw protobuf one) setting, for each
    (row key, cells), the cells of `family` in that row (deleting every version of a
    column whose value is None)."""
    messages = _messages()
    request = messages.raw_request(table_name=table_name)
    add_entry = request.entries.add
    for key, cells in rows:
        add_mutation = add_entry(row_key=key).mutations.add
        for qualifier, value, micros in cells:
            if value is None:
                column = add_mutation().delete_from_column
                column.family_name = family
                column.column_qualifier = qualifier
                continue
            cell = add_mutation().set_cell
            cell.family_name = family
            cell.column_qualifier = qualifier
            cell.value = value
            cell.timestamp_micros = micros
    return messages.request.wrap(request)


# --- ReadRows requests and responses ------------------------------------------------
#
# Reads skip the client's wrappers too. Table.read_rows runs every chunk through a state
# machine into PartialRowData and Cell objects and every response through a retry wrapper:
# about 60 µs of Python per activity row, a third of a long history read on the emulator.
# The store sends a raw ReadRowsRequest and merges the raw chunks itself into plain Rows;
# on a broken stream it resumes after the last row it delivered, as the client does.


class Cell(NamedTuple):
    value: bytes
    timestamp_micros: int


class Row(NamedTuple):
    key: bytes
    cells: dict[str, dict[bytes, list[Cell]]]  # family -> qualifier -> versions, newest first


KeyRange = tuple[bytes | None, bytes | None]  # [start, end) of row keys; None: unbounded


class _ReadMessages(NamedTuple):
    request: type  # the client's ReadRowsRequest; .wrap() takes a raw one
    response: type  # the client's ReadRowsResponse; .pb(response) is the raw one
    raw_request: type
    row_filter: type  # the client's RowFilter; .pb(row_filter) is the raw one


@functools.lru_cache(maxsize=None)
def _read_messages() -> _ReadMessages:
    from google.cloud.bigtable_v2.types import bigtable, data

    return _ReadMessages(bigtable.ReadRowsRequest, bigtable.ReadRowsResponse, bigtable.ReadRowsRequest.pb(),
                         data.RowFilter)


def read_rows_request(table_name: str, ranges: Sequence[KeyRange], row_filter=None, rows_limit: int = 0,
                      after: bytes = b"", keys: Sequence[bytes] = ()):
    """A ReadRowsRequest (the client's type, over a raw protobuf one) for the rows of
    `ranges` and the single row `keys` that sort after `after` (b"": all of them), through
    row_filter (a google.cloud.bigtable.row_filters filter, or None), at most rows_limit
    rows (0: no limit). None when no range or key is left after `after`: a resumed read
    is done."""
    messages = _read_messages()
    request = messages.raw_request(table_name=table_name, rows_limit=rows_limit)
    if row_filter is not None:
        request.filter.CopyFrom(messages.row_filter.pb(row_filter.to_pb()))
    request.rows.row_keys.extend(key for key in keys if key > after)
    if keys and not request.rows.row_keys and not ranges:
        return None  # every key was delivered before the retry (and an empty row set is the whole table)
    for start, end in ranges:
        if after and end and end <= after:
            continue  # every row of this range was delivered before the retry
        row_range = request.rows.row_ranges.add()  # no start and no end: the whole table
        if after and (not start or start <= after):
            row_range.start_key_open = after
        elif start:
            row_range.start_key_closed = start
        if end:
            row_range.end_key_open = end
    if after and not request.rows.row_ranges and not request.rows.row_keys:
        return None
    return messages.request.wrap(request)


class MalformedReadRows(RuntimeError):
    """Bigtable sent chunks that break the ReadRows protocol."""


def merge_row_chunks(responses: Iterable, after: bytes = b"") -> Iterator[Row]:
    """The rows of a ReadRows response stream (the client's ReadRowsResponse messages),
    merged from their raw chunks, in key order; every key must sort after `after`.

    The protocol: a chunk with a row key starts a row; each chunk starts a cell, inheriting
    the family and qualifier of the previous cell when it names none; a value_size above 0
    says the value continues in the next chunks; reset_row drops the row in progress and
    commit_row completes it. Raises MalformedReadRows when the stream breaks these rules
    or ends inside a row."""
    raw = _read_messages().response.pb
    key = None  # of the row in progress
    value_parts = None  # of a cell whose value continues in the next chunk
    for response in responses:
        for chunk in raw(response).chunks:
            if chunk.reset_row:
                key = value_parts = None
                continue
            if value_parts is None:  # the chunk starts a cell
                if key is None:  # ... and a row
                    key = chunk.row_key
                    if not key or key <= after:
                        raise MalformedReadRows(f"a row starts without a key or out of order: {key!r} after {after!r}")
                    families: dict[str, dict[bytes, list[Cell]]] = {}
                    family = None
                if chunk.HasField("family_name"):
                    family = chunk.family_name.value
                    qualifiers = families.setdefault(family, {})
                    if not chunk.HasField("qualifier"):
                        raise MalformedReadRows(f"a cell of row {key!r} names a family but no qualifier")
                if chunk.HasField("qualifier"):
                    if family is None:
                        raise MalformedReadRows(f"the first cell of row {key!r} names no family")
                    versions = qualifiers.setdefault(chunk.qualifier.value, [])
                elif family is None:
                    raise MalformedReadRows(f"the first cell of row {key!r} names no family or qualifier")
                timestamp = chunk.timestamp_micros
                if chunk.value_size > 0:
                    value_parts = [chunk.value]
                    continue
                value = chunk.value
            else:  # the value of the cell in progress continues
                value_parts.append(chunk.value)
                if chunk.value_size > 0:
                    continue
                value = b"".join(value_parts)
                value_parts = None
            versions.append(Cell(value, timestamp))
            if chunk.commit_row:
                yield Row(key, families)
                after, key = key, None
    if key is not None:
        raise MalformedReadRows(f"the stream ended inside row {key!r}")


def _read_retryable(err: Exception) -> bool:
    """What the client's Table.read_rows retries (DEFAULT_RETRY_READ_ROWS): UNAVAILABLE,
    DEADLINE_EXCEEDED and INTERNAL errors that only report a reset stream."""
    from google.api_core import exceptions
    from google.cloud.bigtable.row_data import RETRYABLE_INTERNAL_ERROR_MESSAGES

    if isinstance(err, (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded)):
        return True
    return isinstance(err, exceptions.InternalServerError) and any(
        message in err.message.lower() for message in RETRYABLE_INTERNAL_ERROR_MESSAGES)


# --- the store ----------------------------------------------------------------------


def _transient(err: Exception) -> bool:
    from google.api_core import exceptions

    return isinstance(err, (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded,
                            exceptions.Aborted, exceptions.InternalServerError,
                            exceptions.TooManyRequests))


class BigtableStore(ActivityStore):
    """See the module docstring for the layout. Clients open lazily, so the store can be
    constructed (and its URI checked) where Google Cloud libraries are not wanted."""

    attempts = 6  # MutateRows attempts per batch before a row is reported as failed
    first_delay = 0.1  # seconds; doubles per attempt up to max_delay
    max_delay = 5.0

    def __init__(self, uri: str):
        self.uri = uri
        self.project, self.instance_id, self.table_id = parse_bigtable_uri(uri)
        self.index_table_id = self.table_id + INDEX_TABLE_SUFFIX
        self.profile_table_id = self.table_id + PROFILE_TABLE_SUFFIX
        self.tenant_table_id = self.table_id + TENANT_TABLE_SUFFIX
        self._client = None
        self._tables: dict = {}

    # clients and tables

    def _new_client(self, admin: bool):
        try:
            from google.cloud import bigtable
        except ImportError as err:
            raise StoreError("the Bigtable store needs google-cloud-bigtable: pip install 'apache-beam[gcp]'") from err
        try:
            return bigtable.Client(project=self.project, admin=admin)
        except Exception as err:  # noqa: BLE001 - credentials and environment problems of any kind
            raise StoreError(f"cannot open a Bigtable client for project {self.project!r}: {err}; "
                             "set BIGTABLE_EMULATOR_HOST for the emulator or provide Google Cloud "
                             "credentials (gcloud auth application-default login)") from err

    def _table(self, table_id: str):
        if table_id not in self._tables:
            if self._client is None:
                self._client = self._new_client(admin=False)
            self._tables[table_id] = self._client.instance(self.instance_id).table(table_id)
        return self._tables[table_id]

    def _missing_table(self, err: Exception, table_id: str) -> StoreError:
        return StoreError(f"Bigtable table {table_id!r} of {self.uri} is missing or unusable ({err}); "
                          f"create it with: orion store init {self.uri}")

    def init(self) -> None:
        from google.api_core import exceptions
        from google.cloud.bigtable import column_family

        client = self._new_client(admin=True)
        try:
            instance = client.instance(self.instance_id)
            for table_id, family in ((self.table_id, ACTIVITY_FAMILY), (self.index_table_id, INDEX_FAMILY),
                                     (self.profile_table_id, PROFILE_FAMILY),
                                     (self.tenant_table_id, TENANT_FAMILY)):
                table = instance.table(table_id)
                one_version = column_family.MaxVersionsGCRule(1)
                try:
                    with_backoff(lambda: table.create(column_families={family: one_version}), _transient)
                except exceptions.AlreadyExists:
                    pass
                if family not in with_backoff(table.list_column_families, _transient):
                    try:
                        table.column_family(family, one_version).create()
                    except exceptions.AlreadyExists:
                        pass
        except exceptions.GoogleAPICallError as err:
            raise StoreError(f"cannot create the tables of {self.uri}: {err}; the instance "
                             f"{self.instance_id!r} must exist (gcloud bigtable instances create) and "
                             "the credentials need Bigtable admin rights") from err
        finally:
            _close_client(client)

    # writing

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        pending, failed = [], []
        for activity in activities:
            try:
                attributes = attributes_json(activity)
            except ValueError as err:
                failed.append(WriteFailure(activity, UNSTORABLE, str(err)))
                continue
            when = cell_timestamp_micros(activity.occurred_at)
            pending.append((activity,
                            activity_row_key(activity.tenant, activity.lead_id, activity.occurred_at, activity.event_id),
                            ((b"type", activity.type.encode("utf-8"), when),
                             (b"attributes", attributes.encode("utf-8"), when),
                             (b"occurred_at", str(activity.occurred_at).encode("ascii"), when))))
        written, refused = self._mutate(self.table_id, ACTIVITY_FAMILY, pending)
        return WriteResult(written, failed + refused)

    def _mutate(self, table_id: str, family: str, pending: list[tuple[object, bytes, Cells]]) -> tuple[int, list[WriteFailure]]:
        """Set the cells of `family` in rows of table_id, given as (item, row key, cells),
        with MutateRows in batches; rows failing with a transient status, or left without
        an answer by a transient error, are retried with exponential backoff, the rest
        reported as WriteFailures of their item. Raises StoreError when the table cannot be
        written at all (missing, no permission)."""
        written, failed = 0, []
        for start in range(0, len(pending), BATCH_SIZE):
            batch = pending[start:start + BATCH_SIZE]
            delay, last_status = self.first_delay, {}
            for attempt in range(1, self.attempts + 1):
                statuses, unanswered = self._send(table_id, family, batch)
                retry = []
                for row, status in zip(batch, statuses):
                    code = None if status is None else status.code
                    if code == 0:
                        written += 1
                    elif code is None or code in _RETRYABLE:
                        retry.append(row)
                        last_status[id(row)] = unanswered if status is None else f"code {code}: {status.message}"
                    else:
                        reason = UNSTORABLE if code in _ROW_FAULT else STORE_WRITE_FAILED
                        failed.append(WriteFailure(row[0], reason, f"Bigtable refused the row (code {code}): {status.message}"))
                batch = retry
                if not batch:
                    break
                if attempt < self.attempts:
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
            failed.extend(
                WriteFailure(row[0], STORE_WRITE_FAILED,
                             f"Bigtable kept failing after {self.attempts} attempts ({last_status[id(row)]})")
                for row in batch
            )
        return written, failed

    def _send(self, table_id: str, family: str, batch: list[tuple[object, bytes, Cells]]) -> tuple[list, str]:
        """One MutateRows call: (a status per row, None for the rows a transient error
        left unanswered; what that error was)."""
        from google.api_core import exceptions

        table = self._table(table_id)
        request = mutate_rows_request(table.name, family, ((key, cells) for _, key, cells in batch))
        statuses: list = [None] * len(batch)
        unanswered = "no answer"
        try:
            for response in self._client.table_data_client.mutate_rows(request=request, retry=None):
                for answer in _messages().response.pb(response).entries:
                    statuses[answer.index] = answer.status
        except exceptions.NotFound as err:
            raise self._missing_table(err, table_id) from err
        except exceptions.GoogleAPICallError as err:
            if not _transient(err):
                raise StoreError(f"cannot write to {self.uri}: {err}") from err
            unanswered = f"no answer: {err}"
        return statuses, unanswered

    # reading

    # The client's read retry schedule (DEFAULT_RETRY_READ_ROWS), kept for the raw reads:
    # jittered backoff from 1 s, doubling up to 15 s, for at most 60 s without a new row.
    read_first_delay = 1.0
    read_max_delay = 15.0
    read_deadline = 60.0
    # One stream's deadline, as the client's (61 s): a longer read (a full scan) is cut
    # there and resumed after its last row, and a stream that hangs does not hang the reader.
    read_attempt_timeout = 61.0

    def _read(self, table_id: str, ranges: Sequence[KeyRange] = ((None, None),), row_filter=None,
              rows_limit: int = 0, keys: Sequence[bytes] = ()) -> Iterator[Row]:
        """Stream the rows of table_id in `ranges` and at `keys` through row_filter (at
        most rows_limit, 0: all), merged from raw ReadRows chunks. A stream broken by an error the client
        would retry is reopened after the last row delivered, with backoff, for at most
        `read_deadline` s without a new row; past it, and for an error the client would not
        retry, a StoreError (the store's contract: callers answer it as the store not
        answering, never as a fault of theirs). A missing table becomes a StoreError that
        says to run init."""
        from google.api_core import exceptions
        from google.api_core.retry import exponential_sleep_generator

        table = self._table(table_id)
        last_key, delivered = b"", 0
        delays, deadline = None, None  # backoff since the last row delivered
        while not (rows_limit and delivered >= rows_limit):
            request = read_rows_request(table.name, ranges, row_filter, rows_limit and rows_limit - delivered, last_key,
                                        keys)
            if request is None:
                return
            stream = None
            try:
                stream = self._client.table_data_client.read_rows(request=request, retry=None,
                                                                  timeout=self.read_attempt_timeout)
                for row in merge_row_chunks(stream, last_key):
                    last_key, delivered, delays = row.key, delivered + 1, None
                    yield row
                return
            except exceptions.NotFound as err:
                raise self._missing_table(err, table_id) from err
            except exceptions.GoogleAPICallError as err:
                if not _read_retryable(err):
                    raise StoreError(f"cannot read {self.uri}: {type(err).__name__}: {str(err)[:300]}") from err
                if delays is None:
                    delays = exponential_sleep_generator(self.read_first_delay, self.read_max_delay, 2.0)
                    deadline = time.monotonic() + self.read_deadline
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"{self.uri} did not answer within {self.read_deadline:g} s: "
                                     f"{type(err).__name__}: {str(err)[:300]}") from err
                time.sleep(delay)
            finally:
                if stream is not None:
                    stream.cancel()

    def history(
        self,
        tenant: str,
        lead_id: str,
        *,
        since: int | None = None,
        until: int | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Activity]:
        low = MIN_MS if since is None else max(since, MIN_MS)
        high = MAX_MS + 1 if until is None else min(until, MAX_MS + 1)  # exclusive
        type_list = None if types is None else list(types)
        if low >= high or type_list == [] or (limit is not None and limit <= 0):
            return []
        prefix = lead_prefix(tenant, lead_id)
        # Newest first: the newest time allowed has the smallest reversed time.
        start_key = (prefix + reversed_time(high - 1)).encode("ascii")
        end_key = (prefix + reversed_time(low) + chr(ord(SEPARATOR) + 1)).encode("ascii")
        row_filter = _activity_filter(type_list)

        found: list[Activity] = []
        for row in self._read(self.table_id, [(start_key, end_key)], row_filter):
            activity = _activity_from_row(row)
            # Rows of one time sort by encoded event id, ascending; keep reading past the
            # limit until the time changes, then order ties by event id, descending.
            if limit is not None and len(found) >= limit and activity.occurred_at != found[-1].occurred_at:
                break
            found.append(activity)
        found.sort(key=lambda a: (a.occurred_at, a.event_id), reverse=True)
        return found if limit is None else found[:limit]

    def scan(self, start_key: bytes | None = None, end_key: bytes | None = None,
             types: Iterable[str] | None = None) -> Iterator[Activity]:
        """Every activity with start_key <= row key < end_key (None: unbounded), in key
        order, streamed: what the bootstrap's verification reads, range by range. With
        `types`, only activities of those types, chosen by Bigtable (a condition on the
        `type` cell): the rows of other types are not sent (the experiments report reads
        a tenant's impressions and goals among all its activities)."""
        type_list = None if types is None else list(types)
        if type_list == []:
            return
        for row in self._read(self.table_id, [(start_key, end_key)], _activity_filter(type_list)):
            yield _activity_from_row(row)

    def count(self) -> int:
        from google.cloud.bigtable import row_filters as rf

        keys_only = rf.RowFilterChain([rf.CellsRowLimitFilter(1), rf.StripValueTransformerFilter(True)])
        return sum(1 for _ in self._read(self.table_id, row_filter=keys_only))

    # the activity index

    def index_activities(self, activities: Sequence[Activity]) -> int:
        cells: dict[bytes, list[tuple[bytes, bytes, int]]] = {}
        for activity in activities:
            try:
                attributes_json(activity)  # rows write() refuses are not stored, so not indexed
            except ValueError:
                continue
            key = index_row_key(activity.tenant, activity.lead_id, activity.type, activity_day(activity.occurred_at))
            cells.setdefault(key, []).append((activity.event_id.encode("utf-8"), str(activity.occurred_at).encode("ascii"),
                                              cell_timestamp_micros(activity.occurred_at)))
        _, failed = self._mutate(self.index_table_id, INDEX_FAMILY, [(key, key, row) for key, row in cells.items()])
        if failed:
            raise StoreError(f"{len(failed)} index rows of {self.uri} could not be written: {failed[0].detail}")
        return len(cells)

    def read_index(
        self,
        tenant: str,
        lead_id: str,
        *,
        types: Iterable[str] | None = None,
        since_day: date | None = None,
    ) -> IndexEntries:
        from google.cloud.bigtable import row_filters as rf

        ranges = index_key_ranges(tenant, lead_id, types, since_day)
        if not ranges:
            return {}
        entries: IndexEntries = {}
        for row in self._read(self.index_table_id, ranges,
                              rf.RowFilterChain([rf.FamilyNameRegexFilter(INDEX_FAMILY), rf.CellsColumnLimitFilter(1)])):
            _, _, type_, day = parse_index_row_key(row.key)
            if since_day is not None and day < since_day:
                continue
            cells = row.cells.get(INDEX_FAMILY, {})
            entries[(type_, day)] = (len(cells), max(int(versions[0].value) for versions in cells.values()))
        return entries

    # lead profiles

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        pending = []
        for profile in profiles_to_write(profiles):
            wake = None if profile.next_wake is None else wake_value(profile.next_wake)
            pending.append((profile, profile_row_key(profile.tenant, profile.lead_id),
                            ((b"data", profile.data.encode("utf-8"), PROFILE_CELL_MICROS),
                             (b"next_wake", wake, PROFILE_CELL_MICROS))))
        _, failed = self._mutate(self.profile_table_id, PROFILE_FAMILY, pending)
        refused = [f for f in failed if f.reason == UNSTORABLE]
        if refused:
            first = refused[0]
            raise ValueError(f"{len(refused)} profiles of {self.uri} were refused, the first "
                             f"{first.activity.tenant!r}/{first.activity.lead_id!r}: {first.detail}")
        if failed:
            raise StoreError(f"{len(failed)} profiles of {self.uri} could not be written: {failed[0].detail}")
        return len(profiles)

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        from google.cloud.bigtable import row_filters as rf

        row_keys = [profile_row_key(tenant, lead_id) for tenant, lead_id in keys]
        wanted = sorted(set(row_keys))
        data_only = rf.RowFilterChain([rf.FamilyNameRegexFilter(PROFILE_FAMILY), rf.ColumnQualifierRegexFilter(b"^data$"),
                                       rf.CellsColumnLimitFilter(1)])
        found: dict[bytes, str] = {}
        for start in range(0, len(wanted), READ_KEYS_PER_REQUEST):
            for row in self._read(self.profile_table_id, (), data_only,
                                  keys=wanted[start:start + READ_KEYS_PER_REQUEST]):
                found[row.key] = row.cells[PROFILE_FAMILY][b"data"][0].value.decode("utf-8")
        return [found.get(key) for key in row_keys]

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        """See ActivityStore.due_profiles. The cost: every profile row (of the tenants
        asked for) is read on the server; only the due ones are sent back."""
        from google.cloud.bigtable import row_filters as rf

        if due_by < MIN_MS:
            return []
        if tenants is None:
            ranges: list[KeyRange] = [(None, None)]
        else:
            prefixes = sorted({encode_id(tenant) + SEPARATOR for tenant in tenants})
            ranges = [(prefix.encode("ascii"), prefix_end(prefix).encode("ascii")) for prefix in prefixes]
            if not ranges:
                return []
        due_wakes = rf.RowFilterChain([
            rf.FamilyNameRegexFilter(PROFILE_FAMILY), rf.ColumnQualifierRegexFilter(b"^next_wake$"),
            rf.CellsColumnLimitFilter(1),
            rf.ValueRangeFilter(end_value=wake_value(min(due_by, MAX_MS)), inclusive_end=True),
        ])
        due = []
        for row in self._read(self.profile_table_id, ranges, due_wakes):
            tenant, lead_id = parse_profile_row_key(row.key)
            due.append((tenant, lead_id, parse_wake_value(row.cells[PROFILE_FAMILY][b"next_wake"][0].value)))
        return sorted(due)  # key order is salt order within a tenant, and percent-encoded

    def count_profiles(self) -> int:
        from google.cloud.bigtable import row_filters as rf

        keys_only = rf.RowFilterChain([rf.CellsRowLimitFilter(1), rf.StripValueTransformerFilter(True)])
        return sum(1 for _ in self._read(self.profile_table_id, row_filter=keys_only))

    # the tenant registry

    def read_tenant_stages(self) -> list[TenantStage]:
        from google.cloud.bigtable import row_filters as rf

        found = []
        latest = rf.RowFilterChain([rf.FamilyNameRegexFilter(TENANT_FAMILY), rf.CellsColumnLimitFilter(1)])
        for row in self._read(self.tenant_table_id, row_filter=latest):
            cells = row.cells.get(TENANT_FAMILY, {})
            if b"stage" not in cells:
                continue
            previous = cells.get(b"previous_stage")
            found.append(TenantStage(decode_id(row.key.decode("ascii")), cells[b"stage"][0].value.decode("utf-8"),
                                     int(cells[b"changed_at"][0].value),
                                     previous[0].value.decode("utf-8") if previous else None))
        return sorted(found)

    def change_tenant_stage(self, tenant: str, stage: str, changed_at: int) -> tuple[TenantStage, bool]:
        # Read the row, then write it with CheckAndMutateRow on the stage just read: when
        # another change came in between, the predicate fails, nothing is written, and the
        # change starts over from the new stage.
        from google.api_core import exceptions as gexc
        from google.cloud.bigtable import row_filters as rf

        key = encode_id(tenant).encode("ascii")
        table = self._table(self.tenant_table_id)
        stage_cell = [rf.FamilyNameRegexFilter(TENANT_FAMILY), rf.ColumnQualifierRegexFilter(b"stage"),
                      rf.CellsColumnLimitFilter(1)]
        for _ in range(CHANGE_ATTEMPTS):
            try:
                found = table.read_row(key, filter_=rf.RowFilterChain(
                    [rf.FamilyNameRegexFilter(TENANT_FAMILY), rf.CellsColumnLimitFilter(1)]))
                cells = {} if found is None else found.cells.get(TENANT_FAMILY, {})
                current = None
                if b"stage" in cells:
                    previous = cells.get(b"previous_stage")
                    current = TenantStage(tenant, cells[b"stage"][0].value.decode("utf-8"),
                                          int(cells[b"changed_at"][0].value),
                                          previous[0].value.decode("utf-8") if previous else None)
                if current is not None and current.stage == stage:
                    return current, False
                row = TenantStage(tenant, stage, changed_at,
                                  DEFAULT_TENANT_STAGE if current is None else current.stage)
                # With a stage read, write when that stage is still there (the predicate
                # matches); with none, write when there still is none (it does not).
                state = current is not None
                predicate = stage_cell + ([rf.ValueRegexFilter(re.escape(current.stage).encode("utf-8"))]
                                          if state else [])
                conditional = table.conditional_row(key, filter_=rf.RowFilterChain(predicate))
                for column, value in ((b"stage", row.stage), (b"changed_at", str(row.changed_at)),
                                      (b"previous_stage", row.previous_stage)):
                    if value is None:
                        conditional.delete_cell(TENANT_FAMILY, column, state=state)
                    else:
                        conditional.set_cell(TENANT_FAMILY, column, value.encode("utf-8"),
                                             timestamp=_PROFILE_CELL_TIME, state=state)
                if conditional.commit() == state:
                    return row, True
            except gexc.GoogleAPICallError as err:
                raise StoreError(f"the tenant registry of {self.uri} could not be written: {err}") from err
        raise StoreError(f"the tenant registry of {self.uri}: tenant {tenant!r} kept changing under "
                         f"{CHANGE_ATTEMPTS} attempts to set it to {stage!r}; try again")

    def close(self) -> None:
        if self._client is not None:
            _close_client(self._client)
            self._client = None
            self._tables = {}


def _activity_filter(types: list[str] | None):
    """The row filter of an activity read: the latest cell of each activity column, and
    with `types` only the rows whose `type` cell is one of them (a condition Bigtable
    evaluates, so other rows are not sent)."""
    from google.cloud.bigtable import row_filters as rf

    latest = rf.RowFilterChain([rf.FamilyNameRegexFilter(ACTIVITY_FAMILY), rf.CellsColumnLimitFilter(1)])
    if types is None:
        return latest
    wanted = b"^(?:" + b"|".join(_re2_literal(t) for t in sorted(set(types))) + b")$"
    has_type = rf.RowFilterChain([rf.ColumnQualifierRegexFilter(b"^type$"), rf.ValueRegexFilter(wanted)])
    return rf.ConditionalRowFilter(has_type, true_filter=latest)


def _activity_from_row(row: Row) -> Activity:
    tenant, lead_id, occurred_at, event_id = parse_activity_row_key(row.key)
    cells = row.cells[ACTIVITY_FAMILY]
    return Activity(
        event_id,
        tenant,
        lead_id,
        cells[b"type"][0].value.decode("utf-8"),
        occurred_at,
        json.loads(cells[b"attributes"][0].value.decode("utf-8")),
    )


def _close_client(client) -> None:
    """Close the gRPC channels a google.cloud.bigtable.Client opened (it has no close())."""
    for name in ("_table_data_client", "_table_admin_client", "_instance_admin_client"):
        gapic = client.__dict__.get(name)
        if gapic is not None:
            gapic.transport.close()
