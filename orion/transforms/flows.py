"""Campaign output in Beam: `AssembleEmails` (Jinja2 to MIME) and `QueueEmails` (the
outbox sink). The flows themselves run inside the one stateful step per lead
(orion/transforms/evaluate.py, LeadSteps, over orion.leadstep), which emits the email
requests, held emails and webhook calls these transforms turn into outbox records.

    orion run --outbox sqlite:///orion-data/outbox.db
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from orion.campaigns.flows import EmailRequest
from orion.campaigns.outbox import RECORD_KINDS
from orion.deadletters import DeadLetter
from orion.transforms.intake import DEAD, METRICS_NAMESPACE


class _AssembleEmailsFn(beam.DoFn):
    """EmailRequest -> AssembledEmail; a lead whose template fails goes to DEAD with the
    reason (template_unsafe, template_failed, template_missing, bad_email_address)."""

    def __init__(self, rules_dir: str, template_dirs: tuple[str, ...], sender):
        self.rules_dir = rules_dir
        self.template_dirs = template_dirs
        self.sender = sender

    def setup(self) -> None:
        from orion.campaigns.email import EmailAssembler, SenderSettings
        from orion.rules.shared import shared_rules

        # The rules compiled once per worker, as the lead step's (the tenants' email limits).
        self.assembler = EmailAssembler(self.rules_dir, self.template_dirs, self.sender or SenderSettings(),
                                        rules=shared_rules(self.rules_dir, tuple(self.template_dirs)))
        self.counters: dict = {}

    def process(self, request: EmailRequest):
        from orion.campaigns.email import assemble_one

        made, counts = assemble_one(self.assembler, request)
        for name, n in counts.items():
            counter = self.counters.get(name)
            if counter is None:
                counter = self.counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
            counter.inc(n)
        yield beam.pvalue.TaggedOutput(DEAD, made) if isinstance(made, DeadLetter) else made


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

    KINDS = RECORD_KINDS

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
        from orion.campaigns.outbox import outbox_record

        kind, record = outbox_record(item)
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
