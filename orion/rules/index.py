"""The trigger index: compiled rules arranged so that an activity meets only the triggers
and history counters that could match it.

Each (tenant, activity type) has one `TypeIndex`. Triggers and counters that need
something of the type's selective attribute (url, form, email, list, campaign, ...) are
filed under it: an exact value (is / in), a prefix (starts_with) or a text inside the
value (contains, and the literal part of a `matches`). The activity's value is casefolded
once; exact values are one dictionary look-up, and all prefixes, or all contained texts,
are found by one regular expression that is a trie of them (`KeyTrie`), whatever their
number. What is filed under nothing (type-only triggers, numbers, ends_with ...) is
tested for every activity of the type. Triggers and counters that file under the same
key with residual conditions that test the same thing share one group, tested once.
The answer for a value, merged and ordered, is remembered (a bounded memo per type), so
a value seen before costs one dictionary look-up plus the residual checks.
`match_brute_force` scans every campaign and exists to prove the index right.

    python -c "from orion.rules import load_rules; print(load_rules('orion/samples/rules').summary())"
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from orion.activities import Activity, ActivityTypes
from orion.rules.model import CONTAINS, EXACT, PREFIX, Campaign, HistoryCounter, attribute_getter, history_digest

# (check or None, campaigns, counters, probe): who meets an activity that reaches this
# group and passes `check(attributes, now)` (None: no residual conditions, everyone
# does). `probe` is (attribute path, test) when the residual is one condition, else None.
Group = tuple
_NO_GROUPS: tuple = ()


def _all_met(conditions, attributes: dict, now: int) -> bool:
    for get, test in conditions:
        if not test(get(attributes), now):
            return False
    return True


def _residual_check(conditions: tuple) -> Callable[[dict, int], bool] | None:
    if not conditions:
        return None
    if len(conditions) == 1:
        ((get, test),) = conditions
        path = getattr(get, "path", None)
        if path is not None and "." not in path:  # one call less, for every activity
            return lambda attributes, now: test(attributes.get(path), now)
        return lambda attributes, now: test(get(attributes), now)
    return lambda attributes, now: _all_met(conditions, attributes, now)


class KeyTrie:
    """Many keys (casefolded texts), each with a tuple of groups; finds the keys a text
    starts with (`starting`) or contains (`inside`) in one regular-expression call.

    The pattern is the keys' trie written as nested alternatives, each branch tried
    before the end of a shorter key, so at any position it matches the longest key
    there. Every other key at that position is a prefix of that one, so each key's entry
    holds its own groups and those of every key that is a prefix of it."""

    def __init__(self, groups_by_key: dict[str, tuple]):
        self.keys = tuple(sorted(groups_by_key))
        self.own = dict(groups_by_key)
        # key -> its groups plus those of every shorter key it starts with
        self.groups: dict[str, tuple] = {}
        for key in self.keys:  # sorted, so a key's prefixes come before it
            inherited = next(
                (self.groups[key[:n]] for n in range(len(key) - 1, 0, -1) if key[:n] in groups_by_key), ()
            )
            self.groups[key] = inherited + groups_by_key[key]
        # Python's `re` is safe here, unlike for a tenant's `matches` (RE2, regex.py): the
        # pattern is the tenant's texts escaped, a trie whose branches start with distinct
        # characters, so a match attempt never backtracks further than one key's length.
        try:
            compiled = re.compile(_trie_pattern(self.keys))
        except (RecursionError, re.error, OverflowError):  # absurdly deep or long keys
            compiled = None
        self._match = compiled.match if compiled is not None else None
        self._search = compiled.search if compiled is not None else None

    def starting(self, text: str) -> tuple:
        """The groups of every key `text` starts with."""
        if self._match is None:
            return tuple(g for key in self.keys if text.startswith(key) for g in self.own[key])
        found = self._match(text)
        return self.groups[found.group()] if found is not None else _NO_GROUPS

    def inside(self, text: str) -> tuple:
        """The groups of every key `text` contains (a group may come more than once)."""
        if self._search is None:
            return tuple(g for key in self.keys if key in text for g in self.own[key])
        search = self._search
        found = search(text)
        if found is None:
            return _NO_GROUPS
        groups = self.groups[found.group()]
        found = search(text, found.start() + 1)
        while found is not None:
            groups += self.groups[found.group()]
            found = search(text, found.start() + 1)
        return groups


def _trie_pattern(keys: Iterable[str]) -> str:
    """A regular expression matching, at a position, the longest of `keys` found there."""
    root: dict = {}
    for key in keys:
        node = root
        for char in key:
            node = node.setdefault(char, {})
        node[""] = {}  # a key ends here ("" is never a character)

    def alternatives(node: dict) -> str:
        branches = []
        for char in sorted(c for c in node if c):
            child = node[char]
            text = re.escape(char)
            while len(child) == 1 and "" not in child:  # a chain without choices: one literal
                ((char, child),) = child.items()
                text += re.escape(char)
            branches.append(text + alternatives(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Where a key ends, the longer keys are tried first (greedy ?), then the end.
        return f"(?:{body})?" if "" in node else body

    return alternatives(root) if root else "(?!)"


class TypeIndex:
    """The triggers and history counters of one activity type of one tenant.

    What the index answers depends only on the selective attribute's value, so the
    answer for each value is worked out once, merged (campaigns in rank order, counters
    in declared order, the groups with residual checks apart) and remembered: values
    are skewed (the home page, the welcome email), and a remembered value costs one
    dictionary look-up. At most MEMO_SIZE values are remembered per type; then the memo
    starts over."""

    MEMO_SIZE = 4096

    __slots__ = ("selective", "exact", "prefixes", "contained", "unkeyed", "triggers", "counters",
                 "_counter_order", "memo", "_answers", "_no_value", "_exact_answers")

    def __init__(self, selective: str | None, exact: dict[str, tuple], prefixes: KeyTrie | None,
                 contained: KeyTrie | None, unkeyed: tuple, triggers: tuple, counters: tuple):
        self.selective = selective
        self.exact = exact  # casefolded value -> groups
        self.prefixes = prefixes
        self.contained = contained
        self.unkeyed = unkeyed  # groups every activity of the type reaches
        self.triggers = triggers  # everything filed here, in the order declared
        self.counters = counters
        self._counter_order = {counter.key: order for order, counter in enumerate(counters)}
        self.memo: dict[str, tuple] = {}  # value -> answer
        self._answers: dict[tuple, tuple] = {}  # the distinct answers, shared by values
        self._no_value = None
        self._no_value = self._answer(unkeyed)  # for a missing or non-text value
        # The answer for a value that only has exact keys (most values): one look-up.
        self._exact_answers = {value: self._answer(groups + unkeyed) for value, groups in exact.items()}

    def forget(self) -> None:
        """Drop the remembered answers (the benchmark starts every repetition cold)."""
        self.memo.clear()

    def candidates(self, attributes: dict) -> tuple:
        """The groups an activity with `attributes` reaches (their checks still to run)."""
        value = attributes.get(self.selective) if self.selective is not None else None
        return self._groups(value) if isinstance(value, str) else self.unkeyed

    def _groups(self, value: str) -> tuple:
        folded = value.casefold()
        found = self.exact.get(folded, _NO_GROUPS)
        if self.prefixes is not None:
            found += self.prefixes.starting(folded)
        if self.contained is not None:
            found += self.contained.inside(folded)
        return found + self.unkeyed if found else self.unkeyed

    def _work_out(self, value: str) -> tuple:
        """The answer for `value`, not remembered (`_answer(_groups(value))`, faster)."""
        folded = value.casefold()
        found = _NO_GROUPS
        if self.prefixes is not None:
            found = self.prefixes.starting(folded)
        if self.contained is not None:
            found += self.contained.inside(folded)
        if not found:
            return self._exact_answers.get(folded, self._no_value)
        return self._answer(self.exact.get(folded, _NO_GROUPS) + found + self.unkeyed)

    def _answer(self, groups: tuple) -> tuple:
        """(campaigns in rank order, counters in declared order, groups with a check)
        for the activities that reach `groups`; equal answers are one object."""
        if groups is self.unkeyed and self._no_value is not None:
            return self._no_value  # the value is filed under nothing: the usual case
        unique = tuple({id(group): group for group in groups}.values())
        known = self._answers.get(tuple(map(id, unique)))
        if known is not None:
            return known
        unchecked = [group for group in unique if group[0] is None]
        answer = self._merged((), (), unchecked) + (_probes([group for group in unique if group[0] is not None]),)
        return self._answers.setdefault(tuple(map(id, unique)), answer)

    def _merged(self, campaigns: tuple, counters: tuple, groups: list) -> tuple[tuple, tuple]:
        """`campaigns` and `counters` plus those of `groups`, each once, in order."""
        if any(group[1] for group in groups):
            by_name = {campaign.name: campaign for campaign in campaigns}
            for group in groups:
                for campaign in group[1]:
                    by_name[campaign.name] = campaign
            campaigns = tuple(sorted(by_name.values(), key=_by_rank))
        if any(group[2] for group in groups):
            by_key = {counter.key: counter for counter in counters}
            for group in groups:
                for counter in group[2]:
                    by_key[counter.key] = counter
            counters = tuple(by_key[key] for key in sorted(by_key, key=self._counter_order.__getitem__))
        return campaigns, counters

    def find(self, attributes: dict, now: int) -> tuple[tuple, tuple]:
        """The campaigns with a trigger that matches, in (priority, name) order, and the
        history counters that count the activity, in the order they were declared."""
        if self.selective is None:
            answer = self._no_value
        else:
            value = attributes.get(self.selective)
            if isinstance(value, str):
                answer = self.memo.get(value)
                if answer is None:
                    if len(self.memo) >= self.MEMO_SIZE:
                        self.memo.clear()
                    answer = self.memo[value] = self._work_out(value)
            else:
                answer = self._no_value
        campaigns, counters, probes = answer
        if not probes:
            return campaigns, counters
        passed = None
        for get, none_fails, tests in probes:
            value = get(attributes)
            if value is None and none_fails:
                continue
            for test, group in tests:
                if test(value, now):
                    if passed is None:
                        passed = [group]
                    else:
                        passed.append(group)
        if passed is None:
            return campaigns, counters
        return self._merged(campaigns, counters, passed)


class TenantRules:
    """One tenant's compiled campaigns, trigger index, history counters and settings."""

    def __init__(
        self,
        tenant: str,
        campaigns: dict[str, Campaign],
        index: dict[str, TypeIndex],
        counters_by_type: dict[str, tuple[HistoryCounter, ...]],
        lists: frozenset,
        lead_attributes: dict[str, str],
        communication_limits: dict[str, int],
        limits: dict[str, int] | None = None,
        decision_history: tuple[str, tuple[str, ...]] | None = None,
    ):
        self.tenant = tenant
        self.campaigns = campaigns
        self.index = index
        self.counters_by_type = counters_by_type
        self.lists = lists
        self.lead_attributes = lead_attributes
        self.communication_limits = communication_limits
        self.limits = limits or {}  # settings.limits: the tenant's budgets (orion/rules/limits.py)
        # (digest, keys) of the history counters the tenant's experiences read, whose
        # counts the graph writes in each lead's profile for decisions; None: no such counter
        self.decision_history = decision_history

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
        limits: dict[str, int] | None = None,
        decision_counters: Iterable[HistoryCounter] = (),
    ) -> "TenantRules":
        # activity type -> (trigger or counter, its campaign or None, the counter or None)
        filed: dict[str, list[tuple[Any, Campaign | None, HistoryCounter | None]]] = {}
        selective: dict[str, str | None] = {}
        for campaign in campaigns.values():
            if campaign.kind != "trigger" or not campaign.active:
                continue
            for trigger in campaign.triggers:
                # Point the trigger at the campaign as finally compiled (with its rank):
                # the compiler builds triggers before it ranks campaigns.
                trigger = trigger._replace(campaign=campaign)
                filed.setdefault(trigger.activity_type, []).append((trigger, campaign, None))
                if trigger.selective is not None or trigger.activity_type not in selective:
                    selective[trigger.activity_type] = trigger.selective
        by_type: dict[str, list[HistoryCounter]] = {}
        for counter in counters:
            by_type.setdefault(counter.activity_type, []).append(counter)
            filed.setdefault(counter.activity_type, []).append((counter, None, counter))
            if counter.selective is not None or counter.activity_type not in selective:
                selective[counter.activity_type] = counter.selective
        index = {type_: _type_index(selective[type_], entries) for type_, entries in filed.items()}
        return cls(
            tenant,
            campaigns,
            index,
            {type_: tuple(found) for type_, found in by_type.items()},
            lists,
            lead_attributes or {},
            communication_limits or {},
            limits or {},
            _decision_history(tuple(decision_counters)),
        )

    def match(self, activity: Activity) -> list[Campaign]:
        """Active trigger campaigns with a trigger that matches, in (priority, name) order."""
        bucket = self.index.get(activity.type)
        if bucket is None:
            return []
        return list(bucket.find(activity.attributes, activity.occurred_at)[0])

    def counting(self, activity: Activity) -> list[HistoryCounter]:
        """The history counters that count `activity`, in the order they were declared."""
        bucket = self.index.get(activity.type)
        if bucket is None:
            return []
        return list(bucket.find(activity.attributes, activity.occurred_at)[1])

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


