"""Hostile input never stops, stalls or exhausts memory for everyone: a line of hundreds of
megabytes (or a file without a line feed), one lead sending a million activities, an
oversized event in any carrier. Each becomes dead letters or early releases that are
counted, memory stays bounded, and everything else is stored.

Memory is measured where it would grow: in a child process (the real `orion run`, or
the core step alone), whose peak resident size is read when it ends; the core step's
child also runs under an address-space limit, so a regression fails rather than taking
the machine's memory.

    .venv/bin/python -m pytest -q tests/test_hostile_input.py
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from orion.activities import MAX_ACTIVITY_BYTES, TOO_LARGE, Activity, ActivityTypes
from orion.collector.checking import check_body
from orion.deadletters import DeadLetter
from orion.intake import TOO_LARGE_KEPT_BYTES, parse_payload, read_lines
from orion.sequencing import MAX_SEEN_IDS

from conftest import SAMPLE_RULES, T0

ORION = Path(sys.executable).with_name("orion")
TYPES = ActivityTypes()
MB = 1024 * 1024


def event(event_id: str, lead: str = "L1", at: int = T0, url: str = "https://acme.example/pricing") -> dict:
    return {"event_id": event_id, "tenant": "acme", "lead_id": lead, "type": "visit_web_page",
            "occurred_at": at, "attributes": {"url": url}}


def line(event_id: str, **fields) -> bytes:
    return json.dumps(event(event_id, **fields)).encode() + b"\n"


# Runs a command as its only child and writes that child's peak resident size (kB) to a
# file. A child's peak counts the memory of the process that started it (Linux carries it
# across fork and exec), so the test process, large after earlier tests, does not start
# the measured command itself: this small one does.
MEASURE = """
import resource, subprocess, sys
status = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as peak:
    peak.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status)
"""


def run_measured(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str, float]:
    """Run a command to its end: (exit code, stdout, stderr, its peak resident size in MB)."""
    with tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        done = subprocess.run([sys.executable, "-c", MEASURE, str(peak), *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr, int(peak.read_text()) / 1024  # Linux gives kB


def orion_run(events: str, base: Path, *extra: str) -> tuple[str, float, list[dict], Path]:
    """`orion run` over `events` into base/store.db and base/out: (stdout, peak MB, dead letters, db)."""
    assert ORION.exists(), f"the orion console script is missing next to {sys.executable}; run `make test`"
    db, out = base / "store.db", base / "out"
    status, stdout, stderr, peak = run_measured(
        [str(ORION), "run", "--events", events, "--rules", str(SAMPLE_RULES), "--store", f"sqlite:///{db}",
         "--out-dir", str(out), "--outbox", "none", *extra], cwd=base)
    assert status == 0, stderr[-3000:]
    dead = [json.loads(text) for path in sorted(out.glob("dead-letters-*.jsonl"))
            for text in path.read_text(encoding="utf-8").splitlines()]
    return stdout, peak, dead, db


def summary_value(stdout: str, label: str) -> int:
    found = next(text for text in stdout.splitlines() if text.strip().startswith(label))
    return int(found.split(":", 1)[1].split()[0])


def stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return sorted(row[0] for row in connection.execute("SELECT event_id FROM activities"))


def overlong(event_id: str, size: int) -> bytes:
    """An activity's JSON text of exactly `size` bytes (its url padded), no line feed."""
    start = json.dumps(event(event_id)).encode()[:-3]  # ...pricing"}}, less its `"}}`
    return start + b"x" * (size - len(start) - 3) + b'"}}'


# --- a line far over the limit ------------------------------------------------------------------


