"""The bootstrap migration: copy the legacy MySQL activities table into the Bigtable
store, then prove the copy is complete. This module holds the plain-Python core (turning a
legacy row into an Activity, the split plan, the per-lead-range checksums, the
verification report, the progress line); the Beam graph is orion/pipelines/bootstrap.py,
its transforms orion/transforms/legacy.py, and the `orion bootstrap` command
orion/pipelines/bootstrap_command.py.

    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities --splits 32
    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities --tenant acme

How a legacy row becomes an Activity (anything else is a dead letter with a reason,
counted, written to the dead-letter files, and never silently dropped):

- tenant, event_id, lead_id and type are VARBINARY: they must be non-empty UTF-8
  (`bad_field` otherwise).
- occurred_at is epoch milliseconds; it must lie in the years 1 to 9999, which every store
  can hold (`bad_timestamp` otherwise). Epoch 0 and times before 1970 are fine.
- attributes: NULL and '' (rows written before the column was JSON) mean "no attributes",
  {}; otherwise a JSON object, storable as UTF-8 (`bad_attributes` for text that is not
  JSON, JSON that is not an object, JSON nested too deep to read, an object that names a
  key twice (MySQL's JSON functions read the first value, a parser the last), or escapes
  of lone surrogates).
- Event ids: the legacy key is (tenant, event_id), so one event id can appear once per
  tenant. The same id in two tenants is two activities (every store keys by tenant), and
  ids differing only in case or trailing spaces are different ids (VARBINARY compares
  bytes, and so do the stores).

Crash and rerun: every write is idempotent (one Bigtable row per activity, explicit cell
timestamps, index entries set, never incremented), so a rerun after a crash rewrites what
the crashed run wrote and adds what it did not: no row missing, none duplicated. The
verification at the end of every run proves it. The legacy table is read as it is while
the bootstrap runs; rows the legacy system changes meanwhile are the passive mode's job
(a changed occurred_at moves an activity's Bigtable row, and the verification reports it).

Verification: both sides are reduced to, per lead range (tenant and the Bigtable salt
bucket of the lead id, 256 per tenant), a count and an order-independent checksum: the
sum modulo 2**64 of a 64-bit BLAKE2b digest of each activity's canonical JSON
[tenant, lead, event id, occurred_at, type, attributes (sorted keys, compact)]. The
source side is computed from the rows this run read; the target side by scanning the
target after every write has finished. Any range that differs, any target row of a tenant
the source does not have, and any legacy row neither migrated nor dead-lettered makes the
command exit 1.

One tenant (`--tenant acme`, the per-tenant rollout of docs/migration.md): only that
tenant's legacy rows are read (its id span, filtered by tenant), and only its key range
of the target is verified; the other tenants' rows, on either side, are left alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from orion.activities import BAD_FIELD, BAD_TIMESTAMP, Activity, BadActivity
from orion.store.base import MAX_MS, MIN_MS, StoreError, attributes_json, text_or_hex

BAD_ATTRIBUTES = "bad_attributes"
LEGACY_COLUMNS = ("id", "tenant", "event_id", "lead_id", "type", "occurred_at", "attributes")
CHECKSUM_MODULUS = 2**64
PROGRESS_EVERY_SECONDS = 5.0
DEFAULT_SPLITS = 16
DEFAULT_CHUNK_ROWS = 5000
EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


# --- legacy rows ------------------------------------------------------------------


class LegacyRow(NamedTuple):
    """One row of the legacy `activities` table, as PyMySQL returns it (ids as bytes,
    attributes as text or None)."""

    id: int
    tenant: bytes
    event_id: bytes
    lead_id: bytes
    type: bytes
    occurred_at: int
    attributes: str | bytes | None

    def to_json_dict(self) -> dict:
        """The row for a dead letter: bytes shown as UTF-8 where they are, else as hex."""
        return {name: text_or_hex(getattr(self, name)) for name in LEGACY_COLUMNS}


def _legacy_text(row: LegacyRow, field: str) -> str:
    value = getattr(row, field)
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadActivity(BAD_FIELD, f"{field} is not UTF-8 text (byte {err.start}: 0x{value[err.start]:02x})") from None
    if not isinstance(value, str) or not value:
        raise BadActivity(BAD_FIELD, f"{field} must not be empty")
    return value


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list) -> dict:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return found


def activity_from_legacy(row: LegacyRow) -> tuple[Activity, str]:
    """A legacy row -> (Activity, its attributes as canonical JSON), or BadActivity with
    the dead-letter reason (see the module docstring for the rules)."""
    tenant = _legacy_text(row, "tenant")
    event_id = _legacy_text(row, "event_id")
    lead_id = _legacy_text(row, "lead_id")
    type_ = _legacy_text(row, "type")
    occurred_at = row.occurred_at
    if not isinstance(occurred_at, int) or not MIN_MS <= occurred_at <= MAX_MS:
        raise BadActivity(BAD_TIMESTAMP, f"occurred_at {occurred_at!r} is outside the years 1 to 9999")
    raw = row.attributes
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadActivity(BAD_ATTRIBUTES, f"attributes are not UTF-8 text: {err}") from None
    if raw is None or raw == "":
        attributes = {}
    else:
        try:
            attributes = json.loads(raw, object_pairs_hook=_object_without_repeats)
        except _RepeatedKey as repeated:
            raise BadActivity(BAD_ATTRIBUTES, f"attributes name {repeated.key!r} twice: MySQL's JSON functions read "
                              "the first value, a JSON parser the last; fix the row so it says one") from None
        except ValueError as err:
            raise BadActivity(BAD_ATTRIBUTES, f"attributes are not JSON: {err}") from None
        except RecursionError:
            raise BadActivity(BAD_ATTRIBUTES, "attributes are JSON nested too deep to read") from None
        if not isinstance(attributes, dict):
            raise BadActivity(BAD_ATTRIBUTES, f"attributes must be a JSON object, not {type(attributes).__name__}")
    activity = Activity(event_id, tenant, lead_id, type_, occurred_at, attributes)
    try:
        text = attributes_json(activity)
    except ValueError as err:
        raise BadActivity(BAD_ATTRIBUTES, str(err)) from None
    return activity, text


# --- checksums per lead range -------------------------------------------------------


class RangeChecksum(NamedTuple):
    """Count and order-independent checksum of the activities of one lead range."""

    count: int
    checksum: int

    def __add__(self, other) -> "RangeChecksum":  # type: ignore[override]
        return RangeChecksum(self.count + other.count, (self.checksum + other.checksum) % CHECKSUM_MODULUS)


EMPTY = RangeChecksum(0, 0)


def lead_range(activity: Activity) -> tuple[str, str]:
    """(tenant, salt bucket of the lead): the unit the verification compares."""
    from orion.store.bigtable import lead_salt

    return activity.tenant, lead_salt(activity.lead_id)


def activity_digest(activity: Activity, attributes_text: str | None = None) -> int:
    """A 64-bit digest of the activity's canonical JSON (see the module docstring)."""
    if attributes_text is None:
        attributes_text = attributes_json(activity)
    canonical = json.dumps([activity.tenant, activity.lead_id, activity.event_id, activity.occurred_at,
                            activity.type, attributes_text], ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(canonical.encode("utf-8"), digest_size=8).digest(), "big")


