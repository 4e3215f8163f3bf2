"""Dataflow submission options, resolved without a network: runner, project, region,
staging, setup_file, streaming, job name, update, and a dry run that submits nothing."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, StandardOptions

from orion.runners.dataflow import (
    STREAMING_JOB_NAME,
    DataflowConfigError,
    DataflowSettings,
    dataflow_options,
    run_dataflow,
)
from orion.runners.direct import RunConfig

REPO = Path(__file__).resolve().parent.parent
SETTINGS = DataflowSettings(project="acme-prod", region="europe-west1", temp_location="gs://acme-orion/tmp")


def config(subscription: str | None = None, events: str | None = "gs://acme-orion/in/*.jsonl",
           store: str = "bigtable://acme-prod/orion/activities", beam_args=()) -> RunConfig:
    return RunConfig(rules_dir="rules", template_dirs=(), events=None if subscription else events,
                     subscription=subscription, store_uri=store, out_dir=Path("out"),
                     allowed_lateness_ms=60_000, dedup_span_ms=86_400_000, duration_s=None,
                     beam_args=tuple(beam_args))


def test_streaming_job_from_a_subscription_has_a_stable_name_and_installs_orion_from_setup_py():
    options = dataflow_options(config(subscription="projects/acme-prod/subscriptions/activities"), SETTINGS)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(StandardOptions).streaming is True
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("acme-prod", "europe-west1", "gs://acme-orion/tmp")
    assert cloud.staging_location == "gs://acme-orion/tmp/staging"
    assert cloud.job_name == STREAMING_JOB_NAME and cloud.update is False
    setup = options.view_as(SetupOptions)
    assert Path(setup.setup_file) == REPO / "setup.py" and Path(setup.setup_file).is_file()
    assert setup.save_main_session is False


def test_batch_job_over_files_is_not_streaming_and_gets_a_fresh_name():
    options = dataflow_options(config(), SETTINGS)
    assert options.view_as(StandardOptions).streaming is False
    assert options.view_as(GoogleCloudOptions).job_name.startswith("orion-files-")


def test_update_replaces_the_running_streaming_job_of_the_given_name():
    settings = SETTINGS._replace(update=True, job_name="orion-eu")
    options = dataflow_options(config(subscription="projects/acme-prod/subscriptions/activities"), settings)
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.update is True and cloud.job_name == "orion-eu"


def test_update_of_a_batch_job_is_refused_before_submitting():
    with pytest.raises(DataflowConfigError, match="--update replaces a running streaming job"):
        run_dataflow(config(), SETTINGS._replace(update=True), dry_run=True, out=io.StringIO())


def test_local_paths_and_stores_are_refused_with_what_to_use_instead():
    with pytest.raises(DataflowConfigError) as refused:
        run_dataflow(config(events="in/*.jsonl", store="sqlite:///orion-data/a.db"),
                     SETTINGS._replace(temp_location="/tmp/x"), dry_run=True, out=io.StringIO())
    message = str(refused.value)
    assert "gs:// path" in message and "bigtable://" in message and "Dataflow workers read gs://" in message


def test_explicit_settings_win_over_passed_through_beam_arguments():
    options = dataflow_options(config(beam_args=["--region=us-central1", "--max_num_workers=20"]), SETTINGS)
    assert options.view_as(GoogleCloudOptions).region == "europe-west1"
    assert options.get_all_options()["max_num_workers"] == 20


def test_dry_run_prints_the_resolved_options_and_the_drain_command_without_submitting():
    out = io.StringIO()
    result = run_dataflow(config(subscription="projects/acme-prod/subscriptions/activities"), SETTINGS,
                          dry_run=True, out=out)
    text = out.getvalue()
    assert result is None
    assert "dry run: would submit job orion-activity-graph" in text
    for line in ("--runner=DataflowRunner", "--project=acme-prod", "--region=europe-west1",
                 "--streaming=True", f"--setup_file={REPO / 'setup.py'}"):
        assert line in text, line
    assert "gcloud dataflow jobs drain JOB_ID --project acme-prod --region europe-west1" in text


# --- through the command line ---------------------------------------------------------

DATAFLOW_ARGS = ["run", "--runner", "dataflow", "--project", "p", "--region", "r", "--temp-location", "gs://b/t",
                 "--events", "gs://b/in/*.jsonl", "--store", "bigtable://p/i/t",
                 "--outbox", "mysql://orion@10.0.0.5:3306/outbox", "--dry-run"]


def test_orion_run_runner_dataflow_dry_run_prints_the_resolved_options_and_exits_0(capsys):
    from orion import cli

    status = cli.main(DATAFLOW_ARGS)

    printed = capsys.readouterr().out
    assert status == 0
    assert "dry run: would submit job orion-files-" in printed
    for line in ("--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t",
                 "--staging_location=gs://b/t/staging", f"--setup_file={REPO / 'setup.py'}"):
        assert line in printed, line


def test_a_local_outbox_is_refused_with_what_to_give_instead(capsys):
    from orion import cli

    status = cli.main(DATAFLOW_ARGS[:-3] + ["--dry-run"])  # the default outbox: SQLite on this machine

    captured = capsys.readouterr()
    assert status == 2
    assert "--outbox sqlite:///orion-data/outbox.db is on this machine" in captured.err
    assert "--outbox none" in captured.err and "would submit" not in captured.out


def test_orion_run_runner_dataflow_without_a_project_exits_2_and_says_what_is_missing(capsys):
    from orion import cli

    without_project = DATAFLOW_ARGS[:3] + DATAFLOW_ARGS[5:]

    status = cli.main(without_project)

    captured = capsys.readouterr()
    assert status == 2
    assert "orion: --runner dataflow needs --project" in captured.err
    assert "would submit" not in captured.out
