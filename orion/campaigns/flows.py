"""Running campaign flows for one lead, engine-neutral: a `FlowEngine` takes a lead's
`LeadFlows` (its LeadState, the flows it is in, the emails it was recently sent) and an
activity or a wake-up time, and returns the new LeadFlows and a `FlowResult`: email
requests, emails held back (with the reason), webhook calls, the activities the flow
steps generated, the outcomes of evaluating those, and dead letters.

How it works, for one activity:

1. flows waiting until the activity's time or earlier resume first (time order);
2. the activity is evaluated with the core evaluator (`orion.rules.evaluate`); every
   qualified outcome starts a run of the campaign's flow (run id: the event id);
3. a run executes its steps in order until it ends or reaches a wait. A step that
   changes the lead (change_score, change_data_value, add_to_list, remove_from_list,
   request_campaign) becomes an activity that is evaluated at once, inline, one cascade
   level deeper, so one campaign can trigger another and the next step sees the change.
   An activity deeper than `max_cascade_depth` is not applied: it goes to the dead
   letters with reason `cascade_depth`.

The cascade also has a breadth budget: the flows may generate at most the tenant's
`settings.limits.max_cascade_activities` (default 100) activities per call (one input
activity, one wake-up, one batch lead), all depths together, so campaigns that re-trigger
each other several times a step cannot fan out exponentially within the depth limit.
Past the budget no change is applied; one `cascade_budget` dead letter says so, and the
lead's other work (emails, webhooks, waits) goes on. Refused changes are reported once
per breach: one `cascade_depth` dead letter per campaign step that went too deep, with
the number of changes refused there, and one `cascade_budget` dead letter per call.

"Now" is always the activity's time or the wake-up time, never the wall clock, so the
same input gives the same output on any engine. Generated event ids are derived from
(run, campaign, step, lead), so a retry regenerates the same ids and the store keeps one
copy. The Beam adapter is orion/transforms/flows.py; a PyFlink function would load the
same LeadFlows, call the same methods and store the result.

    python -c "from orion.campaigns.flows import *; print(LeadFlows().to_json_dict())"
"""
from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from orion.activities import MS_PER_DAY, MS_PER_UNIT, Activity, format_timestamp, parse_timestamp
from orion.campaigns.choices import choice_test
from orion.deadletters import DeadLetter
from orion.rules.evaluator import evaluate, qualification_block
from orion.rules.index import RuleSet
from orion.rules.limits import tenant_limit
from orion.rules.model import EMPTY_LEAD_STATE, Campaign, LeadState, Outcome
from orion.settings import DEFAULT_MAX_CASCADE_DEPTH

WEEK_MS = 7 * MS_PER_DAY

# Dead-letter reasons of this stage, and the source it names.
CASCADE_DEPTH = "cascade_depth"
CASCADE_BUDGET = "cascade_budget"
CAMPAIGN_GONE = "campaign_gone"
FLOWS_SOURCE = "flows"

# Why an email is held back instead of queued.
HELD_PER_DAY = "communication_limit_per_day"
HELD_PER_7_DAYS = "communication_limit_per_7_days"
HELD_UNSUBSCRIBED = "unsubscribed"
HELD_EMAIL_INVALID = "email_invalid"
HELD_NO_ADDRESS = "no_email_address"


class EmailRequest(NamedTuple):
    """One email to assemble. (tenant, campaign, lead_id, run) is its idempotency key;
    `run` names the flow run and the step ("EVENT#3"), or a batch send."""

    tenant: str
    lead_id: str
    campaign: str
    run: str
    template: str
    operational: bool
    requested_at: int
    lead: dict  # lead tokens: attributes plus id and score, as of the step
    tokens: dict  # my.* program tokens (a request may override the campaign's)

    def key(self) -> tuple[str, str, str, str]:
        return (self.tenant, self.campaign, self.lead_id, self.run)


class HeldEmail(NamedTuple):
    """An email not sent: a communication limit, an unsubscribed or invalid address."""

    request: EmailRequest
    reason: str
    detail: str


class WebhookCall(NamedTuple):
    tenant: str
    lead_id: str
    campaign: str
    run: str
    name: str
    requested_at: int
    lead: dict

    def key(self) -> tuple[str, str, str, str]:
        return (self.tenant, self.campaign, self.lead_id, self.run)


