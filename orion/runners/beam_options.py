"""Orion's settings of the activity graph as Beam pipeline options (`OrionOptions`), so
the graph can be launched by Beam's own tooling alone, with Beam's flags and Orion's
side by side on one command line: a Dataflow flex template's main, a test, a notebook.

    python -m orion.runners.beam_options --runner=DataflowRunner --project=P --region=europe-west1 \\
        --temp_location=gs://B/tmp --rules=/template/rules --events='gs://B/in/*.jsonl' \\
        --store=bigtable://my-project/my-instance/activities --outbox=none --out_dir=gs://B/out
    python -m orion.runners.beam_options --events=in.jsonl --store=sqlite:///data/a.db --out_dir=data
    python -m orion.runners.beam_options --kafka_servers=127.0.0.1:9092 --kafka_topic=activities --kafka_max_read_s=60

Orion's flags (`python -m orion.runners.beam_options --help` lists them) have the
defaults of orion/settings.py, as `orion run` does, but in Beam's spelling
(--out_dir, --allowed_lateness SECONDS, --dedup_span HOURS, --legacy_store); every
other flag is Beam's and stays Beam's (--runner, --project, --job_name, --streaming ...).
`main` builds the same graph as `orion run` (orion.runners.direct.build) and runs it,
waiting for the run to end, except on Dataflow, where it returns once the job is
submitted (a flex template's launcher must not wait for the job). A Pub/Sub
--subscription makes the run streaming. A Kafka topic (--kafka_servers, --kafka_topic) is
read for --kafka_max_read_s seconds or --kafka_max_records records on Beam's Prism runner,
with Beam's expansion service and Java worker pool started for the run
(orion/runners/beam_kafka.py). `orion run --runner dataflow`
(orion/runners/dataflow.py) adds the checks and defaults of a Dataflow submission.
"""
from __future__ import annotations

import argparse
import json
import sys

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from orion.settings import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_DATA_DIR,
    DEFAULT_DEDUP_SPAN_MS,
    DEFAULT_OUTBOX,
    DEFAULT_STORE,
    MODES,
    SAMPLE_EVENTS,
    SAMPLE_RULES,
    RunConfig,
    clear_previous_outputs,
    is_remote,
    output_dir,
)
from orion.transforms.kafka import DEFAULT_GROUP as DEFAULT_KAFKA_GROUP, KafkaIntake

