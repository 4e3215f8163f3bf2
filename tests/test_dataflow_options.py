"""Dataflow submission options, resolved without a network: Beam's own flags (project,
region, temp_location, job_name, update ...) kept as the user gave them, Orion's defaults
only where they are unset (runner, staging, setup_file, streaming, job name), checks with
what to give instead, a dry run that submits nothing; and OrionOptions, the graph's own
settings as Beam flags, for launching the graph with Beam's tooling alone."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions

from orion.runners.dataflow import STREAMING_JOB_NAME, DataflowConfigError, dataflow_options, run_dataflow
from orion.settings import DEFAULT_OUTBOX, DEFAULT_STORE, SAMPLE_EVENTS, RunConfig, output_prefixes

REPO = Path(__file__).resolve().parent.parent
BEAM_FLAGS = ("--project=acme-prod", "--region=europe-west1", "--temp_location=gs://acme-orion/tmp")
SUBSCRIPTION = "projects/acme-prod/subscriptions/activities"


def config(subscription: str | None = None, events: str | None = "gs://acme-orion/in/*.jsonl",
           store: str = "bigtable://acme-prod/orion-prod/activities", out_dir="gs://acme-orion/out",
           beam_args=BEAM_FLAGS) -> RunConfig:
    return RunConfig(rules_dir="rules", template_dirs=(), events=None if subscription else events,
                     subscription=subscription, store_uri=store, out_dir=out_dir,
                     allowed_lateness_ms=60_000, dedup_span_ms=86_400_000, duration_s=None,
                     beam_args=tuple(beam_args))


def test_streaming_job_from_a_subscription_has_a_stable_name_and_installs_orion_from_setup_py():
    options = dataflow_options(config(subscription=SUBSCRIPTION))
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
    options = dataflow_options(config())
    assert options.view_as(StandardOptions).streaming is False
    assert options.view_as(GoogleCloudOptions).job_name.startswith("orion-files-")


def test_update_replaces_the_running_streaming_job_of_the_name_given_in_beams_flags():
    options = dataflow_options(config(subscription=SUBSCRIPTION,
                                      beam_args=BEAM_FLAGS + ("--update", "--job_name=orion-eu")))
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.update is True and cloud.job_name == "orion-eu"


def test_update_of_a_batch_job_is_refused_before_submitting():
    with pytest.raises(DataflowConfigError, match="--update replaces a running streaming job"):
        run_dataflow(config(beam_args=BEAM_FLAGS + ("--update",)), dry_run=True, out=io.StringIO())


def test_local_paths_and_stores_are_refused_with_what_to_use_instead():
    with pytest.raises(DataflowConfigError) as refused:
        run_dataflow(config(events="in/*.jsonl", store="sqlite:///orion-data/a.db", out_dir=Path("out"),
                            beam_args=("--project=p", "--region=r", "--temp_location=/tmp/x")),
                     dry_run=True, out=io.StringIO())
    message = str(refused.value)
    assert "--temp_location must be a gs:// path" in message and "bigtable://" in message
    assert "Dataflow workers read gs://" in message
    assert "--out-dir out is on this machine" in message and "gs://BUCKET/PATH" in message


def test_a_mistyped_store_or_outbox_uri_is_refused_before_submitting():
    with pytest.raises(DataflowConfigError) as refused:
        run_dataflow(config(store="bigtable://acme-prod/orion/activities")._replace(
            outbox_uri="mysql://root@db.internal:3306/out-box"), dry_run=True, out=io.StringIO())
    message = str(refused.value)
    assert "--store: bad Bigtable instance id 'orion'" in message and "6 to 33 characters" in message
    assert "--outbox: bad database name 'out-box'" in message


def test_beams_flags_given_by_the_user_are_kept():
    options = dataflow_options(config(beam_args=(
        "--project=acme-prod", "--region=us-central1", "--temp_location=gs://acme-orion/tmp",
        "--staging_location=gs://acme-orion/stage", "--setup_file=/opt/orion/setup.py", "--max_num_workers=20")))
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.region == "us-central1" and cloud.staging_location == "gs://acme-orion/stage"
    assert options.view_as(SetupOptions).setup_file == "/opt/orion/setup.py"
    assert options.get_all_options()["max_num_workers"] == 20


def test_missing_beam_flags_are_named_all_at_once():
    with pytest.raises(DataflowConfigError) as refused:
        run_dataflow(config(beam_args=("--region=europe-west1",)), dry_run=True, out=io.StringIO())
    assert "--runner dataflow needs Beam's --project PROJECT, --temp_location gs://BUCKET/PATH" in str(refused.value)


def test_dry_run_prints_the_resolved_options_and_the_drain_command_without_submitting():
    out = io.StringIO()
    result = run_dataflow(config(subscription=SUBSCRIPTION), dry_run=True, out=out)
    text = out.getvalue()
    assert result is None
    assert "dry run: would submit job orion-activity-graph" in text
    for line in ("--runner=DataflowRunner", "--project=acme-prod", "--region=europe-west1",
                 "--streaming=True", f"--setup_file={REPO / 'setup.py'}"):
        assert line in text, line
    assert "gcloud dataflow jobs drain JOB_ID --project acme-prod --region europe-west1" in text
    assert "warning" not in text


# --- through the command line ---------------------------------------------------------

DATAFLOW_ARGS = ["run", "--runner", "dataflow", "--project", "p", "--region", "r", "--temp_location", "gs://b/t",
                 "--events", "gs://b/in/*.jsonl", "--store", "bigtable://p/orion-prod/activities", "--out-dir", "gs://b/out",
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


def test_job_name_and_region_given_as_beam_flags_are_what_the_job_gets(capsys):
    from orion import cli

    status = cli.main(DATAFLOW_ARGS + ["--job_name=orion-backfill-eu", "--region=europe-west4"])

    printed = capsys.readouterr().out
    assert status == 0
    assert "dry run: would submit job orion-backfill-eu with:" in printed
    assert "--job_name=orion-backfill-eu" in printed and "--region=europe-west4" in printed
    assert "--region=r\n" not in printed


def test_a_local_outbox_is_refused_with_what_to_give_instead(capsys):
    from orion import cli

    without_outbox = [arg for arg in DATAFLOW_ARGS if arg not in ("--outbox", "mysql://orion@10.0.0.5:3306/outbox")]
    status = cli.main(without_outbox)  # the default outbox: SQLite on this machine

    captured = capsys.readouterr()
    assert status == 2
    assert "--outbox sqlite:///orion-data/outbox.db is on this machine" in captured.err
    assert "--outbox none" in captured.err and "would submit" not in captured.out


def test_a_local_out_dir_is_refused_for_dataflow(capsys):
    from orion import cli

    local_out = [("out" if arg == "gs://b/out" else arg) for arg in DATAFLOW_ARGS]
    status = cli.main(local_out)

    captured = capsys.readouterr()
    assert status == 2
    assert "--out-dir out is on this machine; Dataflow workers write outcomes-*.jsonl" in captured.err


def test_orion_run_runner_dataflow_without_a_project_exits_2_and_says_what_is_missing(capsys):
    from orion import cli

    without_project = DATAFLOW_ARGS[:3] + DATAFLOW_ARGS[5:]

    status = cli.main(without_project)

    captured = capsys.readouterr()
    assert status == 2
    assert "orion: cannot submit to Dataflow:" in captured.err
    assert "--runner dataflow needs Beam's --project PROJECT" in captured.err
    assert "would submit" not in captured.out


def test_orions_former_dashed_spellings_of_beams_flags_are_named_not_dropped(capsys):
    from orion import cli

    dashed = [("--temp-location" if arg == "--temp_location" else arg) for arg in DATAFLOW_ARGS]
    status = cli.main(dashed)

    captured = capsys.readouterr()
    assert status == 2
    assert "--temp-location is not a flag: Beam's is --temp_location" in captured.err


# --- OrionOptions: the graph's settings as Beam flags ---------------------------------


def test_orion_options_parse_orions_flags_into_a_run_config_and_leave_beams_flags_to_beam():
    from orion.runners.beam_options import run_config

    options = PipelineOptions([
        "--runner=DataflowRunner", "--project=acme-prod", "--region=europe-west1", "--job_name=orion-eu",
        "--temp_location=gs://acme-orion/tmp", "--max_num_workers=20", "--experiments=use_runner_v2",
        "--rules=/template/rules", "--templates=t1", "--templates=t2",
        "--subscription=projects/acme-prod/subscriptions/activities", "--store=bigtable://acme-prod/orion-prod/activities",
        "--outbox=none", "--out_dir=gs://acme-orion/out/", "--allowed_lateness=30", "--dedup_span=2",
        "--mode=passive", "--legacy_store=mysql://orion@10.0.0.5:3306/legacy",
    ])

    config = run_config(options)

    assert config._replace(beam_args=()) == RunConfig(
        rules_dir="/template/rules", template_dirs=("t1", "t2"), events=None,
        subscription="projects/acme-prod/subscriptions/activities", store_uri="bigtable://acme-prod/orion-prod/activities",
        out_dir="gs://acme-orion/out", allowed_lateness_ms=30_000, dedup_span_ms=2 * 3_600_000, duration_s=None,
        beam_args=(), outbox_uri=None, mode="passive", legacy_store_uri="mysql://orion@10.0.0.5:3306/legacy")
    assert output_prefixes(config.out_dir) == ("gs://acme-orion/out/outcomes", "gs://acme-orion/out/dead-letters")
    assert set(config.beam_args) == {
        "--runner=DataflowRunner", "--project=acme-prod", "--region=europe-west1", "--job_name=orion-eu",
        "--temp_location=gs://acme-orion/tmp", "--max_num_workers=20", "--experiments=use_runner_v2"}
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.job_name) == ("acme-prod", "orion-eu")
    # The Beam flags left over are ones Beam reads back the same.
    again = PipelineOptions(list(config.beam_args))
    assert again.view_as(GoogleCloudOptions).region == "europe-west1"
    assert again.get_all_options()["max_num_workers"] == 20


def test_orion_options_have_the_defaults_of_orion_run():
    from orion.runners.beam_options import run_config

    config = run_config(PipelineOptions([]))

    assert config.events == str(SAMPLE_EVENTS) and config.subscription is None
    assert config.store_uri == DEFAULT_STORE and config.outbox_uri == DEFAULT_OUTBOX
    assert (config.allowed_lateness_ms, config.dedup_span_ms) == (60_000, 24 * 3_600_000)
    assert config.out_dir == Path("orion-data") and config.beam_args == ()


def test_orion_options_refuse_files_and_a_subscription_together():
    from orion.runners.beam_options import run_config

    with pytest.raises(ValueError, match="not both"):
        run_config(PipelineOptions(["--events=in.jsonl", "--subscription=projects/p/subscriptions/s"]))


def test_beam_tooling_alone_runs_the_graph_from_orion_options(tmp_path):
    from orion.runners.beam_options import main

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({
        "event_id": f"e{n}", "tenant": "acme", "lead_id": "L1", "type": "visit_web_page",
        "occurred_at": 1_794_999_940_000 + n * 1000, "attributes": {"url": "https://acme.example/pricing"},
    }) for n in range(3)) + "\n{broken\n")
    out = tmp_path / "out"

    status = main([f"--events={events}", f"--store=sqlite:///{tmp_path / 'store.db'}", "--outbox=none",
                   f"--out_dir={out}", "--runner=DirectRunner"])

    assert status == 0
    outcomes = [json.loads(line) for f in out.glob("outcomes-*.jsonl") for line in f.read_text().splitlines()]
    dead = [json.loads(line) for f in out.glob("dead-letters-*.jsonl") for line in f.read_text().splitlines()]
    assert {o["event_id"] for o in outcomes} == {"e0", "e1", "e2"}
    assert [d["reason"] for d in dead] == ["malformed_json"]
    assert not list(out.glob(".temp-*")), "the temporary files are cleared once the files are in place"