class RunningFlow(NamedTuple):
    """A lead's place in one run of a campaign's flow: the next step, and while waiting
    the time it wakes up."""

    campaign: str
    run: str
    position: int
    wake_at: int | None
    depth: int  # cascade depth of the activity that started the run
    tokens: dict = {}


class LeadFlows(NamedTuple):
    """Everything flows keep per lead; plain data, so an engine can snapshot it.

    sent: times of the non-operational emails queued in the past 7 days (limits)."""

    lead: LeadState = EMPTY_LEAD_STATE
    running: tuple = ()  # RunningFlow, in the order the runs started
    sent: tuple = ()

    def next_wake(self) -> int | None:
        times = [f.wake_at for f in self.running if f.wake_at is not None]
        return min(times) if times else None

    def to_json_dict(self) -> dict:
        return {
            "lead": self.lead.to_json_dict(),
            "running": [f._asdict() for f in self.running],
            "sent": list(self.sent),
        }

    @classmethod
    def from_json_dict(cls, data: dict) -> "LeadFlows":
        return cls(
            lead=LeadState.from_json_dict(data.get("lead", {})),
            running=tuple(RunningFlow(**f) for f in data.get("running", ())),
            sent=tuple(data.get("sent", ())),
        )


def _record_sent(run: "_Run", activity: Activity) -> None:
    """An `email_sent` activity (an email a batch send queued) counts toward the lead's
    communication limits like an email its own flows sent: its time joins the lead's
    recent sends, unless it was operational. The lead step drops a redelivered activity
    by its event id, so a send fed in twice counts once."""
    if activity.type != "email_sent" or activity.attributes.get("operational") is True:
        return
    at = activity.occurred_at
    run.sent = sorted([t for t in run.sent if t > at - WEEK_MS] + [at])


class FlowResult(NamedTuple):
    emails: list
    held: list
    webhooks: list
    activities: list  # generated by flow steps, already evaluated (store them)
    outcomes: list  # of evaluating the generated activities
    dead_letters: list

    @classmethod
    def empty(cls) -> "FlowResult":
        return cls([], [], [], [], [], [])


class _Run:
    """The working state of one call: the lead as it changes, and what it produced.

    top_outcomes: whether the outcomes of evaluating the input activity itself (depth 0)
    join result.outcomes (the one stateful step emits them all); start_flows: whether a
    qualified outcome starts its campaign's flow (False: evaluation only, flows off)."""

    def __init__(self, flows: LeadFlows, tenant: str, lead_id: str, *, top_outcomes: bool = False,
                 start_flows: bool = True, budget: int = 0):
        self.top_outcomes = top_outcomes
        self.start_flows = start_flows
        self.lead = flows.lead
        self.running: dict[tuple[str, str], RunningFlow] = {(f.campaign, f.run): f for f in flows.running}
        self.sent = list(flows.sent)
        self.tenant = tenant
        self.lead_id = lead_id
        self.result = FlowResult.empty()
        self.budget = budget  # activities the flows may still generate in this call
        self.too_deep: dict[tuple[str, int], list] = {}  # (campaign, step) -> [first refused activity, count, depth]
        self.over_budget: list | None = None  # [first refused activity, its campaign and step, count]

    def finish(self, max_depth: int, budget: int) -> tuple[LeadFlows, FlowResult]:
        """The new LeadFlows and the result, with one dead letter per breach of the
        cascade limits."""
        for (campaign, position), (activity, count, depth) in self.too_deep.items():
            more = f"; {count - 1} more such change(s) refused there in this cascade" if count > 1 else ""
            self.result.dead_letters.append(DeadLetter(
                activity.to_json_dict(), CASCADE_DEPTH,
                f"step {position + 1} of campaign {campaign!r} would change lead {self.lead_id} at cascade depth "
                f"{depth}, past the limit of {max_depth} (campaigns triggering each other in a loop?); the change "
                f"was not applied{more}", FLOWS_SOURCE))
        if self.over_budget is not None:
            activity, (campaign, position), count = self.over_budget
            self.result.dead_letters.append(DeadLetter(
                activity.to_json_dict(), CASCADE_BUDGET,
                f"the flows of lead {self.lead_id} generated {budget} activities from one input activity, the "
                f"budget of tenant {self.tenant!r} (settings.limits.max_cascade_activities); {count} change(s) "
                f"from step {position + 1} of campaign {campaign!r} on were not applied (campaigns re-triggering "
                "each other?); the lead's other steps went on", FLOWS_SOURCE))
        return LeadFlows(self.lead, tuple(self.running.values()), tuple(self.sent)), self.result


