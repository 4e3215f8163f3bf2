"""Seeding a lead's history counters from the store, the first time the graph sees the lead.

The smart-list history filters ("visited a page at least 3 times in the past 30 days")
read counters kept in the lead's state. A lead first seen by a running graph may already
have a history in the store: written by an earlier run, or copied from the legacy MySQL
store by `orion bootstrap`. Before evaluating such a lead's first activity, the graph
reads that history once and fills the counters:

- a counter with no conditions (any activity of a type) comes from the activity index,
  per (type, UTC day), for the whole days before the day of the first activity;
- a counter with conditions on attributes (url contains ..., form is ...), and the part
  of the first activity's own day, come from the lead's history itself (only the types
  the counters count, only as far back as the longest filter looks).

Only activities strictly before the first activity evaluated are read, so running the
same input twice counts nothing twice. Tenants without history filters read nothing.

Engine-neutral: the Beam DoFn and the Flink function both call `seed_state`.

    python -c "from orion.seeding import seed_state; help(seed_state)"
"""
from __future__ import annotations

import weakref
from datetime import date, timedelta
from typing import NamedTuple, Sequence

from orion.activities import MS_PER_DAY, activity_sort_key
from orion.rules.index import RuleSet
from orion.rules.model import LeadState
from orion.store.base import HistoryRead, IndexRead

_EPOCH = date(1970, 1, 1)


class _Counted(NamedTuple):
    """What a tenant's history counters read, worked out once per compiled rules."""

    longest_days: int  # the longest span any counter looks back
    whole: tuple[str, ...]  # types counted with no conditions (from the index)
    conditional: tuple[str, ...]  # types counted with conditions (from the history)
    whole_only: tuple[str, ...]  # whole and not conditional: their first day from the history


_COUNTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # TenantRules -> _Counted | None


def _counted_types(rules: RuleSet, tenant: str):
    """(the tenant's rules, what its counters read); (rules or None, None) when seeding
    the tenant's leads reads nothing."""
    tenant_rules = rules.tenants.get(tenant)
    if tenant_rules is None:
        return None, None
    if tenant_rules not in _COUNTED:
        counters = [c for found in tenant_rules.counters_by_type.values() for c in found]
        whole = {c.activity_type for c in counters if not c.conditions}
        conditional = {c.activity_type for c in counters if c.conditions}
        _COUNTED[tenant_rules] = _Counted(
            max(c.retention_days for c in counters), tuple(sorted(whole)), tuple(sorted(conditional)),
            tuple(sorted(whole - conditional))) if counters else None
    return tenant_rules, _COUNTED[tenant_rules]


def open_initialised_store(uri: str | None):
    """The store at `uri` (the one new leads are seeded from), opened and initialised;
    None for no URI."""
    if uri is None:
        return None
    from orion.store import open_store

    store = open_store(uri)
    store.init()
    return store


def reads_history(rules: RuleSet, tenant: str) -> bool:
    """Whether seeding a lead of `tenant` reads anything (it has history filters)."""
    return _counted_types(rules, tenant)[1] is not None


def seed_state(rules: RuleSet, store, tenant: str, lead_id: str, before_ms: int) -> LeadState | None:
    """The lead's state with its history counters filled from `store` (an ActivityStore)
    for everything stored before `before_ms`; None when there is nothing to count."""
    return seed_states(rules, store, [(tenant, lead_id, before_ms)])[0]


def seed_states(rules: RuleSet, store, leads: Sequence[tuple[str, str, int]]) -> list[LeadState | None]:
    """`seed_state` of each (tenant, lead_id, before_ms), in order, with the store's
    reads of all the leads asked together (`histories`, `read_indexes`): a store may
    answer them in a few round trips rather than a few per lead."""
    plans = [_plan(rules, tenant, lead_id, before_ms) for tenant, lead_id, before_ms in leads]
    index_reads = [(n, plan.index_read) for n, plan in enumerate(plans) if plan and plan.index_read]
    entries = dict(zip((n for n, _ in index_reads), store.read_indexes([read for _, read in index_reads])))
    history_reads = [(n, read) for n, plan in enumerate(plans) if plan for read in plan.history_reads]
    histories: dict[int, list] = {}
    for (n, _), found in zip(history_reads, store.histories([read for _, read in history_reads])):
        histories.setdefault(n, []).extend(found)
    return [None if plan is None else _counted(plan, entries.get(n, {}), histories.get(n, []))
            for n, plan in enumerate(plans)]


class _Plan(NamedTuple):
    """What seeding one lead reads, and what it needs to count what it read."""

    tenant_rules: object  # the tenant's compiled rules
    first_day: int  # the day (since the epoch) of before_ms
    index_read: IndexRead | None  # counters with no conditions, whole days before first_day
    history_reads: tuple[HistoryRead, ...]  # conditional counters, and first_day up to before_ms


def _plan(rules: RuleSet, tenant: str, lead_id: str, before_ms: int) -> _Plan | None:
    tenant_rules, types = _counted_types(rules, tenant)
    if types is None:
        return None
    first_day = before_ms // MS_PER_DAY
    oldest_day = max(0, first_day - types.longest_days)
    index_read = IndexRead(tenant, lead_id, types.whole, _EPOCH + timedelta(days=oldest_day)) if types.whole else None
    # From the history: conditional counters over their whole span, and the first day
    # (up to before_ms) of the unconditional ones. A type is read once.
    history_reads = []
    if types.conditional:
        history_reads.append(HistoryRead(tenant, lead_id, oldest_day * MS_PER_DAY, before_ms, types.conditional))
    if types.whole_only:
        history_reads.append(HistoryRead(tenant, lead_id, max(first_day, 0) * MS_PER_DAY, before_ms,
                                         types.whole_only))
    return _Plan(tenant_rules, first_day, index_read, tuple(history_reads))


def _counted(plan: _Plan, entries, activities) -> LeadState | None:
    tenant_rules, first_day = plan.tenant_rules, plan.first_day
    history: dict = {}
    for (type_, day), (count, _last) in entries.items():
        day_number = (day - _EPOCH).days
        if day_number >= first_day or count <= 0:
            continue  # the first day itself is counted from the history, up to before_ms
        for counter in tenant_rules.counters_by_type.get(type_, ()):
            if not counter.conditions and day_number > first_day - counter.retention_days:
                history.setdefault(counter.key, {})[day_number] = count
    for activity in sorted(activities, key=activity_sort_key):
        day = activity.occurred_at // MS_PER_DAY
        for counter in tenant_rules.counting(activity):
            if day > first_day - counter.retention_days and (counter.conditions or day == first_day):
                per_day = history.setdefault(counter.key, {})
                per_day[day] = per_day.get(day, 0) + 1
    return LeadState(history=history) if history else None


def seed_flows(rules: RuleSet, store, tenant: str, lead_id: str, before_ms: int):
    """A lead's campaign-flow state (orion.campaigns.flows.LeadFlows) for a lead new to
    the flows: its evaluation state seeded as `seed_state` seeds it, so the flows'
    evaluation of the lead agrees with SequenceAndEvaluate's. None: nothing stored."""
    from orion.campaigns.flows import LeadFlows

    state = seed_state(rules, store, tenant, lead_id, before_ms)
    return None if state is None else LeadFlows(lead=state)
