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

from typing import Iterable

from orion.activities import MS_PER_DAY, Activity, activity_sort_key, format_timestamp
from orion.rules.index import RuleSet, TenantRules
from orion.rules.model import EMPTY_LEAD_STATE, Campaign, LeadState, Outcome


def _set_attribute(state: LeadState, attributes: dict) -> LeadState:
    changed = dict(state.attributes)
    changed[attributes["attribute"]] = attributes.get("new_value")
    return state._replace(attributes=changed)


def _change_score(state: LeadState, attributes: dict) -> LeadState:
    new_score = attributes.get("new_score")
    return state._replace(score=new_score if new_score is not None else state.score + attributes["delta"])


def _flag(name: str, condition=lambda attributes: True):
    def apply(state: LeadState, attributes: dict) -> LeadState:
        if not condition(attributes) or state.attributes.get(name) is True:
            return state
        return state._replace(attributes={**state.attributes, name: True})

    return apply


# How an activity changes what we know of the lead, by activity type.
_EFFECTS = {
    "data_value_changes": _set_attribute,
    "change_score": _change_score,
    "added_to_list": lambda state, a: state._replace(lists=state.lists | {a["list"]}),
    "removed_from_list": lambda state, a: state._replace(lists=state.lists - {a["list"]}),
    "unsubscribe_email": _flag("unsubscribed"),
    "email_bounced": _flag("email_invalid", lambda a: a.get("category") == "hard"),
}


def apply_activity(rules: TenantRules | None, state: LeadState, activity: Activity) -> LeadState:
    """The lead after `activity`: its effect on the lead, and the history counters."""
    effect = _EFFECTS.get(activity.type)
    if effect is not None:
        state = effect(state, activity.attributes)
    counters = rules.counters_by_type.get(activity.type) if rules is not None else None
    if not counters:
        return state
    now = activity.occurred_at
    day = now // MS_PER_DAY
    history = None
    for counter in counters:
        if not counter.counts(activity.attributes, now):
            continue
        if history is None:
            history = dict(state.history)
        per_day = history.get(counter.key)
        if per_day and day in per_day:
            per_day = dict(per_day)
            per_day[day] += 1
        else:
            # A new day: drop the days no filter reading this counter looks at any more.
            oldest = day - counter.retention_days
            per_day = {d: n for d, n in (per_day or {}).items() if d > oldest}
            per_day[day] = 1
        history[counter.key] = per_day
    return state if history is None else state._replace(history=history)


def qualification_block(campaign: Campaign, last_run: tuple | None, now: int) -> str | None:
    """None when the qualification rule lets the lead run the flow now, else why not."""
    if last_run is None or campaign.qualification == "every_time":
        return None
    runs, last = last_run
    if campaign.qualification == "once":
        return f"qualification 'once': already ran at {format_timestamp(last)}"
    next_allowed = last + campaign.interval_ms
    if now < next_allowed:
        return (
            f"qualification '{campaign.qualification_text}': last ran at {format_timestamp(last)}, "
            f"may run again from {format_timestamp(next_allowed)}"
        )
    return None


def evaluate(rules: RuleSet, state: LeadState | None, activity: Activity) -> tuple[LeadState, list[Outcome]]:
    """Evaluate one activity of one lead. `state` is the lead's state before it (None for
    a lead never seen); returns the state after it and the outcomes, one per campaign
    with a matching trigger, in priority order then name."""
    tenant = rules.tenants.get(activity.tenant)
    state = apply_activity(tenant, state if state is not None else EMPTY_LEAD_STATE, activity)
    if tenant is None:
        return state, []
    matched = tenant.match(activity)
    if not matched:
        return state, []
    now = activity.occurred_at
    outcomes = []
    campaigns = state.campaigns
    copied = False
    for campaign in matched:
        blocked = qualification_block(campaign, campaigns.get(campaign.name), now)
        if blocked is None:
            failed = campaign.failed_filters(state, now)
            if failed is None:
                if not copied:
                    campaigns = dict(campaigns)
                    copied = True
                runs = campaigns.get(campaign.name, (0, 0))[0]
                campaigns[campaign.name] = (runs + 1, now)
                outcomes.append(_outcome(activity, campaign, True, None, None))
            else:
                outcomes.append(_outcome(activity, campaign, False, "filters", failed))
        else:
            outcomes.append(_outcome(activity, campaign, False, "qualification", blocked))
    if copied:
        state = state._replace(campaigns=campaigns)
    return state, outcomes


def _outcome(activity: Activity, campaign: Campaign, qualified: bool, reason, detail) -> Outcome:
    return Outcome(
        activity.tenant,
        activity.lead_id,
        activity.event_id,
        activity.occurred_at,
        campaign.name,
        campaign.priority,
        qualified,
        reason,
        detail,
    )


def evaluate_lead(
    rules: RuleSet, state: LeadState | None, activities: Iterable[Activity]
) -> tuple[LeadState, list[Outcome]]:
    """Evaluate one lead's activities in event-time order (ties by event id)."""
    outcomes: list[Outcome] = []
    for activity in sorted(activities, key=activity_sort_key):
        state, found = evaluate(rules, state, activity)
        outcomes.extend(found)
    return state if state is not None else EMPTY_LEAD_STATE, outcomes