def write_big_line_files(folder: Path, big: int) -> list[str]:
    """events.jsonl: good lines, a 5 MB line, good lines, then a `big`-byte line with no line
    feed; more.jsonl.gz and more.jsonl.bz2: good lines around a 2 MB line. Returns the ids
    of the good lines."""
    folder.mkdir()
    good = []

    def good_lines(prefix: str, n: int) -> bytes:
        ids = [f"{prefix}{k}" for k in range(n)]
        good.extend(ids)
        return b"".join(line(i, at=T0 + len(good) * 1000) for i in ids)

    with open(folder / "events.jsonl", "wb") as plain:
        plain.write(good_lines("a", 3) + overlong("five-mb", 5 * MB) + b"\n" + good_lines("b", 3))
        plain.write(overlong("big", MB)[:MB])
        block = b"x" * MB
        for _ in range(big // MB - 1):
            plain.write(block)
    for name, opener in (("more.jsonl.gz", gzip.open), ("more.jsonl.bz2", bz2.open)):
        prefix = name.rsplit(".", 1)[1]
        with opener(folder / name, "wb") as packed:
            packed.write(good_lines(f"{prefix}-", 2) + overlong(f"{prefix}-big", 2 * MB) + b"\r\n"
                         + good_lines(f"{prefix}-after-", 2))
    return good


def test_a_200_mb_line_without_a_line_feed_is_one_dead_letter_read_in_bounded_memory(tmp_path):
    big = 200 * MB
    good = write_big_line_files(tmp_path / "in", big)
    assert (tmp_path / "in" / "events.jsonl").stat().st_size > big
    stdout, peak, dead, db = orion_run(str(tmp_path / "in" / "*"), tmp_path)

    assert stored_ids(db) == sorted(good)  # every other line, plain, gzip and bz2
    by_source = {d["source"].rsplit("/", 1)[1]: d for d in dead}
    assert sorted(by_source) == ["events.jsonl:4", "events.jsonl:8", "more.jsonl.bz2:3", "more.jsonl.gz:3"]
    assert {d["reason"] for d in dead} == {TOO_LARGE}
    assert f"{big:,} bytes" in by_source["events.jsonl:8"]["detail"]
    assert f"{5 * MB:,} bytes" in by_source["events.jsonl:4"]["detail"]
    for letter in dead:  # each keeps the start of its line, not the line
        assert letter["element"].startswith('{"event_id": "') and len(letter["element"]) == TOO_LARGE_KEPT_BYTES
    assert summary_value(stdout, "events read:") == len(good) + 4
    assert summary_value(stdout, "too_large:") == 4

    # The same run without the overlong lines: the 200 MB line adds next to nothing.
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "events.jsonl").write_bytes(b"".join(line(i) for i in good))
    (tmp_path / "base").mkdir()
    _, baseline, _, _ = orion_run(str(tmp_path / "small" / "events.jsonl"), tmp_path / "base")
    assert peak < baseline + 64, f"peak {peak:.0f} MB with the 200 MB line, {baseline:.0f} MB without"


# --- the file objects each engine hands to read_lines -------------------------------------------


def beam_open(path: Path):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(str(path))  # what ReadMatches' ReadableFile.open gives: compression by suffix


def flink_open(path: Path):
    from orion.flink.functions import open_compressed

    return open_compressed(str(path))


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
@pytest.mark.parametrize("opener", [beam_open, flink_open], ids=["beam", "flink"])
def test_each_engines_file_object_is_read_in_bounded_lines(tmp_path, suffix, opener):
    path = tmp_path / f"events.jsonl{suffix}"
    body = (line("g0") + overlong("over", MAX_ACTIVITY_BYTES + 1) + b"\n" + line("g1")
            + overlong("exact", MAX_ACTIVITY_BYTES) + b"\r\n" + b"   \n" + b" " * (3 * MAX_ACTIVITY_BYTES) + b"\n"
            + overlong("last", 3 * MAX_ACTIVITY_BYTES))
    with {"": open, ".gz": gzip.open, ".bz2": bz2.open}[suffix](path, "wb") as written:
        written.write(body)
    with opener(path) as lines:
        found = list(read_lines(lines, TYPES, "f", 60_000))
    assert [(getattr(f, "event_id", None) or f.reason, f.source if isinstance(f, DeadLetter) else None)
            for f in found] == [("g0", None), (TOO_LARGE, "f:2"), ("g1", None), ("exact", None), (TOO_LARGE, "f:7")]
    assert f"{MAX_ACTIVITY_BYTES + 1:,} bytes" in found[1].detail
    assert f"{3 * MAX_ACTIVITY_BYTES:,} bytes" in found[4].detail
    assert len(found[3].attributes["url"]) > MAX_ACTIVITY_BYTES - 200  # exactly the limit, \r\n after it


# --- every too_large dead letter keeps only the start of its element ----------------------------


