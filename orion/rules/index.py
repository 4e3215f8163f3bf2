"""The trigger index: compiled rules arranged so that an activity meets only the triggers
that could match it.

Triggers are filed by (tenant, activity type) and, where a trigger needs an exact value of
the type's selective attribute (url, form, email, list, campaign, ...), by that value.
An activity then costs two dictionary look-ups plus the few triggers filed under its
value and the triggers with no exact value; campaigns that cannot match it cost nothing.
`match_brute_force` scans every campaign and exists to prove the index right.

    python -c "from orion.rules import load_rules; print(load_rules('orion/samples/rules').summary())"
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from orion.activities import Activity, ActivityTypes
from orion.rules.model import Campaign, HistoryCounter, Trigger


class _TypeBucket(NamedTuple):
    selective: str | None
    keyed: dict  # casefolded value -> tuple[Trigger, ...]
    unkeyed: tuple[Trigger, ...]


def _all_met(conditions, attributes: dict, now: int) -> bool:
    for get, test in conditions:
        if not test(get(attributes), now):
            return False
    return True


class TenantRules:
    """One tenant's compiled campaigns, trigger index, history counters and settings."""

    def __init__(
        self,
        tenant: str,
        campaigns: dict[str, Campaign],
        index: dict[str, _TypeBucket],
        counters_by_type: dict[str, tuple[HistoryCounter, ...]],
        lists: frozenset,
        lead_attributes: dict[str, str],
        communication_limits: dict[str, int],
    ):
        self.tenant = tenant
        self.campaigns = campaigns
        self.index = index
        self.counters_by_type = counters_by_type
        self.lists = lists
        self.lead_attributes = lead_attributes
        self.communication_limits = communication_limits

    @classmethod
    def build(
        cls,
        tenant: str,
        campaigns: dict[str, Campaign],
        counters: Iterable[HistoryCounter],
        *,
        lists: frozenset = frozenset(),
        lead_attributes: dict[str, str] | None = None,
        communication_limits: dict[str, int] | None = None,
    ) -> "TenantRules":
        keyed: dict[str, dict[str, list[Trigger]]] = {}
        unkeyed: dict[str, list[Trigger]] = {}
        selective: dict[str, str | None] = {}
        for campaign in campaigns.values():
            if campaign.kind != "trigger" or not campaign.active:
                continue
            for trigger in campaign.triggers:
                # Point the trigger at the campaign as finally compiled (with its rank):
                # the compiler builds triggers before it ranks campaigns.
                trigger = trigger._replace(campaign=campaign)
                type_ = trigger.activity_type
                keyed.setdefault(type_, {})
                unkeyed.setdefault(type_, [])
                if trigger.key_values is None:
                    unkeyed[type_].append(trigger)
                    continue
                for value in trigger.key_values:
                    keyed[type_].setdefault(value, []).append(trigger)
                selective[type_] = trigger.selective
        index = {
            type_: _TypeBucket(
                selective.get(type_),
                {value: tuple(triggers) for value, triggers in keyed[type_].items()},
                tuple(unkeyed[type_]),
            )
            for type_ in keyed
        }
        by_type: dict[str, list[HistoryCounter]] = {}
        for counter in counters:
            by_type.setdefault(counter.activity_type, []).append(counter)
        return cls(
            tenant,
            campaigns,
            index,
            {type_: tuple(found) for type_, found in by_type.items()},
            lists,
            lead_attributes or {},
            communication_limits or {},
        )

    def match(self, activity: Activity) -> list[Campaign]:
        """Active trigger campaigns with a trigger that matches, in (priority, name) order."""
        bucket = self.index.get(activity.type)
        if bucket is None:
            return []
        attributes = activity.attributes
        now = activity.occurred_at
        found: dict[str, Campaign] = {}
        if bucket.keyed:
            value = attributes.get(bucket.selective)
            if value.__class__ is str:
                for trigger in bucket.keyed.get(value.casefold(), ()):
                    if _all_met(trigger.residual, attributes, now):
                        found[trigger.campaign.name] = trigger.campaign
        for trigger in bucket.unkeyed:
            if _all_met(trigger.residual, attributes, now):
                found[trigger.campaign.name] = trigger.campaign
        if len(found) < 2:
            return list(found.values())
        return sorted(found.values(), key=_by_rank)

    def match_brute_force(self, activity: Activity) -> list[Campaign]:
        """What `match` must return, found by testing every trigger of every campaign."""
        found = [
            campaign
            for campaign in self.campaigns.values()
            if campaign.kind == "trigger"
            and campaign.active
            and any(
                trigger.activity_type == activity.type
                and _all_met(trigger.conditions, activity.attributes, activity.occurred_at)
                for trigger in campaign.triggers
            )
        ]
        return sorted(found, key=_by_rank)


def _by_rank(campaign: Campaign) -> int:
    return campaign.rank


class RuleSet:
    """Every tenant's compiled rules plus the activity types each tenant may send."""

    def __init__(self, tenants: dict[str, TenantRules], activity_types: ActivityTypes):
        self.tenants = tenants
        self.activity_types = activity_types

    def campaign(self, tenant: str, name: str) -> Campaign | None:
        rules = self.tenants.get(tenant)
        return rules.campaigns.get(name) if rules else None

    def summary(self) -> str:
        lines = []
        for tenant, rules in sorted(self.tenants.items()):
            active = sum(1 for c in rules.campaigns.values() if c.active)
            batch = sum(1 for c in rules.campaigns.values() if c.kind == "batch")
            lines.append(
                f"{tenant}: {len(rules.campaigns)} campaigns ({active} active, {batch} batch), "
                f"{sum(len(c) for c in rules.counters_by_type.values())} history counters"
            )
        return "\n".join(lines)
