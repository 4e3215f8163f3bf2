"""The activity graph on the DirectRunner in streaming mode, fed by TestStream: on-time,
late-but-allowed and too-late data, duplicates, bad input, tenants, state across bundles."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from orion.pipelines.activity_graph import GraphSettings, build_activity_graph
from orion.transforms.intake import ParseActivities

SECOND = 1000
T0 = 1_800_000_000_000  # event times of the scenarios, epoch ms

RULES = """
tenant: shop
campaigns:
  - name: First visit
    triggers: [{activity: visit_web_page}]
    qualification: once
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
"""

OTHER_TENANT = """
tenant: bank
campaigns:
  - name: First visit
    triggers: [{activity: visit_web_page, where: {url: {contains: bank}}}]
    qualification: once
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> str:
    (tmp_path / "shop.yaml").write_text(RULES)
    (tmp_path / "bank.yaml").write_text(OTHER_TENANT)
    return str(tmp_path)


def visit(event_id: str, at_ms: int, lead: str = "L1", tenant: str = "shop", url: str = "https://shop.example/") -> bytes:
    return json.dumps({
        "event_id": event_id, "tenant": tenant, "lead_id": lead, "type": "visit_web_page",
        "occurred_at": at_ms, "attributes": {"url": url},
    }).encode()


def arriving(payload: bytes, at_ms: int) -> TimestampedValue:
    return TimestampedValue(payload, at_ms / 1000)


def finish(stream: TestStream) -> TestStream:
    """Move the watermark past every release timer, then end the stream. (Outputs of timers
    that fire only at the final watermark would come too late for assert_that.)"""
    return stream.advance_watermark_to((T0 + 3_600 * SECOND) / 1000).advance_watermark_to_infinity()


def run_graph(rules_dir: str, stream: TestStream, lateness_ms: int = 10 * SECOND, check=None,
              one_watermark_per_stage: bool = True) -> None:
    """Run the graph over `stream` on the DirectRunner (one watermark per stage, as
    `orion run` tells the graph there); `check(outputs)` adds assertions on its
    PCollections."""
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        activities, dead = pipeline | stream | ParseActivities(rules_dir)
        outputs = build_activity_graph(
            activities, dead, GraphSettings(rules_dir, allowed_lateness_ms=lateness_ms, bounded=False,
                                            one_watermark_per_stage=one_watermark_per_stage))
        check(outputs)


def qualified(outcomes):
    return outcomes | "Qualified" >> beam.FlatMap(
        lambda o: [(o.campaign, o.event_id)] if o.qualified else [])


def event_ids(pcoll, label):
    return pcoll | label >> beam.Map(lambda a: a.event_id)


def dead_reasons(dead):
    return dead | "Reasons" >> beam.Map(lambda d: (d.reason, _event_id(d.element)))


def _event_id(element) -> str | None:
    if isinstance(element, dict):
        return element.get("event_id")
    try:
        return json.loads(element).get("event_id")
    except (ValueError, AttributeError):
        return None


def test_out_of_order_events_within_allowed_lateness_are_evaluated_in_event_time_order(rules_dir):
    # e2 happens after e1 but arrives first; e1 is behind the watermark, within lateness.
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(visit("e2", T0 + 20 * SECOND), T0 + 20 * SECOND)])
        .advance_watermark_to((T0 + 25 * SECOND) / 1000)
        .add_elements([arriving(visit("e1", T0 + 18 * SECOND), T0 + 26 * SECOND)])
    )
    stream = finish(stream)

    def check(out):
        # "once" goes to the earlier event in event time, although it arrived second.
        assert_that(qualified(out.outcomes), equal_to([
            ("First visit", "e1"), ("Every visit", "e1"), ("Every visit", "e2")]))
        assert_that(event_ids(out.stored, "Stored"), equal_to(["e1", "e2"]), label="AllStored")
        assert_that(out.dead_letters, equal_to([]), label="NoDeadLetters")

    run_graph(rules_dir, stream, lateness_ms=10 * SECOND, check=check)


def test_too_late_event_is_dead_lettered_as_late(rules_dir):
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(visit("e2", T0 + 20 * SECOND), T0 + 20 * SECOND)])
        # The watermark passes e2 + lateness: e2 is evaluated.
        .advance_watermark_to((T0 + 60 * SECOND) / 1000)
        # e1 sorts before e2, which the lead has already evaluated: too late.
        .add_elements([arriving(visit("e1", T0 + 5 * SECOND), T0 + 61 * SECOND)])
    )
    stream = finish(stream)

    def check(out):
        assert_that(qualified(out.outcomes), equal_to([("First visit", "e2"), ("Every visit", "e2")]))
        assert_that(dead_reasons(out.dead_letters), equal_to([("late", "e1")]), label="Late")
        assert_that(event_ids(out.stored, "Stored"), equal_to(["e2"]), label="OnlyOnTimeStored")

    run_graph(rules_dir, stream, lateness_ms=10 * SECOND, check=check)


