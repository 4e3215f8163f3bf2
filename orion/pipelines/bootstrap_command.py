"""The `orion bootstrap` command: its arguments, and the handler that plans the copy of
the legacy MySQL activities, runs the bootstrap pipeline (orion/pipelines/bootstrap.py)
and reports the verification. The plain-Python core is orion/migration.py.

    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities --splits 32
    orion bootstrap --from mysql://root@127.0.0.1:3306/legacy --to bigtable://my-project/my-instance/activities --tenant acme
    python -m orion.pipelines.bootstrap_command bootstrap --from ... --to ... --verify-only
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from orion.migration import (
    DEFAULT_SPLITS,
    EXIT_ERROR,
    EXIT_MISMATCH,
    EXIT_OK,
    PROGRESS_EVERY_SECONDS,
    plan_bootstrap,
)
from orion.store.base import StoreError
from orion.store.commands import positive_int


def add_bootstrap_command(subparsers) -> None:
    """Register `bootstrap` on an argparse subparsers object (the `orion` parser's)."""
    parser = subparsers.add_parser(
        "bootstrap",
        help="copy the legacy MySQL activities and lead profiles into Bigtable, then verify the copy",
        description="Copy every row of the legacy activities table into a Bigtable store with a "
        "Beam batch pipeline (id-range splits read in parallel), index what was written, and "
        "verify: per lead range, counts and checksums of both sides. Then copy the lead "
        "profiles (lead_profiles) the target lacks or holds otherwise, and verify them. Safe to rerun after a "
        "crash. Exit 0 when the verification passes, 1 when it finds a difference, 2 on "
        "errors. Options not listed here go to Beam (for example --runner).",
    )
    parser.add_argument("--from", dest="source", required=True, metavar="mysql://USER:PASSWORD@HOST:PORT/DB",
                        help="the legacy store (a password can also come from MYSQL_PWD)")
    parser.add_argument("--to", dest="target", required=True, metavar="URI",
                        help="the new store: bigtable://PROJECT/INSTANCE/TABLE (the emulator through "
                        "BIGTABLE_EMULATOR_HOST) or hbase://HOST:PORT/TABLE (HBase's Thrift 2 server)")
    parser.add_argument("--splits", type=positive_int, default=DEFAULT_SPLITS, metavar="N",
                        help="id ranges read in parallel (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=min(os.cpu_count() or 1, 4), metavar="N",
                        help="local worker processes on the DirectRunner (default: %(default)s)")
    parser.add_argument("--dead-letters", default="orion-data/bootstrap-dead-letters", metavar="PREFIX",
                        help="dead letters go to PREFIX-*.jsonl (default: %(default)s)")
    parser.add_argument("--tenant", metavar="TENANT",
                        help="copy and verify this tenant's activities alone (the per-tenant rollout: "
                        "docs/migration.md); the other tenants' rows are left alone")
    parser.add_argument("--verify-only", action="store_true",
                        help="only compare the legacy table with the target; write nothing")
    parser.add_argument("--progress-every", type=float, default=PROGRESS_EVERY_SECONDS, metavar="SECONDS",
                        help="seconds between progress lines on stderr (default: %(default)s)")
    parser.set_defaults(handler=bootstrap_command, beam_args_allowed=True)


def bootstrap_command(args: argparse.Namespace) -> int:
    from orion.pipelines.bootstrap import BootstrapSettings, run_bootstrap
    from orion.store.mysql import redact

    try:
        plan = plan_bootstrap(args.source, args.target, args.splits, args.tenant)
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return EXIT_ERROR
    what = "verifying" if args.verify_only else "bootstrapping"
    print(f"{what} {redact(plan.source_uri)} -> {plan.target_uri}: {plan.legacy_rows:,} legacy rows, "
          f"ids {plan.min_id}..{plan.max_id} in {len(plan.splits)} splits, "
          + (f"tenant {plan.tenant!r} alone" if plan.tenant is not None else f"{len(plan.tenants)} tenants"),
          file=sys.stderr, flush=True)
    settings = BootstrapSettings(
        dead_letter_prefix=args.dead_letters,
        copy=not args.verify_only,
        workers=args.workers,
        progress_every=args.progress_every,
        beam_args=tuple(getattr(args, "beam_args", ()) or ()),
    )
    started = time.monotonic()
    try:
        verification, totals = run_bootstrap(plan, settings)
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return EXIT_ERROR
    seconds = time.monotonic() - started
    if not args.verify_only:
        rate = totals.get("stored", 0) / seconds if seconds > 0 else 0.0
        print(f"written: {totals.get('stored', 0):,} activities, {totals.get('indexed', 0):,} index entries "
              f"in {seconds:.1f} s ({rate:,.0f} rows/s)")
    print(verification.render())
    # The lead profiles: each lead's state (unsubscribes, campaign runs, recent sends),
    # which the activities alone do not give back.
    try:
        profiles = _copy_profiles(plan, args)
    except StoreError as err:
        print(f"orion: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(profiles.render())
    return EXIT_OK if verification.ok and profiles.ok else EXIT_MISMATCH


def _copy_profiles(plan, args):
    from orion.migration import copy_profiles
    from orion.store import open_store

    said = [time.monotonic()]

    def progress(line: str) -> None:
        if time.monotonic() - said[0] >= args.progress_every:
            said[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    with open_store(plan.target_uri) as target:
        return copy_profiles(plan.source_uri, target, plan.tenant, copy=not args.verify_only, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description="Orion migration commands.")
    add_bootstrap_command(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args, unknown = parser.parse_known_args(argv)
    args.beam_args = unknown
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
