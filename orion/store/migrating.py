"""Running the legacy MySQL store and the new store side by side, for the migration.

    orion run --mode passive --legacy-store mysql://root@127.0.0.1:3306/legacy --store bigtable://my-project/my-instance/activities
    orion run --mode tenants --legacy-store mysql://root@127.0.0.1:3306/legacy --store bigtable://my-project/my-instance/activities

Modes (see docs/migration.md):

    legacy   MySQL only: the graph writes and reads the legacy store (no MigratingStore).
    passive  writes go to both stores; every read the graph makes (a lead's history, the
             activity index, lead profiles and the leads due to wake) is served from
             MySQL, and the new store's answer is computed too and compared.
    active   writes go to both stores; reads are served from the new store and compared
             with MySQL's. MySQL keeps receiving every activity, so going back to legacy
             loses nothing written meanwhile.
    tenants  each tenant in its own stage, from the tenant registry in the new store
             (orion/tenants/registry.py): legacy and deactivated as `legacy` above,
             passive and active as above. The registry is re-read at most every
             `refresh` seconds (default 10) by each worker process, so a stage set with
             `orion tenants set` applies to the running job within that time, on every
             engine: the Beam sinks and the Flink job's writers open this store by URI.

Each write call and each read takes one view of the stages: every activity of a batch is
written under exactly one stage, and counted under it (metrics below). An activity still
buffered in the job when its tenant changes stage (waiting for the watermark, or in a
sink's batch) is written under the stage in force when it is released: deactivating a
tenant sends what it still has in flight to MySQL alone, and nothing is lost.

Every difference is counted (Beam counters `migration_differences` and
`migration_differences:KIND`) and written to a report, one JSON object per line in
REPORT_DIR/differences-*.jsonl: mode, stage, tenant, lead, kind (history, index,
profile, write, unavailable), which store served, and what differed. Per tenant, the
activities written under each stage, the reads compared and the differences are
Prometheus counters in REPORT_DIR/tenant-metrics-*.prom (orion/tenants/metrics.py), on
every engine; `orion tenants report TENANT` sums them.

A row the serving store refuses goes to the dead letters as with a single store. A row
only the other store refused is written to the report with the whole activity, so it can
be replayed; the run goes on. A lead profile only the other store refused is reported
(kind write) with its tenant and lead. When the other store cannot be reached at all,
reads are still served and writes still made on the serving store, and each miss is
reported.

The graph's DoFns open stores by URI, so a MigratingStore has one too:
`migrating://MODE?legacy=URI&new=URI&report=DIR[&refresh=SECONDS]` (build it with
`migration_store_uri`).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence
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
from orion.tenants import metrics
from orion.tenants.registry import ACTIVE as ACTIVE_STAGE
from orion.tenants.registry import DEACTIVATED, DEFAULT_REFRESH_S, LEGACY, WRITES_BOTH, TenantStages, stage_of
from orion.tenants.registry import PASSIVE as PASSIVE_STAGE

PASSIVE, ACTIVE, TENANTS = PASSIVE_STAGE, ACTIVE_STAGE, "tenants"
MODES = (PASSIVE, ACTIVE, TENANTS)  # of a migrating store
SCHEME = "migrating"
HISTORY, INDEX, PROFILE, WRITE, UNAVAILABLE = "history", "index", "profile", "write", "unavailable"
METRICS_NAMESPACE = "orion"  # orion.transforms.intake.METRICS_NAMESPACE, without importing Beam
SHOWN = 10  # event ids / index days listed per difference


def migration_store_uri(mode: str, legacy: str, new: str, report_dir: str | os.PathLike,
                        refresh_s: float | None = None) -> str:
    """The URI of a migrating store; `refresh_s` (mode tenants): how often the registry is
    re-read (default DEFAULT_REFRESH_S)."""
    if mode not in MODES:
        raise StoreError(f"a migrating store runs in mode {', '.join(MODES)}, not {mode!r}")
    uri = (f"{SCHEME}://{mode}?legacy={quote(legacy, safe='')}&new={quote(new, safe='')}"
           f"&report={quote(str(report_dir), safe='')}")
    if mode == TENANTS and refresh_s is not None:
        uri += f"&refresh={refresh_s:g}"
    return uri


def _store_name(uri: str) -> str:
    return urlsplit(uri).scheme


class DifferenceReport:
    """Appends differences to REPORT_DIR/differences-<unique>.jsonl (one file per store
    object, so parallel workers never share a file) and counts them, per tenant too
    (orion/tenants/metrics.py)."""

    def __init__(self, report_dir: str, mode: str):
        self.report_dir = Path(report_dir)
        self.mode = mode
        self.path = self.report_dir / f"differences-{uuid.uuid4().hex[:12]}.jsonl"
        self.file = None
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.metrics = metrics.TenantMetrics.of(self.report_dir)

    def add(self, kind: str, tenant: str, lead_id: str, served_from: str, detail: str, stage: str | None = None,
            **extra) -> None:
        record = {"at": format_timestamp(int(time.time() * 1000)), "mode": self.mode, "stage": stage or self.mode,
                  "kind": kind, "tenant": tenant, "lead_id": lead_id, "served_from": served_from, "detail": detail,
                  **extra}
        with self.lock:
            if self.file is None:
                self.report_dir.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a", encoding="utf-8")
            self.file.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            self.file.flush()
            self.counts[kind] = self.counts.get(kind, 0) + 1
        self.metrics.add(metrics.DIFFERENCES, tenant, kind)
        _count("migration_differences", f"migration_differences:{kind}")

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None
        self.metrics.flush()


def _count(*names: str, n: int = 1) -> None:
    try:
        from apache_beam.metrics import Metrics
    except ImportError:  # pragma: no cover - the store works without Beam
        return
    for name in names:
        Metrics.counter(METRICS_NAMESPACE, name).inc(n)


def _profile_difference(mine: str | None, theirs: str | None, serving: str, other: str) -> str:
    """What differs between two stored profiles, without repeating them (they may be long)."""
    if theirs is None:
        return f"only in {serving}"
    if mine is None:
        return f"only in {other}"
    return f"{len(mine)} characters in {serving}, {len(theirs)} in {other}, not the same"


def _fingerprint(activity: Activity) -> tuple:
    return (activity.occurred_at, activity.type, json.dumps(activity.attributes, sort_keys=True, default=str))


class _Route(NamedTuple):
    """Where one stage writes and reads: the serving store (written, and its answers
    used) and the other one (written too, its answers compared), or none."""

    stage: str
    serving: ActivityStore
    serving_name: str
    other: ActivityStore | None
    other_name: str | None


def _grouped(items, stage_of_item) -> dict[str, list]:
    """Items by stage, each group in the given order."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(stage_of_item(item), []).append(item)
    return groups