def test_duplicate_deliveries_are_evaluated_and_stored_once(rules_dir):
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(visit("e1", T0), T0), arriving(visit("e1", T0), T0)])
        .advance_watermark_to((T0 + 30 * SECOND) / 1000)
        # Redelivered after it was evaluated: still a duplicate, not late.
        .add_elements([arriving(visit("e1", T0), T0 + 31 * SECOND)])
    )
    stream = finish(stream)

    def check(out):
        assert_that(qualified(out.outcomes), equal_to([("First visit", "e1"), ("Every visit", "e1")]))
        assert_that(event_ids(out.stored, "Stored"), equal_to(["e1"]), label="StoredOnce")
        assert_that(out.dead_letters, equal_to([]), label="NoDeadLetters")

    run_graph(rules_dir, stream, check=check)


def test_bad_input_is_dead_lettered_while_the_rest_is_processed(rules_dir):
    good = visit("ok", T0)
    missing_field = json.dumps({"event_id": "m", "tenant": "shop", "type": "visit_web_page",
                                "occurred_at": T0, "attributes": {"url": "u"}}).encode()
    unknown_type = json.dumps({"event_id": "u", "tenant": "shop", "lead_id": "L", "type": "teleport",
                               "occurred_at": T0, "attributes": {}}).encode()
    wrong_type = json.dumps({"event_id": "w", "tenant": "shop", "lead_id": "L", "type": "visit_web_page",
                             "occurred_at": T0, "attributes": {"url": 42}}).encode()
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(p, T0) for p in (b"{not json", missing_field, unknown_type, wrong_type, good)])
    )
    stream = finish(stream)

    def check(out):
        assert_that(dead_reasons(out.dead_letters), equal_to([
            ("malformed_json", None), ("missing_field", "m"), ("unknown_type", "u"), ("bad_attribute", "w")]))
        assert_that(event_ids(out.stored, "Stored"), equal_to(["ok"]), label="GoodStored")

    run_graph(rules_dir, stream, check=check)


def test_tenants_never_see_each_others_rules(rules_dir):
    # Same lead id and a URL that would match the other tenant's campaign.
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([
            arriving(visit("s1", T0, lead="L1", tenant="shop", url="https://bank.example/"), T0),
            arriving(visit("b1", T0, lead="L1", tenant="bank", url="https://shop.example/"), T0),
        ])
    )
    stream = finish(stream)

    def check(out):
        by_tenant = out.outcomes | beam.Map(lambda o: (o.tenant, o.campaign, o.event_id, o.qualified))
        assert_that(by_tenant, equal_to([
            ("shop", "Every visit", "s1", True), ("shop", "First visit", "s1", True)]))

    run_graph(rules_dir, stream, check=check)


def test_qualification_state_survives_across_bundles(rules_dir):
    stream = TestStream().advance_watermark_to(T0 / 1000)
    for n in range(3):
        at = T0 + n * 60 * SECOND
        stream = stream.add_elements([arriving(visit(f"e{n}", at), at)]).advance_watermark_to((at + 30 * SECOND) / 1000)
    stream = finish(stream)

    def check(out):
        assert_that(qualified(out.outcomes), equal_to([
            ("First visit", "e0"), ("Every visit", "e0"), ("Every visit", "e1"), ("Every visit", "e2")]))
        not_qualified = out.outcomes | beam.FlatMap(
            lambda o: [(o.campaign, o.event_id, o.reason)] if not o.qualified else [])
        assert_that(not_qualified, equal_to([
            ("First visit", "e1", "qualification"), ("First visit", "e2", "qualification")]), label="Blocked")

    run_graph(rules_dir, stream, check=check)


