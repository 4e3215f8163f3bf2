"""The compiled form of the rules and the records evaluation works on: campaigns with
their triggers, filters and flows; a lead's state; and the outcome of evaluating one
activity. Built once by `compiler.py`; read-only afterwards.

    python -c "from orion.rules.model import LeadState; print(LeadState().to_json_dict())"
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, NamedTuple

from orion.activities import MS_PER_DAY

AttributeGetter = Callable[[dict], Any]
Condition = tuple[AttributeGetter, Callable[[Any, int], bool]]


class LeadState(NamedTuple):
    """What evaluation knows about one lead. Never mutated: evaluation returns a new one.

    campaigns: campaign name -> (runs, last run in epoch ms).
    history: history-counter key -> {UTC day number: activities that day}.
    """

    attributes: dict = {}
    score: float = 0
    lists: frozenset = frozenset()
    campaigns: dict = {}
    history: dict = {}

    def to_json_dict(self) -> dict:
        return {
            "attributes": self.attributes,
            "score": self.score,
            "lists": sorted(self.lists),
            "campaigns": {name: list(run) for name, run in self.campaigns.items()},
            "history": {
                key: {str(day): n for day, n in days.items()} for key, days in self.history.items()
            },
        }

    @classmethod
    def from_json_dict(cls, data: dict) -> "LeadState":
        return cls(
            attributes=dict(data.get("attributes", {})),
            score=data.get("score", 0),
            lists=frozenset(data.get("lists", ())),
            campaigns={name: tuple(run) for name, run in data.get("campaigns", {}).items()},
            history={
                key: {int(day): n for day, n in days.items()}
                for key, days in data.get("history", {}).items()
            },
        )


EMPTY_LEAD_STATE = LeadState()


class Outcome(NamedTuple):
    """A trigger of `campaign` matched `event_id`. `qualified` says whether the lead runs
    the flow; if not, `reason` is "qualification" or "filters" and `detail` says why."""

    tenant: str
    lead_id: str
    event_id: str
    occurred_at: int
    campaign: str
    priority: int
    qualified: bool
    reason: str | None = None
    detail: str | None = None

    def to_json_dict(self) -> dict:
        return self._asdict()


# How the trigger index files a trigger or history counter by the activity type's
# selective attribute: under exact values, under prefixes (starts_with), under texts the
# value must contain (contains, and the literal part of a `matches`), or not at all.
EXACT, PREFIX, CONTAINS = "exact", "prefix", "contains"


class Trigger(NamedTuple):
    """One trigger of a campaign. `conditions` are all of its conditions. The index files
    it by `key_kind` under `key_values` (casefolded values, prefixes or contained texts of
    the `selective` attribute; key_kind None: filed under none, tested for every activity
    of the type); `residual` are the conditions the index does not answer by itself, and
    triggers with the same `residual_key` have residuals that test the same thing."""

    campaign: "Campaign"
    activity_type: str
    conditions: tuple[Condition, ...]
    residual: tuple[Condition, ...]
    selective: str | None
    key_kind: str | None
    key_values: tuple[str, ...]
    residual_key: str


class Filter(NamedTuple):
    """Filter number `number` of a campaign's smart list, as a test of the lead state."""

    number: int
    description: str
    test: Callable[[LeadState, int], bool]
    # (name, predicate of the value) when the test is that predicate of one string
    # attribute of the lead and nothing else: then it depends on that value alone (text
    # conditions do not read the time), and decisions index experiences by it.
    attribute: tuple[str, Callable[[Any, int], bool]] | None = None


class HistoryCounter(NamedTuple):
    """Counts a lead's activities of one type that meet `conditions`, per UTC day, for
    as many days as the longest history filter that reads it needs. Filed in the index
    like a trigger (see Trigger); by default under nothing, with all its conditions as
    the residual."""

    key: str
    activity_type: str
    conditions: tuple[Condition, ...]
    retention_days: int
    residual: tuple[Condition, ...] | None = None  # None: all of `conditions`
    selective: str | None = None
    key_kind: str | None = None
    key_values: tuple[str, ...] = ()
    residual_key: str | None = None  # None: `key`

    def counts(self, attributes: dict, now: int) -> bool:
        for get, test in self.conditions:
            if not test(get(attributes), now):
                return False
        return True


class Campaign(NamedTuple):
    tenant: str
    name: str
    kind: str  # "trigger" or "batch"
    active: bool
    priority: int
    triggers: tuple[Trigger, ...]
    filters: tuple[Filter, ...]
    logic: Callable[[Callable[[int], bool]], bool]
    logic_text: str
    qualification: str  # "once", "every_time" or "once_every"
    interval_ms: int  # for once_every
    qualification_text: str
    flow: tuple[dict, ...]
    schedule: dict | None
    file: str
    line: int
    rank: int = 0  # position in (priority, name) order within the tenant

    def failed_filters(self, state: LeadState, now: int) -> str | None:
        """None when the lead passes the smart list, else which filters failed."""
        filters = self.filters
        if not filters:
            return None
        logic_text = self.logic_text
        if logic_text == "all":  # most smart lists: every filter, and the failures listed
            failed = None
            for f in filters:
                if not f.test(state, now):
                    failed = (f,) if failed is None else failed + (f,)
            return None if failed is None else _failure_message(logic_text, failed)
        if logic_text == "any":
            for f in filters:
                if f.test(state, now):
                    return None
            return _failure_message(logic_text, filters)
        results: dict[int, bool] = {}
        by_number = {f.number: f for f in filters}

        def met(number: int) -> bool:
            found = results.get(number)
            if found is None:
                found = results[number] = by_number[number].test(state, now)
            return found

        if self.logic(met):
            return None
        return _failure_message(logic_text, tuple(f for f in filters if not met(f.number)))