class RangeSums:
    """Accumulates RangeChecksums by lead range."""

    def __init__(self):
        self.sums: dict[tuple[str, str], list[int]] = {}

    def add(self, activity: Activity, attributes_text: str | None = None) -> None:
        key = lead_range(activity)
        entry = self.sums.get(key)
        if entry is None:
            entry = self.sums[key] = [0, 0]
        entry[0] += 1
        entry[1] = (entry[1] + activity_digest(activity, attributes_text)) % CHECKSUM_MODULUS

    def items(self) -> Iterable[tuple[tuple[str, str], RangeChecksum]]:
        return ((key, RangeChecksum(count, checksum)) for key, (count, checksum) in self.sums.items())

    def __len__(self) -> int:
        return len(self.sums)


class RangeComparison(NamedTuple):
    tenant: str
    salt: str
    source: RangeChecksum
    target: RangeChecksum

    @property
    def matches(self) -> bool:
        return self.source == self.target


def compare_ranges(key: tuple[str, str], source: Iterable[RangeChecksum], target: Iterable[RangeChecksum]) -> RangeComparison:
    return RangeComparison(key[0], key[1], sum(source, EMPTY), sum(target, EMPTY))


# --- the plan -----------------------------------------------------------------------


class BootstrapPlan(NamedTuple):
    source_uri: str
    target_uri: str
    min_id: int | None
    max_id: int | None
    legacy_rows: int  # COUNT(*) when planned
    tenants: tuple[str, ...]
    splits: tuple[tuple[int, int], ...]  # inclusive id ranges
    tenant: str | None = None  # bootstrap this tenant alone (orion bootstrap --tenant)


