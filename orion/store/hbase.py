"""The HBase activity store: `hbase://HOST:PORT/TABLE` (PORT defaults to 9090; TABLE may
be NAMESPACE:TABLE), through HBase's Thrift server.

The client: HBase's Thrift 2 interface (THBaseService, `hbase thrift2 start`), spoken
with thriftpy2, rather than HappyBase. HappyBase speaks HBase's older Thrift 1 interface,
whose writes carry one timestamp per request (mutateRowsTs): with every activity written
at its own cell timestamp (the row design below), that is one request per distinct
activity time, i.e. per activity, where Thrift 2 sets a timestamp per cell
(TColumnValue.timestamp) and writes 500 rows in one putMultiple. Thrift 2 also reads many
rows in one getMultiple and streams scans through scanners. thriftpy2 is the Thrift
library HappyBase itself is built on; the part of HBase's own IDL
(hbase-thrift's thrift2/hbase.thrift) that the store uses is embedded below, field ids
and types as HBase declares them. The server must be HBase's Thrift 2 server with its
default buffered transport and binary protocol (a Thrift 1 server is refused with a
message that says so).

Rows, keys and cells are the Bigtable store's (orion/store/bigtable.py), so the layout,
the salt and the bootstrap's verification ranges are shared:

- TABLE: one row per activity, TENANT#SALT#LEAD#REVERSED_TIME#EVENT_ID, family "a" with
  `type`, `attributes` (JSON) and `occurred_at` (decimal epoch ms).
- TABLE-index: one row per (tenant, lead, type, UTC day), TENANT#SALT#LEAD#TYPE#YYYY-MM-DD,
  one cell per distinct event id in family "e" (value: its occurred_at); count = cells,
  last seen = the largest value.
- TABLE-profiles: one row per (tenant, lead), TENANT#SALT#LEAD, family "p": `data` (the
  encoded profile) and `next_wake` (fixed-width digits whose byte order is time order).

Every activity and index cell is written with an explicit cell timestamp, the activity's
occurred_at in epoch milliseconds (HBase's unit; clamped at 0, as HBase has no earlier
timestamps), and every profile cell with timestamp 0, so a retried or rerun write sets the
same cells (the later write of a cell wins) and the families keep one version.

Two differences from Bigtable, both from HBase's delete markers, which by default hide
every cell of their column at or below their timestamp, including cells written after
them: a lead that waits in no flow has an empty `next_wake` value rather than no cell (the
store never deletes, so no write of a lead's profile, all at timestamp 0, can be hidden),
and `init` creates the families with NEW_VERSION_BEHAVIOR, under which a delete hides only
what was written before it, so an activity deleted by hand and written again (a bootstrap
repairing its target) is there again.

Writes: 500 rows per putMultiple. A row key over HBase's 32,767 bytes is `unstorable`
before anything is sent. A request the server cannot turn into puts (a cell over its
hbase.client.keyvalue.maxsize, 10 MB by default) is split in halves until the rows at
fault are alone: those are `unstorable`, the rest is written. A request HBase fails
(TIOError) is retried with exponential backoff; what still fails is `store_write_failed`.
A broken connection (the server closes connections idle for a minute) is reopened and
the call retried; scans resume after the last row delivered.

    python -m orion.testing.hbase --table activities   # a local HBase: prints the URI
    orion store init hbase://127.0.0.1:9090/activities
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import threading
import time
from collections import deque
from datetime import date
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlsplit

from orion.activities import Activity
from orion.store.base import (
    MAX_MS,
    MIN_MS,
    STORE_WRITE_FAILED,
    UNSTORABLE,
    ActivityStore,
    IndexEntries,
    StoredProfile,
    StoreError,
    WriteFailure,
    WriteResult,
    activity_day,
    attributes_json,
    profiles_to_write,
    with_backoff,
)
from orion.store.bigtable import (
    ACTIVITY_FAMILY,
    INDEX_FAMILY,
    INDEX_TABLE_SUFFIX,
    PROFILE_FAMILY,
    PROFILE_TABLE_SUFFIX,
    SEPARATOR,
    activity_row_key,
    encode_id,
    index_key_ranges,
    index_row_key,
    lead_prefix,
    parse_activity_row_key,
    parse_index_row_key,
    parse_profile_row_key,
    parse_wake_value,
    prefix_end,
    profile_row_key,
    reversed_time,
    wake_value,
)

DEFAULT_PORT = 9090  # HBase's Thrift server's default
PROFILE_CELL_TIMESTAMP = 0  # the cell timestamp of every profile cell (see the module docstring)
NO_WAKE = b""  # the next_wake value of a lead that waits in no flow
BATCH_SIZE = 500  # rows per putMultiple
READ_KEYS_PER_REQUEST = 2000  # row keys per getMultiple of read_profiles
SCAN_BATCH = 2000  # rows per getScannerRows
MAX_ROW_KEY = 32_767  # bytes: HBase's limit (a row key's length is a Java short)
URI_FORM = "hbase://HOST:PORT/TABLE"

_A, _E, _P = ACTIVITY_FAMILY.encode(), INDEX_FAMILY.encode(), PROFILE_FAMILY.encode()
_DATA, _WAKE = b"data", b"next_wake"
# HBase's table names: an optional namespace, then letters, digits, '_', '-' and '.', not
# starting with '-' or '.'.
_TABLE_NAME = re.compile(r"(?:(?P<namespace>[A-Za-z0-9_]+):)?(?P<qualifier>[A-Za-z0-9_][A-Za-z0-9_.-]*)")
_KEYS_ONLY = b"FirstKeyOnlyFilter() AND KeyOnlyFilter()"
_UNKNOWN_METHOD = 1  # TApplicationException.UNKNOWN_METHOD

# The part of HBase's thrift2/hbase.thrift (HBase 2.x) the store uses; ids and types are
# HBase's, so the server reads these messages as its own (fields left out are optional,
# and a reader skips fields it does not know). TDelete.deleteType is HBase's TDeleteType,
# an i32 on the wire.
THRIFT_IDL = """
struct TColumn { 1: required binary family, 2: optional binary qualifier, 3: optional i64 timestamp }
struct TColumnValue {
  1: required binary family, 2: required binary qualifier, 3: required binary value, 4: optional i64 timestamp
}
struct TResult { 1: optional binary row, 2: required list<TColumnValue> columnValues }
struct TGet {
  1: required binary row, 2: optional list<TColumn> columns, 5: optional i32 maxVersions,
  6: optional binary filterString
}
struct TPut { 1: required binary row, 2: required list<TColumnValue> columnValues }
struct TDelete {
  1: required binary row, 2: optional list<TColumn> columns, 3: optional i64 timestamp,
  4: optional i32 deleteType = 1
}
struct TScan {
  1: optional binary startRow, 2: optional binary stopRow, 3: optional list<TColumn> columns,
  4: optional i32 caching, 5: optional i32 maxVersions = 1, 7: optional binary filterString
}
struct TTableName { 1: optional binary ns, 2: required binary qualifier }
struct TColumnFamilyDescriptor {
  1: required binary name, 2: optional map<binary, binary> attributes, 10: optional i32 maxVersions
}
struct TTableDescriptor { 1: required TTableName tableName, 2: optional list<TColumnFamilyDescriptor> columns }
exception TIOError { 1: optional string message, 2: optional bool canRetry }
exception TIllegalArgument { 1: optional string message }
service THBaseService {
  list<TResult> getMultiple(1: required binary table, 2: required list<TGet> tgets) throws (1: TIOError io)
  void putMultiple(1: required binary table, 2: required list<TPut> tputs) throws (1: TIOError io)
  void deleteSingle(1: required binary table, 2: required TDelete tdelete) throws (1: TIOError io)
  i32 openScanner(1: required binary table, 2: required TScan tscan) throws (1: TIOError io)
  list<TResult> getScannerRows(1: required i32 scannerId, 2: i32 numRows = 1)
      throws (1: TIOError io, 2: TIllegalArgument ia)
  void closeScanner(1: required i32 scannerId) throws (1: TIOError io, 2: TIllegalArgument ia)
  TTableDescriptor getTableDescriptor(1: required TTableName table) throws (1: TIOError io)
  bool tableExists(1: TTableName tableName) throws (1: TIOError io)
  void createTable(1: required TTableDescriptor desc, 2: optional list<binary> splitKeys) throws (1: TIOError io)
  void addColumnFamily(1: required TTableName tableName, 2: required TColumnFamilyDescriptor column)
      throws (1: TIOError io)
  list<string> listNamespaces() throws (1: TIOError io)
}
"""


@functools.lru_cache(maxsize=None)
def hbase_thrift():
    """The Thrift module (structs, exceptions, THBaseService) built from THRIFT_IDL."""
    try:
        import thriftpy2
    except ImportError as err:
        raise StoreError("the HBase store needs thriftpy2: pip install thriftpy2 (or pip install -e .)") from err
    return thriftpy2.load_fp(io.StringIO(THRIFT_IDL), module_name="orion_hbase_thrift")


def thrift_client(host: str, port: int, timeout_s: float = 60.0):
    """A connected THBaseService client (buffered transport, binary protocol: the Thrift
    server's defaults). Raises thriftpy2's TTransportException when nothing answers."""
    from thriftpy2.rpc import make_client

    return make_client(hbase_thrift().THBaseService, host, port, timeout=int(timeout_s * 1000))


def _transport_errors() -> tuple[type, ...]:
    from thriftpy2.protocol.exc import TProtocolException
    from thriftpy2.transport import TTransportException

    return TTransportException, TProtocolException, OSError, EOFError


def parse_hbase_uri(uri: str) -> tuple[str, int, str]:
    """hbase://HOST[:PORT]/TABLE -> (host, port, table)."""
    if not isinstance(uri, str) or not uri.startswith("hbase://"):
        raise StoreError(f"bad HBase URI {uri!r}; write {URI_FORM}")
    parts = urlsplit(uri)
    table = parts.path[1:] if parts.path.startswith("/") else ""
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError:
        host = port = None
    if not host or port is None or not table or "/" in table or parts.query or parts.fragment:
        raise StoreError(f"bad HBase URI {uri!r}; write {URI_FORM} (the Thrift server's host and port), "
                         "for example hbase://127.0.0.1:9090/activities")
    found = _TABLE_NAME.fullmatch(table)
    if found is None or found.group("namespace") == "hbase" or len(table) + len(PROFILE_TABLE_SUFFIX) > 200:
        raise StoreError(f"bad HBase table name {table!r} in {uri!r}: letters, digits, '_', '-' and '.', not "
                         "starting with '-' or '.', at most 191 characters, optionally after NAMESPACE: "
                         "(not the 'hbase' namespace)")
    return host, port, table


def cell_timestamp(occurred_at: int) -> int:
    """The explicit cell timestamp of an activity's cells: epoch milliseconds, at least 0."""
    return max(occurred_at, 0)


def _quoted(value: bytes) -> bytes:
    """A filter-language string literal: single quotes, a quote inside doubled."""
    return b"'" + value.replace(b"'", b"''") + b"'"


def type_filter(types: Iterable[str]) -> bytes:
    """A filter string keeping the activity rows whose `type` is one of `types`."""
    return b" OR ".join(
        b"(SingleColumnValueFilter(%s, %s, =, %s, true, true))"
        % (_quoted(_A), _quoted(b"type"), _quoted(b"binary:" + t.encode("utf-8")))
        for t in sorted(set(types)))


class _ScanBroken(Exception):
    """A scanner call failed; the scan reopens after the last row delivered."""


class HBaseStore(ActivityStore):
    """See the module docstring for the layout. The Thrift connection opens lazily, so the
    store can be constructed (and its URI checked) where nothing is running; one
    connection per store, its calls serialized (a Thrift client is not thread-safe)."""

    attempts = 6  # tries per request before a row is reported as failed or the store gives up
    first_delay = 0.1  # seconds; doubles per attempt up to max_delay
    max_delay = 5.0
    timeout_s = 60.0  # socket timeout of one call
    sleep = staticmethod(time.sleep)  # between attempts (tests record the backoff instead)

    def __init__(self, uri: str):
        self.uri = uri
        self.host, self.port, self.table_id = parse_hbase_uri(uri)
        self.index_table_id = self.table_id + INDEX_TABLE_SUFFIX
        self.profile_table_id = self.table_id + PROFILE_TABLE_SUFFIX
        self._client = None
        self._client_pid = None
        self._lock = threading.RLock()

    # the connection

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close in any way
                pass

    def _unreachable(self, error: object) -> StoreError:
        return StoreError(f"cannot reach HBase's Thrift server at {self.host}:{self.port} for {self.uri} ({error}); "
                          f"start it with `hbase thrift2 start -p {self.port}` (or `python -m orion.testing.hbase` "
                          "for a local one)")

    def _call(self, method: str, *args, retry: bool = True):
        """One Thrift call. A broken or refused connection is reopened and the call made
        again (the first time at once: the server closes idle connections), with backoff
        after that, `attempts` times in all, then StoreError; with retry=False it raises
        _ScanBroken at once. Thrift's own exceptions (TIOError...) propagate."""
        from thriftpy2.thrift import TApplicationException

        transport_errors = _transport_errors()
        delay, error = self.first_delay, None
        for attempt in range(1, self.attempts + 1):
            with self._lock:
                try:
                    if self._client is None or self._client_pid != os.getpid():
                        self._client = None  # a forked child never shares its parent's socket
                        self._client = thrift_client(self.host, self.port, self.timeout_s)
                        self._client_pid = os.getpid()
                    return getattr(self._client, method)(*args)
                except TApplicationException as err:
                    if err.type == _UNKNOWN_METHOD:
                        raise StoreError(f"the Thrift server at {self.host}:{self.port} does not know {method}: it is "
                                         f"not HBase's Thrift 2 server; start that one with `hbase thrift2 start -p "
                                         f"{self.port}` ({err})") from err
                    raise
                except transport_errors as err:
                    self._drop_client()
                    error = err
            if not retry:
                raise _ScanBroken(error)
            if attempt > 1:
                self.sleep(delay)
                delay = min(delay * 2, self.max_delay)
        raise self._unreachable(error)

    def _name(self, table_id: str) -> bytes:
        return table_id.encode("ascii")

    def _table_name(self, table_id: str):
        namespace, _, qualifier = table_id.rpartition(":")
        return hbase_thrift().TTableName(ns=namespace.encode("ascii") or None, qualifier=qualifier.encode("ascii"))

    def _missing_table(self, table_id: str) -> StoreError:
        return StoreError(f"HBase table {table_id!r} of {self.uri} is missing; create it with: orion store init {self.uri}")

    def _failed(self, err, table_id: str, doing: str) -> StoreError:
        """The StoreError of a TIOError HBase gave while `doing`: a missing table says to
        run init."""
        if not self._call("tableExists", self._table_name(table_id)):
            return self._missing_table(table_id)
        return StoreError(f"HBase failed to {doing} {table_id!r} of {self.uri}: {err.message}")

    def _request(self, table_id: str, doing: str, method: str, *args):
        """A call about table_id whose TIOErrors HBase marks retryable are retried with
        backoff; anything else HBase fails becomes a StoreError."""
        thrift = hbase_thrift()
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return self._call(method, *args)
            except thrift.TIOError as err:
                if not err.canRetry or attempt == self.attempts:
                    raise self._failed(err, table_id, doing) from err
                if attempt == 1 and not self._call("tableExists", self._table_name(table_id)):
                    raise self._missing_table(table_id) from err
            self.sleep(delay)
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    def init(self) -> None:
        thrift = hbase_thrift()

        def transient(err: Exception) -> bool:
            # The master refuses table operations while it initializes (PleaseHoldException).
            return isinstance(err, thrift.TIOError) and bool(err.canRetry or "PleaseHold" in (err.message or ""))

        try:
            for table_id, family in ((self.table_id, _A), (self.index_table_id, _E), (self.profile_table_id, _P)):
                name = self._table_name(table_id)
                # One version per cell; deletes hide only what was written before them
                # (see the module docstring).
                descriptor = thrift.TColumnFamilyDescriptor(name=family, maxVersions=1,
                                                            attributes={b"NEW_VERSION_BEHAVIOR": b"true"})
                if not with_backoff(lambda: self._call("tableExists", name), transient):
                    try:
                        with_backoff(lambda: self._call("createTable", thrift.TTableDescriptor(name, [descriptor]), None),
                                     transient)
                    except thrift.TIOError as err:
                        if "TableExistsException" not in (err.message or ""):
                            raise  # another process creating it at the same time is fine
                    continue
                existing = with_backoff(lambda: self._call("getTableDescriptor", name), transient)
                if family not in {column.name for column in existing.columns or ()}:
                    with_backoff(lambda: self._call("addColumnFamily", name, descriptor), transient)
        except thrift.TIOError as err:
            raise StoreError(f"cannot create the tables of {self.uri}: {err.message}") from err

    # writing

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        thrift = hbase_thrift()
        pending, failed = [], []
        for activity in activities:
            try:
                attributes = attributes_json(activity)
            except ValueError as err:
                failed.append(WriteFailure(activity, UNSTORABLE, str(err)))
                continue
            when = cell_timestamp(activity.occurred_at)
            key = activity_row_key(activity.tenant, activity.lead_id, activity.occurred_at, activity.event_id)
            if len(key) > MAX_ROW_KEY:
                failed.append(WriteFailure(activity, UNSTORABLE, f"its row key is {len(key):,} bytes, longer than "
                                                                 f"HBase's {MAX_ROW_KEY:,}"))
                continue
            pending.append((activity, thrift.TPut(key, [
                thrift.TColumnValue(_A, b"type", activity.type.encode("utf-8"), when),
                thrift.TColumnValue(_A, b"attributes", attributes.encode("utf-8"), when),
                thrift.TColumnValue(_A, b"occurred_at", str(activity.occurred_at).encode("ascii"), when),
            ])))
        written, refused = self._put(self.table_id, pending)
        return WriteResult(written, failed + refused)

    def _put(self, table_id: str, pending: list[tuple[object, object]]) -> tuple[int, list[WriteFailure]]:
        """Write (item, TPut) pairs into table_id, BATCH_SIZE per putMultiple. A request
        the server refuses outright is split until the rows at fault are alone (UNSTORABLE);
        one HBase fails is retried with exponential backoff, its rows STORE_WRITE_FAILED
        when it keeps failing. Raises StoreError for a missing table or an unreachable
        server."""
        from thriftpy2.thrift import TApplicationException

        thrift = hbase_thrift()
        name = self._name(table_id)
        written, failed, checked = 0, [], False
        queue = deque((pending[start:start + BATCH_SIZE], 1) for start in range(0, len(pending), BATCH_SIZE))
        while queue:
            group, attempt = queue.popleft()
            try:
                self._call("putMultiple", name, [put for _, put in group])
                written += len(group)
                continue
            except TApplicationException as err:
                # The server failed before writing anything: a row it cannot turn into a
                # put (HBase raises IllegalArgumentException, which Thrift 2 does not declare).
                if len(group) == 1:
                    failed.append(WriteFailure(group[0][0], UNSTORABLE,
                                           "HBase's Thrift server could not make a put of the row (a cell over the "
                                           f"server's hbase.client.keyvalue.maxsize, 10 MB by default?): {err.message}"))
                else:
                    half = len(group) // 2
                    queue.extendleft([(group[half:], attempt), (group[:half], attempt)])
                continue
            except thrift.TIOError as err:
                detail = err.message
            if not checked:
                if not self._call("tableExists", self._table_name(table_id)):
                    raise self._missing_table(table_id)
                checked = True
            if attempt >= self.attempts:
                failed.extend(WriteFailure(item, STORE_WRITE_FAILED,
                                           f"HBase kept failing after {self.attempts} attempts ({detail})")
                              for item, _ in group)
                continue
            self.sleep(min(self.first_delay * 2 ** (attempt - 1), self.max_delay))
            queue.append((group, attempt + 1))
        return written, failed

    # reading

    def _scan(self, table_id: str, start: bytes | None = None, stop: bytes | None = None, *, columns=None,
              filter_string: bytes | None = None, batch: int = SCAN_BATCH) -> Iterator:
        """Stream the rows (TResults) of table_id with start <= key < stop (None:
        unbounded), one version per cell. A scanner that breaks (connection lost, scanner
        expired, a retryable HBase error) is reopened after the last row delivered, with
        backoff, `attempts` times without a new row before giving up."""
        thrift = hbase_thrift()
        name = self._name(table_id)
        after, failures, delay = None, 0, self.first_delay
        while True:
            scan = thrift.TScan(startRow=start if after is None else after + b"\x00", stopRow=stop, columns=columns,
                                caching=batch, maxVersions=1, filterString=filter_string)
            scanner = self._request(table_id, "scan", "openScanner", name, scan)
            try:
                while True:
                    rows = self._call("getScannerRows", scanner, batch, retry=False)
                    for row in rows:
                        after, failures, delay = row.row, 0, self.first_delay
                        yield row
                    if len(rows) < batch:  # the scanner is exhausted
                        return
            except (_ScanBroken, thrift.TIllegalArgument, thrift.TIOError) as err:
                if isinstance(err, thrift.TIOError) and not err.canRetry:
                    raise self._failed(err, table_id, "scan") from err
                failures += 1
                if failures >= self.attempts:
                    if isinstance(err, _ScanBroken):
                        raise self._unreachable(err) from err
                    raise StoreError(f"a scan of {table_id!r} of {self.uri} kept failing: {err}") from err
                self.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            finally:
                try:
                    self._call("closeScanner", scanner, retry=False)
                except Exception:  # noqa: BLE001 - an expired or lost scanner needs no closing
                    pass

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
        # A limited read asks for a little more than the limit: ties at the cut are read on.
        batch = SCAN_BATCH if limit is None else min(SCAN_BATCH, limit + 16)
        rows = self._scan(self.table_id, start_key, end_key, columns=[hbase_thrift().TColumn(_A)],
                          filter_string=None if type_list is None else type_filter(type_list), batch=batch)
        found: list[Activity] = []
        try:
            for row in rows:
                activity = _activity_from_row(row)
                # Rows of one time sort by encoded event id, ascending; keep reading past
                # the limit until the time changes, then order ties by event id, descending.
                if limit is not None and len(found) >= limit and activity.occurred_at != found[-1].occurred_at:
                    break
                found.append(activity)
        finally:
            rows.close()
        found.sort(key=lambda a: (a.occurred_at, a.event_id), reverse=True)
        return found if limit is None else found[:limit]

    def scan(self, start_key: bytes | None = None, end_key: bytes | None = None,
             types: Iterable[str] | None = None) -> Iterator[Activity]:
        """Every activity with start_key <= row key < end_key (None: unbounded), in key
        order, streamed: what the bootstrap's verification reads, range by range. With
        `types`, only activities of those types, chosen by the region servers (a
        SingleColumnValueFilter on the `type` cell): the rows of other types are not sent."""
        filter_string = None
        if types is not None:
            wanted = list(types)
            if not wanted:
                return
            filter_string = type_filter(wanted)
        for row in self._scan(self.table_id, start_key, end_key, columns=[hbase_thrift().TColumn(_A)],
                              filter_string=filter_string):
            yield _activity_from_row(row)

    def count(self) -> int:
        return sum(1 for _ in self._scan(self.table_id, filter_string=_KEYS_ONLY, batch=10_000))

    # the activity index

    def index_activities(self, activities: Sequence[Activity]) -> int:
        thrift = hbase_thrift()
        cells: dict[bytes, list] = {}
        for activity in activities:
            try:
                attributes_json(activity)  # rows write() refuses are not stored, so not indexed
            except ValueError:
                continue
            key = index_row_key(activity.tenant, activity.lead_id, activity.type, activity_day(activity.occurred_at))
            cells.setdefault(key, []).append(thrift.TColumnValue(
                _E, activity.event_id.encode("utf-8"), str(activity.occurred_at).encode("ascii"),
                cell_timestamp(activity.occurred_at)))
        _, failed = self._put(self.index_table_id, [(key, thrift.TPut(key, row)) for key, row in cells.items()])
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
        ranges = index_key_ranges(tenant, lead_id, types, since_day)
        if not ranges:
            return {}
        entries: IndexEntries = {}
        family = [hbase_thrift().TColumn(_E)]
        for start, stop in ranges:
            for row in self._scan(self.index_table_id, start, stop, columns=family):
                _, _, type_, day = parse_index_row_key(row.row)
                if since_day is not None and day < since_day:
                    continue
                entries[(type_, day)] = (len(row.columnValues), max(int(cell.value) for cell in row.columnValues))
        return entries

    # lead profiles

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        thrift = hbase_thrift()
        pending = []
        for profile in profiles_to_write(profiles):
            key = profile_row_key(profile.tenant, profile.lead_id)
            wake = NO_WAKE if profile.next_wake is None else wake_value(profile.next_wake)
            pending.append((profile, thrift.TPut(key, [
                thrift.TColumnValue(_P, _DATA, profile.data.encode("utf-8"), PROFILE_CELL_TIMESTAMP),
                thrift.TColumnValue(_P, _WAKE, wake, PROFILE_CELL_TIMESTAMP),
            ])))
        _, failed = self._put(self.profile_table_id, pending)
        refused = [f for f in failed if f.reason == UNSTORABLE]
        if refused:
            first = refused[0]
            raise ValueError(f"{len(refused)} profiles of {self.uri} were refused, the first "
                             f"{first.activity.tenant!r}/{first.activity.lead_id!r}: {first.detail}")
        if failed:
            raise StoreError(f"{len(failed)} profiles of {self.uri} could not be written: {failed[0].detail}")
        return len(profiles)

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        thrift = hbase_thrift()
        row_keys = [profile_row_key(tenant, lead_id) for tenant, lead_id in keys]
        wanted = sorted(set(row_keys))
        data_only = [thrift.TColumn(_P, _DATA)]
        name = self._name(self.profile_table_id)
        found: dict[bytes, str] = {}
        for start in range(0, len(wanted), READ_KEYS_PER_REQUEST):
            gets = [thrift.TGet(key, data_only, 1) for key in wanted[start:start + READ_KEYS_PER_REQUEST]]
            for result in self._request(self.profile_table_id, "read", "getMultiple", name, gets):
                if result.row and result.columnValues:
                    found[result.row] = result.columnValues[0].value.decode("utf-8")
        return [found.get(key) for key in row_keys]

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        """See ActivityStore.due_profiles. The cost: every profile row (of the tenants
        asked for) is read on the region server; only the due ones are sent back."""
        if due_by < MIN_MS:
            return []
        if tenants is None:
            ranges: list[tuple[bytes | None, bytes | None]] = [(None, None)]
        else:
            prefixes = sorted({encode_id(tenant) + SEPARATOR for tenant in tenants})
            ranges = [(prefix.encode("ascii"), prefix_end(prefix).encode("ascii")) for prefix in prefixes]
            if not ranges:
                return []
        # Waiting leads only (an empty value sorts before every wake), due by due_by.
        due_wakes = b"ValueFilter(>=, 'binary:0') AND ValueFilter(<=, %s)" % _quoted(
            b"binary:" + wake_value(min(due_by, MAX_MS)))
        columns = [hbase_thrift().TColumn(_P, _WAKE)]
        due = []
        for start, stop in ranges:
            for row in self._scan(self.profile_table_id, start, stop, columns=columns, filter_string=due_wakes):
                tenant, lead_id = parse_profile_row_key(row.row)
                due.append((tenant, lead_id, parse_wake_value(row.columnValues[0].value)))
        return sorted(due)  # key order is salt order within a tenant, and percent-encoded

    def count_profiles(self) -> int:
        return sum(1 for _ in self._scan(self.profile_table_id, filter_string=_KEYS_ONLY, batch=10_000))

    def delete_rows(self, table_id: str, keys: Iterable[bytes]) -> None:
        """Delete whole rows of one of the store's tables (every column, every version):
        for repairs and tests; the store itself never deletes."""
        thrift = hbase_thrift()
        for key in keys:
            self._request(table_id, "delete from", "deleteSingle", self._name(table_id), thrift.TDelete(key))

    def close(self) -> None:
        with self._lock:
            self._drop_client()


def _activity_from_row(row) -> Activity:
    tenant, lead_id, occurred_at, event_id = parse_activity_row_key(row.row)
    cells = {cell.qualifier: cell.value for cell in row.columnValues}
    return Activity(event_id, tenant, lead_id, cells[b"type"].decode("utf-8"), occurred_at,
                    json.loads(cells[b"attributes"].decode("utf-8")))
