"""The lead a decision reads: the durable profile the graph writes (store.read_profiles,
orion.profiles), with the history counters the tenant's experience audiences read,
counted from the store's activity index and history (a profile keeps no history).

Reads are cached for a short time (`ttl_s`, 0.25 s by default) in a bounded map
(`max_entries`, the oldest entry dropped first): a change the graph writes to a profile
is seen by decisions at most `ttl_s` after it is written. An entry is dropped once it
expires, so the map holds the leads of the last `ttl_s` only (what the garbage
collector walks stays small, and its pauses short). A lead with no profile is
unknown: it is decided for as an anonymous visitor, from the request's context and an
empty profile. A profile that cannot be read is treated the same, and said so.

    python -c "from orion.decisions.leads import LeadReader; help(LeadReader)"
"""
from __future__ import annotations

import time
from collections import deque
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

    # What count_history needs, held here rather than in a closure: a lead's cached view
    # should be few objects, for the garbage collector walks them while they are cached.
    __slots__ = ("_store", "_tenant", "_lead_id", "_now_ms", "_counters", "_asked")

    def __init__(self, store, tenant: str, lead_id: str, counters: Sequence[HistoryCounter], now_ms: int):
        super().__init__()
        self._store, self._tenant, self._lead_id, self._now_ms = store, tenant, lead_id, now_ms
        self._counters = counters
        self._asked: set | None = None  # made on the first `get`: most leads never need one

    def get(self, key, default=None):
        asked = self._asked
        if asked is None:
            asked = self._asked = set()
        if key not in asked:
            asked.add(key)
            for counter in self._counters:
                if counter.key == key:
                    self.update(count_history(self._store, self._tenant, self._lead_id, [counter], self._now_ms))
                    break
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
        # (expiry, key) in the order of insertion, which is the order of expiry (one TTL
        # for all): the oldest are dropped from the front. A key read again has an older
        # entry here too, which is passed over.
        self._expiries: deque[tuple[float, tuple[str, str]]] = deque()
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
                history = StoredHistory(self.store, tenant, lead_id, counters, now_ms)
            else:
                history = count_history(self.store, tenant, lead_id, counters, now_ms)
            if history or lazy_history:
                state = state._replace(history=history)
        view = LeadView(state, status)
        if self.ttl_s > 0:
            now = self._clock()
            self._drop_expired(now)
            key = (tenant, lead_id)
            expiry = now + self.ttl_s
            self._cache[key] = (expiry, view)
            self._expiries.append((expiry, key))
        return view

    def _drop_expired(self, now: float) -> None:
        """Drop the entries that have expired, and the oldest past `max_entries - 1`."""
        cache, expiries = self._cache, self._expiries
        while expiries and (expiries[0][0] <= now or len(cache) >= self.max_entries):
            expiry, key = expiries.popleft()
            found = cache.get(key)
            if found is not None and found[0] == expiry:
                del cache[key]

    def close(self) -> None:
        self.store.close()
