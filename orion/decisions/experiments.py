"""The experiments report: for each experience of a tenant, per arm (variant or
control), the leads exposed, the impressions and the conversions, the conversion rate
and each variant's lift over the control group with a 95% confidence interval.

Read from the activity store, where every decision is stored as an
`experience_impression` activity (through the intake and the graph, like any other).
A lead belongs to the arm of its first impression of the experience (assignment is
sticky, so that is its only arm unless the weights changed). A lead converts when the
experience's goal activity (its `goal:`, or `--goal TYPE` for every experience) occurs
within the goal's window after that first impression, the impression's own moment
included; a lead counts once however often it converts.

Lift is the variant's rate over the control's, less one. Its interval is Katz's: the
logarithm of the ratio of two proportions is about normal, with variance
1/x1 - 1/n1 + 1/x2 - 1/n2; it needs a conversion in both arms, and says "n/a" without.
The difference of the rates comes with Wald's interval beside it. Both are approximations
for large samples: with a handful of leads per arm they are wide, and they should be.

    orion analytics experiments --tenant acme --store sqlite:///orion-data/activities.db
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Iterator

from orion.activities import MS_PER_DAY, Activity, format_timestamp
from orion.rules.model import CONTROL, EXPERIENCE_IMPRESSION, TenantExperiences

Z_95 = 1.959963984540054
DEFAULT_GOAL_DAYS = 7


class ReportError(ValueError):
    """A report that cannot be made; the message says why and what to do."""


def tenant_activities(store, tenant: str, types: Iterable[str]) -> Iterator[Activity]:
    """Every stored activity of `tenant` with one of `types`, in no particular order. The
    store interface reads one lead at a time; a report reads a whole tenant, so each
    backend is asked in its own terms: SQL on the SQLite and MySQL activity tables, a
    scan of the tenant's key range on Bigtable and HBase that the store filters by type
    (only those rows cross the network), the serving store of a migrating one.
    What the SQL drivers raise (a missing table, a locked or corrupt file, a lost
    connection) becomes a StoreError that names the store and says what failed."""
    types = sorted(set(types))
    kind = type(store).__name__
    if not types:
        return
    if kind == "MigratingStore":
        yield from tenant_activities(store.serving, tenant, types)
    elif kind == "SqliteStore":
        yield from _sql_activities(store, "SQLite", tenant, types, _sqlite_rows)
    elif kind == "MysqlStore":
        yield from _sql_activities(store, "MySQL", tenant, types, _mysql_rows)
    elif kind in ("BigtableStore", "HBaseStore"):  # the same row keys, the same scan
        from orion.store.bigtable import SEPARATOR, encode_id

        prefix = encode_id(tenant) + SEPARATOR
        end = prefix[:-1] + chr(ord(SEPARATOR) + 1)
        # the tenant's key range, of which the store sends only the rows of these types
        yield from store.scan(prefix.encode("ascii"), end.encode("ascii"), types=types)
    else:
        raise ReportError(f"the experiments report cannot read a whole tenant from a {kind}; use a sqlite://, "
                          "mysql://, bigtable:// or hbase:// store")


def _sql_activities(store, product: str, tenant: str, types: list[str], rows) -> Iterator[Activity]:
    """The activities `rows(store, tenant, types)` yields, with what the driver raises,
    on the query or midway through the rows, as a StoreError naming the store."""
    from orion.collector.redaction import redact
    from orion.store.base import StoreError

    try:
        yield from rows(store, tenant, types)
    except StoreError:
        raise
    except _driver_errors() as err:
        where = redact(str(getattr(store, "uri", type(store).__name__)))
        said = redact(str(err))
        hint = f"; create its tables with: orion store init {where}" if "no such table" in said or \
            "doesn't exist" in said else ""
        raise StoreError(f"the experiments report could not read tenant {tenant!r}'s activities from the "
                         f"{product} store {where}: {type(err).__name__}: {said[:300]}{hint}") from err


def _driver_errors() -> tuple[type[BaseException], ...]:
    """What the SQL drivers raise when the store fails (sqlite3's and pymysql's errors,
    and the OS's)."""
    import sqlite3

    found: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import pymysql

        found.append(pymysql.err.Error)
    except ImportError:
        pass
    return tuple(found)


def _sqlite_rows(store, tenant: str, types: list[str]) -> Iterator[Activity]:
    marks = ", ".join("?" * len(types))
    cursor = store.connection.execute(
        f"SELECT event_id, lead_id, type, occurred_at, attributes FROM activities WHERE tenant = ? "
        f"AND type IN ({marks})", [tenant, *types])
    for event_id, lead_id, type_, occurred_at, attributes in cursor:
        yield Activity(event_id, tenant, lead_id, type_, occurred_at, json.loads(attributes))


def _mysql_rows(store, tenant: str, types: list[str]) -> Iterator[Activity]:
    marks = ", ".join(["%s"] * len(types))
    with store.connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id, lead_id, type, occurred_at, attributes FROM activities "
                       f"WHERE tenant = %s AND type IN ({marks})", [tenant, *types])
        rows = cursor.fetchall()
    for event_id, lead_id, type_, occurred_at, attributes in rows:
        yield Activity(_text(event_id), tenant, _text(lead_id), _text(type_), int(occurred_at), json.loads(attributes))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


