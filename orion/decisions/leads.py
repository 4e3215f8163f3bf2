"""The lead a decision reads: the durable profile the graph writes (store.read_profiles,
orion.profiles), with the history counters the tenant's experience audiences read:
as the graph counted them into the profile, or else from the store's activity index and
history.

Reads are cached for a short time (`ttl_s`, 0.25 s by default) in a bounded map
(`max_entries`, the oldest entry dropped first): a change the graph writes to a profile
is seen by decisions at most `ttl_s` after it is written. Expired entries are dropped
together, once the oldest has been expired for a quarter of `ttl_s` (not one at a time on
every read), so the map holds the leads of the last 1.25 `ttl_s` at most (what the
garbage collector walks stays small, and its pauses short). A lead with no profile is
unknown: it is decided for as an anonymous visitor, from the request's context and an
empty profile. A profile that cannot be read is treated the same, and said so.

Of a profile, decisions read the lead's attributes, score and lists (lead_state_of_profile):
the rest (flows, sends, the sequencer's progress) is the graph's, and is not decoded.
The history counters the audiences read come with the profile: the graph counts them
and writes their counts in it (orion.profiles, `decisions`), under the digest of the
counters it counted (history_digest). When that digest is not the one of the service's
own experiences (a profile written under other rules, or by an Orion that did not write
them), a history counter is counted from the store instead, when a filter first asks for
it, together with the other counters the same store read answers (StoredHistory).

    python -c "from orion.decisions.leads import LeadReader; help(LeadReader)"
"""
from __future__ import annotations

import time
from collections import deque
from datetime import date, timedelta
from typing import Callable, NamedTuple, Sequence

import orjson

from orion.activities import MS_PER_DAY
from orion.profiles import PROFILE_VERSION, ProfileError, decode_profile
from orion.rules.model import EMPTY_LEAD_STATE, HistoryCounter, LeadState, history_digest

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
    whole = tuple(c for c in counters if not c.conditions)
    conditional = tuple(c for c in counters if c.conditions)
    if whole:
        CounterGroup(whole, False).count(store, tenant, lead_id, now_ms, history)
    if conditional:
        CounterGroup(conditional, True).count(store, tenant, lead_id, now_ms, history)
    return history


class CounterGroup:
    """Counters one store read counts together: without conditions, from the activity
    index (`conditional` False); with conditions, from the lead's activities of their
    types. What the read asks for (the types, the days) is worked out once."""

    __slots__ = ("counters", "conditional", "types", "retention_days", "by_type")

    def __init__(self, counters: Sequence[HistoryCounter], conditional: bool):
        self.counters = tuple(counters)
        self.conditional = conditional
        self.types = sorted({c.activity_type for c in counters})
        self.retention_days = max(c.retention_days for c in counters)
        by_type: dict[str, list[HistoryCounter]] = {}
        for counter in counters:
            by_type.setdefault(counter.activity_type, []).append(counter)
        self.by_type = {type_: tuple(found) for type_, found in by_type.items()}

    def count(self, store, tenant: str, lead_id: str, now_ms: int, history: dict) -> None:
        """Add the group's counts for the lead at `now_ms` to `history` (key -> {day: count})."""
        today = now_ms // MS_PER_DAY
        oldest = max(today - self.retention_days + 1, 0)
        by_type = self.by_type
        if not self.conditional:
            entries = store.read_index(tenant, lead_id, types=self.types, since_day=_EPOCH + timedelta(days=oldest))
            for (type_, day), (count, _last) in entries.items():
                number = (day - _EPOCH).days
                for counter in by_type.get(type_, ()):
                    if number > today - counter.retention_days and count > 0:
                        history.setdefault(counter.key, {})[number] = count
            return
        for activity in store.history(tenant, lead_id, since=oldest * MS_PER_DAY, types=self.types):
            day = activity.occurred_at // MS_PER_DAY
            for counter in by_type.get(activity.type, ()):
                if day > today - counter.retention_days and counter.counts(activity.attributes, activity.occurred_at):
                    per_day = history.setdefault(counter.key, {})
                    per_day[day] = per_day.get(day, 0) + 1


def history_reads(counters: Sequence[HistoryCounter]) -> dict[str, CounterGroup]:
    """For each counter's key, the counters one store read counts together with it: the
    counters without conditions (one read of the activity index), or those with
    conditions on the same activity type (one read of that type's activities)."""
    groups: dict[tuple, list[HistoryCounter]] = {}
    for counter in counters:
        group = ("index",) if not counter.conditions else ("history", counter.activity_type)
        groups.setdefault(group, []).append(counter)
    reads = {}
    for kind, members in groups.items():
        group = CounterGroup(members, kind[0] == "history")
        for counter in members:
            reads[counter.key] = group
    return reads


class StoredHistory(dict):
    """A lead's history counters, each counted from the store the first time a filter
    asks for it (`get`), with the counters the same read answers (history_reads): most
    decisions are settled by the context and the profile before a history filter is
    tried, and then the store is not asked, or asked once for each kind of read."""

    # What a count needs, held here rather than in a closure: a lead's cached view
    # should be few objects, for the garbage collector walks them while they are cached.
    __slots__ = ("_store", "_tenant", "_lead_id", "_now_ms", "_reads", "_asked")

    def __init__(self, store, tenant: str, lead_id: str, reads: dict[str, CounterGroup], now_ms: int):
        super().__init__()
        self._store, self._tenant, self._lead_id, self._now_ms = store, tenant, lead_id, now_ms
        self._reads = reads
        self._asked: set | None = None  # the groups read: made on the first read, most leads never need one

    def get(self, key, default=None):
        found = dict.get(self, key, _UNCOUNTED)
        if found is not _UNCOUNTED:
            return found
        group = self._reads.get(key)
        if group is not None:
            asked = self._asked
            if asked is None:
                asked = self._asked = set()
            if group not in asked:
                asked.add(group)
                group.count(self._store, self._tenant, self._lead_id, self._now_ms, self)
        return dict.get(self, key, default)