def _generated_event_id(run: str, campaign: str, position: int, lead_id: str) -> str:
    digest = hashlib.sha1(f"{run}\x1f{campaign}\x1f{position}\x1f{lead_id}".encode()).hexdigest()
    return f"flow-{digest[:24]}"


def lead_tokens(lead_id: str, state: LeadState) -> dict:
    """What `lead.*` holds in a template: the attributes, the id and the score."""
    tokens = dict(state.attributes)
    tokens["id"] = lead_id
    tokens["score"] = state.score
    return tokens


class FlowEngine:
    """Runs flows against compiled rules. Holds only the rules and caches."""

    def __init__(self, rules: RuleSet, max_cascade_depth: int = DEFAULT_MAX_CASCADE_DEPTH,
                 max_cascade_activities: int | None = None):
        if max_cascade_depth < 1:
            raise ValueError("max_cascade_depth must be at least 1")
        if max_cascade_activities is not None and max_cascade_activities < 1:
            raise ValueError("max_cascade_activities must be at least 1")
        self.rules = rules
        self.max_cascade_depth = max_cascade_depth
        self.max_cascade_activities = max_cascade_activities  # None: each tenant's setting
        self._choices: dict[tuple, Any] = {}

    def cascade_budget(self, tenant: str) -> int:
        """Activities the flows may generate per call for a lead of `tenant`."""
        if self.max_cascade_activities is not None:
            return self.max_cascade_activities
        tenant_rules = self.rules.tenants.get(tenant)
        return tenant_limit(tenant_rules.limits if tenant_rules is not None else None, "max_cascade_activities")

    def _new_run(self, flows: LeadFlows, tenant: str, lead_id: str, **kw) -> _Run:
        return _Run(flows, tenant, lead_id, budget=self.cascade_budget(tenant), **kw)

    def _finish(self, run: _Run) -> tuple[LeadFlows, FlowResult]:
        return run.finish(self.max_cascade_depth, self.cascade_budget(run.tenant))

    # entry points -------------------------------------------------------------------

    def process_activity(self, flows: LeadFlows | None, activity: Activity) -> tuple[LeadFlows, FlowResult]:
        """Resume the flows due by the activity's time, then evaluate the activity and run
        the flows it qualifies the lead for."""
        run = self._new_run(flows or LeadFlows(), activity.tenant, activity.lead_id)
        self._resume_due(run, activity.occurred_at)
        _record_sent(run, activity)
        self._evaluate(run, activity, 0)
        return self._finish(run)

    def step(self, flows: LeadFlows | None, activity: Activity, *, start_flows: bool = True
             ) -> tuple[LeadFlows, FlowResult]:
        """`process_activity` for the one stateful step per lead: the activity is
        evaluated once, here, and `result.outcomes` holds the outcomes of every cascade
        depth, in the order they happened. With `start_flows` False only evaluation runs
        (the graph without an outbox): no flow starts and no wait resumes."""
        run = self._new_run(flows or LeadFlows(), activity.tenant, activity.lead_id, top_outcomes=True,
                            start_flows=start_flows)
        if start_flows:
            self._resume_due(run, activity.occurred_at)
        _record_sent(run, activity)
        self._evaluate(run, activity, 0)
        return self._finish(run)

    def wake(self, flows: LeadFlows, tenant: str, lead_id: str, now: int) -> tuple[LeadFlows, FlowResult]:
        """Resume every flow of the lead waiting until `now` or earlier."""
        run = self._new_run(flows, tenant, lead_id)
        self._resume_due(run, now)
        return self._finish(run)

    def run_flow(self, flows: LeadFlows | None, outcome: Outcome, *, depth: int = 0,
                 tokens: dict | None = None) -> tuple[LeadFlows, FlowResult]:
        """Start the campaign's flow for a qualified outcome (the evaluator has already
        recorded the run in the lead state) and run it up to its end or first wait."""
        run = self._new_run(flows or LeadFlows(), outcome.tenant, outcome.lead_id)
        self._start(run, outcome.campaign, outcome.event_id, outcome.occurred_at, depth, tokens or {})
        return self._finish(run)

    def run_batch(self, state: LeadState, tenant: str, lead_id: str, campaign: str, run_id: str,
                  now: int, tokens: dict | None = None) -> tuple[LeadFlows, FlowResult]:
        """One lead of a batch send: the campaign's flow from the start (the membership
        has already been decided by the campaign's filters)."""
        run = self._new_run(LeadFlows(lead=state), tenant, lead_id)
        self._start(run, campaign, run_id, now, 0, tokens or {})
        return self._finish(run)

    # evaluation and cascades --------------------------------------------------------

    def _evaluate(self, run: _Run, activity: Activity, depth: int) -> list[Outcome]:
        run.lead, outcomes = evaluate(self.rules, run.lead, activity)
        if depth > 0 or run.top_outcomes:
            run.result.outcomes.extend(outcomes)
        if not run.start_flows:
            return outcomes
        for outcome in outcomes:
            if outcome.qualified:
                self._start(run, outcome.campaign, activity.event_id, activity.occurred_at, depth, {})
        return outcomes

    def _change_lead(self, run: _Run, flow: RunningFlow, position: int, type_: str,
                     attributes: dict, now: int) -> list[Outcome] | None:
        """A step's change to the lead, as an activity evaluated one level deeper; None
        when that breaches the cascade depth or the call's cascade budget (not applied;
        one dead letter per breach, see _Run.finish)."""
        depth = flow.depth + 1
        if depth > self.max_cascade_depth:
            refused = run.too_deep.get((flow.campaign, position))
            if refused is None:
                run.too_deep[(flow.campaign, position)] = [
                    self._generated(run, flow, position, type_, attributes, now), 1, depth]
            else:
                refused[1] += 1
            return None
        if run.budget <= 0:
            if run.over_budget is None:
                run.over_budget = [self._generated(run, flow, position, type_, attributes, now),
                                   (flow.campaign, position), 1]
            else:
                run.over_budget[2] += 1
            return None
        run.budget -= 1
        activity = self._generated(run, flow, position, type_, attributes, now)
        run.result.activities.append(activity)
        return self._evaluate(run, activity, depth)

    @staticmethod
    def _generated(run: _Run, flow: RunningFlow, position: int, type_: str, attributes: dict, now: int) -> Activity:
        return Activity(_generated_event_id(flow.run, flow.campaign, position, run.lead_id),
                        run.tenant, run.lead_id, type_, now, attributes)

    # flows --------------------------------------------------------------------------

    def _campaign(self, tenant: str, name: str) -> Campaign | None:
        return self.rules.campaign(tenant, name)

    def _start(self, run: _Run, campaign: str, run_id: str, now: int, depth: int, tokens: dict) -> None:
        flow = RunningFlow(campaign, run_id, 0, None, depth, tokens)
        run.running[(campaign, run_id)] = flow
        self._advance(run, flow, now)

    def _resume_due(self, run: _Run, now: int) -> None:
        while True:
            due = [f for f in run.running.values() if f.wake_at is not None and f.wake_at <= now]
            if not due:
                return
            flow = min(due, key=lambda f: (f.wake_at, f.campaign, f.run))
            due_at = flow.wake_at
            flow = flow._replace(wake_at=None)
            run.running[(flow.campaign, flow.run)] = flow
            # The flow goes on at the time it was due, so what it does is the same
            # whenever the engine gets round to waking it (after a restart, say).
            self._advance(run, flow, due_at)

    def _advance(self, run: _Run, flow: RunningFlow, now: int) -> None:
        key = (flow.campaign, flow.run)
        campaign = self._campaign(run.tenant, flow.campaign)
        if campaign is None:
            del run.running[key]
            run.result.dead_letters.append(DeadLetter(
                {"tenant": run.tenant, "lead_id": run.lead_id, "flow": flow._asdict()}, CAMPAIGN_GONE,
                f"campaign {flow.campaign!r} is no longer in the rules; lead {run.lead_id} left its flow "
                f"at step {flow.position + 1}", FLOWS_SOURCE))
            return
        steps = campaign.flow
        position = flow.position
        while position < len(steps):
            action = self._action(run, campaign, position, steps[position], now)
            position += 1
            if action is not None:
                kind, body = action
                wake_at = self._do(run, flow, position - 1, kind, body, now)
                if key not in run.running:  # removed from its own flow
                    return
                if wake_at is not None:
                    run.running[key] = flow._replace(position=position, wake_at=wake_at)
                    return
        run.running.pop(key, None)

    def _action(self, run: _Run, campaign: Campaign, position: int, step: dict, now: int):
        """(kind, body) of the step as it applies to this lead now, or None."""
        for j, choice in enumerate(step.get("choices", ())):
            cache_key = (campaign.tenant, campaign.name, position, j)
            test = self._choices.get(cache_key)
            if test is None:
                tenant = self.rules.tenants.get(campaign.tenant)
                test = self._choices[cache_key] = choice_test(choice, tenant.lead_attributes if tenant else {})
            if test(run.lead, now):
                return next(iter(choice["then"].items()))
        for kind, body in step.items():
            if kind != "choices":
                return kind, body
        return None

    def _do(self, run: _Run, flow: RunningFlow, position: int, kind: str, body: dict, now: int) -> int | None:
        """Carry out one step; the wake-up time if it is a wait that has not passed."""
        lead = run.lead
        if kind == "send_email":
            self._send_email(run, flow, position, body, now)
        elif kind == "change_score":
            new_score = body["set"] if "set" in body else lead.score + body["delta"]
            self._change_lead(run, flow, position, "change_score",
                              {"delta": new_score - lead.score, "new_score": new_score}, now)
        elif kind == "change_data_value":
            attribute, value = body["attribute"], body["value"]
            old = lead.attributes.get(attribute)
            if old != value:
                self._change_lead(run, flow, position, "data_value_changes",
                                  {"attribute": attribute, "old_value": old, "new_value": value}, now)
        elif kind == "add_to_list":
            if body["list"] not in lead.lists:
                self._change_lead(run, flow, position, "added_to_list", {"list": body["list"]}, now)
        elif kind == "remove_from_list":
            if body["list"] in lead.lists:
                self._change_lead(run, flow, position, "removed_from_list", {"list": body["list"]}, now)
        elif kind == "wait":
            wake_at = (now + body["duration"]["n"] * MS_PER_UNIT[body["duration"]["unit"]]
                       if "duration" in body else parse_timestamp(body["until"]))
            return wake_at if wake_at > now else None
        elif kind == "remove_from_flow":
            names = set(body["campaigns"])
            for key in [k for k in run.running if k[0] in names]:
                del run.running[key]
        elif kind == "request_campaign":
            self._request_campaign(run, flow, position, body["campaign"], now)
        elif kind == "webhook":
            run.result.webhooks.append(WebhookCall(run.tenant, run.lead_id, flow.campaign,
                                                   f"{flow.run}#{position}", body["name"], now,
                                                   lead_tokens(run.lead_id, lead)))
        return None

    def _request_campaign(self, run: _Run, flow: RunningFlow, position: int, target: str, now: int) -> None:
        """A campaign_requested activity goes through evaluation (campaigns triggered by
        it run); if the named campaign has no trigger that took it, the request runs it
        directly, its qualification rule and filters checked as for a trigger."""
        outcomes = self._change_lead(run, flow, position, "campaign_requested",
                                     {"campaign": target, "source": f"flow:{flow.campaign}"}, now)
        if outcomes is None or any(o.campaign == target for o in outcomes):
            return
        campaign = self._campaign(run.tenant, target)
        if campaign is None or not campaign.active:
            return
        event_id = _generated_event_id(flow.run, flow.campaign, position, run.lead_id)
        lead = run.lead
        last_run = lead.campaigns.get(target)
        reason = detail = None
        if campaign.kind == "trigger":
            detail = qualification_block(campaign, last_run, now)
            reason = "qualification" if detail is not None else None
        if reason is None:
            detail = campaign.failed_filters(lead, now)
            reason = "filters" if detail is not None else None
        outcome = Outcome(run.tenant, run.lead_id, event_id, now, target, campaign.priority,
                          reason is None, reason, detail)
        run.result.outcomes.append(outcome)
        if reason is None:
            campaigns = dict(lead.campaigns)
            campaigns[target] = (1 if last_run is None else last_run[0] + 1, now)
            run.lead = lead._replace(campaigns=campaigns)
            self._start(run, target, event_id, now, flow.depth + 1, dict(flow.tokens))

    def _send_email(self, run: _Run, flow: RunningFlow, position: int, body: dict, now: int) -> None:
        lead = run.lead
        operational = bool(body.get("operational", False))
        request = EmailRequest(run.tenant, run.lead_id, flow.campaign, f"{flow.run}#{position}",
                               body["template"], operational, now, lead_tokens(run.lead_id, lead),
                               dict(flow.tokens))
        held = self.hold_reason(run.tenant, lead, operational, run.sent, now)
        if held is not None:
            run.result.held.append(HeldEmail(request, *held))
            return
        if not operational:
            run.sent = [t for t in run.sent if t > now - WEEK_MS] + [now]
        run.result.emails.append(request)

    def hold_reason(self, tenant: str, lead: LeadState, operational: bool, sent, now: int) -> tuple[str, str] | None:
        """Why an email to this lead is held back now, as (reason, detail), or None.
        Operational email ignores the communication limits and unsubscribes."""
        held = consent_block(lead.attributes, operational)
        if held is not None or operational:
            return held
        return communication_limit_block(self.rules, tenant, sent, now)