def experiment_report(store, experiences: TenantExperiences, *, only: Iterable[str] = (),
                      goal_type: str | None = None, days: int | None = None, since: int | None = None,
                      until: int | None = None) -> dict:
    """The report as a JSON-ready dict: {tenant, since, until, experiences: [{name,
    placement, goal, arms: [{arm, control, leads, impressions, conversions, rate,
    lift...}]}]}.

    `since`, `until` (epoch ms; None: open): the period's cohort, the leads whose first
    impression of the experience (over the whole history) falls in [since, until), and
    the impressions made in it. A cohort's conversions count within the goal's window
    after the first impression, even past `until`."""
    if since is not None and until is not None and since >= until:
        raise ReportError(f"the period is empty: --since {format_timestamp(since)} is not before "
                          f"--until {format_timestamp(until)}")
    wanted = list(only) or sorted(experiences.by_name)
    unknown = [name for name in wanted if name not in experiences.by_name]
    if unknown:
        raise ReportError(f"tenant {experiences.tenant!r} has no experience {unknown[0]!r} (it has: "
                          f"{', '.join(sorted(experiences.by_name)) or 'none'})")
    goals = {}
    for name in wanted:
        experience = experiences.by_name[name]
        if goal_type is not None:
            window = (days or DEFAULT_GOAL_DAYS) * MS_PER_DAY
            goals[name] = (goal_type, lambda type_, attributes, at, goal_type=goal_type: type_ == goal_type,
                           window, f"{goal_type} within {days or DEFAULT_GOAL_DAYS} days")
        elif experience.goal is not None:
            goal = experience.goal
            window = days * MS_PER_DAY if days else goal.within_ms
            description = goal.description if not days else f"{goal.description.rsplit(' within ', 1)[0]} " \
                                                              f"within {days} days"
            goals[name] = (goal.activity_type, goal.met_by, window, description)
    # first impression per (experience, lead): (time, arm); impressions per (experience, arm)
    first: dict[tuple[str, str], tuple[int, str]] = {}
    impressions: dict[tuple[str, str], int] = {}
    goal_types = {found[0] for found in goals.values()}
    goal_activities: dict[str, list[Activity]] = {}
    names = set(wanted)
    for activity in tenant_activities(store, experiences.tenant, {EXPERIENCE_IMPRESSION} | goal_types):
        if activity.type in goal_types:
            goal_activities.setdefault(activity.lead_id, []).append(activity)
        if activity.type != EXPERIENCE_IMPRESSION:
            continue
        name, arm = activity.attributes.get("experience"), activity.attributes.get("variant")
        if name not in names or not isinstance(arm, str):
            continue
        if _in_period(activity.occurred_at, since, until):
            impressions[(name, arm)] = impressions.get((name, arm), 0) + 1
        key = (name, activity.lead_id)
        seen = first.get(key)
        if seen is None or (activity.occurred_at, arm) < seen:
            first[key] = (activity.occurred_at, arm)
    if since is not None or until is not None:
        first = {key: found for key, found in first.items() if _in_period(found[0], since, until)}
    report = []
    for name in wanted:
        experience = experiences.by_name[name]
        goal = goals.get(name)
        arms: dict[str, dict] = {}
        for arm in experience.arms:
            arms[arm.name] = {"arm": arm.name, "control": arm.control, "leads": 0, "impressions": 0,
                              "conversions": 0}
        for (experience_name, arm), count in impressions.items():
            if experience_name == name:
                arms.setdefault(arm, {"arm": arm, "control": arm == CONTROL, "leads": 0, "impressions": 0,
                                      "conversions": 0})["impressions"] = count
        for (experience_name, lead_id), (at, arm) in first.items():
            if experience_name != name:
                continue
            row = arms[arm]
            row["leads"] += 1
            if goal is not None and _converted(goal_activities.get(lead_id, ()), goal, at):
                row["conversions"] += 1
        rows = list(arms.values())
        for row in rows:
            row["rate"] = row["conversions"] / row["leads"] if row["leads"] and goal is not None else None
        control = arms.get(CONTROL) if experience.control is not None else None
        for row in rows:
            if not row["control"]:
                row.update(_lift(row, control) if goal is not None else _NO_LIFT)
        starts = [at for (experience_name, _), (at, _) in first.items() if experience_name == name]
        report.append({"experience": name, "placement": experience.placement,
                       "goal": goal[3] if goal is not None else None,
                       "first_impression": format_timestamp(min(starts)) if starts else None,
                       "arms": rows})
    return {"tenant": experiences.tenant, "since": None if since is None else format_timestamp(since),
            "until": None if until is None else format_timestamp(until), "experiences": report}


