"""The activity store interface: write activities idempotently, read a lead's history
newest first, keep the activity index (count and last seen per lead, activity type and
UTC day), and keep one durable profile per lead beside the activities. Backends are
chosen by URI scheme:

    sqlite:///PATH                         the embedded default
    bigtable://PROJECT/INSTANCE/TABLE      Cloud Bigtable, or its emulator (BIGTABLE_EMULATOR_HOST)
    mysql://USER:PASSWORD@HOST:PORT/DB     the legacy MySQL / MariaDB store

Every backend passes the same contract suite (tests/test_store_contract.py).

    python -c "from orion.store import open_store; print(open_store('sqlite:///tmp/a.db'))"
"""
from __future__ import annotations

import abc
import json
import time
from datetime import date, timedelta
from typing import Iterable, NamedTuple, Sequence

from orion.activities import _MAX_MS as MAX_MS
from orion.activities import _MIN_MS as MIN_MS
from orion.activities import MS_PER_DAY, Activity
from orion.deadletters import DeadLetter

# Dead-letter reasons a store write can give (the graph's sink sends failed rows to the
# dead letters with these codes).
UNSTORABLE = "unstorable"  # the row itself cannot be stored (bad encoding, too long, not JSON)
STORE_WRITE_FAILED = "store_write_failed"  # the store kept refusing the row after retries
STORE_SOURCE = "store"  # DeadLetter.source of the rows a store refused



class StoreError(RuntimeError):
    """A store that cannot be opened or written; the message says what to do."""


# The packages of the stores' clients: an error of theirs that reaches a command (a server
# that does not answer within the client's retries) is the store's, said in one line.
_CLIENT_PACKAGES = frozenset({"google", "grpc", "pymysql", "thriftpy2", "happybase"})


def store_error(err: BaseException) -> StoreError | None:
    """`err` as the StoreError a command reports: itself, or a store client's own error
    (Google's RetryError past the read deadline, a MySQL connection error ...); None for
    any other error, which is a fault of ours."""
    if isinstance(err, StoreError):
        return err
    if type(err).__module__.split(".")[0] in _CLIENT_PACKAGES:
        return StoreError(f"the store did not answer: {type(err).__name__}: {str(err)[:300]}")
    return None


def text_or_hex(value) -> str:
    """A column's value as text for a message or a dead letter: bytes as UTF-8 where they
    are, else as 0x and their hex (an id written with SQL may be any bytes)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + bytes(value).hex()
    return value


def store_refusal(err: BaseException) -> int:
    """What a command does with an error raised while it used a store: a store's (or its
    client's, store_error) is said in one line and the command exits 2; any other error,
    a fault of ours, is raised again."""
    import sys

    said = store_error(err)
    if said is None:
        raise err
    print(f"orion: {said}", file=sys.stderr)
    return 2


class WriteFailure(NamedTuple):
    """One activity a store could not write: the activity, a short reason code
    (UNSTORABLE or STORE_WRITE_FAILED) and a detail that says what went wrong."""

    activity: Activity
    reason: str
    detail: str


class WriteResult(NamedTuple):
    """What `write_with_failures` did: how many activities were written, and the ones
    that were not (each with its reason). written + len(failed) == len(batch)."""

    written: int
    failed: list[WriteFailure]


class StoreWriteError(StoreError):
    """Raised by `write` when some activities could not be written."""

    def __init__(self, failures: Sequence[WriteFailure]):
        self.failures = list(failures)
        shown = "; ".join(f"{f.activity.event_id!r}: {f.reason}: {f.detail}" for f in self.failures[:3])
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        super().__init__(f"{len(self.failures)} activities were not written: {shown}{more}")


IndexEntries = dict[tuple[str, date], tuple[int, int]]


class HistoryRead(NamedTuple):
    """One lead's history read, as `ActivityStore.history` takes it (no limit)."""

    tenant: str
    lead_id: str
    since: int | None = None
    until: int | None = None
    types: tuple[str, ...] | None = None


class IndexRead(NamedTuple):
    """One lead's index read, as `ActivityStore.read_index` takes it."""

    tenant: str
    lead_id: str
    types: tuple[str, ...] | None = None
    since_day: date | None = None


