"""The options of `orion run --runner dataflow`, kept apart from orion.runners.dataflow so
that building the command line does not import Beam."""
from __future__ import annotations

import argparse
import sys


def add_dataflow_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `orion run --runner dataflow` takes (docs: orion/runners/dataflow.py)."""
    group = parser.add_argument_group("Dataflow (--runner dataflow)")
    group.add_argument("--project", help="the Google Cloud project")
    group.add_argument("--region", help="the Dataflow region, e.g. europe-west1")
    group.add_argument("--temp-location", metavar="gs://BUCKET/PATH", help="staging and temporary files")
    group.add_argument("--job-name", help="default: orion-activity-graph when streaming, "
                       "orion-files-<UTC time> over files")
    group.add_argument("--update", action="store_true",
                       help="replace the running streaming job of the same name, keeping its state")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved pipeline options and submit nothing")


def run_from_args(config, args: argparse.Namespace) -> int:
    """`orion run --runner dataflow`: check, print and (unless --dry-run) submit."""
    from orion.runners.dataflow import DataflowConfigError, DataflowSettings, run_dataflow

    missing = [flag for flag, value in (("--project", args.project), ("--region", args.region),
                                        ("--temp-location", args.temp_location)) if not value]
    if missing:
        print(f"orion: --runner dataflow needs {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = DataflowSettings(project=args.project, region=args.region, temp_location=args.temp_location,
                                job_name=args.job_name, update=args.update)
    try:
        run_dataflow(config, settings, dry_run=args.dry_run)
    except DataflowConfigError as error:
        print(f"orion: {error}", file=sys.stderr)
        return 2
    return 0
