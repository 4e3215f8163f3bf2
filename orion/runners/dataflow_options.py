"""The options of `orion run --runner dataflow`, kept apart from orion.runners.dataflow so
that building the command line does not import Beam.

Dataflow's settings are Beam's own flags (--project, --region, --temp_location,
--job_name, --update, --max_num_workers, ...): `orion run` passes every option it does
not know to Beam unchanged, so they are not declared here. Orion adds only --dry-run.

    orion run --runner dataflow --project P --region europe-west1 --temp_location gs://B/tmp \\
        --events 'gs://B/in/*.jsonl' --store bigtable://my-project/my-instance/activities --outbox none --out-dir gs://B/out --dry-run
"""
from __future__ import annotations

import argparse
import sys


def add_dataflow_arguments(parser: argparse.ArgumentParser) -> None:
    """The option `orion run --runner dataflow` adds to Beam's (docs: orion/runners/dataflow.py)."""
    group = parser.add_argument_group(
        "Dataflow (--runner dataflow)",
        "Give Beam's own flags, passed to it unchanged: --project P --region R "
        "--temp_location gs://BUCKET/PATH, and as needed --job_name NAME (default: "
        "orion-activity-graph when streaming, orion-files-<UTC time> over files), --update "
        "(replace the running streaming job of that name, keeping its state), "
        "--max_num_workers N ...; --out-dir must be gs://BUCKET/PATH.")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved pipeline options and submit nothing")


def run_from_args(config, args: argparse.Namespace) -> int:
    """`orion run --runner dataflow`: check, print and (unless --dry-run) submit."""
    from orion.runners.dataflow import DataflowConfigError, run_dataflow

    try:
        run_dataflow(config, dry_run=args.dry_run)
    except DataflowConfigError as error:
        print(f"orion: {error}", file=sys.stderr)
        return 2
    return 0