def activity_day(occurred_at: int) -> date:
    """The UTC day an activity (epoch milliseconds) falls on."""
    return date(1970, 1, 1) + timedelta(days=occurred_at // MS_PER_DAY)


def day_bounds(day: date) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch milliseconds."""
    start = (day - date(1970, 1, 1)).days * MS_PER_DAY
    return start, start + MS_PER_DAY


def index_keys(activities: Iterable[Activity]) -> list[tuple[str, str, str, date]]:
    """The (tenant, lead, type, day) index entries some activities touch, sorted (so
    concurrent writers lock them in one order). Activities whose ids or time no store
    can hold (see check_ids_and_time) touch none. Their attributes are not checked: the
    stores that call this recount each entry from the rows they hold, so an activity
    whose attributes were refused adds nothing to a count."""
    keys = set()
    for a in activities:
        try:
            check_ids_and_time(a)
        except ValueError:
            continue
        keys.add((a.tenant, a.lead_id, a.type, activity_day(a.occurred_at)))
    return sorted(keys)


class StoredProfile(NamedTuple):
    """One lead's durable profile as a store keeps it: the encoded profile (orion.profiles
    writes and reads it; the store treats it as opaque text) and the time its earliest
    waiting flow step is due (None when the lead waits in no flow), which `due_profiles` finds."""

    tenant: str
    lead_id: str
    data: str
    next_wake: int | None = None


def profiles_to_write(profiles: Iterable[StoredProfile]) -> list[StoredProfile]:
    """The profiles a `write_profiles` call stores: one per (tenant, lead), the last one
    given winning, sorted by (tenant, lead_id) (so concurrent writers lock rows in one
    order). ValueError, naming the lead, for a profile no store can hold: ids or data that
    are not UTF-8 text, a next_wake that is not epoch milliseconds within the years 1 to
    9999."""
    latest: dict[tuple[str, str], StoredProfile] = {}
    for profile in profiles:
        for field in ("tenant", "lead_id", "data"):
            value = getattr(profile, field)
            if not isinstance(value, str):
                raise ValueError(f"profile {profile.tenant!r}/{profile.lead_id!r}: {field} must be text, "
                                 f"not {type(value).__name__}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"profile {profile.tenant!r}/{profile.lead_id!r}: {field} is not valid Unicode "
                                 f"text: {err.reason} at {err.start}") from None
        wake = profile.next_wake
        if wake is not None and (not isinstance(wake, int) or isinstance(wake, bool) or not MIN_MS <= wake <= MAX_MS):
            raise ValueError(f"profile {profile.tenant!r}/{profile.lead_id!r}: next_wake must be None or epoch "
                             f"milliseconds within the years 1 to 9999, not {wake!r}")
        latest[(profile.tenant, profile.lead_id)] = profile
    return [latest[key] for key in sorted(latest)]


def leads_by_tenant(keys: Iterable[tuple[str, str]], per_group: int) -> list[tuple[str, list[str]]]:
    """The distinct lead ids of some (tenant, lead_id) keys grouped by tenant, at most
    per_group leads a group: what a SQL store asks for in one statement."""
    leads: dict[str, dict[str, None]] = {}  # a dict keeps the first-seen order, unlike a set
    for tenant, lead_id in keys:
        leads.setdefault(tenant, {})[lead_id] = None
    groups = []
    for tenant, members in leads.items():
        ids = list(members)
        groups += [(tenant, ids[start:start + per_group]) for start in range(0, len(ids), per_group)]
    return groups


class TenantStage(NamedTuple):
    """One tenant's row in the tenant registry (orion/tenants/registry.py): its rollout
    stage (legacy, passive, active, deactivated), when it was set (epoch ms, wall clock)
    and the stage before it (None for a tenant's first)."""

    tenant: str
    stage: str
    changed_at: int
    previous_stage: str | None = None


# The stage of a tenant the registry has no row for (orion.tenants.registry.DEFAULT_STAGE).
DEFAULT_TENANT_STAGE = "legacy"


class ActivityStore(abc.ABC):
    """One lead history store. Writing the same activity twice leaves one copy.

    Writes: `write_with_failures(batch)` writes what it can and returns the rest with a
    reason, so a sink can send them to the dead letters; transient errors are retried
    inside it with exponential backoff. A store that cannot be reached at all raises
    StoreError instead (a runner then retries the bundle). `write(batch)` is the same but
    raises StoreWriteError when any row failed.

    The activity index: `index_activities(batch)`, called with activities that have been
    written, brings the index entries those activities touch up to date: per (tenant,
    lead, type, UTC day) the number of distinct stored activities and the newest
    occurred_at. It sets values (never increments blindly), so retries and reruns leave
    the same index.

    Lead profiles: one row per (tenant, lead) beside the activities, holding the lead's
    encoded profile (opaque text to the store) and when its next waiting flow step is
    due. `write_profiles` upserts, `read_profiles` reads many leads in few round trips,
    `due_profiles` finds the leads whose wake time has come. `init` creates them with
    the activity tables.
    """

    uri: str

    @abc.abstractmethod
    def init(self) -> None:
        """Create tables and indexes; safe to run on an initialized store."""

    @abc.abstractmethod
    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        """Write (or rewrite) activities; returns how many were written and the ones that
        could not be, each with a reason and a detail."""

    def write(self, activities: Sequence[Activity]) -> int:
        """Write (or rewrite) activities; returns how many were written. Raises
        StoreWriteError (listing the failures) if any could not be written; the others
        were written."""
        result = self.write_with_failures(activities)
        if result.failed:
            raise StoreWriteError(result.failed)
        return result.written

    @abc.abstractmethod
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
        """A lead's activities with since <= occurred_at < until, newest first (ties by
        event id, descending), at most `limit`."""

    def histories(self, reads: Sequence[HistoryRead]) -> list[list[Activity]]:
        """`history` of each read, in order. A store may answer many in one round trip;
        this one asks for each in turn."""
        return [self.history(r.tenant, r.lead_id, since=r.since, until=r.until, types=r.types) for r in reads]

    @abc.abstractmethod
    def count(self) -> int:
        """How many activities the store holds."""

    @abc.abstractmethod
    def index_activities(self, activities: Sequence[Activity]) -> int:
        """Update the activity index for every (tenant, lead, type, UTC day) these
        written activities touch; idempotent. Returns how many index entries it set."""

    @abc.abstractmethod
    def read_index(
        self,
        tenant: str,
        lead_id: str,
        *,
        types: Iterable[str] | None = None,
        since_day: date | None = None,
    ) -> IndexEntries:
        """A lead's activity index: {(type, UTC day): (count, last seen epoch ms)} for the
        given types (default all) and days on or after since_day (default all)."""

    def read_indexes(self, reads: Sequence[IndexRead]) -> list[IndexEntries]:
        """`read_index` of each read, in order. A store may answer many in one round
        trip; this one asks for each in turn."""
        return [self.read_index(r.tenant, r.lead_id, types=r.types, since_day=r.since_day) for r in reads]

    @abc.abstractmethod
    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        """Upsert each lead's profile: its data and next_wake replace what was stored (the
        last one given for a lead wins; writing the same profile twice leaves one row,
        unchanged). Returns how many were given. Transient errors are retried with
        backoff as the activity writes are; a store that cannot be reached raises
        StoreError. A profile no store can hold (see profiles_to_write), or one this
        backend refuses, raises ValueError."""

    @abc.abstractmethod
    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        """The stored profile data of each (tenant, lead_id), in order; None for a lead
        that has none. Many keys are answered in few round trips (the SQL stores: one
        statement per tenant and 500 leads; Bigtable: one ReadRows per 2,000 keys)."""

    @abc.abstractmethod
    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        """(tenant, lead_id, next_wake) of every lead whose next_wake <= due_by (epoch
        ms), only of `tenants` when given, sorted by (tenant, lead_id). A lead whose
        next_wake is None is never due."""

    @abc.abstractmethod
    def count_profiles(self) -> int:
        """How many lead profiles the store holds."""

    # The tenant registry: one row per tenant, its rollout stage. `init` creates it beside
    # the activity tables; a backend that keeps none says so.

    def read_tenant_stages(self) -> list[TenantStage]:
        """Every tenant's registry row, sorted by tenant."""
        raise StoreError(f"{type(self).__name__} keeps no tenant registry; use a sqlite://, mysql:// or "
                         "bigtable:// store for it")

    def change_tenant_stage(self, tenant: str, stage: str, changed_at: int) -> tuple[TenantStage, bool]:
        """Move `tenant` to `stage` in one atomic step: (its row, True) with the stage it
        had as previous_stage (DEFAULT_STAGE when it had no row), or (its row as it was,
        False) when it already has that stage. Two changes at the same moment each see
        the other's stage, never the same one twice."""
        raise StoreError(f"{type(self).__name__} keeps no tenant registry; use a sqlite://, mysql:// or "
                         "bigtable:// store for it")

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "ActivityStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# json.dumps with these settings, built once: every stored row is encoded (and checked)
# with it, and json.dumps would build an encoder per call.
_ATTRIBUTES_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def attributes_json(activity: Activity) -> str:
    """An activity's attributes as compact JSON, checked to be storable as UTF-8 along
    with its ids; ValueError (the detail of an UNSTORABLE failure) otherwise."""
    try:
        text = _ATTRIBUTES_ENCODER.encode(activity.attributes)
    except (TypeError, ValueError) as err:
        raise ValueError(f"attributes are not JSON: {err}") from None
    check_ids_and_time(activity)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"attributes is not valid Unicode text: {err.reason} at {err.start}") from None
    return text


