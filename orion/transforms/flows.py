"""Campaign flows in Beam: `RunFlows` (stateful, per lead), `AssembleEmails` (Jinja2 to
MIME) and `QueueEmails` (the outbox sink). Thin over the engine-neutral core in
orion/campaigns: the DoFn loads a lead's LeadFlows, calls FlowEngine, stores the result
and emits.

Design. A Beam graph cannot have a cycle, yet a flow step that changes a lead must go
back through trigger evaluation. So RunFlows keeps its own copy of each lead's state:
it reads the activities SequenceAndEvaluate released (already deduplicated, on time, in
each lead's order), evaluates them with the same core evaluator (same activities, same
order: the same outcomes SequenceAndEvaluate emitted, so nothing else has to travel
between the two), and runs the flows of the qualified campaigns. Activities the flow
steps generate are evaluated inline, one cascade level deeper, up to the depth limit
(a breach is dead-lettered); they are emitted to be stored with the lead's history, and
the outcomes of evaluating them join the graph's outcomes. Wait steps are event-time
timers; the lead's place in its flows is Beam state, so on a runner that keeps state
across a restart (Dataflow update/drain, Flink savepoints) a waiting lead keeps its
place. SequenceAndEvaluate's own lead state does not see flow effects (score, lists and
data values changed by flows) until those activities are fed back through intake; see
the campaign notes in docs/campaigns.md.

    orion run --outbox sqlite:///orion-data/outbox.db
"""
from __future__ import annotations

from typing import Any, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from orion.activities import Activity, activity_sort_key
from orion.campaigns.flows import DEFAULT_MAX_CASCADE_DEPTH, EmailRequest, HeldEmail, WebhookCall
from orion.deadletters import DeadLetter
from orion.seeding import open_initialised_store, seed_flows
from orion.transforms.intake import DEAD, METRICS_NAMESPACE

HELD = "held"
WEBHOOKS = "webhooks"
GENERATED = "generated"
OUTCOMES = "outcomes"


