"""Submitting the activity graph (the same Beam graph as `orion run`) to Google Cloud
Dataflow: Beam's own flags as the user gave them, Orion's defaults only where they are
unset, everything checked before anything is sent, and a dry run that prints the
resolved options without submitting.

    orion run --runner dataflow --project P --region europe-west1 --temp_location gs://B/tmp \\
        --subscription projects/P/subscriptions/S --store bigtable://my-project/my-instance/activities \\
        --outbox mysql://USER:PW@HOST:3306/outbox --out-dir gs://B/out --dry-run

--project, --region, --temp_location, --job_name, --update and every other Dataflow
setting are Beam's flags: `orion run` passes them to Beam unchanged and this module reads
them back through Beam's option views. Orion fills in, only where the user left them
unset: the runner, streaming (when a subscription is given; batch over files otherwise),
the job name, the staging location (TEMP_LOCATION/staging) and the setup file (the
workers install Orion from this checkout's setup.py). The main session is not pickled
(Beam's default): every DoFn imports what it needs.

A streaming job keeps its name (default `orion-activity-graph`), so `--update` replaces
the running job of that name in place, keeping its state; to stop one without losing
buffered activities, drain it: `gcloud dataflow jobs drain JOB_ID --region R` (the
sources stop, every lead's waiting activities are released, the open windows of the
outcome and dead-letter files are written, then the job ends).
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from orion.settings import RunConfig

REPO_SETUP = Path(__file__).resolve().parent.parent.parent / "setup.py"
STREAMING_JOB_NAME = "orion-activity-graph"
REMOTE_STORES = ("bigtable://", "mysql://")
DATAFLOW_RUNNER = "DataflowRunner"

# Beam's flags a Dataflow job cannot do without, with what to give.
REQUIRED = (
    ("project", "--project PROJECT"),
    ("region", "--region REGION (e.g. europe-west1)"),
    ("temp_location", "--temp_location gs://BUCKET/PATH"),
)
# Orion's own spellings before Beam's flags were left to Beam: said, not silently dropped.
RENAMED = {"--temp-location": "--temp_location", "--job-name": "--job_name"}


class DataflowConfigError(ValueError):
    """Options Dataflow would refuse, or a job that could not work there."""


def default_job_name(streaming: bool, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    return STREAMING_JOB_NAME if streaming else f"orion-files-{now():%Y%m%d-%H%M%S}"


def dataflow_options(config: RunConfig) -> PipelineOptions:
    """The PipelineOptions of the job: config.beam_args as given, plus Orion's defaults
    for what they leave unset (runner, streaming, job name, staging, setup file)."""
    streaming = config.subscription is not None
    options = PipelineOptions(list(config.beam_args))
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or DATAFLOW_RUNNER
    if streaming:
        standard.streaming = True
    cloud = options.view_as(GoogleCloudOptions)
    cloud.job_name = cloud.job_name or default_job_name(bool(standard.streaming))
    if cloud.temp_location and not cloud.staging_location:
        cloud.staging_location = cloud.temp_location.rstrip("/") + "/staging"
    setup = options.view_as(SetupOptions)
    setup.setup_file = setup.setup_file or str(REPO_SETUP)
    return options


def check(config: RunConfig, options: PipelineOptions) -> None:
    """Raise DataflowConfigError for what Dataflow would refuse or could not run."""
    standard = options.view_as(StandardOptions)
    cloud = options.view_as(GoogleCloudOptions)
    setup = options.view_as(SetupOptions)
    problems = []
    missing = [flag for name, flag in REQUIRED if not getattr(cloud, name)]
    if missing:
        problems.append("--runner dataflow needs Beam's " + ", ".join(missing))
    problems += [f"{old} is not a flag: Beam's is {new}" for old, new in RENAMED.items()
                 if any(arg == old or arg.startswith(old + "=") for arg in config.beam_args)]
    if "dataflow" not in standard.runner.lower():
        problems.append(f"--runner dataflow submits with Beam's {DATAFLOW_RUNNER}, not --runner={standard.runner}")
    if cloud.temp_location and not cloud.temp_location.startswith("gs://"):
        problems.append(f"--temp_location must be a gs:// path, not {cloud.temp_location!r}")
    if cloud.update and config.subscription is None:
        problems.append("--update replaces a running streaming job: give --subscription")
    if not Path(setup.setup_file).is_file():
        problems.append(f"no setup.py at {setup.setup_file}: submit from a source checkout "
                        "(the workers install Orion from it) or give Beam's --setup_file")
    if not config.store_uri.startswith(REMOTE_STORES):
        problems.append(f"--store {config.store_uri} is on this machine; Dataflow workers need "
                        "bigtable://PROJECT/INSTANCE/TABLE or mysql://...")
    else:
        problems += _uri_problems("--store", config.store_uri)
    if config.outbox_uri is not None and not config.outbox_uri.startswith("mysql://"):
        problems.append(f"--outbox {config.outbox_uri} is on this machine; Dataflow workers queue emails "
                        "in mysql://USER:PASSWORD@HOST:PORT/DB (or give --outbox none: no campaign flows)")
    elif config.outbox_uri is not None:
        problems += _uri_problems("--outbox", config.outbox_uri)
    if config.subscription is None and not str(config.events).startswith("gs://"):
        problems.append(f"--events {config.events} is on this machine; Dataflow workers read gs:// paths")
    if not str(config.out_dir).startswith("gs://"):
        problems.append(f"--out-dir {config.out_dir} is on this machine; Dataflow workers write "
                        "outcomes-*.jsonl and dead-letters-*.jsonl to gs://BUCKET/PATH")
    if problems:
        raise DataflowConfigError("cannot submit to Dataflow:\n  " + "\n  ".join(problems))


def _uri_problems(option: str, uri: str) -> list[str]:
    """What is wrong with a remote store's URI as written (no network: the workers are
    the ones to reach it), so a mistyped one is said before the job is submitted rather
    than in every worker's log."""
    from orion.store.base import StoreError
    from orion.store.bigtable import parse_bigtable_uri
    from orion.store.mysql import parse_mysql_uri

    try:
        (parse_bigtable_uri if uri.startswith("bigtable://") else parse_mysql_uri)(uri)
    except StoreError as err:
        return [f"{option}: {err}"]
    return []


def render_options(options: PipelineOptions) -> str:
    resolved = options.get_all_options(drop_default=True, retain_unknown_options=True)
    return "\n".join(f"  --{name}={value}" for name, value in sorted(resolved.items()) if value not in (None, []))


def run_dataflow(config: RunConfig, dry_run: bool = False, out=None):
    """Submit the graph (or, with dry_run, print the resolved options and return None).
    Returns the PipelineResult; a streaming job keeps running after this returns.
    Prints to `out` (default: sys.stdout as it is when called)."""
    out = sys.stdout if out is None else out
    options = dataflow_options(config)
    check(config, options)
    cloud = options.view_as(GoogleCloudOptions)
    print(("dry run: would submit" if dry_run else "submitting") + f" job {cloud.job_name} with:", file=out)
    print(render_options(options), file=out)
    if config.subscription is not None:
        print(f"to stop it without losing waiting activities: gcloud dataflow jobs drain JOB_ID "
              f"--project {cloud.project} --region {cloud.region}", file=out)
    if dry_run:
        return None
    import apache_beam as beam

    from orion.runners.direct import build

    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    result = pipeline.run()
    job_id = getattr(result, "job_id", lambda: None)()
    print(f"job {job_id}: https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}"
          f"?project={cloud.project}", file=out)
    return result
