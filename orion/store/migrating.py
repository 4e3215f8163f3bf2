"""Running the legacy MySQL store and the new store side by side, for the migration.

    orion run --mode passive --legacy-store mysql://root@127.0.0.1:3306/legacy --store bigtable://p/i/activities

Modes (see docs/migration.md):

    legacy   MySQL only: the graph writes and reads the legacy store (no MigratingStore).
    passive  writes go to both stores; every read the graph makes (a lead's history, the
             activity index, lead profiles and the leads due to wake) is served from
             MySQL, and the new store's answer is computed too and compared.
    active   writes go to both stores; reads are served from the new store and compared
             with MySQL's. MySQL keeps receiving every activity, so going back to legacy
             loses nothing written meanwhile.

Every difference is counted (Beam counters `migration_differences` and
`migration_differences:KIND`) and written to a report, one JSON object per line in
REPORT_DIR/differences-*.jsonl: mode, tenant, lead, kind (history, index, profile,
write, unavailable), which store served, and what differed.

A row the serving store refuses goes to the dead letters as with a single store. A row
only the other store refused is written to the report with the whole activity, so it can
be replayed; the run goes on. A lead profile only the other store refused is reported
(kind write) with its tenant and lead. When the other store cannot be reached at all,
reads are still served and writes still made on the serving store, and each miss is
reported.

The graph's DoFns open stores by URI, so a MigratingStore has one too:
`migrating://MODE?legacy=URI&new=URI&report=DIR` (build it with `migration_store_uri`).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import parse_qs, quote, urlsplit

from orion.activities import Activity, format_timestamp
from orion.store.base import (
    STORE_WRITE_FAILED,
    ActivityStore,
    IndexEntries,
    StoredProfile,
    StoreError,
    WriteFailure,
    WriteResult,
    profiles_to_write,
)

PASSIVE, ACTIVE = "passive", "active"
SCHEME = "migrating"
HISTORY, INDEX, PROFILE, WRITE, UNAVAILABLE = "history", "index", "profile", "write", "unavailable"
METRICS_NAMESPACE = "orion"  # orion.transforms.intake.METRICS_NAMESPACE, without importing Beam
SHOWN = 10  # event ids / index days listed per difference


def migration_store_uri(mode: str, legacy: str, new: str, report_dir: str | os.PathLike) -> str:
    if mode not in (PASSIVE, ACTIVE):
        raise StoreError(f"a migrating store runs in mode passive or active, not {mode!r}")
    return (f"{SCHEME}://{mode}?legacy={quote(legacy, safe='')}&new={quote(new, safe='')}"
            f"&report={quote(str(report_dir), safe='')}")


def _store_name(uri: str) -> str:
    return urlsplit(uri).scheme


class DifferenceReport:
    """Appends differences to REPORT_DIR/differences-<unique>.jsonl (one file per store
    object, so parallel workers never share a file) and counts them."""

    def __init__(self, report_dir: str, mode: str):
        self.report_dir = Path(report_dir)
        self.mode = mode
        self.path = self.report_dir / f"differences-{uuid.uuid4().hex[:12]}.jsonl"
        self.file = None
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, kind: str, tenant: str, lead_id: str, served_from: str, detail: str, **extra) -> None:
        record = {"at": format_timestamp(int(time.time() * 1000)), "mode": self.mode, "kind": kind,
                  "tenant": tenant, "lead_id": lead_id, "served_from": served_from, "detail": detail, **extra}
        with self.lock:
            if self.file is None:
                self.report_dir.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a", encoding="utf-8")
            self.file.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            self.file.flush()
            self.counts[kind] = self.counts.get(kind, 0) + 1
        _count(kind)

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


def _count(kind: str) -> None:
    try:
        from apache_beam.metrics import Metrics
    except ImportError:  # pragma: no cover - the store works without Beam
        return
    Metrics.counter(METRICS_NAMESPACE, "migration_differences").inc()
    Metrics.counter(METRICS_NAMESPACE, f"migration_differences:{kind}").inc()


def _profile_difference(mine: str | None, theirs: str | None, serving: str, other: str) -> str:
    """What differs between two stored profiles, without repeating them (they may be long)."""
    if theirs is None:
        return f"only in {serving}"
    if mine is None:
        return f"only in {other}"
    return f"{len(mine)} characters in {serving}, {len(theirs)} in {other}, not the same"


def _fingerprint(activity: Activity) -> tuple:
    return (activity.occurred_at, activity.type, json.dumps(activity.attributes, sort_keys=True, default=str))


class MigratingStore(ActivityStore):
    """Both stores behind the one interface: writes go to both, reads are served from
    one (MySQL in passive mode, the new store in active mode) and compared with the
    other's answer."""

    def __init__(self, uri: str, open_store):
        """`open_store` opens the legacy and the new store from their URIs
        (orion.store.opening.open_store)."""
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        mode = parts.netloc
        try:
            legacy, new, report = query["legacy"][0], query["new"][0], query["report"][0]
        except (KeyError, IndexError):
            raise StoreError(f"bad migrating store URI {uri!r}; build it with migration_store_uri()") from None
        if mode not in (PASSIVE, ACTIVE):
            raise StoreError(f"a migrating store runs in mode passive or active, not {mode!r}")
        if _store_name(legacy) != "mysql":
            raise StoreError(f"the legacy store must be mysql://USER:PASSWORD@HOST:PORT/DB, not {legacy!r}")
        self.uri = uri
        self.mode = mode
        self.legacy = open_store(legacy)
        self.new = open_store(new)
        self.serving, self.other = (self.legacy, self.new) if mode == PASSIVE else (self.new, self.legacy)
        self.serving_name = f"legacy {_store_name(legacy)}" if mode == PASSIVE else f"new {_store_name(new)}"
        self.other_name = f"new {_store_name(new)}" if mode == PASSIVE else f"legacy {_store_name(legacy)}"
        self.report = DifferenceReport(report, mode)

    # --- writes: both stores ---------------------------------------------------------

    def init(self) -> None:
        self.serving.init()
        try:
            self.other.init()
        except StoreError as error:
            self.report.add(UNAVAILABLE, "", "", self.serving_name, f"{self.other_name} could not be initialised: {error}")

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        result = self.serving.write_with_failures(activities)
        try:
            other_failed = self.other.write_with_failures(activities).failed
        except StoreError as error:
            other_failed = [WriteFailure(a, STORE_WRITE_FAILED, f"unreachable: {error}") for a in activities]
        refused_here = {id(f.activity) for f in result.failed}
        refused_there = {id(f.activity) for f in other_failed}
        for failure in other_failed:
            if id(failure.activity) not in refused_here:
                a = failure.activity
                self.report.add(WRITE, a.tenant, a.lead_id, self.serving_name,
                                f"{self.other_name} did not store {a.event_id}: {failure.reason}: {failure.detail}",
                                activity=a.to_json_dict())
        for failure in result.failed:
            if id(failure.activity) not in refused_there:
                a = failure.activity
                self.report.add(WRITE, a.tenant, a.lead_id, self.serving_name,
                                f"{self.serving_name} refused {a.event_id} ({failure.reason}: {failure.detail}) "
                                f"but {self.other_name} stored it", activity=a.to_json_dict())
        return result

    def index_activities(self, activities: Sequence[Activity]) -> int:
        entries = self.serving.index_activities(activities)
        try:
            self.other.index_activities(activities)
        except StoreError as error:
            leads = sorted({(a.tenant, a.lead_id) for a in activities})
            for tenant, lead_id in leads:
                self.report.add(UNAVAILABLE, tenant, lead_id, self.serving_name,
                                f"{self.other_name} could not index: {error}")
        return entries

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        given = self.serving.write_profiles(profiles)
        try:
            self.other.write_profiles(profiles)
        except (StoreError, ValueError) as error:
            kind, what = (UNAVAILABLE, "could not write") if isinstance(error, StoreError) else (WRITE, "refused")
            for profile in profiles_to_write(profiles):
                self.report.add(kind, profile.tenant, profile.lead_id, self.serving_name,
                                f"{self.other_name} {what} the lead's profile: {error}")
        return given

    # --- reads: served from one, compared with the other -------------------------------

    def history(self, tenant: str, lead_id: str, *, since: int | None = None, until: int | None = None,
                types: Iterable[str] | None = None, limit: int | None = None) -> list[Activity]:
        types = None if types is None else list(types)
        served = self.serving.history(tenant, lead_id, since=since, until=until, types=types, limit=limit)
        try:
            other = self.other.history(tenant, lead_id, since=since, until=until, types=types, limit=limit)
        except StoreError as error:
            self.report.add(UNAVAILABLE, tenant, lead_id, self.serving_name,
                            f"{self.other_name} could not read the history: {error}")
            return served
        mine = {a.event_id: _fingerprint(a) for a in served}
        theirs = {a.event_id: _fingerprint(a) for a in other}
        if mine != theirs:
            only_here = sorted(set(mine) - set(theirs))
            only_there = sorted(set(theirs) - set(mine))
            changed = sorted(e for e in set(mine) & set(theirs) if mine[e] != theirs[e])
            parts = [f"{len(only_here)} only in {self.serving_name}" if only_here else "",
                     f"{len(only_there)} only in {self.other_name}" if only_there else "",
                     f"{len(changed)} differ in time, type or attributes" if changed else ""]
            self.report.add(
                HISTORY, tenant, lead_id, self.serving_name,
                "history differs: " + ", ".join(p for p in parts if p),
                query={"since": since, "until": until, "types": types, "limit": limit},
                only_in_serving=only_here[:SHOWN], only_in_other=only_there[:SHOWN], differing=changed[:SHOWN])
        return served

    def read_index(self, tenant: str, lead_id: str, *, types: Iterable[str] | None = None,
                   since_day=None) -> IndexEntries:
        types = None if types is None else list(types)
        served = self.serving.read_index(tenant, lead_id, types=types, since_day=since_day)
        try:
            other = self.other.read_index(tenant, lead_id, types=types, since_day=since_day)
        except StoreError as error:
            self.report.add(UNAVAILABLE, tenant, lead_id, self.serving_name,
                            f"{self.other_name} could not read the index: {error}")
            return served
        if served != other:
            keys = sorted(set(served) | set(other))
            differing = [{"type": t, "day": d.isoformat(), "serving": served.get((t, d)), "other": other.get((t, d))}
                         for t, d in keys if served.get((t, d)) != other.get((t, d))]
            self.report.add(INDEX, tenant, lead_id, self.serving_name,
                            f"activity index differs on {len(differing)} (type, day) entries "
                            "([count, last seen ms] serving vs other)", differing=differing[:SHOWN])
        return served

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        served = self.serving.read_profiles(keys)
        try:
            other = self.other.read_profiles(keys)
        except StoreError as error:
            for tenant, lead_id in dict.fromkeys(keys):
                self.report.add(UNAVAILABLE, tenant, lead_id, self.serving_name,
                                f"{self.other_name} could not read the profile: {error}")
            return served
        reported = set()
        for (tenant, lead_id), mine, theirs in zip(keys, served, other):
            if mine != theirs and (tenant, lead_id) not in reported:
                reported.add((tenant, lead_id))
                self.report.add(PROFILE, tenant, lead_id, self.serving_name, "profile differs: " + _profile_difference(
                    mine, theirs, self.serving_name, self.other_name))
        return served

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        tenants = None if tenants is None else list(tenants)
        served = self.serving.due_profiles(due_by, tenants)
        try:
            other = self.other.due_profiles(due_by, tenants)
        except StoreError as error:
            self.report.add(UNAVAILABLE, "", "", self.serving_name,
                            f"{self.other_name} could not list the leads due by {due_by}: {error}")
            return served
        mine = {(tenant, lead_id): wake for tenant, lead_id, wake in served}
        theirs = {(tenant, lead_id): wake for tenant, lead_id, wake in other}
        for tenant, lead_id in sorted(set(mine) | set(theirs)):
            here, there = mine.get((tenant, lead_id)), theirs.get((tenant, lead_id))
            if here != there:
                self.report.add(PROFILE, tenant, lead_id, self.serving_name,
                                f"due by {due_by}: next wake {here} in {self.serving_name}, "
                                f"{there} in {self.other_name} (None: not due)",
                                due_by=due_by, serving=here, other=there)
        return served

    def count_profiles(self) -> int:
        return self.serving.count_profiles()

    def count(self) -> int:
        return self.serving.count()

    def close(self) -> None:
        self.report.close()
        for store in (self.legacy, self.new):
            store.close()