@pytest.mark.parametrize("one_watermark_per_stage, l1_rounds", [(True, 2), (False, 30)])
def test_a_backlog_behind_the_watermark_is_released_in_few_timer_rounds(rules_dir, one_watermark_per_stage, l1_rounds):
    # A catch-up after a restart: lead L1's 30 activities and L2's one arrive when the
    # watermark is already past them all. Where the runner keeps one watermark per stage,
    # a timer that fires proves the watermark passed its time for every lead, so L1 must
    # not need a timer round per activity. Elsewhere the proof stays within a bundle: more
    # rounds, the same results.
    backlog = [arriving(visit(f"b{n:02d}", T0 + n * SECOND), T0 + n * SECOND) for n in range(30)]
    backlog.append(arriving(visit("other", T0 + 100 * SECOND, lead="L2"), T0 + 100 * SECOND))
    stream = (TestStream()
              .add_elements(backlog)
              .advance_watermark_to((T0 + 200 * SECOND) / 1000)
              .advance_watermark_to_infinity())

    def check(out):
        assert_that(qualified(out.outcomes) | beam.Filter(lambda q: q[0] == "First visit"),
                    equal_to([("First visit", "b00"), ("First visit", "other")]))
        assert_that(event_ids(out.stored, "Stored"),
                    equal_to([f"b{n:02d}" for n in range(30)] + ["other"]), label="AllStored")
        # What a timer releases carries the timer's time: one time per round.
        released_at = (out.stored
                       | "L1" >> beam.Filter(lambda a: a.lead_id == "L1")
                       | "ReleasedAt" >> beam.Map(lambda a, at=beam.DoFn.TimestampParam: at))
        # Shared: L1's first activity's timer, then one round for the other 29.
        assert_that(released_at, _distinct_count(l1_rounds), label="Rounds")

    run_graph(rules_dir, stream, lateness_ms=10 * SECOND, check=check, one_watermark_per_stage=one_watermark_per_stage)


def _distinct_count(expected: int):
    def match(values):
        if len(set(values)) != expected:
            raise BeamAssertException(f"{len(set(values))} distinct values, expected {expected}: {sorted(set(values))}")
    return match


def run_stream_with_profiles(rules_dir: str, store: str, stream: TestStream, check=None, **settings) -> dict:
    """`stream` through a streaming graph that seeds from and writes profiles to `store`
    (`settings`: more GraphSettings); Orion's counters when it ends."""
    from orion.transforms.sinks import WriteProfiles

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    activities, dead = pipeline | stream | ParseActivities(rules_dir)
    outputs = build_activity_graph(
        activities, dead, GraphSettings(rules_dir, allowed_lateness_ms=10 * SECOND, bounded=False,
                                        one_watermark_per_stage=True, seed_store_uri=store, **settings),
        profile_sink=WriteProfiles(store))
    if check is not None:
        check(outputs)
    result = pipeline.run()
    result.wait_until_finish()
    return {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}


def run_with_profiles(rules_dir: str, store: str, gap_ms: int, lead_ttl_days: int, check=None) -> dict:
    """Two visits of one lead `gap_ms` apart in a streaming run that seeds from and writes
    profiles to `store`; Orion's counters when it ends."""
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([arriving(visit("e1", T0), T0)])
        .advance_watermark_to((T0 + gap_ms) / 1000)
        .add_elements([arriving(visit("e2", T0 + gap_ms), T0 + gap_ms)])
        .advance_watermark_to((T0 + gap_ms + 3_600 * SECOND) / 1000)
        .advance_watermark_to_infinity()
    )
    return run_stream_with_profiles(rules_dir, store, stream, check, lead_ttl_days=lead_ttl_days)


def test_a_lead_silent_past_its_state_ttl_is_cleared_and_comes_back_from_its_profile(rules_dir, tmp_path):
    """Streaming lead state expires `lead_ttl_days` of event time after the lead's last
    activity; the lead's profile in the store keeps what it did, so when it comes back
    it is seeded from there: "First visit" (once) does not qualify again."""
    def check(outputs):
        assert_that(qualified(outputs.outcomes), equal_to([
            ("First visit", "e1"), ("Every visit", "e1"), ("Every visit", "e2")]))

    counters = run_with_profiles(rules_dir, f"sqlite:///{tmp_path / 'store.db'}", 3 * 86_400 * SECOND,
                                 lead_ttl_days=2, check=check)
    assert counters.get("profiles_loaded") == 1, "the lead came back from its stored profile"
    # (Its state expired, so the step wrote the profile back without the lineage's origin
    # first: otherwise the lead would have come back from the profile as the lineage
    # first read it, and "First visit" would have qualified again.)
    assert not counters.get("profiles_rolled_back")


def test_a_lead_within_its_state_ttl_keeps_its_state_in_the_job(rules_dir, tmp_path):
    counters = run_with_profiles(rules_dir, f"sqlite:///{tmp_path / 'store.db'}", 86_400 * SECOND, lead_ttl_days=2)
    assert not counters.get("profiles_loaded"), "the lead's state was still in the job"


def run_visit_with_lineage(rules_dir: str, store: str, lineage: str, check=None) -> dict:
    """One visit (e1) in a streaming run with `lineage` that seeds from and writes
    profiles to `store`; Orion's counters when it ends."""
    stream = (TestStream().advance_watermark_to(T0 / 1000).add_elements([arriving(visit("e1", T0), T0)])
              .advance_watermark_to((T0 + 3_600 * SECOND) / 1000).advance_watermark_to_infinity())
    return run_stream_with_profiles(rules_dir, store, stream, check, lineage=lineage)