def check_ids_and_time(activity: Activity) -> None:
    """ValueError (the detail of an UNSTORABLE failure) unless the activity's ids are
    UTF-8 text and its time epoch milliseconds within the years 1 to 9999."""
    for field, value in (("event_id", activity.event_id), ("tenant", activity.tenant),
                         ("lead_id", activity.lead_id), ("type", activity.type)):
        if not isinstance(value, str):
            raise ValueError(f"{field} must be text, not {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{field} is not valid Unicode text: {err.reason} at {err.start}") from None
    if not isinstance(activity.occurred_at, int) or isinstance(activity.occurred_at, bool):
        raise ValueError(f"occurred_at must be epoch milliseconds, not {activity.occurred_at!r}")
    if not MIN_MS <= activity.occurred_at <= MAX_MS:
        raise ValueError(f"occurred_at {activity.occurred_at} is outside the years 1 to 9999")


def with_backoff(operation, is_transient, *, attempts: int = 6, first_delay: float = 0.1,
                 max_delay: float = 5.0, sleep=time.sleep):
    """Run `operation()`; retry it with exponential backoff (first_delay, doubling, at most
    max_delay) while it raises an exception `is_transient` accepts, `attempts` times in
    all; the last exception propagates."""
    delay = first_delay
    attempt = 1
    while True:
        try:
            return operation()
        except Exception as err:  # noqa: BLE001 - filtered by is_transient, re-raised otherwise
            if attempt >= attempts or not is_transient(err):
                raise
        sleep(delay)
        delay = min(delay * 2, max_delay)
        attempt += 1


