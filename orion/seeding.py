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

from datetime import date, timedelta

from orion.activities import MS_PER_DAY, activity_sort_key
from orion.rules.index import RuleSet
from orion.rules.model import LeadState

_EPOCH = date(1970, 1, 1)


def _counters(rules: RuleSet, tenant: str):
    tenant_rules = rules.tenants.get(tenant)
    if tenant_rules is None:
        return None, ()
    return tenant_rules, tuple(c for found in tenant_rules.counters_by_type.values() for c in found)


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
    return bool(_counters(rules, tenant)[1])


def seed_state(rules: RuleSet, store, tenant: str, lead_id: str, before_ms: int) -> LeadState | None:
    """The lead's state with its history counters filled from `store` (an ActivityStore)
    for everything stored before `before_ms`; None when there is nothing to count."""
    tenant_rules, counters = _counters(rules, tenant)
    if not counters:
        return None
    first_day = before_ms // MS_PER_DAY
    oldest_day = max(0, first_day - max(c.retention_days for c in counters))
    whole = {c.activity_type for c in counters if not c.conditions}
    conditional = {c.activity_type for c in counters if c.conditions}
    history: dict = {}
    if whole:
        entries = store.read_index(tenant, lead_id, types=sorted(whole),
                                   since_day=_EPOCH + timedelta(days=oldest_day))
        for (type_, day), (count, _last) in entries.items():
            day_number = (day - _EPOCH).days
            if day_number >= first_day or count <= 0:
                continue  # the first day itself is counted from the history, up to before_ms
            for counter in tenant_rules.counters_by_type.get(type_, ()):
                if not counter.conditions and day_number > first_day - counter.retention_days:
                    history.setdefault(counter.key, {})[day_number] = count
    # From the history: conditional counters over their whole span, and the first day
    # (up to before_ms) of the unconditional ones. A type is read once.
    reads = []
    if conditional:
        reads.append((sorted(conditional), oldest_day))
    if whole - conditional:
        reads.append((sorted(whole - conditional), max(first_day, 0)))
    for types, from_day in reads:
        activities = store.history(tenant, lead_id, since=from_day * MS_PER_DAY, until=before_ms, types=types)
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