def test_every_too_large_dead_letter_keeps_the_start_of_its_element_only():
    big = overlong("big", 3 * MAX_ACTIVITY_BYTES)
    small = json.dumps(event("small")).encode()
    found = [
        *read_lines(io.BytesIO(small + b"\n" + big + b"\n"), TYPES, "file", None),  # a file line
        *read_lines([big], TYPES, "lines", None),  # a line already read
        *parse_payload(big, TYPES, "message"),  # a Pub/Sub message of one activity
        *parse_payload(small + b"\n" + big, TYPES, "jsonl"),  # ... of JSONL
        *parse_payload(b"[" + small + b"," + big + b"]", TYPES, "array"),  # ... an item of an array
        *parse_payload(b"[" + small + b"," + big + b',"\\ud800"]', TYPES, "broken"),  # ... of one orjson refuses
        *parse_payload(b"[" + small + b"," + big + b"]]", TYPES, "whole"),  # a message refused whole
    ]
    refused = [f for f in found if isinstance(f, DeadLetter)]
    assert [(d.source, d.reason) for d in refused] == [
        ("file:2", TOO_LARGE), ("lines:1", TOO_LARGE), ("message", TOO_LARGE), ("jsonl:2", TOO_LARGE),
        ("array[1]", TOO_LARGE), ("broken[1]", TOO_LARGE), ("broken[2]", "malformed_json"),
        ("whole", "malformed_json")]
    assert [f.event_id for f in found if isinstance(f, Activity)] == ["small"] * 4
    for letter in refused:
        if letter.source == "broken[2]":
            continue
        assert len(letter.element.encode()) <= TOO_LARGE_KEPT_BYTES and "keeps its first 1,000" in letter.detail
        assert '"big"' in letter.element and len(letter.to_json()) < 2 * TOO_LARGE_KEPT_BYTES
    assert f"{3 * MAX_ACTIVITY_BYTES:,} bytes" in refused[0].detail
    assert refused[-1].element.startswith("[") and "the message is" in refused[-1].detail


def test_the_collectors_answer_to_an_oversized_event_does_not_echo_it():
    big = {**event("big"), "attributes": {"url": "y" * MAX_ACTIVITY_BYTES}}
    body = b"[" + json.dumps(event("small")).encode() + b"," + json.dumps(big).encode() + b"]"
    checked = check_body(body, "acme", TYPES, 10)
    assert [(r["status"], r.get("reason")) for r in checked.results] == [("accepted", None), ("refused", TOO_LARGE)]
    assert checked.results[1]["event_id"] == "big" and len(orjson.dumps(checked.results)) < 500


# --- one lead sending a million activities --------------------------------------------------------

HOT_LEAD_CHILD = """
import json, resource, sys
limit = 2 * 1024 ** 3  # a runaway buffer stops here rather than taking the machine's memory
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from orion.activities import Activity, activity_sort_key
from orion.leadstep import DEAD, STORE, LeadStep, StepResult
from orion.settings import DEFAULT_MAX_PENDING
from orion.profiles import EMPTY_RECORD
from orion.rules.shared import shared_rules

rules_dir, arrivals, t0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# The default dedup span (a day): the whole run falls within it, so only the cap on the
# event ids a lead remembers (orion.sequencing.MAX_SEEN_IDS) keeps them bounded.
step = LeadStep(shared_rules(rules_dir, ()), run_flows=False)
record, pending = EMPTY_RECORD, []
counts = {"stored": 0, "late": 0, "duplicates": 0, "hot_lead_releases": 0, "evaluated": 0, "early": 0}
peak, last, in_order = 0, None, True

def take(result):
    global last, in_order
    for tag, value in result.emitted:
        if tag == STORE:
            counts["stored"] += 1
            key = activity_sort_key(value)
            in_order = in_order and (last is None or key > last)
            last = key
        elif tag == DEAD:
            counts["late"] += value.reason == "late"
    for name in ("duplicates", "hot_lead_releases", "evaluated"):
        counts[name] += result.counts.get(name, 0)

for n in range(arrivals):
    at = t0 + n * 10  # 100 a second, each within the allowed lateness of the newest
    if n and n % 1009 == 0:
        at -= 30_000  # 30 s behind: in order unless the lead was released past it early
    event_id = f"e{n - 1}" if n and n % 997 == 0 else f"e{n}"  # a redelivery
    activity = Activity(event_id, "acme", "bot", "visit_web_page", at, {"url": "https://acme.example/pricing"})
    result = StepResult()
    if step.arrival(record.progress.released, lambda: record.progress.seen, activity, result):
        pending.append(activity)
        peak = max(peak, len(pending))
        if step.over_budget(len(pending), result):
            counts["early"] += 1
            record, pending = step.release(record, "acme", "bot", pending, None, result)
    take(result)
result = StepResult()
record, pending = step.release(record, "acme", "bot", pending, None, result)  # the watermark passes the end
take(result)
print(json.dumps({**counts, "peak": peak, "max_pending": DEFAULT_MAX_PENDING, "in_order": in_order,
                  "left": len(pending), "seen": len(record.progress.seen)}))
"""


