"""The streaming graph: activities -> per-lead ordered evaluation -> store, outcomes and
dead letters, and (with an outbox sink) campaign flows -> emails assembled -> outbox. Sources and sinks are passed in, so the same graph runs from files, from
Pub/Sub, or from a TestStream in tests, and writes wherever the caller says.

    orion run                      # builds it over the sample files, on the DirectRunner
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from orion.campaigns.flows import DEFAULT_MAX_CASCADE_DEPTH
from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
from orion.transforms.evaluate import KeyByLead, SequenceAndEvaluate
from orion.transforms.flows import AssembleEmails, FlowOutputs, RunFlows


class GraphSettings(NamedTuple):
    rules_dir: str
    template_dirs: tuple[str, ...] = ()
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    dedup_span_ms: int = DEFAULT_DEDUP_SPAN_MS
    bounded: bool = True
    max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH  # flows: how deep campaigns may trigger campaigns
    sender: object = None  # flows: orion.campaigns.email.SenderSettings (None: the defaults)
    seed_store_uri: str | None = None  # seed a new lead's history counters from this store
    # The runner keeps one watermark per stage for all keys in the process (the local
    # streaming DirectRunner): a release timer then frees every lead's due activities.
    one_watermark_per_stage: bool = False


class GraphOutputs(NamedTuple):
    outcomes: beam.PCollection
    stored: beam.PCollection  # activities, in each lead's evaluation order
    dead_letters: beam.PCollection  # from parsing, sequencing (late), flows, assembly and the store sink
    flows: FlowOutputs | None = None  # with an outbox sink: RunFlows' outputs
    emails: beam.PCollection | None = None  # with an outbox sink: the assembled emails


def build_activity_graph(
    activities: beam.PCollection,
    parse_dead_letters: beam.PCollection,
    settings: GraphSettings,
    *,
    store_sink: beam.PTransform | None = None,
    outcome_sink: beam.PTransform | None = None,
    dead_letter_sink: beam.PTransform | None = None,
    outbox_sink: beam.PTransform | None = None,
) -> GraphOutputs:
    """Wire the graph from parsed activities (and the parser's dead letters) to the
    given sinks; returns the PCollections so tests can assert on them.

    `store_sink` (WriteActivities) takes the activities in each lead's evaluation order
    and returns the dead letters of the ones the store refused; they join the parser's
    and the sequencer's before `dead_letter_sink`.

    `outbox_sink` (QueueEmails) turns on campaign flows: RunFlows runs the flows of
    the qualified campaigns over the released activities, AssembleEmails renders the
    email requests, and the sink queues the emails, held emails and webhook calls.
    The activities flow steps generate are stored with the others; the outcomes of
    evaluating them join the outcomes; flow and assembly failures join the dead
    letters."""
    outcomes, stored, late = (
        activities
        | "KeyByLead" >> KeyByLead()
        | "SequenceAndEvaluate" >> SequenceAndEvaluate(
            settings.rules_dir,
            settings.template_dirs,
            allowed_lateness_ms=settings.allowed_lateness_ms,
            dedup_span_ms=settings.dedup_span_ms,
            bounded=settings.bounded,
            seed_store_uri=settings.seed_store_uri,
            one_watermark_per_stage=settings.one_watermark_per_stage,
        )
    )
    dead_letter_parts = [parse_dead_letters, late]
    flows = emails = None
    to_store = stored
    if outbox_sink is not None:
        flows = stored | "RunFlows" >> RunFlows(
            settings.rules_dir, settings.template_dirs, max_cascade_depth=settings.max_cascade_depth,
            seed_store_uri=settings.seed_store_uri)
        emails, unassembled = flows.emails | "AssembleEmails" >> AssembleEmails(
            settings.rules_dir, settings.template_dirs, settings.sender)
        (emails, flows.held, flows.webhooks) | "OutboxRecords" >> beam.Flatten() | "QueueEmails" >> outbox_sink
        to_store = (stored, flows.activities) | "WithFlowActivities" >> beam.Flatten()
        outcomes = (outcomes, flows.outcomes) | "WithFlowOutcomes" >> beam.Flatten()
        dead_letter_parts += [flows.dead_letters, unassembled]
    if store_sink is not None:
        # The store sink returns the dead letters of the rows the store refused.
        refused = to_store | "WriteActivities" >> store_sink
        if isinstance(refused, beam.PCollection):
            dead_letter_parts.append(refused)
    dead_letters = tuple(dead_letter_parts) | "AllDeadLetters" >> beam.Flatten()
    if outcome_sink is not None:
        outcomes | "WriteOutcomes" >> outcome_sink
    if dead_letter_sink is not None:
        dead_letters | "WriteDeadLetters" >> dead_letter_sink
    return GraphOutputs(outcomes, stored, dead_letters, flows, emails)
