"""The store commands of the `orion` command line: create a store's tables, and print a
lead's history newest first.

    orion store init sqlite:///orion-data/activities.db
    orion history --store mysql://root@127.0.0.1:3306/orion --tenant acme --lead 7 --type open_email --since 2026-11-01T00:00:00Z --limit 20

`add_store_commands(subparsers)` registers both on an argparse subparsers object (the
`orion` parser's); each sets `handler`, which takes the parsed arguments and returns the
exit code. `python -m orion.store.commands ...` runs them on their own.
"""
from __future__ import annotations

import argparse
import json
import sys

from orion.activities import format_timestamp, parse_timestamp
from orion.argtypes import printable
from orion.store.base import store_refusal
from orion.store.opening import URI_FORMS, open_existing_store, open_store

DEFAULT_STORE = "sqlite:///orion-data/activities.db"  # the same default as `orion run`


def add_store_commands(subparsers) -> None:
    """Register `store init URI` and `history` on an argparse subparsers object."""
    store = subparsers.add_parser("store", help="work with an activity store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    init = store_commands.add_parser(
        "init",
        help="create a store's tables (safe to run again)",
        description="Create the tables, column families and indexes of the store URI names (the "
        "activities, the activity index, the lead profiles, the tenant registry and the analytics roll-ups); running it "
        "again changes nothing "
        "and keeps what is stored. URI forms: " + "; ".join(URI_FORMS) + ".",
    )
    init.add_argument("uri", metavar="URI", help="the store, e.g. sqlite:///orion-data/activities.db")
    init.set_defaults(handler=init_store)

    history = subparsers.add_parser(
        "history",
        help="print a lead's activities, newest first",
        description="Print one lead's stored activities, newest first (ties by event id, "
        "descending), one per line: time (RFC 3339, UTC), type, event id, attributes (JSON), "
        "separated by tabs.",
    )
    history.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                         help="activity store URI (default: %(default)s)")
    history.add_argument("--tenant", required=True)
    history.add_argument("--lead", required=True, metavar="LEAD_ID")
    history.add_argument("--type", action="append", dest="types", metavar="TYPE",
                         help="only this activity type (repeatable)")
    history.add_argument("--since", type=_time, metavar="TIME",
                         help="only activities at or after TIME: RFC 3339 (2026-11-22T10:00:00Z) or epoch ms")
    history.add_argument("--until", type=_time, metavar="TIME",
                         help="only activities before TIME: RFC 3339 or epoch ms")
    history.add_argument("--limit", type=_limit, metavar="N", help="at most N activities")
    history.set_defaults(handler=print_history)


def _time(text: str) -> int:
    try:
        return parse_timestamp(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


MAX_LIMIT = 1_000_000_000


def _limit(text: str) -> int:
    value = positive_int(text)
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"at most {MAX_LIMIT:,}, not {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def init_store(args: argparse.Namespace) -> int:
    from orion.store.rollups_opening import open_rollup_store, rollup_store_uri

    try:
        with open_store(args.uri) as store:
            store.init()
        rollups_uri = rollup_store_uri(args.uri)
        if rollups_uri is not None:
            with open_rollup_store(rollups_uri) as rollups:  # the analytics roll-ups, beside them
                rollups.init()
    except Exception as err:  # noqa: BLE001 - a store's error, or its client's: one line (store_refusal)
        return store_refusal(err)
    print(f"initialized {store!r}")
    return 0


def history_line(activity) -> str:
    """One activity as one line of tab-separated fields: time, type, event id (tabs, line
    breaks and other control characters in it written as escapes) and the attributes as
    JSON (which escapes them itself)."""
    attributes = json.dumps(activity.attributes, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "\t".join((format_timestamp(activity.occurred_at), printable(activity.type), printable(activity.event_id),
                      attributes))


def print_history(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        print("orion: the range is empty: --until must be after --since", file=sys.stderr)
        return 2
    try:
        with open_existing_store(args.store) as store:
            activities = store.history(args.tenant, args.lead, since=args.since, until=args.until,
                                       types=args.types, limit=args.limit)
    except Exception as err:  # noqa: BLE001 - a store's error, or its client's: one line (store_refusal)
        return store_refusal(err)
    for activity in activities:
        print(history_line(activity))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description="Orion activity store commands.")
    add_store_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