def close_quietly(connection) -> None:
    """Close a database connection that may already be broken (closing one may fail in
    any way; there is nothing left to do about it)."""
    if connection is None:
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - see the docstring
        pass


class BatchWritten(NamedTuple):
    """What `write_batch` did: the activities written, in the batch's order; the dead
    letter of each refused one, by id() of the activity; and the counter increments."""

    written: list
    refused: dict
    counts: dict


def write_batch(store: "ActivityStore", batch: Sequence[Activity]) -> BatchWritten:
    """Write a batch as every engine's store sink does: what the store refuses becomes a
    DeadLetter (source "store", the store's reason and detail), counted as `stored`,
    `store_failed`, `dead_letters` and `dead_letters:REASON`."""
    result = store.write_with_failures(batch)
    counts = {"stored": result.written}
    refused = {}
    for failure in result.failed:
        activity = failure.activity
        refused[id(activity)] = DeadLetter(activity.to_json_dict(), failure.reason, failure.detail, STORE_SOURCE)
        counts[f"dead_letters:{failure.reason}"] = counts.get(f"dead_letters:{failure.reason}", 0) + 1
    if refused:
        counts["store_failed"] = counts["dead_letters"] = len(refused)
    written = [activity for activity in batch if id(activity) not in refused] if refused else list(batch)
    return BatchWritten(written, refused, counts)


def write_profile_batch(store: "ActivityStore", profiles: Sequence[StoredProfile]) -> tuple[list, dict]:
    """Write lead profiles as every engine's profile sink does: the last one of each lead
    given wins; a profile the store cannot hold (ValueError) becomes a DeadLetter (reason
    unstorable, source "store") and the others are written. Returns (the dead letters,
    the counter increments: `profiles_written`, `dead_letters`, `dead_letters:unstorable`)."""
    latest = list({(profile.tenant, profile.lead_id): profile for profile in profiles}.values())
    try:
        return [], {"profiles_written": store.write_profiles(latest)}
    except ValueError:
        pass  # one of them cannot be stored: write them one by one, to find which
    letters, written = [], 0
    for profile in latest:
        try:
            written += store.write_profiles([profile])
        except ValueError as refused:
            letters.append(DeadLetter(profile._asdict(), UNSTORABLE, str(refused), STORE_SOURCE))
    counts = {"profiles_written": written}
    if letters:
        counts["dead_letters"] = counts[f"dead_letters:{UNSTORABLE}"] = len(letters)
    return letters, counts