def _at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class _RunFlowsFn(beam.DoFn):
    """Runs each lead's campaign flows.

    State, per (tenant, lead):
      PENDING   bag of (input timestamp in micros, activity) not yet processed;
      DUE       when FLUSH is set for, so it only ever moves earlier;
      DONE      sort key (occurred_at, event_id) of the last activity processed (a
                redelivered one is skipped);
      FLOWS     orion.campaigns.flows.LeadFlows: the lead's state, its running flows
                (next step, wake-up time) and recent email times (limits);
      WAKE_AT   when WAKE is set for.
    Timers (event time):
      FLUSH     when the watermark passes the input timestamp of buffered activities:
                everything before it has arrived, so they are processed in order;
      WAKE      the earliest wake-up time of a waiting flow.
    Outputs: email requests (main), HELD, WEBHOOKS, GENERATED activities, OUTCOMES of
    evaluating them, DEAD letters.
    """

    PENDING = BagStateSpec("pending", PickleCoder())
    DUE = ReadModifyWriteStateSpec("due", PickleCoder())
    DONE = ReadModifyWriteStateSpec("done", PickleCoder())
    FLOWS = ReadModifyWriteStateSpec("flows", PickleCoder())
    WAKE_AT = ReadModifyWriteStateSpec("wake_at", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
    WAKE = TimerSpec("wake", TimeDomain.WATERMARK)

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], max_cascade_depth: int,
                 seed_store_uri: str | None = None):
        self.seed_store_uri = seed_store_uri
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs
        self.max_cascade_depth = max_cascade_depth
        self.requested = Metrics.counter(METRICS_NAMESPACE, "emails_requested")
        self.held = Metrics.counter(METRICS_NAMESPACE, "emails_held")
        self.webhooks = Metrics.counter(METRICS_NAMESPACE, "webhooks")
        self.generated = Metrics.counter(METRICS_NAMESPACE, "flow_activities")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.flow_dead = Metrics.counter(METRICS_NAMESPACE, "flow_dead_letters")

    def setup(self) -> None:
        from orion.campaigns.flows import FlowEngine
        from orion.rules.shared import shared_rules
        from orion.transforms import state_sizing

        state_sizing.install()
        self.engine = FlowEngine(shared_rules(self.rules_dir, self.template_dirs), self.max_cascade_depth)
        self.seed_store = open_initialised_store(self.seed_store_uri)

    def teardown(self) -> None:
        store = getattr(self, "seed_store", None)
        if store is not None:
            store.close()

    def process(self, element: tuple[tuple[str, str], Activity], timestamp=beam.DoFn.TimestampParam,
                pending=beam.DoFn.StateParam(PENDING), due=beam.DoFn.StateParam(DUE),
                flush=beam.DoFn.TimerParam(FLUSH)):
        _, activity = element
        pending.add((timestamp.micros, activity))
        current = due.read()
        if current is None or timestamp < current:
            flush.set(timestamp)
            due.write(timestamp)
        return ()

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING), due=beam.DoFn.StateParam(DUE),
                 done=beam.DoFn.StateParam(DONE), flows=beam.DoFn.StateParam(FLOWS),
                 wake_at=beam.DoFn.StateParam(WAKE_AT), flush=beam.DoFn.TimerParam(FLUSH),
                 wake=beam.DoFn.TimerParam(WAKE)):
        buffered = list(pending.read())
        ready = sorted((a for t, a in buffered if t <= fired.micros), key=activity_sort_key)
        rest = [(t, a) for t, a in buffered if t > fired.micros]
        pending.clear()
        for item in rest:
            pending.add(item)
        if rest:
            next_due = Timestamp(micros=min(t for t, _ in rest))
            flush.set(next_due)
            due.write(next_due)
        else:
            due.clear()
        last = done.read()
        state = flows.read()
        if state is None and self.seed_store is not None and ready:
            # As SequenceAndEvaluate does: a lead new to the graph starts from its stored history.
            first = ready[0]
            state = seed_flows(self.engine.rules, self.seed_store, first.tenant, first.lead_id, first.occurred_at)
        for activity in ready:
            sort_key = activity_sort_key(activity)
            if last is not None and sort_key <= last:
                continue  # a redelivery: already processed
            last = sort_key
            state, result = self.engine.process_activity(state, activity)
            yield from self._emit(result)
        if last is not None:
            done.write(last)
        if state is not None:
            flows.write(state)
            self._schedule(state, wake_at, wake)

    @on_timer(WAKE)
    def on_wake(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                flows=beam.DoFn.StateParam(FLOWS), wake_at=beam.DoFn.StateParam(WAKE_AT),
                wake=beam.DoFn.TimerParam(WAKE)):
        tenant, lead_id = key
        state = flows.read()
        wake_at.clear()
        if state is None:
            return
        state, result = self.engine.wake(state, tenant, lead_id, fired.micros // 1000)
        yield from self._emit(result)
        flows.write(state)
        self._schedule(state, wake_at, wake)

    @staticmethod
    def _schedule(state, wake_at, wake) -> None:
        next_wake = state.next_wake()
        if next_wake is None:
            return
        current = wake_at.read()
        if current is None or next_wake < current:
            wake.set(_at(next_wake))
            wake_at.write(next_wake)

    def _emit(self, result):
        for request in result.emails:
            self.requested.inc()
            yield request
        for held in result.held:
            self.held.inc()
            Metrics.counter(METRICS_NAMESPACE, f"emails_held:{held.reason}").inc()
            yield beam.pvalue.TaggedOutput(HELD, held)
        for call in result.webhooks:
            self.webhooks.inc()
            yield beam.pvalue.TaggedOutput(WEBHOOKS, call)
        for activity in result.activities:
            self.generated.inc()
            yield beam.pvalue.TaggedOutput(GENERATED, activity)
        for outcome in result.outcomes:
            if outcome.qualified:
                Metrics.counter(METRICS_NAMESPACE, f"fired:{outcome.tenant}/{outcome.campaign}").inc()
            yield beam.pvalue.TaggedOutput(OUTCOMES, outcome)
        for dead in result.dead_letters:
            self.dead.inc()
            self.flow_dead.inc()
            Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{dead.reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead)


class RunFlows(beam.PTransform):
    """Activities as SequenceAndEvaluate released them -> FlowOutputs (email requests,
    held emails, webhook calls, generated activities, their outcomes, dead letters)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), *,
                 max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH, seed_store_uri: str | None = None):
        super().__init__()
        self.fn = _RunFlowsFn(rules_dir, tuple(template_dirs), max_cascade_depth, seed_store_uri)

    def expand(self, activities):
        keyed = activities | "KeyByLead" >> beam.Map(
            lambda a: ((a.tenant, a.lead_id), a)).with_output_types(Tuple[Tuple[str, str], Any])
        results = keyed | "RunFlows" >> beam.ParDo(self.fn).with_outputs(
            HELD, WEBHOOKS, GENERATED, OUTCOMES, DEAD, main="emails")
        return FlowOutputs(results.emails, results[HELD], results[WEBHOOKS], results[GENERATED],
                           results[OUTCOMES], results[DEAD])


class FlowOutputs(tuple):
    """The PCollections RunFlows returns, by name."""

    def __new__(cls, emails, held, webhooks, activities, outcomes, dead_letters):
        made = super().__new__(cls, (emails, held, webhooks, activities, outcomes, dead_letters))
        made.emails, made.held, made.webhooks = emails, held, webhooks
        made.activities, made.outcomes, made.dead_letters = activities, outcomes, dead_letters
        return made


class _AssembleEmailsFn(beam.DoFn):
    """EmailRequest -> AssembledEmail; a lead whose template fails goes to DEAD with the
    reason (template_unsafe, template_failed, template_missing, bad_email_address)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], sender):
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs
        self.sender = sender
        self.assembled = Metrics.counter(METRICS_NAMESPACE, "emails_assembled")
        self.dead = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self.flow_dead = Metrics.counter(METRICS_NAMESPACE, "flow_dead_letters")

    def setup(self) -> None:
        from orion.campaigns.email import EmailAssembler, SenderSettings

        self.assembler = EmailAssembler(self.rules_dir, self.template_dirs, self.sender or SenderSettings())

    def process(self, request: EmailRequest):
        from orion.campaigns.email import ASSEMBLY_SOURCE, AssemblyError

        try:
            email = self.assembler.assemble(request)
        except AssemblyError as err:
            self.dead.inc()
            self.flow_dead.inc()
            Metrics.counter(METRICS_NAMESPACE, f"dead_letters:{err.reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(request._asdict(), err.reason, err.detail,
                                                            ASSEMBLY_SOURCE))
            return
        self.assembled.inc()
        yield email


