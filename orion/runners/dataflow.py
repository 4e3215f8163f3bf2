"""Submitting the activity graph (the same Beam graph as `orion run`) to Google Cloud
Dataflow: resolved PipelineOptions, checked before anything is sent, and a dry run that
prints them without submitting.

    orion run --runner dataflow --project P --region europe-west1 --temp-location gs://B/tmp \\
        --subscription projects/P/subscriptions/S --store bigtable://P/I/activities --dry-run

Streaming when a subscription is given (batch over files otherwise). A streaming job keeps
its name (default `orion-activity-graph`), so `--update` replaces the running job of that
name in place, keeping its state; to stop one without losing buffered activities, drain
it: `gcloud dataflow jobs drain JOB_ID --region R` (the sources stop, every lead's
waiting activities are released, then the job ends).
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from orion.runners.direct import RunConfig

REPO_SETUP = Path(__file__).resolve().parent.parent.parent / "setup.py"
STREAMING_JOB_NAME = "orion-activity-graph"
REMOTE_STORES = ("bigtable://", "mysql://")


class DataflowSettings(NamedTuple):
    project: str
    region: str
    temp_location: str  # gs://BUCKET/PATH: staging and temporary files
    job_name: str | None = None  # default: STREAMING_JOB_NAME, or orion-files-<UTC time>
    update: bool = False  # replace the running streaming job of the same name
    setup_file: Path = REPO_SETUP


class DataflowConfigError(ValueError):
    """Options Dataflow would refuse, or a job that could not work there."""


def default_job_name(streaming: bool, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    return STREAMING_JOB_NAME if streaming else f"orion-files-{now():%Y%m%d-%H%M%S}"


def check(config: RunConfig, settings: DataflowSettings) -> None:
    """Raise DataflowConfigError for what Dataflow would refuse or could not run."""
    streaming = config.subscription is not None
    problems = []
    if not settings.temp_location.startswith("gs://"):
        problems.append(f"--temp-location must be a gs:// path, not {settings.temp_location!r}")
    if settings.update and not streaming:
        problems.append("--update replaces a running streaming job: give --subscription")
    if not settings.setup_file.is_file():
        problems.append(f"no setup.py at {settings.setup_file}: submit from a source checkout "
                        "(the workers install Orion from it)")
    if not config.store_uri.startswith(REMOTE_STORES):
        problems.append(f"--store {config.store_uri} is on this machine; Dataflow workers need "
                        "bigtable://PROJECT/INSTANCE/TABLE or mysql://...")
    if config.outbox_uri is not None and not config.outbox_uri.startswith("mysql://"):
        problems.append(f"--outbox {config.outbox_uri} is on this machine; Dataflow workers queue emails "
                        "in mysql://USER:PASSWORD@HOST:PORT/DB (or give --outbox none: no campaign flows)")
    if not streaming and not str(config.events).startswith("gs://"):
        problems.append(f"--events {config.events} is on this machine; Dataflow workers read gs:// paths")
    if problems:
        raise DataflowConfigError("cannot submit to Dataflow:\n  " + "\n  ".join(problems))


def warnings(config: RunConfig) -> list[str]:
    """What works, but not as the user may expect."""
    # WriteJsonLines (orion/transforms/sinks.py) writes with open() on the worker, and
    # RunConfig.out_dir is a pathlib.Path (which turns gs://b into gs:/b): until both
    # go through Beam's FileSystems, outcome and dead-letter files stay on the workers.
    return [f"outcomes and dead letters are written to {config.out_dir} on each Dataflow worker's "
            "local disk, not to Cloud Storage (WriteJsonLines needs FileSystems support)"]


def dataflow_options(config: RunConfig, settings: DataflowSettings) -> PipelineOptions:
    """The PipelineOptions of the job; config.beam_args are applied first, so an explicit
    setting here (project, region, streaming ...) always wins."""
    streaming = config.subscription is not None
    options = PipelineOptions(list(config.beam_args))
    standard = options.view_as(StandardOptions)
    standard.runner = "DataflowRunner"
    standard.streaming = streaming
    cloud = options.view_as(GoogleCloudOptions)
    cloud.project = settings.project
    cloud.region = settings.region
    cloud.temp_location = settings.temp_location
    cloud.staging_location = cloud.staging_location or settings.temp_location.rstrip("/") + "/staging"
    cloud.job_name = settings.job_name or default_job_name(streaming)
    cloud.update = settings.update
    setup = options.view_as(SetupOptions)
    # The workers install Orion (and its pinned dependencies) from the repository's
    # setup.py; the main session is not pickled, every DoFn imports what it needs.
    setup.setup_file = str(settings.setup_file)
    setup.save_main_session = False
    return options


def render_options(options: PipelineOptions) -> str:
    resolved = options.get_all_options(drop_default=True, retain_unknown_options=True)
    return "\n".join(f"  --{name}={value}" for name, value in sorted(resolved.items()) if value not in (None, []))


def run_dataflow(config: RunConfig, settings: DataflowSettings, dry_run: bool = False, out=None):
    """Submit the graph (or, with dry_run, print the resolved options and return None).
    Returns the PipelineResult; a streaming job keeps running after this returns.
    Prints to `out` (default: sys.stdout as it is when called)."""
    out = sys.stdout if out is None else out
    check(config, settings)
    options = dataflow_options(config, settings)
    cloud = options.view_as(GoogleCloudOptions)
    print(("dry run: would submit" if dry_run else "submitting") + f" job {cloud.job_name} with:", file=out)
    print(render_options(options), file=out)
    for warning in warnings(config):
        print(f"warning: {warning}", file=out)
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
