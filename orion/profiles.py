"""The durable lead profile: what a lead did, kept outside any job, so a new run, a
restarted streaming job or another service sees the same lead.

A profile holds, per (tenant, lead):
- the lead state evaluation works on, less the history counters: attributes (the email
  address, the `unsubscribed` and `email_invalid` flags among them), score, lists and
  each campaign's qualification runs (count, last run) for `once` and `once_every`;
- the lead's place in its campaign flows (next step, wake-up time) and the times of
  its recent non-operational emails (communication limits);
- the sequencer's progress: the last activity evaluated and the recent event ids, so
  a replay of activities the lead has already been through is recognised (duplicates)
  and changes nothing.

The history counters are not in it: they are counted from the activity store, which
holds every activity (orion.seeding), and so they follow rule changes. One part of them
is, for decisions alone: the counts of the counters the tenant's experiences read
(`decisions`: {"of": their history_digest, "history": {key: {day: count}}}, the counters
with no count left out), so a decision reads a lead's history with its profile instead
of asking the store. Nothing else reads it, and a decision whose rules give another
digest counts from the store (orion/decisions/leads.py).

A profile written by a streaming job (Flink or Beam) also says which job lineage wrote
it, when, and what the profile was when that lineage first read it (`Origin`): a Flink
job restored from a checkpoint, or a Beam bundle retried, meets leads its state does not
know although its lineage wrote their profiles since; it starts them from that earlier
profile, so it redoes what it lost rather than taking it for a replay (orion.leadstep
Lineage).

The encoding is versioned JSON text. Version 1 is the flow state Orion kept before the
profile existed (`LeadFlows.to_json_dict`: lead, running, sent; no version field); it
loads as a profile with no sequencer progress. Version 2 adds the version and the
progress. Version 3 adds the origin; a profile without one is still written as version
2, which every Orion since version 2 reads. A newer Orion reads every older version;
tests/data/ holds a profile of each.

    python -c "from orion.profiles import *; print(encode_profile(LeadRecord()))"
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

import orjson

from orion.campaigns.flows import LeadFlows, RunningFlow
from orion.rules.model import LeadState
from orion.sequencing import EMPTY_PROGRESS, LeadProgress

PROFILE_VERSION = 3
_WITHOUT_ORIGIN = 2  # the version of a profile that has no origin

_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ProfileError(ValueError):
    """A stored profile that cannot be read; the message says what is wrong with it."""


class Origin(NamedTuple):
    """Which job lineage wrote a profile, and from what: `prior` is the stored profile
    text (without its own origin) the lineage first read for the lead, None when there
    was none; `before_ms` the time its history counters were seeded up to then;
    `written_at` the wall-clock time (epoch ms) of the write, stamped as the profile is
    encoded for the store."""

    writer: str
    prior: str | None
    before_ms: int
    written_at: int = 0


class LeadRecord(NamedTuple):
    """Everything a job keeps for one lead, in one keyed state: the sequencer's progress
    and the lead's flows (its LeadState, running flows and recent sends), and in a job
    that keeps one, the lead's origin."""

    progress: LeadProgress = EMPTY_PROGRESS
    flows: LeadFlows = LeadFlows()
    origin: Origin | None = None

    def next_wake(self) -> int | None:
        return self.flows.next_wake()


EMPTY_RECORD = LeadRecord()