def _in_period(at: int, since: int | None, until: int | None) -> bool:
    return (since is None or at >= since) and (until is None or at < until)


def _converted(activities, goal, first_at: int) -> bool:
    goal_type, met_by, window, _ = goal
    for activity in activities:
        if first_at <= activity.occurred_at <= first_at + window and \
                met_by(activity.type, activity.attributes, activity.occurred_at):
            return True
    return False


_NO_LIFT = {"lift": None, "lift_low": None, "lift_high": None, "difference": None, "difference_low": None,
            "difference_high": None}


def _lift(row: dict, control: dict | None) -> dict:
    """Lift over control (ratio of rates less one) with Katz's 95% interval, and the
    difference of rates with Wald's."""
    if control is None or not control["leads"] or not row["leads"]:
        return dict(_NO_LIFT)
    x1, n1, x2, n2 = row["conversions"], row["leads"], control["conversions"], control["leads"]
    p1, p2 = x1 / n1, x2 / n2
    spread = Z_95 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    found = {"difference": p1 - p2, "difference_low": p1 - p2 - spread, "difference_high": p1 - p2 + spread,
             "lift": None, "lift_low": None, "lift_high": None}
    if x1 > 0 and x2 > 0:
        ratio = p1 / p2
        error = math.sqrt(max(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2, 0.0))
        found.update(lift=ratio - 1, lift_low=math.exp(math.log(ratio) - Z_95 * error) - 1,
                     lift_high=math.exp(math.log(ratio) + Z_95 * error) - 1)
    return found


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def render_report(report: dict) -> str:
    """The report as text tables, one per experience."""
    lines = [f"tenant {report['tenant']}"]
    if report.get("since") or report.get("until"):
        lines[0] += (f"; leads first exposed from {report.get('since') or 'the start'} "
                     f"until {report.get('until') or 'the end'}")
    for found in report["experiences"]:
        lines += ["", f"{found['experience']} (placement {found['placement']}); goal: "
                      f"{found['goal'] or 'none (impressions only)'}; first impression: "
                      f"{found['first_impression'] or 'none yet'}",
                  f"{'arm':<20} {'leads':>8} {'impr.':>8} {'conv.':>7} {'rate':>7} {'lift':>8} "
                  f"{'95% interval':>20} {'difference (95%)':>28}"]
        for row in found["arms"]:
            interval = "" if row.get("lift_low") is None else \
                f"{_percent(row['lift_low'], True)} .. {_percent(row['lift_high'], True)}"
            difference = "" if row.get("difference") is None else \
                (f"{_percent(row['difference'], True)} ({_percent(row['difference_low'], True)} .. "
                 f"{_percent(row['difference_high'], True)})")
            lift = "control" if row["control"] else _percent(row.get("lift"), True)
            lines.append(f"{row['arm'][:20]:<20} {row['leads']:>8,} {row['impressions']:>8,} "
                         f"{row['conversions']:>7,} {_percent(row['rate']):>7} {lift:>8} {interval:>20} "
                         f"{difference:>28}")
    return "\n".join(lines)
