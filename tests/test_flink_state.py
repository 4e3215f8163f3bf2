"""What the Flink job keeps in its checkpoints and savepoints holds no pickle: every state
descriptor of orion/flink/functions.py has a real Flink type, the lead step's bookkeeping
is versioned JSON text, and the sinks' batch buffers hold each record as the JSON text
its writer makes of it, which reads back as the same record (activities, lead profiles,
outbox records), lone surrogates and bytes included. A pickle names its Python class: a
savepoint holding one would not restore once that class moved or changed.

    .venv/bin/python -m pytest -q tests/test_flink_state.py
"""
from __future__ import annotations

import ast
import json

import pytest

from orion.activities import Activity
from orion.campaigns.email import AssembledEmail
from orion.campaigns.flows import EmailRequest, HeldEmail, WebhookCall
from orion.campaigns.outbox import outbox_record
from orion.deadletters import DeadLetter
from orion.flink import functions as fn
from orion.rules.model import Outcome
from orion.store.base import StoredProfile

STATE_DESCRIPTORS = {"ValueStateDescriptor", "ListStateDescriptor", "MapStateDescriptor", "ReducingStateDescriptor",
                     "AggregatingStateDescriptor"}


def _descriptor_types() -> list[tuple[str, str]]:
    """(state name, type expression) of every state descriptor made in functions.py."""
    tree = ast.parse(open(fn.__file__, encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in STATE_DESCRIPTORS:
            name = ast.literal_eval(node.args[0])
            found.append((name, " ".join(ast.unparse(arg) for arg in node.args[1:])))
    return found


def test_no_state_of_the_flink_job_is_pickled():
    found = _descriptor_types()
    assert {name for name, _ in found} >= {"pending", "record", "lead", "batch"}, found
    pickled = [(name, kind) for name, kind in found if "PICKLED" in kind]
    assert not pickled, f"pickled state (a code change would break savepoints): {pickled}"


ACTIVITY = Activity("e-\ud800", "acme", "L1", "visit_web_page", 1_795_341_600_000,
                    {"url": "https://acme.example/\u00e9", "n": 3, "tags": ["a", None]})
REQUEST = EmailRequest("acme", "L1", "Welcome", "e-1#0", "welcome", False, 1_795_341_600_000,
                       {"id": "L1", "email": "l1@acme.example", "score": 5}, {"my.offer": "10%"})


@pytest.mark.parametrize("writer, record", [
    (fn.StoreWriter("sqlite:///unused.db"), ACTIVITY),
    (fn.StoreWriter("sqlite:///unused.db"), ACTIVITY._replace(event_id="e-1", attributes={"url": "/a", "n": 2 ** 70})),
    (fn.StoreWriter("sqlite:///unused.db"), ACTIVITY._replace(event_id="e-2", attributes={"url": "/b", "n": 1.5})),
    (fn.ProfileWriter("sqlite:///unused.db"), StoredProfile("acme", "L\u00e9", '{"version": 2, "lead": {}}', None)),
    (fn.ProfileWriter("sqlite:///unused.db"), StoredProfile("acme", "L2", "{}", 1_795_341_600_000)),
], ids=["activity", "activity-large-integer", "activity-ascii", "profile", "profile-waiting"])
def test_the_store_writers_buffer_json_text_that_reads_back_as_the_record(writer, record):
    text = writer.encode(record)
    assert isinstance(text, str) and text.isascii(), "Flink's STRING takes it, surrogates escaped"
    json.loads(text)
    assert writer.decode(text) == record


@pytest.mark.parametrize("item", [
    AssembledEmail("acme", "Welcome", "L1", "e-1#0", "welcome", "l1@acme.example",
                   b"Subject: Hi\r\n\r\n\xff\x00 body", 1_795_341_600_000),
    HeldEmail(REQUEST, "unsubscribed", "unsubscribed at 2026-11-22T10:00:00Z"),
    WebhookCall("acme", "L1", "Warm lead", "e-1#0", "crm_sync", 1_795_341_600_000, {"id": "L1", "score": 10}),
], ids=["email", "held", "webhook"])
def test_the_outbox_writer_buffers_the_outbox_record_as_versioned_json(item):
    writer = fn.OutboxWriter("sqlite:///unused.db")
    text = writer.encode(item)
    assert text.isascii() and json.loads(text)["version"] == fn.STATE_FORMAT_VERSION
    assert writer.decode(text) == outbox_record(item), "the kind and the record the outbox queues, bytes and all"


def test_the_lead_steps_bookkeeping_is_versioned_json_text_that_reads_back():
    meta = fn.LeadMeta.of_text(None)
    assert meta.text() is None and not meta.changed(), "a lead with nothing to keep keeps no state"
    meta.released, meta.buffered, meta.due, meta.poll_due = (1_795_341_600_000, "e-\ud800"), 3, 1_795_341_660_000, 7
    text = meta.text()
    assert meta.changed() and text.isascii() and json.loads(text)["v"] == fn.LeadMeta.VERSION
    again = fn.LeadMeta.of_text(text)
    assert (again.released, again.buffered, again.due, again.wake_at, again.poll_due) == \
        ((1_795_341_600_000, "e-\ud800"), 3, 1_795_341_660_000, None, 7)
    assert not again.changed(), "read back unchanged: not written again"


def test_output_lines_are_beams_json_lines_and_always_utf8():
    outcome = Outcome("acme", "L1", "e-1", 1_795_341_600_000, "Welcome \u00e9", 0, True)
    assert fn.output_line(outcome) == json.dumps(outcome._asdict(), ensure_ascii=False)
    letter = DeadLetter('{"event_id": "e-1"', "malformed_json", "bad", "in.jsonl:3")
    assert fn.output_line(letter) == letter.to_json()
    # A lone surrogate (from a `\ud800` escape in the input) is not UTF-8, which Flink's
    # STRING and the files need: it is written as its JSON escape, and reads back.
    odd = outcome._replace(event_id="e-\ud800")
    line = fn.output_line(odd)
    line.encode("utf-8")
    assert json.loads(line) == odd._asdict()


class _MetricGroup:
    """What Counts asks of Flink's runtime context: a metric group that makes counters.
    A stand-in: a real one exists only inside a running job, where the writer thread
    cannot be held mid-write; the file writes under test are Counts' own."""

    class _Counter:
        def inc(self, n: int = 1) -> None:
            pass

    def get_metrics_group(self):
        return self

    def add_group(self, name: str):
        return self

    def counter(self, name: str):
        return self._Counter()


def test_a_counts_file_ends_with_the_final_tally_even_when_the_writer_thread_was_mid_write(tmp_path, monkeypatch):
    """The background writer took a snapshot and is writing it when the function closes:
    the final tally must land after it, never under it."""
    import threading

    monkeypatch.setattr(fn.Counts, "WRITE_EVERY_S", 3600.0)  # the test drives the writes itself
    counts = fn.Counts(_MetricGroup(), str(tmp_path), "step")
    snapshot_taken, release = threading.Event(), threading.Event()
    dump = fn.Counts._dump

    def slow_dump(self, snapshot):
        if threading.current_thread().name == "old-writer":
            snapshot_taken.set()
            release.wait(10)
        dump(self, snapshot)

    # Holds the writer thread between its snapshot and its write: the race, made certain.
    monkeypatch.setattr(fn.Counts, "_dump", slow_dump)
    counts.inc("stored")
    old_writer = threading.Thread(target=counts._write_changed, name="old-writer")
    old_writer.start()
    assert snapshot_taken.wait(10)
    counts.inc("stored")
    closing = threading.Thread(target=counts.write)
    closing.start()
    release.set()
    old_writer.join(10)
    closing.join(10)
    assert json.loads(counts.path.read_text(encoding="utf-8")) == {"stored": 2}


def test_the_lead_state_ttl_needs_no_py4j_gateway(monkeypatch):
    """Turning the lead state's TTL into Flink's (thread mode: to_java_state_ttl_config;
    process mode: the proto) reads every cleanup strategy; none may build a Java object
    through a py4j gateway, which a TaskManager's Python has not: PyFlink started a JVM
    of its own for it."""
    import pyflink.common.time as pyflink_time
    import pyflink.java_gateway as java_gateway

    def no_gateway():
        raise AssertionError("a py4j gateway was asked for")

    monkeypatch.setattr(java_gateway, "get_gateway", no_gateway)
    monkeypatch.setattr(pyflink_time, "get_gateway", no_gateway)
    ttl = fn._ttl_config(30)
    strategies = ttl.get_cleanup_strategies()
    incremental = strategies.get_incremental_cleanup_strategy()
    rocksdb = strategies.get_rocksdb_compact_filter_cleanup_strategy()
    assert (incremental.get_cleanup_size(), incremental.run_cleanup_for_every_record()) == (5, False)
    assert rocksdb.get_query_time_after_num_entries() == 1000
    assert ttl.get_ttl().to_milliseconds() == 30 * 86_400_000
    proto = ttl._to_proto()  # what process mode sends
    assert proto.ttl == 30 * 86_400_000 and len(proto.cleanup_strategies.strategies) == 2