def encode_profile(record: LeadRecord, *, history: bool = False, written_at: int | None = None,
                   decisions: tuple[str, tuple[str, ...]] | None = None) -> str:
    """The record as profile text (the current version), valid UTF-8. The store's profile
    leaves the history counters out (`history` False); an engine's keyed state keeps them
    (True). `decisions`: (digest, keys) of the counters the tenant's experiences read
    (TenantRules.decision_history), whose counts the store's profile keeps for decisions.
    A record with an origin keeps it, stamped `written_at` when given. The same record
    (and stamp) always gives the same text, so rewriting it changes nothing."""
    lead = record.flows.lead
    progress = record.progress
    origin = record.origin
    data = {
        "version": _WITHOUT_ORIGIN if origin is None else PROFILE_VERSION,
        "lead": {
            "attributes": lead.attributes,
            "score": lead.score,
            "lists": sorted(lead.lists),
            "campaigns": {name: list(run) for name, run in lead.campaigns.items()},
        },
        "running": [flow._asdict() for flow in record.flows.running],
        "sent": list(record.flows.sent),
        "released": list(progress.released) if progress.released is not None else None,
        "seen": progress.seen,
    }
    if origin is not None:
        data["origin"] = {"writer": origin.writer, "prior": origin.prior, "before_ms": origin.before_ms,
                          "written_at": origin.written_at if written_at is None else written_at}
    if history and lead.history:
        data["lead"]["history"] = {key: {str(day): n for day, n in days.items()}
                                   for key, days in lead.history.items()}
    if decisions is not None:
        counted = lead.history
        data["decisions"] = {"of": decisions[0], "history": {
            key: {str(day): n for day, n in counted[key].items()} for key in decisions[1] if counted.get(key)}}
    try:
        # orjson: several times faster, and a streaming job writes a lead's record on
        # every release. Same compact, key-sorted JSON.
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        pass  # what orjson refuses: a lone surrogate, an integer past 64 bits
    text = _ENCODER.encode(data)
    if text.isascii():
        return text
    # A lone surrogate (from an input attribute) is not UTF-8, which every store and
    # Flink's STRING need: it is written as its JSON escape, which reads back as the same
    # text (it can only stand inside a JSON string).
    return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _score(value):
    return 0 if value is None else value


def decode_profile(text: str | bytes) -> LeadRecord:
    """A LeadRecord from profile text of any version this Orion knows (a stored profile
    has no history: the caller seeds it from the store). ProfileError for text that is
    not a profile."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses: a lone surrogate's escape, an integer past 64 bits
            data = json.loads(text)
        except ValueError as err:
            raise ProfileError(f"a lead profile is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"a lead profile must be a JSON object, not {type(data).__name__}")
    version = data.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise ProfileError(f"a lead profile has version {version!r}; expected a whole number from 1")
    if version > PROFILE_VERSION:
        raise ProfileError(f"a lead profile has version {version}, written by a newer Orion than this one "
                           f"(which reads up to version {PROFILE_VERSION}); upgrade Orion to read it")
    try:
        lead = data.get("lead", {})
        state = LeadState(
            attributes=dict(lead.get("attributes", {})),
            # (null: a score that overflowed to infinity, which JSON cannot hold, written by
            # an Orion that let a score change be any number; read as 0, not as a crash)
            score=_score(lead.get("score", 0)),
            lists=frozenset(lead.get("lists", ())),
            campaigns={name: tuple(run) for name, run in lead.get("campaigns", {}).items()},
            history={key: {int(day): n for day, n in days.items()}
                     for key, days in lead.get("history", {}).items()},
        )
        running = tuple(RunningFlow(**flow) for flow in data.get("running", ()))
        flows = LeadFlows(lead=state, running=running, sent=tuple(data.get("sent", ())))
        progress = EMPTY_PROGRESS
        if version >= 2:
            released = data.get("released")
            progress = LeadProgress(tuple(released) if released is not None else None,
                                    dict(data.get("seen") or {}))
    except (AttributeError, TypeError, ValueError) as err:
        raise ProfileError(f"a version {version} lead profile has a bad field: {err}") from None
    return LeadRecord(progress, flows, _origin(data.get("origin") if version >= 3 else None))


def _origin(found) -> Origin | None:
    """A profile's origin; None when it has none, or one that does not read: the origin is
    a job's bookkeeping, and the lead's own facts (an unsubscribe among them) must not be
    lost with it. Without it the lead goes on from its profile as it is."""
    if found is None:
        return None
    try:
        prior = found.get("prior")
        if prior is not None and not isinstance(prior, str):
            return None
        return Origin(str(found["writer"]), prior, int(found["before_ms"]), int(found.get("written_at", 0)))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def with_history(record: LeadRecord, seeded: LeadState | None) -> LeadRecord:
    """The record with the history counters of `seeded` (orion.seeding), which a profile
    does not keep."""
    if seeded is None or not seeded.history:
        return record
    flows = record.flows
    return record._replace(flows=flows._replace(lead=flows.lead._replace(history=seeded.history)))