MS_PER_HOUR = 3_600_000
LOCAL_RUNNERS = (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


class OrionOptions(PipelineOptions):
    """The activity graph's own settings (orion.settings.RunConfig) as Beam flags."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Orion: the activity graph")
        group.add_argument("--rules", default=str(SAMPLE_RULES),
                           help="rules directory (default: the shipped samples)")
        group.add_argument("--templates", action="append", default=[],
                           help="extra email template folder (repeatable)")
        group.add_argument("--events", default=None,
                           help="JSONL files, a path or a glob; bounded (default: the shipped samples, "
                           "unless --subscription)")
        group.add_argument("--subscription", default=None,
                           help="projects/P/subscriptions/S: read Pub/Sub, streaming")
        group.add_argument("--kafka_servers", default=None,
                           help="HOST:PORT[,...]: read a Kafka topic (with --kafka_topic) on Beam's Prism runner")
        group.add_argument("--kafka_topic", default=None, help="the Kafka topic, with --kafka_servers")
        group.add_argument("--kafka_group", default=DEFAULT_KAFKA_GROUP,
                           help="the consumer group whose committed offsets the read goes on from and "
                           "commits (default: %(default)s)")
        group.add_argument("--kafka_max_read_s", type=float, default=None,
                           help="read Kafka this many seconds, then finish")
        group.add_argument("--kafka_max_records", type=int, default=None,
                           help="read this many Kafka records, then finish")
        group.add_argument("--store", default=DEFAULT_STORE, help="activity store URI (default: %(default)s)")
        group.add_argument("--outbox", default=DEFAULT_OUTBOX,
                           help="where campaign flows queue emails, held emails and webhooks; "
                           "none: no flows, outcomes only (default: %(default)s)")
        group.add_argument("--out_dir", default=str(DEFAULT_DATA_DIR),
                           help="where outcomes-*.jsonl and dead-letters-*.jsonl go: a local "
                           "directory or gs://BUCKET/PATH (default: %(default)s)")
        group.add_argument("--allowed_lateness", type=float, default=DEFAULT_ALLOWED_LATENESS_MS / 1000,
                           help="seconds an activity may arrive behind the watermark and still be "
                           "evaluated in order; later ones are dead letters (late) (default: %(default)s)")
        group.add_argument("--dedup_span", type=float, default=DEFAULT_DEDUP_SPAN_MS / MS_PER_HOUR,
                           help="hours of event time a lead remembers event ids, to drop duplicates "
                           "(default: %(default)s)")
        group.add_argument("--no_rollups", dest="rollups", action="store_false",
                           help="keep no analytics roll-ups (default: roll up into the store)")
        group.add_argument("--mode", choices=MODES, default=None,
                           help="migration from the legacy store: legacy, passive or active "
                           "(default: --store alone)")
        group.add_argument("--legacy_store", default=None,
                           help="the legacy store, mysql://USER:PASSWORD@HOST:PORT/DB, with --mode")


def orion_option_names() -> frozenset[str]:
    """The names (argparse dests) of Orion's options."""
    parser = argparse.ArgumentParser(add_help=False)
    OrionOptions._add_argparse_args(parser)
    return frozenset(vars(parser.parse_args([])))


def run_config(options: PipelineOptions) -> RunConfig:
    """The run OrionOptions describe, with the other (Beam's) options as its beam_args.
    Raises ValueError for settings that contradict each other."""
    orion = options.view_as(OrionOptions)
    kafka = kafka_intake(options)
    if orion.events is not None and orion.subscription is not None:
        raise ValueError("give --events (files) or --subscription (Pub/Sub), not both")
    if kafka is not None and (orion.events is not None or orion.subscription is not None):
        raise ValueError("give --kafka_topic (Kafka) or --events / --subscription, not both")
    if orion.mode is not None and not orion.legacy_store:
        raise ValueError("--mode needs --legacy_store mysql://USER:PASSWORD@HOST:PORT/DB")
    return RunConfig(
        rules_dir=orion.rules,
        template_dirs=tuple(orion.templates),
        events=None if orion.subscription or kafka else (orion.events or str(SAMPLE_EVENTS)),
        subscription=orion.subscription,
        store_uri=orion.store,
        out_dir=output_dir(orion.out_dir),
        allowed_lateness_ms=int(orion.allowed_lateness * 1000),
        dedup_span_ms=int(orion.dedup_span * MS_PER_HOUR),
        duration_s=None,
        beam_args=beam_flags(options),
        outbox_uri=None if orion.outbox.lower() == "none" else orion.outbox,
        mode=orion.mode,
        legacy_store_uri=orion.legacy_store,
        rollups=orion.rollups,
    )


def kafka_intake(options: PipelineOptions) -> KafkaIntake | None:
    """The Kafka topic OrionOptions name, if any. Raises ValueError for an incomplete one."""
    orion = options.view_as(OrionOptions)
    if orion.kafka_servers is None and orion.kafka_topic is None:
        return None
    if orion.kafka_servers is None or orion.kafka_topic is None:
        raise ValueError("--kafka_servers and --kafka_topic go together")
    if orion.kafka_max_read_s is None and orion.kafka_max_records is None:
        raise ValueError("the Beam graph reads Kafka for a bounded time or number of records: "
                         "give --kafka_max_read_s SECONDS or --kafka_max_records N")
    return KafkaIntake(orion.kafka_servers, orion.kafka_topic, orion.kafka_group,
                       max_records=orion.kafka_max_records, max_read_s=orion.kafka_max_read_s)


def beam_flags(options: PipelineOptions) -> tuple[str, ...]:
    """The options that are not Orion's, set away from their defaults, as flags."""
    ours = orion_option_names()
    values = options.get_all_options(drop_default=True, retain_unknown_options=True)
    flags = []
    for name, value in sorted(values.items()):
        if name in ours or value is None:
            continue
        if value is True:
            flags.append(f"--{name}")
        elif value is False:
            # Left after dropping defaults: a switch that is on by default, which Beam
            # turns off with --no_NAME (--no_use_public_ips, --no_pipeline_type_check).
            flags.append(f"--no_{name}")
        elif isinstance(value, list):
            flags += [f"--{name}={item}" for item in value]
        elif isinstance(value, dict):
            flags.append(f"--{name}={json.dumps(value)}")
        else:
            flags.append(f"--{name}={value}")
    return tuple(flags)


def main(argv: list[str] | None = None) -> int:
    """Parse Beam's and Orion's flags, build the graph and run it (see the module docs)."""
    import apache_beam as beam

    from orion.runners.direct import build

    flags = list(sys.argv[1:] if argv is None else argv)
    # Parsed as OrionOptions so that --help lists Orion's flags (Beam's: any runner's docs).
    options = OrionOptions(flags)
    try:
        config = run_config(options)
        kafka = kafka_intake(options)
    except ValueError as error:
        print(f"orion: {error}", file=sys.stderr)
        return 2
    if kafka is not None:
        from orion.runners.beam_kafka import BeamKafkaServices, BeamKafkaUnavailable

        try:
            with BeamKafkaServices(kafka) as services:
                options = OrionOptions([*services.beam_args(), *flags])
                if not is_remote(config.out_dir):
                    clear_previous_outputs(config.out_dir)
                pipeline = beam.Pipeline(options=options)
                build(pipeline, config, kafka, services.expansion_service)
                pipeline.run().wait_until_finish()
        except BeamKafkaUnavailable as error:
            print(f"orion: {error}", file=sys.stderr)
            return 1
        return 0
    standard = options.view_as(StandardOptions)
    local = standard.runner in LOCAL_RUNNERS
    if config.subscription is not None:
        standard.streaming = True
        if standard.runner in (None, "DirectRunner"):
            # As `orion run` does: the switching DirectRunner would try Prism first,
            # which downloads a binary.
            standard.runner = "BundleBasedDirectRunner"
    if local:
        clear_previous_outputs(config.out_dir)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    result = pipeline.run()
    if "dataflow" not in (standard.runner or "").lower():
        result.wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