def test_a_million_activities_of_one_lead_keep_its_buffer_bounded_and_are_all_accounted_for(tmp_path):
    """The core step, as both engines' streaming steps drive it: one lead sends 1,000,000
    activities within the allowed lateness; its buffer never holds more than max_pending
    + 1, each early release is counted, and every arrival is stored, a duplicate or a
    late dead letter."""
    arrivals = 1_000_000
    status, stdout, stderr, peak_mb = run_measured(
        [sys.executable, "-c", HOT_LEAD_CHILD, str(SAMPLE_RULES), str(arrivals), str(T0)], cwd=tmp_path)
    assert status == 0, stderr[-3000:]
    found = json.loads(stdout)
    assert found["peak"] == found["max_pending"] + 1 and found["left"] == 0
    assert found["hot_lead_releases"] == found["early"] >= (arrivals - 2_000) // (found["max_pending"] + 1)
    assert found["stored"] + found["duplicates"] + found["late"] == arrivals
    assert found["late"] > 0 and found["duplicates"] > 0 and found["in_order"]
    assert found["evaluated"] == found["stored"]  # each stored activity evaluated once
    assert found["seen"] <= MAX_SEEN_IDS  # the event ids it remembers are bounded too
    # Buffered whole, a million activities take about 900 MB; bounded, the child stays near
    # what its imports take.
    assert peak_mb < 150, f"the child peaked at {peak_mb:.0f} MB"


def test_orion_run_releases_a_hot_lead_early_in_chunks_and_drops_nothing(tmp_path):
    """`orion run` over 50,000 activities of one lead (five times max_pending): the lead is
    replayed a chunk at a time; what a later chunk holds that sorts before an earlier
    chunk's is `late` (source `sequencer`), and stored + duplicates + late add up to the
    lines read."""
    lines = 50_000
    events = tmp_path / "hot.jsonl"
    with open(events, "wb") as out:
        for n in range(lines):
            at = T0 + n * 10 - (30_000 if n and n % 1009 == 0 else 0)
            out.write(line(f"e{n - 1}" if n and n % 997 == 0 else f"e{n}", lead="bot", at=at))
    stdout, _, dead, db = orion_run(str(events), tmp_path)
    stored = len(stored_ids(db))
    assert summary_value(stdout, "events read:") == lines
    assert summary_value(stdout, "stored:") == stored
    duplicates = summary_value(stdout, "duplicates:")
    assert duplicates == (lines - 1) // 997
    assert {(d["reason"], d["source"]) for d in dead} == {("late", "sequencer")}
    assert stored + duplicates + len(dead) == lines
    # The summary says the lead was released early, in chunks of the bound (10,000).
    assert summary_value(stdout, "hot leads:") == lines // 10_001
    # Without the early release every shifted line would be in order: each is within the
    # allowed lateness of the line before it.
    assert 0 < len(dead) < (lines - 1) // 1009


def test_orion_evaluate_reads_an_overlong_line_as_one_too_large_dead_letter(tmp_path):
    """`orion evaluate` (orion.file_evaluation) reads its file through the same bounded
    reader: the overlong line is one dead letter, the next line is still read."""
    from orion.file_evaluation import read_activities
    from orion.rules import load_rules

    good = json.dumps({"event_id": "e1", "tenant": "acme", "lead_id": "L1", "type": "visit_web_page",
                       "occurred_at": T0, "attributes": {"url": "https://acme.example/"}})
    data = io.BytesIO(b'{"pad": "' + b"x" * (MAX_ACTIVITY_BYTES + 10) + b'"}\n' + good.encode() + b"\n")
    letters = []
    by_lead, lines, _ = read_activities(data, load_rules(SAMPLE_RULES), "in.jsonl", letters.append)
    assert [(d.reason, d.source) for d in letters] == [(TOO_LARGE, "in.jsonl:1")]
    assert len(letters[0].element) <= TOO_LARGE_KEPT_BYTES + 100
    assert list(by_lead) == [("acme", "L1")] and lines == 2
