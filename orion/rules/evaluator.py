"""Per-lead trigger evaluation: a pure, deterministic function
`evaluate(rules, lead state, activity) -> (new lead state, outcomes)`.

The activity first updates the lead (score, data values, lists, history counters), then
every campaign whose trigger matches is checked, in priority order then name: its
qualification rule against the lead's past runs, then its smart-list filters. "Now" is
the activity's own event time, so the same activities in the same order always give the
same result, on any engine, at any wall-clock time. The input state is never mutated.

    orion evaluate --rules orion/samples/rules --events orion/samples/events.jsonl
"""
from __future__ import annotations

import functools
from typing import Iterable

from orion.activities import MS_PER_DAY, Activity, activity_sort_key, format_timestamp
from orion.rules.index import RuleSet, TenantRules
from orion.rules.model import EMPTY_LEAD_STATE, Campaign, LeadState, Outcome


# Records are built with tuple.__new__: NamedTuple's keyword-taking constructor and
# _replace cost several times more, on every activity.
_new = tuple.__new__


def _with(state: LeadState, *, attributes=None, score=None, lists=None, campaigns=None, history=None) -> LeadState:
    return _new(LeadState, (
        state.attributes if attributes is None else attributes,
        state.score if score is None else score,
        state.lists if lists is None else lists,
        state.campaigns if campaigns is None else campaigns,
        state.history if history is None else history,
    ))


def _set_attribute(state: LeadState, attributes: dict) -> LeadState:
    changed = dict(state.attributes)
    changed[attributes["attribute"]] = attributes.get("new_value")
    return _with(state, attributes=changed)


def _change_score(state: LeadState, attributes: dict) -> LeadState:
    new_score = attributes.get("new_score")
    return _with(state, score=new_score if new_score is not None else state.score + attributes["delta"])


def _flag(name: str, condition=lambda attributes: True):
    def apply(state: LeadState, attributes: dict) -> LeadState:
        if not condition(attributes) or state.attributes.get(name) is True:
            return state
        return _with(state, attributes={**state.attributes, name: True})

    return apply


# How an activity changes what we know of the lead, by activity type.
_EFFECTS = {
    "data_value_changes": _set_attribute,
    "change_score": _change_score,
    "added_to_list": lambda state, a: _with(state, lists=state.lists | {a["list"]}),
    "removed_from_list": lambda state, a: _with(state, lists=state.lists - {a["list"]}),
    "unsubscribe_email": _flag("unsubscribed"),
    "email_bounced": _flag("email_invalid", lambda a: a.get("category") == "hard"),
}


def _count(state: LeadState, counters, now: int) -> LeadState:
    """The lead with `counters` each counting one more activity on the day of `now`."""
    day = now // MS_PER_DAY
    history = dict(state.history)
    for counter in counters:
        key = counter.key
        per_day = history.get(key)
        if not per_day:
            history[key] = {day: 1}
        elif day in per_day:
            per_day = dict(per_day)
            per_day[day] += 1
            history[key] = per_day
        else:
            # A new day: drop the days no filter reading this counter looks at any more
            # (usually none: min() and a copy are much cheaper than rebuilding the dict).
            oldest = day - counter.retention_days
            if min(per_day) > oldest:
                per_day = dict(per_day)
            else:
                per_day = {d: n for d, n in per_day.items() if d > oldest}
            per_day[day] = 1
            history[key] = per_day
    return _new(LeadState, (state.attributes, state.score, state.lists, state.campaigns, history))


def apply_activity(rules: TenantRules | None, state: LeadState, activity: Activity) -> LeadState:
    """The lead after `activity`: its effect on the lead, and the history counters."""
    effect = _EFFECTS.get(activity.type)
    if effect is not None:
        state = effect(state, activity.attributes)
    counters = rules.counting(activity) if rules is not None else None
    return _count(state, counters, activity.occurred_at) if counters else state


@functools.lru_cache(maxsize=1024)
def _date_text(day: int) -> str:
    """'2026-11-22T' for UTC day number `day`."""
    text = format_timestamp(day * MS_PER_DAY)
    return text[: text.index("T") + 1]


def _timestamp_text(ms: int) -> str:
    """format_timestamp(ms), without a datetime per call: a blocked lead is reported on
    every activity that triggers the campaign again."""
    day, in_day = divmod(ms, MS_PER_DAY)
    seconds, millis = divmod(in_day, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{_date_text(day)}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def qualification_block(campaign: Campaign, last_run: tuple | None, now: int) -> str | None:
    """None when the qualification rule lets the lead run the flow now, else why not."""
    if last_run is None or campaign.qualification == "every_time":
        return None
    runs, last = last_run
    if campaign.qualification == "once":
        return f"qualification 'once': already ran at {_timestamp_text(last)}"
    next_allowed = last + campaign.interval_ms
    if now < next_allowed:
        return (
            f"qualification '{campaign.qualification_text}': last ran at {_timestamp_text(last)}, "
            f"may run again from {_timestamp_text(next_allowed)}"
        )
    return None


def evaluate(rules: RuleSet, state: LeadState | None, activity: Activity) -> tuple[LeadState, list[Outcome]]:
    """Evaluate one activity of one lead. `state` is the lead's state before it (None for
    a lead never seen); returns the state after it and the outcomes, one per campaign
    with a matching trigger, in priority order then name."""
    # apply_activity and TenantRules.match, with the index consulted once for both.
    if state is None:
        state = EMPTY_LEAD_STATE
    type_ = activity.type
    attributes = activity.attributes
    effect = _EFFECTS.get(type_)
    if effect is not None:
        state = effect(state, attributes)
    tenant = rules.tenants.get(activity.tenant)
    if tenant is None:
        return state, []
    bucket = tenant.index.get(type_)
    if bucket is None:
        return state, []
    now = activity.occurred_at
    matched, counters = bucket.find(attributes, now)
    if counters:
        state = _count(state, counters, now)
    if not matched:
        return state, []
    outcomes = []
    campaigns = state.campaigns
    copied = False
    for campaign in matched:
        name = campaign.name
        last_run = campaigns.get(name)
        if last_run is not None and campaign.qualification != "every_time":
            blocked = qualification_block(campaign, last_run, now)
            if blocked is not None:
                outcomes.append(_new(Outcome, (activity.tenant, activity.lead_id, activity.event_id, now, name,
                                               campaign.priority, False, "qualification", blocked)))
                continue
        if campaign.filters:
            failed = campaign.failed_filters(state, now)
            if failed is not None:
                outcomes.append(_new(Outcome, (activity.tenant, activity.lead_id, activity.event_id, now, name,
                                               campaign.priority, False, "filters", failed)))
                continue
        if not copied:
            campaigns = dict(campaigns)
            copied = True
        campaigns[name] = (1 if last_run is None else last_run[0] + 1, now)
        outcomes.append(_new(Outcome, (activity.tenant, activity.lead_id, activity.event_id, now, name,
                                       campaign.priority, True, None, None)))
    if copied:
        state = _new(LeadState, (state.attributes, state.score, state.lists, campaigns, state.history))
    return state, outcomes


def evaluate_lead(
    rules: RuleSet, state: LeadState | None, activities: Iterable[Activity]
) -> tuple[LeadState, list[Outcome]]:
    """Evaluate one lead's activities in event-time order (ties by event id)."""
    outcomes: list[Outcome] = []
    for activity in sorted(activities, key=activity_sort_key):
        state, found = evaluate(rules, state, activity)
        outcomes.extend(found)
    return state if state is not None else EMPTY_LEAD_STATE, outcomes