def test_a_retried_bundle_redoes_a_lead_its_first_attempt_wrote_and_another_lineage_does_not(rules_dir, tmp_path):
    """A bundle's profile writes are fused with the step, so a retried bundle can find
    the profile its first attempt wrote for a lead its state never kept. The first run
    plays that attempt; a second run of the same lineage, the retry: it starts the lead
    from the profile as the lineage first read it (none) and evaluates the visit again.
    A run of another lineage takes the profile as the lead's own: the visit is a replay."""
    from orion.leadstep import wall_clock_ms
    from orion.profiles import Origin, decode_profile, encode_profile
    from orion.store import open_store
    from orion.store.base import StoredProfile

    store = f"sqlite:///{tmp_path / 'store.db'}"
    first = run_visit_with_lineage(rules_dir, store, "a" * 32)
    assert first.get("profiles_emitted") and not first.get("profiles_rolled_back")
    # The run's end (the watermark at infinity) expired the lead's state, which wrote
    # the profile back without its origin. The failed attempt's write had one.
    with open_store(store) as opened:
        text, = opened.read_profiles([("shop", "L1")])
        record = decode_profile(text)
        assert record.origin is None and record.progress.released is not None
        written = record._replace(origin=Origin("a" * 32, None, T0))
        opened.write_profiles([StoredProfile("shop", "L1", encode_profile(written, written_at=wall_clock_ms()))])

    def again(outputs):
        assert_that(qualified(outputs.outcomes), equal_to([("First visit", "e1"), ("Every visit", "e1")]))

    retry = run_visit_with_lineage(rules_dir, store, "a" * 32, check=again)
    assert retry.get("profiles_rolled_back") == 1 and not retry.get("duplicates")

    def replay(outputs):
        assert_that(qualified(outputs.outcomes), equal_to([]))

    other = run_visit_with_lineage(rules_dir, store, "b" * 32, check=replay)
    assert other.get("duplicates") == 1 and not other.get("profiles_rolled_back")


# --- a hot lead ----------------------------------------------------------------------------


def test_a_hot_lead_past_its_buffer_bound_is_released_at_once_and_nothing_is_lost(rules_dir):
    """A lead (a bot) sending more activities within the allowed lateness than the step
    buffers: past the bound they are released at once, in order; one arriving later
    than what was released is a `late` dead letter. Every activity is stored or a dead
    letter, and the other lead is untouched."""
    arrivals = [arriving(visit(f"h{n}", T0 + n * SECOND), T0 + n * SECOND) for n in range(1, 8)]
    stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements(arrivals[:4])  # 4 > max_pending 3: released at once
        .add_elements([arriving(visit("old", T0 + 2 * SECOND + 500), T0 + 5 * SECOND)])  # behind what was released
        .add_elements(arrivals[4:])
        .add_elements([arriving(visit("calm", T0 + SECOND, lead="L2"), T0 + SECOND)])
    )
    stream = finish(stream)

    def check(out):
        assert_that(event_ids(out.stored, "Stored"),
                    equal_to([f"h{n}" for n in range(1, 8)] + ["calm"]), label="AllStored")
        assert_that(dead_reasons(out.dead_letters), equal_to([("late", "old")]), label="OldIsLate")

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    activities, dead = pipeline | stream | ParseActivities(rules_dir)
    outputs = build_activity_graph(
        activities, dead, GraphSettings(rules_dir, allowed_lateness_ms=60 * SECOND, bounded=False,
                                        one_watermark_per_stage=True, max_pending=3))
    check(outputs)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert counters.get("hot_lead_releases") == 1


def test_a_hot_lead_in_a_file_is_replayed_in_bounded_chunks(rules_dir, tmp_path):
    """Bounded input: a lead with more activities than max_pending is replayed a chunk
    at a time; a file in event-time order loses nothing and evaluates everything once."""
    pipeline = beam.Pipeline()
    lines = [visit(f"h{n:02d}", T0 + n * SECOND) for n in range(10)] + [visit("calm", T0, lead="L2")]
    activities, dead = (pipeline | beam.Create(lines) | ParseActivities(rules_dir))
    outputs = build_activity_graph(activities, dead, GraphSettings(rules_dir, bounded=True, max_pending=3))
    assert_that(event_ids(outputs.stored, "Stored"), equal_to([f"h{n:02d}" for n in range(10)] + ["calm"]))
    assert_that(qualified(outputs.outcomes) | "FirstVisits" >> beam.Filter(lambda q: q[0] == "First visit"),
                equal_to([("First visit", "h00"), ("First visit", "calm")]), label="OnceAcrossChunks")
    assert_that(outputs.dead_letters, equal_to([]), label="NoDeadLetters")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert counters.get("hot_lead_releases") == 2, "chunks of 4, 4 and 2 activities: two past the bound of 3"
    assert counters.get("evaluated") == 11