def _type_index(selective: str | None, entries: list) -> TypeIndex:
    """Group one type's triggers and counters by where they are filed and by residual."""
    checks: dict[str, Callable | None] = {}  # residual key -> check, shared by all slots
    # (key kind, key) -> residual key -> (residual, {campaign name: campaign}, [counters])
    slots: dict[tuple, dict[str, tuple[tuple, dict, list]]] = {}
    for entry, campaign, counter in entries:
        residual = entry.residual if entry.residual is not None else entry.conditions
        residual_key = entry.residual_key if entry.residual_key is not None else entry.key
        keys = [(entry.key_kind, value) for value in entry.key_values] if entry.key_kind else [(None, None)]
        for slot in keys:
            group = slots.setdefault(slot, {}).get(residual_key)
            if group is None:
                group = slots[slot][residual_key] = (residual, {}, [])
            if campaign is not None:
                group[1][campaign.name] = campaign
            if counter is not None:
                group[2].append(counter)

    def groups(by_residual: dict) -> tuple:
        made = []
        for residual_key, (residual, campaigns, counters) in sorted(by_residual.items()):
            if residual_key not in checks:
                checks[residual_key] = _residual_check(residual)
            probe = None
            if len(residual) == 1 and getattr(residual[0][0], "path", None) is not None:
                probe = (residual[0][0].path, residual[0][1])
            made.append((checks[residual_key], tuple(campaigns.values()), tuple(counters), probe))
        return tuple(made)

    exact = {value: groups(g) for (kind, value), g in slots.items() if kind == EXACT}
    prefixes = {value: groups(g) for (kind, value), g in slots.items() if kind == PREFIX}
    contained = {value: groups(g) for (kind, value), g in slots.items() if kind == CONTAINS}
    return TypeIndex(
        selective,
        exact,
        KeyTrie(prefixes) if prefixes else None,
        KeyTrie(contained) if contained else None,
        groups(slots.get((None, None), {})),
        tuple(entry for entry, campaign, _ in entries if campaign is not None),
        tuple(counter for _, _, counter in entries if counter is not None),
    )