_UNCOUNTED = object()


def lead_state_of_profile(text: str | bytes, history: dict | None = None, digest: str | None = None) -> LeadState:
    """What decisions read of a profile: the lead's attributes, score and lists, as
    decode_profile gives them (campaign runs, flows, sends and the sequencer's progress
    are left undecoded: no audience or snippet reads them), with its history counters:
    the profile's own (`decisions`) when they were counted under `digest`, else `history`
    (None: none). ProfileError for text that is not a profile of a version this Orion
    reads, or whose attributes, score or lists do not read."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _with_history(decode_profile(text).flows.lead, history)  # what orjson refuses, read the slow way
    if data.__class__ is not dict:
        raise ProfileError(f"a lead profile must be a JSON object, not {type(data).__name__}")
    version = data.get("version", 1)
    if version.__class__ is not int or version < 1 or version > PROFILE_VERSION:
        return _with_history(decode_profile(text).flows.lead, history)  # its error says which
    lead = data.get("lead", _NO_LEAD)
    try:
        attributes = lead.get("attributes", _NO_LEAD)
        if attributes.__class__ is not dict or attributes is _NO_LEAD:  # a parsed dict is the lead's own
            attributes = dict(attributes)
        lists = lead.get("lists", ())
        names = _LIST_SETS.get(tuple(lists))
        score = lead.get("score", 0)
        if digest is not None:
            counted = _counted_history(data.get("decisions"), digest)
            if counted is not None:
                history = counted
        return LeadState(attributes, 0 if score is None else score, names if names is not None else _list_set(lists),
                         _NO_CAMPAIGNS, history if history is not None else _NO_HISTORY)
    except (AttributeError, TypeError, ValueError) as err:
        raise ProfileError(f"a version {version} lead profile has a bad field: {err}") from None


def _counted_history(decisions, digest: str) -> dict | None:
    """The history counters a profile holds for decisions ({key: {day: count}}, a counter
    with no count absent) when counted under `digest`; None otherwise, or when they do
    not read (then the store counts them: the lead's own facts still read)."""
    if decisions.__class__ is not dict or decisions.get("of") != digest:
        return None
    found = decisions.get("history")
    if found.__class__ is not dict:
        return None
    try:
        history = {}
        for key, days in found.items():
            history[key] = {int(day): count for day, count in days.items()}
            for count in history[key].values():
                if count.__class__ is not int:
                    return None
        return history
    except (AttributeError, TypeError, ValueError):
        return None


def _with_history(state: LeadState, history: dict | None) -> LeadState:
    return state if history is None else state._replace(history=history)


_NO_LEAD: dict = {}
_COUNT_HERE: dict = {}  # LeadReader.read: the history is counted from the store unless the profile holds it
_NO_CAMPAIGNS = EMPTY_LEAD_STATE.campaigns
_NO_HISTORY = EMPTY_LEAD_STATE.history
_LIST_SETS: dict[tuple, frozenset] = {}  # the lists leads are in, as sets, for at most 4096 combinations


def _list_set(lists) -> frozenset:
    found = frozenset(lists)
    if len(_LIST_SETS) < 4096 and lists.__class__ is list:
        _LIST_SETS[tuple(lists)] = found
    return found


class LeadReader:
    """Reads leads for decisions from an ActivityStore, through the bounded TTL cache.
    Not thread-safe: one thread calls it (the store's client is not shared either)."""

    def __init__(self, store, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl_s = ttl_s
        self._slack = ttl_s / 4  # how long the oldest entry stays once expired: see the module's docs
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, LeadView]] = {}
        # history_reads of each tenant's counters, by the counters' id (kept with them)
        self._reads: dict[int, tuple[Sequence[HistoryCounter], dict]] = {}
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
        history = digest = None
        if counters:
            reads = self._reads.get(id(counters))
            if reads is None or reads[0] is not counters:
                if len(self._reads) >= 1024:
                    self._reads.clear()
                reads = self._reads[id(counters)] = (counters, history_reads(counters), history_digest(counters))
            digest = reads[2]
            history = StoredHistory(self.store, tenant, lead_id, reads[1], now_ms) if lazy_history else _COUNT_HERE
        if data is None:
            state, status = EMPTY_LEAD_STATE, UNKNOWN
        else:
            try:
                # the profile's own counts when they were counted under `digest`, else `history`
                state, status = lead_state_of_profile(data, history, digest), KNOWN
            except ProfileError:
                state, status = EMPTY_LEAD_STATE, UNREADABLE
        if history is not None and (status is not KNOWN or state.history is history):
            # the profile did not answer: the store counts (a StoredHistory: when a filter first asks)
            if history is _COUNT_HERE:
                history = count_history(self.store, tenant, lead_id, counters, now_ms) or _NO_HISTORY
            state = state._replace(history=history)
        view = LeadView(state, status)
        if self.ttl_s > 0:
            now = self._clock()
            expiries = self._expiries
            if expiries and (expiries[0][0] + self._slack <= now or len(self._cache) >= self.max_entries):
                self._drop_expired(now)
            key = (tenant, lead_id)
            expiry = now + self.ttl_s
            self._cache[key] = (expiry, view)
            expiries.append((expiry, key))
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
