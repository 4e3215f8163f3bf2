"""A lead's profile written by a job that restarts from checkpoints (orion.leadstep
Lineage, orion.profiles Origin): an attempt restored from a checkpoint meets leads its
state does not know although its own lineage wrote their profiles after that
checkpoint; it starts them from the profile as the lineage first read it, and evaluates
their activities again (their outcomes were lost with the failed attempt's uncommitted
files). Anything else (another lineage, a first attempt, a profile older than the state's
TTL) goes on from the profile as it is. Against a real SQLite store.

    .venv/bin/python -m pytest -q tests/test_profile_lineage.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DAY, HOUR, T0, make_activity

from orion.leadstep import OUTCOME, PROFILE, Lineage, LeadStep, SeedRequest, StepResult
from orion.profiles import PROFILE_VERSION, LeadRecord, Origin, decode_profile, encode_profile
from orion.rules import load_rules
from orion.store import open_store
from orion.store.base import write_profile_batch

DATA = Path(__file__).parent / "data"
RULES = """
tenant: acme
campaigns:
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
  - name: Welcome
    triggers: [{activity: visit_web_page}]
    qualification: once
    flow:
      - change_score: {delta: 5}
"""
TTL_MS = 30 * DAY
NOW = T0 + HOUR  # the wall clock of the attempts


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def rules(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "acme.yaml").write_text(RULES, encoding="utf-8")
    return load_rules(tmp_path / "rules")


@pytest.fixture
def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.init()
    yield store
    store.close()


def visits(rules, lead: str, *minutes: int):
    return [make_activity("visit_web_page", lead=lead, at=T0 + m * 60_000, event_id=f"{lead}-{m}", types=rules,
                          url=f"https://acme.example/{m}") for m in minutes]


def attempt(rules, store, lead: str, activities, *, writer: str | None, restored: bool, clock: Clock):
    """One attempt of a job that does not know the lead: seeded from the store, its
    activities released, its profile written back. (qualified outcomes, the counts)"""
    lineage = None if writer is None else Lineage(writer, restored, TTL_MS)
    step = LeadStep(rules, lineage=lineage, clock=clock)
    result = StepResult()
    record, = step.seed(store, [SeedRequest("acme", lead, activities[0].occurred_at)], result)
    step.release(record or LeadRecord(), "acme", lead, activities, None, result)
    profiles = [value for tag, value in result.emitted if tag == PROFILE]
    write_profile_batch(store, profiles)
    outcomes = sorted((o.campaign, o.event_id) for tag, o in result.emitted if tag == OUTCOME and o.qualified)
    return outcomes, result.counts


def stored(store, lead: str) -> LeadRecord:
    text, = store.read_profiles([("acme", lead)])
    return decode_profile(text)


def test_a_restored_attempt_redoes_a_lead_its_lineage_wrote_after_the_checkpoint(rules, store):
    clock = Clock(NOW)
    activities = visits(rules, "L1", 0, 1, 2)
    first, _ = attempt(rules, store, "L1", activities, writer="a" * 32, restored=False, clock=clock)
    written = stored(store, "L1")
    assert written.origin == Origin("a" * 32, None, activities[0].occurred_at, NOW), \
        "the profile says which lineage wrote it, when, and that there was none before"
    assert written.flows.lead.score == 5

    clock.now += 5 * 60_000  # the failed attempt restarts five minutes later
    again, counts = attempt(rules, store, "L1", activities, writer="a" * 32, restored=True, clock=clock)
    assert again == first and len(again) == 4, "each visit's outcomes again, the Welcome once"
    assert counts["profiles_rolled_back"] == 1 and "duplicates" not in counts
    assert stored(store, "L1").flows.lead.score == 5, "the score changed once, not twice"


def test_the_lead_rolls_back_to_the_profile_its_lineage_first_read(rules, store):
    clock = Clock(NOW)
    # An earlier job (another lineage, or none) left the lead with a score and a visit.
    attempt(rules, store, "L2", visits(rules, "L2", 0), writer=None, restored=False, clock=clock)
    before = store.read_profiles([("acme", "L2")])[0]
    assert "origin" not in json.loads(before) and json.loads(before)["version"] == 2

    later = visits(rules, "L2", 10, 11)
    first, _ = attempt(rules, store, "L2", later, writer="b" * 32, restored=False, clock=clock)
    assert first == [("Every visit", "L2-10"), ("Every visit", "L2-11")], "Welcome is once: not again"
    assert stored(store, "L2").origin.prior == before
    again, counts = attempt(rules, store, "L2", later, writer="b" * 32, restored=True, clock=clock)
    assert again == first and counts["profiles_rolled_back"] == 1
    # The earlier job's visit is still behind the rolled-back profile: a replay of it is a duplicate.
    replay, counts = attempt(rules, store, "L2", visits(rules, "L2", 0), writer="b" * 32, restored=True, clock=clock)
    assert replay == [] and counts["duplicates"] == 1


@pytest.mark.parametrize("writer, restored, later_ms", [
    ("c" * 32, True, 60_000),  # another lineage wrote it: its effects are the lead's own
    ("a" * 32, False, 60_000),  # a first attempt never lost state
    ("a" * 32, True, TTL_MS + 60_000),  # older than the state's TTL: the state expired, nothing was lost
])
def test_anything_else_goes_on_from_the_profile(rules, store, writer, restored, later_ms):
    clock = Clock(NOW)
    activities = visits(rules, "L3", 0, 1)
    attempt(rules, store, "L3", activities, writer="a" * 32, restored=False, clock=clock)
    clock.now += later_ms
    again, counts = attempt(rules, store, "L3", activities, writer=writer, restored=restored, clock=clock)
    assert again == [] and counts["duplicates"] == 2 and "profiles_rolled_back" not in counts


def test_a_profile_with_an_origin_reads_back_the_same():
    record = decode_profile((DATA / "profile-v2.json").read_text())
    assert record.progress.released is not None and record.origin is None
    with_origin = record._replace(origin=Origin("d" * 32, (DATA / "profile-v2.json").read_text(), T0, 0))
    text = encode_profile(with_origin, written_at=NOW)
    assert json.loads(text)["version"] == PROFILE_VERSION == 3
    assert decode_profile(text) == with_origin._replace(origin=with_origin.origin._replace(written_at=NOW))
    assert encode_profile(record) == encode_profile(decode_profile(text)._replace(origin=None)), \
        "without its origin, the version 2 text it was"


def test_a_version_2_profile_written_by_an_older_orion_loads():
    """tests/data/profile-v2.json: a profile as Orion wrote it before origins (version 2,
    with sequencer progress)."""
    record = decode_profile((DATA / "profile-v2.json").read_text())
    lead = record.flows.lead
    assert lead.attributes["email"] == "ada@example.com" and lead.score == 5
    assert record.progress.released == (T0 + 2 * 60_000, "L1-2")
    assert record.origin is None


def test_an_origin_that_does_not_read_leaves_the_lead_its_profile():
    """The origin is a job's bookkeeping: one that does not read is dropped, and the lead
    keeps what its profile says (here its address and score)."""
    data = json.loads((DATA / "profile-v2.json").read_text())
    data.update(version=3, origin={"writer": "e" * 32, "prior": 7, "before_ms": "soon"})
    record = decode_profile(json.dumps(data))
    assert record.origin is None
    assert record.flows.lead.attributes["email"] == "ada@example.com" and record.flows.lead.score == 5