class MigratingStore(ActivityStore):
    """Both stores behind the one interface: writes go to both, reads are served from
    one (MySQL in passive mode, the new store in active mode) and compared with the
    other's answer; in mode tenants, each tenant as its stage in the registry says.

    `serving`: the store whose answers are used (mode tenants: MySQL, which every stage
    writes)."""

    def __init__(self, uri: str, open_store, stages: TenantStages | None = None):
        """`open_store` opens the legacy and the new store from their URIs
        (orion.store.opening.open_store); `stages` (mode tenants): the view of the
        registry to use (default: the process's shared one)."""
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        mode = parts.netloc
        try:
            legacy, new, report = query["legacy"][0], query["new"][0], query["report"][0]
        except (KeyError, IndexError):
            raise StoreError(f"bad migrating store URI {uri!r}; build it with migration_store_uri()") from None
        if mode not in MODES:
            raise StoreError(f"a migrating store runs in mode {', '.join(MODES)}, not {mode!r}")
        if _store_name(legacy) != "mysql":
            raise StoreError(f"the legacy store must be mysql://USER:PASSWORD@HOST:PORT/DB, not {legacy!r}")
        try:
            refresh_s = float(query.get("refresh", [DEFAULT_REFRESH_S])[0])
        except ValueError:
            raise StoreError(f"bad refresh in migrating store URI {uri!r}: seconds, e.g. refresh=10") from None
        self.uri = uri
        self.mode = mode
        self.legacy = open_store(legacy)
        self.new = open_store(new)
        legacy_name, new_name = f"legacy {_store_name(legacy)}", f"new {_store_name(new)}"
        self.routes = {
            LEGACY: _Route(LEGACY, self.legacy, legacy_name, None, None),
            DEACTIVATED: _Route(DEACTIVATED, self.legacy, legacy_name, None, None),
            PASSIVE: _Route(PASSIVE, self.legacy, legacy_name, self.new, new_name),
            ACTIVE: _Route(ACTIVE, self.new, new_name, self.legacy, legacy_name),
        }
        fixed = self.routes.get(mode, self.routes[LEGACY])
        self.serving, self.serving_name = fixed.serving, fixed.serving_name
        self.stages = None
        if mode == TENANTS:
            self.stages = stages if stages is not None else TenantStages.shared(new, refresh_s)
        self.report = DifferenceReport(report, mode)
        self.metrics = self.report.metrics

    # --- which stage each tenant is in -------------------------------------------------

    def _stage_of(self):
        """A function tenant -> stage, from one view of the registry (fixed modes: the mode)."""
        if self.stages is None:
            return lambda tenant: self.mode
        rows = self.stages.current(self.new.read_tenant_stages, self._registry_unavailable)
        self.metrics.set_stages({tenant: row.stage for tenant, row in rows.items()})
        return lambda tenant: stage_of(rows, tenant)

    def _registry_unavailable(self, error: StoreError) -> None:
        self.report.add(UNAVAILABLE, "", "", self.routes[LEGACY].serving_name,
                        f"the tenant registry could not be read ({error}); the stages read before stay in force")

    def _route(self, tenant: str) -> _Route:
        return self.routes[self._stage_of()(tenant)]

    def _compared(self, tenant: str, kind: str) -> None:
        self.metrics.add(metrics.COMPARED, tenant, kind)

    # --- writes ------------------------------------------------------------------------

    def init(self) -> None:
        # The legacy store is never made: a mistyped database is said, not created
        # empty and served from (its missing newer tables, the profiles', are added).
        self.legacy.check_existing()
        self.legacy.init(create_database=False)
        try:
            self.new.init()
        except StoreError as error:
            self.report.add(UNAVAILABLE, "", "", self.routes[LEGACY].serving_name,
                            f"{self.routes[ACTIVE].serving_name} could not be initialised: {error}")

    def write_with_failures(self, activities: Sequence[Activity]) -> WriteResult:
        stage_of_tenant = self._stage_of()
        written, failed = 0, []
        for stage, batch in _grouped(activities, lambda a: stage_of_tenant(a.tenant)).items():
            result = self._write(self.routes[stage], batch)
            written += result.written
            failed += result.failed
            # Counted once the write has returned: each activity under the one stage it
            # was written under (a write that raises is retried by the runner, and counted then).
            for tenant, of_tenant in _grouped(batch, lambda a: a.tenant).items():
                self.metrics.add(metrics.ACTIVITIES, tenant, stage, len(of_tenant))
            _count(f"tenant_stage_activities:{stage}", n=len(batch))
            if self.stages is not None:
                self.stages.note_written(batch, stage)
        return WriteResult(written, failed)

    def _write(self, route: _Route, activities: list[Activity]) -> WriteResult:
        result = route.serving.write_with_failures(activities)
        if route.other is None:
            return result
        try:
            other_failed = route.other.write_with_failures(activities).failed
        except StoreError as error:
            other_failed = [WriteFailure(a, STORE_WRITE_FAILED, f"unreachable: {error}") for a in activities]
        refused_here = {id(f.activity) for f in result.failed}
        refused_there = {id(f.activity) for f in other_failed}
        for failure in other_failed:
            if id(failure.activity) not in refused_here:
                a = failure.activity
                self.report.add(WRITE, a.tenant, a.lead_id, route.serving_name,
                                f"{route.other_name} did not store {a.event_id}: {failure.reason}: {failure.detail}",
                                stage=route.stage, activity=a.to_json_dict())
        for failure in result.failed:
            if id(failure.activity) not in refused_there:
                a = failure.activity
                self.report.add(WRITE, a.tenant, a.lead_id, route.serving_name,
                                f"{route.serving_name} refused {a.event_id} ({failure.reason}: {failure.detail}) "
                                f"but {route.other_name} stored it", stage=route.stage, activity=a.to_json_dict())
        return result

    def index_activities(self, activities: Sequence[Activity]) -> int:
        stage_of_tenant = self._stage_of()

        def stage_of_activity(activity: Activity) -> str:
            # Where the activity was written, if this process wrote it: a stage change
            # between a batch's write and its index update must not split them.
            written = None if self.stages is None else self.stages.written_under(activity)
            return written or stage_of_tenant(activity.tenant)

        entries = 0
        for stage, batch in _grouped(activities, stage_of_activity).items():
            route = self.routes[stage]
            entries += route.serving.index_activities(batch)
            if route.other is None:
                continue
            try:
                route.other.index_activities(batch)
            except StoreError as error:
                for tenant, lead_id in sorted({(a.tenant, a.lead_id) for a in batch}):
                    self.report.add(UNAVAILABLE, tenant, lead_id, route.serving_name,
                                    f"{route.other_name} could not index: {error}", stage=stage)
        return entries

    def write_profiles(self, profiles: Sequence[StoredProfile]) -> int:
        stage_of_tenant = self._stage_of()
        given = 0
        for stage, batch in _grouped(profiles, lambda p: stage_of_tenant(p.tenant)).items():
            route = self.routes[stage]
            given += route.serving.write_profiles(batch)
            if route.other is None:
                continue
            try:
                route.other.write_profiles(batch)
            except (StoreError, ValueError) as error:
                kind, what = (UNAVAILABLE, "could not write") if isinstance(error, StoreError) else (WRITE, "refused")
                for profile in profiles_to_write(batch):
                    self.report.add(kind, profile.tenant, profile.lead_id, route.serving_name,
                                    f"{route.other_name} {what} the lead's profile: {error}", stage=stage)
        return given

    # --- reads: served from one, compared with the other -------------------------------

    def history(self, tenant: str, lead_id: str, *, since: int | None = None, until: int | None = None,
                types: Iterable[str] | None = None, limit: int | None = None) -> list[Activity]:
        types = None if types is None else list(types)
        route = self._route(tenant)
        served = route.serving.history(tenant, lead_id, since=since, until=until, types=types, limit=limit)
        if route.other is None:
            return served
        try:
            other = route.other.history(tenant, lead_id, since=since, until=until, types=types, limit=limit)
        except StoreError as error:
            self.report.add(UNAVAILABLE, tenant, lead_id, route.serving_name,
                            f"{route.other_name} could not read the history: {error}", stage=route.stage)
            return served
        self._compared(tenant, HISTORY)
        mine = {a.event_id: _fingerprint(a) for a in served}
        theirs = {a.event_id: _fingerprint(a) for a in other}
        if mine != theirs:
            only_here = sorted(set(mine) - set(theirs))
            only_there = sorted(set(theirs) - set(mine))
            changed = sorted(e for e in set(mine) & set(theirs) if mine[e] != theirs[e])
            parts = [f"{len(only_here)} only in {route.serving_name}" if only_here else "",
                     f"{len(only_there)} only in {route.other_name}" if only_there else "",
                     f"{len(changed)} differ in time, type or attributes" if changed else ""]
            self.report.add(
                HISTORY, tenant, lead_id, route.serving_name,
                "history differs: " + ", ".join(p for p in parts if p), stage=route.stage,
                query={"since": since, "until": until, "types": types, "limit": limit},
                only_in_serving=only_here[:SHOWN], only_in_other=only_there[:SHOWN], differing=changed[:SHOWN])
        return served

    def read_index(self, tenant: str, lead_id: str, *, types: Iterable[str] | None = None,
                   since_day=None) -> IndexEntries:
        types = None if types is None else list(types)
        route = self._route(tenant)
        served = route.serving.read_index(tenant, lead_id, types=types, since_day=since_day)
        if route.other is None:
            return served
        try:
            other = route.other.read_index(tenant, lead_id, types=types, since_day=since_day)
        except StoreError as error:
            self.report.add(UNAVAILABLE, tenant, lead_id, route.serving_name,
                            f"{route.other_name} could not read the index: {error}", stage=route.stage)
            return served
        self._compared(tenant, INDEX)
        if served != other:
            keys = sorted(set(served) | set(other))
            differing = [{"type": t, "day": d.isoformat(), "serving": served.get((t, d)), "other": other.get((t, d))}
                         for t, d in keys if served.get((t, d)) != other.get((t, d))]
            self.report.add(INDEX, tenant, lead_id, route.serving_name,
                            f"activity index differs on {len(differing)} (type, day) entries "
                            "([count, last seen ms] serving vs other)", stage=route.stage, differing=differing[:SHOWN])
        return served

    def read_profiles(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        stage_of_tenant = self._stage_of()
        answers: list[str | None] = [None] * len(keys)
        for stage, positions in _grouped(range(len(keys)), lambda n: stage_of_tenant(keys[n][0])).items():
            asked = [keys[n] for n in positions]
            for n, found in zip(positions, self._read_profiles(self.routes[stage], asked)):
                answers[n] = found
        return answers

    def _read_profiles(self, route: _Route, keys: list[tuple[str, str]]) -> list[str | None]:
        served = route.serving.read_profiles(keys)
        if route.other is None:
            return served
        try:
            other = route.other.read_profiles(keys)
        except StoreError as error:
            for tenant, lead_id in dict.fromkeys(keys):
                self.report.add(UNAVAILABLE, tenant, lead_id, route.serving_name,
                                f"{route.other_name} could not read the profile: {error}", stage=route.stage)
            return served
        reported = set()
        for (tenant, lead_id), mine, theirs in zip(keys, served, other):
            self._compared(tenant, PROFILE)
            if mine != theirs and (tenant, lead_id) not in reported:
                reported.add((tenant, lead_id))
                self.report.add(PROFILE, tenant, lead_id, route.serving_name, "profile differs: " + _profile_difference(
                    mine, theirs, route.serving_name, route.other_name), stage=route.stage)
        return served

    def due_profiles(self, due_by: int, tenants: Iterable[str] | None = None) -> list[tuple[str, str, int]]:
        tenants = None if tenants is None else list(tenants)
        if self.stages is None:
            return self._due_profiles(self.routes[self.mode], due_by, tenants)
        stage_of_tenant = self._stage_of()
        served = []
        if tenants is None:
            # The tenants in no migrating stage from MySQL in one read; the others each as
            # their stage says.
            rows = self.stages.rows or {}
            tenants = [tenant for tenant, row in rows.items() if row.stage in WRITES_BOTH]
            served = [due for due in self.legacy.due_profiles(due_by, None)
                      if stage_of_tenant(due[0]) not in WRITES_BOTH]
        for stage, group in _grouped(tenants, stage_of_tenant).items():
            served += self._due_profiles(self.routes[stage], due_by, group)
        return sorted(served)

    def _due_profiles(self, route: _Route, due_by: int, tenants: list[str] | None) -> list[tuple[str, str, int]]:
        served = route.serving.due_profiles(due_by, tenants)
        if route.other is None:
            return served
        try:
            other = route.other.due_profiles(due_by, tenants)
        except StoreError as error:
            self.report.add(UNAVAILABLE, "", "", route.serving_name,
                            f"{route.other_name} could not list the leads due by {due_by}: {error}", stage=route.stage)
            return served
        mine = {(tenant, lead_id): wake for tenant, lead_id, wake in served}
        theirs = {(tenant, lead_id): wake for tenant, lead_id, wake in other}
        for tenant in sorted({tenant for tenant, _ in mine} | {tenant for tenant, _ in theirs} | set(tenants or ())):
            self._compared(tenant, PROFILE)
        for tenant, lead_id in sorted(set(mine) | set(theirs)):
            here, there = mine.get((tenant, lead_id)), theirs.get((tenant, lead_id))
            if here != there:
                self.report.add(PROFILE, tenant, lead_id, route.serving_name,
                                f"due by {due_by}: next wake {here} in {route.serving_name}, "
                                f"{there} in {route.other_name} (None: not due)",
                                stage=route.stage, due_by=due_by, serving=here, other=there)
        return served

    def count_profiles(self) -> int:
        return self.serving.count_profiles()

    def count(self) -> int:
        return self.serving.count()

    # --- the tenant registry is the new store's ------------------------------------------

    def read_tenant_stages(self):
        return self.new.read_tenant_stages()

    def change_tenant_stage(self, tenant: str, stage: str, changed_at: int):
        return self.new.change_tenant_stage(tenant, stage, changed_at)

    def close(self) -> None:
        self.report.close()
        for store in (self.legacy, self.new):
            store.close()
