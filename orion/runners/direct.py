"""Launching the activity graph with Beam: files (bounded, on the DirectRunner's FnApiRunner,
or any runner named with --runner) or a Pub/Sub subscription (streaming; locally on the
bundle-based DirectRunner, which reads the emulator through PUBSUB_EMULATOR_HOST).

    orion run                                            # samples, into ./orion-data/
    orion run --events 'in/*.jsonl' -- --direct_num_workers=2 --direct_running_mode=multi_processing
    orion run --subscription projects/p/subscriptions/s --duration 60
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.transforms.intake import METRICS_NAMESPACE, ParseActivities, ReadActivityFiles
from orion.transforms.sinks import WriteActivities, WriteJsonLines

STOP_WAIT_SECONDS = 2.0
SUMMARY_EVERY_SECONDS = 10.0


class RunConfig(NamedTuple):
    rules_dir: str
    template_dirs: tuple[str, ...]
    events: str | None  # a path or glob; None with a subscription
    subscription: str | None
    store_uri: str
    out_dir: Path
    allowed_lateness_ms: int
    dedup_span_ms: int
    duration_s: float | None  # streaming: stop after this long (None: until interrupted)
    beam_args: tuple[str, ...]
    outbox_uri: str | None = None  # campaign flows on: emails, held emails and webhooks go here
    mode: str | None = None  # migration: legacy | passive | active (None: store_uri alone)
    legacy_store_uri: str | None = None  # migration: the legacy MySQL store (mysql://...)


def output_prefixes(out_dir: Path) -> tuple[str, str]:
    return str(out_dir / "outcomes"), str(out_dir / "dead-letters")


def clear_previous_outputs(out_dir: Path) -> None:
    """A rerun replaces the outcome and dead-letter files of the previous run (the store
    is idempotent on its own)."""
    for pattern in ("outcomes-*.jsonl", "dead-letters-*.jsonl", "differences-*.jsonl"):
        for old in out_dir.glob(pattern):
            old.unlink()


def pipeline_options(config: RunConfig) -> PipelineOptions:
    options = PipelineOptions(list(config.beam_args))
    standard = options.view_as(StandardOptions)
    if config.subscription is not None:
        standard.streaming = True
        if standard.runner in (None, "DirectRunner"):
            # The switching DirectRunner would try Prism first, which downloads a binary.
            standard.runner = "BundleBasedDirectRunner"
    return options


def build(pipeline: beam.Pipeline, config: RunConfig) -> None:
    if config.subscription is not None:
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
        ),
        store_sink=WriteActivities(store_uri),
        outcome_sink=WriteJsonLines(outcomes_prefix, "outcomes_written"),
        dead_letter_sink=WriteJsonLines(dead_prefix, "dead_letters_written"),
        outbox_sink=_outbox_sink(config),
    )


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


def effective_store_uri(config: RunConfig) -> str:
    """The store the graph writes and reads: --store alone; with --mode legacy the legacy
    store alone; with --mode passive or active both, side by side, differences reported
    into the output directory (orion/store/migrating.py)."""
    if config.mode is None:
        return config.store_uri
    if not config.legacy_store_uri:
        raise ValueError("--mode needs --legacy-store mysql://USER:PASSWORD@HOST:PORT/DB")
    if config.mode == "legacy":
        return config.legacy_store_uri
    from orion.store.migrating import migration_store_uri

    return migration_store_uri(config.mode, config.legacy_store_uri, config.store_uri, config.out_dir)


def counters(result) -> dict[str, int]:
    """Orion's counters, summed over the steps that report them."""
    totals: dict[str, int] = collections.Counter()
    for found in result.metrics().query()["counters"]:
        if found.key.metric.namespace == METRICS_NAMESPACE:
            value = found.committed if found.committed is not None else found.attempted
            totals[found.key.metric.name] += value or 0
    return dict(totals)