# (logic text, failed filters) -> message: the same few combinations fail over and over.
_FAILURE_MESSAGES: dict[tuple, str] = {}
_FAILURE_MESSAGES_KEPT = 4096


def _failure_message(logic_text: str, failed: tuple) -> str:
    key = (logic_text, failed)
    message = _FAILURE_MESSAGES.get(key)
    if message is None:
        listed = "; ".join(f"{f.number} ({f.description})" for f in failed)
        if logic_text == "all":
            message = f"filter {listed} not met"
        else:
            message = f"logic {logic_text!r} not met; filters not met: {listed}"
        if len(_FAILURE_MESSAGES) >= _FAILURE_MESSAGES_KEPT:
            _FAILURE_MESSAGES.clear()
        _FAILURE_MESSAGES[key] = message
    return message


def day_of(ms: int) -> int:
    return ms // MS_PER_DAY


def attribute_getter(path: str) -> AttributeGetter:
    """`url` or a dotted path into an object attribute such as `fields.email`. The
    getter's `path` attribute holds the path (the index fuses simple getters into the
    tests it runs)."""
    if "." not in path:
        get = lambda attributes: attributes.get(path)  # noqa: E731
    else:
        parts = path.split(".")
        if len(parts) == 2:
            first, second = parts

            def get(attributes: dict) -> Any:
                if not isinstance(attributes, dict):
                    return None
                value = attributes.get(first)
                return value.get(second) if isinstance(value, dict) else None
        else:
            def get(attributes: dict) -> Any:
                value: Any = attributes
                for part in parts:
                    if not isinstance(value, dict):
                        return None
                    value = value.get(part)
                return value
    get.path = path
    return get


# --- experiences (POST /v1/decide, orion/decisions) ----------------------------------

# The activity each decision is recorded as, through the normal intake: a tenant with
# experiences has this type, so triggers, history filters and analytics can read it.
EXPERIENCE_IMPRESSION = "experience_impression"
# The variant name of a control group's impressions.
CONTROL = "control"


class Variant(NamedTuple):
    """One arm of an experience: its share (`weight`, against the other arms') and its
    content. `kind` is "json" (content: the JSON value as written), "template" (content:
    Jinja2 source, rendered in the sandbox for each decision) or "none" (a control group
    without content)."""

    name: str
    weight: float
    kind: str
    content: Any
    control: bool = False


class ExperienceGoal(NamedTuple):
    """What counts as a conversion: an activity of `activity_type` meeting `conditions`
    within `within_ms` of the lead's first impression."""

    activity_type: str
    conditions: tuple[Condition, ...]
    within_ms: int
    description: str

    def met_by(self, activity_type: str, attributes: dict, now: int) -> bool:
        if activity_type != self.activity_type:
            return False
        for get, test in self.conditions:
            if not test(get(attributes), now):
                return False
        return True


class Experience(NamedTuple):
    """One experience of a placement, compiled. `context` are the conditions on the
    request's context: (field, predicate(value, now)); a `local_time` value is the
    minutes since local midnight. `arms` are the variants then the control group (if
    any), with `cumulative` the running total of their weights, for assignment."""

    tenant: str
    name: str
    placement: str
    active: bool
    priority: int
    starting: int | None
    ending: int | None
    filters: tuple[Filter, ...]
    logic: Callable[[Callable[[int], bool]], bool]
    logic_text: str
    context: tuple[tuple[str, Callable[[Any, int], bool]], ...]
    arms: tuple[Variant, ...]
    cumulative: tuple[float, ...]
    goal: ExperienceGoal | None
    file: str
    line: int

    @property
    def total_weight(self) -> float:
        return self.cumulative[-1]

    @property
    def control(self) -> Variant | None:
        last = self.arms[-1]
        return last if last.control else None

    def scheduled(self, now: int) -> bool:
        return (self.starting is None or now >= self.starting) and (self.ending is None or now < self.ending)

    def context_met(self, context: dict, now: int) -> bool:
        for field, test in self.context:
            if not test(context.get(field), now):
                return False
        return True

    def filters_met(self, state: LeadState, now: int) -> bool:
        filters = self.filters
        if not filters:
            return True
        if self.logic_text == "all":
            for f in filters:
                if not f.test(state, now):
                    return False
            return True
        by_number = {f.number: f for f in filters}
        return self.logic(lambda number: by_number[number].test(state, now))


def history_digest(counters) -> str:
    """What names a set of history counters: a digest of each one's key and the days it
    keeps. The graph writes it with the decision history of a lead profile (the counts of
    the tenant's experience counters), and a decision uses that history only when its own
    rules' experience counters give the same digest."""
    text = json.dumps(sorted([counter.key, counter.retention_days] for counter in counters), separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class TenantExperiences(NamedTuple):
    """One tenant's experiences: by placement, the active ones in (priority, name) order
    (a placement every experience of which is inactive is known and has none); by name,
    all of them; and the history counters their audiences read. The graph counts those
    counters too and writes their counts in each lead's profile under their digest
    (history_digest); a decision reads them there, or counts them from the store for a
    profile written under other rules (orion/decisions/leads.py)."""

    tenant: str
    by_placement: dict
    by_name: dict
    counters: tuple[HistoryCounter, ...]
