"""The activity graph: activities -> one stateful step per lead (ordering, dedup, one
evaluation per activity, campaign flows, the lead's profile) -> store, profiles,
outcomes and dead letters, and (with an outbox sink) emails assembled -> outbox. Sources
and sinks are passed in, so the same graph runs from files, from Pub/Sub, or from a
TestStream in tests, and writes wherever the caller says.

    orion run                      # builds it over the sample files, on the DirectRunner
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from orion.sequencing import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_DEDUP_SPAN_MS
from orion.settings import DEFAULT_LEAD_TTL_DAYS, DEFAULT_MAX_CASCADE_DEPTH, DEFAULT_MAX_PENDING
from orion.transforms import dofn_specs
from orion.transforms.evaluate import KeyByLead, LeadSteps
from orion.transforms.flows import AssembleEmails


class GraphSettings(NamedTuple):
    rules_dir: str
    template_dirs: tuple[str, ...] = ()
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    dedup_span_ms: int = DEFAULT_DEDUP_SPAN_MS
    bounded: bool = True
    max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH  # flows: how deep campaigns may trigger campaigns
    sender: object = None  # flows: orion.campaigns.email.SenderSettings (None: the defaults)
    # The store a lead new to the graph is seeded from (its profile and history), and
    # where bounded runs find leads waiting in a flow; None: no reads.
    seed_store_uri: str | None = None
    # The runner keeps one watermark per stage for all keys in the process (the local
    # streaming DirectRunner): a release timer then frees every lead's due activities.
    one_watermark_per_stage: bool = False
    lead_ttl_days: int = DEFAULT_LEAD_TTL_DAYS  # streaming: a silent lead's state expires
    max_pending: int = DEFAULT_MAX_PENDING  # a hot lead's buffer: released at once past this
    # Where the roll-ups go (orion.transforms.rollups, orion.store.rollups_base); None: none.
    rollup_store_uri: str | None = None
    # Streaming: the lineage id written into each profile's origin (orion.leadstep
    # Lineage); None: a new one per graph.
    lineage: str | None = None


class GraphOutputs(NamedTuple):
    outcomes: beam.PCollection  # of input and flow-generated activities
    stored: beam.PCollection  # activities to store (input and flow-generated), in each lead's order
    dead_letters: beam.PCollection  # from parsing, the lead step (late, flows), assembly and the store sink
    profiles: beam.PCollection  # lead profiles (orion.store.base.StoredProfile) to write
    emails: beam.PCollection | None = None  # with an outbox sink: the assembled emails


def build_activity_graph(
    activities: beam.PCollection,
    parse_dead_letters: beam.PCollection,
    settings: GraphSettings,
    *,
    store_sink: beam.PTransform | None = None,
    profile_sink: beam.PTransform | None = None,
    outcome_sink: beam.PTransform | None = None,
    dead_letter_sink: beam.PTransform | None = None,
    outbox_sink: beam.PTransform | None = None,
    waiting_leads: beam.PCollection | None = None,
) -> GraphOutputs:
    """Wire the graph from parsed activities (and the parser's dead letters) to the
    given sinks; returns the PCollections so tests can assert on them.

    One stateful step per lead (LeadSteps) orders, deduplicates and evaluates each
    activity once; with an outbox sink it also runs the campaign flows the lead
    qualifies for, inline, so flow effects are seen at once by the lead's next
    activity. Its outputs: the outcomes, the activities to store (the input's and those
    flow steps generated), dead letters, email requests, held emails, webhook calls and
    the lead profiles.

    `store_sink` (WriteActivities) takes the activities to store and returns the dead
    letters of the ones the store refused; they join the others before
    `dead_letter_sink`. `profile_sink` (WriteProfiles) writes the lead profiles.
    `outbox_sink` (QueueEmails) turns on campaign flows: AssembleEmails renders the
    email requests, and the sink queues the emails, held emails and webhook calls.

    `waiting_leads` (streaming, with flows): ((tenant, lead), WakeUp) of the leads waiting
    in a flow in the store when the job starts (orion.transforms.evaluate.waiting_leads),
    so that their waits resume in this job."""
    dofn_specs.install()  # Beam inspects each DoFn's methods once per class, not per call
    flows_on = outbox_sink is not None
    keyed = activities | "KeyByLead" >> KeyByLead()
    if waiting_leads is not None:
        keyed = (keyed, waiting_leads) | "WithWaitingLeads" >> beam.Flatten()
    rollups_in_step = settings.rollup_store_uri is not None and settings.bounded
    steps = LeadSteps(
        settings.rules_dir,
        settings.template_dirs,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        dedup_span_ms=settings.dedup_span_ms,
        bounded=settings.bounded,
        run_flows=flows_on,
        max_cascade_depth=settings.max_cascade_depth,
        seed_store_uri=settings.seed_store_uri,
        one_watermark_per_stage=settings.one_watermark_per_stage,
        lead_ttl_days=settings.lead_ttl_days,
        max_pending=settings.max_pending,
        lineage=settings.lineage,
        rollups=rollups_in_step,
    )
    outcomes, stored, dead, requests, held, webhooks, profiles = keyed | "LeadSteps" >> steps
    dead_letter_parts = [parse_dead_letters, dead]
    emails = None
    if flows_on:
        emails, unassembled = requests | "AssembleEmails" >> AssembleEmails(
            settings.rules_dir, settings.template_dirs, settings.sender)
        (emails, held, webhooks) | "OutboxRecords" >> beam.Flatten() | "QueueEmails" >> outbox_sink
        dead_letter_parts.append(unassembled)
    if store_sink is not None:
        # The store sink returns the dead letters of the rows the store refused.
        refused = stored | "WriteActivities" >> store_sink
        if isinstance(refused, beam.PCollection):
            dead_letter_parts.append(refused)
    if profile_sink is not None:
        # The profile sink returns the dead letters of the profiles the store refused.
        refused_profiles = profiles | "WriteProfiles" >> profile_sink
        if isinstance(refused_profiles, beam.PCollection):
            dead_letter_parts.append(refused_profiles)
    if settings.rollup_store_uri is not None:
        # Roll-ups of what the steps did; the sink returns the dead letters of rows the store refused.
        from orion.transforms.rollups import RollUpAndWrite

        # Bounded, the lead step rolls up what it stores and its outcomes itself (LeadSteps.rollup_parts).
        records = ([] if rollups_in_step else [stored, outcomes]) + ([emails, held, webhooks] if flows_on else [])
        parts = [steps.rollup_parts] if rollups_in_step else []
        dead_letter_parts.append(tuple(records + parts) | "RollUps" >> RollUpAndWrite(
            settings.rollup_store_uri, settings.rules_dir, settings.template_dirs,
            allowed_lateness_ms=settings.allowed_lateness_ms, bounded=settings.bounded, rolled_up=len(parts)))
    dead_letters = tuple(dead_letter_parts) | "AllDeadLetters" >> beam.Flatten()
    if outcome_sink is not None:
        outcomes | "WriteOutcomes" >> outcome_sink
    if dead_letter_sink is not None:
        dead_letters | "WriteDeadLetters" >> dead_letter_sink
    return GraphOutputs(outcomes, stored, dead_letters, profiles, emails)
