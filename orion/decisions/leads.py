"""The lead a decision reads: the durable profile the graph writes (store.read_profiles,
orion.profiles), with the history counters the tenant's experience audiences read,
counted from the store's activity index and history (a profile keeps no history).

Reads are cached for a short time (`ttl_s`, 0.25 s by default) in a bounded map
(`max_entries`, the oldest entry dropped first): a change the graph writes to a profile
is seen by decisions at most `ttl_s` after it is written. A lead with no profile is
unknown: it is decided for as an anonymous visitor, from the request's context and an
empty profile. A profile that cannot be read is treated the same, and said so.

    python -c "from orion.decisions.leads import LeadReader; help(LeadReader)"
"""
from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Callable, NamedTuple, Sequence

from orion.activities import MS_PER_DAY
from orion.profiles import ProfileError, decode_profile
from orion.rules.model import EMPTY_LEAD_STATE, HistoryCounter, LeadState

KNOWN, UNKNOWN, UNREADABLE = "known", "unknown", "unreadable"
DEFAULT_TTL_S = 0.25
DEFAULT_MAX_ENTRIES = 20_000
_EPOCH = date(1970, 1, 1)


class LeadView(NamedTuple):
    """What decisions know of a lead: its state (with history counters) and whether it
    has a profile (KNOWN), has none (UNKNOWN) or has one that does not read (UNREADABLE)."""

    state: LeadState
    status: str


def count_history(store, tenant: str, lead_id: str, counters: Sequence[HistoryCounter], now_ms: int) -> dict:
    """The history counters' per-day counts for the lead, as the graph would hold them at
    `now_ms`: a counter without conditions from the activity index, one with conditions
    from the lead's activities of its type, each over the days its longest filter reads."""
    history: dict[str, dict[int, int]] = {}
    if not counters:
        return history
    today = now_ms // MS_PER_DAY
    whole = [c for c in counters if not c.conditions]
    conditional = [c for c in counters if c.conditions]
    if whole:
        oldest = today - max(c.retention_days for c in whole) + 1
        entries = store.read_index(tenant, lead_id, types=sorted({c.activity_type for c in whole}),
                                   since_day=_EPOCH + timedelta(days=max(oldest, 0)))
        for (type_, day), (count, _last) in entries.items():
            number = (day - _EPOCH).days
            for counter in whole:
                if counter.activity_type == type_ and number > today - counter.retention_days and count > 0:
                    history.setdefault(counter.key, {})[number] = count
    if conditional:
        oldest = today - max(c.retention_days for c in conditional) + 1
        for activity in store.history(tenant, lead_id, since=max(oldest, 0) * MS_PER_DAY,
                                      types=sorted({c.activity_type for c in conditional})):
            day = activity.occurred_at // MS_PER_DAY
            for counter in conditional:
                if counter.activity_type == activity.type and day > today - counter.retention_days \
                        and counter.counts(activity.attributes, activity.occurred_at):
                    per_day = history.setdefault(counter.key, {})
                    per_day[day] = per_day.get(day, 0) + 1
    return history


class StoredHistory(dict):
    """A lead's history counters, each counted from the store the first time a filter
    asks for it (`get`): most decisions are settled by the context and the profile before
    a history filter is tried, and then the store is not asked, or asked for one counter."""

    __slots__ = ("_count", "_pending")

    def __init__(self, count: Callable[[Sequence[HistoryCounter]], dict], counters: Sequence[HistoryCounter]):
        super().__init__()
        self._count = count
        self._pending = {counter.key: counter for counter in counters}

    def get(self, key, default=None):
        counter = self._pending.pop(key, None)
        if counter is not None:
            self.update(self._count([counter]))
        return dict.get(self, key, default)


class LeadReader:
    """Reads leads for decisions from an ActivityStore, through the bounded TTL cache.
    Not thread-safe: one thread calls it (the store's client is not shared either)."""

    def __init__(self, store, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, LeadView]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, tenant: str, lead_id: str) -> LeadView | None:
        """The cached view of the lead if it is fresh, else None (the caller reads it)."""
        found = self._cache.get((tenant, lead_id))
        if found is not None and found[0] > self._clock():
            self.hits += 1
            return found[1]
        return None

    def read(self, tenant: str, lead_id: str, counters: Sequence[HistoryCounter], now_ms: int,
             lazy_history: bool = False) -> LeadView:
        """The lead from the store (StoreError when the store cannot answer), cached.
        `lazy_history`: count the history when a filter first needs it (StoredHistory),
        on the thread that evaluates the filters, which must then be this one."""
        self.misses += 1
        data = self.store.read_profiles([(tenant, lead_id)])[0]
        if data is None:
            state, status = EMPTY_LEAD_STATE, UNKNOWN
        else:
            try:
                state, status = decode_profile(data).flows.lead, KNOWN
            except ProfileError:
                state, status = EMPTY_LEAD_STATE, UNREADABLE
        if counters:
            if lazy_history:
                state = state._replace(history=StoredHistory(
                    lambda wanted: count_history(self.store, tenant, lead_id, wanted, now_ms), counters))
            else:
                history = count_history(self.store, tenant, lead_id, counters, now_ms)
                if history:
                    state = state._replace(history=history)
        view = LeadView(state, status)
        if self.ttl_s > 0:
            cache = self._cache
            if len(cache) >= self.max_entries:
                # Drop the oldest tenth at once (insertion order), so a full cache costs a
                # dict deletion now and then rather than one on every miss.
                for key in list(cache)[: max(1, self.max_entries // 10)]:
                    del cache[key]
            cache.pop((tenant, lead_id), None)
            cache[(tenant, lead_id)] = (self._clock() + self.ttl_s, view)
        return view

    def close(self) -> None:
        self.store.close()