class AssembleEmails(beam.PTransform):
    """EmailRequests -> (AssembledEmails, dead letters)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...] = (), sender=None):
        super().__init__()
        self.fn = _AssembleEmailsFn(rules_dir, tuple(template_dirs), sender)

    def expand(self, requests):
        results = requests | "Assemble" >> beam.ParDo(self.fn).with_outputs(DEAD, main="emails")
        return results.emails, results[DEAD]


class _QueueEmailsFn(beam.DoFn):
    """Buffers a bundle's records and queues them in the outbox every `batch_size` and
    at the end of the bundle. The outbox ignores a key it already has, so a retried
    bundle queues nothing twice. Counters: `outbox_queued` (new records),
    `outbox_duplicates` (already there), and the new ones by kind: `queued_emails`,
    `queued_held`, `queued_webhooks`."""

    KINDS = ("queued_emails", "queued_held", "queued_webhooks")

    def __init__(self, outbox_uri: str, batch_size: int):
        self.outbox_uri = outbox_uri
        self.batch_size = batch_size
        self.queued = Metrics.counter(METRICS_NAMESPACE, "outbox_queued")
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "outbox_duplicates")
        self.by_kind = {kind: Metrics.counter(METRICS_NAMESPACE, kind) for kind in self.KINDS}

    def setup(self) -> None:
        from orion.campaigns.outbox import open_outbox

        self.outbox = open_outbox(self.outbox_uri)
        self.outbox.init()

    def start_bundle(self) -> None:
        self.batches = {kind: [] for kind in self.KINDS}

    def process(self, item):
        from orion.campaigns.outbox import email_record, held_record, webhook_record

        if isinstance(item, HeldEmail):
            kind, record = "queued_held", held_record(item)
        elif isinstance(item, WebhookCall):
            kind, record = "queued_webhooks", webhook_record(item)
        else:
            kind, record = "queued_emails", email_record(item)
        batch = self.batches[kind]
        batch.append(record)
        if len(batch) >= self.batch_size:
            self._flush(kind)
        return ()

    def finish_bundle(self) -> None:
        for kind in self.KINDS:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        batch = self.batches[kind]
        if not batch:
            return
        self.batches[kind] = []
        new = self.outbox.queue(batch)
        self.queued.inc(new)
        self.by_kind[kind].inc(new)
        self.duplicates.inc(len(batch) - new)

    def teardown(self) -> None:
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            outbox.close()


class QueueEmails(beam.PTransform):
    """AssembledEmails, HeldEmails and WebhookCalls -> the outbox at `outbox_uri`
    (mysql://, sqlite:///, eml:///), idempotently."""

    def __init__(self, outbox_uri: str, batch_size: int = 500):
        super().__init__()
        self.outbox_uri = outbox_uri
        self.batch_size = batch_size

    def expand(self, records):
        return records | "Queue" >> beam.ParDo(_QueueEmailsFn(self.outbox_uri, self.batch_size))