def plan_splits(min_id: int | None, max_id: int | None, splits: int) -> tuple[tuple[int, int], ...]:
    """[min_id, max_id] cut into at most `splits` contiguous inclusive id ranges of
    (nearly) equal width; none for an empty table."""
    if min_id is None or max_id is None or max_id < min_id:
        return ()
    width = max_id - min_id + 1
    count = max(1, min(splits, width))
    bounds = [min_id + width * n // count for n in range(count + 1)]
    return tuple((bounds[n], bounds[n + 1] - 1) for n in range(count))


def connect_legacy(uri: str):
    """A PyMySQL connection to the legacy database (StoreError, with what to do, when
    it cannot be opened). Reads only: autocommit, UTC, strict mode."""
    import pymysql

    from orion.store.mysql import parse_mysql_uri

    settings = parse_mysql_uri(uri)
    try:
        return pymysql.connect(**settings, charset="utf8mb4", autocommit=True, connect_timeout=10,
                               init_command="SET SESSION time_zone = '+00:00'")
    except pymysql.err.OperationalError as err:
        raise StoreError(f"cannot connect to the legacy MySQL database {settings['database']!r} at "
                         f"{settings['host']}:{settings['port']} as {settings['user']!r}: {err}") from err


def plan_bootstrap(source_uri: str, target_uri: str, splits: int, tenant: str | None = None) -> BootstrapPlan:
    """Ask the legacy database for its id span, row count and tenants (of `tenant` alone,
    when given); make sure the target's tables exist."""
    import pymysql

    from orion.store import open_store

    if not source_uri.startswith("mysql://"):
        raise StoreError(f"the bootstrap reads the legacy MySQL store (mysql://USER:PASSWORD@HOST:PORT/DB), not {source_uri!r}")
    if not target_uri.startswith(("bigtable://", "hbase://")):
        raise StoreError("the bootstrap writes to a Bigtable or HBase store (bigtable://PROJECT/INSTANCE/TABLE, "
                         f"hbase://HOST:PORT/TABLE), not {target_uri!r}")
    connection = connect_legacy(source_uri)
    try:
        with connection.cursor() as cursor:
            if tenant is None:
                cursor.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM activities")
                min_id, max_id, rows = cursor.fetchone()
                cursor.execute("SELECT DISTINCT tenant FROM activities")
                tenants = tuple(sorted(text_or_hex(t) for (t,) in cursor.fetchall()))
            else:
                cursor.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM activities WHERE tenant = %s", (tenant,))
                min_id, max_id, rows = cursor.fetchone()
                tenants = (tenant,)
                if not rows and not _has_profiles(cursor, tenant):
                    cursor.execute("SELECT DISTINCT tenant FROM activities ORDER BY tenant LIMIT 21")
                    known = [text_or_hex(t) for (t,) in cursor.fetchall()]
                    shown = ", ".join(map(repr, known[:20])) + (" ..." if len(known) > 20 else "")
                    raise StoreError(f"the legacy store has no activity and no lead profile of tenant {tenant!r}; "
                                     f"its tenants: {shown or 'none'}")
    except pymysql.err.Error as err:
        raise StoreError(f"cannot read the legacy activities table: {err}") from err
    finally:
        connection.close()
    with open_store(target_uri) as target:
        target.init()
    return BootstrapPlan(source_uri, target_uri, min_id, max_id, int(rows), tenants,
                         plan_splits(min_id, max_id, splits), tenant)


def _has_profiles(cursor, tenant: str) -> bool:
    import pymysql

    try:
        cursor.execute("SELECT 1 FROM lead_profiles WHERE tenant = %s LIMIT 1", (tenant,))
    except pymysql.err.ProgrammingError:  # no such table
        return False
    return cursor.fetchone() is not None


def target_scan_ranges(tenants: Iterable[str], per_tenant: int = 4,
                       whole_table: bool = True) -> list[tuple[bytes | None, bytes | None]]:
    """Row-key ranges that together cover the whole target table: each source tenant's
    rows in `per_tenant` salt slices, and the gaps between tenants (so rows of a tenant
    the source does not have are found too). With whole_table False, the tenants' own
    slices alone (a bootstrap of one tenant verifies that tenant only)."""
    from orion.store.bigtable import SALT_BUCKETS, SEPARATOR, encode_id

    boundaries: list[bytes] = []
    slice_starts: set[bytes] = set()  # where each of the tenants' own slices starts
    for prefix in sorted(encode_id(t) + SEPARATOR for t in set(tenants)):
        slices = max(1, min(per_tenant, SALT_BUCKETS))
        starts = [(prefix + f"{SALT_BUCKETS * n // slices:02x}").encode("ascii") for n in range(slices)]
        slice_starts.update(starts)
        boundaries += starts
        boundaries.append((prefix[:-1] + chr(ord(SEPARATOR) + 1)).encode("ascii"))
    edges: list[bytes | None] = [None, *boundaries, None]
    ranges = [(edges[n], edges[n + 1]) for n in range(len(edges) - 1)]
    return ranges if whole_table else [r for r in ranges if r[0] in slice_starts]


# --- the verification report --------------------------------------------------------


class Verification(NamedTuple):
    ranges: list[RangeComparison]
    rows_read: int
    converted: int
    refused: int  # bad legacy rows, dead-lettered
    store_failed: int  # rows the target refused, dead-lettered
    dead_letters: dict[str, int]  # by reason
    late_rows: int = 0  # legacy rows written since the plan, compared too (with_late_rows)

    @property
    def differing(self) -> list[RangeComparison]:
        return [r for r in self.ranges if not r.matches]

    @property
    def accounted(self) -> bool:
        """Every legacy row read was either converted or dead-lettered."""
        return self.rows_read == self.converted + self.refused

    @property
    def ok(self) -> bool:
        return not self.differing and self.accounted

    def render(self, shown: int = 20) -> str:
        source = sum((r.source for r in self.ranges), EMPTY)
        target = sum((r.target for r in self.ranges), EMPTY)
        lines = [
            "verification:",
            f"  legacy rows read:     {self.rows_read:,}",
            f"  converted:            {self.converted:,}",
            f"  dead letters:         {sum(self.dead_letters.values()):,}"
            + "".join(f"\n    {reason}: {n:,}" for reason, n in sorted(self.dead_letters.items())),
            f"  activities expected:  {source.count:,} (checksum {source.checksum:016x})",
            f"  activities in target: {target.count:,} (checksum {target.checksum:016x})",
            f"  lead ranges compared: {len(self.ranges):,} (tenant x salt bucket), {len(self.differing):,} differ",
        ]
        if self.late_rows:
            lines.insert(5, f"  written since the plan: {self.late_rows:,} legacy rows, compared too (a job in "
                            "passive mode writes them to both stores; if none does, they are missing from the "
                            "target until the bootstrap runs again)")
        if not self.accounted:
            lines.append(f"  MISMATCH: {self.rows_read - self.converted - self.refused:,} legacy rows were read "
                         "but neither converted nor dead-lettered")
        for r in sorted(self.differing, key=lambda r: (r.tenant, r.salt))[:shown]:
            lines.append(f"  MISMATCH tenant {r.tenant!r} salt {r.salt}: source {r.source.count:,} rows "
                         f"{r.source.checksum:016x}, target {r.target.count:,} rows {r.target.checksum:016x}")
        if len(self.differing) > shown:
            lines.append(f"  ... and {len(self.differing) - shown:,} more differing ranges")
        extra = [r for r in self.differing if r.target.count > r.source.count]
        if extra:
            lines.append(f"  {len(extra):,} of the differing ranges hold more rows in the target than in the legacy "
                         "store: rows the legacy store changed since they were copied (an event id moved to another "
                         "lead or time, or deleted) stay in the target, where a rerun does not remove them")
        lines.append("verification OK: every legacy activity is in the target exactly once" if self.ok
                     else "verification FAILED: rerun the bootstrap (it is idempotent) and check the dead letters")
        return "\n".join(lines)


def late_row_sums(source_uri: str, after_id: int | None, tenant: str | None = None,
                  chunk: int = 10_000) -> tuple[RangeSums, int]:
    """The legacy rows written since the plan (id past `after_id`, the planned span's
    end; None: every row), of `tenant` alone when given, as checksums by lead range, and
    how many there are. Rows that do not convert are left out, as the copy leaves them."""
    import pymysql

    sums, count = RangeSums(), 0
    low = -(2 ** 63) if after_id is None else after_id + 1
    columns = ", ".join(LEGACY_COLUMNS)
    connection = connect_legacy(source_uri)
    try:
        while True:
            with connection.cursor() as cursor:
                if tenant is None:
                    cursor.execute(f"SELECT {columns} FROM activities WHERE id >= %s ORDER BY id LIMIT %s",
                                   (low, chunk))
                else:
                    cursor.execute(f"SELECT {columns} FROM activities WHERE id >= %s AND tenant = %s ORDER BY id "
                                   "LIMIT %s", (low, tenant, chunk))
                rows = cursor.fetchall()
            if not rows:
                return sums, count
            for values in rows:
                try:
                    activity, text = activity_from_legacy(LegacyRow(*values))
                except BadActivity:
                    continue
                sums.add(activity, text)
                count += 1
            low = rows[-1][0] + 1
    except pymysql.err.Error as err:
        raise StoreError(f"cannot read the legacy activities table: {err}") from err
    finally:
        connection.close()


def with_late_rows(ranges: Iterable[RangeComparison], late: RangeSums) -> list[RangeComparison]:
    """The comparisons with the rows written since the plan added to their source side:
    the target was scanned after them, so a job that wrote them to both stores (passive
    mode, during a tenant's rollout) has them there too, and they match."""
    extra = dict(late.items())
    found = []
    for r in ranges:
        added = extra.pop((r.tenant, r.salt), None)
        found.append(r if added is None else r._replace(source=r.source + added))
    found += [RangeComparison(tenant, salt, checksum, EMPTY) for (tenant, salt), checksum in extra.items()]
    return found


def ranges_to_json(ranges: Iterable[RangeComparison]) -> str:
    return json.dumps([[r.tenant, r.salt, list(r.source), list(r.target)] for r in ranges], ensure_ascii=False)


def ranges_from_json(text: str) -> list[RangeComparison]:
    return [RangeComparison(t, s, RangeChecksum(*src), RangeChecksum(*tgt)) for t, s, src, tgt in json.loads(text)]


# --- progress -----------------------------------------------------------------------


class ProgressFile:
    """One worker process's counts, rewritten (atomically) into its own JSON file in a
    directory the driver watches, at most every `every` seconds and on `flush`. Files,
    because Beam's local runners report metrics only when the pipeline ends."""

    _by_directory: dict[str, "ProgressFile"] = {}
    _lock = threading.Lock()

    def __init__(self, directory: str, every: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.pid = os.getpid()
        self.path = Path(directory) / f"worker-{self.pid}-{uuid.uuid4().hex[:8]}.json"
        self.every, self.clock = every, clock
        self.counts: dict[str, int] = {}
        self.last = 0.0
        self.lock = threading.Lock()

    @classmethod
    def of(cls, directory: str) -> "ProgressFile":
        """The process's one file for `directory` (DoFns of one process share it; a
        forked worker gets its own)."""
        with cls._lock:
            found = cls._by_directory.get(directory)
            if found is None or found.pid != os.getpid():
                found = cls._by_directory[directory] = cls(directory)
            return found

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n
            if self.clock() - self.last >= self.every:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        self.last = self.clock()
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.counts), encoding="utf-8")
        os.replace(temporary, self.path)


