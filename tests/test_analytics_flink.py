"""Roll-ups on Flink: `orion run --runner flink` (orion.runners.flink.build_job, which
attaches orion/flink/rollups.py) on a local mini-cluster gives the same roll-ups as the
Beam graph over the same input: events by type per minute, outcomes, emails queued and
held, unique leads, sums, and hours and days built from the minutes; a line late but
within the allowed lateness lands in its own minute, a too-late one counts nowhere, and
running the same input again counts nothing twice. On unbounded input (a watched
directory) an activity that arrives after its minute was written rewrites that minute,
and a job restarted from a savepoint taken mid-run redoes what followed it and counts
nothing twice. What the roll-up stages keep in state holds no pickle, and a row's
version counts its records.

Needs Java 17 and apache-flink (PyFlink); without them these tests fail and say so.

    .venv/bin/python -m pytest -q tests/test_analytics_flink.py
"""
from __future__ import annotations

import ast
import io
import json
import time
from pathlib import Path

from orion.activities import parse_timestamp
from orion.analytics.query import Query, run_query
from orion.analytics.rollup import Aggregate, RollupKey
from orion.settings import RunConfig
from orion.store.base import StoreError
from orion.store.rollups_opening import open_rollup_store

SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR  # an hour's start
WHOLE_DAY = (T0 - T0 % DAY, T0 - T0 % DAY + DAY)
LATENESS_MS = 60_000

RULES = """
tenant: shop
settings:
  activity_types:
    purchase:
      attributes: {amount: number, sku: string}
      indexed_by: sku
campaigns:
  - name: Welcome
    triggers: [{activity: fill_out_form, where: {form: {is: Signup}}}]
    qualification: once
    flow:
      - send_email: {template: welcome}
  - name: Every visit
    triggers: [{activity: visit_web_page}]
    qualification: every_time
"""
OTHER = """
tenant: bank
campaigns:
  - name: Bank visit
    triggers: [{activity: visit_web_page}]
"""


def event(event_id: str, lead: str, at: int, type_: str, tenant: str = "shop", **attributes) -> str:
    return json.dumps({"event_id": event_id, "tenant": tenant, "lead_id": lead, "type": type_, "occurred_at": at,
                       "attributes": attributes})


def visit(event_id: str, lead: str, at: int, page: str = "a") -> str:
    return event(event_id, lead, at, "visit_web_page", url=f"https://shop.example/{page}")


EVENTS = [
    # minute 0: L1 gives an address, signs up (Welcome: an email queued), buys and visits.
    event("e1", "L1", T0 + 1 * SECOND, "data_value_changes", attribute="email", new_value="l1@mail.example"),
    event("b1", "L9", T0 + 1 * SECOND, "visit_web_page", tenant="bank", url="https://bank.example/"),  # another tenant
    event("e2", "L1", T0 + 2 * SECOND, "fill_out_form", form="Signup"),
    event("p1", "L1", T0 + 5 * SECOND, "purchase", amount=10.5, sku="S-1"),
    visit("e3", "L1", T0 + 10 * SECOND),
    # minute 1: L2 visits and signs up without an address (Welcome: the email is held).
    visit("e4", "L2", T0 + MINUTE + 5 * SECOND, "b"),
    event("e5", "L2", T0 + MINUTE + 6 * SECOND, "fill_out_form", form="Signup"),
    # minute 2: two leads visit, one of them twice (a redelivery), and L3 buys.
    visit("e6", "L3", T0 + 2 * MINUTE + 1 * SECOND),
    visit("e7", "L1", T0 + 2 * MINUTE + 9 * SECOND, "c"),
    visit("e6", "L3", T0 + 2 * MINUTE + 1 * SECOND),
    event("p2", "L3", T0 + 2 * MINUTE + 30 * SECOND, "purchase", amount=4, sku="S-1"),
    # 39 s behind the newest earlier line (e7 at 2:09), within the allowed lateness (60 s):
    # it counts, in minute 1.
    visit("e9", "L3", T0 + MINUTE + 30 * SECOND, "b"),
    # minute 3: L2 signs up again: Welcome is `once`, so it does not qualify.
    event("e8", "L2", T0 + 3 * MINUTE + 1 * SECOND, "fill_out_form", form="Signup"),
    # 176 s behind e8: late, a dead letter that counts nowhere.
    visit("e10", "L4", T0 + 5 * SECOND),
]