def consent_block(attributes: dict, operational: bool) -> tuple[str, str] | None:
    """(reason, detail) when the lead's attributes forbid an email now: no address, an
    address that bounced hard, or (unless the email is operational) an unsubscribe; else
    None. Checked when a flow queues the email and again when `orion send` sends it.

    `email_invalid` and `unsubscribed` are booleans, as the graph writes them; a lead
    table loaded with SQL may hold 1 and 0 or "true" and "false" instead, which read as
    the boolean they spell (consent_flag). Any other value holds the email, said in the
    detail: a flag that does not read is never taken for consent."""
    if not attributes.get("email"):
        return HELD_NO_ADDRESS, "the lead has no email address"
    invalid = consent_flag(attributes.get("email_invalid"))
    if invalid is not False:
        return HELD_EMAIL_INVALID, ("the lead's email address bounced hard" if invalid is True else
                                    _unreadable_flag("email_invalid", attributes.get("email_invalid")))
    if not operational:
        unsubscribed = consent_flag(attributes.get("unsubscribed"))
        if unsubscribed is not False:
            return HELD_UNSUBSCRIBED, ("the lead unsubscribed; only operational email may be sent"
                                       if unsubscribed is True else
                                       _unreadable_flag("unsubscribed", attributes.get("unsubscribed")))
    return None


