"""`orion tenants ...`: the tenant registry on the command line.

    orion tenants list --store bigtable://my-project/my-instance/activities
    orion tenants set acme --stage passive --store bigtable://my-project/my-instance/activities
    orion tenants report acme --store bigtable://my-project/my-instance/activities --report-dir orion-data

`--store` is the store that holds the registry: the new store, the one `orion run --mode
tenants --store URI` names (`orion store init URI` creates the registry). A job running
with --mode tenants applies a stage set here within its registry refresh (default 10 s),
without a restart. `add_tenants_commands(subparsers)` registers them on the `orion`
parser; `python -m orion.tenants.commands ...` runs them on their own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orion.activities import format_timestamp
from orion.settings import DEFAULT_DATA_DIR, DEFAULT_STORE
from orion.store.base import store_refusal
from orion.store.opening import open_existing_store, open_store
from orion.tenants.registry import STAGES, set_stage
from orion.tenants.report import DEFAULT_EXAMPLES, render_report, tenant_report


def _shown(uri: str) -> str:
    from orion.store.mysql import redact

    return redact(uri)


def add_tenants_commands(subparsers) -> None:
    """Register `tenants list | set | report` on an argparse subparsers object."""
    tenants = subparsers.add_parser(
        "tenants", help="the tenant registry: each tenant's rollout stage (docs/migration.md)",
        description="Each tenant's rollout stage from the legacy MySQL store to the new one: legacy "
        "(MySQL only), passive (both written, MySQL's answers used, differences reported), active "
        "(both written, the new store's answers used), deactivated (back to MySQL alone). A job run "
        "with --mode tenants applies each tenant's stage live.")
    commands = tenants.add_subparsers(dest="tenants_command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="every tenant in the registry, its stage and since when")
    listing.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                         help="the store holding the registry (default: %(default)s)")
    listing.set_defaults(handler=list_tenants)

    setting = commands.add_parser(
        "set", help="set a tenant's stage",
        description="Set a tenant's rollout stage. Running jobs (--mode tenants) apply it within their "
        "registry refresh; activities they still buffer for the tenant are written under the new stage.")
    setting.add_argument("tenant", metavar="TENANT")
    setting.add_argument("--stage", required=True, choices=STAGES)
    setting.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                         help="the store holding the registry (default: %(default)s)")
    setting.set_defaults(handler=set_tenant)

    report = commands.add_parser(
        "report", help="a tenant's stage, activities by stage, reads compared and differences",
        description="A tenant's stage, the activities the job wrote under each stage, the reads it "
        "compared between the two stores, the differences by kind and the first of them, from the "
        "files the job writes into its --out-dir (tenant-metrics-*.prom, differences-*.jsonl).")
    report.add_argument("tenant", metavar="TENANT")
    report.add_argument("--store", default=DEFAULT_STORE, metavar="URI",
                        help="the store holding the registry (default: %(default)s)")
    report.add_argument("--report-dir", default=str(DEFAULT_DATA_DIR), metavar="DIR",
                        help="the job's --out-dir (default: %(default)s)")
    report.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, metavar="N",
                        help="differences shown (default: %(default)s)")
    report.add_argument("--json", action="store_true", help="print the report as one JSON object")
    report.set_defaults(handler=report_tenant)


def list_tenants(args: argparse.Namespace) -> int:
    try:
        with open_existing_store(args.store) as store:
            rows = store.read_tenant_stages()
    except Exception as err:  # noqa: BLE001 - a store's error, or its client's: one line (store_refusal)
        return store_refusal(err)
    if not rows:
        print(f"no tenant in the registry of {_shown(args.store)}: every tenant is legacy")
        return 0
    width = max(len("tenant"), *(len(row.tenant) for row in rows))
    print(f"{'tenant':<{width}}  {'stage':<11}  {'since':<24}  before")
    for row in rows:
        print(f"{row.tenant:<{width}}  {row.stage:<11}  {format_timestamp(row.changed_at):<24}  "
              f"{row.previous_stage or '-'}")
    return 0


def set_tenant(args: argparse.Namespace) -> int:
    try:
        with open_existing_store(args.store) as store:
            row, changed = set_stage(store, args.tenant, args.stage)
    except ValueError as err:
        print(f"orion: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a store's error, or its client's: one line (store_refusal)
        return store_refusal(err)
    since = format_timestamp(row.changed_at)
    if changed:
        print(f"{row.tenant}: {row.previous_stage} -> {row.stage} at {since}; jobs running with --mode tenants "
              "apply it within their registry refresh")
    else:
        print(f"{row.tenant}: already {row.stage} since {since}")
    return 0


def report_tenant(args: argparse.Namespace) -> int:
    from orion.tenants.metrics import metrics_files
    from orion.tenants.report import difference_files

    # A report from a folder the job never wrote to would read "differences: 0".
    folder = Path(args.report_dir)
    if not folder.is_dir():
        print(f"orion: --report-dir {folder} is not a folder; give the running job's --out-dir", file=sys.stderr)
        return 2
    if not metrics_files(folder) and not difference_files(folder):
        print(f"orion: {folder} holds no tenant-metrics-*.prom and no differences-*.jsonl: no job with --mode "
              "tenants (or passive, active) has written there; give the running job's --out-dir", file=sys.stderr)
        return 2
    try:
        with open_existing_store(args.store) as store:
            rows = {row.tenant: row for row in store.read_tenant_stages()}
    except Exception as err:  # noqa: BLE001 - a store's error, or its client's: one line (store_refusal)
        return store_refusal(err)
    report = tenant_report(args.tenant, rows.get(args.tenant), args.report_dir, max(args.examples, 0))
    print(json.dumps(report, ensure_ascii=False, sort_keys=True) if args.json else render_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orion", description="Orion tenant registry commands.")
    add_tenants_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