QUERIES = [
    ("events", ("type", "source", "attribute"), "minute"),
    ("unique_leads", (), "minute"),
    ("unique_leads", ("type",), "hour"),
    ("fired", ("campaign", "status", "reason"), "minute"),
    ("qualified", ("campaign",), "hour"),
    ("emails_queued", ("campaign", "attribute"), "minute"),
    ("emails_held", ("campaign", "reason"), "hour"),
    ("events", ("type",), "day"),
    ("qualified_leads", ("campaign",), "day"),
    ("sum:amount", ("attribute",), "hour"),
    ("events", ("type",), "all"),
]


def write_rules(folder: Path) -> Path:
    rules = folder / "rules"
    rules.mkdir()
    (rules / "shop.yaml").write_text(RULES)
    (rules / "bank.yaml").write_text(OTHER)
    return rules


def run_config(rules: Path, events: str, folder: Path, run: str) -> RunConfig:
    """A run of its own output directory over the store and outbox of `folder`."""
    return RunConfig(str(rules), (), events, None, f"sqlite:///{folder / 'activities.db'}", folder / run,
                     LATENESS_MS, 24 * HOUR, None, (), outbox_uri=f"sqlite:///{folder / 'outbox.db'}")


def answers(store_uri: str, tenant: str = "shop") -> dict:
    with open_rollup_store(store_uri) as store:
        return {(metric, by, granularity): run_query(store, Query(tenant, metric, by, granularity, *WHOLE_DAY))
                for metric, by, granularity in QUERIES}


def per_minute(rows: list[dict], metric: str) -> dict[int, int]:
    found: dict[int, int] = {}
    for row in rows:
        minute = (parse_timestamp(row["time"]) - T0) // MINUTE
        found[minute] = found.get(minute, 0) + row[metric]
    return found


def row_count(store_uri: str) -> int:
    with open_rollup_store(store_uri) as store:
        return store.count()


