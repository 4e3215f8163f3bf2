"""Flow-step choices: `if` filters of a step's choices, compiled once per (tenant, step)
and tested against the lead as the flow reaches the step.

The compiler checks these filters at load time (and declares the history counters they
read, so the lead state already counts for them) but keeps the flow as plain data; this
module compiles the same filter forms into tests of a LeadState. The history key is the
compiler's (`json.dumps([type, where], sort_keys=True)`), so a choice reads the very
counter the compiler declared.

    python -c "from orion.campaigns.choices import choice_test; print(choice_test)"
"""
from __future__ import annotations

import json
from typing import Callable

from orion.activities import MS_PER_DAY, MS_PER_UNIT
from orion.rules.logic import parse_logic
from orion.rules.model import LeadState
from orion.rules.operators import compile_conditions

StateTest = Callable[[LeadState, int], bool]


def _lead_test(body: dict, lead_attributes: dict) -> StateTest:
    conditions = [(attr, compile_conditions(ops, lead_attributes.get(attr, "string")))
                  for attr, ops in body.items()]

    def test(state: LeadState, now: int) -> bool:
        attributes = state.attributes
        return all(pred(attributes.get(attr), now) for attr, pred in conditions)

    return test


def _history_test(body: dict) -> StateTest:
    where = body.get("where", {})
    key = json.dumps([body["activity"], where], sort_keys=True, separators=(",", ":"))
    window = body["in_past"]
    days = window["n"] * MS_PER_UNIT[window["unit"]] // MS_PER_DAY
    at_least, at_most = body.get("at_least"), body.get("at_most")
    if at_least is None and at_most is None:
        at_least = 1
    low = at_least or 0
    high = at_most if at_most is not None else float("inf")

    def test(state: LeadState, now: int) -> bool:
        per_day = state.history.get(key)
        if not per_day:
            return low == 0
        first_day = now // MS_PER_DAY - days
        return low <= sum(n for day, n in per_day.items() if day >= first_day) <= high

    return test


def compile_filter(spec: dict, lead_attributes: dict) -> StateTest:
    """One filter of the rule language (lead, score, member_of_list, not_member_of_list,
    activity_history) as a test of the lead state at time `now`."""
    (kind, body), = spec.items()
    if kind == "lead":
        return _lead_test(body, lead_attributes)
    if kind == "score":
        predicate = compile_conditions(body, "number")
        return lambda state, now: predicate(state.score, now)
    if kind == "member_of_list":
        return lambda state, now: body in state.lists
    if kind == "not_member_of_list":
        return lambda state, now: body not in state.lists
    if kind == "activity_history":
        return _history_test(body)
    raise ValueError(f"unknown filter kind {kind!r}")


def choice_test(choice: dict, lead_attributes: dict) -> StateTest:
    """A choice's `if` filters combined by its `logic` (default all)."""
    tests = [compile_filter(spec, lead_attributes) for spec in choice["if"]]
    logic = parse_logic(choice.get("logic", "all"), len(tests))

    def test(state: LeadState, now: int) -> bool:
        return logic(lambda number: tests[number - 1](state, now))

    return test
