"""Qualification rules: once, every_time and once_every {n, unit} for every unit,
measured from the lead's last qualified run; a month is exactly 30 days.

    .venv/bin/python -m pytest tests/test_qualification.py -q
"""
from __future__ import annotations

import pytest

from orion.activities import _MAX_MS, _MIN_MS, format_timestamp
from orion.rules import evaluate
from orion.rules.evaluator import _timestamp_text

from conftest import DAY, HOUR, MINUTE, MONTH, T0, WEEK, make_activity, run

CAMPAIGN = """
tenant: acme
settings:
  lists: [vip]
campaigns:
  - name: Opened
    triggers:
      - activity: open_email
{qualification}
"""


def rules_with(load, qualification: str | None):
    line = f"    qualification: {qualification}" if qualification is not None else ""
    return load(CAMPAIGN.format(qualification=line))


def opens(*offsets: int):
    return [make_activity("open_email", email="news", at=T0 + offset) for offset in offsets]


def qualified_flags(rules, *offsets: int) -> list[bool]:
    _, outcomes = run(rules, opens(*offsets))
    assert len(outcomes) == len(offsets), "every open matches the trigger"
    return [o.qualified for o in outcomes]


def test_once_qualifies_the_first_time_only(load):
    rules = rules_with(load, "once")
    state, outcomes = run(rules, opens(0, DAY, 400 * DAY))
    assert [o.qualified for o in outcomes] == [True, False, False]
    assert outcomes[1].reason == "qualification"
    assert "once" in outcomes[1].detail and format_timestamp(T0) in outcomes[1].detail
    assert state.campaigns["Opened"] == (1, T0)


def test_qualification_defaults_to_once(load):
    assert qualified_flags(rules_with(load, None), 0, 5 * MONTH) == [True, False]


def test_every_time_qualifies_each_time_and_counts_runs(load):
    rules = rules_with(load, "every_time")
    state, outcomes = run(rules, opens(0, 1, 2))
    assert [o.qualified for o in outcomes] == [True, True, True]
    assert state.campaigns["Opened"] == (3, T0 + 2)


UNITS = [("minutes", MINUTE), ("hours", HOUR), ("days", DAY), ("weeks", WEEK), ("months", MONTH)]


@pytest.mark.parametrize("unit, span", UNITS, ids=[u for u, _ in UNITS])
def test_once_every_qualifies_again_exactly_n_units_after_the_last_run(load, unit, span):
    rules = rules_with(load, f"{{once_every: {{n: 2, unit: {unit}}}}}")
    _, outcomes = run(rules, opens(0, 2 * span - 1, 2 * span))
    assert [o.qualified for o in outcomes] == [True, False, True]
    blocked = outcomes[1]
    assert blocked.reason == "qualification"
    assert f"once every 2 {unit}" in blocked.detail
    assert format_timestamp(T0 + 2 * span) in blocked.detail  # when it may run again


@pytest.mark.parametrize("unit, span", UNITS, ids=[u for u, _ in UNITS])
def test_once_every_one_unit(load, unit, span):
    rules = rules_with(load, f"{{once_every: {{n: 1, unit: {unit}}}}}")
    assert qualified_flags(rules, 0, span - 1, span, 2 * span - 1, 2 * span) == [
        True, False, True, False, True
    ]


def test_a_month_is_exactly_thirty_days(load):
    rules = rules_with(load, "{once_every: {n: 1, unit: months}}")
    almost = 29 * DAY + 23 * HOUR + 59 * MINUTE
    assert qualified_flags(rules, 0, almost) == [True, False]
    assert qualified_flags(rules, 0, 30 * DAY) == [True, True]
    assert MONTH == 30 * DAY


def test_a_month_does_not_follow_the_calendar(load):
    # From 1 February, 28 calendar days reach 1 March, but a month is 30 days.
    rules = rules_with(load, "{once_every: {n: 1, unit: months}}")
    feb_1 = make_activity("open_email", email="n", at="2027-02-01T09:00:00Z")
    mar_1 = make_activity("open_email", email="n", at="2027-03-01T09:00:00Z")
    mar_3 = make_activity("open_email", email="n", at="2027-03-03T09:00:00Z")
    _, outcomes = run(rules, [feb_1, mar_1, mar_3])
    assert [o.qualified for o in outcomes] == [True, False, True]


def test_a_blocked_attempt_does_not_restart_the_interval(load):
    rules = rules_with(load, "{once_every: {n: 1, unit: months}}")
    assert qualified_flags(rules, 0, 20 * DAY, 30 * DAY, 45 * DAY, 60 * DAY) == [
        True, False, True, False, True
    ]


def test_failing_filters_do_not_use_up_a_once_qualification(load):
    rules = load("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: VIP opened
            qualification: once
            triggers: [{activity: open_email}]
            filters:
              - member_of_list: vip
    """)
    state, outcomes = run(rules, [
        make_activity("open_email", email="n", at=T0),
        make_activity("added_to_list", list="vip", at=T0 + 1),
        make_activity("open_email", email="n", at=T0 + 2),
        make_activity("open_email", email="n", at=T0 + 3),
    ])
    assert [(o.qualified, o.reason) for o in outcomes] == [
        (False, "filters"), (True, None), (False, "qualification")
    ]
    assert state.campaigns["VIP opened"] == (1, T0 + 2)


def test_qualification_is_checked_before_filters(load):
    rules = load("""
        tenant: acme
        settings:
          lists: [vip]
        campaigns:
          - name: VIP opened
            triggers: [{activity: open_email}]
            filters:
              - member_of_list: vip
    """)
    _, outcomes = run(rules, [
        make_activity("added_to_list", list="vip", at=T0),
        make_activity("open_email", email="n", at=T0 + 1),
        make_activity("removed_from_list", list="vip", at=T0 + 2),
        make_activity("open_email", email="n", at=T0 + 3),
    ])
    assert [(o.qualified, o.reason) for o in outcomes] == [(True, None), (False, "qualification")]


def test_qualification_state_carries_across_single_evaluations(load):
    rules = rules_with(load, "{once_every: {n: 1, unit: days}}")
    state = None
    results = []
    for activity in opens(0, HOUR, DAY):
        state, outcomes = evaluate(rules, state, activity)
        results.extend(o.qualified for o in outcomes)
    assert results == [True, False, True]



@pytest.mark.parametrize("ms", [
    _MIN_MS, _MAX_MS, 0, -1, 1, DAY - 1, DAY, -DAY, -DAY - 1, T0, T0 + 999, 32_503_680_000_000,  # year 3000
    -49_572_686_076_196,  # year 399: strftime writes no leading zero
])
def test_qualification_messages_write_times_exactly_as_format_timestamp(ms):
    assert _timestamp_text(ms) == format_timestamp(ms)


def test_qualification_message_times_across_many_moments():
    step = (_MAX_MS - _MIN_MS) // 20_011
    for ms in range(_MIN_MS, _MAX_MS, step):
        assert _timestamp_text(ms) == format_timestamp(ms)
        later = min(ms + 86_399_999, _MAX_MS)
        assert _timestamp_text(later) == format_timestamp(later)
