"""The tenant registry: each tenant's rollout stage, kept in the store (`orion store init`
creates it: `tenant_stages` in SQLite and MySQL, TABLE-tenants in Bigtable), and the view
of it a running job keeps.

A tenant moves from the legacy MySQL store to the new one in stages:

    stage        writes       reads served from   compared with
    legacy       MySQL        MySQL               -
    passive      both         MySQL               the new store
    active       both         the new store       MySQL
    deactivated  MySQL        MySQL               -

A tenant the registry does not name is `legacy`. `deactivated` is the way back: the
tenant's activities still buffered in the job (waiting for the watermark, or in a sink's
batch) are written when they are released, under the stage of that moment, so they go to
MySQL and nothing is lost; the new store gets nothing more of the tenant. A job run with
`--mode tenants` (orion/store/migrating.py) re-reads the registry at most every
`refresh` seconds (DEFAULT_REFRESH_S) in each worker process and applies each tenant's
stage to every write and read from then on, without a restart.

    orion tenants set acme --stage passive --store bigtable://my-project/my-instance/activities
    orion tenants list --store bigtable://my-project/my-instance/activities
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Callable

from orion.activities import MAX_ID_BYTES
from orion.store.base import DEFAULT_TENANT_STAGE, StoreError, TenantStage

LEGACY, PASSIVE, ACTIVE, DEACTIVATED = "legacy", "passive", "active", "deactivated"
STAGES = (LEGACY, PASSIVE, ACTIVE, DEACTIVATED)
DEFAULT_STAGE = DEFAULT_TENANT_STAGE  # of a tenant the registry does not name: legacy
WRITES_BOTH = (PASSIVE, ACTIVE)  # the stages that write the new store (and compare reads)
# How often a running job re-reads the registry: well within the minute a change must
# take, and one small read per worker process per period.
DEFAULT_REFRESH_S = 10.0
# Activities whose stage a process remembers after writing them, so that their index
# update (a later step) follows the stage they were written under.
REMEMBERED_WRITES = 100_000

__all__ = ["ACTIVE", "DEACTIVATED", "DEFAULT_REFRESH_S", "DEFAULT_STAGE", "LEGACY", "PASSIVE", "STAGES",
           "TenantStage", "TenantStages", "WRITES_BOTH", "check_stage", "set_stage", "stage_of"]


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGES)}")
    return stage


def stage_of(rows: dict[str, TenantStage], tenant: str) -> str:
    """A tenant's stage in a registry snapshot ({tenant: row})."""
    found = rows.get(tenant)
    return DEFAULT_STAGE if found is None else found.stage


def set_stage(store, tenant: str, stage: str, now_ms: int | None = None) -> tuple[TenantStage, bool]:
    """Set `tenant`'s stage in the registry of `store` (an ActivityStore); returns (its
    row, whether it changed). Setting the stage a tenant has changes nothing, so its
    `changed_at` stays when the stage was entered."""
    check_stage(stage)
    if not isinstance(tenant, str) or not tenant.strip():
        raise ValueError("a tenant name must not be empty")
    if tenant != tenant.strip() or not tenant.isprintable():
        raise ValueError(f"tenant {tenant!r} has spaces around it or control characters in it: give the "
                         "tenant's name as its activities carry it")
    if len(tenant.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"a tenant name holds at most {MAX_ID_BYTES} bytes (UTF-8), as every store keeps it")
    # One atomic step in the store: two changes at the same moment do not both record
    # the same previous stage.
    return store.change_tenant_stage(tenant, stage, int(time.time() * 1000) if now_ms is None else now_ms)


class TenantStages:
    """One process's view of the registry: the rows read at most `refresh_s` ago.

    `current(read)` returns {tenant: TenantStage}, calling `read()` (the caller's own
    store's read_tenant_stages, so each thread reads on its own connection) when the
    view is older than refresh_s. A read that fails keeps the last view for another
    refresh_s (`on_error` is told); with no view yet the StoreError propagates, and the
    runner retries. The stores of one process share one view (`shared`), so the job's
    writes, index updates and reads in that process switch a tenant at the same moment.

    It also remembers the stage each of the last REMEMBERED_WRITES activities was written
    under (`note_written`, `written_under`): the index update of a batch, a step after
    its write, goes where the batch went even if the stage changed in between."""

    _shared: dict[tuple, "TenantStages"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, refresh_s: float = DEFAULT_REFRESH_S, clock: Callable[[], float] = time.monotonic):
        if refresh_s < 0:
            raise ValueError(f"the registry refresh must be 0 or more seconds, not {refresh_s!r}")
        self.refresh_s = refresh_s
        self.clock = clock
        self.rows: dict[str, TenantStage] | None = None
        self.read_at = 0.0
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.written: OrderedDict = OrderedDict()  # (tenant, lead, event id) -> stage
        self.written_lock = threading.Lock()

    @classmethod
    def shared(cls, registry_uri: str, refresh_s: float) -> "TenantStages":
        """The process's view of the registry at `registry_uri` (a forked worker gets its own)."""
        key = (registry_uri, refresh_s)
        with cls._shared_lock:
            found = cls._shared.get(key)
            if found is None or found.pid != os.getpid():
                found = cls._shared[key] = cls(refresh_s)
            return found

    def current(self, read: Callable[[], list[TenantStage]],
                on_error: Callable[[StoreError], None] | None = None) -> dict[str, TenantStage]:
        with self.lock:
            now = self.clock()
            if self.rows is not None and now - self.read_at < self.refresh_s:
                return self.rows
            try:
                rows = read()
            except StoreError as error:
                if self.rows is None:
                    raise
                self.read_at = now
                if on_error is not None:
                    on_error(error)
                return self.rows
            self.rows = {row.tenant: row for row in rows}
            self.read_at = now
            return self.rows

    def note_written(self, activities, stage: str) -> None:
        with self.written_lock:
            for a in activities:
                self.written[(a.tenant, a.lead_id, a.event_id)] = stage
            while len(self.written) > REMEMBERED_WRITES:
                self.written.popitem(last=False)

    def written_under(self, activity) -> str | None:
        """The stage `activity` was last written under in this process; None: not remembered."""
        with self.written_lock:
            return self.written.get((activity.tenant, activity.lead_id, activity.event_id))
