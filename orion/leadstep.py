"""One stateful step per lead, engine-neutral: sequencing, deduplication, evaluation,
campaign flows and the durable profile share one keyed state (`LeadRecord`), and each
activity is evaluated once.

The engines keep a LeadRecord per (tenant, lead) and a buffer of arrived activities, and
call `LeadStep`:

- `arrival(released, seen, activity)` when an activity arrives: None to buffer it, or
  what it is instead (a duplicate, or a `late` dead letter);
- `release(record, tenant, lead, pending, up_to)` when their watermark has passed `up_to`: the due
  activities in event-time order, each evaluated once, the flows it qualifies the lead
  for run inline (flow-generated activities evaluated inline up to the cascade depth);
- `wake(record, tenant, lead, now)` when a flow's wait is due (an event-time timer);
- `replay(record, activities, horizon)` for a bounded input: a lead's whole input at
  once, then the waits due by the input's horizon.

Each call returns the new record and a `StepResult`: what to emit, as (tag, value) pairs
in order, and counter increments under a fixed, bounded set of names. The engines only
map the tags to their outputs (Beam TaggedOutputs, Flink side outputs) and the counts to
their metrics. A call that changed the record also emits the lead's profile (PROFILE),
which the engine writes to the store in batches.

A lead new to a job is seeded from the store: its profile (orion.profiles), and its
history counters from the stored activities (orion.seeding). A replay of activities the
profile has already been through is recognised by the profile's progress and changes
nothing, so replaying an input leaves the same profile, and two runs over consecutive
inputs give what one run over both gives.

Event time never passes the input: a bounded run resumes the waits due by its horizon
(the newest activity of the whole input); a later wait stays in the lead's profile with
its wake-up time, and the next run (or a streaming job) that reaches that time resumes it.

    python -c "from orion.leadstep import LeadStep; help(LeadStep)"
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, NamedTuple, Sequence

from orion.activities import Activity
from orion.campaigns.flows import FlowEngine, FlowResult, LeadFlows
from orion.deadletters import DeadLetter
from orion.profiles import (
    EMPTY_RECORD, LeadRecord, Origin, ProfileError, decode_profile, encode_profile, with_history,
)
from orion.rules import evaluate
from orion.rules.index import RuleSet
from orion.seeding import seed_states
from orion.sequencing import (
    DEFAULT_DEDUP_SPAN_MS,
    DUPLICATE,
    LATE,
    LeadProgress,
    classify_behind,
    late_detail,
    release as release_ready,
    sorts_before_released,
)
from orion.settings import DEFAULT_MAX_CASCADE_DEPTH, DEFAULT_MAX_PENDING
from orion.store.base import StoredProfile

# What a step emits, by tag. Each engine maps a tag to one output.
OUTCOME = "outcomes"  # orion.rules.model.Outcome
STORE = "store"  # Activity: input and flow-generated, in the lead's evaluation order
DEAD = "dead"  # DeadLetter
EMAIL = "emails"  # orion.campaigns.flows.EmailRequest, to assemble
HELD = "held"  # HeldEmail, to the outbox
WEBHOOK = "webhooks"  # WebhookCall, to the outbox
PROFILE = "profiles"  # orion.store.base.StoredProfile, to the profile store

SEQUENCER_SOURCE = "sequencer"  # DeadLetter.source of late activities
PROFILE_SOURCE = "profile"  # DeadLetter.source of an unreadable stored profile
BAD_PROFILE = "bad_profile"  # the reason, when a stored profile cannot be read

# A time every wait is due by (9999-12-31T23:59:59.999Z): a streaming job asks the store
# for the leads waiting until then, that is, every waiting lead.
END_OF_TIME_MS = 253_402_300_799_999


# Every counter name a step uses (bounded: no name per campaign, tenant or lead).
COUNTERS = (
    "evaluated", "outcomes", "qualified", "duplicates", "dead_letters", "dead_letters:late",
    "emails_requested", "emails_held", "webhooks", "flow_activities", "flow_dead_letters",
    "leads_seeded_from_store", "profiles_loaded", "profiles_emitted", "hot_lead_releases", "profiles_rolled_back",
)


class StepResult:
    """What one or more step calls produced: `emitted`, (tag, value) pairs in order, and
    `counts`, counter name -> increment. Reasons add a bounded family of names:
    `dead_letters:REASON` and `emails_held:REASON`."""

    __slots__ = ("emitted", "counts")

    def __init__(self):
        self.emitted: list[tuple[str, object]] = []
        self.counts: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

    def emit(self, tag: str, value) -> None:
        self.emitted.append((tag, value))

    def dead(self, letter: DeadLetter) -> None:
        self.emitted.append((DEAD, letter))
        self.count("dead_letters")
        self.count(f"dead_letters:{letter.reason}")


class WakeUp(NamedTuple):
    """A lead whose stored profile has a flow waiting until `wake_at`, sent to the step
    keyed like an activity, so the lead's waits resume in a job that has no state of it:
    a bounded run, for the leads whose waits its input's horizon passes; a streaming job,
    for the leads waiting when it starts."""

    tenant: str
    lead_id: str
    wake_at: int


class SeedRequest(NamedTuple):
    """A lead to seed from the store: `first_ms` is the time of the first thing the job
    will do for it (its first activity, or the horizon a wake-up resumes to)."""

    tenant: str
    lead_id: str
    first_ms: int


class Lineage(NamedTuple):
    """A job that can lose state it already acted on, as the step knows it: a streaming
    Flink job restored from a checkpoint, or a streaming Beam graph whose bundle is
    retried after its first attempt wrote profiles. `writer`, the id of its lineage (the
    same in every attempt of the job, in a Flink job restored from one of its retained
    checkpoints, and in every bundle of a Beam graph); `restored`, whether this attempt
    may have begun from older state than its lineage wrote (Beam: always);
    `state_ttl_ms`, how long the job keeps a silent lead's state.

    With a lineage, every profile the step writes carries its origin (orion.profiles
    Origin): the lineage, and the profile as the lineage first read it. A lead the state
    does not know, whose profile the same lineage wrote less than `state_ttl_ms` ago,
    was lost with the state by a restore: the lineage wrote the profile after the
    checkpoint the attempt restored, and the input from there on is read again. The lead
    then starts from that earlier profile (`profiles_rolled_back`) and its activities are
    evaluated again, rather than taken for a replay of what the profile has been
    through: their outcomes, dropped with the failed attempt's uncommitted files, are
    written again, and what they queue again the outbox keeps once. A profile older than
    the state's TTL is the lead's own: its state expired. Outside that window (a job
    restored from a checkpoint older than the TTL) a lost lead goes on from its profile,
    as without a lineage: the activities it has been through count as duplicates."""

    writer: str
    restored: bool
    state_ttl_ms: int


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class LeadStep:
    """The step, holding only the compiled rules and the settings. See the module doc."""

    def __init__(self, rules: RuleSet, *, dedup_span_ms: int = DEFAULT_DEDUP_SPAN_MS, run_flows: bool = True,
                 max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH, max_pending: int = DEFAULT_MAX_PENDING,
                 lineage: Lineage | None = None, clock: Callable[[], int] = wall_clock_ms):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.rules = rules
        self.lineage = lineage
        self.clock = clock
        self.dedup_span_ms = dedup_span_ms
        self.run_flows = run_flows
        self.max_pending = max_pending
        self.engine = FlowEngine(rules, max_cascade_depth)

    # arrival and release (streaming) ------------------------------------------------

    def arrival(self, released: tuple[int, str] | None, seen, activity: Activity, result: StepResult) -> bool:
        """Whether to buffer an arriving activity. Not when it sorts before what the lead
        has already evaluated: then it is a duplicate (counted) or late (a dead letter).
        `seen` is a callable giving the lead's recent event ids, read only then."""
        if not sorts_before_released(released, activity):
            return True
        self._behind(LeadProgress(released, seen() or {}), activity, result)
        return False

    def over_budget(self, buffered: int, result: StepResult) -> bool:
        """Whether a lead with `buffered` activities waiting must be released now (see
        DEFAULT_MAX_PENDING); counted as a hot-lead release when it must."""
        if buffered <= self.max_pending:
            return False
        result.count("hot_lead_releases")
        return True

    def _behind(self, progress: LeadProgress, activity: Activity, result: StepResult) -> None:
        if classify_behind(progress, activity) == DUPLICATE:
            result.count("duplicates")
            return
        result.dead(DeadLetter(activity.to_json_dict(), LATE, late_detail(activity, progress.released),
                               SEQUENCER_SOURCE))

    def release(self, record: LeadRecord, tenant: str, lead_id: str, pending: Iterable[Activity],
                up_to: int | None, result: StepResult) -> tuple[LeadRecord, list[Activity]]:
        """Evaluate the lead's buffered activities due by `up_to` (None: all) in order;
        returns the new record and the activities still buffered, in order."""
        # What the record has already been through is a redelivery or late: a lead seeded
        # from its profile while activities of it were buffered can have some.
        changed, rest = self._release(record, self.ready_of(record, pending, result), up_to, result)
        if changed is not record:
            self._emit_profile(tenant, lead_id, changed, result)
        return changed, rest

    def _release(self, record: LeadRecord, pending: Iterable[Activity], up_to: int | None,
                 result: StepResult) -> tuple[LeadRecord, list[Activity]]:
        ready, rest, duplicates, progress = release_ready(record.progress, pending, up_to, self.dedup_span_ms)
        result.count("duplicates", duplicates)
        if progress is record.progress:
            return record, rest
        return record._replace(progress=progress, flows=self._evaluate(record.flows, ready, result)), rest

    def wake(self, record: LeadRecord, tenant: str, lead_id: str, now: int, result: StepResult) -> LeadRecord:
        """Resume every flow of the lead waiting until `now` or earlier, each at its own
        wake-up time."""
        if not self.run_flows or record.flows.next_wake() is None or record.flows.next_wake() > now:
            return record
        flows, found = self.engine.wake(record.flows, tenant, lead_id, now)
        self._emit_flows(found, result)
        record = record._replace(flows=flows)
        self._emit_profile(tenant, lead_id, record, result)
        return record

    # bounded input -----------------------------------------------------------------

    def replay(self, record: LeadRecord, tenant: str, lead_id: str, activities: Sequence[Activity],
               horizon: int | None, result: StepResult) -> LeadRecord:
        """A lead's whole bounded input: what sorts before the profile's progress is a
        duplicate or late; the rest is evaluated in order; then the waits due by
        `horizon` resume (None: none)."""
        before = record
        ready = self.ready_of(record, activities, result)
        if ready:
            record, _ = self._release(record, ready, None, result)
        if horizon is not None and self.run_flows:
            next_wake = record.flows.next_wake()
            if next_wake is not None and next_wake <= horizon:
                flows, found = self.engine.wake(record.flows, tenant, lead_id, horizon)
                self._emit_flows(found, result)
                record = record._replace(flows=flows)
        if record is not before:
            self._emit_profile(tenant, lead_id, record, result)
        return record

    def ready_of(self, record: LeadRecord, activities: Iterable[Activity], result: StepResult) -> list[Activity]:
        """The activities not behind the lead's progress; the others are counted as
        duplicates or dead-lettered as late."""
        released = record.progress.released
        if released is None:
            return list(activities)
        ready = []
        for activity in activities:
            if sorts_before_released(released, activity):
                self._behind(record.progress, activity, result)
            else:
                ready.append(activity)
        return ready

    # seeding and the profile -------------------------------------------------------

    def seed(self, store, leads: Sequence[SeedRequest], result: StepResult) -> list[LeadRecord | None]:
        """The records of leads new to the job, from the store: each lead's profile and
        its history counters before `first_ms`; None for a lead the store knows nothing
        of (with a lineage, a record with the lead's origin). The store is asked for all
        the leads together."""
        if store is None or not leads:
            return [self._adopted(None, None, lead.first_ms) for lead in leads]
        texts = store.read_profiles([(lead.tenant, lead.lead_id) for lead in leads])
        records: list[LeadRecord | None] = []
        befores: list[int] = []
        found: list[bool] = []
        for lead, text in zip(leads, texts):
            record, before = None, lead.first_ms
            if text is not None:
                try:
                    record = decode_profile(text)
                    result.count("profiles_loaded")
                except ProfileError as err:
                    # The lead starts afresh rather than stopping the job; the profile is
                    # kept in the dead letter, so it can be repaired and nothing is lost.
                    result.dead(DeadLetter({"tenant": lead.tenant, "lead_id": lead.lead_id, "profile": text},
                                           BAD_PROFILE, f"{err}; the lead started from an empty profile",
                                           PROFILE_SOURCE))
            found.append(record is not None)
            if self.lineage is not None:
                record, before = self._own(record, lead.first_ms, result)
            records.append(record)
            befores.append(before)
        histories = seed_states(self.rules, store, [(lead.tenant, lead.lead_id, before)
                                                    for lead, before in zip(leads, befores)])
        seeded_records: list[LeadRecord | None] = []
        for record, seeded, profiled in zip(records, histories, found):
            if seeded is not None:
                record = with_history(record or EMPTY_RECORD, seeded)
            if profiled or seeded is not None:
                result.count("leads_seeded_from_store")
            seeded_records.append(record)
        return seeded_records

    def _own(self, record: LeadRecord | None, first_ms: int, result: StepResult) -> tuple[LeadRecord, int]:
        """(the record the lineage starts the lead from, the time its history counters
        are seeded up to): see Lineage."""
        lineage = self.lineage
        origin = None if record is None else record.origin
        if (origin is not None and lineage.restored and origin.writer == lineage.writer
                and self.clock() - origin.written_at < lineage.state_ttl_ms):
            try:
                prior = EMPTY_RECORD if origin.prior is None else decode_profile(origin.prior)
            except ProfileError:
                prior = None  # (written by this lineage, so never; the lead goes on from its profile)
            if prior is not None:
                result.count("profiles_rolled_back")
                return prior._replace(origin=origin._replace(written_at=0)), origin.before_ms
        return self._adopted(record, None if record is None else encode_profile(record._replace(origin=None)),
                             first_ms), first_ms

    def _adopted(self, record: LeadRecord | None, prior: str | None, first_ms: int) -> LeadRecord | None:
        if self.lineage is None:
            return record
        return (record or EMPTY_RECORD)._replace(origin=Origin(self.lineage.writer, prior, first_ms))

    def emit_profile(self, tenant: str, lead_id: str, record: LeadRecord, result: StepResult) -> None:
        self._emit_profile(tenant, lead_id, record, result)

    def _emit_profile(self, tenant, lead_id, record: LeadRecord, result: StepResult) -> None:
        if tenant is None:
            return
        rules = self.rules.tenants.get(tenant)
        text = encode_profile(record, written_at=None if record.origin is None else self.clock(),
                              decisions=None if rules is None else rules.decision_history)
        result.emit(PROFILE, StoredProfile(tenant, lead_id, text, record.flows.next_wake()))
        result.count("profiles_emitted")

    # evaluation --------------------------------------------------------------------

    def _evaluate(self, flows: LeadFlows, ready: list[Activity], result: StepResult) -> LeadFlows:
        emitted = result.emitted
        outcomes = qualified = 0
        if not self.run_flows:
            rules = self.rules
            state = flows.lead
            for activity in ready:
                state, found = evaluate(rules, state, activity)
                emitted.append((STORE, activity))
                for outcome in found:
                    outcomes += 1
                    qualified += outcome.qualified
                    emitted.append((OUTCOME, outcome))
            flows = flows._replace(lead=state)
        else:
            engine = self.engine
            for activity in ready:
                flows, found = engine.step(flows, activity)
                emitted.append((STORE, activity))
                self._emit_flows(found, result)
        result.count("evaluated", len(ready))
        result.count("outcomes", outcomes)
        result.count("qualified", qualified)
        return flows

    @staticmethod
    def _emit_flows(found: FlowResult, result: StepResult) -> None:
        """A FlowResult's records, tagged. Flow-generated activities were evaluated
        inline (their outcomes are among found.outcomes), so they count as evaluated."""
        emitted = result.emitted
        qualified = 0
        for outcome in found.outcomes:
            qualified += outcome.qualified
            emitted.append((OUTCOME, outcome))
        result.count("outcomes", len(found.outcomes))
        result.count("qualified", qualified)
        for activity in found.activities:
            emitted.append((STORE, activity))
        result.count("flow_activities", len(found.activities))
        result.count("evaluated", len(found.activities))
        for request in found.emails:
            emitted.append((EMAIL, request))
        result.count("emails_requested", len(found.emails))
        for held in found.held:
            emitted.append((HELD, held))
            result.count(f"emails_held:{held.reason}")
        result.count("emails_held", len(found.held))
        for call in found.webhooks:
            emitted.append((WEBHOOK, call))
        result.count("webhooks", len(found.webhooks))
        for letter in found.dead_letters:
            result.dead(letter)
        result.count("flow_dead_letters", len(found.dead_letters))