_FLAG_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


def consent_flag(value) -> bool | None:
    """A consent attribute's value as a boolean: absent or null False, a boolean itself,
    the numbers 1 and 0, and the words true, false, yes, no, 1, 0 (any case, spaces
    around ignored; empty text False); None for anything else."""
    if value is None or value is False or value is True:
        return bool(value)
    if value.__class__ in (int, float):
        return {1: True, 0: False}.get(value)
    if isinstance(value, str):
        return _FLAG_WORDS.get(value.strip().lower())
    return None


def _unreadable_flag(name: str, value) -> str:
    return (f"the lead's {name} attribute holds {str(value)[:80]!r}, which is neither true nor false; the email "
            f"is held until {name} is a boolean")


def communication_limit_block(rules: RuleSet, tenant: str, sent, now: int) -> tuple[str, str] | None:
    """(reason, detail) when one more non-operational email at `now` would break the
    tenant's communication limits, given the times of the lead's earlier ones; else None.
    per_day counts the UTC day of `now`; per_7_days the 7 days up to `now`."""
    settings = rules.tenants.get(tenant)
    limits = settings.communication_limits if settings is not None else {}
    if not limits or not sent:
        return None
    per_day = limits.get("per_day")
    if per_day is not None:
        day = now // MS_PER_DAY
        today = sum(1 for t in sent if t // MS_PER_DAY == day and t <= now)
        if today >= per_day:
            return HELD_PER_DAY, (f"{today} non-operational email(s) already sent on "
                                  f"{format_timestamp(now)[:10]}; tenant {tenant!r} allows {per_day} per day")
    per_week = limits.get("per_7_days")
    if per_week is not None:
        week = sum(1 for t in sent if now - WEEK_MS < t <= now)
        if week >= per_week:
            return HELD_PER_7_DAYS, (f"{week} non-operational email(s) already sent in the 7 days up to "
                                     f"{format_timestamp(now)}; tenant {tenant!r} allows {per_week}")
    return None