def render_summary(totals: dict[str, int], seconds: float) -> str:
    read = totals.get("events_read", 0)
    dead = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("dead_letters:")}
    fired = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("fired:")}
    lines = [
        f"events read:      {read}",
        f"stored:           {totals.get('stored', 0)}",
        f"duplicates:       {totals.get('duplicates', 0)}",
        f"dead letters:     {sum(dead.values())}"
        + "".join(f"\n  {reason}: {n}" for reason, n in sorted(dead.items())),
        f"outcomes:         {totals.get('outcomes', 0)} ({totals.get('qualified', 0)} qualified)",
        "campaigns fired (top 10):",
    ]
    top = sorted(fired.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    lines += [f"  {n:6d}  {name}" for name, n in top] or ["  none"]
    if "leads_seeded_from_store" in totals:
        lines.append(f"leads seeded:     {totals['leads_seeded_from_store']} (history counters read from the store)")
    if "migration_differences" in totals:
        kinds = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("migration_differences:")}
        lines.append(f"store differences: {totals['migration_differences']} (differences-*.jsonl)"
                     + "".join(f"\n  {kind}: {n}" for kind, n in sorted(kinds.items())))
    lines += _flow_summary(totals)
    rate = read / seconds if seconds > 0 else 0.0
    lines.append(f"elapsed:          {seconds:.2f} s ({rate:,.0f} events/s)")
    return "\n".join(lines)


def _flow_summary(totals: dict[str, int]) -> list[str]:
    """Campaign flows (with an outbox): what was queued, held and dead-lettered. The
    stored count above includes the activities flow steps generated."""
    if "emails_requested" not in totals and "flow_activities" not in totals and "outbox_queued" not in totals:
        return []
    held = {name.split(":", 1)[1]: n for name, n in totals.items() if name.startswith("emails_held:")}
    return [
        "campaign flows:",
        f"  emails queued:     {totals.get('queued_emails', 0)} ({totals.get('emails_assembled', 0)} assembled)",
        f"  emails held:       {totals.get('queued_held', 0)}"
        + (" (held back this run: " + ", ".join(f"{reason} {n}" for reason, n in sorted(held.items())) + ")"
           if held else ""),
        f"  webhooks queued:   {totals.get('queued_webhooks', 0)}",
        f"  already queued:    {totals.get('outbox_duplicates', 0)} (by an earlier run; not queued twice)",
        f"  flow activities:   {totals.get('flow_activities', 0)} (stored with the history)",
        f"  flow dead letters: {totals.get('flow_dead_letters', 0)} (among the dead letters above)",
    ]


def run(config: RunConfig, clock: Callable[[], float] = time.monotonic, out=None) -> dict[str, int]:
    """Run the graph; print progress and the summary (to `out`, default: the standard
    output at call time); return the counters."""
    out = sys.stdout if out is None else out
    config.out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_outputs(config.out_dir)
    options = pipeline_options(config)
    started = clock()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    result = pipeline.run()
    if config.subscription is None:
        result.wait_until_finish()
    else:
        _watch_streaming(result, config, started, clock, out)
    totals = counters(result)
    print(render_summary(totals, clock() - started), file=out)
    if config.outbox_uri:
        print(f"outbox:       {config.outbox_uri}", file=out)
    return totals


def _watch_streaming(result, config: RunConfig, started: float, clock, out) -> None:
    """Stream until the duration passes or the user interrupts, with a summary line
    every few seconds; then stop the pipeline."""
    deadline = None if config.duration_s is None else started + config.duration_s
    last = started
    try:
        while deadline is None or clock() < deadline:
            time.sleep(0.5)
            if clock() - last >= SUMMARY_EVERY_SECONDS:
                last = clock()
                totals = counters(result)
                print(f"... {totals.get('events_read', 0):,} events read, {totals.get('stored', 0):,} stored, "
                      f"{totals.get('qualified', 0):,} qualified", file=out, flush=True)
    except KeyboardInterrupt:
        print("stopping ...", file=out)
    finally:
        _stop(result)


def _stop(result, wait_s: float = STOP_WAIT_SECONDS) -> None:
    """Cancel a streaming run without waiting more than `wait_s` for the runner: the local
    runner's cancel joins a worker that may sit in a Pub/Sub pull for up to 30 s, which
    made `--duration 10` take 30. Its workers are daemon threads; they end with the process."""
    stopper = threading.Thread(target=result.cancel, name="orion-stop", daemon=True)
    stopper.start()
    stopper.join(wait_s)