def test_flink_rolls_up_what_beam_rolls_up_late_lines_included_and_a_replay_counts_nothing_twice(flink, tmp_path):
    from orion.runners.direct import run

    rules = write_rules(tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    beam_dir, flink_dir = tmp_path / "beam", tmp_path / "flink"
    beam_dir.mkdir()
    flink_dir.mkdir()
    # Process mode here, thread mode (the default) on unbounded input below: what crosses
    # between the functions is pickled differently in each.
    options = flink.FlinkOptions(parallelism=2, execution_mode="process")

    run(run_config(rules, str(events), beam_dir, "first"), out=io.StringIO())
    first = flink.run_flink(run_config(rules, str(events), flink_dir, "first"), options=options, out=io.StringIO())
    beam_store, flink_store = (f"sqlite:///{folder / 'activities.db'}" for folder in (beam_dir, flink_dir))
    on_beam, on_flink = answers(beam_store), answers(flink_store)
    for query in QUERIES:
        assert on_flink[query] == on_beam[query], query
    assert answers(flink_store, "bank")[("events", ("type",), "all")] == [{"type": "visit_web_page", "events": 1}]

    # The figures are the input's: e9 (late, within the lateness) in minute 1, e6 once,
    # e10 (too late) nowhere.
    assert per_minute(on_flink[("events", ("type", "source", "attribute"), "minute")], "events") == {
        0: 4, 1: 3, 2: 3, 3: 1}
    assert per_minute(on_flink[("unique_leads", (), "minute")], "unique_leads") == {0: 1, 1: 2, 2: 2, 3: 1}
    assert [(row["attribute"], row["sum:amount"]) for row in on_flink[("sum:amount", ("attribute",), "hour")]] == [
        ("S-1", 14.5)]
    assert [(row["campaign"], row["attribute"], row["emails_queued"])
            for row in on_flink[("emails_queued", ("campaign", "attribute"), "minute")]] == [("Welcome", "welcome", 1)]
    assert [(row["reason"], row["emails_held"]) for row in on_flink[("emails_held", ("campaign", "reason"), "hour")]
            ] == [("no_email_address", 1)]
    assert {row["type"]: row["events"] for row in on_flink[("events", ("type",), "day")]} == {
        "visit_web_page": 5, "fill_out_form": 3, "purchase": 2, "data_value_changes": 1}
    assert first.counters["rolled_up"] > 0 and first.counters["rollup_rows_written"] > 0, first.counters
    late = [json.loads(line) for path in (flink_dir / "first").glob("dead-letters-*.jsonl")
            for line in path.read_text().splitlines()]
    assert [(letter["reason"], json.loads(letter["element"])["event_id"]) for letter in late] == [("late", "e10")]

    # The same input again, into the same stores: every activity is a duplicate (the
    # leads' profiles have them), so no figure and no row changes.
    rows = row_count(flink_store)
    run(run_config(rules, str(events), beam_dir, "again"), out=io.StringIO())
    again = flink.run_flink(run_config(rules, str(events), flink_dir, "again"), options=options._replace(
        execution_mode="thread"), out=io.StringIO())
    assert again.counters.get("evaluated", 0) == 0 and again.counters.get("duplicates") == 13, again.counters
    assert answers(flink_store) == on_flink
    assert answers(beam_store) == on_beam
    assert row_count(flink_store) == rows


def drop_file(directory: Path, name: str, lines: list[str]) -> None:
    """Written beside, then renamed in: the monitor never sees half a file."""
    hidden = directory / f".{name}.tmp"  # Flink's file source skips hidden files
    hidden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hidden.rename(directory / name)


def minute_rows(store_uri: str, minute: int) -> list:
    """The activity rows of a minute of shop (every version the store kept: the newest
    of each writer)."""
    try:
        with open_rollup_store(store_uri) as store:
            return store.read("shop", "minute", T0 + minute * MINUTE, T0 + (minute + 1) * MINUTE, kind="activity")
    except StoreError:  # the job has not created the table yet
        return []


def wait_for(condition, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def test_on_unbounded_input_an_activity_arriving_after_its_minute_was_written_rewrites_it(flink, tmp_path):
    from orion.runners.direct import run

    rules = write_rules(tmp_path)
    watched = tmp_path / "incoming"
    watched.mkdir()
    flink_dir, beam_dir = tmp_path / "flink", tmp_path / "beam"
    flink_dir.mkdir()
    beam_dir.mkdir()
    store = f"sqlite:///{flink_dir / 'activities.db'}"
    first = [visit("s1", "L1", T0 + 5 * SECOND), visit("s2", "L2", T0 + 20 * SECOND),
             # pushes the watermark (newest - the allowed lateness) past minute 0
             visit("s3", "L1", T0 + 2 * MINUTE + 30 * SECOND, "b")]
    # Another lead's visit in minute 0, behind the watermark now but not behind anything
    # its lead has been through: evaluated, and its minute written again.
    second = [visit("s4", "L3", T0 + 40 * SECOND)]
    config = run_config(rules, str(watched), flink_dir, "out")
    streaming = flink.FlinkOptions(watch=True, monitor_interval_s=0.5, flush_after_ms=200, idle_release_s=1.0)
    drop_file(watched, "part-1.jsonl", first)
    job = flink.start_flink(config, streaming)
    stopped = False
    try:
        wait_for(lambda: sum(row.records for row in minute_rows(store, 0)) == 2, "minute 0's row")
        (written,) = minute_rows(store, 0)
        drop_file(watched, "part-2.jsonl", second)
        wait_for(lambda: sum(row.records for row in minute_rows(store, 0)) == 3, "minute 0 rewritten")
        # Draining advances event time to the end: s3, within the lateness, is released.
        job.stop_with_savepoint(str(tmp_path / "savepoints"), drain=True)
        stopped = True
    finally:
        if not stopped:
            job.cancel()
    (rewritten,) = minute_rows(store, 0)
    assert (rewritten.writer, rewritten.records) == (written.writer, 3) and rewritten.version > written.version, \
        "the minute's row was written again, whole, by the same state, with a higher version"
    # s3 waited for the drain, and reached the roll-ups past the end of event time: the
    # drain is no expiry, so its minute is the job's too (a job restored from a checkpoint
    # that meets only at its drain a row the failed attempt wrote writes over it).
    assert {row.writer for minute in (0, 2) for row in minute_rows(store, minute)} == {written.writer}

    events = tmp_path / "events.jsonl"
    # In event-time order: in a file, a line more than the allowed lateness behind an
    # earlier one would be late.
    events.write_text("\n".join(first[:2] + second + first[2:]) + "\n")
    run(run_config(rules, str(events), beam_dir, "out"), out=io.StringIO())
    on_flink, on_beam = answers(store), answers(f"sqlite:///{beam_dir / 'activities.db'}")
    for query in QUERIES:
        assert on_flink[query] == on_beam[query], query
    assert per_minute(on_flink[("events", ("type", "source", "attribute"), "minute")], "events") == {0: 3, 2: 1}


def savepoint_while_running(job, directory: Path) -> str:
    """A savepoint of a running job, which goes on running; its path."""
    from pyflink.common.completable_future import CompletableFuture
    from pyflink.java_gateway import get_gateway

    # (As FlinkJob.stop_with_savepoint: PyFlink 2.3's own call names a Java overload that
    # no longer exists.)
    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return CompletableFuture(job.client._j_job_client.triggerSavepoint(directory.resolve().as_uri(), canonical),
                             str).result()


def test_a_job_restarted_from_a_savepoint_redoes_what_followed_it_and_rolls_up_nothing_twice(flink, tmp_path):
    from orion.runners.direct import run

    rules = write_rules(tmp_path)
    watched = tmp_path / "incoming"
    watched.mkdir()
    flink_dir, beam_dir = tmp_path / "flink", tmp_path / "beam"
    flink_dir.mkdir()
    beam_dir.mkdir()
    store = f"sqlite:///{flink_dir / 'activities.db'}"
    first = [visit("r1", "L1", T0 + 5 * SECOND), visit("r2", "L2", T0 + 20 * SECOND),
             visit("r3", "L1", T0 + 2 * MINUTE + 30 * SECOND, "b")]  # waits: the watermark is at 1:30
    # Releases r3 and r4 (the watermark moves to 2:50); r5 and r6 wait for the drain. (r4
    # is of a lead the savepoint holds: one it does not would be seeded, after the
    # restore, from the profile the cancelled job wrote, and r4 not evaluated again.)
    second = [visit("r4", "L2", T0 + MINUTE + 10 * SECOND), visit("r5", "L3", T0 + 3 * MINUTE + 40 * SECOND),
              visit("r6", "L4", T0 + 3 * MINUTE + 50 * SECOND, "c")]
    config = run_config(rules, str(watched), flink_dir, "out")
    streaming = flink.FlinkOptions(watch=True, monitor_interval_s=0.5, flush_after_ms=200, idle_release_s=1.0)
    drop_file(watched, "part-1.jsonl", first)
    job = flink.start_flink(config, streaming)
    try:
        wait_for(lambda: sum(row.records for row in minute_rows(store, 0)) == 2, "minute 0's row")
        savepoint = savepoint_while_running(job, tmp_path / "savepoints")
        # After the savepoint: minutes 1 and 2 written, and the hour and the day again.
        drop_file(watched, "part-2.jsonl", second)
        wait_for(lambda: minute_rows(store, 1) and minute_rows(store, 2), "minutes 1 and 2")
    finally:
        job.cancel()
    # The restored job reads the second file again, and rolls up again what followed the
    # savepoint: the same rows, under the same writer ids, and no record twice.
    job = flink.start_flink(config, streaming._replace(from_savepoint=savepoint))
    stopped = False
    try:
        # Six events read before the cancel; the second file's three again.
        wait_for(lambda: flink.read_counters(flink_dir / "out").get("events_read", 0) >= 9, "the second file again")
        # Draining advances event time to the end: r5 and r6 are released.
        job.stop_with_savepoint(str(tmp_path / "savepoints"), drain=True)
        stopped = True
    finally:
        if not stopped:
            job.cancel()

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(first[:2] + second[:1] + first[2:] + second[1:]) + "\n")  # in event-time order
    run(run_config(rules, str(events), beam_dir, "out"), out=io.StringIO())
    on_flink, on_beam = answers(store), answers(f"sqlite:///{beam_dir / 'activities.db'}")
    for query in QUERIES:
        assert on_flink[query] == on_beam[query], query
    assert per_minute(on_flink[("events", ("type", "source", "attribute"), "minute")], "events") == {
        0: 2, 1: 1, 2: 1, 3: 2}
    assert len(minute_rows(store, 1)) == len(minute_rows(store, 2)) == 1, "rewritten, not stored twice"
    # (r5 and r6 reached the roll-ups past the end of event time, and r3 and r4 too if the
    # restored job released them only at the drain: the same id.)
    assert len({row.writer for minute in range(4) for row in minute_rows(store, minute)}) == 1


def _state_descriptors(module) -> list[tuple[str, str]]:
    """(state name, type expression) of every state descriptor a module makes."""
    found = []
    for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("StateDescriptor"):
            found.append((ast.literal_eval(node.args[0]), " ".join(ast.unparse(arg) for arg in node.args[1:])))
    return found


def test_the_roll_up_state_holds_no_pickle_and_reads_back_as_what_was_kept():
    from orion.flink import rollups

    found = _state_descriptors(rollups)
    assert {name for name, _ in found} == {"parts", "rows", "seed"}, found
    assert all("PICKLED" not in kind for _, kind in found), found
    aggregate = Aggregate()
    for lead in ("L1", "L2", "L1"):
        aggregate.add(lead, {"amount": 2.5})
    key = RollupKey("shop\ud800", "minute", T0, "activity", type="visit_web_page", source="input",
                    attribute="shop.example/\u00e9")
    # The parts a shard keeps as they came: versioned text, valid UTF-8 (Flink's STRING
    # needs it) even for a lone surrogate, that reads back as the same rows and aggregates.
    for tenant in ("shop\ud800", "shop"):
        parts = [(key._replace(tenant=tenant).text(), aggregate), (key.coarser().text(), Aggregate())]
        text = rollups.parts_text(parts)
        text.encode("utf-8")
        assert json.loads(text)[0] == rollups.PARTS_FORMAT and rollups.parts_of(text) == parts
    # A row's state: the core's versioned bytes.
    state = rollups.add_to_bucket(None, aggregate)
    assert rollups._state_of(rollups._state_text(state)) == state


def test_a_rows_version_counts_its_records_so_a_state_rebuilt_after_a_restart_outranks_earlier_writes():
    from orion.flink import rollups

    key = RollupKey("shop", "minute", T0, "activity", type="visit_web_page", source="input")
    one, two = Aggregate(), Aggregate()
    one.add("L1")
    two.add("L2")
    two.add("L3")
    # Before a failure: two writes, of one record and of three.
    state, first, _ = rollups.flushed(key, rollups.add_to_bucket(None, one, lambda: "w"))
    state, second, _ = rollups.flushed(key, rollups.add_to_bucket(state, two))
    assert (first.version, second.version) == (1, 3)
    # After the restart, from a checkpoint taken before either: the same parts, merged in
    # one go, are written with the version of the last write before the failure, and
    # anything more with a higher one; writer ids derive from the job's, not drawn anew.
    again = rollups.add_to_bucket(None, one, lambda: "w")
    state, rebuilt, _ = rollups.flushed(key, rollups.add_to_bucket(again, two))
    assert rebuilt.version == second.version and rebuilt.aggregate == second.aggregate
    more = Aggregate()
    more.add("L4")
    _, last, _ = rollups.flushed(key, rollups.add_to_bucket(state, more))
    assert last.version > second.version and last.aggregate.records == 4
    assert rollups.writer_id("job", 64) == rollups.writer_id("job", 64) != rollups.writer_id("job", 64, T0)


def test_the_drain_expires_no_roll_up_row():
    """A row new to a stage's state expires if the watermark has passed its expiry; at
    the end of event time, only if a watermark before the end had."""
    from orion.flink.functions import END_OF_INPUT
    from orion.flink.rollups import bucket_expired

    assert bucket_expired(10 * MINUTE, 10 * MINUTE, 10 * MINUTE)
    assert not bucket_expired(10 * MINUTE, 10 * MINUTE - 1, 10 * MINUTE - 1)
    assert not bucket_expired(10 * MINUTE, END_OF_INPUT, 3 * MINUTE), "a drain is no expiry"
    assert not bucket_expired(10 * MINUTE, END_OF_INPUT, None), "nor the end of a job that saw no watermark"
    assert bucket_expired(10 * MINUTE, END_OF_INPUT, 11 * MINUTE), "expired before the end"