def _probes(groups: list) -> tuple:
    """The checked groups of an answer, as (getter, none_fails, ((test, group), ...)):
    groups whose residual is one condition on the same attribute share one getter, and
    are skipped together when the value is missing and their tests fail on a missing
    value (which does not depend on the time). Other groups test the whole attributes."""
    by_path: dict[str, list] = {}
    whole = []
    for group in groups:
        if group[3] is None:
            whole.append((group[0], group))
        else:
            path, test = group[3]
            by_path.setdefault(path, []).append((test, group))
    probes = []
    for path, tests in by_path.items():
        none_fails = not any(test(None, now) for test, _ in tests for now in (0, 1 << 40))
        probes.append((attribute_getter(path), none_fails, tuple(tests)))
    if whole:
        probes.append((_whole, False, tuple(whole)))
    return tuple(probes)


def _whole(attributes: dict) -> dict:
    return attributes


def _by_rank(campaign: Campaign) -> int:
    return campaign.rank


class RuleSet:
    """Every tenant's compiled rules plus the activity types each tenant may send."""

    def __init__(self, tenants: dict[str, TenantRules], activity_types: ActivityTypes):
        self.tenants = tenants
        self.activity_types = activity_types

    def forget_answers(self) -> None:
        """Drop every index's remembered answers: only for measuring a cold start."""
        for rules in self.tenants.values():
            for bucket in rules.index.values():
                bucket.forget()

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


def _decision_history(counters: tuple[HistoryCounter, ...]) -> tuple[str, tuple[str, ...]] | None:
    if not counters:
        return None
    return history_digest(counters), tuple(sorted(counter.key for counter in counters))
