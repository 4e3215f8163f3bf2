"""`orion analytics query`: one metric from the roll-up store, as a table, JSON or CSV;
`orion analytics serve`: the analytics HTTP API and its dashboard.

    orion analytics query --tenant acme --metric events --by type --granularity minute \\
        --from 2026-11-22T10:00:00Z --to 2026-11-22T11:00:00Z [--where source=input] [--top 5] [--format json]
    orion analytics serve --store sqlite:///orion-data/activities.db --keys orion-data/collector-keys.yaml \\
        [--rules DIR]

`add_analytics_query_commands(commands)` registers both in the `analytics` command group
(`orion.decisions.commands.analytics_commands`, which other reports join too); each sets
`handler`, which takes the parsed arguments and returns the exit code.
`python -m orion.analytics.commands ...` runs them on their own.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from orion.analytics.query import (
    METRICS, QUERY_GRANULARITIES, Query, QueryError, error_note, metric_of, parse_time, parse_where, run_query,
)
from orion.analytics.rollup import DIMENSIONS
from orion.argtypes import port
from orion.settings import DEFAULT_STORE, SAMPLE_RULES

DEFAULT_KEYS = Path("orion-data") / "collector-keys.yaml"  # the collector's keys file


def add_analytics_query_commands(commands) -> None:
    """Register `analytics query` and `analytics serve` on the `orion` subparsers."""
    from orion.decisions.commands import analytics_commands

    group = analytics_commands(commands)
    query = group.add_parser(
        "query", help="one metric of the roll-ups: a time series, or the top groups",
        description="One metric of a tenant from the roll-up store, per bucket of the granularity, grouped by "
        "dimensions. Metrics: " + ", ".join(METRICS) + ", sum:ATTRIBUTE (a numeric attribute the tenant "
        "declared). Dimensions: " + ", ".join(DIMENSIONS) + ". " + error_note() + ".")
    query.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                       help="the store the graph wrote its roll-ups to (default: %(default)s)")
    query.add_argument("--tenant", required=True)
    query.add_argument("--metric", required=True, help="what to measure (see above)")
    query.add_argument("--by", default="", metavar="DIM[,DIM]", help="group by these dimensions (default: none)")
    query.add_argument("--granularity", default="minute", choices=QUERY_GRANULARITIES,
                       help="bucket size; all: one bucket for the whole range (default: %(default)s)")
    query.add_argument("--from", dest="start", required=True, metavar="TIME",
                       help="RFC 3339, epoch ms, now or now-1h (buckets starting at or after it)")
    query.add_argument("--to", dest="end", required=True, metavar="TIME",
                       help="RFC 3339, epoch ms, now or now-1h (buckets starting before it)")
    query.add_argument("--where", action="append", default=[], metavar="DIM=VALUE",
                       help="only rows with this dimension value (repeatable)")
    query.add_argument("--top", type=int, metavar="N", help="only the N largest groups of each bucket")
    query.add_argument("--format", default="table", choices=("table", "json", "csv"),
                       help="table (default), json (a list of rows) or csv")
    query.set_defaults(handler=query_command)

    serve = group.add_parser(
        "serve", help="the analytics HTTP API and dashboard",
        description="Serve GET /v1/analytics/timeseries, GET /v1/analytics/topn and the dashboard at "
        "/dashboard, over the roll-up store, and GET /v1/analytics/experiments (the experiments report: "
        "impressions, conversions and lift over control per experience and variant) over the activity store "
        "and the experiences of --rules. Each request needs an API key of the collector's keys file "
        "(Authorization: Bearer KEY, X-Orion-Key or ?key=); it reads its key's tenant only.")
    serve.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                       help="the activity store, whose roll-ups the graph wrote beside it (default: %(default)s)")
    serve.add_argument("--rules", type=Path, default=SAMPLE_RULES, metavar="DIR",
                       help="rules directory with the experiences and their goals, read at start "
                       "(default: the shipped samples)")
    serve.add_argument("--keys", type=Path, default=DEFAULT_KEYS, metavar="FILE",
                       help="the API keys file, hashes only (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port, default=8090, help="port to listen on (default: %(default)s)")
    serve.set_defaults(handler=serve_command)


def query_from_args(args: argparse.Namespace) -> Query:
    by = tuple(name.strip() for name in args.by.split(",") if name.strip())
    return Query(args.tenant, args.metric, by, args.granularity, parse_time(args.start), parse_time(args.end),
                 parse_where(args.where), args.top)


def query_command(args: argparse.Namespace) -> int:
    from orion.store.base import StoreError
    from orion.store.rollups_opening import open_rollup_store

    from orion.store.opening import refuse_missing_sqlite

    try:
        query = query_from_args(args)
        refuse_missing_sqlite(args.store)  # a mistyped SQLite path is said, not made
        with open_rollup_store(args.store) as store:
            rows = run_query(store, query)
    except QueryError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    print(render(rows, query, args.format), end="")
    return 0


def columns_of(query: Query) -> list[str]:
    columns = [] if query.granularity == "all" else ["time"]
    columns += list(query.by) + [query.metric]
    if metric_of(query.metric).estimated:
        columns += [f"{query.metric}_low", f"{query.metric}_high"]
    return columns


def render(rows: list[dict], query: Query, form: str) -> str:
    if form == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    columns = columns_of(query)
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(name, "") for name in columns])
        return out.getvalue()
    cells = [columns] + [[_cell(row.get(name, "")) for name in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = {i for i, name in enumerate(columns) if name.startswith(query.metric)}
    lines = ["  ".join(text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])
                       for i, text in enumerate(line)).rstrip() for line in cells]
    if not rows:
        lines.append("(no rows)")
    if metric_of(query.metric).estimated:
        lines.append(f"({error_note()})")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "-" if value == "" else str(value)  # "-": a dimension that does not apply


def serve_command(args: argparse.Namespace) -> int:
    from orion.analytics.app import serve

    return serve(args.store, args.keys, args.host, args.port, rules_dir=args.rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description="Orion analytics commands.")
    add_analytics_query_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