def read_progress(directory: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for path in Path(directory).glob("worker-*.json"):
        try:
            counts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced while being read; the next look sees it
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    return totals


def progress_line(counts: dict[str, int], expected_rows: int, seconds: float) -> str:
    read, written = counts.get("read", 0), counts.get("written", 0)
    share = f" ({100 * read / expected_rows:.0f}%)" if expected_rows else ""
    rate = written / seconds if seconds > 0 else 0.0
    return (f"bootstrap: {read:,} of {expected_rows:,} legacy rows read{share}, {written:,} written, "
            f"{counts.get('dead', 0):,} dead letters, {rate:,.0f} rows/s")


class ProgressPrinter:
    """A thread that prints the summed progress files every `every` seconds to `out`."""

    def __init__(self, directory: str, expected_rows: int, every: float = PROGRESS_EVERY_SECONDS,
                 out=sys.stderr, clock: Callable[[], float] = time.monotonic):
        self.directory, self.expected_rows, self.every, self.out, self.clock = directory, expected_rows, every, out, clock
        self.started = clock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bootstrap-progress", daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stopped.wait(self.every):
            counts = read_progress(self.directory)
            print(progress_line(counts, self.expected_rows, self.clock() - self.started), file=self.out, flush=True)


# --- lead profiles ------------------------------------------------------------------

PROFILE_CHUNK = 500  # profiles read, compared and written at a time
PROFILE_PASSES = 3  # copy passes at most: a job writing both stores meanwhile can race one


class ProfileCopy(NamedTuple):
    """What the copy of the legacy lead profiles found and did."""

    legacy: int  # profiles in the legacy lead_profiles table (of the tenant, with --tenant)
    copied: int  # written to the target: missing there, or not the same text
    differing: int  # still not the same in the target after the copy (verifying only: not the same)
    unreadable: int  # rows whose lead id or tenant is not UTF-8 text: not copied
    table: bool = True  # the legacy database has a lead_profiles table

    @property
    def ok(self) -> bool:
        # (a row whose ids are not UTF-8 cannot be copied, as an activity of such a lead
        # cannot: it is said, as the activities' dead letters are, not failed on forever)
        return self.differing == 0

    def render(self) -> str:
        if not self.table:
            return "lead profiles: the legacy database has no lead_profiles table; none to copy"
        line = (f"lead profiles: {self.legacy:,} in the legacy store, {self.copied:,} copied, "
                f"{self.differing:,} not the same in the target")
        if self.unreadable:
            line += (f", {self.unreadable:,} with a tenant or lead id that is not UTF-8 (not copied: no store "
                     "keys such a lead, as no activity of it is copied)")
        verdict = ("profile verification OK: every legacy profile is in the target as it is in the legacy store"
                   if self.ok else "profile verification FAILED: rerun the bootstrap; a difference that stays "
                   "is a lead the job wrote meanwhile in one store only")
        return f"{line}\n{verdict}"


def _legacy_profile_chunks(source_uri: str, tenant: str | None, chunk: int):
    """The legacy lead profiles in primary-key order, `chunk` at a time, as lists of
    (tenant, lead_id, text, next_wake), or (None, raw ids, None, None) for a row whose ids
    are not UTF-8; the text is the profile as the MySQL store reads it (the encoded
    profile, or the profile of a row's columns). Yields None alone when the legacy
    database has no lead_profiles table."""
    import pymysql

    from orion.store.profile_columns import profile_of_columns

    connection = connect_legacy(source_uri)
    columns = ("data, IF(data IS NULL, attributes, NULL), IF(data IS NULL, score, NULL), "
               "IF(data IS NULL, lists, NULL), next_wake")
    try:
        last_tenant, last_lead = (b"" if tenant is None else tenant), b""
        while True:
            if tenant is None:
                where, params = "(tenant > %s OR (tenant = %s AND lead_id > %s))", [last_tenant, last_tenant, last_lead]
            else:
                where, params = "tenant = %s AND lead_id > %s", [tenant, last_lead]
            with connection.cursor() as cursor:
                try:
                    cursor.execute(f"SELECT tenant, lead_id, {columns} FROM lead_profiles WHERE {where} "
                                   "ORDER BY tenant, lead_id LIMIT %s", params + [chunk])
                except pymysql.err.MySQLError as err:
                    code = err.args[0] if err.args else None
                    if code == 1146:  # no such table
                        yield None
                        return
                    if code == 1054 and columns != _OLD_PROFILE_COLUMNS:  # a table from before `data`
                        columns = _OLD_PROFILE_COLUMNS
                        continue
                    raise
                rows = cursor.fetchall()
            if not rows:
                return
            found = []
            for row_tenant, lead_id, data, attributes, score, lists, next_wake in rows:
                try:
                    text_tenant, text_lead = _text_of(row_tenant), _text_of(lead_id)
                except UnicodeDecodeError:
                    found.append((None, (row_tenant, lead_id), None, None))
                    continue
                text = _text_of(data) if data is not None else profile_of_columns(attributes, score, lists)
                found.append((text_tenant, text_lead, text, None if next_wake is None else int(next_wake)))
            yield found
            if tenant is None:
                last_tenant = rows[-1][0]
            last_lead = rows[-1][1]
    except pymysql.err.Error as err:
        raise StoreError(f"cannot read the legacy lead_profiles table: {err}") from err
    finally:
        connection.close()


_OLD_PROFILE_COLUMNS = "NULL, attributes, score, lists, NULL"  # lead_profiles as the legacy system made it


def _text_of(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


def _profile_pass(source_uri: str, target, tenant: str | None, chunk: int, write: bool,
                  progress: Callable[[str], None] | None) -> tuple[int, int, int] | None:
    """One pass over the legacy profiles: (legacy, not the same in the target, unreadable),
    those not the same written to the target when `write`; None without a table."""
    from orion.store.base import StoredProfile

    legacy = differing = unreadable = 0
    for found in _legacy_profile_chunks(source_uri, tenant, chunk):
        if found is None:
            return None
        readable = [row for row in found if row[0] is not None]
        unreadable += len(found) - len(readable)
        legacy += len(found)
        current = target.read_profiles([(t, lead) for t, lead, _, _ in readable])
        todo = [StoredProfile(t, lead, text, wake) for (t, lead, text, wake), now in zip(readable, current)
                if now != text]
        differing += len(todo)
        if write and todo:
            target.write_profiles(todo)
        if progress is not None:
            progress(f"lead profiles: {legacy:,} read, {differing:,} " + ("copied" if write else "not the same"))
    return legacy, differing, unreadable


def copy_profiles(source_uri: str, target, tenant: str | None = None, copy: bool = True,
                  chunk: int = PROFILE_CHUNK, passes: int = PROFILE_PASSES,
                  progress: Callable[[str], None] | None = None) -> ProfileCopy:
    """Make the target's lead profiles (of `tenant`, or all) those of the legacy store:
    each legacy profile the target lacks, or holds as other text, is written to it (with
    `copy` False: only counted). Passes repeat until one finds nothing to copy, which is
    the verification, at most `passes` times, then one pass compares (a job writing both
    stores meanwhile, in passive mode, can write a lead between a pass's read and its
    write). Profiles are lead state (unsubscribes, campaign runs, the sends the
    communication limits count): a new store without them would seed every lead empty."""
    copied = 0
    if copy:
        for _ in range(max(1, passes)):
            done = _profile_pass(source_uri, target, tenant, chunk, True, progress)
            if done is None:
                return ProfileCopy(0, 0, 0, 0, table=False)
            legacy, wrote, unreadable = done
            copied += wrote
            if not wrote:
                return ProfileCopy(legacy, copied, 0, unreadable)
    done = _profile_pass(source_uri, target, tenant, chunk, False, progress)
    if done is None:
        return ProfileCopy(0, 0, 0, 0, table=False)
    legacy, differing, unreadable = done
    return ProfileCopy(legacy, copied, differing, unreadable)
