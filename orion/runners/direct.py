"""Launching the activity graph with Beam: files (bounded, on the DirectRunner's FnApiRunner,
or any runner named with --runner), a Pub/Sub subscription (streaming; locally on the
bundle-based DirectRunner, which reads the emulator through PUBSUB_EMULATOR_HOST), or a
Kafka topic (bounded by --duration; on Beam's Prism runner, with Beam's expansion service
and Java worker pool started for the run: orion/runners/beam_kafka.py).

    orion run                                            # samples, into ./orion-data/
    orion run --events 'in/*.jsonl' -- --direct_num_workers=2 --direct_running_mode=multi_processing
    orion run --subscription projects/p/subscriptions/s --duration 60
    orion run --kafka-servers 127.0.0.1:9092 --kafka-topic activities --duration 60
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.store.rollups_opening import rollup_store_uri
from orion.settings import RunConfig, clear_previous_outputs, effective_store_uri, is_remote, output_prefixes
from orion.summary import campaigns_fired, render_summary
from orion.transforms.intake import ParseActivities, ReadActivityFiles, orion_counters
from orion.transforms.kafka import KafkaIntake
from orion.transforms.sinks import DEFAULT_WINDOW_SECONDS, WriteActivities, WriteJsonLines, WriteProfiles

STOP_WAIT_SECONDS = 2.0
# Draining a streaming run: after the allowed lateness, how long to leave for the last
# release timers' bundles (the local runner fires them a round or two after the watermark).
DRAIN_MARGIN_SECONDS = 3.0
SUMMARY_EVERY_SECONDS = 10.0


def pipeline_options(config: RunConfig) -> PipelineOptions:
    options = PipelineOptions(list(config.beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"):
        from orion.transforms import dofn_specs

        dofn_specs.install()
        dofn_specs.shorten_sampling()  # the local runner's bundles end without waiting on Beam's sampler
    if config.subscription is not None:
        standard.streaming = True
        if standard.runner in (None, "DirectRunner"):
            # The switching DirectRunner would try Prism first, which downloads a binary.
            standard.runner = "BundleBasedDirectRunner"
    return options


def build(pipeline: beam.Pipeline, config: RunConfig, kafka: KafkaIntake | None = None,
          expansion_service: str | None = None) -> None:
    """The graph of `config` on `pipeline`; with `kafka`, read that topic (bounded)
    through the expansion service at `expansion_service` instead of files."""
    if kafka is not None:
        from orion.transforms.kafka import ReadKafkaPayloads

        payloads = pipeline | "ReadKafka" >> ReadKafkaPayloads(kafka, expansion_service)
        activities, dead = payloads | "ParseActivities" >> ParseActivities(
            config.rules_dir, config.template_dirs, source=kafka.source)
    elif config.subscription is not None:
        payloads = pipeline | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=config.subscription)
        activities, dead = payloads | "ParseActivities" >> ParseActivities(
            config.rules_dir, config.template_dirs, source=config.subscription)
    else:
        activities, dead = pipeline | "ReadActivityFiles" >> ReadActivityFiles(
            config.events, config.rules_dir, config.template_dirs, config.allowed_lateness_ms)
    outcomes_prefix, dead_prefix = output_prefixes(config.out_dir)
    store_uri = effective_store_uri(config)
    build_activity_graph(
        activities,
        dead,
        GraphSettings(
            config.rules_dir,
            config.template_dirs,
            config.allowed_lateness_ms,
            config.dedup_span_ms,
            bounded=config.subscription is None,
            seed_store_uri=store_uri,
            one_watermark_per_stage=_one_watermark_per_stage(pipeline),
            rollup_store_uri=rollup_store_uri(store_uri) if config.rollups else None,
        ),
        store_sink=WriteActivities(store_uri),
        profile_sink=WriteProfiles(store_uri),
        outcome_sink=WriteJsonLines(outcomes_prefix, "outcomes_written"),
        dead_letter_sink=WriteJsonLines(dead_prefix, "dead_letters_written"),
        outbox_sink=_outbox_sink(config),
        waiting_leads=_waiting_leads(pipeline, config, store_uri),
    )


def _waiting_leads(pipeline: beam.Pipeline, config: RunConfig, store_uri: str):
    """Streaming with flows: the leads waiting in a flow in the store start the job, so
    that a job replacing another without its state still resumes their waits."""
    if config.subscription is None or not config.outbox_uri:
        return None
    from typing import Any, Tuple

    from orion.transforms.evaluate import waiting_leads

    found = waiting_leads(store_uri, config.rules_dir, config.template_dirs)
    return pipeline | "WaitingLeads" >> beam.Create(found).with_output_types(Tuple[Tuple[str, str], Any])


def _one_watermark_per_stage(pipeline: beam.Pipeline) -> bool:
    """Whether the runner keeps one input watermark per stage for all keys in this
    process: Beam's local DirectRunners do; Dataflow's and Flink's workers are not
    assumed to."""
    runner = pipeline.options.view_as(StandardOptions).runner
    return runner in (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def _outbox_sink(config: RunConfig):
    """With an outbox, the campaign flows run and queue there (orion/transforms/flows.py)."""
    if not config.outbox_uri:
        return None
    from orion.transforms.flows import QueueEmails

    return QueueEmails(config.outbox_uri)


def run(config: RunConfig, clock: Callable[[], float] = time.monotonic, out=None,
        kafka: KafkaIntake | None = None) -> dict[str, int]:
    """Run the graph; print progress and the summary (to `out`, default: the standard
    output at call time); return the counters. With `kafka`, read that topic on Prism,
    with the services it needs started for this run and stopped after it."""
    if kafka is not None:
        from orion.runners.beam_kafka import BeamKafkaServices

        with BeamKafkaServices(kafka) as services:
            config = config._replace(events=None, subscription=None,
                                     beam_args=(*services.beam_args(), *config.beam_args))
            return _run(config, clock, out, kafka, services.expansion_service)
    return _run(config, clock, out)


def _run(config: RunConfig, clock: Callable[[], float], out, kafka: KafkaIntake | None = None,
         expansion_service: str | None = None) -> dict[str, int]:
    out = sys.stdout if out is None else out
    if not is_remote(config.out_dir):
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    clear_previous_outputs(config.out_dir)
    options = pipeline_options(config)
    started = clock()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, kafka, expansion_service)
    # The local streaming runner acknowledges what it pulls: a stop drains it first.
    drains = (config.subscription is not None
              and options.view_as(StandardOptions).runner == "BundleBasedDirectRunner")
    if drains:
        from orion.runners import direct_pubsub

        direct_pubsub.install()
        direct_pubsub.resume_pulling()
    result = pipeline.run()
    if config.subscription is None:
        result.wait_until_finish()
    else:
        _watch_streaming(result, config, started, clock, out, drains)
    totals = orion_counters(result)
    print(render_summary(totals, clock() - started, campaigns_fired(config.out_dir)), file=out)
    if config.outbox_uri:
        print(f"outbox:       {config.outbox_uri}", file=out)
    return totals


def _watch_streaming(result, config: RunConfig, started: float, clock, out, drains: bool = False) -> None:
    """Stream until the duration passes or the user interrupts, with a summary line
    every few seconds; then (`drains`: on the local runner) drain, and stop the
    pipeline (see `_drain`)."""
    deadline = None if config.duration_s is None else started + config.duration_s
    last = started
    try:
        while deadline is None or clock() < deadline:
            time.sleep(0.5)
            if clock() - last >= SUMMARY_EVERY_SECONDS:
                last = clock()
                totals = orion_counters(result)
                print(f"... {totals.get('events_read', 0):,} events read, {totals.get('stored', 0):,} stored, "
                      f"{totals.get('qualified', 0):,} qualified", file=out, flush=True)
        if drains:
            _drain(config, clock, out)
    except KeyboardInterrupt:
        print("stopping ...", file=out, flush=True)
        try:
            if drains:
                _drain(config, clock, out)
        except KeyboardInterrupt:
            print("stopped without draining: activities pulled in the last "
                  f"{config.allowed_lateness_ms / 1000:g} s may not have been released", file=out, flush=True)
    finally:
        _stop(result)


def _drain(config: RunConfig, clock, out) -> None:
    """The local runner acknowledges messages as it pulls them (orion/runners/direct_pubsub.py):
    stop pulling, so what is published from now on stays on the subscription, and wait
    while the watermark (the wall clock) passes everything already pulled plus the
    allowed lateness, so it is released, evaluated and stored, and then the end of the
    last window of outcome and dead-letter files (WriteJsonLines), so they are written.
    Ctrl-C stops at once."""
    from orion.runners import direct_pubsub

    direct_pubsub.stop_pulling()
    wait_s = config.allowed_lateness_ms / 1000 + DEFAULT_WINDOW_SECONDS + DRAIN_MARGIN_SECONDS
    print(f"draining: no more pulls (what is published now stays on the subscription); releasing what "
          f"was pulled and writing its files, {wait_s:g} s (the allowed lateness, a file window and a margin); "
          "Ctrl-C stops at once", file=out, flush=True)
    until = clock() + wait_s
    while clock() < until:
        time.sleep(0.2)
    print("drained: every activity pulled before the stop has been released", file=out, flush=True)


def _stop(result, wait_s: float = STOP_WAIT_SECONDS) -> None:
    """Cancel a streaming run without waiting more than `wait_s` for the runner: the local
    runner's cancel joins a worker that may sit in a Pub/Sub pull for up to 30 s, which
    made `--duration 10` take 30. Its workers are daemon threads; they end with the process."""
    stopper = threading.Thread(target=result.cancel, name="orion-stop", daemon=True)
    stopper.start()
    stopper.join(wait_s)
